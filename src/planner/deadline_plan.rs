//! Expected-cost plan for one deadline job on a learned spot market.
//!
//! The market is modelled as two states, capacity up or down, switching at
//! the *learned* rates of [`super::spot_risk`]: up → down at the pool's
//! interruption hazard λ, down → up at its recovery rate μ (per hour). Over
//! decision steps of `step_h` that is a Markov chain with
//! `P(down | up) = 1 − e^{−λ·step}` and `P(up | down) = 1 − e^{−μ·step}`.
//!
//! Backward induction over (step, progress, instance, restart steps left,
//! capacity) gives the action of least expected cost — wait, on-demand or
//! spot — in every state. The deadline is a hard constraint: any state that
//! cannot finish in time has a prohibitive cost, and since a loss of spot
//! always has positive probability (λ > 0 is enforced), every action that
//! could miss the deadline after an unlucky step is priced out. So the plan
//! never misses when the market's only surprise is *when* capacity goes —
//! the same guarantee the slack guard of [`super::deadline`] gives, but with
//! the cost of waiting, restarting and switching weighed by the market the
//! pool has shown.
//!
//! Pure: no I/O, no clock. Cost: O(steps × work steps × states) per solve
//! (a 48 h job at 6-minute steps: a few million operations); the caller
//! re-solves when the learned rates move.
//!
//! This memoryless plan is the reference of the one the planner uses,
//! [`SpellPlan`] ([`semi_markov`]): the same induction with capacity *and
//! its age*, on hazards learned per spell age ([`spells`]) — measured
//! markets are far from memoryless. With one hazard for every age the two
//! plans agree action for action (tested).

use super::deadline::Placement;

pub mod semi_markov;
pub mod spells;

pub use semi_markov::{Capacity, SpellPlan, SpellProblem};
pub use spells::{AgeBuckets, SpellLearner};

/// Cost that marks "cannot make the deadline" (finite so that expectations
/// never produce NaN; far above any real cost).
const PROHIBITIVE: f64 = 1e12;

/// The least of the three action values (0 wait, 1 on-demand, 2 spot),
/// capped at [`PROHIBITIVE`]. An action must beat the one before it by more
/// than rounding to be chosen, so that exact ties (common: near the
/// deadline every safe path is "on-demand to the end") resolve the same way
/// whatever the order of the sums — waiting first (it keeps every option),
/// then on-demand.
fn best_action(wait: f64, od: f64, spot: f64) -> (f64, u8) {
    let beats = |x: f64, best: f64| x < best - 1e-9 * best.abs().max(1.0);
    let (mut best, mut a) = (wait, 0u8);
    if beats(od, best) {
        (best, a) = (od, 1);
    }
    if beats(spot, best) {
        (best, a) = (spot, 2);
    }
    (best.min(PROHIBITIVE), a)
}

/// One job and its market, in decision steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanProblem {
    /// Work left, in steps of running without overhead.
    pub work: u32,
    /// Steps left until the deadline.
    pub steps: u32,
    /// Steps lost on every launch.
    pub restart: u32,
    pub step_h: f64,
    /// Spot price / on-demand price (on-demand costs 1 per step).
    pub spot_ratio: f64,
    /// Learned capacity-loss rate (interruption hazard), per hour.
    pub loss_per_h: f64,
    /// Learned capacity-return rate, per hour.
    pub return_per_h: f64,
}

/// The instance state the plan tracks: waiting, or on-demand / spot with
/// `r` restart steps still to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    Wait,
    OnDemand(u32),
    Spot(u32),
}

/// The solved plan: the best action for every reachable state.
#[derive(Debug, Clone)]
pub struct DeadlinePlan {
    problem: PlanProblem,
    lanes: usize,
    /// Best action per (step, progress, state, capacity): 0 wait, 1
    /// on-demand, 2 spot.
    actions: Vec<u8>,
    /// Expected cost from the start state (waiting, capacity as given).
    pub expected_cost: [f64; 2],
}

impl DeadlinePlan {
    fn states(lanes: usize) -> usize {
        1 + 2 * lanes
    }

    fn at(&self, step: u32, progress: u32, state: usize, up: bool) -> usize {
        let s = Self::states(self.lanes);
        ((step as usize * self.problem.work as usize + progress as usize) * s + state) * 2
            + usize::from(up)
    }

    /// Solves the plan by backward induction (see the module docs).
    pub fn solve(problem: PlanProblem) -> DeadlinePlan {
        let p = problem;
        let lanes = p.restart.max(1) as usize;
        let k = p.restart as usize;
        let states = Self::states(lanes);
        let w = p.work as usize;
        let lam = p.loss_per_h.max(1e-6);
        let mu = p.return_per_h.max(1e-6);
        let p_down_from_up = 1.0 - (-lam * p.step_h).exp();
        let p_up_from_down = 1.0 - (-mu * p.step_h).exp();
        // next-capacity probabilities: [from down, from up] → P(up next)
        let p_up = [p_up_from_down, 1.0 - p_down_from_up];
        let idx = |j: usize, r: usize| 1 + j * lanes + r; // j 0 on-demand, 1 spot
        let price = |j: usize| if j == 0 { 1.0 } else { p.spot_ratio };
        // Values of the next step: (progress 0..=w) × states × capacity.
        let plane = (w + 1) * states * 2;
        let vi = |pr: usize, s: usize, up: usize| (pr * states + s) * 2 + up;
        let mut next = vec![PROHIBITIVE; plane];
        for s in 0..states {
            for up in 0..2 {
                next[vi(w, s, up)] = 0.0;
            }
        }
        let mut cur = next.clone();
        let mut actions = vec![0u8; p.steps as usize * w * states * 2];
        for t in (0..p.steps as usize).rev() {
            // Expected value of landing in (pr, s) given capacity now `up`.
            let ev = |next: &[f64], pr: usize, s: usize, up: usize| {
                let q = p_up[up];
                q * next[vi(pr, s, 1)] + (1.0 - q) * next[vi(pr, s, 0)]
            };
            for pr in 0..w {
                for up in 0..2 {
                    let run = |j: usize, r: usize| {
                        if r > 0 {
                            price(j) + ev(&next, pr, idx(j, r - 1), up)
                        } else {
                            price(j) + ev(&next, pr + 1, idx(j, 0), up)
                        }
                    };
                    let wait = ev(&next, pr, 0, up);
                    let launch_od = run(0, k);
                    let launch_spot = if up == 1 { run(1, k) } else { f64::INFINITY };
                    for s in 0..states {
                        let (j, r) = if s == 0 {
                            (usize::MAX, 0)
                        } else {
                            ((s - 1) / lanes, (s - 1) % lanes)
                        };
                        // A spot instance without capacity is gone.
                        let (j, r) = if j == 1 && up == 0 {
                            (usize::MAX, 0)
                        } else {
                            (j, r)
                        };
                        let od = if j == 0 { run(0, r) } else { launch_od };
                        let spot = if j == 1 { run(1, r) } else { launch_spot };
                        let (best, a) = best_action(wait, od, spot);
                        cur[vi(pr, s, up)] = best;
                        actions[((t * w + pr) * states + s) * 2 + up] = a;
                    }
                }
            }
            for s in 0..states {
                for up in 0..2 {
                    cur[vi(w, s, up)] = 0.0;
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        DeadlinePlan {
            problem,
            lanes,
            actions,
            expected_cost: [next[vi(0, 0, 0)], next[vi(0, 0, 1)]],
        }
    }

    /// The plan's action `step` steps after it was solved, with `progress`
    /// steps of work done since, in instance state `running`, capacity
    /// `up` now. Past the plan's horizon or work: on-demand.
    pub fn action(&self, step: u32, progress: u32, running: Running, up: bool) -> Placement {
        if step >= self.problem.steps || progress >= self.problem.work {
            return Placement::OnDemand;
        }
        let r_max = self.lanes as u32 - 1;
        let state = match running {
            Running::Wait => 0,
            Running::OnDemand(r) => 1 + r.min(r_max) as usize,
            Running::Spot(r) => 1 + self.lanes + r.min(r_max) as usize,
        };
        match self.actions[self.at(step, progress, state, up)] {
            0 => Placement::Wait,
            1 => Placement::OnDemand,
            _ => Placement::Spot(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(loss: f64, ret: f64) -> PlanProblem {
        PlanProblem {
            work: 20,
            steps: 30,
            restart: 2,
            step_h: 0.1,
            spot_ratio: 0.3,
            loss_per_h: loss,
            return_per_h: ret,
        }
    }

    #[test]
    fn reliable_spot_is_used_and_dead_spot_is_not_waited_for() {
        let calm = DeadlinePlan::solve(problem(0.01, 5.0));
        assert_eq!(calm.action(0, 0, Running::Wait, true), Placement::Spot(0));
        // Capacity that comes back fast is worth waiting for.
        assert_eq!(calm.action(0, 0, Running::Wait, false), Placement::Wait);
        // Capacity that (almost) never returns: waiting is free, so wait
        // until the last step on-demand still finishes (30 − 2 − 20 = 8).
        let dead = DeadlinePlan::solve(problem(0.01, 0.001));
        assert_eq!(dead.action(7, 0, Running::Wait, false), Placement::Wait);
        assert_eq!(dead.action(8, 0, Running::Wait, false), Placement::OnDemand);
        // On spot with capacity: keep it.
        assert_eq!(
            calm.action(3, 1, Running::Spot(0), true),
            Placement::Spot(0)
        );
    }

    #[test]
    fn never_risks_the_deadline() {
        // Slack of 3 steps with a 2-step restart: spot now, if lost, leaves
        // 1 step — an on-demand restart (2) no longer fits, so on-demand.
        let plan = DeadlinePlan::solve(PlanProblem {
            work: 20,
            steps: 23,
            ..problem(0.01, 5.0)
        });
        assert_ne!(plan.action(0, 0, Running::Wait, true), Placement::Spot(0));
        assert_eq!(plan.action(1, 0, Running::Wait, true), Placement::OnDemand);
        assert!(plan.expected_cost[1] < PROHIBITIVE);
    }
}
