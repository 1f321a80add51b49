//! The deadline-aware spot decision: for one piece of checkpointed work with
//! a deadline, choose at each decision point between waiting, spot (in which
//! zone) and on-demand. Pure: the caller passes what it knows now.
//!
//! Two parts, both here and in [`super::deadline_plan`]:
//!
//! 1. **The plan** ([`super::deadline_plan::SpellPlan`]): the action of
//!    least expected cost under the market the pool has shown — capacity
//!    lost and regained at hazards learned per spell age
//!    ([`super::deadline_plan::spells`]) — with the deadline as a hard
//!    constraint.
//! 2. **The placement** ([`place`]): the plan says *spot*, *on-demand* or
//!    *wait*; spot goes to the zone already running, else the available zone
//!    with the lowest hazard now; and every action passes the **slack
//!    guard** ([`DeadlineView::slack_after`]): it is allowed only if, should
//!    spot be lost right after it, on-demand started at the next decision
//!    point still finishes in time (one step of detection delay plus one
//!    restart). What fails the guard becomes on-demand, which passes once it
//!    runs — so the work is never late, whatever the market does next.
//!
//! *Slack* is the time the work can still lose: time left − work left −
//! restart overhead still to pay. Waiting, restarting and steps without
//! progress spend it. The benchmark `prescale bench spot` runs this code
//! against the policies of *Can't Be Late* (NSDI '24).

/// What runs the work (or not) over the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Wait,
    OnDemand,
    /// Spot in zone `i` of [`DeadlineView::zones`].
    Spot(usize),
}

/// One zone's spot market as seen now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZoneSpot {
    /// A spot launch would get capacity now (or the instance still runs).
    pub available: bool,
    /// The zone's loss rate now, per hour: with age-dependent hazards, one
    /// over its expected remaining up-time given the current spell's age.
    pub hazard_per_h: f64,
}

/// What the guard looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadlineView {
    pub work_left_h: f64,
    pub time_left_h: f64,
    /// Time lost each time an instance (re)starts.
    pub restart_h: f64,
    /// Time between two decisions (a loss is seen at the next one).
    pub step_h: f64,
    /// What ran over the last step (a lost spot instance is `Wait`).
    pub current: Placement,
    /// Restart overhead the current instance still has to pay.
    pub pending_restart_h: f64,
}

impl DeadlineView {
    /// Slack left after `action`, assuming the worst next step (spot lost
    /// right after it): what remains once on-demand is started at the next
    /// decision point and run to the end. Negative: the action risks the
    /// deadline.
    pub fn slack_after(&self, action: Placement) -> f64 {
        let continuing = action == self.current && action != Placement::Wait;
        // Restart overhead still to pay once this step begins.
        let overhead = match action {
            Placement::Wait => 0.0,
            _ if continuing => self.pending_restart_h,
            _ => self.restart_h,
        };
        let progress = match action {
            Placement::Wait => 0.0,
            _ => (self.step_h - overhead).max(0.0),
        };
        let work_after = (self.work_left_h - progress).max(0.0);
        let time_after = self.time_left_h - self.step_h;
        match action {
            // On-demand runs to the end: only its own overhead remains.
            Placement::OnDemand => time_after - work_after - (overhead - self.step_h).max(0.0),
            // Waiting or spot: the worst case starts on-demand next step.
            _ => time_after - work_after - self.restart_h,
        }
    }
}

/// The planner's deadline decision: the planned action placed (spot in the
/// running zone if it still has capacity, else the available zone with the
/// lowest hazard now) and checked by the slack guard; anything that
/// fails the guard, or spot with no zone available, is on-demand.
pub fn place(view: &DeadlineView, planned: Placement, zones: &[ZoneSpot]) -> Placement {
    if view.work_left_h <= 0.0 {
        return Placement::Wait;
    }
    let action = match planned {
        Placement::Spot(_) => match view.current {
            Placement::Spot(z) if zones.get(z).is_some_and(|s| s.available) => view.current,
            _ => zones
                .iter()
                .enumerate()
                .filter(|(_, s)| s.available)
                .min_by(|a, b| a.1.hazard_per_h.total_cmp(&b.1.hazard_per_h))
                .map_or(Placement::OnDemand, |(z, _)| Placement::Spot(z)),
        },
        other => other,
    };
    if action != Placement::OnDemand && view.slack_after(action) < -1e-9 {
        return Placement::OnDemand;
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(work: f64, time: f64, current: Placement) -> DeadlineView {
        DeadlineView {
            work_left_h: work,
            time_left_h: time,
            restart_h: 0.2,
            step_h: 0.1,
            current,
            pending_restart_h: 0.0,
        }
    }

    fn zone(available: bool, hazard_per_h: f64) -> ZoneSpot {
        ZoneSpot {
            available,
            hazard_per_h,
        }
    }

    #[test]
    fn spot_goes_to_the_calmer_zone_and_a_running_one_stays() {
        let z = [zone(true, 0.5), zone(true, 0.01), zone(false, 0.0)];
        let v = view(10.0, 20.0, Placement::Wait);
        assert_eq!(place(&v, Placement::Spot(0), &z), Placement::Spot(1));
        let v = view(10.0, 20.0, Placement::Spot(0));
        assert_eq!(place(&v, Placement::Spot(0), &z), Placement::Spot(0));
        let none = [zone(false, 0.1)];
        assert_eq!(place(&v, Placement::Spot(0), &none), Placement::OnDemand);
    }

    #[test]
    fn the_guard_turns_a_risky_action_into_on_demand() {
        let z = [zone(true, 0.1)];
        // Slack 0.25 h: a spot start (0.2) and, after one step (0.1), a
        // restart on on-demand (0.2) do not fit; waiting a step does not
        // either.
        let v = view(10.0, 10.25, Placement::Wait);
        assert!(v.slack_after(Placement::Spot(0)) < 0.0);
        assert_eq!(place(&v, Placement::Spot(0), &z), Placement::OnDemand);
        assert_eq!(place(&v, Placement::Wait, &z), Placement::OnDemand);
        // Slack 0.3 h: exactly fits.
        let v = view(10.0, 10.3, Placement::Wait);
        assert!(v.slack_after(Placement::Spot(0)).abs() < 1e-9);
        assert_eq!(place(&v, Placement::Spot(0), &z), Placement::Spot(0));
        // On-demand that runs keeps its slack.
        let v = view(10.0, 10.0, Placement::OnDemand);
        assert!(v.slack_after(Placement::OnDemand).abs() < 1e-9);
    }
}
