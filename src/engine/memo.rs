//! Decisions reused instead of planned again, each reuse backed by a proof
//! that planning would give the same decision:
//!
//! - **Idle** environments (nothing outstanding, nothing forecast): the
//!   planner promises every idle request of an environment one and the
//!   same decision ([`CapacityPlanner::is_idle`]), whatever the time and
//!   prices. After a burst the forecaster still sees it for a history
//!   window of ticks, most of them forecasting nothing; those ticks cost a
//!   forecast, not a plan.
//! - **Busy** environments whose every plan input equals the last plan's
//!   ([`PlanMemo::kept_for`], one comparison per field of [`PlanRequest`]),
//!   at a time before the one until which the planner promised the same
//!   answer for them ([`CapacityPlanner::plan_until`]): the time is the one
//!   input only the planner can judge (cool-downs, prices taking effect or
//!   turning stale).
//!
//! Derived state: not checkpointed (a restored engine plans again first).

use super::{CapacityPlanner, PlanDecision, PlanRequest, PreviousPlan};
use crate::events::Millis;
use crate::forecast::Forecast;
use crate::pricing::book::BookStamp;
use crate::state::EnvSummary;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct PlanMemo {
    /// Per environment, the decision of an idle tick, when the planner
    /// promised every idle tick the same.
    idle: BTreeMap<String, PlanDecision>,
    /// Per environment, its last plan and what it was planned from.
    busy: BTreeMap<String, Kept>,
    /// Decisions taken from `idle` instead of planning.
    pub(super) idle_reused: u64,
    /// Decisions taken from `busy` instead of planning.
    pub(super) busy_reused: u64,
}

/// A plan and every input it was planned from, but those the engine never
/// changes (its name, bucket width and catalogue) and the time.
struct Kept {
    forecast: Arc<Forecast>,
    outstanding: EnvSummary,
    book: BookStamp,
    headroom_bits: Option<u64>,
    previous: Option<PreviousPlan>,
    /// The planner's promise: the same decision before this time.
    until: Millis,
    decision: PlanDecision,
}

impl PlanMemo {
    /// The planner's decision for `req` (whose forecast is `forecast`), or
    /// the one a proof above says it would give again. Budgets exclude the
    /// idle reuse (the ledger reads the plan's rate, and the idle promise
    /// does not cover the headroom); the busy reuse compares the headroom.
    pub(super) fn plan_or_reuse(
        &mut self,
        planner: &dyn CapacityPlanner,
        budgets: bool,
        req: &PlanRequest<'_>,
        forecast: &Arc<Forecast>,
    ) -> Cow<'_, PlanDecision> {
        let env = req.compute_environment;
        let idle = !budgets && planner.is_idle(req);
        if idle && self.idle.contains_key(env) {
            self.idle_reused += 1;
            return Cow::Borrowed(&self.idle[env]);
        }
        if self.kept_for(req, forecast) {
            self.busy_reused += 1;
            return Cow::Borrowed(&self.busy[env].decision);
        }
        let (d, until) = planner.plan_until(req);
        if idle && d.desired_vcpus == 0 {
            self.idle.insert(env.to_string(), d.clone());
        }
        let kept = Kept {
            forecast: Arc::clone(forecast),
            outstanding: req.outstanding.clone(),
            book: req.book.stamp(),
            headroom_bits: req.budget_headroom_usd_per_h.map(f64::to_bits),
            previous: req.previous,
            until,
            decision: d,
        };
        match self.busy.get_mut(env) {
            Some(slot) => *slot = kept,
            None => {
                self.busy.insert(env.to_string(), kept);
            }
        }
        Cow::Borrowed(&self.busy[env].decision)
    }

    /// Whether the environment's kept plan answers `req`: every field of
    /// the request equal to what it was planned from, and the time before
    /// the planner's promise. Written as one destructuring, so a field
    /// added to [`PlanRequest`] does not compile until it is judged here.
    fn kept_for(&self, req: &PlanRequest<'_>, forecast: &Arc<Forecast>) -> bool {
        let PlanRequest {
            compute_environment,
            now,
            // The engine's configuration and catalogue: never replaced.
            bucket_ms: _,
            catalog: _,
            // Compared below as `forecast` (the same `Arc`, or equal values).
            forecast: _,
            outstanding,
            book,
            budget_headroom_usd_per_h,
            previous,
            spot_risk,
        } = req;
        // Learned spot risk changes at every tick: never the same input.
        if spot_risk.is_some() {
            return false;
        }
        let Some(k) = self.busy.get(*compute_environment) else {
            return false;
        };
        *now < k.until
            && k.book == book.stamp()
            && k.previous == *previous
            && k.headroom_bits == budget_headroom_usd_per_h.map(f64::to_bits)
            && k.outstanding == **outstanding
            && (Arc::ptr_eq(&k.forecast, forecast) || *k.forecast == **forecast)
    }
}
