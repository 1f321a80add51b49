//! `prescale train --from-store`: demand points written to a REAL
//! VictoriaMetrics (`scripts/tsdb.sh`, `PRESCALE_TSDB_URL`) through the
//! store writer, then the real binary trains from them (tiny epoch count)
//! and writes a loadable checkpoint whose card names the store and series.

use prescale::store::points::{self, Demand};
use prescale::store::{read_demand_history, StoreConfig, StoreWriter, VictoriaMetricsReader};
use prescale::telemetry::Metrics;
use std::time::Duration;

const BUCKET: i64 = 300_000;

#[test]
fn train_reads_its_history_from_the_store() {
    let url = std::env::var("PRESCALE_TSDB_URL").unwrap_or_else(|_| "http://127.0.0.1:8428".into());
    // A run-unique day in 2001 (no other test writes there) and env names.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let k = (nanos / 1000 % 300) as i64;
    let start = 978_307_200_000 + k * 86_400_000; // 2001-01-01 + k days
    let tag = format!("tr{}x{}", std::process::id(), nanos % 1_000_000);
    let envs = [format!("gpu-{tag}"), format!("cpu-{tag}")];
    let n = 200i64; // buckets (16.7 h): enough for window + horizon + calibration

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let stats = rt.block_on(async {
        let (h, w) = StoreWriter::spawn(
            StoreConfig {
                url: url.clone(),
                ..Default::default()
            },
            metrics,
        )
        .unwrap();
        for (e, env) in envs.iter().enumerate() {
            for i in 0..n {
                let phase = (i % 48) as f64 / 48.0 * std::f64::consts::TAU;
                let v = ((20.0 + 10.0 * e as f64 + 8.0 * phase.sin()) * 4.0).round() / 4.0;
                h.write(points::demand(
                    env,
                    start + i * BUCKET,
                    &Demand {
                        vcpus: v,
                        memory_mib: v * 1024.0,
                        gpus: if e == 0 { (v / 10.0).floor() } else { 0.0 },
                        submissions: 1.0,
                    },
                ));
            }
        }
        w.shutdown(Duration::from_secs(20)).await
    });
    assert_eq!(stats.written, 2 * n as u64, "{stats:?}");

    // Wait (bounded) until the new series are searchable.
    let vm = VictoriaMetricsReader::new(&url);
    let end = start + n * BUCKET;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        rt.block_on(vm.force_flush()).unwrap();
        let h = rt.block_on(read_demand_history(&vm, start, end)).unwrap();
        let ok = envs
            .iter()
            .all(|e| h.iter().any(|(x, p)| x == e && p.len() == n as usize));
        if ok || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args([
            "train",
            "--from-store",
            &url,
            "--store-flavor",
            "victoria-metrics",
        ])
        .args([
            "--store-start",
            &start.to_string(),
            "--store-end",
            &end.to_string(),
        ])
        .args(["--epochs", "1", "--steps-per-epoch", "3"])
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .expect("run prescale train");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prescale train failed: {stderr}");

    let m =
        prescale::model_file::load(&out_dir.path().join("model.json")).expect("checkpoint loads");
    assert_eq!(m.config.bucket_ms, BUCKET);
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("model_card.json")).unwrap())
            .unwrap();
    let data = &card["data"];
    assert_eq!(data["store"], url.as_str());
    assert_eq!(data["measurement"], "demand");
    assert_eq!(data["buckets"], n);
    assert_eq!(data["start_ms"], start);
    let series: Vec<&str> = data["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // gpus only where non-zero; sorted by environment, then metric
    assert_eq!(
        series,
        [
            format!("{}/vcpus", envs[1]),
            format!("{}/memory_mib", envs[1]),
            format!("{}/vcpus", envs[0]),
            format!("{}/memory_mib", envs[0]),
            format!("{}/gpus", envs[0]),
        ]
    );
    assert!(card["metrics"]["train_windows"].as_u64().unwrap() > 0);
}

#[test]
fn train_from_an_empty_store_range_names_the_problem() {
    let url = std::env::var("PRESCALE_TSDB_URL").unwrap_or_else(|_| "http://127.0.0.1:8428".into());
    let out_dir = tempfile::tempdir().unwrap();
    // 1980: nothing is ever written there
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args([
            "train",
            "--from-store",
            &url,
            "--store-flavor",
            "victoria-metrics",
        ])
        .args([
            "--store-start",
            "1980-01-01T00:00:00Z",
            "--store-end",
            "1980-01-02T00:00:00Z",
        ])
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .expect("run prescale train");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no `demand` points"), "{stderr}");
    assert!(!out_dir.path().join("model.json").exists());
}
