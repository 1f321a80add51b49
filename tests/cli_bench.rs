//! `prescale bench replay` and `bench store` (no servers): the figures they
//! print are also written with `--json`, one entry per stage or variant, so
//! CI can keep them. Figures are checked for shape and sense, never timed.
#![cfg(feature = "bench")]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_prescale");

fn bench(args: &[&str], json: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .expect("runs prescale");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn bench_replay_writes_every_stage_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "replay",
        "--scale",
        "1",
        "--dense-scale",
        "2",
        "--repeat",
        "1",
    ];
    let j = bench(&args, &dir.path().join("replay.json"));
    assert_eq!(j["bench"], "replay");
    let stages: Vec<&str> = j["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "decode",
            "decode+state",
            "full",
            "dense",
            "simulator reactive",
            "simulator predictive"
        ]
    );
    for s in j["stages"].as_array().unwrap() {
        assert!(s["events_per_s"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["seconds"].as_f64().unwrap() > 0.0, "{s}");
    }
    // The sample's decisions, as the backtest makes them.
    assert!(j["stages"][2]["commands"].as_u64().unwrap() > 0);
}

#[test]
fn bench_store_writes_every_variant_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let j = bench(&["store", "--repeat", "1"], &dir.path().join("store.json"));
    assert_eq!(j["bench"], "store");
    let v = j["variants"].as_array().unwrap();
    assert_eq!(v.len(), 3, "{j}");
    assert_eq!(v[0]["vs_engine_only"], 1.0);
    assert!(v[2]["detail"].as_str().unwrap().contains("dropped"), "{j}");
}
