//! The deadline benchmark of *Can't Be Late* (Wu et al., NSDI '24): one
//! checkpointed job of `work` ticks must finish within `deadline` ticks on a
//! measured spot market, choosing at each tick between waiting, on-demand
//! and spot (in one zone, or any of several with `zones-at-once`).
//!
//! The model, shared by every policy and by the optimum:
//! - time is in ticks; at tick `i` a policy sees which zones have spot
//!   capacity at `i` and picks what runs over `[i, i+1)`;
//! - spot in zone `z` may only be picked when `z` has capacity at `i`; a
//!   spot instance whose zone has none at the next tick is lost there (its
//!   progress is kept: the job checkpoints);
//! - every launch (a new instance, or a move to another zone or market)
//!   first spends `restart` ticks making no progress, paid;
//! - on-demand costs 1 per tick, spot `spot_ratio`, waiting 0;
//! - a job not done at the deadline is a miss; it then finishes on
//!   on-demand (that cost counts too).
//!
//! [`omniscient`] is the exact optimum of this model (dynamic programming
//! over tick × progress × instance × restart left), the reference the paper
//! calls *Omniscient*. Pure: no I/O, no clock.

use crate::planner::deadline::{place, DeadlineView, Placement, ZoneSpot};
use crate::planner::deadline_plan::spells::{age_hazards, expected_residual_h, RatePrior};
use crate::planner::deadline_plan::{
    AgeBuckets, Capacity, Running, SpellLearner, SpellPlan, SpellProblem,
};

/// The job and the market's prices, in ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobSpec {
    /// Work, in ticks of running without overhead.
    pub work: u32,
    /// Deadline, in ticks from the start.
    pub deadline: u32,
    /// Ticks lost on every launch.
    pub restart: u32,
    /// Spot price / on-demand price.
    pub spot_ratio: f64,
    /// Length of a tick, hours (for policies that reason in hours).
    pub tick_h: f64,
}

impl JobSpec {
    /// What the `on_demand` policy pays: the work plus one start.
    pub fn on_demand_cost(&self) -> f64 {
        f64::from(self.work + self.restart)
    }
}

/// Spot capacity per zone and tick (`avail[zone][tick]`); at least
/// `deadline` ticks long.
pub type Market = [Vec<bool>];

/// What a policy sees at a tick.
#[derive(Debug, Clone, Copy)]
pub struct TickView<'a> {
    pub tick: u32,
    pub progress: u32,
    /// What ran over the last tick (a lost spot instance reads `Wait`).
    pub current: Placement,
    /// Restart ticks the current instance still has to pay.
    pub restart_left: u32,
    /// Capacity of each zone now.
    pub available: &'a [bool],
    pub spec: &'a JobSpec,
}

/// The benchmarked policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyName {
    OnDemand,
    Greedy,
    UniformProgress,
    Omniscient,
    Prescale,
}

impl PolicyName {
    pub const ALL: [PolicyName; 5] = [
        PolicyName::OnDemand,
        PolicyName::Greedy,
        PolicyName::UniformProgress,
        PolicyName::Omniscient,
        PolicyName::Prescale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::OnDemand => "on_demand",
            PolicyName::Greedy => "greedy",
            PolicyName::UniformProgress => "uniform_progress",
            PolicyName::Omniscient => "omniscient",
            PolicyName::Prescale => "prescale",
        }
    }
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// In on-demand ticks.
    pub cost: f64,
    pub missed: bool,
    /// Where the ticks went (`None` for the optimum, which is a value, not
    /// a run).
    pub usage: Option<Usage>,
}

/// Ticks paid per market and launches of one run: what a cost is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub spot_ticks: u32,
    pub on_demand_ticks: u32,
    /// Every launch, moves between zones included; each pays `restart`.
    pub launches: u32,
}

impl Usage {
    /// What the paid ticks cost, in on-demand ticks.
    pub fn cost(&self, spec: &JobSpec) -> f64 {
        f64::from(self.on_demand_ticks) + spec.spot_ratio * f64::from(self.spot_ticks)
    }
}

/// A stateful online policy.
pub trait OnlinePolicy {
    fn decide(&mut self, v: &TickView<'_>) -> Placement;
}

fn first_available(avail: &[bool]) -> Option<usize> {
    avail.iter().position(|&a| a)
}

/// Runs an online policy through the model (see the module docs).
pub fn simulate(spec: &JobSpec, market: &Market, policy: &mut dyn OnlinePolicy) -> Outcome {
    let zones = market.len();
    let mut avail = vec![false; zones];
    let (mut cur, mut left, mut p) = (Placement::Wait, 0u32, 0u32);
    let mut usage = Usage::default();
    let mut i = 0u32;
    while p < spec.work {
        for (z, a) in avail.iter_mut().enumerate() {
            *a = market[z].get(i as usize).copied().unwrap_or(false);
        }
        if let Placement::Spot(z) = cur {
            if !avail[z] {
                cur = Placement::Wait;
                left = 0;
            }
        }
        let mut a = if i >= spec.deadline {
            Placement::OnDemand
        } else {
            policy.decide(&TickView {
                tick: i,
                progress: p,
                current: cur,
                restart_left: left,
                available: &avail,
                spec,
            })
        };
        if let Placement::Spot(z) = a {
            if !avail.get(z).copied().unwrap_or(false) {
                debug_assert!(false, "policy picked spot zone {z} without capacity");
                a = Placement::Wait;
            }
        }
        if a != cur {
            cur = a;
            left = if a == Placement::Wait {
                0
            } else {
                usage.launches += 1;
                spec.restart
            };
        }
        match cur {
            Placement::Wait => {}
            Placement::OnDemand => usage.on_demand_ticks += 1,
            Placement::Spot(_) => usage.spot_ticks += 1,
        }
        if cur != Placement::Wait {
            if left > 0 {
                left -= 1;
            } else {
                p += 1;
            }
        }
        i += 1;
    }
    Outcome {
        cost: usage.cost(spec),
        missed: i > spec.deadline,
        usage: Some(usage),
    }
}

/// `on_demand`: start on-demand at once and run to the end.
pub struct OnDemandPolicy;

impl OnlinePolicy for OnDemandPolicy {
    fn decide(&mut self, _: &TickView<'_>) -> Placement {
        Placement::OnDemand
    }
}

/// `greedy` (the paper's baseline): spot whenever available, wait when not,
/// and switch to on-demand for good once waiting one more tick would leave
/// no time for an on-demand restart and the remaining work.
#[derive(Default)]
pub struct GreedyPolicy {
    committed: bool,
}

impl OnlinePolicy for GreedyPolicy {
    fn decide(&mut self, v: &TickView<'_>) -> Placement {
        let s = v.spec;
        let rest = s.work - v.progress;
        if !self.committed && v.current != Placement::OnDemand {
            // After this tick, an on-demand start must still fit.
            self.committed = s.deadline - v.tick < 1 + s.restart + rest;
        }
        if self.committed || v.current == Placement::OnDemand {
            self.committed = true;
            return Placement::OnDemand;
        }
        if let Placement::Spot(z) = v.current {
            return Placement::Spot(z);
        }
        first_available(v.available).map_or(Placement::Wait, Placement::Spot)
    }
}

/// `uniform_progress`: the paper's policy (§5), from its description:
/// with expected progress `ep(t) = t·C/D` (C the work, D the deadline),
/// current progress `cp(t)` and restart overhead `d`:
/// 1. *Uniform progress*: idle and `cp(t) < ep(t)` → on-demand;
/// 2. *Taking risks*: spot whenever it is available, even when behind, and
///    stay on it until preempted;
/// 3. *Hysteresis*: on on-demand, stay until `cp(t) ≥ ep(t + 2d)`;
/// 4. *Safety net*: idle and remaining time `R(t) < C(t) + 2d` (remaining
///    work) → on-demand until the end.
///
/// "Idle" includes the moment the policy would leave on-demand, so the
/// safety net also guards that move (otherwise leaving on-demand near the
/// deadline could miss it, which the paper's policy never does). Several
/// zones: the current one while it has capacity, else the first that has.
#[derive(Default)]
pub struct UniformProgressPolicy {
    committed: bool,
}

impl OnlinePolicy for UniformProgressPolicy {
    fn decide(&mut self, v: &TickView<'_>) -> Placement {
        let s = v.spec;
        if self.committed {
            return Placement::OnDemand;
        }
        if let Placement::Spot(z) = v.current {
            return Placement::Spot(z);
        }
        let ep = |t: f64| t * f64::from(s.work) / f64::from(s.deadline);
        let cp = f64::from(v.progress);
        let t = f64::from(v.tick);
        let d = f64::from(s.restart);
        if v.current == Placement::OnDemand && cp < ep(t + 2.0 * d) {
            return Placement::OnDemand;
        }
        // Idle (or about to leave on-demand).
        let remaining_time = f64::from(s.deadline - v.tick);
        let remaining_work = f64::from(s.work - v.progress);
        if remaining_time < remaining_work + 2.0 * d {
            self.committed = true;
            return Placement::OnDemand;
        }
        if let Some(z) = first_available(v.available) {
            return Placement::Spot(z);
        }
        if cp < ep(t) {
            return Placement::OnDemand;
        }
        Placement::Wait
    }
}

/// `prescale`: the planner's semi-Markov deadline plan
/// ([`crate::planner::deadline_plan::SpellPlan`]) on the market's learned
/// age-dependent hazards. Every tick the policy feeds what it sees to one
/// [`SpellLearner`] per zone and one for "any zone has capacity"; the plan's
/// loss hazards per up-age are those of the zones' up-spells (pooled over
/// the zones: an instance is lost when *its* zone goes), its return hazards
/// per down-age those of the any-zone down-spells (spot is back when some
/// zone has it), and with several zones a loss finds another zone up with
/// the learned share of losses that did. It re-solves the plan every tenth
/// of the evidence half-life (2.4 h at the default 24 h: the learned
/// hazards drift with the evidence) and places each action with
/// [`crate::planner::deadline::place`]: spot stays in its zone while it
/// holds, else goes to the available zone with the longest expected
/// remaining up-time given its age; every action passes the slack guard.
pub struct PrescalePolicy {
    zones: Vec<SpellLearner>,
    any: SpellLearner,
    /// Discounted zone losses, and those that left another zone up.
    losses: f64,
    moves: f64,
    last: Vec<bool>,
    cfg: crate::planner::spot_risk::SpotRiskConfig,
    /// The plan and the tick and progress it was solved at.
    plan: Option<(SpellPlan, u32, u32)>,
}

impl PrescalePolicy {
    /// Re-solve period as a share of the evidence half-life: in a tenth of
    /// it old evidence loses 7 % of its weight, so the plan never runs on
    /// hazards much staler than the estimates.
    pub const RESOLVE_SHARE_OF_HALF_LIFE: f64 = 0.1;

    fn resolve_every_ticks(&self, tick_h: f64) -> u32 {
        let h = Self::RESOLVE_SHARE_OF_HALF_LIFE * self.cfg.half_life_h.max(0.0);
        ((h / tick_h).round() as u32).max(1)
    }

    pub fn new(zones: usize, tick_h: f64, cfg: &crate::planner::spot_risk::SpotRiskConfig) -> Self {
        let learner = SpellLearner::new(AgeBuckets::new(tick_h), cfg.half_life_h);
        PrescalePolicy {
            zones: vec![learner.clone(); zones],
            any: learner,
            losses: 0.0,
            moves: 0.0,
            last: vec![false; zones],
            cfg: *cfg,
            plan: None,
        }
    }

    /// Learns from the market's past before the job starts (`past[zone]
    /// [tick]`): what a running service has seen of these pools.
    pub fn warm_up(&mut self, past: &Market) {
        let ticks = past.iter().map(Vec::len).min().unwrap_or(0);
        let mut now = vec![false; past.len()];
        for t in 0..ticks {
            for (a, zone) in now.iter_mut().zip(past) {
                *a = zone[t];
            }
            self.observe(&now);
        }
    }

    fn observe(&mut self, available: &[bool]) {
        let seen = self.any.state().is_some();
        let w = crate::pricing::spot_risk::half_life_weight(
            self.any.buckets().step_h(),
            self.cfg.half_life_h,
        );
        self.losses *= w;
        self.moves *= w;
        for (z, l) in self.zones.iter_mut().enumerate() {
            if seen && self.last[z] && !available[z] {
                self.losses += 1.0;
                if available.iter().enumerate().any(|(o, &a)| a && o != z) {
                    self.moves += 1.0;
                }
            }
            l.observe(available[z]);
        }
        self.any.observe(available.iter().any(|&a| a));
        self.last.copy_from_slice(available);
    }

    /// Loss hazards per up-age bucket (the zones' up-spells pooled).
    fn loss_table(&self) -> Vec<f64> {
        let stats: Vec<_> = self.zones.iter().map(|l| &l.up).collect();
        age_hazards(self.any.buckets(), &stats, self.loss_prior())
    }

    fn loss_prior(&self) -> RatePrior {
        RatePrior {
            rate_per_h: self.cfg.prior_rate_per_h,
            hours: self.cfg.prior_hours,
        }
    }

    /// Expected remaining up-time of zone `z` given its age, hours (its own
    /// up-spells, shrunk towards its own pooled rate).
    fn residual_up_h(&self, z: usize) -> f64 {
        let l = &self.zones[z];
        let table = age_hazards(l.buckets(), &[&l.up], self.loss_prior());
        expected_residual_h(l.buckets(), &table)[l.bucket()]
    }

    fn plan_for(&mut self, v: &TickView<'_>) -> &(SpellPlan, u32, u32) {
        let every = self.resolve_every_ticks(v.spec.tick_h);
        let stale = match &self.plan {
            None => true,
            Some((_, t0, _)) => v.tick - t0 >= every,
        };
        if stale {
            let s = v.spec;
            let ret_prior = RatePrior {
                rate_per_h: self.cfg.prior_recovery_per_h,
                hours: self.cfg.prior_hours,
            };
            // Jeffreys prior on the share of losses that find another zone
            // up; none with one zone.
            let move_p = if self.zones.len() > 1 {
                (self.moves + 0.5) / (self.losses + 1.0)
            } else {
                0.0
            };
            let plan = SpellPlan::solve(&SpellProblem {
                work: s.work - v.progress,
                steps: s.deadline - v.tick,
                restart: s.restart,
                spot_ratio: s.spot_ratio,
                buckets: self.any.buckets().clone(),
                loss_per_h: self.loss_table(),
                return_per_h: age_hazards(self.any.buckets(), &[&self.any.down], ret_prior),
                move_p,
            });
            self.plan = Some((plan, v.tick, v.progress));
        }
        self.plan.as_ref().expect("just solved")
    }
}

impl OnlinePolicy for PrescalePolicy {
    fn decide(&mut self, v: &TickView<'_>) -> Placement {
        self.observe(v.available);
        let s = v.spec;
        let running = match v.current {
            Placement::Wait => Running::Wait,
            Placement::OnDemand => Running::OnDemand(v.restart_left),
            Placement::Spot(_) => Running::Spot(v.restart_left),
        };
        // Zones ranked by expected remaining up-time (as a rate, so that
        // `place` takes the lowest).
        let zones: Vec<ZoneSpot> = (0..v.available.len())
            .map(|z| ZoneSpot {
                available: v.available[z],
                hazard_per_h: 1.0 / self.residual_up_h(z).max(1e-9),
            })
            .collect();
        // The capacity the plan sees: the zone spot runs in or would go to,
        // at its age; with none up, the age of the outage.
        let zone = match v.current {
            Placement::Spot(z) if v.available[z] => Some(z),
            _ => zones
                .iter()
                .enumerate()
                .filter(|(_, zs)| zs.available)
                .min_by(|a, b| a.1.hazard_per_h.total_cmp(&b.1.hazard_per_h))
                .map(|(z, _)| z),
        };
        let cap = match zone {
            Some(z) => Capacity {
                up: true,
                bucket: self.zones[z].bucket(),
            },
            None => Capacity {
                up: false,
                bucket: self.any.bucket(),
            },
        };
        let (plan, t0, p0) = self.plan_for(v);
        let planned = plan.action(v.tick - t0, v.progress - p0, running, cap);
        let view = DeadlineView {
            work_left_h: f64::from(s.work - v.progress) * s.tick_h,
            time_left_h: f64::from(s.deadline - v.tick) * s.tick_h,
            restart_h: f64::from(s.restart) * s.tick_h,
            step_h: s.tick_h,
            current: v.current,
            pending_restart_h: f64::from(v.restart_left) * s.tick_h,
        };
        place(&view, planned, &zones)
    }
}

/// The optimum with the market known in advance (the paper's
/// *Omniscient*): least cost that finishes by the deadline, by backward
/// dynamic programming over (tick, progress, instance, restart ticks left).
/// `None` when even on-demand from the start cannot make the deadline.
pub fn omniscient(spec: &JobSpec, market: &Market) -> Option<f64> {
    let zones = market.len();
    let w = spec.work as usize;
    let k = spec.restart as usize;
    let lanes = k.max(1);
    // State 0 = waiting; 1 + j·lanes + r = instance j (0 on-demand, 1+z spot
    // z) with r restart ticks left.
    let states = 1 + (1 + zones) * lanes;
    let idx = |j: usize, r: usize| 1 + j * lanes + r;
    let price = |j: usize| if j == 0 { 1.0 } else { spec.spot_ratio };
    let inf = f64::INFINITY;
    let mut next = vec![inf; (w + 1) * states];
    for s in 0..states {
        next[w * states + s] = 0.0;
    }
    let mut cur = next.clone();
    // Value of launching/continuing instance j with r restart ticks left
    // before this tick, from progress p, given the next tick's values.
    let step = |next: &[f64], p: usize, j: usize, r: usize| -> f64 {
        if r > 0 {
            price(j) + next[p * states + idx(j, r - 1)]
        } else {
            price(j) + next[(p + 1) * states + idx(j, 0)]
        }
    };
    for i in (0..spec.deadline as usize).rev() {
        let avail = |z: usize| market[z].get(i).copied().unwrap_or(false);
        for p in 0..w {
            // Best over fresh launches (shared by all states not already on
            // that instance).
            let wait = next[p * states];
            let launch: Vec<f64> = (0..=zones)
                .map(|j| {
                    if j > 0 && !avail(j - 1) {
                        inf
                    } else {
                        step(&next, p, j, k)
                    }
                })
                .collect();
            let best_launch_except = |skip: Option<usize>| {
                launch
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| Some(*j) != skip)
                    .map(|(_, v)| *v)
                    .fold(inf, f64::min)
            };
            let fresh = wait.min(best_launch_except(None));
            cur[p * states] = fresh;
            for j in 0..=zones {
                let alive = j == 0 || avail(j - 1);
                for r in 0..lanes {
                    let v = if alive {
                        let keep = step(&next, p, j, r);
                        keep.min(wait).min(best_launch_except(Some(j)))
                    } else {
                        fresh
                    };
                    cur[p * states + idx(j, r)] = v;
                }
            }
        }
        for s in 0..states {
            cur[w * states + s] = 0.0;
        }
        std::mem::swap(&mut cur, &mut next);
    }
    let v = next[0];
    v.is_finite().then_some(v)
}

/// Runs one policy on one market. `history` is the market before the start,
/// which only `prescale` (a service that watches its pools) learns from.
pub fn run_policy(name: PolicyName, spec: &JobSpec, market: &Market, history: &Market) -> Outcome {
    let cfg = crate::planner::spot_risk::SpotRiskConfig::default();
    match name {
        PolicyName::OnDemand => simulate(spec, market, &mut OnDemandPolicy),
        PolicyName::Greedy => simulate(spec, market, &mut GreedyPolicy::default()),
        PolicyName::UniformProgress => {
            simulate(spec, market, &mut UniformProgressPolicy::default())
        }
        PolicyName::Prescale => {
            let mut p = PrescalePolicy::new(market.len(), spec.tick_h, &cfg);
            p.warm_up(history);
            simulate(spec, market, &mut p)
        }
        PolicyName::Omniscient => {
            let best = omniscient(spec, market);
            Outcome {
                cost: best.unwrap_or(f64::NAN),
                missed: best.is_none(),
                usage: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn spec(work: u32, deadline: u32, restart: u32) -> JobSpec {
        JobSpec {
            work,
            deadline,
            restart,
            spot_ratio: 0.3,
            tick_h: 0.1,
        }
    }

    /// Plays a fixed action sequence (the brute force's "policy").
    struct Script(Vec<Placement>);
    impl OnlinePolicy for Script {
        fn decide(&mut self, v: &TickView<'_>) -> Placement {
            self.0[v.tick as usize]
        }
    }

    fn brute_force(spec: &JobSpec, market: &Market) -> Option<f64> {
        let zones = market.len();
        let choices = 2 + zones;
        let n = spec.deadline as usize;
        let mut best: Option<f64> = None;
        let has_spot = |z: usize, i: usize| market[z][i];
        for code in 0..choices.pow(n as u32) {
            let mut c = code;
            let mut seq = Vec::with_capacity(n);
            let mut valid = true;
            for i in 0..n {
                let a = match c % choices {
                    0 => Placement::Wait,
                    1 => Placement::OnDemand,
                    z => {
                        if !has_spot(z - 2, i) {
                            valid = false;
                        }
                        Placement::Spot(z - 2)
                    }
                };
                c /= choices;
                seq.push(a);
            }
            if !valid {
                continue;
            }
            let o = simulate(spec, market, &mut Script(seq));
            if !o.missed {
                best = Some(best.map_or(o.cost, |b: f64| b.min(o.cost)));
            }
        }
        best
    }

    #[test]
    fn dynamic_program_matches_brute_force_on_small_traces() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for case in 0..40 {
            let zones = 1 + case % 2;
            let deadline = if zones == 1 { 8 } else { 6 };
            let restart = (case % 3) as u32;
            let work = rng.random_range(2..=(deadline - restart).max(2));
            let s = spec(work, deadline, restart);
            let market: Vec<Vec<bool>> = (0..zones)
                .map(|_| (0..deadline).map(|_| rng.random_bool(0.6)).collect())
                .collect();
            let dp = omniscient(&s, &market);
            let bf = brute_force(&s, &market);
            match (dp, bf) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "case {case}: dp {a} bf {b}"),
                (a, b) => assert_eq!(a.is_some(), b.is_some(), "case {case}"),
            }
        }
    }

    #[test]
    fn greedy_hand_worked() {
        // Work 4, deadline 8, restart 1; spot up at ticks 0..2 and 6..8.
        let s = spec(4, 8, 1);
        let m = vec![vec![true, true, false, false, false, false, true, true]];
        // Tick 0: spot (restart), tick 1: spot (+1), tick 2: lost, 8-2=6 ≥
        // 1+1+3 → wait; tick 3: 5 ≥ 5 → wait; tick 4: 4 < 5 → on-demand
        // for good: restart at 4, work at 5, 6, 7 → done exactly at the
        // deadline. Cost 2×0.3 + 4 on-demand.
        let o = simulate(&s, &m, &mut GreedyPolicy::default());
        assert!(!o.missed);
        assert!((o.cost - (0.6 + 4.0)).abs() < 1e-9, "{o:?}");
        let usage = Usage {
            spot_ticks: 2,
            on_demand_ticks: 4,
            launches: 2,
        };
        assert_eq!(o.usage, Some(usage));
        // Spot always up: spot all the way (1 restart + 4 work).
        let all = vec![vec![true; 8]];
        let o = simulate(&s, &all, &mut GreedyPolicy::default());
        assert!((o.cost - 1.5).abs() < 1e-9, "{o:?}");
    }

    #[test]
    fn uniform_progress_hand_worked() {
        // Work 4, deadline 10, restart 1 → ep(t) = 0.4 t.
        let s = spec(4, 10, 1);
        // No spot at all: tick 0 idle, cp 0 = ep(0) → wait; tick 1: 0 < 0.4
        // → on-demand (restart at 1, work at 2); stay while cp < ep(t+2):
        // t=2 cp 0 < 1.6, t=3 cp 1 < 2.0, t=4 cp 2 < 2.4, t=5 cp 3 ≥ 2.8 →
        // leave: idle, cp 3 ≥ ep(5)=2; remaining time 5 ≥ 1 + 2 → wait;
        // t=6, t=7 (R=3, not < 3) wait; t=8: R=2 < 3 → safety net:
        // on-demand, restart at 8, work at 9. Cost: 4 (ticks 1-4) + 2 = 6.
        let none = vec![vec![false; 10]];
        let o = simulate(&s, &none, &mut UniformProgressPolicy::default());
        assert!(!o.missed);
        assert!((o.cost - 6.0).abs() < 1e-9, "{o:?}");
        // Spot from tick 3 on: t=0 wait, t=1 on-demand (restart), t=2 work
        // (cp 1 at t=3); t=3 cp 1 < ep(5)=2 → stay on-demand (hysteresis),
        // t=4 cp 2 < 2.4 stay, t=5 cp 3 ≥ 2.8 → spot (restart), t=6 work →
        // done. Cost: 4 on-demand + 2 × 0.3.
        let late = vec![vec![
            false, false, false, true, true, true, true, true, true, true,
        ]];
        let o = simulate(&s, &late, &mut UniformProgressPolicy::default());
        assert!((o.cost - 4.6).abs() < 1e-9, "{o:?}");
    }

    #[test]
    fn online_policies_never_beat_the_optimum_and_prescale_never_misses() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..30 {
            let s = spec(30, 40, 2);
            // Markov on/off availability with long runs.
            let market: Vec<Vec<bool>> = (0..2)
                .map(|_| {
                    let mut up = rng.random_bool(0.5);
                    (0..40)
                        .map(|_| {
                            if rng.random_bool(0.15) {
                                up = !up;
                            }
                            up
                        })
                        .collect()
                })
                .collect();
            let opt = omniscient(&s, &market).unwrap();
            for p in PolicyName::ALL {
                let o = run_policy(p, &s, &market, &[]);
                assert!(o.cost >= opt - 1e-9, "{p:?} {o:?} < {opt}");
                if p != PolicyName::OnDemand {
                    assert!(!o.missed, "{p:?} missed");
                }
            }
        }
    }
}
