//! Runs the built `prescale backtest` on the bundled sample: JSON shape,
//! determinism for a seed, the plot, and corrupted-line handling.

use std::io::Read;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_prescale");

fn backtest(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("backtest")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs prescale")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn sample_backtest_writes_table_json_and_plot_deterministically() {
    // From an unrelated directory: the sample is compiled into the binary.
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let svg = dir.path().join("p.svg");
    let out = backtest(
        &[
            "--seed",
            "7",
            "--json",
            a.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = [
        "reactive",
        "static",
        "batch_spot",
        "karpenter",
        "ec2_predictive",
        "predictive",
        "oracle",
    ];
    for p in all {
        assert!(stdout.contains(p), "table lacks {p}: {stdout}");
    }
    assert!(stdout.contains("lower bound: $"), "{stdout}");
    let v = json(&a);
    let obj = v.as_object().unwrap();
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        vec![
            "lower_bound_on_demand_usd",
            "lower_bound_usd",
            "policies",
            "trace"
        ]
    );
    let lb = v["lower_bound_usd"].as_f64().unwrap();
    let lb_od = v["lower_bound_on_demand_usd"].as_f64().unwrap();
    assert!(lb > 0.0 && lb <= lb_od, "{lb} vs {lb_od}");
    let trace = &v["trace"];
    assert_eq!(trace["seed"], 7);
    assert_eq!(trace["skipped_records"], 0);
    assert!(trace["jobs"].as_u64().unwrap() > 4000);
    assert!(trace["events"].as_u64().unwrap() > trace["jobs"].as_u64().unwrap());
    assert!(trace["span_s"].as_f64().unwrap() > 86_400.0);
    let pol = v["policies"].as_object().unwrap();
    assert_eq!(pol.len(), all.len());
    for (name, p) in pol {
        for f in [
            "cost_usd",
            "deadline_miss_rate",
            "queue_wait_p50_s",
            "queue_wait_p95_s",
            "utilization",
            "budget_overrun_usd",
        ] {
            assert!(p[f].is_f64(), "{name}.{f} = {}", p[f]);
        }
        for f in ["jobs", "jobs_completed", "preemptions"] {
            assert!(p[f].is_u64(), "{name}.{f} = {}", p[f]);
        }
        assert!(p["cost_by_market"].is_object());
        assert!(p["cost_usd"].as_f64().unwrap() > 0.0, "{name} cost");
        // Nothing runs below the physical limit.
        let vs_lb = p["cost_vs_lower_bound"].as_f64().unwrap();
        assert!(vs_lb >= 1.0, "{name} cost_vs_lower_bound {vs_lb}");
        assert!(p["cost_vs_best_peer"].is_f64() || p["cost_vs_best_peer"].is_null());
        for f in ["busy_usd", "idle_usd", "boot_usd", "lost_work_usd"] {
            assert!(p[f].is_f64(), "{name}.{f} = {}", p[f]);
        }
        let u = p["utilization"].as_f64().unwrap();
        assert!(u > 0.0 && u <= 1.0, "{name} utilization {u}");
        assert_eq!(p["jobs"], trace["jobs"]);
    }
    // Reactive buys on-demand only and pays boots.
    assert_eq!(
        pol["reactive"]["cost_by_market"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["ON_DEMAND"]
    );
    assert!(pol["reactive"]["queue_wait_p95_s"].as_f64().unwrap() >= 120.0);
    let head = std::fs::read_to_string(&svg).unwrap();
    assert!(
        head.starts_with("<svg") && head.contains("Cumulative cost"),
        "not an SVG plot"
    );

    let out = backtest(&["--seed", "7", "--json", b.to_str().unwrap()], dir.path());
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed, different JSON"
    );
}

/// The first `n` jobs of the bundled SWF sample (header kept), as text.
fn sample_swf(n: usize) -> Vec<String> {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/ricc-2010-2-excerpt.swf.gz"
    ))
    .unwrap();
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let mut jobs = 0;
    text.lines()
        .take_while(|l| {
            if !l.starts_with(';') {
                jobs += 1;
            }
            jobs <= n
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn corrupted_line_fails_with_file_line_and_field_unless_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = sample_swf(300);
    let header = lines.iter().take_while(|l| l.starts_with(';')).count();
    // Corrupt the run-time field (4th) of the 11th job.
    let idx = header + 10;
    let mut f: Vec<String> = lines[idx].split_whitespace().map(str::to_string).collect();
    f[3] = "12x4".into();
    lines[idx] = f.join(" ");
    let path = dir.path().join("bad.swf");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let p = path.to_str().unwrap();

    let out = backtest(&["--trace", p, "--policies", "reactive,static"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.swf"), "{err}");
    assert!(
        err.contains(&format!(":{}", idx + 1)),
        "no line number {}: {err}",
        idx + 1
    );
    assert!(
        err.contains("run_time") || err.contains("field 4"),
        "no field: {err}"
    );

    let j = dir.path().join("skip.json");
    let out = backtest(
        &[
            "--trace",
            p,
            "--policies",
            "reactive,static",
            "--skip-bad",
            "--json",
            j.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&j);
    assert_eq!(v["trace"]["skipped_records"], 1);
    assert_eq!(v["trace"]["jobs"], 299);
    assert_eq!(v["policies"].as_object().unwrap().len(), 2);
}

#[test]
fn unknown_policy_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let out = backtest(&["--policies", "reactive,magic"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("magic"));
}

/// A project budget the sample's `group-34` overruns when nothing enforces
/// it: reactive (which ignores budgets) overruns, predictive (the engine in a
/// closed loop with the simulator, obeying its QUEUE/PREEMPT/RESUME) does not.
/// Asserts budget behaviour only: the planner, and so the costs, may change.
#[test]
fn budgets_bind_predictive_but_not_reactive() {
    let dir = tempfile::tempdir().unwrap();
    let budgets = dir.path().join("budgets.toml");
    std::fs::write(
        &budgets,
        "# group-34 spends about $600 on the first 1500 jobs when unconstrained\n\
         [project.group-34]\nusd = 150\n",
    )
    .unwrap();
    let j = dir.path().join("b.json");
    let out = backtest(
        &[
            "--max-jobs",
            "1500",
            "--policies",
            "reactive,predictive",
            "--budgets",
            budgets.to_str().unwrap(),
            "--json",
            j.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("overrun_usd"), "no budget table: {stdout}");
    let v = json(&j);
    let (r, p) = (&v["policies"]["reactive"], &v["policies"]["predictive"]);
    let f = |x: &serde_json::Value, k: &str| x[k].as_f64().unwrap();
    let u = |x: &serde_json::Value, k: &str| x[k].as_u64().unwrap();
    // Reactive ignores budgets: it spends past the allocation.
    assert!(f(r, "budget_spent_usd") > 150.0, "{r}");
    assert!(f(r, "budget_overrun_usd") > 0.0, "{r}");
    assert_eq!(u(r, "budget_held_jobs") + u(r, "budget_commands"), 0);
    // Predictive keeps the simulated spend within it, by holding work.
    assert_eq!(f(p, "budget_overrun_usd"), 0.0, "{p}");
    let spent = f(p, "budget_spent_usd");
    assert!(spent > 0.0 && spent <= 150.0, "{p}");
    assert!(
        u(p, "budget_held_jobs") > 0 && u(p, "budget_commands") > 0,
        "{p}"
    );
    assert!(
        u(p, "jobs_completed") < u(p, "jobs"),
        "held work did not run"
    );
    // Spot interruptions keep their own counter.
    assert!(p["preemptions"].is_u64() && p["budget_preemptions"].is_u64());
}

#[test]
fn invalid_budgets_file_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[project.group-34]\nusd = -5\n", "project.group-34.usd"),
        (
            "[project.g]\nusd = 5\nperiod = \"fortnight\"\n",
            "project.g.period",
        ),
        ("[team.g]\nusd = 5\n", "team"),
    ] {
        let path = dir.path().join("bad-budgets.toml");
        std::fs::write(&path, text).unwrap();
        let out = backtest(
            &[
                "--policies",
                "predictive",
                "--budgets",
                path.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(!out.status.success(), "{text} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad-budgets.toml"), "no file: {err}");
        assert!(err.contains(&format!("`{key}`")), "no key {key}: {err}");
    }
}

#[test]
fn invalid_policy_file_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-policy.toml");
    std::fs::write(
        &path,
        "[defaults]\nquantile_by_priority = { high = 1.5, normal = 0.5, low = 0.3 }\n",
    )
    .unwrap();
    let out = backtest(
        &[
            "--policies",
            "predictive",
            "--policy",
            path.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!out.status.success(), "invalid policy accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-policy.toml"), "no file: {err}");
    assert!(err.contains("quantile_by_priority.high"), "no key: {err}");
    assert!(err.contains("between 0 and 1"), "no reason: {err}");
}
