//! The policies compared by the backtest, all over the same jobs, prices and
//! simulator mechanics:
//!
//! - `reactive`: an AWS Batch managed compute environment (on-demand,
//!   BEST_FIT, `minvCpus` 0, scale-in after the idle timeout).
//! - `static`: a fixed on-demand fleet sized at the p90 of the trace's
//!   demand (or `SimConfig::static_vcpus`), up for the whole run.
//! - `predictive`: every input event goes through the decision engine in
//!   time order; each `ScalingCommand` is applied at its `issued_at` as
//!   Batch applies `UpdateComputeEnvironment`: `min_vcpus` is kept alive,
//!   capacity short of `desired_vcpus` is pre-booted from the command's
//!   `instance_mix`, `max_vcpus` caps the environment, and the reactive
//!   mechanism covers queued jobs beyond that, launching BEST_FIT from the
//!   markets the mix names (on-demand when it names none).
//! - `oracle`: the same engine with [`super::OracleForecaster`], which knows
//!   the future demand: a lower-bound reference for any forecaster.
//! - `batch_spot`, `karpenter`, `ec2_predictive`: the peer baselines
//!   ([`super::peers`]), commanded clusters whose commands and provisioning
//!   rules follow each product's documentation.
//!
//! After the runs the report gets the trace's physical limit
//! ([`super::bound`]) and each policy's cost against it and against the
//! best peer.
//!
//! **With budgets** (`BacktestInput::budgets` non-empty) `predictive` and
//! `oracle` run in a closed loop instead (`run_closed_loop`): the engine
//! and the simulated clusters advance together in event time; the engine
//! gets the allocations at the trace start, every trace event except the
//! completions of jobs the simulator runs, and instead the simulator's own
//! completions (when it finished them, on what, vCPU-seconds); each command
//! is applied when issued — scaling commands as floors, preemption commands
//! (QUEUE / PREEMPT / RESUME / MIGRATE) to the job. So a job the engine held
//! does not "complete" behind its back, and the ledger's spend follows the
//! simulated run. `reactive` and `static` ignore budgets (that is the
//! comparison); every policy's `budget_overrun_usd` is measured on the
//! simulated spend ([`super::budget::BudgetBook`]).

use super::budget::BudgetBook;
use super::cluster::{Cluster, FloorCommand, Mode, RunStats, Series};
use super::peers::{Peer, ProvisionRules};
use super::prices::SimPrices;
use super::report::{percentile, BacktestReport, PolicyReport, TraceInfo};
use super::trace::Workload;
use super::{SimConfig, SimError};
use crate::engine::Engine;
use crate::events::{
    BudgetAllocation, Command, Event, JobCompleted, JobStatus, Market, Millis, ScalingCommand,
    SpotSignal,
};
use crate::forecast::Forecaster;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    Reactive,
    Static,
    Predictive,
    Oracle,
    /// A peer baseline (see [`super::peers`]).
    Peer(Peer),
}

impl PolicyKind {
    /// Which policies take longest to simulate, lowest first: those the
    /// engine decides (a decision per tick), then the hourly forecast of
    /// `ec2_predictive`, then the reactive ones.
    fn expected_cost_rank(self) -> u8 {
        match self {
            PolicyKind::Predictive => 0,
            PolicyKind::Oracle => 1,
            PolicyKind::Peer(Peer::Ec2Predictive) => 2,
            _ => 3,
        }
    }

    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::Reactive,
        PolicyKind::Static,
        PolicyKind::Peer(Peer::BatchSpot),
        PolicyKind::Peer(Peer::Karpenter),
        PolicyKind::Peer(Peer::Ec2Predictive),
        PolicyKind::Predictive,
        PolicyKind::Oracle,
    ];

    /// What `--policies` runs when not given: every policy, so each
    /// backtest answers both "better than what I would otherwise run?" and
    /// "how far from the limit?".
    pub const DEFAULT_LIST: &'static str =
        "reactive,static,batch_spot,karpenter,ec2_predictive,predictive,oracle";

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Reactive => "reactive",
            PolicyKind::Static => "static",
            PolicyKind::Predictive => "predictive",
            PolicyKind::Oracle => "oracle",
            PolicyKind::Peer(p) => p.name(),
        }
    }

    pub fn parse_list(s: &str) -> Result<Vec<PolicyKind>, SimError> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let k = match p {
                "reactive" => PolicyKind::Reactive,
                "static" => PolicyKind::Static,
                "predictive" => PolicyKind::Predictive,
                "oracle" => PolicyKind::Oracle,
                "batch_spot" => PolicyKind::Peer(Peer::BatchSpot),
                "karpenter" => PolicyKind::Peer(Peer::Karpenter),
                "ec2_predictive" => PolicyKind::Peer(Peer::Ec2Predictive),
                other => return Err(SimError::UnknownPolicy(other.to_string())),
            };
            if !out.contains(&k) {
                out.push(k);
            }
        }
        Ok(out)
    }
}

/// Where `predictive` and `oracle` get their decisions: the engine, fed
/// every input event in time order. `forecaster` overrides the engine's own
/// (the oracle passes [`super::OracleForecaster`]).
pub trait CommandSource {
    fn commands(
        &self,
        events: &[Event],
        forecaster: Option<Arc<dyn Forecaster>>,
    ) -> Vec<ScalingCommand>;

    /// A fresh engine, for the closed loop run with budgets (None: this
    /// source cannot run one).
    fn engine(&self, _forecaster: Option<Arc<dyn Forecaster>>) -> Option<Engine> {
        None
    }
}

/// Everything one backtest needs.
pub struct BacktestInput<'a> {
    /// All input events, in time order (prices included).
    pub events: &'a [Event],
    pub workload: &'a Workload,
    pub prices: &'a SimPrices,
    pub cfg: &'a SimConfig,
    pub policies: &'a [PolicyKind],
    /// How many policies run at once (each on a thread of its own; at
    /// least 1). The report does not depend on it.
    pub threads: usize,
    pub source: &'a (dyn CommandSource + Sync),
    /// The oracle's forecaster (built from the same events by the caller).
    pub oracle: Option<Arc<dyn Forecaster>>,
    pub trace: TraceInfo,
    /// Budget allocations (`--budgets`), given to the engine at the trace
    /// start; empty: no budgets (open loop, as without them nothing is
    /// enforced).
    pub budgets: &'a [BudgetAllocation],
}

fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// Turn the engine's commands into per-environment floor commands.
/// Returns them with the number of mix entries naming a pool the simulator
/// does not know (those are priced as the closest known pool or dropped).
pub fn floor_commands(
    cmds: &[ScalingCommand],
    workload: &Workload,
    prices: &SimPrices,
) -> (Vec<Vec<FloorCommand>>, u64) {
    let mut out: Vec<Vec<FloorCommand>> = vec![Vec::new(); workload.envs.len()];
    let mut unknown = 0u64;
    for c in cmds {
        let (fc, u) = floor_command(c, workload, prices);
        unknown += u;
        if let Some((env, fc)) = fc {
            out[env].push(fc);
        }
    }
    for v in &mut out {
        v.sort_by_key(|c| c.at);
    }
    (out, unknown)
}

/// One scaling command as a floor command of its environment (None for an
/// environment the trace does not have), with its count of unknown pools.
pub fn floor_command(
    c: &ScalingCommand,
    workload: &Workload,
    prices: &SimPrices,
) -> (Option<(usize, FloorCommand)>, u64) {
    let Ok(env) = workload.envs.binary_search(&c.compute_environment) else {
        return (None, 0);
    };
    let mut unknown = 0u64;
    let mut mix: BTreeMap<usize, u32> = BTreeMap::new();
    let mut markets: Vec<Market> = Vec::new();
    for a in &c.instance_mix {
        if !markets.contains(&a.market) {
            markets.push(a.market);
        }
        if a.count <= 0 {
            continue;
        }
        // Reserved capacity is modelled as on-demand priced (already paid
        // capacity has no separate pool in the simulator).
        let market = if a.market == Market::Reserved {
            Market::OnDemand
        } else {
            a.market
        };
        let pool = prices
            .pool(&a.instance_type, market, &a.region)
            .or_else(|| prices.any_pool(&a.instance_type, market));
        match pool {
            Some(p) => *mix.entry(p).or_insert(0) += a.count as u32,
            None => unknown += 1,
        }
    }
    // The markets the environment may burst into are the command's
    // `markets` constraint (the policy's allowed markets) when it has one: a
    // mix of spot only must not strand a job no spot type can host.
    if let Some(allowed) = c.constraints.get("markets") {
        for m in allowed
            .split(',')
            .filter_map(|m| m.trim().parse::<Market>().ok())
        {
            if !markets.contains(&m) {
                markets.push(m);
            }
        }
    }
    if markets.contains(&Market::Reserved) && !markets.contains(&Market::OnDemand) {
        markets.push(Market::OnDemand);
    }
    let burst_pools: Vec<usize> = if markets.is_empty() || markets == [Market::OnDemand] {
        Vec::new()
    } else {
        (0..prices.pools.len())
            .filter(|&p| {
                let m = prices.pools[p].market;
                markets.contains(&m)
            })
            .collect()
    };
    let fc = FloorCommand {
        at: c.issued_at,
        mix: mix.into_iter().collect(),
        min_mcpu: c.min_vcpus.max(0) * 1000,
        desired_mcpu: c.desired_vcpus.max(c.min_vcpus).max(0) * 1000,
        burst_pools: burst_pools.into(),
        max_mcpu: (c.max_vcpus > 0).then_some(c.max_vcpus * 1000),
    };
    (Some((env, fc)), unknown)
}

/// The static fleet of one environment: the cheapest on-demand type per
/// vCPU that can host the 99th-percentile job (so nearly every job fits one
/// instance), `ceil(p90 demand / its vCPUs)` instances.
pub fn static_fleet(
    workload: &Workload,
    env: usize,
    prices: &SimPrices,
    cfg: &SimConfig,
) -> Option<(usize, u32)> {
    let jobs: Vec<_> = workload.jobs.iter().filter(|j| j.env == env).collect();
    let mut mcpus: Vec<f64> = jobs.iter().map(|j| j.mcpu as f64).collect();
    let mut mems: Vec<f64> = jobs.iter().map(|j| j.memory_mib as f64).collect();
    let need_m = percentile(&mut mcpus, 0.99) as i64;
    let need_mem = percentile(&mut mems, 0.99) as i64;
    let mut best: Option<(f64, i64, usize)> = None;
    for (p, pool) in prices.pools.iter().enumerate() {
        if pool.market != Market::OnDemand {
            continue;
        }
        let ty = &prices.types[pool.ty];
        let tm = ty.vcpus as i64 * 1000;
        // A part of a gang job is at most one instance; hosting min(job, type).
        let fits = tm >= need_m.min(biggest_mcpu(prices))
            && ty.memory_mib as f64
                >= need_mem as f64 * (tm.min(need_m.max(1)) as f64 / need_m.max(1) as f64);
        if !fits {
            continue;
        }
        let per = pool.curve.at(0) / ty.vcpus as f64;
        let better = match best {
            None => true,
            Some((bp, bm, _)) => per < bp - 1e-12 || ((per - bp).abs() <= 1e-12 && tm > bm),
        };
        if better {
            best = Some((per, tm, p));
        }
    }
    let (_, tm, pool) = best?;
    let vcpus = match cfg.static_vcpus {
        Some(v) => v as f64,
        None => {
            let start = workload.first_event - workload.first_event.rem_euclid(cfg.bucket_ms);
            let n = ((workload.last_event - start) / cfg.bucket_ms + 1).max(1) as usize;
            let mut d = workload.demand_series(Some(env), start, cfg.bucket_ms, n);
            percentile(&mut d, 0.9)
        }
    };
    let count = ((vcpus * 1000.0) / tm as f64).ceil().max(1.0) as u32;
    Some((pool, count))
}

fn biggest_mcpu(prices: &SimPrices) -> i64 {
    prices
        .types
        .iter()
        .map(|t| t.vcpus as i64 * 1000)
        .max()
        .unwrap_or(0)
}

/// Run every requested policy and assemble the report. `progress` hears the
/// name of each policy as it finishes (from the thread that ran it).
pub fn run_backtest(
    input: &BacktestInput<'_>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BacktestReport, SimError> {
    let w = input.workload;
    if w.jobs.is_empty() {
        return Err(SimError::EmptyTrace);
    }
    if !input
        .prices
        .pools
        .iter()
        .any(|p| p.market == Market::OnDemand)
    {
        return Err(SimError::NoInstanceTypes);
    }
    let cfg = input.cfg;
    let series_start = w.first_event - w.first_event.rem_euclid(cfg.bucket_ms);
    let mut report = BacktestReport {
        trace: input.trace.clone(),
        policies: BTreeMap::new(),
        series: BTreeMap::new(),
        demand: Series::default(),
        lower_bound_usd: 0.0,
        lower_bound_on_demand_usd: 0.0,
    };
    // Demand as recorded, on the same grid as the policies' samples.
    let n = ((w.last_event - series_start) / cfg.bucket_ms + 1).max(1) as usize;
    report.demand = Series {
        start: series_start,
        bucket_ms: cfg.bucket_ms,
        busy_vcpus: if cfg.record_series {
            w.demand_series(None, series_start, cfg.bucket_ms, n)
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    // Policies are independent (each its own engine, clusters and seeds), so
    // they run side by side; the report is keyed by name, so the order they
    // finish in changes nothing.
    let threads = input.threads.clamp(1, input.policies.len().max(1));
    // The costliest first (the engine-driven ones decide every tick), so a
    // long run does not start last and set the wall time alone.
    let mut order: Vec<usize> = (0..input.policies.len()).collect();
    order.sort_by_key(|&i| input.policies[i].expected_cost_rank());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = order.get(k) else {
                            return out;
                        };
                        let kind = input.policies[i];
                        out.push((i, run_policy(input, kind, series_start)));
                        progress(kind.name());
                    }
                })
            })
            .collect();
        // A panic in a policy's run is a bug: let it surface as one.
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    // In the order asked for, so the first error reported is the first policy's.
    done.sort_by_key(|(i, _)| *i);
    for (i, r) in done {
        let (rep, series) = r?;
        let name = input.policies[i].name().to_string();
        report.policies.insert(name.clone(), rep);
        report.series.insert(name, series);
    }
    report.set_limits(super::bound::lower_bound(w, input.prices));
    Ok(report)
}

/// One policy over the whole trace: its report and its series.
fn run_policy(
    input: &BacktestInput<'_>,
    kind: PolicyKind,
    series_start: Millis,
) -> Result<(PolicyReport, Series), SimError> {
    let w = input.workload;
    let cfg = input.cfg;
    let engine_driven = matches!(kind, PolicyKind::Predictive | PolicyKind::Oracle);
    let fc = if kind == PolicyKind::Oracle {
        input.oracle.clone()
    } else {
        None
    };
    // A measured spot market answers the plan (notices, refusals): the
    // engine must see the simulation to learn from it, so it runs in
    // closed loop, as with budgets.
    let closed = !input.budgets.is_empty() || cfg.spot_markets.is_some();
    if engine_driven && closed {
        let engine = input
            .source
            .engine(fc)
            .ok_or(SimError::ClosedLoopNeedsEngine)?;
        let run = run_closed_loop(input, kind, engine, series_start);
        let rep = PolicyReport::from_stats(&run.total, run.scaling_commands, run.unknown)
            .with_budgets(&run.book, run.budget_commands)
            .with_boot_estimate(&run.total, input.prices, cfg.boot_delay_ms);
        return Ok((rep, run.series));
    }
    let (cmds, n_cmds, unknown) = if engine_driven {
        let raw = input.source.commands(input.events, fc);
        let n = raw.len() as u64;
        let (f, u) = floor_commands(&raw, w, input.prices);
        (f, n, u)
    } else if let PolicyKind::Peer(peer) = kind {
        let f: Vec<Vec<FloorCommand>> = (0..w.envs.len())
            .map(|env| peer.commands(w, env, input.prices, cfg))
            .collect();
        let n = f.iter().map(|v| v.len() as u64).sum();
        (f, n, 0)
    } else {
        (vec![Vec::new(); w.envs.len()], 0, 0)
    };
    let mut total = RunStats::default();
    let mut series: Option<Series> = None;
    let mut book = BudgetBook::new(input.budgets);
    for (env, env_cmds) in cmds.iter().enumerate() {
        let jobs: Vec<_> = w.jobs.iter().filter(|j| j.env == env).collect();
        let mode = match kind {
            PolicyKind::Reactive => Mode::Reactive,
            PolicyKind::Static => match static_fleet(w, env, input.prices, cfg) {
                Some((pool, count)) => Mode::Static { pool, count },
                None => return Err(SimError::NoInstanceTypes),
            },
            PolicyKind::Predictive | PolicyKind::Oracle | PolicyKind::Peer(_) => {
                Mode::Commanded { commands: env_cmds }
            }
        };
        let rules = match kind {
            PolicyKind::Peer(p) => p.rules(cfg),
            _ => ProvisionRules::default(),
        };
        let mut st = env_cluster(input, kind, env, jobs.clone(), mode, series_start)
            .with_rules(rules)
            .run();
        settle_env(
            &mut st,
            &jobs,
            input.prices,
            &mut total,
            &mut series,
            &mut book,
        );
    }
    let rep = PolicyReport::from_stats(&total, n_cmds, unknown)
        .with_budgets(&book, 0)
        .with_boot_estimate(&total, input.prices, cfg.boot_delay_ms);
    Ok((rep, series.unwrap_or_default()))
}

/// What one closed-loop run produced.
struct ClosedRun {
    total: RunStats,
    series: Series,
    book: BudgetBook,
    scaling_commands: u64,
    budget_commands: u64,
    unknown: u64,
}

/// The engine and one simulated cluster per environment advance together in
/// event time (see the module doc). At equal times trace events go to the
/// engine first (so a QUEUE at submission holds the job before the
/// simulator sees it arrive), then the simulator processes that instant and
/// its completions go to the engine. Commands apply at the time the
/// simulation has reached when they are issued. After the last trace event
/// the simulator keeps feeding completions until it is done; then the
/// engine's open buckets are closed ([`Engine::finish`]) and any RESUME it
/// issues still runs.
fn run_closed_loop(
    input: &BacktestInput<'_>,
    kind: PolicyKind,
    mut engine: Engine,
    series_start: Millis,
) -> ClosedRun {
    let w = input.workload;
    let env_jobs: Vec<Vec<&super::trace::SimJob>> = (0..w.envs.len())
        .map(|env| w.jobs.iter().filter(|j| j.env == env).collect())
        .collect();
    let mut index: HashMap<&str, (usize, u32)> = HashMap::new();
    for (env, jobs) in env_jobs.iter().enumerate() {
        for (i, j) in jobs.iter().enumerate() {
            index.insert(j.id.as_str(), (env, i as u32));
        }
    }
    let mut clusters = commanded_clusters(input, kind, &env_jobs, series_start);
    let allocations = allocations_at(input.budgets, w.first_event);
    let mut trace = engine_trace(input, &allocations).peekable();
    let mut run = ClosedRun {
        total: RunStats::default(),
        series: Series::default(),
        book: BudgetBook::new(input.budgets),
        scaling_commands: 0,
        budget_commands: 0,
        unknown: 0,
    };
    let mut out: Vec<Command> = Vec::new();
    let mut finished = false;
    let mut clock = w.first_event;
    loop {
        let sim_next = clusters.iter_mut().filter_map(|c| c.next_time()).min();
        let trace_next = trace.peek().map(|e| e.time());
        let trace_first = match (trace_next, sim_next) {
            (Some(t), Some(s)) => t <= s,
            (t, _) => t.is_some(),
        };
        match (trace_first, sim_next) {
            (true, _) => {
                let Some(ev) = trace.next() else { break };
                clock = clock.max(ev.time());
                engine.handle(ev, &mut out);
            }
            (false, Some(s)) => {
                clock = clock.max(s);
                let done = advance_all(&mut clusters, &env_jobs, input, s);
                for c in done {
                    engine.handle(&Event::JobCompleted(c), &mut out);
                }
                for s in spot_signals(&mut clusters, input) {
                    engine.handle(&s, &mut out);
                }
            }
            (false, None) if !finished => {
                finished = true;
                engine.finish(&mut out);
            }
            (false, None) => break,
        }
        for cmd in out.drain(..) {
            apply_command(cmd, clock, &mut clusters, &index, input, &mut run);
        }
    }
    settle(clusters, &env_jobs, input.prices, &mut run);
    run
}

/// One commanded cluster per environment, started (and reporting its
/// traced spot pools' notices when the engine is to learn from them).
fn commanded_clusters<'a>(
    input: &BacktestInput<'a>,
    kind: PolicyKind,
    env_jobs: &[Vec<&'a super::trace::SimJob>],
    series_start: Millis,
) -> Vec<Cluster<'a>> {
    let cfg = input.cfg;
    env_jobs
        .iter()
        .enumerate()
        .map(|(env, jobs)| {
            let mode = Mode::Commanded { commands: &[] };
            let mut c = env_cluster(input, kind, env, jobs.clone(), mode, series_start);
            c.start();
            if cfg.spot_markets.is_some() && cfg.spot_signals {
                c.report_spot_signals();
            }
            c
        })
        .collect()
}

/// The simulated cluster of environment `env` under policy `kind`, with
/// its own random draws (seeded by policy and environment, so adding a
/// policy or an environment changes no other's draws).
fn env_cluster<'a>(
    input: &BacktestInput<'a>,
    kind: PolicyKind,
    env: usize,
    jobs: Vec<&'a super::trace::SimJob>,
    mode: Mode<'a>,
    series_start: Millis,
) -> Cluster<'a> {
    let (w, cfg) = (input.workload, input.cfg);
    let seed = cfg.seed ^ fnv(&[kind.name(), &w.envs[env]]);
    Cluster::new(
        cfg,
        input.prices,
        jobs,
        mode,
        seed,
        series_start,
        w.last_event,
    )
}

/// The budget allocations, given to the engine at the trace start `t0`.
fn allocations_at(budgets: &[BudgetAllocation], t0: Millis) -> Vec<Event> {
    budgets
        .iter()
        .map(|a| {
            Event::BudgetAllocation(BudgetAllocation {
                at: t0,
                ..a.clone()
            })
        })
        .collect()
}

/// What the engine is fed from the trace: the allocations, then the
/// trace's events but for the completions of the jobs the simulator runs
/// (it reports those itself). Jobs cancelled before they ran keep their
/// recorded cancellation.
fn engine_trace<'e>(
    input: &'e BacktestInput<'_>,
    allocations: &'e [Event],
) -> impl Iterator<Item = &'e Event> + 'e {
    let simulated: HashSet<&str> = input
        .workload
        .jobs
        .iter()
        .filter(|j| !j.cancelled_in_queue)
        .map(|j| j.id.as_str())
        .collect();
    allocations
        .iter()
        .chain(input.events.iter().filter(move |e| match e {
            Event::JobCompleted(c) => !simulated.contains(c.job_id.as_str()),
            _ => true,
        }))
}

/// Apply one engine command to the clusters at `clock`, counting it.
fn apply_command(
    cmd: Command,
    clock: Millis,
    clusters: &mut [Cluster<'_>],
    index: &HashMap<&str, (usize, u32)>,
    input: &BacktestInput<'_>,
    run: &mut ClosedRun,
) {
    match cmd {
        Command::Scaling(sc) => {
            run.scaling_commands += 1;
            let (fc, u) = floor_command(&sc, input.workload, input.prices);
            run.unknown += u;
            if let Some((env, fc)) = fc {
                clusters[env].apply_floor(clock, &fc);
            }
        }
        Command::Preemption(p) => {
            run.budget_commands += 1;
            if let Some(&(env, j)) = index.get(p.job_id.as_str()) {
                clusters[env].apply_preemption(clock, j, p.action);
            }
        }
    }
}

/// Finish every cluster and add its spend, budget charges, statistics and
/// series to `run`.
fn settle(
    clusters: Vec<Cluster<'_>>,
    env_jobs: &[Vec<&super::trace::SimJob>],
    prices: &SimPrices,
    run: &mut ClosedRun,
) {
    let mut series: Option<Series> = None;
    for (env, c) in clusters.into_iter().enumerate() {
        let mut st = c.finish();
        let (total, book) = (&mut run.total, &mut run.book);
        settle_env(&mut st, &env_jobs[env], prices, total, &mut series, book);
    }
    run.series = series.unwrap_or_default();
}

/// Add one environment's run to the policy's totals: its spend attributed
/// to its jobs and charged to their budgets, its statistics and its series.
fn settle_env(
    st: &mut RunStats,
    jobs: &[&super::trace::SimJob],
    prices: &SimPrices,
    total: &mut RunStats,
    series: &mut Option<Series>,
    book: &mut BudgetBook,
) {
    super::costs::attribute_spend(st, jobs, prices);
    book.charge(jobs, &st.spend, prices);
    merge(total, st);
    match series {
        None => *series = Some(std::mem::take(&mut st.series)),
        Some(s) => s.add(&st.series),
    }
}

/// Advance every environment's cluster to `s` and return the completions
/// they report, as the engine sees them, in (finish time, job id) order.
fn advance_all(
    clusters: &mut [Cluster<'_>],
    env_jobs: &[Vec<&super::trace::SimJob>],
    input: &BacktestInput<'_>,
    s: Millis,
) -> Vec<JobCompleted> {
    let w = input.workload;
    let mut done: Vec<JobCompleted> = Vec::new();
    for (env, c) in clusters.iter_mut().enumerate() {
        c.advance(s);
        for d in c.take_completions() {
            let job = env_jobs[env][d.job as usize];
            let pool = d.pool.map(|p| &input.prices.pools[p]);
            done.push(JobCompleted {
                job_id: job.id.as_str().into(),
                compute_environment: w.envs[env].as_str().into(),
                started_at: d.first_start,
                finished_at: d.finished_at,
                status: JobStatus::Succeeded,
                instance_type: pool.map(|p| input.prices.types[p.ty].name.as_str().into()),
                market: pool.map(|p| p.market),
                region: pool.map(|p| p.region.as_str().into()),
                vcpu_seconds: d.vcpu_seconds,
                max_memory_mib: None,
            });
        }
    }
    done.sort_by(|a, b| (a.finished_at, &a.job_id).cmp(&(b.finished_at, &b.job_id)));
    done
}

/// The traced pools' notices and refusals since the last call, as the
/// spot signals a live scheduler would publish (region and type, no zone:
/// the simulator's pools are per region), in (time, pool, kind) order.
fn spot_signals(clusters: &mut [Cluster<'_>], input: &BacktestInput<'_>) -> Vec<Event> {
    let mut all: Vec<super::cluster::SimSpotSignal> = clusters
        .iter_mut()
        .flat_map(Cluster::take_spot_signals)
        .collect();
    all.sort_by_key(|s| (s.at, s.pool, s.kind));
    let prices = input.prices;
    all.into_iter()
        .map(|s| {
            let pool = &prices.pools[s.pool];
            Event::SpotSignal(SpotSignal {
                at: s.at,
                kind: s.kind,
                region: pool.region.as_str().into(),
                zone: None,
                instance_type: prices.types[pool.ty].name.as_str().into(),
                instance_id: None,
                count: i32::try_from(s.count).unwrap_or(i32::MAX),
            })
        })
        .collect()
}

fn merge(total: &mut RunStats, st: &RunStats) {
    for (m, c) in &st.cost_by_market {
        *total.cost_by_market.entry(*m).or_insert(0.0) += c;
    }
    for (k, c) in &st.cost_by_type {
        let t = total.cost_by_type.entry(k.clone()).or_default();
        t.usd += c.usd;
        t.vcpu_hours += c.vcpu_hours;
        t.instances += c.instances;
        t.busy_usd += c.busy_usd;
    }
    total.spot_launch_failures += st.spot_launch_failures;
    total.consolidations += st.consolidations;
    total.lost_work_usd += st.lost_work_usd;
    total.busy_mcpu_ms += st.busy_mcpu_ms;
    total.billed_mcpu_ms += st.billed_mcpu_ms;
    total.preemptions += st.preemptions;
    total.budget_preemptions += st.budget_preemptions;
    total.budget_held += st.budget_held;
    total.migrations += st.migrations;
    for (k, v) in &st.spot_pools {
        let t = total.spot_pools.entry(k.clone()).or_default();
        t.interruptions += v.interruptions;
        t.failed_launches += v.failed_launches;
    }
    total.instances_launched += st.instances_launched;
    total.waits_ms.extend_from_slice(&st.waits_ms);
    total.jobs += st.jobs;
    total.jobs_completed += st.jobs_completed;
    total.deadline_jobs += st.deadline_jobs;
    total.deadline_missed += st.deadline_missed;
    total.sim_events += st.sim_events;
    total.end = total.end.max(st.end);
}
