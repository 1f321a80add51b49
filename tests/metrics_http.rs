//! `/metrics` served over real HTTP on a loopback port while the store
//! writer runs against a dead store: the counters the issue names are there.

use std::time::Duration;

use prescale::store::points::{self, Demand};
use prescale::store::{StoreConfig, StoreWriter};
use prescale::telemetry::http::serve_metrics;
use prescale::telemetry::metrics::{parse_samples, CONTENT_TYPE};
use prescale::telemetry::Metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_exposes_pipeline_counters() {
    let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let (addr, _server) = serve_metrics("127.0.0.1:0".parse().unwrap(), metrics)
        .await
        .unwrap();

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{p}")
    };
    let (store, writer) = StoreWriter::spawn(
        StoreConfig {
            url: dead,
            batch_size: 10,
            capacity: 10,
            max_retries: 0,
            ..Default::default()
        },
        metrics,
    )
    .unwrap();
    for i in 0..50 {
        store.write(points::demand(
            "ce-1",
            i,
            &Demand {
                vcpus: 1.0,
                ..Default::default()
            },
        ));
    }
    metrics.inc_events_in("job-submission", 50);
    metrics.set_consumer_lag("job-submission", 0, 3);
    metrics.inc_dlq("job-submission");
    metrics.inc_decision("ce-1", "scaling");
    metrics.observe_forecast_error("ce-1", 2.5);
    metrics.add_spend_usd("ce-1", 0.75);
    let _ = writer.shutdown(Duration::from_secs(2)).await;

    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
    let body = resp.text().await.unwrap();
    let s = parse_samples(&body);
    let v = |name: &str| {
        s.iter()
            .filter(|x| x.name == name)
            .map(|x| x.value)
            .sum::<f64>()
    };
    assert_eq!(v("prescale_events_in_total"), 50.0);
    assert_eq!(v("prescale_consumer_lag"), 3.0);
    assert_eq!(v("prescale_dlq_total"), 1.0);
    assert_eq!(v("prescale_decisions_total"), 1.0);
    assert_eq!(v("prescale_forecast_abs_error_vcpus_count"), 1.0);
    assert_eq!(v("prescale_spend_usd_total"), 0.75);
    assert_eq!(v("prescale_store_points_dropped_total"), 50.0, "{body}");
    assert_eq!(v("prescale_store_points_written_total"), 0.0);
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
