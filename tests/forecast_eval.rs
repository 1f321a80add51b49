//! `prescale forecast eval` end to end on the bundled RICC excerpt:
//! persistence is always scored, the per-origin CSV holds every forecast,
//! the JSON carries the pooled MASE, skill per step and the DM fields.

use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_prescale")
}

#[test]
fn eval_writes_every_forecast_and_scores_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("per_origin.csv");
    let json = dir.path().join("report.json");
    let out = Command::new(bin())
        .args([
            "forecast",
            "eval",
            "--trace",
            "data/ricc-2010-2-excerpt.swf.gz",
        ])
        .args(["--metrics", "vcpus", "--train-frac", "0.5"])
        .args(["--models", "structured", "--per-origin"])
        .arg(&csv)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("structured bookkeeping"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let models = r["models"].as_object().unwrap();
    // persistence is added even when not asked for; +cal by default
    for m in ["naive", "structured", "structured+cal"] {
        let s = &models[m];
        assert!(s["mase_pooled"].as_f64().unwrap().is_finite(), "{m}: {s}");
        assert_eq!(s["skill_per_step"].as_array().unwrap().len(), 12, "{m}");
    }
    assert!(models["naive"]["skill_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x.as_f64() == Some(0.0)));
    let (series, origins) = (
        r["series"].as_u64().unwrap(),
        r["origins"].as_u64().unwrap(),
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("model,series,origin_ms,step,q0.1,q0.5,q0.9,actual")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(
        rows.len() as u64,
        models.len() as u64 * series * origins * 12
    );
    for row in &rows {
        let f: Vec<f64> = row.split(',').skip(4).map(|x| x.parse().unwrap()).collect();
        assert!(f[0] <= f[1] && f[1] <= f[2], "{row}");
    }
}

#[test]
fn planner_quantile_outside_zero_one_is_refused() {
    let out = Command::new(bin())
        .args([
            "forecast",
            "eval",
            "--trace",
            "data/ricc-2010-2-excerpt.swf.gz",
        ])
        .args(["--planner-quantile", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--planner-quantile"), "{err}");
}
