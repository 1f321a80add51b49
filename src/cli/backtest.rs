//! `prescale backtest`: replay a trace with real prices through the decision
//! engine and a simulated cluster, and compare scaling policies.
//!
//! With no arguments it runs the bundled sample (compiled into the binary,
//! so it works from any directory): a RICC excerpt, a slice of real AWS spot
//! prices and the on-demand catalogue subset in `data/`.

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use prescale::budget::BudgetFile;
use prescale::engine::{CapacityPlanner, Engine};
use prescale::events::file::{is_events_file, read_events};
use prescale::events::{Event, PriceTick};
use prescale::forecast::Forecaster;
use prescale::import::prices::{parse_prices, read_prices, PriceOptions};
use prescale::import::swf::{parse_swf, read_swf, SwfOptions, SwfReport};
use prescale::io::kafka::brain::EngineFactory;
use prescale::policy::PolicyFile;
use prescale::pricing::{tile_onto, Catalog, TileOptions};
use prescale::sim::inputs::{sim_prices, EngineSource};
use prescale::sim::trace::retime_without_queueing;
use prescale::sim::{
    run_backtest, BacktestInput, OracleForecaster, PolicyKind, SimConfig, SimPrices, TraceInfo,
    Workload,
};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SAMPLE_TRACE: &[u8] = include_bytes!("../../data/ricc-2010-2-excerpt.swf.gz");
pub const SAMPLE_TRACE_NAME: &str = "data/ricc-2010-2-excerpt.swf.gz";
pub const SAMPLE_PRICES: &[u8] = include_bytes!("../../data/aws-spot-2022-05-31-us.tsv");
pub const SAMPLE_PRICES_NAME: &str = "data/aws-spot-2022-05-31-us.tsv";
pub const SAMPLE_CATALOG: &[u8] = include_bytes!("../../data/aws-ondemand-us-east-1.csv");
pub const SAMPLE_CATALOG_NAME: &str = "data/aws-ondemand-us-east-1.csv";

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

/// A trace, prices and catalogue ready to replay.
pub struct Prepared {
    /// Job events and tiled price ticks, in time order.
    pub events: Vec<Event>,
    pub workload: Workload,
    pub prices: SimPrices,
    pub catalog: Arc<Catalog>,
    pub trace: TraceInfo,
    /// The price ticks as read, before tiling (the bench re-tiles them).
    pub raw_ticks: Vec<PriceTick>,
}

fn swf_notes(r: &SwfReport) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    m.insert("swf_lines".into(), r.lines);
    m.insert("completed".into(), r.completed);
    m.insert("failed".into(), r.failed);
    m.insert("cancelled".into(), r.cancelled);
    m.insert("cancelled_before_start".into(), r.cancelled_before_start);
    m.insert("partial_lines".into(), r.partial_lines);
    m.insert("skipped_unknown_runtime".into(), r.skipped_unknown_runtime);
    m.insert("skipped_no_processors".into(), r.skipped_no_processors);
    // Only when there are some, so a clean trace's report is unchanged.
    if r.skipped_duplicate_ids > 0 {
        m.insert("skipped_duplicate_ids".into(), r.skipped_duplicate_ids);
    }
    m
}

/// Load the trace (SWF or events file), prices and catalogue.
pub fn prepare(
    trace: Option<&Path>,
    prices: Option<&Path>,
    catalog: Option<&Path>,
    skip_bad: bool,
    max_jobs: Option<usize>,
    keep_trace_waits: bool,
) -> anyhow::Result<Prepared> {
    let swf_opts = SwfOptions {
        skip_bad,
        max_jobs,
        ..Default::default()
    };
    let mut info = TraceInfo::default();
    let (mut events, spot_in_trace): (Vec<Event>, Vec<PriceTick>) = match trace {
        None => {
            let gz = flate2::read::MultiGzDecoder::new(SAMPLE_TRACE);
            let imp = parse_swf(BufReader::new(gz), SAMPLE_TRACE_NAME, &swf_opts)?;
            info.file = format!("{SAMPLE_TRACE_NAME} (bundled)");
            info.format = "swf".into();
            info.skipped_records = imp.report.skipped_bad_lines;
            info.import_notes = swf_notes(&imp.report);
            (imp.events, Vec::new())
        }
        Some(p) if is_events_file(p) => {
            let d = read_events(p, skip_bad)?;
            info.file = p.display().to_string();
            info.format = "events".into();
            info.skipped_records = d.bad.len() as u64;
            let mut jobs = Vec::new();
            let mut ticks = Vec::new();
            for ev in d.events {
                match ev {
                    Event::PriceTick(t) => ticks.push(t),
                    other => jobs.push(other),
                }
            }
            (jobs, ticks)
        }
        Some(p) => {
            let imp = read_swf(p, &swf_opts)?;
            info.file = p.display().to_string();
            info.format = "swf".into();
            info.skipped_records = imp.report.skipped_bad_lines;
            info.import_notes = swf_notes(&imp.report);
            (imp.events, Vec::new())
        }
    };
    let popts = PriceOptions {
        skip_bad,
        ..Default::default()
    };
    let (ticks, prices_name) = match prices {
        Some(p) => {
            let imp = read_prices(p, &popts)?;
            info.skipped_records += imp.report.skipped_bad_lines;
            (imp.ticks, p.display().to_string())
        }
        None if !spot_in_trace.is_empty() => (
            spot_in_trace,
            "(price ticks in the events file)".to_string(),
        ),
        None => {
            let imp = parse_prices(BufReader::new(SAMPLE_PRICES), SAMPLE_PRICES_NAME, &popts)?;
            (imp.ticks, format!("{SAMPLE_PRICES_NAME} (bundled)"))
        }
    };
    let (catalog, catalog_name) = match catalog {
        Some(p) => (Catalog::load(p)?, p.display().to_string()),
        None => (
            Catalog::parse(SAMPLE_CATALOG, SAMPLE_CATALOG_NAME)?,
            format!("{SAMPLE_CATALOG_NAME} (bundled)"),
        ),
    };
    if catalog.is_empty() {
        bail!("{catalog_name}: the catalogue has no instance types");
    }
    if keep_trace_waits {
        events.sort_by_key(|e| e.time());
    } else {
        let n = retime_without_queueing(&mut events);
        info.import_notes
            .insert("completions_retimed_without_queueing".into(), n);
    }
    let start = events.first().map(|e| e.time()).unwrap_or(0);
    let end = events.last().map(|e| e.time()).unwrap_or(0);
    let tiled = tile_onto(
        &ticks,
        start,
        end,
        &catalog,
        &TileOptions {
            regions: Vec::new(),
            catalog_types_only: true,
        },
    );
    let prices = sim_prices(&catalog, &tiled);
    if let Some(e) = prescale::limits::span_error(start, end, SimConfig::default().bucket_ms) {
        bail!("{}: {e}", info.file);
    }
    let unplaceable = drop_unplaceable(&mut events, &prices, skip_bad, &info.file)?;
    if unplaceable > 0 {
        info.skipped_records += unplaceable;
        info.import_notes
            .insert("skipped_larger_than_catalogue".into(), unplaceable);
    }
    let workload = Workload::from_events(&events);
    info.jobs = workload.jobs.len() as u64;
    info.price_ticks = tiled.len() as u64;
    info.compute_environments = workload.envs.len() as u64;
    info.start_ms = start;
    info.end_ms = end;
    info.span_s = (end - start) as f64 / 1000.0;
    info.prices = prices_name;
    info.catalog = catalog_name;
    // Prices first at equal times, so a decision at t sees the price at t.
    let mut all: Vec<Event> = tiled.into_iter().map(Event::PriceTick).collect();
    all.extend(events);
    all.sort_by_key(|e| e.time());
    let thinned = thin_idle_prices(&mut all);
    if thinned > 0 {
        info.import_notes
            .insert("price_ticks_in_idle_stretches_folded".into(), thinned);
    }
    info.events = all.len() as u64;
    Ok(Prepared {
        events: all,
        workload,
        prices,
        catalog: Arc::new(catalog),
        trace: info,
        raw_ticks: ticks,
    })
}

/// Cost grows with events, not with time spans: in a stretch with no job
/// outstanding that starts a full state history window after the last job
/// activity (the engine then sees only zeros and closes the rest of the
/// stretch at once, see `state::DemandState`), only each pool's last price
/// tick is kept, so the price book is the same when work resumes. Tiled
/// prices would otherwise tick through a ten-year gap and wake the engine
/// every few minutes. Returns the ticks dropped.
fn thin_idle_prices(all: &mut Vec<Event>) -> u64 {
    let cfg = prescale::state::StateConfig::default();
    let window = (cfg.history_buckets as i64 + 2) * cfg.bucket_ms;
    let mut outstanding = std::collections::HashSet::new();
    let mut last_activity = i64::MIN;
    // index in `all` where the current idle stretch began (its first price tick)
    let mut stretch: Option<usize> = None;
    let mut drop = vec![false; all.len()];
    let fold = |from: usize, to: usize, drop: &mut Vec<bool>, all: &[Event]| {
        let mut seen = std::collections::HashSet::new();
        for i in (from..to).rev() {
            if let Event::PriceTick(t) = &all[i] {
                let key = (&t.provider, &t.region, &t.zone, &t.instance_type, t.market);
                if !seen.insert(key) {
                    drop[i] = true;
                }
            }
        }
    };
    for i in 0..all.len() {
        let t = all[i].time();
        match &all[i] {
            Event::PriceTick(_) => {
                if outstanding.is_empty()
                    && stretch.is_none()
                    && t > last_activity.saturating_add(window)
                {
                    stretch = Some(i);
                }
            }
            ev => {
                if let Some(from) = stretch.take() {
                    fold(from, i, &mut drop, all);
                }
                last_activity = t;
                match ev {
                    Event::JobSubmitted(j) => {
                        outstanding.insert(j.job_id.clone());
                    }
                    Event::JobCompleted(c) => {
                        outstanding.remove(&c.job_id);
                    }
                    _ => {}
                }
            }
        }
    }
    // the stretch after the last job runs to the end of the trace
    if let Some(from) = stretch {
        fold(from, all.len(), &mut drop, all);
    }
    let n = drop.iter().filter(|&&d| d).count() as u64;
    if n > 0 {
        let mut k = 0;
        all.retain(|_| {
            k += 1;
            !drop[k - 1]
        });
    }
    n
}

/// Jobs no gang of at most [`prescale::limits::MAX_GANG_INSTANCES`]
/// instances of the catalogue can hold are an error naming the job (with
/// `skip_bad`, they and their completions are dropped and counted).
fn drop_unplaceable(
    events: &mut Vec<Event>,
    prices: &SimPrices,
    skip_bad: bool,
    file: &str,
) -> anyhow::Result<u64> {
    use prescale::limits::MAX_GANG_INSTANCES;
    let max_mcpu = prices
        .types
        .iter()
        .map(|t| t.vcpus as i64 * 1000)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut bad = std::collections::HashSet::new();
    for ev in events.iter() {
        let Event::JobSubmitted(j) = ev else { continue };
        let mcpu = (j.vcpus * 1000.0).round().max(1.0) as i64;
        let fits = (mcpu + max_mcpu - 1) / max_mcpu <= MAX_GANG_INSTANCES
            && prescale::sim::cluster::gang_parts(prices, mcpu, j.memory_mib, j.gpus)
                .is_some_and(|(k, ..)| i64::from(k) <= MAX_GANG_INSTANCES);
        if fits {
            continue;
        }
        if !skip_bad {
            bail!(
                "{file}: job `{}`: {} vCPUs, {} MiB, {} GPUs is more than {MAX_GANG_INSTANCES} \
                 instances of the catalogue can hold (--skip-bad skips such jobs)",
                prescale::limits::quote(&j.job_id),
                j.vcpus,
                j.memory_mib,
                j.gpus
            );
        }
        bad.insert(j.job_id.clone());
    }
    if !bad.is_empty() {
        events.retain(|ev| match ev {
            Event::JobSubmitted(j) => !bad.contains(&j.job_id),
            Event::JobCompleted(c) => !bad.contains(&c.job_id),
            _ => true,
        });
    }
    Ok(bad.len() as u64)
}

/// The engine the service runs, with its default forecaster and planner.
pub fn make_engine(
    catalog: Arc<Catalog>,
    forecaster: Option<Arc<dyn Forecaster>>,
    policy: &PolicyFile,
) -> Engine {
    let (default_fc, planner) = decision_core(&catalog, policy.clone());
    EngineFactory::new(catalog, forecaster.unwrap_or(default_fc), planner).engine()
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
        let mut w = prescale::events::file::EventsWriter::create(p)?;
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

/// The forecaster and planner the engine runs with.
///
/// Interim until the forecasting (issue 3) and cost-aware planning (issue 4)
/// work lands on main: a seasonal-naive forecaster (yesterday at this time,
/// last value before a day of history) and a floor planner that pre-boots
/// the forecast median over the provisioning lead time on the cheapest spot
/// pools per vCPU. Both are simple on purpose; they are replaced, not tuned.
/// Write an output file, creating its folder first (`--json out/x.json`
/// works in a fresh clone).
fn write_creating_dirs(p: &std::path::Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(p, contents)
}

pub fn decision_core(
    _catalog: &Catalog,
    policy: PolicyFile,
) -> (Arc<dyn Forecaster>, Arc<dyn CapacityPlanner>) {
    (
        forecaster(),
        Arc::new(prescale::planner::CostAwarePlanner {
            policy,
            ..Default::default()
        }),
    )
}

/// The policy file at `path`, or the defaults (see `policy::EnvPolicy`).
pub fn load_policy(path: Option<&Path>) -> anyhow::Result<PolicyFile> {
    Ok(match path {
        Some(p) => PolicyFile::load(p)?,
        None => PolicyFile::default(),
    })
}

/// The shipped LSTM (`models/lstm`), or the statistical model when the
/// checkpoint is missing, corrupt or made for another bucket/horizon.
fn forecaster() -> Arc<dyn Forecaster> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lstm/model.json");
    let (f, err) = prescale::forecast::shared::load_or_fallback(&path, 300_000, 12);
    if let Some(e) = err {
        eprintln!("forecaster: {e}; using the statistical model (ETS)");
    }
    Arc::new(f)
}
