//! `prescale bench spot`: the deadline benchmark of *Can't Be Late* (NSDI
//! '24) on measured spot traces. One job of `--job-hours` must finish within
//! `--deadline-hours`; it is started at `--starts` offsets along each trace
//! (or each group of zones with `--zones-at-once`) and run by every policy
//! of [`prescale::sim::spot_bench`]. Prints a table, writes JSON.

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use prescale::sim::spot_bench::{run_policy, JobSpec, Outcome, PolicyName};
use prescale::sim::spot_trace::{parse_trace_name, SpotTrace};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Spot / on-demand price ratio used when the instance type has no price in
/// the table below and `--spot-price-ratio` is not given (the GCP trace).
/// 0.3 is the AWS GPU ratio of the same data and close to the paper's.
pub const DEFAULT_SPOT_PRICE_RATIO: f64 = 0.3;

/// Spot / on-demand ratios of the traces' instance types, from the shared
/// price data: spot = median Linux/UNIX tick over the us-east-1, us-east-2
/// and us-west-2 zones in `aws_spot_prices/2022-05.tsv.zst`; on-demand =
/// us-east-1 in `aws_ondemand_prices_karpenter.csv`.
fn spot_price_ratio_of(instance_type: &str) -> Option<f64> {
    Some(match instance_type {
        "p3.2xlarge" => 0.918 / 3.06,
        "p3.16xlarge" => 9.764 / 24.48,
        "p2.xlarge" => 0.27 / 0.9,
        "p2.16xlarge" => 4.32 / 14.4,
        "r5.16xlarge" => 1.44185 / 4.032,
        _ => return None,
    })
}

#[derive(Debug, Args)]
pub struct BenchSpotArgs {
    /// Trace files (`{"metadata": {"gap_seconds": G}, "data": [...]}`) or
    /// folders searched for `*.json`.
    #[arg(long, num_args = 1.., required = true)]
    pub traces: Vec<PathBuf>,
    /// Work of the job, hours of running.
    #[arg(long, default_value_t = 48.0)]
    pub job_hours: f64,
    /// The job must finish this many hours after it starts.
    #[arg(long, default_value_t = 52.0)]
    pub deadline_hours: f64,
    /// Time lost on every (re)start of an instance, hours.
    #[arg(long, default_value_t = 0.2)]
    pub restart_overhead_hours: f64,
    /// Let the job move between zones: the traces of one folder with the
    /// same file-name tag (`<zone>_<tag>.json`: same type, same period)
    /// form one multi-zone market; otherwise every trace is its own
    /// single-zone market.
    #[arg(long)]
    pub zones_at_once: bool,
    /// Start offsets per market, evenly spread over the trace (traces
    /// shorter than the deadline are read cyclically).
    #[arg(long, default_value_t = 20)]
    pub starts: usize,
    /// Decision tick, seconds (default: half the restart overhead, so a
    /// restart is two ticks). Traces are resampled to it conservatively
    /// (a tick has spot only if every sample in it has).
    #[arg(long)]
    pub tick_seconds: Option<f64>,
    /// Spot price / on-demand price for every trace (default: from the
    /// shared AWS prices per instance type; 0.3 where there is none).
    #[arg(long)]
    pub spot_price_ratio: Option<f64>,
    /// Spot instances the job needs at once (a trace tick with fewer
    /// available has no capacity for it).
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// Hours of each market's past, before the job starts, that `prescale`
    /// learns from (a running service has watched its pools; 0: it starts
    /// from the prior). Starts are placed at least this far into a trace.
    #[arg(long, default_value_t = 24.0)]
    pub history_hours: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write every run as CSV here (market, start, policy, cost ratio,
    /// missed, spot and on-demand hours paid, launches): what each mean is
    /// made of, per start.
    #[arg(long)]
    pub per_run: Option<PathBuf>,
}

/// One market: one or several zones of the same type and period.
struct MarketSrc {
    name: String,
    instance_type: Option<&'static str>,
    zones: Vec<SpotTrace>,
}

fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading folder {}", p.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            for e in entries {
                if e.is_dir() || e.extension().is_some_and(|x| x == "json") {
                    walk(&e, out)?;
                }
            }
        } else {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out)?;
    }
    if out.is_empty() {
        bail!("no trace files (*.json) under the given --traces");
    }
    Ok(out)
}

fn load_markets(a: &BenchSpotArgs) -> anyhow::Result<Vec<MarketSrc>> {
    let mut groups: BTreeMap<String, MarketSrc> = BTreeMap::new();
    for f in collect_files(&a.traces)? {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {name}"))?;
        let trace = SpotTrace::parse(&name, &text)?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let itype = parse_trace_name(stem).and_then(|n| n.instance_type);
        // Zones of one market: same folder (campaign) and same file-name
        // tag (instance type and count), e.g. `us-west-2a_v100_1.json` and
        // `us-west-2b_v100_1.json`.
        let key = if a.zones_at_once {
            let tag = stem.split_once('_').map_or(stem, |(_, t)| t);
            let dir = f
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{dir}/*_{tag}")
        } else {
            name.clone()
        };
        let g = groups.entry(key.clone()).or_insert_with(|| MarketSrc {
            name: key,
            instance_type: itype,
            zones: Vec::new(),
        });
        g.zones.push(trace);
    }
    Ok(groups.into_values().collect())
}

/// Ticks of a setting, checked.
fn job_spec(a: &BenchSpotArgs, ratio: f64) -> anyhow::Result<(JobSpec, f64)> {
    let (h, d, r) = (a.job_hours, a.deadline_hours, a.restart_overhead_hours);
    if !(h > 0.0 && d >= h && r >= 0.0 && h.is_finite() && d.is_finite()) {
        bail!("need 0 < --job-hours ≤ --deadline-hours and --restart-overhead-hours ≥ 0 (got {h}, {d}, {r})");
    }
    let tick_s = a
        .tick_seconds
        .unwrap_or(if r > 0.0 { r * 1800.0 } else { 300.0 });
    if !(tick_s > 0.0 && tick_s.is_finite()) {
        bail!("--tick-seconds must be positive (got {tick_s})");
    }
    if !(0.0..=1.0).contains(&ratio) {
        bail!("--spot-price-ratio must be within [0, 1] (got {ratio})");
    }
    let ticks = |hours: f64| hours * 3600.0 / tick_s;
    let spec = JobSpec {
        work: ticks(h).round() as u32,
        deadline: (ticks(d) + 1e-9).floor() as u32,
        restart: ticks(r).round() as u32,
        spot_ratio: ratio,
        tick_h: tick_s / 3600.0,
    };
    if spec.work + spec.restart > spec.deadline {
        bail!("the deadline leaves no room for even on-demand from the start ({spec:?})");
    }
    Ok((spec, tick_s))
}

#[derive(Default, Clone)]
struct Tally {
    ratio_sum: f64,
    misses: u64,
    runs: u64,
}

/// One market's tallies per policy and its `--per-run` CSV rows.
#[derive(Default, Clone)]
struct MarketResult {
    tallies: Vec<(PolicyName, Tally)>,
    rows: Vec<String>,
}

const PER_RUN_HEADER: &str =
    "market,start,start_offset_h,policy,cost_vs_on_demand,missed,spot_hours,on_demand_hours,launches";

fn per_run_row(
    market: &str,
    s: usize,
    start_s: f64,
    p: PolicyName,
    o: &Outcome,
    spec: &JobSpec,
) -> String {
    let (ratio, tick_h) = (o.cost / spec.on_demand_cost(), spec.tick_h);
    let (spot, od, launches) = match o.usage {
        Some(u) => (
            format!("{:.2}", f64::from(u.spot_ticks) * tick_h),
            format!("{:.2}", f64::from(u.on_demand_ticks) * tick_h),
            u.launches.to_string(),
        ),
        None => Default::default(),
    };
    format!(
        "{market},{s},{:.2},{},{ratio:.5},{},{spot},{od},{launches}",
        start_s / 3600.0,
        p.as_str(),
        o.missed
    )
}

/// Runs every policy on one market at every start; ratios to `on_demand`.
fn bench_market(
    m: &MarketSrc,
    a: &BenchSpotArgs,
    spec: &JobSpec,
    tick_s: f64,
    bar: &ProgressBar,
) -> MarketResult {
    let span = m
        .zones
        .iter()
        .map(SpotTrace::span_s)
        .fold(f64::INFINITY, f64::min);
    let horizon = f64::from(spec.deadline) * tick_s;
    let history_s = (a.history_hours.max(0.0) * 3600.0 / tick_s).round() * tick_s;
    let history_ticks = (history_s / tick_s).round() as usize;
    let room = (span - horizon - history_s).max(0.0);
    let room = if room > 0.0 { room } else { span };
    let mut out = MarketResult {
        tallies: PolicyName::ALL
            .iter()
            .map(|&p| (p, Tally::default()))
            .collect(),
        rows: Vec::new(),
    };
    for s in 0..a.starts {
        let start = room * s as f64 / a.starts.max(1) as f64;
        let start = (start / tick_s).floor() * tick_s + history_s;
        let past: Vec<Vec<bool>> = m
            .zones
            .iter()
            .map(|z| z.resample(start - history_s, tick_s, history_ticks, a.instances))
            .collect();
        let market: Vec<Vec<bool>> = m
            .zones
            .iter()
            .map(|z| z.resample(start, tick_s, spec.deadline as usize, a.instances))
            .collect();
        let base = spec.on_demand_cost();
        for (p, t) in out.tallies.iter_mut() {
            let o = run_policy(*p, spec, &market, &past);
            t.ratio_sum += o.cost / base;
            t.misses += u64::from(o.missed);
            t.runs += 1;
            if a.per_run.is_some() {
                out.rows.push(per_run_row(&m.name, s, start, *p, &o, spec));
            }
        }
        bar.inc(1);
    }
    out
}

pub fn run(a: BenchSpotArgs) -> anyhow::Result<()> {
    let markets = load_markets(&a)?;
    if a.starts == 0 {
        bail!("--starts must be at least 1");
    }
    let total = (markets.len() * a.starts) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} runs {msg}")
            .expect("static template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    let threads = a
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    // Each market's spec (its price ratio) checked up front.
    let specs: Vec<(JobSpec, f64)> = markets
        .iter()
        .map(|m| {
            let ratio = a
                .spot_price_ratio
                .or_else(|| m.instance_type.and_then(spot_price_ratio_of))
                .unwrap_or(DEFAULT_SPOT_PRICE_RATIO);
            job_spec(&a, ratio)
        })
        .collect::<anyhow::Result<_>>()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut per_market: Vec<Option<MarketResult>> = vec![None; markets.len()];
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads.min(markets.len()))
            .map(|_| {
                sc.spawn(|| {
                    let mut got = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(m) = markets.get(i) else { break };
                        let (spec, tick_s) = &specs[i];
                        got.push((i, bench_market(m, &a, spec, *tick_s, &bar)));
                    }
                    got
                })
            })
            .collect();
        for w in workers {
            for (i, r) in w.join().expect("bench worker panicked") {
                per_market[i] = Some(r);
            }
        }
    });
    bar.finish_and_clear();
    if let Some(path) = &a.per_run {
        let mut csv = String::from(PER_RUN_HEADER);
        csv.push('\n');
        for r in per_market.iter().flatten().flat_map(|m| &m.rows) {
            csv.push_str(r);
            csv.push('\n');
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    report(&a, &markets, &specs, &per_market)
}

fn report(
    a: &BenchSpotArgs,
    markets: &[MarketSrc],
    specs: &[(JobSpec, f64)],
    per_market: &[Option<MarketResult>],
) -> anyhow::Result<()> {
    let mut total: BTreeMap<PolicyName, Tally> = BTreeMap::new();
    let mut market_json = Vec::new();
    for ((m, r), (spec, _)) in markets.iter().zip(per_market).zip(specs) {
        let mut pj = serde_json::Map::new();
        for (p, t) in r.iter().flat_map(|m| &m.tallies) {
            let e = total.entry(*p).or_default();
            e.ratio_sum += t.ratio_sum;
            e.misses += t.misses;
            e.runs += t.runs;
            pj.insert(
                p.as_str().into(),
                json!({"cost_vs_on_demand": t.ratio_sum / t.runs.max(1) as f64, "deadline_misses": t.misses}),
            );
        }
        market_json.push(json!({"market": m.name, "zones": m.zones.len(),
            "instance_type": m.instance_type, "spot_price_ratio": spec.spot_ratio, "policies": pj}));
    }
    let mean = |t: &Tally| t.ratio_sum / t.runs.max(1) as f64;
    let opt = total
        .get(&PolicyName::Omniscient)
        .map(mean)
        .unwrap_or(f64::NAN);
    let (spec, tick_s) = specs.first().copied().unwrap_or((
        JobSpec {
            work: 0,
            deadline: 0,
            restart: 0,
            spot_ratio: 0.0,
            tick_h: 0.0,
        },
        0.0,
    ));
    println!(
        "bench spot: {} market(s){}, job {} h, deadline {} h, restart {} h, tick {} s, {} starts each",
        markets.len(),
        if a.zones_at_once { " (zones at once)" } else { "" },
        a.job_hours,
        a.deadline_hours,
        a.restart_overhead_hours,
        tick_s,
        a.starts
    );
    println!(
        "{:<18} {:>18} {:>20} {:>15} {:>6}",
        "policy", "cost_vs_on_demand", "gap_to_omniscient", "deadline_misses", "runs"
    );
    let mut pj = serde_json::Map::new();
    for (p, t) in &total {
        println!(
            "{:<18} {:>18.4} {:>20.4} {:>15} {:>6}",
            p.as_str(),
            mean(t),
            mean(t) - opt,
            t.misses,
            t.runs
        );
        pj.insert(
            p.as_str().into(),
            json!({"cost_vs_on_demand": mean(t), "gap_to_omniscient": mean(t) - opt,
                   "deadline_misses": t.misses, "runs": t.runs}),
        );
    }
    let out = json!({
        "policies": pj,
        "setting": {
            "job_hours": a.job_hours,
            "deadline_hours": a.deadline_hours,
            "restart_overhead_hours": a.restart_overhead_hours,
            "zones_at_once": a.zones_at_once,
            "starts": a.starts,
            "tick_seconds": tick_s,
            "ticks": {"work": spec.work, "deadline": spec.deadline, "restart": spec.restart},
            "instances": a.instances,
            "history_hours": a.history_hours,
            "spot_price_ratio": a.spot_price_ratio,
            "traces": markets.iter().flat_map(|m| m.zones.iter().map(|z| z.name.clone())).collect::<Vec<_>>(),
        },
        "markets": market_json,
    });
    if let Some(p) = &a.json {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(p, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
