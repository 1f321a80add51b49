//! Train and infer the LSTM on the CPU (ndarray) and, when built with
//! `--features gpu`, on the GPU (wgpu), and print the time per training step
//! and per batched inference for a few batch sizes.
//!
//! `cargo run --features gpu --example gpu_speedup -- TRACE [STEPS]`
//! (TRACE: SWF, events file or Alibaba CSV).

use prescale::forecast::lstm::{self, burn_device, DeviceChoice, LstmConfig};
use prescale::forecast::series::demand_series;
use prescale::forecast::History;
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(trace) = args.get(1) else {
        eprintln!("usage: gpu_speedup TRACE [STEPS]");
        std::process::exit(2);
    };
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(40);
    let path = Path::new(trace);
    let events = if prescale::import::events_file::is_events_file(path) {
        prescale::import::events_file::read_events(path, true)
            .map(|d| d.events)
            .unwrap_or_default()
    } else if prescale::import::alibaba::is_alibaba_csv(path) {
        prescale::import::alibaba::read_alibaba(path, &Default::default())
            .map(|i| i.events)
            .unwrap_or_default()
    } else {
        let opts = prescale::import::swf::SwfOptions {
            env_from: prescale::import::swf::SwfKey::Queue,
            ..Default::default()
        };
        prescale::import::swf::read_swf(path, &opts)
            .map(|i| i.events)
            .unwrap_or_default()
    };
    let series = demand_series(&events, 300_000);
    let hist: Vec<History<'_>> = series.iter().map(|s| s.history()).collect();
    println!("{trace}: {} events, {} series", events.len(), hist.len());
    let mut devices = vec![DeviceChoice::Cpu];
    if cfg!(feature = "gpu") {
        devices.push(DeviceChoice::Gpu);
    }
    for batch in [64usize, 512, 2048] {
        for &dev in &devices {
            let cfg = LstmConfig {
                epochs: 1,
                steps_per_epoch: steps,
                batch,
                ..LstmConfig::for_bucket(300_000)
            };
            // one warm-up step (kernel compilation on the GPU), then timed
            let warm = LstmConfig {
                steps_per_epoch: 1,
                ..cfg.clone()
            };
            if let Err(e) = lstm::train(&hist, &warm, dev, &mut |_| {}) {
                println!("{dev:?}: {e}");
                continue;
            }
            let (mut first, mut last) = (None, None);
            let t0 = Instant::now();
            let res = lstm::train(&hist, &cfg, dev, &mut |p| {
                if p.step == 1 {
                    first = Some(Instant::now());
                }
                if p.step == p.total_steps {
                    last = Some(Instant::now());
                }
            });
            let total = t0.elapsed().as_secs_f64();
            match res {
                Ok((model, rep)) => {
                    let per_step = match (first, last) {
                        (Some(f), Some(l)) => (l - f).as_secs_f64() / (rep.steps.max(2) - 1) as f64,
                        _ => total / rep.steps.max(1) as f64,
                    };
                    // batched inference of `batch` origins through burn
                    let d = burn_device(dev).expect("device");
                    let hs: Vec<History<'_>> = (0..batch).map(|i| hist[i % hist.len()]).collect();
                    let _ = model.burn_forward(&hs, &d);
                    let t1 = Instant::now();
                    let reps = 5;
                    for _ in 0..reps {
                        let _ = model.burn_forward(&hs, &d);
                    }
                    let inf = t1.elapsed().as_secs_f64() / reps as f64;
                    println!(
                        "device={dev:?} batch={batch}: train {:.1} ms/step ({} steps, {:.1} s incl. calibration), batched inference {:.2} ms per batch = {:.1} us/series",
                        per_step * 1e3,
                        rep.steps,
                        total,
                        inf * 1e3,
                        inf * 1e6 / batch as f64
                    );
                }
                Err(e) => println!("device={dev:?} batch={batch}: {e}"),
            }
        }
    }
}
