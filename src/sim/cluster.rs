//! The discrete-event simulated cluster of one compute environment.
//!
//! Mechanics (DESIGN.md §7), the same for every policy so only the *decisions*
//! differ between them:
//! - **Boot delay**: a launched instance takes `boot_delay_ms` before it can
//!   run jobs; it is billed from launch (EC2 bills the boot too).
//! - **Billing**: per second at the pool's price curve (spot varies over
//!   time, on-demand is constant) with a `min_billing_ms` minimum per
//!   instance.
//! - **Spot interruptions**: each spot instance draws, at launch, an
//!   exponential time-to-interruption from a seeded ChaCha RNG at the pool's
//!   hourly rate; with `interrupt_on_price_spike` it is also reclaimed when the
//!   pool's price rises above the on-demand price. Jobs on it go back to the
//!   queue: elastic jobs keep their progress, others restart from zero.
//! - **Packing**: queued jobs are placed in priority order (higher first, then
//!   submission time), with backfilling: a job that does not fit does not
//!   block smaller ones behind it. First fit over instances in launch order.
//! - **Gang rule**: a job runs as `k` equal parts that must start together
//!   on `k` distinct instances — how MPI jobs such as RICC's run on a cloud
//!   cluster. A job larger than every instance type needs the smallest `k`
//!   whose part fits some type; a wide job may also use a larger `k` with
//!   parts of at least [`MIN_GANG_PART_VCPUS`] (see [`gang_shapes`]), and
//!   the autoscaler picks the split with the type (BEST_FIT over both).
//! - **Autoscaling** (reactive, and the top-up in predictive/oracle): the
//!   AWS Batch managed compute environment's behaviour: when runnable jobs do
//!   not fit the running and booting capacity it launches instances chosen
//!   BEST_FIT (the cheapest type per useful vCPU that fits the job, sized up
//!   to the queued demand behind it), up to `max_vcpus`; an instance idle for
//!   `idle_timeout_ms` is terminated.
//! - **Commands** (predictive/oracle) set the environment as AWS Batch's
//!   `UpdateComputeEnvironment` does: `min` capacity is never scaled in (an
//!   idle instance is kept while the rest would fall below it; a reclaimed
//!   spot instance is replaced), capacity short of `desired` is launched at
//!   once from the command's instance mix (pre-booted ahead of demand, then
//!   scaled in after the idle timeout like any other instance), `max` caps
//!   the total (Batch may exceed it by one instance), and the mix's markets
//!   are where queued work bursts.
//! - **Budget commands** (predictive/oracle with budgets, applied by the
//!   closed-loop runner through [`Cluster::apply_preemption`]): QUEUE holds
//!   a job out of the queue until a RESUME (forever without one); PREEMPT
//!   stops a running job and holds it (an elastic job keeps its progress, a
//!   rigid one restarts from zero, as after a spot reclaim) or holds a job
//!   that has not started; RESUME puts a held job back in the queue; MIGRATE
//!   moves a running elastic job onto ready instances that are cheaper per
//!   vCPU, when there are such instances with room (otherwise it stays).
//! - **Spend per job** (for budgets): while a job runs it is charged its
//!   vCPU share of each instance it occupies (`part vCPUs / instance vCPUs ×
//!   price`), recorded as [`SpendSegment`]s; idle, booting and floor
//!   capacity is the environment's overhead, charged to no budget.

use super::prices::SimPrices;
use super::trace::SimJob;
use super::SimConfig;
use crate::events::{Market, Millis, PreemptionAction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

// Consolidation (the `karpenter` peer) moves jobs between instances, so it
// lives in a child module of this one, with access to the instance state;
// its file sits with the other peer code.
#[path = "peers/consolidation.rs"]
mod consolidation;
pub use super::peers::ProvisionRules;

/// A capacity decision applied at `at` in commanded mode.
#[derive(Debug, Clone, PartialEq)]
pub struct FloorCommand {
    pub at: Millis,
    /// Pools (with relative instance counts) that `min` and `desired`
    /// capacity is launched from.
    pub mix: Vec<(usize, u32)>,
    /// Capacity never scaled in below (Batch `minvCpus`), milli-vCPUs.
    pub min_mcpu: i64,
    /// Capacity brought up at once when less is alive (Batch
    /// `desiredvCpus`), milli-vCPUs.
    pub desired_mcpu: i64,
    /// Pools the top-up may launch from (empty: on-demand BEST_FIT);
    /// shared, as a group's commands all name the same pools.
    pub burst_pools: Arc<[usize]>,
    /// Cap on total capacity (milli-vCPUs), if any.
    pub max_mcpu: Option<i64>,
}

/// How capacity is decided.
#[derive(Debug, Clone)]
pub enum Mode<'a> {
    /// AWS Batch managed CE: capacity follows the queue.
    Reactive,
    /// A fixed fleet of `count` instances of `pool`, up for the whole run.
    Static { pool: usize, count: u32 },
    /// Floors from commands plus the reactive mechanism for what is beyond.
    Commanded { commands: &'a [FloorCommand] },
}

/// Per-bucket samples of the cluster, for plots and reports.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Series {
    pub start: Millis,
    pub bucket_ms: i64,
    /// Alive capacity (booting + ready) at the sample time.
    pub capacity_vcpus: Vec<f64>,
    /// vCPUs running jobs.
    pub busy_vcpus: Vec<f64>,
    /// vCPUs of queued jobs.
    pub queued_vcpus: Vec<f64>,
    /// Dollars spent up to the sample time.
    pub cum_cost_usd: Vec<f64>,
}

impl Series {
    /// Add another environment's series sample by sample (cost carries its
    /// last value forward).
    pub fn add(&mut self, o: &Series) {
        let n = self.capacity_vcpus.len().max(o.capacity_vcpus.len());
        let last_self = self.cum_cost_usd.last().copied().unwrap_or(0.0);
        let last_o = o.cum_cost_usd.last().copied().unwrap_or(0.0);
        let get = |v: &Vec<f64>, i: usize| v.get(i).copied().unwrap_or(0.0);
        let mut out = Series {
            start: self.start,
            bucket_ms: self.bucket_ms,
            ..Default::default()
        };
        for i in 0..n {
            out.capacity_vcpus
                .push(get(&self.capacity_vcpus, i) + get(&o.capacity_vcpus, i));
            out.busy_vcpus
                .push(get(&self.busy_vcpus, i) + get(&o.busy_vcpus, i));
            out.queued_vcpus
                .push(get(&self.queued_vcpus, i) + get(&o.queued_vcpus, i));
            let a = self.cum_cost_usd.get(i).copied().unwrap_or(last_self);
            let b = o.cum_cost_usd.get(i).copied().unwrap_or(last_o);
            out.cum_cost_usd.push(a + b);
        }
        *self = out;
    }
}

/// What one environment's run measured.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub cost_by_market: BTreeMap<Market, f64>,
    /// Per (instance type, market): USD, billed vCPU-hours and instances —
    /// where the money went (see `PolicyReport::top_instance_types`).
    pub cost_by_type: BTreeMap<(String, Market), TypeCost>,
    pub busy_mcpu_ms: f64,
    pub billed_mcpu_ms: f64,
    pub preemptions: u64,
    pub instances_launched: u64,
    /// Queue wait (first start − submit) per job that needed capacity; jobs
    /// that never started count up to the end of the run.
    pub waits_ms: Vec<i64>,
    pub jobs: u64,
    pub jobs_completed: u64,
    pub deadline_jobs: u64,
    pub deadline_missed: u64,
    /// Events the simulator processed (for the bench).
    pub sim_events: u64,
    pub end: Millis,
    pub series: Series,
    /// What each job ran on, for budget accounting.
    pub spend: Vec<SpendSegment>,
    /// Running jobs stopped by a budget PREEMPT command.
    pub budget_preemptions: u64,
    /// Jobs held by a budget command (QUEUE, or PREEMPT before they
    /// started) at least once.
    pub budget_held: u64,
    /// Elastic jobs moved to cheaper capacity by MIGRATE.
    pub migrations: u64,
    /// Spot launches that failed for want of capacity (see
    /// [`Cluster::with_spot_outages`]); the launcher then tried elsewhere.
    pub spot_launch_failures: u64,
    /// Nodes removed or replaced by consolidation (`karpenter`).
    pub consolidations: u64,
    /// USD of runs of rigid jobs that were cut short (spot reclaim, budget
    /// preemption) and had to start over (filled by the backtest).
    pub lost_work_usd: f64,
    /// Traced spot pools (`type/region`): reclaims and refused launches.
    pub spot_pools: BTreeMap<String, super::spot_market::SpotPoolStats>,
}

/// Spend on one instance type in one market.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TypeCost {
    pub usd: f64,
    pub vcpu_hours: f64,
    pub instances: u64,
    /// The part of `usd` jobs ran on (filled by the backtest from the spend
    /// segments; the rest was idle or booting).
    pub busy_usd: f64,
}

/// A stretch of time one part of a job ran on one instance: the job is
/// charged `share ×` the instance's price over `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendSegment {
    /// Index of the job in the cluster's job list.
    pub job: u32,
    pub start: Millis,
    pub end: Millis,
    pub pool: usize,
    /// Part vCPUs over the instance's vCPUs.
    pub share: f64,
}

impl SpendSegment {
    /// USD of the part of the segment inside `[from, to)`.
    pub fn cost_within(&self, prices: &SimPrices, from: Millis, to: Millis) -> f64 {
        let (a, b) = (self.start.max(from), self.end.min(to));
        if b <= a {
            return 0.0;
        }
        self.share * prices.pools[self.pool].curve.integral(a, b)
    }
}

/// A job the simulator finished (the closed-loop runner turns it into the
/// `JobCompleted` event the engine sees).
#[derive(Debug, Clone, PartialEq)]
pub struct SimCompletion {
    /// Index of the job in the cluster's job list.
    pub job: u32,
    pub first_start: Millis,
    pub finished_at: Millis,
    /// Pool of the instance it finished on.
    pub pool: Option<usize>,
    /// vCPU-seconds it ran, lost work included.
    pub vcpu_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Finish(u32, u32),
    Interrupt(u32),
    /// A traced spot pool's capacity may have changed (see `spot_market`).
    SpotCapacity(u32),
    Ready(u32),
    Command(u32),
    Submit(u32),
    Idle(u32, u32),
    Sample,
}

impl Ev {
    /// Order of events at the same instant: capacity is freed and gained
    /// before decisions and arrivals; idle checks come after the scheduler
    /// ran (so an arrival at the idle deadline keeps the instance); samples
    /// see the settled state.
    fn rank(self) -> u8 {
        match self {
            Ev::Finish(..) => 0,
            Ev::Interrupt(_) | Ev::SpotCapacity(_) => 1,
            Ev::Ready(_) => 2,
            Ev::Command(_) => 3,
            Ev::Submit(_) => 4,
            Ev::Idle(..) => 5,
            Ev::Sample => 6,
        }
    }
}

const IDLE_RANK: u8 = 5;

/// EC2 Spot's interruption notice: two minutes before the reclaim.
pub const SPOT_NOTICE_MS: Millis = 120_000;

#[derive(Debug, Clone)]
struct Inst {
    pool: usize,
    mcpu: i64,
    launched: Millis,
    ready: bool,
    alive: bool,
    /// Kept alive by a floor (commanded) or the static fleet.
    pinned: bool,
    free_mcpu: i64,
    free_mem: i64,
    free_gpu: i32,
    jobs: Vec<u32>,
    idle_since: Millis,
    idle_epoch: u32,
    alive_pos: usize,
    /// A traced market reclaims it (the two-minute notice was given).
    reclaim_noticed: bool,
}

#[derive(Debug, Clone)]
struct JobState {
    /// The split the job is placed with now: `parts` equal parts
    /// (`part_*`). While queued it may switch to another of `shapes`.
    parts: u32,
    part_mcpu: i64,
    part_mem: i64,
    part_gpu: i32,
    remaining_ms: Millis,
    first_start: Option<Millis>,
    run_start: Millis,
    epoch: u32,
    placed: Vec<u32>,
    finished: Option<Millis>,
    queued: bool,
    /// Spot interruptions suffered; past `SimConfig::spot_retries` the job
    /// only runs on on-demand capacity.
    interrupted: u32,
    /// Held by a budget command (QUEUE / PREEMPT) until RESUME.
    held: bool,
    held_once: bool,
    submitted: bool,
    /// Milliseconds run so far, lost work included.
    ran_ms: i64,
    last_pool: Option<usize>,
    /// Spot is worth it for this job in its current split: its expected
    /// cost on spot, restarts included, is below on-demand (see
    /// [`spot_worth_it`]).
    spot_ok: bool,
    /// Other ways to split a wide job (see [`gang_shapes`]), fewest parts
    /// first; empty when there is only the one.
    shapes: Vec<GangShape>,
}

/// Is spot cheaper in expectation than on-demand for a job of `est_ms`?
///
/// A rigid job interrupted at rate `λ` per hour restarts from zero, so its
/// expected time to finish `T` hours of work is `(e^{λT} − 1) / λ`; an
/// elastic job keeps its progress and only pays the re-boot (ignored here).
/// Spot wins when that stretch times the spot/on-demand price ratio is
/// below 1. The estimate is the submitter's (requested time), never the
/// trace's actual runtime; without one, an hour is assumed.
pub fn spot_worth_it(
    est_ms: Option<Millis>,
    elastic: bool,
    rate_per_h: f64,
    spot_to_od: f64,
) -> bool {
    if elastic || rate_per_h <= 0.0 {
        return spot_to_od < 1.0;
    }
    let t = est_ms.unwrap_or(3_600_000) as f64 / 3_600_000.0;
    let x = rate_per_h * t;
    let stretch = if x < 1e-9 { 1.0 } else { x.exp_m1() / x };
    stretch * spot_to_od < 1.0
}

/// Median over spot pools of (mean spot price ÷ the type's on-demand price).
fn spot_to_on_demand(prices: &SimPrices) -> f64 {
    let mut r: Vec<f64> = prices
        .pools
        .iter()
        .filter(|p| p.market == Market::Spot)
        .filter_map(|p| {
            let od = prices.on_demand_pool(p.ty)?;
            let odp = prices.pools[od].curve.at(0);
            (odp > 0.0).then(|| p.curve.mean_all() / odp)
        })
        .collect();
    if r.is_empty() {
        return 1.0;
    }
    r.sort_by(|a, b| a.total_cmp(b));
    r[r.len() / 2]
}

/// The smallest split of a job whose part fits some instance type.
pub fn gang_parts(
    prices: &SimPrices,
    mcpu: i64,
    mem: i64,
    gpus: i32,
) -> Option<(u32, i64, i64, i32)> {
    let max_mcpu = prices.types.iter().map(|t| t.vcpus as i64 * 1000).max()?;
    let lower = ((mcpu + max_mcpu - 1) / max_mcpu).max(1);
    for k in lower..=lower.saturating_mul(4).max(64) {
        let pm = (mcpu + k - 1) / k;
        let pmem = (mem + k - 1) / k;
        let pg = (gpus as i64 + k - 1) / k;
        if prices
            .types
            .iter()
            .any(|t| t.vcpus as i64 * 1000 >= pm && t.memory_mib >= pmem && t.gpus as i64 >= pg)
        {
            return Some((k as u32, pm, pmem, pg as i32));
        }
    }
    None
}

/// One way to run a job: `parts` equal parts on distinct instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GangShape {
    pub parts: u32,
    pub part_mcpu: i64,
    pub part_mem: i64,
    pub part_gpu: i32,
}

/// Parts of a gang are at least this wide when the job is split further
/// than it must be: an MPI rank set per node narrower than that would be
/// an unusual way to run a wide job.
pub const MIN_GANG_PART_VCPUS: u32 = 32;

/// A gang is split into at most this many parts by choice (the smallest
/// split [`gang_parts`] may need more).
pub const MAX_GANG_PARTS: u32 = 128;

/// Every split a job may run with, fewest parts first: the smallest one
/// ([`gang_parts`]) and, for each instance size of at least
/// [`MIN_GANG_PART_VCPUS`] that the smallest part does not fit, the
/// smallest split whose part fits a type of that size (up to
/// [`MAX_GANG_PARTS`]).
///
/// Why: the trace says how many processors a job used, not how many
/// machines; the smallest split alone puts a 500-processor job on one
/// 896-vCPU machine, and a catalogue with such giants (which have no spot
/// market) then decides every policy's cost. Which split runs is chosen
/// where capacity is chosen, by the same rule for every policy
/// (`Cluster::top_up`): BEST_FIT over split × type.
pub fn gang_shapes(prices: &SimPrices, mcpu: i64, mem: i64, gpus: i32) -> Vec<GangShape> {
    let Some((k0, pm, pmem, pg)) = gang_parts(prices, mcpu, mem, gpus) else {
        return Vec::new();
    };
    let mut out = vec![GangShape {
        parts: k0,
        part_mcpu: pm,
        part_mem: pmem,
        part_gpu: pg,
    }];
    let mut sizes: Vec<i64> = prices
        .types
        .iter()
        .filter(|t| t.vcpus >= MIN_GANG_PART_VCPUS)
        .map(|t| t.vcpus as i64 * 1000)
        .filter(|&v| v < pm)
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    for v in sizes {
        let lower = (mcpu + v - 1) / v;
        for k in lower..=(MAX_GANG_PARTS as i64) {
            if out.iter().any(|s| s.parts as i64 == k) {
                break;
            }
            let pm = (mcpu + k - 1) / k;
            let pmem = (mem + k - 1) / k;
            let pg = (gpus as i64 + k - 1) / k;
            let fits = prices.types.iter().any(|t| {
                t.vcpus as i64 * 1000 >= pm
                    && t.vcpus as i64 * 1000 <= v
                    && t.memory_mib >= pmem
                    && t.gpus as i64 >= pg
            });
            if fits {
                out.push(GangShape {
                    parts: k as u32,
                    part_mcpu: pm,
                    part_mem: pmem,
                    part_gpu: pg as i32,
                });
                break;
            }
        }
    }
    out.sort_by_key(|s| s.parts);
    out
}

/// How much longer a rigid gang of `parts` instances takes on spot, in
/// expectation, than its `est_ms` of work: it restarts from zero whenever
/// any part is reclaimed (rate `λ × parts`), so `(e^{x} − 1) / x` with
/// `x = λ × parts × T` (the planner's `spot_slowdown` without the restart
/// overhead). 1 for elastic jobs (they keep their progress).
pub fn gang_spot_stretch(
    est_ms: Option<Millis>,
    elastic: bool,
    rate_per_h: f64,
    parts: u32,
) -> f64 {
    if elastic || rate_per_h <= 0.0 {
        return 1.0;
    }
    let t = est_ms.unwrap_or(3_600_000) as f64 / 3_600_000.0;
    let x = rate_per_h * parts.max(1) as f64 * t;
    if x < 1e-9 {
        1.0
    } else {
        x.exp_m1() / x
    }
}

/// The on-demand pools BEST_FIT may pick: a pool is left out when another
/// of the same vCPUs, at least its memory and GPUs, costs less (or as much
/// and comes first). On-demand prices are constant, so this is decided once;
/// BEST_FIT's answer is the same over these as over all of them (same vCPUs
/// means the same useful vCPUs, and the tie-break keeps the first pool).
fn undominated_on_demand(prices: &SimPrices, od_pools: &[usize]) -> Vec<usize> {
    let key = |p: usize| {
        let pool = &prices.pools[p];
        let ty = &prices.types[pool.ty];
        (ty.vcpus, ty.memory_mib, ty.gpus, pool.curve.at(0))
    };
    let mut by_vcpus: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &p in od_pools {
        by_vcpus.entry(key(p).0).or_default().push(p);
    }
    let mut keep = Vec::new();
    for group in by_vcpus.values() {
        for &a in group {
            let (_, ma, ga, pa) = key(a);
            let dominated = group.iter().any(|&b| {
                let (_, mb, gb, pb) = key(b);
                b != a && mb >= ma && gb >= ga && (pb < pa || (pb == pa && b < a))
            });
            if !dominated {
                keep.push(a);
            }
        }
    }
    keep.sort_unstable();
    keep
}

/// How a launch choice ranks: `(tier, BEST_FIT score)`, lower wins (see
/// `Cluster::choose_pool`).
type Rank = (u8, f64);

/// One compute environment's simulation.
pub struct Cluster<'a> {
    cfg: &'a SimConfig,
    prices: &'a SimPrices,
    jobs: Vec<&'a SimJob>,
    js: Vec<JobState>,
    insts: Vec<Inst>,
    /// Scratch list of the ready instances, kept so placing allocates
    /// nothing (see [`Cluster::place`]).
    ready: Vec<u32>,
    alive: Vec<u32>,
    heap: BinaryHeap<Reverse<(Millis, u8, u64, Ev)>>,
    seq: u64,
    queue: BTreeSet<(Reverse<i32>, Millis, u32)>,
    rng: ChaCha8Rng,
    mode: Mode<'a>,
    horizon: Millis,
    // commanded mode
    min_mcpu: i64,
    mix: Vec<(usize, u32)>,
    burst_pools: Arc<[usize]>,
    max_mcpu: Option<i64>,
    od_pools: Vec<usize>,
    /// The on-demand pools BEST_FIT can ever pick (see
    /// [`undominated_on_demand`]), and a flag per pool.
    od_best: Vec<usize>,
    is_od_best: Vec<bool>,
    /// Median spot/on-demand price ratio (for [`spot_worth_it`]).
    spot_ratio: f64,
    // running totals
    alive_mcpu: i64,
    busy_mcpu: i64,
    queued_mcpu: i64,
    running_jobs: u64,
    booting: u64,
    last_finish: Millis,
    dirty: bool,
    stats: RunStats,
    cost_closed: f64,
    /// Time of the last processed event.
    now: Millis,
    /// Where the current [`Cluster::advance`] stops: nothing can be added
    /// before it from outside (see `skip_empty_samples`).
    until: Millis,
    /// The run is over (see [`Cluster::advance`]).
    done: bool,
    completions: Vec<SimCompletion>,
    /// How capacity is chosen and given back beyond the mode (the peers).
    rules: ProvisionRules,
    /// `(pool, from, to)`: spot launches in `pool` fail within `[from, to)`.
    spot_outages: Vec<(usize, Millis, Millis)>,
    consolidation: consolidation::Pending,
    /// Measured capacity of each traced spot pool (`SimConfig::spot_markets`).
    spot_feed: Vec<Option<&'a super::spot_market::PoolFeed>>,
    /// Traced pools' notices and refusals not yet taken (kept only when
    /// [`Cluster::report_spot_signals`] asked for them).
    spot_signals: Option<Vec<SimSpotSignal>>,
}

/// What a traced spot pool told the environment, as a live scheduler (or
/// AWS EventBridge) would report it: a two-minute notice, or a refused
/// launch (see [`Cluster::take_spot_signals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSpotSignal {
    pub at: Millis,
    /// Index into [`SimPrices::pools`].
    pub pool: usize,
    pub kind: crate::events::SpotSignalKind,
    pub count: u32,
}

impl<'a> Cluster<'a> {
    /// `jobs` are this environment's jobs; `horizon` the last trace event
    /// time; `series_start` aligns the samples of every environment.
    pub fn new(
        cfg: &'a SimConfig,
        prices: &'a SimPrices,
        jobs: Vec<&'a SimJob>,
        mode: Mode<'a>,
        seed: u64,
        series_start: Millis,
        horizon: Millis,
    ) -> Self {
        let od_pools: Vec<usize> = (0..prices.pools.len())
            .filter(|&p| prices.pools[p].market == Market::OnDemand)
            .collect();
        let spot_ratio = spot_to_on_demand(prices);
        let mut js = Vec::with_capacity(jobs.len());
        for j in &jobs {
            let mut shapes = gang_shapes(prices, j.mcpu, j.memory_mib, j.gpus);
            let first = shapes.first().copied().unwrap_or(GangShape {
                parts: 0,
                part_mcpu: 0,
                part_mem: 0,
                part_gpu: 0,
            });
            if shapes.len() <= 1 {
                shapes = Vec::new();
            }
            js.push(JobState {
                parts: first.parts,
                part_mcpu: first.part_mcpu,
                part_mem: first.part_mem,
                part_gpu: first.part_gpu,
                remaining_ms: j.runtime_ms,
                first_start: None,
                run_start: 0,
                epoch: 0,
                placed: Vec::new(),
                finished: None,
                queued: false,
                interrupted: 0,
                held: false,
                held_once: false,
                submitted: false,
                ran_ms: 0,
                last_pool: None,
                // A gang dies when any of its `parts` instances is reclaimed.
                spot_ok: spot_worth_it(
                    j.est_runtime_ms,
                    j.elastic,
                    cfg.spot_interruptions_per_hour * first.parts.max(1) as f64,
                    spot_ratio,
                ),
                shapes,
            });
        }
        let od_best = undominated_on_demand(prices, &od_pools);
        let mut is_od_best = vec![false; prices.pools.len()];
        for &p in &od_best {
            is_od_best[p] = true;
        }
        Cluster {
            cfg,
            prices,
            jobs,
            js,
            insts: Vec::new(),
            ready: Vec::new(),
            alive: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            queue: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            mode,
            horizon,
            min_mcpu: 0,
            mix: Vec::new(),
            burst_pools: Arc::from([]),
            max_mcpu: cfg.max_vcpus.map(|v| v * 1000),
            od_pools,
            od_best,
            is_od_best,
            spot_ratio,
            alive_mcpu: 0,
            busy_mcpu: 0,
            queued_mcpu: 0,
            running_jobs: 0,
            booting: 0,
            last_finish: Millis::MIN,
            dirty: false,
            stats: RunStats {
                series: Series {
                    start: series_start,
                    bucket_ms: cfg.bucket_ms,
                    ..Default::default()
                },
                ..Default::default()
            },
            cost_closed: 0.0,
            now: Millis::MIN,
            until: Millis::MIN,
            done: false,
            completions: Vec::new(),
            rules: ProvisionRules::default(),
            spot_outages: Vec::new(),
            consolidation: consolidation::Pending::default(),
            spot_feed: prices
                .pools
                .iter()
                .map(|p| match (&cfg.spot_markets, p.market) {
                    (Some(m), Market::Spot) => m.for_pool(&prices.types[p.ty].name, &p.region),
                    _ => None,
                })
                .collect(),
            spot_signals: None,
        }
    }

    /// Keep the traced pools' notices and refusals for
    /// [`Cluster::take_spot_signals`] (a closed-loop policy learns from them).
    pub fn report_spot_signals(&mut self) {
        self.spot_signals.get_or_insert_with(Vec::new);
    }

    /// Notices and refusals since the last call, in the order they happened.
    pub fn take_spot_signals(&mut self) -> Vec<SimSpotSignal> {
        self.spot_signals
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Keeps a signal when asked to, one per (time, pool, kind) with a count.
    fn signal(&mut self, at: Millis, pool: usize, kind: crate::events::SpotSignalKind, n: u32) {
        let Some(v) = self.spot_signals.as_mut() else {
            return;
        };
        match v.last_mut() {
            Some(s) if s.at == at && s.pool == pool && s.kind == kind => {
                s.count = s.count.saturating_add(n)
            }
            _ => v.push(SimSpotSignal {
                at,
                pool,
                kind,
                count: n,
            }),
        }
    }

    /// Choose and give back capacity by `rules` (the peer policies: spot
    /// first with on-demand fallback, consolidation).
    pub fn with_rules(mut self, rules: ProvisionRules) -> Self {
        self.rules = rules;
        self
    }

    /// Spot launches in `pool` fail within each `[from, to)` (insufficient
    /// capacity), for every policy alike: the top-up then launches from the
    /// next choice (on-demand where the rules fall back to it).
    pub fn with_spot_outages(mut self, outages: Vec<(usize, Millis, Millis)>) -> Self {
        self.spot_outages = outages;
        self
    }

    /// Can a spot instance of `pool` be launched at `t`?
    /// Whether a spot launch in `pool` can succeed at `t`: no outage, and
    /// room under a traced pool's measured capacity.
    fn spot_available(&self, pool: usize, t: Millis) -> bool {
        !self
            .spot_outages
            .iter()
            .any(|&(p, a, b)| p == pool && a <= t && t < b)
            && self.spot_room(pool, t)
    }

    fn push(&mut self, t: Millis, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, ev.rank(), self.seq, ev)));
    }

    fn autoscaled(&self) -> bool {
        !matches!(self.mode, Mode::Static { .. })
    }

    /// Run to completion and return the measurements.
    pub fn run(mut self) -> RunStats {
        self.start();
        self.advance(Millis::MAX);
        self.finish()
    }

    /// Seed the event queue: submissions, the static fleet or the command
    /// schedule, the first sample. Call once, before [`Cluster::advance`].
    pub fn start(&mut self) {
        for i in 0..self.jobs.len() {
            let t = self.jobs[i].submit;
            self.push(t, Ev::Submit(i as u32));
        }
        let first = self
            .jobs
            .first()
            .map(|j| j.submit)
            .unwrap_or(self.stats.series.start);
        match self.mode.clone() {
            Mode::Static { pool, count } => {
                let t0 = first.min(self.stats.series.start) - self.cfg.boot_delay_ms;
                for _ in 0..count {
                    let id = self.launch(pool, t0);
                    self.insts[id as usize].pinned = true;
                }
            }
            Mode::Commanded { commands } => {
                for (i, c) in commands.iter().enumerate() {
                    self.push(c.at, Ev::Command(i as u32));
                }
            }
            Mode::Reactive => {}
        }
        let s0 = self.stats.series.start;
        self.push(s0, Ev::Sample);
        for p in 0..self.spot_feed.len() {
            if self.spot_feed[p].is_some() {
                self.push(s0, Ev::SpotCapacity(p as u32));
            }
        }
    }

    /// Past the trace with nothing running or booting and the scheduler
    /// settled, no job can start any more: the run is over (what remains
    /// are idle checks, samples and floor churn).
    fn over(&self, t: Millis) -> bool {
        (t > self.horizon && self.running_jobs == 0 && self.booting == 0 && !self.dirty)
            || t > self.horizon.saturating_add(self.cfg.max_tail_ms)
    }

    /// Time of the next event to process; None once the run is over.
    pub fn next_time(&mut self) -> Option<Millis> {
        if self.done {
            return None;
        }
        // A trace's capacity sample neither ends a run early nor keeps a
        // finished one going: past the end it is dropped, and the next real
        // event decides.
        while let Some(&Reverse((t, _, _, ev))) = self.heap.peek() {
            if matches!(ev, Ev::SpotCapacity(_)) && self.over(t) {
                self.heap.pop();
            } else {
                break;
            }
        }
        let t = self.heap.peek().map(|Reverse((t, ..))| *t)?;
        if self.over(t) {
            self.done = true;
            return None;
        }
        Some(t)
    }

    /// Process every event at or before `until` (stops early when the run
    /// is over). Finished jobs are kept for [`Cluster::take_completions`].
    pub fn advance(&mut self, until: Millis) {
        self.until = until;
        while let Some(t) = self.next_time() {
            if t > until {
                break;
            }
            let Some(Reverse((t, rank, _, ev))) = self.heap.pop() else {
                break;
            };
            // A trace's capacity sample is not activity: it must not move
            // the run's end (what alive instances are billed up to).
            if !matches!(ev, Ev::SpotCapacity(_)) {
                self.now = t;
            }
            self.stats.sim_events += 1;
            match ev {
                Ev::Submit(j) => self.on_submit(j),
                Ev::Finish(j, e) => self.on_finish(t, j, e),
                Ev::Ready(i) => self.on_ready(t, i),
                Ev::Interrupt(i) => self.on_interrupt(t, i),
                Ev::SpotCapacity(p) => self.on_spot_capacity(t, p as usize),
                Ev::Command(c) => self.on_command(t, c),
                Ev::Idle(i, e) => self.on_idle(t, i, e),
                Ev::Sample => self.on_sample(t),
            }
            let next = self.heap.peek().map(|Reverse((nt, nr, _, _))| (*nt, *nr));
            let boundary = match next {
                None => true,
                Some((nt, nr)) => nt != t || (rank < IDLE_RANK && nr >= IDLE_RANK),
            };
            if boundary && self.dirty {
                self.schedule(t);
            }
        }
    }

    /// Jobs finished since the last call, in finishing order.
    pub fn take_completions(&mut self) -> Vec<SimCompletion> {
        std::mem::take(&mut self.completions)
    }

    /// The jobs this cluster runs (indices of [`SpendSegment::job`] etc.).
    pub fn jobs(&self) -> &[&'a SimJob] {
        &self.jobs
    }

    /// End the run and return the measurements.
    pub fn finish(self) -> RunStats {
        let now = self.now;
        self.close(now)
    }

    /// Apply a scaling decision now (the closed-loop runner's way of giving
    /// commands as they are issued, instead of a schedule known up front).
    pub fn apply_floor(&mut self, t: Millis, cmd: &FloorCommand) {
        self.set_floor(t, cmd);
        self.settle(t);
    }

    /// Apply a budget command to job `j` (index in [`Cluster::jobs`]) at
    /// `t`. Returns whether it changed anything (a RESUME of a job that is
    /// not held, a command for a finished job, or a MIGRATE with no cheaper
    /// room do not).
    pub fn apply_preemption(&mut self, t: Millis, j: u32, action: PreemptionAction) -> bool {
        let ji = j as usize;
        if ji >= self.js.len() || self.js[ji].finished.is_some() {
            return false;
        }
        let changed = match action {
            PreemptionAction::Queue | PreemptionAction::Preempt => {
                if !self.js[ji].placed.is_empty() {
                    let ran = t - self.js[ji].run_start;
                    self.stop_job(t, j);
                    let elastic = self.jobs[ji].elastic;
                    let s = &mut self.js[ji];
                    s.remaining_ms = if elastic {
                        (s.remaining_ms - ran).max(0)
                    } else {
                        self.jobs[ji].runtime_ms
                    };
                    self.stats.budget_preemptions += 1;
                } else if self.js[ji].queued {
                    self.dequeue(j);
                }
                let s = &mut self.js[ji];
                let was = s.held;
                s.held = true;
                if !s.held_once {
                    s.held_once = true;
                    self.stats.budget_held += 1;
                }
                !was || action == PreemptionAction::Preempt
            }
            PreemptionAction::Resume => {
                let s = &mut self.js[ji];
                if !s.held {
                    false
                } else {
                    s.held = false;
                    if s.submitted && s.placed.is_empty() && !s.queued && s.parts > 0 {
                        self.enqueue(j);
                    }
                    true
                }
            }
            PreemptionAction::Migrate => self.migrate(t, j),
        };
        if changed {
            // A resumed job may need capacity again after the run looked over.
            self.done = false;
            self.dirty = true;
            self.settle(t);
        }
        changed
    }

    fn settle(&mut self, t: Millis) {
        self.now = self.now.max(t);
        if self.dirty {
            self.schedule(t);
        }
    }

    /// Move a running elastic job onto ready instances cheaper per vCPU
    /// than the dearest it occupies now (one per part, with room).
    fn migrate(&mut self, t: Millis, j: u32) -> bool {
        let ji = j as usize;
        if !self.jobs[ji].elastic || self.js[ji].placed.is_empty() {
            return false;
        }
        let per_vcpu = |c: &Self, i: u32| {
            let inst = &c.insts[i as usize];
            c.prices.pools[inst.pool].curve.at(t) / inst.mcpu as f64
        };
        let now_rate = self.js[ji]
            .placed
            .iter()
            .map(|&i| per_vcpu(self, i))
            .fold(0.0, f64::max);
        let s = &self.js[ji];
        let od_only = self.od_only(j, t);
        let mut cands: Vec<(f64, u32)> = self
            .alive
            .iter()
            .copied()
            .filter(|i| !s.placed.contains(i))
            .filter(|&i| {
                let inst = &self.insts[i as usize];
                inst.ready
                    && Self::fits(inst, s)
                    && !(od_only && self.prices.pools[inst.pool].market == Market::Spot)
            })
            .map(|i| (per_vcpu(self, i), i))
            .filter(|&(r, _)| r < now_rate * (1.0 - 1e-9))
            .collect();
        if cands.len() < s.parts as usize {
            return false;
        }
        cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let to: Vec<u32> = cands
            .into_iter()
            .take(s.parts as usize)
            .map(|c| c.1)
            .collect();
        let ran = t - s.run_start;
        self.stop_job(t, j);
        let st = &mut self.js[ji];
        st.remaining_ms = (st.remaining_ms - ran).max(0);
        self.queued_mcpu += self.jobs[ji].mcpu; // start_job takes it off again
        self.start_job(t, j, to);
        self.stats.migrations += 1;
        true
    }

    fn close(mut self, now: Millis) -> RunStats {
        let end = now.max(self.horizon).max(self.last_finish);
        // Jobs still running when the run is cut are charged up to its end.
        for j in 0..self.js.len() {
            if !self.js[j].placed.is_empty() {
                self.record_spend(end, j as u32);
            }
        }
        let alive: Vec<u32> = self.alive.clone();
        let mut held = 0;
        for i in alive {
            let inst = &self.insts[i as usize];
            let by_min = held < self.min_mcpu;
            if by_min {
                held += inst.mcpu;
            }
            let stop = if inst.pinned || !self.autoscaled() || by_min {
                end
            } else {
                // Unpinned instances are idle here and would be scaled in.
                inst.idle_since + self.cfg.idle_timeout_ms
            };
            self.terminate(stop.max(inst.launched), i);
        }
        let mut st = self.stats;
        st.end = end;
        st.jobs = self.jobs.len() as u64;
        for (j, s) in self.jobs.iter().zip(&self.js) {
            if j.cancelled_in_queue {
                continue;
            }
            if s.finished.is_some() {
                st.jobs_completed += 1;
            }
            st.waits_ms
                .push(s.first_start.unwrap_or(end).max(j.submit) - j.submit);
            if let Some(d) = j.deadline {
                st.deadline_jobs += 1;
                if s.finished.is_none_or(|f| f > d) {
                    st.deadline_missed += 1;
                }
            }
        }
        st
    }

    fn on_submit(&mut self, j: u32) {
        let job = self.jobs[j as usize];
        self.js[j as usize].submitted = true;
        if job.cancelled_in_queue || self.js[j as usize].parts == 0 || self.js[j as usize].held {
            // Never needs capacity (or no type can host even a part of it: it
            // stays unfinished and counts as missed).
            return;
        }
        self.enqueue(j);
    }

    fn enqueue(&mut self, j: u32) {
        let job = self.jobs[j as usize];
        self.queue.insert((Reverse(job.priority), job.submit, j));
        self.js[j as usize].queued = true;
        self.queued_mcpu += job.mcpu;
        self.dirty = true;
    }

    fn dequeue(&mut self, j: u32) {
        let job = self.jobs[j as usize];
        if self.queue.remove(&(Reverse(job.priority), job.submit, j)) {
            self.queued_mcpu -= job.mcpu;
        }
        self.js[j as usize].queued = false;
        self.dirty = true;
    }

    fn on_finish(&mut self, t: Millis, j: u32, epoch: u32) {
        if self.js[j as usize].epoch != epoch || self.js[j as usize].finished.is_some() {
            return;
        }
        self.stop_job(t, j);
        let s = &mut self.js[j as usize];
        s.finished = Some(t);
        self.last_finish = self.last_finish.max(t);
        self.completions.push(SimCompletion {
            job: j,
            first_start: s.first_start.unwrap_or(t),
            finished_at: t,
            pool: s.last_pool,
            vcpu_seconds: self.jobs[j as usize].mcpu as f64 / 1000.0 * s.ran_ms as f64 / 1000.0,
        });
    }

    /// Charge job `j` for its current run up to `t` (see [`SpendSegment`]).
    fn record_spend(&mut self, t: Millis, j: u32) {
        let s = &self.js[j as usize];
        let start = s.run_start;
        for &i in &s.placed {
            let inst = &self.insts[i as usize];
            self.stats.spend.push(SpendSegment {
                job: j,
                start,
                end: t.max(start),
                pool: inst.pool,
                share: s.part_mcpu as f64 / inst.mcpu.max(1) as f64,
            });
        }
    }

    /// Release a running job's instances and account its busy time.
    fn stop_job(&mut self, t: Millis, j: u32) {
        self.record_spend(t, j);
        let last_pool = self.js[j as usize]
            .placed
            .first()
            .map(|&i| self.insts[i as usize].pool);
        let s = &mut self.js[j as usize];
        s.last_pool = last_pool.or(s.last_pool);
        s.ran_ms += t - s.run_start;
        let placed = std::mem::take(&mut s.placed);
        let (pm, pmem, pg) = (s.part_mcpu, s.part_mem, s.part_gpu);
        let ran = t - s.run_start;
        s.epoch += 1;
        self.stats.busy_mcpu_ms += (pm * placed.len() as i64) as f64 * ran as f64;
        self.busy_mcpu -= self.jobs[j as usize].mcpu;
        self.running_jobs -= 1;
        for i in placed {
            let inst = &mut self.insts[i as usize];
            if !inst.alive {
                continue;
            }
            inst.free_mcpu += pm;
            inst.free_mem += pmem;
            inst.free_gpu += pg;
            if let Some(p) = inst.jobs.iter().position(|&x| x == j) {
                inst.jobs.swap_remove(p);
            }
            if inst.jobs.is_empty() {
                self.became_idle(t, i);
            }
        }
        self.dirty = true;
    }

    fn became_idle(&mut self, t: Millis, i: u32) {
        let inst = &mut self.insts[i as usize];
        inst.idle_since = t;
        inst.idle_epoch += 1;
        let (pinned, e) = (inst.pinned, inst.idle_epoch);
        if self.autoscaled() && !pinned {
            let at = t + self.cfg.idle_timeout_ms;
            self.push(at, Ev::Idle(i, e));
        }
    }

    fn on_ready(&mut self, t: Millis, i: u32) {
        if !self.insts[i as usize].alive {
            return;
        }
        self.insts[i as usize].ready = true;
        self.booting -= 1;
        self.became_idle(t, i);
        self.dirty = true;
        if self.rules.consolidate_after_ms.is_some() {
            self.replacement_ready(t, i);
        }
    }

    fn on_interrupt(&mut self, t: Millis, i: u32) {
        if !self.insts[i as usize].alive {
            return;
        }
        let jobs = self.insts[i as usize].jobs.clone();
        for j in jobs {
            let s = &self.js[j as usize];
            let ran = t - s.run_start;
            let elastic = self.jobs[j as usize].elastic;
            self.stop_job(t, j);
            let s = &mut self.js[j as usize];
            s.remaining_ms = if elastic {
                (s.remaining_ms - ran).max(0)
            } else {
                self.jobs[j as usize].runtime_ms
            };
            self.stats.preemptions += 1;
            self.js[j as usize].interrupted += 1;
            self.enqueue(j);
        }
        self.terminate(t, i);
        self.dirty = true;
    }

    /// Key of pool `p` in [`RunStats::spot_pools`].
    fn pool_key(&self, p: usize) -> String {
        let pool = &self.prices.pools[p];
        format!("{}/{}", self.prices.types[pool.ty].name, pool.region)
    }

    /// Alive spot instances of pool `p` not already told of a reclaim.
    fn spot_running(&self, p: usize) -> Vec<u32> {
        self.alive
            .iter()
            .copied()
            .filter(|&i| {
                let inst = &self.insts[i as usize];
                inst.pool == p && !inst.reclaim_noticed
            })
            .collect()
    }

    /// May pool `p` take one more instance at `t`? (Untraced pools: yes.)
    fn spot_room(&self, p: usize, t: Millis) -> bool {
        let Some(feed) = self.spot_feed[p] else {
            return true;
        };
        match feed.capacity(t - self.stats.series.start) {
            None => true,
            Some(cap) => (self.spot_running(p).len() as u64) < cap,
        }
    }

    fn refuse_launch(&mut self, p: usize, t: Millis) {
        let k = self.pool_key(p);
        self.stats.spot_pools.entry(k).or_default().failed_launches += 1;
        self.signal(t, p, crate::events::SpotSignalKind::CapacityUnavailable, 1);
    }

    /// A traced pool's capacity at `t`: while it is below the pool's running
    /// spot count, the youngest instances get the two-minute notice and are
    /// reclaimed when it ends. Then wait for the trace's next sample.
    fn on_spot_capacity(&mut self, t: Millis, p: usize) {
        let Some(feed) = self.spot_feed[p] else {
            return;
        };
        let offset = t - self.stats.series.start;
        let cap = feed.capacity(offset);
        let usable = self.burst_pools.contains(&p) || self.mix.iter().any(|m| m.0 == p);
        if cap != Some(0) && usable {
            // Capacity may have come back to a pool the environment buys
            // from: let the scheduler (and the floors) launch again.
            self.dirty = true;
        }
        if let Some(cap) = cap {
            let mut running = self.spot_running(p);
            if running.len() as u64 > cap {
                running.sort_by_key(|&i| (Reverse(self.insts[i as usize].launched), Reverse(i)));
                let excess = running.len() - cap as usize;
                let key = self.pool_key(p);
                for &i in &running[..excess] {
                    self.insts[i as usize].reclaim_noticed = true;
                    self.push(t + SPOT_NOTICE_MS, Ev::Interrupt(i));
                }
                self.stats.spot_pools.entry(key).or_default().interruptions += excess as u64;
                let n = u32::try_from(excess).unwrap_or(u32::MAX);
                self.signal(t, p, crate::events::SpotSignalKind::InterruptionWarning, n);
            }
        }
        let next = self.stats.series.start + feed.next_change(offset);
        if next <= self.horizon.saturating_add(self.cfg.max_tail_ms) {
            self.push(next, Ev::SpotCapacity(p as u32));
        }
    }

    fn on_command(&mut self, t: Millis, c: u32) {
        let Mode::Commanded { commands } = self.mode else {
            return;
        };
        self.set_floor(t, &commands[c as usize]);
    }

    fn set_floor(&mut self, t: Millis, cmd: &FloorCommand) {
        let lowered = cmd.min_mcpu < self.min_mcpu;
        self.min_mcpu = cmd.min_mcpu;
        self.mix = cmd.mix.clone();
        self.burst_pools = cmd.burst_pools.clone();
        self.max_mcpu = cmd.max_mcpu.or(self.cfg.max_vcpus.map(|v| v * 1000));
        if lowered {
            // Instances kept only for the old minimum start their idle
            // timeout now.
            let idle: Vec<u32> = self
                .alive
                .iter()
                .copied()
                .filter(|&i| {
                    let inst = &self.insts[i as usize];
                    inst.ready && inst.jobs.is_empty() && !inst.pinned
                })
                .collect();
            for i in idle {
                self.became_idle(t, i);
            }
        }
        self.fill_to(t, cmd.desired_mcpu.max(cmd.min_mcpu));
        self.dirty = true;
    }

    fn on_idle(&mut self, t: Millis, i: u32, e: u32) {
        let inst = &self.insts[i as usize];
        if inst.alive && inst.ready && !inst.pinned && inst.jobs.is_empty() && inst.idle_epoch == e
        {
            if self.alive_mcpu - inst.mcpu >= self.min_mcpu {
                self.terminate(t, i);
            } else {
                // Held by `min`: look again after another timeout.
                self.push(t + self.cfg.idle_timeout_ms, Ev::Idle(i, e));
            }
        }
    }

    /// Launch from the command's mix until `target_mcpu` is alive, each
    /// pool getting its share of the shortfall by the mix's vCPUs (the
    /// cheapest on-demand pool per vCPU when the mix is empty), within `max`.
    fn fill_to(&mut self, t: Millis, target_mcpu: i64) {
        let target = match self.max_mcpu {
            Some(m) => target_mcpu.min(m),
            None => target_mcpu,
        };
        let short = target - self.alive_mcpu;
        if short <= 0 {
            return;
        }
        let mcpu_of = |p: usize| self.prices.types[self.prices.pools[p].ty].vcpus as i64 * 1000;
        let mut mix: Vec<(usize, u32)> = self.mix.iter().copied().filter(|m| m.1 > 0).collect();
        if mix.is_empty() {
            let best = self.od_pools.iter().copied().min_by(|&a, &b| {
                let pa = self.prices.pools[a].curve.at(t) / mcpu_of(a) as f64;
                let pb = self.prices.pools[b].curve.at(t) / mcpu_of(b) as f64;
                pa.total_cmp(&pb).then(a.cmp(&b))
            });
            match best {
                Some(p) => mix.push((p, 1)),
                None => return,
            }
        }
        let total: i64 = mix.iter().map(|&(p, n)| mcpu_of(p) * n as i64).sum();
        for (p, n) in mix {
            let share = short as i128 * (mcpu_of(p) * n as i64) as i128 / total.max(1) as i128;
            let count = (share as i64 + mcpu_of(p) - 1) / mcpu_of(p);
            for _ in 0..count {
                if !self.spot_room(p, t) {
                    // Refused: once per pool and attempt, not per instance.
                    self.refuse_launch(p, t);
                    break;
                }
                self.launch(p, t);
            }
        }
    }

    fn on_sample(&mut self, t: Millis) {
        if let Some(after) = self.rules.consolidate_after_ms {
            self.consolidate(t, after);
        }
        if self.cfg.record_series {
            self.record_sample(t);
        }
        let next = t + self.cfg.bucket_ms;
        if next <= self.horizon || self.has_work() {
            if let Some(next) = self.skip_empty_samples(next) {
                self.push(next, Ev::Sample);
            }
        }
    }

    /// Jobs running or queued, or capacity booting: samples go on past the trace.
    fn has_work(&self) -> bool {
        self.running_jobs > 0 || !self.queue.is_empty() || self.booting > 0
    }

    /// The sample at `t`: capacity, busy and queued vCPUs, dollars so far.
    fn record_sample(&mut self, t: Millis) {
        let mut cost = self.cost_closed;
        for &i in &self.alive {
            let inst = &self.insts[i as usize];
            cost += self.prices.pools[inst.pool]
                .curve
                .integral(inst.launched, t);
        }
        let s = &mut self.stats.series;
        s.capacity_vcpus.push(self.alive_mcpu as f64 / 1000.0);
        s.busy_vcpus.push(self.busy_mcpu as f64 / 1000.0);
        s.queued_vcpus.push(self.queued_mcpu as f64 / 1000.0);
        s.cum_cost_usd.push(cost);
    }

    /// Cost grows with events, not with time spans: while nothing is alive,
    /// queued, running or booting, every sample is the one just taken (no
    /// cost accrues, consolidation has nothing to look at), so the samples
    /// before the next event, before where this advance stops and within
    /// the trace are written at once. Returns the next sample to process,
    /// if the samples go on (past the trace an empty cluster stops them).
    fn skip_empty_samples(&mut self, mut next: Millis) -> Option<Millis> {
        if !self.alive.is_empty() || self.has_work() {
            return Some(next);
        }
        let event = self.heap.peek().map_or(Millis::MAX, |Reverse((t, ..))| *t);
        let s = &mut self.stats.series;
        let last = |v: &Vec<f64>| v.last().copied().unwrap_or(0.0);
        let row = [
            last(&s.capacity_vcpus),
            last(&s.busy_vcpus),
            last(&s.queued_vcpus),
            last(&s.cum_cost_usd),
        ];
        let keep = self.cfg.record_series;
        while next < event && next < self.until && next <= self.horizon {
            if keep {
                s.capacity_vcpus.push(row[0]);
                s.busy_vcpus.push(row[1]);
                s.queued_vcpus.push(row[2]);
                s.cum_cost_usd.push(row[3]);
            }
            // Counted as processed: the bench's event counts stay comparable.
            self.stats.sim_events += 1;
            self.now = next;
            next += self.cfg.bucket_ms;
        }
        (next <= self.horizon).then_some(next)
    }

    fn launch(&mut self, pool: usize, t: Millis) -> u32 {
        let ty = &self.prices.types[self.prices.pools[pool].ty];
        let id = self.insts.len() as u32;
        let mcpu = ty.vcpus as i64 * 1000;
        self.insts.push(Inst {
            pool,
            mcpu,
            launched: t,
            ready: false,
            alive: true,
            pinned: false,
            free_mcpu: mcpu,
            free_mem: ty.memory_mib,
            free_gpu: ty.gpus,
            jobs: Vec::new(),
            idle_since: t,
            idle_epoch: 0,
            alive_pos: self.alive.len(),
            reclaim_noticed: false,
        });
        self.alive.push(id);
        self.alive_mcpu += mcpu;
        self.booting += 1;
        self.stats.instances_launched += 1;
        self.push(t + self.cfg.boot_delay_ms, Ev::Ready(id));
        let p = &self.prices.pools[pool];
        if p.market == Market::Spot {
            // A traced pool's reclaims come from its trace, not a rate.
            let rate = if self.spot_feed[pool].is_some() {
                0.0
            } else {
                self.cfg.spot_rate(&ty.name, &p.region)
            };
            let mut at = Millis::MAX;
            if rate > 0.0 {
                let u: f64 = self.rng.random::<f64>();
                let hours = -(1.0 - u).ln() / rate;
                at = t.saturating_add((hours * 3_600_000.0) as i64);
            }
            if self.cfg.interrupt_on_price_spike {
                if let Some(&s) = p.spikes.iter().find(|&&s| s > t) {
                    at = at.min(s);
                }
            }
            if at != Millis::MAX {
                self.push(at, Ev::Interrupt(id));
            }
        }
        id
    }

    fn terminate(&mut self, t: Millis, i: u32) {
        let inst = &mut self.insts[i as usize];
        if !inst.alive {
            return;
        }
        inst.alive = false;
        if !inst.ready {
            self.booting -= 1;
        }
        let billed_to = t.max(inst.launched + self.cfg.min_billing_ms);
        let pool = &self.prices.pools[inst.pool];
        let cost = pool.curve.integral(inst.launched, billed_to);
        *self.stats.cost_by_market.entry(pool.market).or_insert(0.0) += cost;
        self.cost_closed += cost;
        self.stats.billed_mcpu_ms += (inst.mcpu * (billed_to - inst.launched)) as f64;
        let tc = self
            .stats
            .cost_by_type
            .entry((self.prices.types[pool.ty].name.clone(), pool.market))
            .or_default();
        tc.usd += cost;
        tc.vcpu_hours += (inst.mcpu * (billed_to - inst.launched)) as f64 / 3.6e9;
        tc.instances += 1;
        self.alive_mcpu -= inst.mcpu;
        let pos = inst.alive_pos;
        self.alive.swap_remove(pos);
        if let Some(&moved) = self.alive.get(pos) {
            self.insts[moved as usize].alive_pos = pos;
        }
    }

    /// May job `j` only run on on-demand capacity at `t`? See
    /// [`SimConfig::spot_retries`].
    fn od_only(&self, j: u32, t: Millis) -> bool {
        self.od_only_if(j, t, self.js[j as usize].spot_ok)
    }

    /// [`Self::od_only`] for job `j` split so that spot is (not) worth it.
    fn od_only_if(&self, j: u32, t: Millis, spot_ok: bool) -> bool {
        let s = &self.js[j as usize];
        let job = self.jobs[j as usize];
        if !spot_ok {
            return true;
        }
        if job.elastic || s.interrupted == 0 {
            return false;
        }
        let est = job.est_runtime_ms.unwrap_or(3_600_000);
        s.interrupted > self.cfg.spot_retries || job.deadline.is_some_and(|d| t + 2 * est > d)
    }

    /// Is spot worth it for job `j` split as `shape`? (Its current split's
    /// answer is kept in `spot_ok`.)
    fn shape_spot_ok(&self, j: u32, shape: &GangShape) -> bool {
        let s = &self.js[j as usize];
        if shape.parts == s.parts {
            return s.spot_ok;
        }
        let job = self.jobs[j as usize];
        spot_worth_it(
            job.est_runtime_ms,
            job.elastic,
            self.cfg.spot_interruptions_per_hour * shape.parts.max(1) as f64,
            self.spot_ratio,
        )
    }

    /// The split job `j` is placed with now.
    fn current_shape(&self, j: u32) -> GangShape {
        let s = &self.js[j as usize];
        GangShape {
            parts: s.parts,
            part_mcpu: s.part_mcpu,
            part_mem: s.part_mem,
            part_gpu: s.part_gpu,
        }
    }

    /// The splits to try for a queued job: its current one first, then the
    /// others, fewest parts first.
    fn shape_order(&self, j: u32) -> Vec<GangShape> {
        let cur = self.current_shape(j);
        let mut v = vec![cur];
        v.extend(
            self.js[j as usize]
                .shapes
                .iter()
                .copied()
                .filter(|s| s.parts != cur.parts),
        );
        v
    }

    /// Switch a queued job to another split.
    fn set_shape(&mut self, j: u32, shape: GangShape) {
        if shape.parts == self.js[j as usize].parts {
            return;
        }
        let ok = self.shape_spot_ok(j, &shape);
        let s = &mut self.js[j as usize];
        s.parts = shape.parts;
        s.part_mcpu = shape.part_mcpu;
        s.part_mem = shape.part_mem;
        s.part_gpu = shape.part_gpu;
        s.spot_ok = ok;
    }

    fn fits(inst: &Inst, s: &JobState) -> bool {
        inst.free_mcpu >= s.part_mcpu && inst.free_mem >= s.part_mem && inst.free_gpu >= s.part_gpu
    }

    fn fits_shape(inst: &Inst, s: &GangShape) -> bool {
        inst.free_mcpu >= s.part_mcpu && inst.free_mem >= s.part_mem && inst.free_gpu >= s.part_gpu
    }

    /// Floors, then placement, then the reactive top-up.
    fn schedule(&mut self, t: Millis) {
        self.dirty = false;
        if matches!(self.mode, Mode::Commanded { .. }) {
            self.maintain_floors(t);
        }
        self.place(t);
        if self.autoscaled() && !self.queue.is_empty() {
            self.top_up(t);
        }
    }

    /// Keep `min` alive: replace reclaimed spot capacity.
    fn maintain_floors(&mut self, t: Millis) {
        if self.alive_mcpu < self.min_mcpu {
            self.fill_to(t, self.min_mcpu);
        }
    }

    /// Start queued jobs on ready capacity, in priority order with
    /// backfilling; a wide job takes the first of its splits (current one
    /// first) that the ready instances can host.
    fn place(&mut self, t: Millis) {
        if self.queue.is_empty() {
            return;
        }
        // Placing jobs changes free capacity, not which instances are
        // ready: the ready ones are listed once, not found again for every
        // queued job and shape (booting instances made that most of a run).
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend((self.alive.iter().copied()).filter(|&i| self.insts[i as usize].ready));
        let max_free = freest(&self.insts, &ready);
        if max_free > 0 {
            self.place_on(t, &ready, max_free);
        }
        self.ready = ready;
    }

    /// [`Cluster::place`] on the `ready` instances, of which the freest has
    /// `max_free` milli-vCPUs.
    fn place_on(&mut self, t: Millis, ready: &[u32], mut max_free: i64) {
        let queued: Vec<(Reverse<i32>, Millis, u32)> = self.queue.iter().copied().collect();
        let mut chosen: Vec<u32> = Vec::new();
        for key in queued {
            let j = key.2;
            let s = &self.js[j as usize];
            let cur = self.current_shape(j);
            let min_part = s
                .shapes
                .iter()
                .map(|g| g.part_mcpu)
                .min()
                .unwrap_or(cur.part_mcpu)
                .min(cur.part_mcpu);
            if min_part > max_free {
                continue;
            }
            let mut found: Option<GangShape> = None;
            for shape in self.shape_order(j) {
                if shape.part_mcpu > max_free {
                    continue;
                }
                chosen.clear();
                let od_only = self.od_only_if(j, t, self.shape_spot_ok(j, &shape));
                for &i in ready {
                    let inst = &self.insts[i as usize];
                    if Self::fits_shape(inst, &shape)
                        && !(od_only && self.prices.pools[inst.pool].market == Market::Spot)
                    {
                        chosen.push(i);
                        if chosen.len() == shape.parts as usize {
                            break;
                        }
                    }
                }
                if chosen.len() == shape.parts as usize {
                    found = Some(shape);
                    break;
                }
            }
            let Some(shape) = found else {
                continue;
            };
            self.set_shape(j, shape);
            self.queue.remove(&key);
            let list = chosen.clone();
            self.start_job(t, j, list);
            max_free = freest(&self.insts, ready);
            if max_free == 0 {
                break;
            }
        }
    }

    fn start_job(&mut self, t: Millis, j: u32, insts: Vec<u32>) {
        let job = self.jobs[j as usize];
        let s = &mut self.js[j as usize];
        s.queued = false;
        s.run_start = t;
        s.first_start.get_or_insert(t);
        let (pm, pmem, pg) = (s.part_mcpu, s.part_mem, s.part_gpu);
        let finish = t + s.remaining_ms;
        let epoch = s.epoch;
        for &i in &insts {
            let inst = &mut self.insts[i as usize];
            inst.free_mcpu -= pm;
            inst.free_mem -= pmem;
            inst.free_gpu -= pg;
            inst.jobs.push(j);
            inst.idle_epoch += 1;
        }
        self.js[j as usize].placed = insts;
        self.queued_mcpu -= job.mcpu;
        self.busy_mcpu += job.mcpu;
        self.running_jobs += 1;
        self.push(finish, Ev::Finish(j, epoch));
    }

    /// The reactive mechanism: queued jobs that the booting capacity cannot
    /// absorb get new instances, BEST_FIT over split × type (see
    /// [`Self::best_fit`]).
    fn top_up(&mut self, t: Millis) {
        // Free capacity of booting instances, reserved virtually.
        let mut virt: Vec<(i64, i64, i32, bool)> = self
            .alive
            .iter()
            .map(|&i| &self.insts[i as usize])
            .filter(|inst| !inst.ready)
            .map(|inst| {
                let spot = self.prices.pools[inst.pool].market == Market::Spot;
                (inst.free_mcpu, inst.free_mem, inst.free_gpu, spot)
            })
            .collect();
        let queued: Vec<u32> = self.queue.iter().map(|k| k.2).collect();
        let mut behind: i64 = queued.iter().map(|&j| self.jobs[j as usize].mcpu).sum();
        // Dominated on-demand pools can never win (see `undominated_on_demand`).
        let pools: Vec<usize> = if self.burst_pools.is_empty() {
            self.od_best.clone()
        } else {
            self.burst_pools
                .iter()
                .copied()
                .filter(|&p| self.prices.pools[p].market != Market::OnDemand || self.is_od_best[p])
                .collect()
        };

        let find_slots = |virt: &[(i64, i64, i32, bool)], sh: &GangShape, od_only: bool| {
            let mut slots: Vec<usize> = Vec::new();
            for (k, v) in virt.iter().enumerate() {
                if v.0 >= sh.part_mcpu
                    && v.1 >= sh.part_mem
                    && v.2 >= sh.part_gpu
                    && !(od_only && v.3)
                {
                    slots.push(k);
                    if slots.len() == sh.parts as usize {
                        break;
                    }
                }
            }
            slots
        };
        for j in queued {
            let aggregate = behind;
            behind -= self.jobs[j as usize].mcpu;
            let order = self.shape_order(j);
            // 1. A split the booting capacity already covers.
            let mut covered: Option<(GangShape, Vec<usize>)> = None;
            for sh in &order {
                let od_only = self.od_only_if(j, t, self.shape_spot_ok(j, sh));
                let slots = find_slots(&virt, sh, od_only);
                if slots.len() == sh.parts as usize {
                    covered = Some((*sh, slots));
                    break;
                }
            }
            // 2. Otherwise the cheapest split × pool for what is missing.
            let (shape, mut slots, launch) = match covered {
                Some((sh, slots)) => (sh, slots, None),
                None => {
                    // Batch may exceed `max` by at most one instance (AWS
                    // Batch docs, `maxvCpus`): types of which the first
                    // `missing − 1` still fit under it.
                    let room = self.max_mcpu.map_or(i64::MAX, |m| m - self.alive_mcpu);
                    if room <= 0 {
                        continue;
                    }
                    let mut best: Option<(Rank, GangShape, usize, Vec<usize>)> = None;
                    let mut by_parts = order.clone();
                    by_parts.sort_by_key(|s| s.parts);
                    for sh in by_parts {
                        let od_only = self.od_only_if(j, t, self.shape_spot_ok(j, &sh));
                        let slots = find_slots(&virt, &sh, od_only);
                        let missing = sh.parts as usize - slots.len();
                        let max_type = if missing > 1 {
                            (room - 1) / (missing as i64 - 1)
                        } else {
                            i64::MAX
                        };
                        let from = if od_only { &self.od_best } else { &pools };
                        let (choice, failed) =
                            self.choose_pool(from, j, &sh, aggregate, max_type, t);
                        self.stats.spot_launch_failures += failed.len() as u64;
                        for p in failed {
                            if self.spot_feed[p].is_some() {
                                self.refuse_launch(p, t);
                            }
                        }
                        if let Some((score, pool)) = choice {
                            let better = best.as_ref().is_none_or(|b| {
                                score.0 < b.0 .0 || (score.0 == b.0 .0 && score.1 < b.0 .1 - 1e-12)
                            });
                            if better {
                                best = Some((score, sh, pool, slots));
                            }
                        }
                    }
                    let Some((_, sh, pool, slots)) = best else {
                        continue;
                    };
                    (sh, slots, Some(pool))
                }
            };
            self.set_shape(j, shape);
            if let Some(pool) = launch {
                for _ in slots.len()..shape.parts as usize {
                    let id = self.launch(pool, t);
                    let inst = &self.insts[id as usize];
                    let spot = self.prices.pools[pool].market == Market::Spot;
                    virt.push((inst.free_mcpu, inst.free_mem, inst.free_gpu, spot));
                    slots.push(virt.len() - 1);
                }
            }
            for k in slots {
                virt[k].0 -= shape.part_mcpu;
                virt[k].1 -= shape.part_mem;
                virt[k].2 -= shape.part_gpu;
            }
        }
    }

    /// BEST_FIT for job `j` split as `shape`: among pools whose type fits a
    /// part, the lowest expected price per *useful* vCPU —
    /// `parts × price × stretch / min(parts × type vCPUs, queued demand)`
    /// (a type larger than the queued demand wastes the rest; `stretch` is
    /// [`gang_spot_stretch`] on spot pools, 1 on on-demand) — then the
    /// smaller type, then the pool order. Types larger than `max_type_mcpu`
    /// are left out. Returns the score with the pool, so splits compare.
    fn best_fit(
        &self,
        pools: &[usize],
        j: u32,
        shape: &GangShape,
        aggregate: i64,
        max_type_mcpu: i64,
        t: Millis,
    ) -> Option<(f64, usize)> {
        let job = self.jobs[j as usize];
        let k = shape.parts.max(1) as i64;
        let (pm, pmem, pg) = (shape.part_mcpu, shape.part_mem, shape.part_gpu);
        let mut best: Option<(f64, i64, usize)> = None;
        for &p in pools {
            let pool = &self.prices.pools[p];
            let ty = &self.prices.types[pool.ty];
            let tm = ty.vcpus as i64 * 1000;
            if tm < pm || tm > max_type_mcpu || ty.memory_mib < pmem || ty.gpus < pg {
                continue;
            }
            let useful = (k * tm).min(aggregate.max(k * pm)) as f64;
            let stretch = if pool.market == Market::Spot {
                let rate = self.cfg.spot_rate(&ty.name, &pool.region);
                gang_spot_stretch(job.est_runtime_ms, job.elastic, rate, shape.parts)
            } else {
                1.0
            };
            let score = k as f64 * pool.curve.at(t) * stretch / useful;
            let better = match best {
                None => true,
                Some((bs, bm, _)) => score < bs - 1e-12 || ((score - bs).abs() <= 1e-12 && tm < bm),
            };
            if better {
                best = Some((score, tm, p));
            }
        }
        best.map(|b| (b.0, b.2))
    }

    /// The pool to launch from for job `j` split as `shape`, with its rank
    /// `(tier, score)` (lower wins): BEST_FIT over `pools` without spot
    /// pools whose launches fail now; returned with the number of failed
    /// launches tried before it (a failing pool that would have been the
    /// choice). With `rules.spot_first` every spot
    /// choice (tier 0) beats every on-demand one (tier 1): spot first, and
    /// on-demand only when no spot pool fits or can launch.
    fn choose_pool(
        &self,
        pools: &[usize],
        j: u32,
        shape: &GangShape,
        aggregate: i64,
        max_type_mcpu: i64,
        t: Millis,
    ) -> (Option<(Rank, usize)>, Vec<usize>) {
        let fit = |from: &[usize]| self.best_fit(from, j, shape, aggregate, max_type_mcpu, t);
        let traced = self.spot_feed.iter().any(Option::is_some);
        if self.spot_outages.is_empty() && !traced && !self.rules.spot_first {
            return (fit(pools).map(|(s, p)| ((0, s), p)), Vec::new());
        }
        let spot = |p: usize| self.prices.pools[p].market == Market::Spot;
        let mut from: Vec<usize> = pools.to_vec();
        // The pools whose launch was tried and failed (one per fallback).
        let mut failed = Vec::new();
        while let Some((_, p)) = fit(&from) {
            if !spot(p) || self.spot_available(p, t) {
                break;
            }
            failed.push(p);
            from.retain(|&q| !spot(q) || self.spot_available(q, t));
        }
        if self.rules.spot_first {
            let spot_pools: Vec<usize> = from.iter().copied().filter(|&p| spot(p)).collect();
            if let Some((s, p)) = fit(&spot_pools) {
                return (Some(((0, s), p)), failed);
            }
            from.retain(|&p| !spot(p));
            return (fit(&from).map(|(s, p)| ((1, s), p)), failed);
        }
        (fit(&from).map(|(s, p)| ((0, s), p)), failed)
    }
}

/// The most free milli-vCPUs of one of the `ready` instances (0 when none).
fn freest(insts: &[Inst], ready: &[u32]) -> i64 {
    (ready.iter())
        .map(|&i| insts[i as usize].free_mcpu)
        .fold(0, i64::max)
}
