//! `prescale run` writes the prediction store: the real binary consumes a
//! slice of the bundled sample from a REAL broker (tansu, `scripts/kafka.sh`)
//! and writes to a REAL VictoriaMetrics (`scripts/tsdb.sh`,
//! `PRESCALE_TSDB_URL`); the test reads the points back and checks them
//! against what the same events give offline.

mod kafka_support;
mod service_support;

use kafka_support::{config, create_topics, produce, read_commands, Broker};
use prescale::events::Command as Cmd;
use prescale::io::kafka::produce::Pace;
use prescale::state::{demand_series, environment_vcpu_series, StateConfig};
use prescale::store::{read_demand_history, SeriesQuery, StoreReader, VictoriaMetricsReader};
use service_support::{prescale_run, sample_slice, unique, HOUR};
use std::collections::{BTreeMap, BTreeSet};

fn tsdb_url() -> String {
    std::env::var("PRESCALE_TSDB_URL").unwrap_or_else(|_| "http://127.0.0.1:8428".into())
}

#[test]
fn run_writes_demand_forecasts_prices_decisions_and_spend() {
    let url = tsdb_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let healthy = rt.block_on(async {
        reqwest::get(format!("{url}/health"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    });
    assert!(
        healthy,
        "no time-series server at {url}; start it with scripts/tsdb.sh start"
    );

    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "svcstore", state.path());
    create_topics(&cfg);
    let tag = unique("st");
    let evs = sample_slice(6, &tag);
    produce(&cfg, &evs, 0, Pace::AsFastAsPossible);

    let out = prescale_run(&cfg, state.path())
        .args(["--exit-when-idle-ms", "1500"])
        .args(["--store-url", &url, "--store-bucket", "it"])
        .output()
        .expect("run prescale");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prescale run failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["events"], evs.len() as u64, "{report}");
    assert_eq!(report["finished"], true, "{report}");
    let store = &report["store"];
    let accepted = store["accepted"].as_u64().unwrap();
    assert!(accepted > 100, "{report}");
    assert_eq!(store["written"].as_u64(), Some(accepted), "{report}");
    assert_eq!(store["dropped_buffer_full"], 0, "{report}");
    assert_eq!(store["dropped_write_failed"], 0, "{report}");

    // What the same events give offline (the engine's bucketing).
    let sc = StateConfig::default();
    let bucket = sc.bucket_ms;
    let want = environment_vcpu_series(&demand_series(&evs, &sc), bucket);
    assert!(!want.is_empty(), "the slice has job demand");
    let (t0, t1) = (
        evs.first().unwrap().time() - 2 * HOUR,
        evs.last().unwrap().time() + 2 * HOUR,
    );

    let vm = VictoriaMetricsReader::new(&url);
    // New series become searchable shortly after their first write: wait
    // (bounded) until the last measurement written is visible.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let envs: Vec<&String> = want.iter().map(|w| &w.0).collect();
    loop {
        rt.block_on(vm.force_flush()).unwrap();
        let visible = envs.iter().all(|env| {
            ["demand", "spend", "forecast"].iter().all(|m| {
                let f = if *m == "spend" { "usd_total" } else { "vcpus" };
                let q = SeriesQuery::new(m, f, t0, t1).with_tag("compute_environment", env);
                !rt.block_on(vm.read(&q)).unwrap().is_empty()
            })
        });
        let history = rt.block_on(read_demand_history(&vm, t0, t1)).unwrap();
        let listed = envs.iter().all(|e| history.iter().any(|(h, _)| h == *e));
        if (visible && listed) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Observed demand: every closed bucket of every environment, exactly.
    let got: BTreeMap<String, Vec<(i64, f64)>> = rt
        .block_on(read_demand_history(&vm, t0, t1))
        .unwrap()
        .into_iter()
        .filter(|(env, _)| env.ends_with(&tag))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.iter().map(|w| &w.0).collect::<Vec<_>>()
    );
    for (env, start, values) in &want {
        let g = &got[env];
        assert_eq!(g.len(), values.len(), "{env}: buckets");
        for (i, ((t, v), w)) in g.iter().zip(values).enumerate() {
            assert_eq!(*t, start + i as i64 * bucket, "{env}: bucket {i} time");
            assert!(
                (v - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{env} @{t}: {v} vs {w}"
            );
        }
    }

    let read = |q: SeriesQuery| rt.block_on(vm.read(&q)).unwrap();
    let commands = read_commands(&cfg);
    for (env, _, values) in &want {
        // Forecasts: every quantile at every horizon step, one per tick.
        let f = read(
            SeriesQuery::new("forecast", "vcpus", t0, t1).with_tag("compute_environment", env),
        );
        let quantiles: BTreeSet<&str> = f.iter().map(|s| s.labels["quantile"].as_str()).collect();
        assert_eq!(quantiles, BTreeSet::from(["0.1", "0.5", "0.9"]), "{env}");
        let horizons: BTreeSet<i64> = f
            .iter()
            .map(|s| s.labels["horizon_s"].parse().unwrap())
            .collect();
        assert_eq!(horizons, (1..=12).map(|h| h * 300).collect(), "{env}");
        assert!(f.iter().all(|s| !s.labels["model"].is_empty()));
        // step 1 of each tick's forecast: one per decision tick
        let step1: usize = f
            .iter()
            .filter(|s| s.labels["horizon_s"] == "300" && s.labels["quantile"] == "0.5")
            .map(|s| s.points.len())
            .sum();
        assert!(
            step1 + 1 >= values.len(),
            "{env}: {step1} ticks for {} buckets",
            values.len()
        );

        // Decisions: one point per scaling command published for the env.
        let published: BTreeSet<i64> = commands
            .iter()
            .filter_map(|p| match &p.command {
                Cmd::Scaling(s) if &s.compute_environment == env => Some(s.issued_at),
                _ => None,
            })
            .collect();
        assert!(!published.is_empty(), "{env}: no scaling command");
        let d = read(
            SeriesQuery::new("decision", "desired_vcpus", t0, t1)
                .with_tag("compute_environment", env),
        );
        let stored: BTreeSet<i64> = d
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        assert_eq!(stored, published, "{env}: decision points vs commands");

        // Spend: cumulative, never decreasing, one point per tick.
        let s = read(
            SeriesQuery::new("spend", "usd_total", t0, t1).with_tag("compute_environment", env),
        );
        assert_eq!(s.len(), 1, "{env}");
        let pts = &s[0].points;
        assert!(
            pts.windows(2).all(|w| w[1].1 >= w[0].1),
            "{env}: spend decreases"
        );
        assert!(pts.len() + 1 >= values.len(), "{env}: spend points");
    }
    // The planner bought spot capacity somewhere, so money was spent.
    let total: f64 = want
        .iter()
        .map(|(env, _, _)| {
            read(
                SeriesQuery::new("spend", "usd_total", t0, t1).with_tag("compute_environment", env),
            )
            .iter()
            .filter_map(|s| s.points.last().map(|p| p.1))
            .sum::<f64>()
        })
        .sum();
    assert!(total > 0.0, "no spend recorded");
    eprintln!(
        "store: {accepted} points written; {} environment(s), {} demand buckets, {} commands read back, spend ${total:.2}",
        want.len(),
        want.iter().map(|w| w.2.len()).sum::<usize>(),
        commands.len()
    );

    // Prices: every tick of the run's zone, values as produced.
    let p = read(
        SeriesQuery::new("price", "usd_per_hour", t0, t1).with_tag("zone", &format!("use1-{tag}")),
    );
    let ticks: usize = p.iter().map(|s| s.points.len()).sum();
    let want_ticks = evs
        .iter()
        .filter(|e| matches!(e, prescale::events::Event::PriceTick(_)))
        .count();
    assert_eq!(ticks, want_ticks);
    assert!(p.iter().all(|s| s.labels["market"] == "SPOT"));
}
