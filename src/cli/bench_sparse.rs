//! `prescale bench sparse`: what sparse traces cost (issue #21: cost grows
//! with events, not with time spans). Prints figures; asserts nothing.
//!
//! Cases: two jobs a year apart, 100 jobs spread over ten years, and the
//! bundled sample for reference (synthetic SWF logs of 4-vCPU, 10-minute
//! jobs, with the bundled prices and catalogue, as `prescale backtest
//! --trace` reads them). Stages, each timed on its own:
//! - `prepare`: reading the trace, tiling the prices onto it, the events;
//! - `engine`: the predictive engine over every event (what `prescale run`
//!   does with them), with its decision ticks, the ticks that planned and
//!   those that reused the last idle plan (`Engine::plans_reused`), and
//!   the quiet forecasts answered per time of the week
//!   (`Engine::forecasts_reused`);
//! - `backtest`: every policy simulated, as `prescale backtest` runs them.

use super::inputs::prepare;
use anyhow::Context;
use clap::Args;
use prescale::forecast::Forecaster;
use prescale::policy::PolicyFile;
use prescale::sim::inputs::EngineSource;
use prescale::sim::policy::{run_backtest, BacktestInput, PolicyKind};
use prescale::sim::{OracleForecaster, SimConfig};
use prescale::wiring::make_engine;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct SparseArgs {
    /// Timed repetitions of each stage (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Policies the `backtest` stage simulates (default: all).
    #[arg(long, default_value = PolicyKind::DEFAULT_LIST)]
    pub policies: String,
    /// Also write the figures as JSON to this file (for CI to keep): one
    /// entry per case, with the columns printed.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

const YEAR_S: i64 = 365 * 86_400;

/// An SWF log of 4-vCPU, 10-minute jobs submitted at `times` (seconds).
fn swf(times: &[i64]) -> String {
    let mut s = String::from("; UnixStartTime: 1262304000\n");
    for (i, t) in times.iter().enumerate() {
        s.push_str(&format!(
            "{} {t} 0 600 4 -1 -1 4 900 -1 1 1 1 -1 1 -1 -1 -1\n",
            i + 1
        ));
    }
    s
}

pub fn run(a: SparseArgs) -> anyhow::Result<()> {
    let policies = PolicyKind::parse_list(&a.policies)?;
    let dir = tempfile::tempdir().context("scratch folder")?;
    let gap = dir.path().join("gap.swf");
    std::fs::write(&gap, swf(&[0, YEAR_S]))?;
    let ten = dir.path().join("ten.swf");
    let times: Vec<i64> = (0..100).map(|i| i * (10 * YEAR_S / 100)).collect();
    std::fs::write(&ten, swf(&times))?;
    println!(
        "{:<28} {:>7} {:>8} {:>8} {:>8} {:>8} {:>11} {:>10} {:>12}",
        "case",
        "events",
        "ticks",
        "planned",
        "reused",
        "quiet",
        "prepare_ms",
        "engine_ms",
        "backtest_ms"
    );
    let cases: [(&str, Option<&Path>); 3] = [
        ("2 jobs a year apart", Some(&gap)),
        ("100 jobs over 10 years", Some(&ten)),
        ("bundled sample", None),
    ];
    let mut rows = Vec::new();
    for (name, path) in cases {
        rows.push(case(name, path, &policies, a.repeat.max(1))?);
    }
    if let Some(path) = &a.json {
        let j = serde_json::json!({"bench": "sparse", "repeat": a.repeat.max(1), "cases": rows});
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One case's stages, best of `repeat`: printed, and returned for `--json`.
fn case(
    name: &str,
    trace: Option<&Path>,
    policies: &[PolicyKind],
    repeat: usize,
) -> anyhow::Result<serde_json::Value> {
    let best = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..repeat {
            let t = Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(best)
    };
    let mut prep = None;
    let prepare_ms = best(&mut || {
        prep = Some(prepare(trace, None, None, false, None, false)?);
        Ok(())
    })?;
    let prep = prep.expect("prepared at least once");
    let policy = PolicyFile::default();
    let (mut ticks, mut reused, mut quiet) = (0, 0, 0);
    let engine_ms = best(&mut || {
        let mut engine = make_engine(prep.catalog.clone(), None, &policy);
        let mut out = Vec::new();
        for ev in &prep.events {
            engine.handle(ev, &mut out);
        }
        engine.finish(&mut out);
        ticks = engine.counters().ticks;
        reused = engine.plans_reused();
        quiet = engine.forecasts_reused();
        Ok(())
    })?;
    let catalog = prep.catalog.clone();
    let source = EngineSource {
        make: move |fc: Option<Arc<dyn Forecaster>>| make_engine(catalog.clone(), fc, &policy),
    };
    let oracle: Arc<dyn Forecaster> = Arc::new(OracleForecaster::from_workload(&prep.workload));
    let cfg = SimConfig::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let backtest_ms = best(&mut || {
        let input = BacktestInput {
            events: &prep.events,
            workload: &prep.workload,
            prices: &prep.prices,
            cfg: &cfg,
            policies,
            threads,
            source: &source,
            oracle: Some(oracle.clone()),
            trace: prep.trace.clone(),
            budgets: &[],
        };
        run_backtest(&input, &|_| {})?;
        Ok(())
    })?;
    println!(
        "{:<28} {:>7} {:>8} {:>8} {:>8} {:>8} {:>11.1} {:>10.1} {:>12.1}",
        name,
        prep.events.len(),
        ticks,
        ticks - reused,
        reused,
        quiet,
        prepare_ms,
        engine_ms,
        backtest_ms
    );
    Ok(serde_json::json!({
        "case": name,
        "events": prep.events.len(),
        "ticks": ticks,
        "planned": ticks - reused,
        "reused": reused,
        "quiet": quiet,
        "prepare_ms": prepare_ms,
        "engine_ms": engine_ms,
        "backtest_ms": backtest_ms,
    }))
}
