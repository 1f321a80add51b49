//! Forecasting figures: LSTM training time on the bundled sample, the
//! latency of one forecast for one series, and batched per-series latency.
//!
//! `cargo bench --bench forecast` (release profile). Training is timed once
//! (it takes tens of seconds; criterion's repeated sampling would take many
//! minutes); latencies go through criterion. Set `PRESCALE_BENCH_TRACE` to
//! time training on another trace (SWF, events file or Alibaba CSV).

use criterion::Criterion;
use prescale::events::Event;
use prescale::forecast::lstm::{self, DeviceChoice, LstmConfig, LstmForecaster};
use prescale::forecast::series::demand_series;
use prescale::forecast::{Ets, Forecaster, History, SeasonalNaive};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

const SAMPLE: &str = "data/ricc-2010-2-excerpt.swf.gz";

fn load(path: &Path) -> Option<Vec<Event>> {
    use prescale::import::alibaba::{is_alibaba_csv, read_alibaba, AlibabaOptions};
    use prescale::import::events_file::{is_events_file, read_events};
    use prescale::import::swf::{read_swf, SwfKey, SwfOptions};
    if !path.exists() {
        return None;
    }
    if is_events_file(path) {
        return read_events(path, true).ok().map(|d| d.events);
    }
    if is_alibaba_csv(path) {
        return read_alibaba(path, &AlibabaOptions::default())
            .ok()
            .map(|i| i.events);
    }
    let opts = SwfOptions {
        env_from: SwfKey::Queue,
        ..SwfOptions::default()
    };
    read_swf(path, &opts).ok().map(|i| i.events)
}

fn main() {
    let trace = std::env::var("PRESCALE_BENCH_TRACE").unwrap_or_else(|_| SAMPLE.to_string());
    let cfg = LstmConfig::for_bucket(300_000);
    let Some(events) = load(Path::new(&trace)) else {
        eprintln!("{trace} not found or unreadable");
        std::process::exit(2);
    };
    let series = demand_series(&events, cfg.bucket_ms);
    let hist: Vec<History<'_>> = series.iter().map(|s| s.history()).collect();
    let t0 = Instant::now();
    let (model, rep) = match lstm::train(&hist, &cfg, DeviceChoice::Cpu, &mut |_| {}) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("training failed: {e}");
            std::process::exit(1);
        }
    };
    let train_s = t0.elapsed().as_secs_f64();
    println!(
        "forecast/train: {trace}: {} series, {} windows, {} steps (batch {}), {:.1} s ({:.1} ms/step), cores={}",
        rep.series,
        rep.train_windows,
        rep.steps,
        cfg.batch,
        train_s,
        train_s * 1e3 / rep.steps.max(1) as f64,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    // the vCPU series with the most demand, cut at the end of its busiest
    // 3 days (the sample's tail after submissions stop is a flat drain, on
    // which ETS short-circuits and latencies would flatter it)
    let Some(busiest) = series
        .iter()
        .filter(|s| s.metric == prescale::forecast::series::Metric::Vcpus)
        .max_by(|a, b| {
            let (sa, sb) = (a.values.iter().sum::<f64>(), b.values.iter().sum::<f64>());
            sa.total_cmp(&sb)
        })
    else {
        return;
    };
    let end = busiest.values.len().min(3 * 288);
    let h = History {
        values: &busiest.values[..end],
        ..busiest.history()
    };
    println!(
        "forecast/latency input: {} with {} buckets of history",
        h.key, end
    );
    let q = [0.1, 0.5, 0.9];
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("forecast/lstm_one_series", |b| {
        b.iter(|| black_box(model.forecast(black_box(&h), 12, &q)))
    });
    c.bench_function("forecast/seasonal_naive_one_series", |b| {
        b.iter(|| black_box(SeasonalNaive::default().forecast(black_box(&h), 12, &q)))
    });
    c.bench_function("forecast/ets_one_series", |b| {
        b.iter(|| black_box(Ets::default().forecast(black_box(&h), 12, &q)))
    });
    // a decision tick over many environments: 256 series at once
    let batch: Vec<History<'_>> = (0..256).map(|_| h).collect();
    c.bench_function("forecast/lstm_batch_256", |b| {
        b.iter(|| black_box(model.forecast_batch(black_box(&batch), 12, &q)))
    });
    c.final_summary();
    print_latency("lstm one series", &model, &[h]);
    print_latency("lstm batch of 256, per series", &model, &batch);
}

/// Plain timing summary in microseconds per series (criterion prints the
/// statistics; this line is the figure to quote).
fn print_latency(what: &str, model: &LstmForecaster, hs: &[History<'_>]) {
    let iters = 200;
    let t0 = Instant::now();
    for _ in 0..iters {
        black_box(model.forecast_batch(hs, 12, &[0.1, 0.5, 0.9]));
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / (iters * hs.len()) as f64;
    println!("forecast/latency: {what}: {us:.1} us");
}
