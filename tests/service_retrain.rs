//! Periodic retraining in a running `prescale run` (real binary, REAL broker
//! from `scripts/kafka.sh`): with a 1 s interval the service trains the LSTM
//! on the history it holds, writes checkpoint + model card to the models
//! directory, swaps the model in and counts it on `/metrics`, while the loop
//! keeps consuming.

mod kafka_support;
mod service_support;

use kafka_support::{config, create_topics, produce, Broker};
use prescale::events::Event;
use prescale::io::kafka::produce::Pace;
use prescale::telemetry::metrics::parse_samples;
use service_support::{prescale_run, sample_slice, unique};
use std::time::{Duration, Instant};

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn running_service_retrains_and_swaps_the_model() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "svcretrain", state.path());
    create_topics(&cfg);
    let evs = sample_slice(10, &unique("rt"));
    let submissions = evs
        .iter()
        .filter(|e| matches!(e, Event::JobSubmitted(_)))
        .count() as f64;
    produce(&cfg, &evs, 0, Pace::AsFastAsPossible);

    let models = state.path().join("models");
    let file = state.path().join("prescale.toml");
    std::fs::write(
        &file,
        format!(
            "[retrain]\nmin_buckets = 80\nepochs = 1\nsteps_per_epoch = 3\nmodels_dir = {:?}\n",
            models.display().to_string()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = prescale_run(&cfg, state.path())
        .arg("--config")
        .arg(&file)
        .args(["--retrain-interval-s", "1", "--metrics-listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prescale run");
    let mut child = KillOnDrop(child);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{addr}/metrics");
    let value = |s: &[prescale::telemetry::metrics::Sample], name: &str| {
        s.iter()
            .filter(|x| x.name == name)
            .map(|x| x.value)
            .sum::<f64>()
    };
    let started = Instant::now();
    let samples = loop {
        assert!(child.0.try_wait().unwrap().is_none(), "prescale run exited");
        let body = rt.block_on(async { reqwest::get(&url).await.ok()?.text().await.ok() });
        if let Some(b) = body {
            let s = parse_samples(&b);
            if value(&s, "prescale_model_swaps_total") >= 1.0 {
                break s;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no model was swapped in within 120 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(value(&samples, "prescale_retrain_failures_total"), 0.0);
    assert_eq!(
        value(&samples, "prescale_events_in_total") - value(&samples, "prescale_dlq_total"),
        evs.len() as f64,
        "every event consumed ({submissions} submissions)"
    );

    // The swapped model's checkpoint and card are in the models directory.
    let dirs: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!dirs.is_empty());
    let d = dirs
        .iter()
        .find(|d| d.join("model_card.json").exists())
        .expect("a retrained model with its card");
    let m = prescale::model_file::load(&d.join("model.json")).expect("checkpoint loads");
    assert_eq!(m.config.horizon, 12);
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("model_card.json")).unwrap()).unwrap();
    assert_eq!(card["trigger"], "periodic retraining in prescale run");
    assert!(card["data"]["buckets"].as_u64().unwrap() >= 80, "{card}");
    assert_eq!(card["hyper_parameters"]["steps_per_epoch"], 3);
}
