//! `prescale backtest`: replay a trace with real prices through the decision
//! engine and a simulated cluster, and compare scaling policies.
//!
//! With no arguments it runs the bundled sample (see `cli::inputs`).

use super::inputs::{prepare, Prepared};
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use prescale::budget::BudgetFile;
use prescale::forecast::Forecaster;
use prescale::policy::PolicyFile;
use prescale::sim::inputs::EngineSource;
use prescale::sim::{run_backtest, BacktestInput, OracleForecaster, PolicyKind, SimConfig};
use prescale::wiring::{load_policy, make_engine};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `backtest --spot-signals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpotSignalsArg {
    Learn,
    Off,
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// SWF log (plain or .gz) or events file; default: the bundled RICC excerpt.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Spot price history (AWS TSV/CSV, plain/.gz/.zst); default: the bundled slice.
    /// It is time-shifted and tiled onto the trace (see `pricing::tile_onto`).
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// On-demand catalogue CSV (Karpenter-derived format); default: the bundled subset.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Policies to compare, comma-separated: reactive (on-demand AWS Batch),
    /// static, the peer baselines batch_spot (AWS Batch spot CE with an
    /// on-demand fallback), karpenter (spot first, consolidation) and
    /// ec2_predictive (EC2 Auto Scaling predictive scaling, mixed
    /// instances), and prescale's predictive and oracle. Every report also
    /// gives the trace's lower bound and each policy's cost against it and
    /// against the best peer (docs/planner.md).
    #[arg(long, default_value = PolicyKind::DEFAULT_LIST)]
    pub policies: String,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (demand, capacity, cumulative cost) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write a self-contained HTML report (table + plots) here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Seed of the simulator's RNG (spot interruptions).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Policies simulated at once, each on a thread of its own (default: one
    /// per available core). The results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Skip (and count) malformed trace/price records instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Instance boot delay, seconds.
    #[arg(long, default_value_t = 120, value_parser = super::values::secs)]
    pub boot_delay_s: i64,
    /// Idle time before an autoscaled instance is terminated, seconds.
    #[arg(long, default_value_t = 600, value_parser = super::values::positive_secs)]
    pub idle_timeout_s: i64,
    /// Spot interruptions per instance-hour drawn by the simulator (the
    /// default is pessimistic against AWS's published frequencies; see
    /// `pricing::DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR`).
    #[arg(long, default_value_t = prescale::pricing::DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR, value_parser = super::values::rate)]
    pub spot_rate: f64,
    /// Replay measured spot markets (Can't Be Late traces,
    /// `<zone>_<tag>.json`) in this folder as the capacity of the matching
    /// spot pools (type from the tag, region from the zone); pools without
    /// a trace keep `--spot-rate`. See `sim::spot_market`.
    #[arg(long, conflicts_with = "spot_trace_map")]
    pub spot_traces: Option<PathBuf>,
    /// Like `--spot-traces`, with a TOML file that assigns each trace to a
    /// pool class (`[[trace]] file, pool = "type/region" | "type" | "*",
    /// scale`).
    #[arg(long)]
    pub spot_trace_map: Option<PathBuf>,
    /// With measured spot markets, whether the engine-driven policies
    /// (predictive, oracle), which then run in closed loop, are told of
    /// the traced pools' two-minute notices and refused launches as spot
    /// signals and learn each pool's risk from them (`learn`), or plan with
    /// the constant rate (`off`).
    #[arg(long, value_enum, default_value = "learn")]
    pub spot_signals: SpotSignalsArg,
    /// Static fleet size in vCPUs (default: p90 of the trace's demand).
    #[arg(long, value_parser = super::values::vcpus)]
    pub static_vcpus: Option<i64>,
    /// Maximum vCPUs of an autoscaled environment (Batch maxvCpus).
    #[arg(long, value_parser = super::values::vcpus)]
    pub max_vcpus: Option<i64>,
    /// Feed the engine the trace's recorded completion times (with the
    /// source cluster's queueing) instead of re-timing them to start at
    /// submission (see `sim::trace::retime_without_queueing`).
    #[arg(long)]
    pub keep_trace_waits: bool,
    /// Import at most this many jobs of an SWF trace.
    #[arg(long)]
    pub max_jobs: Option<usize>,
    /// Budget allocations (TOML: `[project.<id>]` / `[user.<id>]` /
    /// `[job.<id>]` tables with `usd` and optional `period` = total, day,
    /// week or month). Given to the engine at the trace start; predictive and
    /// oracle then run in a closed loop with the simulator and obey its
    /// QUEUE/PREEMPT/RESUME commands, reactive and static ignore budgets.
    /// The report adds budget_overrun_usd, budget_preemptions, etc.
    #[arg(long, value_name = "FILE")]
    pub budgets: Option<PathBuf>,
    /// Policy file (TOML, see examples/policy.toml) for predictive and
    /// oracle: quantile by priority, markets, regions, caps, cool-down.
    /// Invalid files fail here with the file, key and reason.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Write the commands the decision core decides for this input (the
    /// engine of the predictive policy; what `prescale run` publishes for the
    /// same events) as JSON lines, as `prescale tail` prints them. Open
    /// loop, so not with `--budgets` (the simulator then feeds back).
    #[arg(long, value_name = "OUT.jsonl", conflicts_with = "budgets")]
    pub commands: Option<PathBuf>,
    /// Write the events the engine is fed (the trace and the tiled prices,
    /// in order) as an events file that `prescale produce` can publish.
    #[arg(long, value_name = "OUT.avro")]
    pub events_out: Option<PathBuf>,
}

/// `--events-out` and `--commands`: the engine's exact input and output, so
/// a replay through Kafka (`prescale produce` + `prescale run`) can be
/// checked against the backtest's decisions command by command.
fn export_replay(a: &BacktestArgs, prep: &Prepared, policy: &PolicyFile) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(p) = &a.events_out {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut w = prescale::import::events_file::EventsWriter::create(p)?;
        for ev in &prep.events {
            w.append(ev)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
        }
        w.finish()
            .with_context(|| format!("writing {}", p.display()))?
            .flush()
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {} ({} events)", p.display(), prep.events.len());
    }
    if let Some(p) = &a.commands {
        let mut engine = make_engine(prep.catalog.clone(), None, policy);
        let mut cmds = Vec::new();
        for ev in &prep.events {
            engine.handle(ev, &mut cmds);
        }
        engine.finish(&mut cmds);
        let mut text = Vec::new();
        for c in &cmds {
            writeln!(text, "{}", serde_json::to_value(c)?)?;
        }
        write_creating_dirs(p, text).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {} ({} commands)", p.display(), cmds.len());
    }
    Ok(())
}

pub fn run(a: BacktestArgs) -> anyhow::Result<()> {
    let policies = PolicyKind::parse_list(&a.policies)?;
    let policy = load_policy(a.policy.as_deref())?;
    let budgets = match &a.budgets {
        Some(p) => BudgetFile::load(p)?.allocations,
        None => Vec::new(),
    };
    if policies.is_empty() {
        bail!(
            "--policies: name at least one of {}",
            PolicyKind::DEFAULT_LIST
        );
    }
    let prep = prepare(
        a.trace.as_deref(),
        a.prices.as_deref(),
        a.catalog.as_deref(),
        a.skip_bad,
        a.max_jobs,
        a.keep_trace_waits,
    )?;
    export_replay(&a, &prep, &policy)?;
    let mut trace = prep.trace.clone();
    trace.seed = a.seed;
    let cfg = SimConfig {
        boot_delay_ms: a.boot_delay_s * 1000,
        idle_timeout_ms: a.idle_timeout_s * 1000,
        spot_interruptions_per_hour: a.spot_rate,
        static_vcpus: a.static_vcpus,
        max_vcpus: a.max_vcpus,
        seed: a.seed,
        spot_markets: load_spot_markets(&a)?.map(Arc::new),
        spot_signals: a.spot_signals == SpotSignalsArg::Learn,
        record_series: a.plot.is_some() || a.html.is_some(),
        ..Default::default()
    };
    let catalog = prep.catalog.clone();
    let source = EngineSource {
        make: move |fc: Option<Arc<dyn Forecaster>>| make_engine(catalog.clone(), fc, &policy),
    };
    let oracle: Arc<dyn Forecaster> = Arc::new(OracleForecaster::from_workload(&prep.workload));
    let input = BacktestInput {
        events: &prep.events,
        workload: &prep.workload,
        prices: &prep.prices,
        cfg: &cfg,
        policies: &policies,
        threads: a
            .threads
            .map(usize::from)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1),
        source: &source,
        oracle: Some(oracle),
        trace,
        budgets: &budgets,
    };
    let bar = ProgressBar::new(policies.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    // Policies take minutes on a long trace: keep the spinner and clock moving.
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    bar.set_message(format!("simulating {} policies", policies.len()));
    let report = run_backtest(&input, &|name| {
        bar.set_message(format!("{name} done"));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let t = &report.trace;
    println!(
        "trace {}: {} jobs, {} events ({} price ticks), {} environment(s), {:.1} h, {} skipped records, seed {}",
        t.file,
        t.jobs,
        t.events,
        t.price_ticks,
        t.compute_environments,
        t.span_s / 3600.0,
        t.skipped_records,
        t.seed
    );
    print!("{}", report.table());
    print!("{}", report.cost_table());
    for (name, p) in &report.policies {
        if p.spot_pools.is_empty() {
            continue;
        }
        let (i, f) = p.spot_pools.values().fold((0, 0), |(i, f), s| {
            (i + s.interruptions, f + s.failed_launches)
        });
        println!(
            "  {name}: measured spot markets: {i} interruptions, {f} failed launches over {} traced pools (per pool: JSON `spot_pools`)",
            p.spot_pools.len()
        );
    }
    if !budgets.is_empty() {
        print!("{}", report.budget_table());
    }
    if let Some(p) = &a.json {
        write_creating_dirs(p, report.to_json() + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.plot {
        let svg = report
            .plot_svg()
            .map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
        write_creating_dirs(p, svg).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.html {
        let page = prescale::report::html::backtest(&report)
            .map_err(|e| anyhow::anyhow!("HTML report: {e}"))?;
        write_creating_dirs(p, page).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// Write an output file, creating its folder first (`--json out/x.json`
/// works in a fresh clone).
fn write_creating_dirs(p: &std::path::Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(p, contents)
}

/// The measured spot markets of `--spot-traces` / `--spot-trace-map`.
fn load_spot_markets(
    a: &BacktestArgs,
) -> anyhow::Result<Option<prescale::sim::spot_market::SpotMarkets>> {
    use prescale::sim::spot_market::SpotMarkets;
    let read = |p: &Path| -> anyhow::Result<(String, String)> {
        let name = p.display().to_string();
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading spot trace {name}"))?;
        Ok((name, text))
    };
    if let Some(dir) = &a.spot_traces {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading --spot-traces folder {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|f| f.extension().is_some_and(|x| x == "json"));
        files.sort();
        if files.is_empty() {
            bail!("--spot-traces {}: no *.json trace files", dir.display());
        }
        let texts = files
            .iter()
            .map(|f| read(f))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(Some(SpotMarkets::from_named_files(&texts)?));
    }
    if let Some(map) = &a.spot_trace_map {
        let text = std::fs::read_to_string(map)
            .with_context(|| format!("reading --spot-trace-map {}", map.display()))?;
        let base = map.parent().map(Path::to_path_buf).unwrap_or_default();
        let m = SpotMarkets::from_mapping(&map.display().to_string(), &text, |f| {
            read(&base.join(f)).map_err(|e| format!("{e:#}"))
        })?;
        return Ok(Some(m));
    }
    Ok(None)
}
