//! The deadline plan on a **semi-Markov** market: capacity up or down, and
//! how long it has been so (an age bucket of [`super::spells::AgeBuckets`]),
//! with the hazards of [`super::spells`] per bucket.
//!
//! Why the age: on measured markets a spell that just began behaves unlike
//! an old one (most up-spells end within the hour, the survivors last for
//! many; most outages are flaps of minutes). A memoryless plan averages the
//! two, and so waits too little after a flap begins and trusts a spot return
//! too early or too late. The plan here is the same backward induction as
//! [`super::DeadlinePlan`] over (step, progress, instance, restart steps
//! left) with the capacity state widened to (up/down, age bucket); with the
//! same hazard in every bucket it *is* that plan (tested).
//!
//! Capacity chain, per step of `step_h` (λ_b loss, μ_b return rates):
//! - up in bucket `b`: lost with `p = 1 − e^{−λ_b·step}`; then, with
//!   probability `move_p` another zone still has capacity (a fresh up-spell,
//!   bucket 0: the instance is gone but spot can be launched at once), else
//!   capacity is down (bucket 0); kept: the next bucket with the bucket's
//!   advance probability, else the same;
//! - down in bucket `b`: back up (bucket 0) with `1 − e^{−μ_b·step}`, else
//!   older as above.
//!
//! A spot instance survives a step exactly when capacity is up *and not
//! fresh* after it: bucket 0 lasts one step and is entered only through a
//! loss or a return, so an instance seen in up-bucket 0 has just been lost.
//!
//! Only the states the job can be in are solved: after `t` steps the
//! progress is at most `t` and at least what still fits before the deadline
//! (a band of width slack + 1), which makes tight deadlines cheap. Pure: no
//! I/O, no clock.

use super::spells::AgeBuckets;
use super::{Running, PROHIBITIVE};
use crate::planner::deadline::Placement;

/// One job and its semi-Markov market, in decision steps.
#[derive(Debug, Clone, PartialEq)]
pub struct SpellProblem {
    /// Work left, in steps of running without overhead.
    pub work: u32,
    /// Steps left until the deadline.
    pub steps: u32,
    /// Steps lost on every launch.
    pub restart: u32,
    /// Spot price / on-demand price (on-demand costs 1 per step).
    pub spot_ratio: f64,
    pub buckets: AgeBuckets,
    /// Capacity-loss rate per up-age bucket, per hour.
    pub loss_per_h: Vec<f64>,
    /// Capacity-return rate per down-age bucket, per hour.
    pub return_per_h: Vec<f64>,
    /// Probability that a loss leaves another zone with capacity (0 with
    /// one zone).
    pub move_p: f64,
}

/// Capacity as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub up: bool,
    /// Age bucket of the current spell.
    pub bucket: usize,
}

/// The solved plan: the best action in every reachable state.
#[derive(Debug, Clone)]
pub struct SpellPlan {
    work: u32,
    steps: u32,
    lanes: usize,
    nb: usize,
    /// Offset of each step's band in `actions`, in progress rows.
    band_off: Vec<usize>,
    /// Best action per (step, progress in band, instance state, capacity):
    /// 0 wait, 1 on-demand, 2 spot.
    actions: Vec<u8>,
    /// Expected cost from the start (waiting) per capacity state.
    start_cost: Vec<f64>,
}

/// Progress rows solved at step `t`: reachable (≤ t) and still feasible
/// (work left ≤ steps left).
fn band(work: u32, steps: u32, t: u32) -> (u32, u32) {
    let lo = (work + t).saturating_sub(steps);
    let hi = t.min(work.saturating_sub(1));
    (lo, hi)
}

impl SpellPlan {
    fn cap_index(&self, c: Capacity) -> usize {
        let b = c.bucket.min(self.nb - 1);
        if c.up {
            b
        } else {
            self.nb + b
        }
    }

    /// Solves the plan by backward induction (see the module docs).
    pub fn solve(p: &SpellProblem) -> SpellPlan {
        let nb = p.buckets.len().max(1);
        let caps = 2 * nb;
        let lanes = p.restart.max(1) as usize;
        let k = p.restart as usize;
        let states = 1 + 2 * lanes;
        let w = p.work as usize;
        let trans = full_transitions(p);
        let idx = |j: usize, r: usize| 1 + j * lanes + r; // j 0 on-demand, 1 spot
        let price = |j: usize| if j == 0 { 1.0 } else { p.spot_ratio };
        let vi = |pr: usize, s: usize, c: usize| (pr * states + s) * caps + c;
        let mut next = vec![PROHIBITIVE; (w + 1) * states * caps];
        next[vi(w, 0, 0)..].fill(0.0);
        let mut cur = next.clone();
        let mut band_off = Vec::with_capacity(p.steps as usize + 1);
        let mut rows = 0usize;
        for t in 0..p.steps {
            band_off.push(rows);
            let (lo, hi) = band(p.work, p.steps, t);
            rows += (hi + 1).saturating_sub(lo) as usize;
        }
        band_off.push(rows);
        let mut actions = vec![0u8; rows * states * caps];
        for t in (0..p.steps).rev() {
            let (lo, hi) = band(p.work, p.steps, t);
            let ev = |next: &[f64], pr: usize, s: usize, c: usize| -> f64 {
                trans[c].iter().map(|&(n, q)| q * next[vi(pr, s, n)]).sum()
            };
            for pr in lo as usize..=hi as usize {
                if lo > hi {
                    break;
                }
                let row = band_off[t as usize] + pr - lo as usize;
                for c in 0..caps {
                    let up = c < nb;
                    // Bucket 0 up is a fresh spell: no instance survived
                    // into it, but spot can be launched.
                    let alive = up && c != 0;
                    let run = |j: usize, r: usize| {
                        if r > 0 {
                            price(j) + ev(&next, pr, idx(j, r - 1), c)
                        } else {
                            price(j) + ev(&next, pr + 1, idx(j, 0), c)
                        }
                    };
                    let wait = ev(&next, pr, 0, c);
                    let launch_od = run(0, k);
                    let launch_spot = if up { run(1, k) } else { f64::INFINITY };
                    for s in 0..states {
                        let (j, r) = match s {
                            0 => (usize::MAX, 0),
                            _ => ((s - 1) / lanes, (s - 1) % lanes),
                        };
                        let j = if j == 1 && !alive { usize::MAX } else { j };
                        let od = if j == 0 { run(0, r) } else { launch_od };
                        let spot = if j == 1 { run(1, r) } else { launch_spot };
                        let (best, a) = super::best_action(wait, od, spot);
                        cur[vi(pr, s, c)] = best;
                        actions[(row * states + s) * caps + c] = a;
                    }
                }
            }
            cur[vi(w, 0, 0)..].fill(0.0);
            std::mem::swap(&mut cur, &mut next);
        }
        let start_cost = (0..caps).map(|c| next[vi(0, 0, c)]).collect();
        SpellPlan {
            work: p.work,
            steps: p.steps,
            lanes,
            nb,
            band_off,
            actions,
            start_cost,
        }
    }

    /// Expected cost from the start, waiting, with capacity `c`.
    pub fn expected_cost(&self, c: Capacity) -> f64 {
        if self.work == 0 {
            return 0.0;
        }
        self.start_cost[self.cap_index(c)]
    }

    /// The plan's action `step` steps after it was solved, with `progress`
    /// steps of work done since, in instance state `running`, capacity `c`
    /// now. Outside the plan (past its horizon or work, or a state that can
    /// no longer finish in time): on-demand.
    pub fn action(&self, step: u32, progress: u32, running: Running, c: Capacity) -> Placement {
        if step >= self.steps || progress >= self.work {
            return Placement::OnDemand;
        }
        let (lo, hi) = band(self.work, self.steps, step);
        if progress < lo || progress > hi {
            return Placement::OnDemand;
        }
        let states = 1 + 2 * self.lanes;
        let r_max = self.lanes as u32 - 1;
        let s = match running {
            Running::Wait => 0,
            Running::OnDemand(r) => 1 + r.min(r_max) as usize,
            Running::Spot(r) => 1 + self.lanes + r.min(r_max) as usize,
        };
        let row = self.band_off[step as usize] + (progress - lo) as usize;
        match self.actions[(row * states + s) * 2 * self.nb + self.cap_index(c)] {
            0 => Placement::Wait,
            1 => Placement::OnDemand,
            _ => Placement::Spot(0),
        }
    }
}

/// The capacity chain's transitions with every (next state, probability)
/// pair (up to four from an up state).
fn full_transitions(p: &SpellProblem) -> Vec<Vec<(usize, f64)>> {
    let nb = p.buckets.len();
    let step_h = p.buckets.step_h();
    let rate = |v: &[f64], b: usize| v.get(b).or(v.last()).copied().unwrap_or(0.0);
    let mv = if nb > 0 {
        p.move_p.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut out = Vec::with_capacity(2 * nb);
    for up in [true, false] {
        for b in 0..nb {
            let (own, older) = if up {
                (b, (b + 1).min(nb - 1))
            } else {
                (nb + b, nb + (b + 1).min(nb - 1))
            };
            let hazard = if up {
                rate(&p.loss_per_h, b)
            } else {
                rate(&p.return_per_h, b)
            };
            let flip = 1.0 - (-hazard.max(1e-6) * step_h).exp();
            let adv = p.buckets.advance_p(b);
            let mut t: Vec<(usize, f64)> = Vec::with_capacity(4);
            let mut add = |n: usize, q: f64| {
                if q <= 0.0 {
                    return;
                }
                match t.iter_mut().find(|(m, _)| *m == n) {
                    Some(e) => e.1 += q,
                    None => t.push((n, q)),
                }
            };
            if up {
                add(0, flip * mv);
                add(nb, flip * (1.0 - mv));
            } else {
                add(0, flip);
            }
            add(older, (1.0 - flip) * adv);
            add(own, (1.0 - flip) * (1.0 - adv));
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{DeadlinePlan, PlanProblem};
    use super::*;
    use crate::planner::deadline::DeadlineView;
    use rand::{Rng, SeedableRng};

    fn problem(loss: Vec<f64>, ret: Vec<f64>) -> SpellProblem {
        SpellProblem {
            work: 20,
            steps: 30,
            restart: 2,
            spot_ratio: 0.3,
            buckets: AgeBuckets::new(0.1),
            loss_per_h: loss,
            return_per_h: ret,
            move_p: 0.0,
        }
    }

    fn up(bucket: usize) -> Capacity {
        Capacity { up: true, bucket }
    }

    fn down(bucket: usize) -> Capacity {
        Capacity { up: false, bucket }
    }

    /// With one hazard in every bucket the age carries no information: the
    /// semi-Markov plan is the Markov plan, action for action.
    #[test]
    fn constant_hazards_reduce_to_the_markov_plan() {
        for (loss, ret) in [(0.01, 5.0), (0.5, 0.5), (2.0, 0.2), (0.01, 0.001)] {
            for (work, steps, restart) in [(20, 30, 2), (20, 23, 2), (15, 40, 1), (10, 14, 0)] {
                let m = DeadlinePlan::solve(PlanProblem {
                    work,
                    steps,
                    restart,
                    step_h: 0.1,
                    spot_ratio: 0.3,
                    loss_per_h: loss,
                    return_per_h: ret,
                });
                let nb = AgeBuckets::new(0.1).len();
                let s = SpellPlan::solve(&SpellProblem {
                    work,
                    steps,
                    restart,
                    ..problem(vec![loss; nb], vec![ret; nb])
                });
                for b in [1, 3, nb - 1] {
                    let (a, c) = (m.expected_cost[1], s.expected_cost(up(b)));
                    assert!((a - c).abs() < 1e-6 * a.max(1.0), "{a} {c}");
                    let (a, c) = (m.expected_cost[0], s.expected_cost(down(b)));
                    assert!((a - c).abs() < 1e-6 * a.max(1.0), "{a} {c}");
                }
                for t in 0..steps {
                    for pr in 0..=t.min(work - 1) {
                        if work - pr + restart > steps - t {
                            continue; // infeasible: both say on-demand or tie
                        }
                        for run in [Running::Wait, Running::OnDemand(0), Running::Spot(0)] {
                            for cap in [up(2), down(2)] {
                                assert_eq!(
                                    m.action(t, pr, run, cap.up),
                                    s.action(t, pr, run, cap),
                                    "{loss} {ret} {work}/{steps} t {t} pr {pr} {run:?} {cap:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Work 1, no restart, 2 steps, capacity down: wait one step (free),
    /// then spot if it came back (0.3) else on-demand (1) — or on-demand now
    /// (1). Expected 0.3·q + (1 − q) with q = 1 − e^{−μ_b·0.1}: the return
    /// rate of the down spell's own age bucket.
    #[test]
    fn hand_worked_wait_uses_the_age_buckets_rate() {
        let nb = AgeBuckets::new(0.1).len();
        let mut ret = vec![0.1; nb];
        ret[0] = 20.0; // a fresh outage is a flap
        let p = SpellProblem {
            work: 1,
            steps: 2,
            restart: 0,
            ..problem(vec![0.1; nb], ret)
        };
        let plan = SpellPlan::solve(&p);
        let q0 = 1.0 - (-20.0f64 * 0.1).exp();
        let want = 0.3 * q0 + (1.0 - q0);
        assert!((plan.expected_cost(down(0)) - want).abs() < 1e-12);
        assert_eq!(plan.action(0, 0, Running::Wait, down(0)), Placement::Wait);
        // An old outage returns at 0.1/h: waiting still costs nothing here
        // (on-demand next step fits), so wait; expected cost ≈ 1 − 0.7·q.
        let q5 = 1.0 - (-0.1f64 * 0.1).exp();
        let want = 0.3 * q5 + (1.0 - q5);
        assert!((plan.expected_cost(down(5)) - want).abs() < 1e-12);
    }

    /// Age changes the decision: on on-demand with a 2-step restart, spot
    /// that just came back (falling loss hazard: young spells die fast) is
    /// not worth the move, spot that has held for hours is.
    #[test]
    fn young_spot_is_distrusted_when_young_spells_die_young() {
        let nb = AgeBuckets::new(0.1).len();
        let loss: Vec<f64> = (0..nb).map(|b| if b < 4 { 6.0 } else { 0.02 }).collect();
        let plan = SpellPlan::solve(&SpellProblem {
            work: 60,
            steps: 90,
            ..problem(loss, vec![1.0; nb])
        });
        let run = Running::OnDemand(0);
        assert_eq!(plan.action(10, 8, run, up(1)), Placement::OnDemand);
        assert_eq!(plan.action(10, 8, run, up(nb - 1)), Placement::Spot(0));
    }

    /// No action of the plan can make the deadline unreachable if spot is
    /// lost right after it: every non-on-demand action in a state that can
    /// still finish passes the slack guard of `deadline::place`.
    #[test]
    fn no_plan_action_fails_the_slack_guard() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let buckets = AgeBuckets::new(0.1);
        let nb = buckets.len();
        for case in 0..12 {
            let restart = case % 3;
            let work = rng.random_range(5..15);
            let steps = work + restart + rng.random_range(0..8);
            let p = SpellProblem {
                work,
                steps,
                restart,
                spot_ratio: rng.random_range(0.1..0.9),
                buckets: buckets.clone(),
                loss_per_h: (0..nb).map(|_| rng.random_range(0.0..5.0)).collect(),
                return_per_h: (0..nb).map(|_| rng.random_range(0.0..5.0)).collect(),
                move_p: if case % 2 == 0 { 0.0 } else { 0.5 },
            };
            let plan = SpellPlan::solve(&p);
            for t in 0..steps {
                for pr in 0..=t.min(work - 1) {
                    for (run, r_left) in [
                        (Running::Wait, 0),
                        (Running::OnDemand(0), 0),
                        (Running::Spot(0), 0),
                        (Running::Spot(1), 1),
                    ] {
                        let current = match run {
                            Running::Wait => Placement::Wait,
                            Running::OnDemand(_) => Placement::OnDemand,
                            Running::Spot(_) => Placement::Spot(0),
                        };
                        let view = DeadlineView {
                            work_left_h: f64::from(work - pr) * 0.1,
                            time_left_h: f64::from(steps - t) * 0.1,
                            restart_h: f64::from(restart) * 0.1,
                            step_h: 0.1,
                            current,
                            pending_restart_h: f64::from(r_left.min(restart)) * 0.1,
                        };
                        // States that can still finish: on-demand now
                        // (continuing or fresh) fits.
                        if view.slack_after(Placement::OnDemand) < -1e-9 {
                            continue;
                        }
                        for b in 1..nb {
                            for cap in [up(b), down(b)] {
                                if matches!(run, Running::Spot(_)) && !cap.up
                                    || r_left >= restart.max(1)
                                {
                                    continue; // a spot instance without capacity is gone
                                }
                                let a = plan.action(t, pr, run, cap);
                                if a != Placement::OnDemand {
                                    assert!(
                                        view.slack_after(a) >= -1e-9,
                                        "case {case} t {t} pr {pr} {run:?} {cap:?} → {a:?}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
