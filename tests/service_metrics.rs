//! `/metrics` of a running `prescale run` (the real binary, a REAL broker
//! from `scripts/kafka.sh`), scraped while it runs: events in by topic,
//! consumer lag, DLQ count (one malformed message), decisions, ticks,
//! forecast error, spend and the store's dropped points (the store URL
//! points at a closed port, so every batch fails and is counted).

mod kafka_support;
mod service_support;

use kafka_support::{config, create_topics, produce, Broker};
use prescale::events::Event;
use prescale::io::kafka::produce::Pace;
use prescale::telemetry::metrics::{parse_samples, Sample};
use service_support::{prescale_run, sample_slice, unique};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Kills the child when the test ends, however it ends.
struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sum(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
        .collect();
    (!hits.is_empty()).then(|| hits.iter().map(|s| s.value).sum())
}

#[test]
fn metrics_endpoint_shows_the_pipeline_during_a_run() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "svcmetrics", state.path());
    create_topics(&cfg);
    let tag = unique("mx");
    let evs = sample_slice(6, &tag);
    let submissions = evs
        .iter()
        .filter(|e| matches!(e, Event::JobSubmitted(_)))
        .count() as f64;
    let env = evs
        .iter()
        .find_map(|e| match e {
            Event::JobSubmitted(j) => Some(j.compute_environment.clone()),
            _ => None,
        })
        .unwrap();

    let half = evs.len() / 2;
    produce(&cfg, &evs[..half], 0, Pace::AsFastAsPossible);
    let sub_topic = cfg.topics.job_submission();
    let p = prescale::io::kafka::publish::Publisher::new(&cfg).unwrap();
    p.send(
        &sub_topic,
        env.as_bytes(),
        b"\x02\xff\xffnot avro",
        &[],
        None,
    )
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    produce(&cfg, &evs[half..], half as u64, Pace::AsFastAsPossible);

    // A dead store, configured through the config file (max_retries = 0 so
    // failed batches are dropped at once).
    let dead = format!("http://127.0.0.1:{}", free_port());
    let file = state.path().join("prescale.toml");
    std::fs::write(
        &file,
        format!("[store]\nurl = \"{dead}\"\nmax_retries = 0\nflush_interval_ms = 100\n"),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = prescale_run(&cfg, state.path())
        .arg("--config")
        .arg(&file)
        .args(["--metrics-listen", &addr])
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
    let events_in = "prescale_events_in_total";
    let started = Instant::now();
    let samples = loop {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "prescale run exited early"
        );
        let body = rt.block_on(async {
            match reqwest::get(&url).await {
                Ok(r) => r.text().await.ok(),
                Err(_) => None,
            }
        });
        if let Some(b) = body {
            let s = parse_samples(&b);
            let consumed = sum(&s, events_in, Some(("topic", &sub_topic))).unwrap_or(0.0);
            let lag = sum(&s, "prescale_consumer_lag", Some(("topic", &sub_topic)));
            let dropped = sum(&s, "prescale_store_points_dropped_total", None).unwrap_or(0.0);
            if consumed >= submissions && lag == Some(0.0) && dropped > 0.0 {
                break s;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/metrics never showed the whole input consumed and points dropped"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Still running: the scrape happened during the run.
    assert!(child.0.try_wait().unwrap().is_none());

    assert_eq!(
        sum(&samples, events_in, Some(("topic", &sub_topic))),
        Some(submissions)
    );
    let price_topic = cfg.topics.price_tick();
    let prices = evs
        .iter()
        .filter(|e| matches!(e, Event::PriceTick(_)))
        .count() as f64;
    assert_eq!(
        sum(&samples, events_in, Some(("topic", &price_topic))),
        Some(prices)
    );
    // lag per partition of the job topic (all three), caught up
    let lag_parts = samples
        .iter()
        .filter(|s| s.name == "prescale_consumer_lag")
        .filter(|s| {
            s.labels
                .iter()
                .any(|(k, v)| k == "topic" && v == &sub_topic)
        })
        .count();
    assert_eq!(lag_parts, 3);
    assert_eq!(
        sum(&samples, "prescale_dlq_total", Some(("topic", &sub_topic))),
        Some(1.0)
    );
    let decisions = sum(
        &samples,
        "prescale_decisions_total",
        Some(("compute_environment", &env)),
    );
    assert!(decisions.unwrap_or(0.0) >= 1.0, "decisions: {decisions:?}");
    assert!(sum(&samples, "prescale_ticks_total", None).unwrap_or(0.0) >= 10.0);
    let err_count = sum(
        &samples,
        "prescale_forecast_abs_error_vcpus_count",
        Some(("compute_environment", &env)),
    );
    assert!(
        err_count.unwrap_or(0.0) >= 10.0,
        "forecast errors: {err_count:?}"
    );
    let spend = sum(
        &samples,
        "prescale_spend_usd_total",
        Some(("compute_environment", &env)),
    );
    assert!(spend.unwrap_or(0.0) > 0.0, "spend: {spend:?}");
    let failed = sum(
        &samples,
        "prescale_store_points_dropped_total",
        Some(("reason", "write_failed")),
    );
    assert!(failed.unwrap_or(0.0) > 0.0, "{failed:?}");
    assert!(sum(&samples, "prescale_store_write_errors_total", None).unwrap_or(0.0) >= 1.0);
    assert_eq!(
        sum(&samples, "prescale_store_points_written_total", None),
        Some(0.0)
    );
}
