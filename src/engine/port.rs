//! The engine's port to a capacity planner: one request, one answer, one
//! trait. The engine owns them and names no planner type, so any planner can
//! implement the port (`planner::CostAwarePlanner` does, and the tests'
//! stand-ins) and the engine depends on none of them; the wiring picks one.

use crate::events::{InstanceAllocation, Millis};
use crate::forecast::Forecast;
use crate::policy::OverBudget;
use crate::pricing::{Catalog, PriceBook};
use crate::state::EnvSummary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the planner is asked on each tick for one environment.
#[derive(Debug)]
pub struct PlanRequest<'a> {
    pub compute_environment: &'a str,
    pub now: Millis,
    pub bucket_ms: i64,
    pub forecast: &'a Forecast,
    /// Jobs submitted and not completed in this environment.
    pub outstanding: &'a EnvSummary,
    pub book: &'a PriceBook,
    pub catalog: &'a Catalog,
    /// USD/h the environment's budgets can still sustain (None: no budget applies).
    pub budget_headroom_usd_per_h: Option<f64>,
    /// What the previous tick decided.
    pub previous: Option<PreviousPlan>,
    /// Spot risk learned from spot signals (None before the first).
    pub spot_risk: Option<&'a crate::pricing::spot_risk::SpotRiskBook>,
}

/// What the previous tick decided, for the scale-in cool-down. The engine
/// keeps it per environment (and checkpoints it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreviousPlan {
    pub desired_vcpus: i64,
    /// When `desired_vcpus` was last raised (event time).
    pub raised_at: Millis,
}

/// The planner's answer (becomes a `ScalingCommand` when it changed).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanDecision {
    pub min_vcpus: i64,
    pub desired_vcpus: i64,
    pub max_vcpus: i64,
    pub instance_mix: Vec<InstanceAllocation>,
    pub constraints: BTreeMap<String, String>,
    pub reason: String,
    /// Expected cost of a vCPU-hour on this plan (prices new jobs' budget commitments).
    pub usd_per_vcpu_hour: f64,
}

/// Capacity planning strategy; pure and deterministic.
pub trait CapacityPlanner: Send + Sync {
    fn plan(&self, req: &PlanRequest<'_>) -> PlanDecision;

    /// [`CapacityPlanner::plan`], and until when (exclusive) the planner
    /// promises the same decision for every request equal to `req` but for
    /// a later `now`: the time is the one input the engine cannot compare,
    /// as the planner alone knows what it reads of it. The engine reuses
    /// the decision of a busy environment whose inputs are all equal to the
    /// last plan's (see `engine::memo`) until then. Default: `req.now`, no
    /// promise.
    fn plan_until(&self, req: &PlanRequest<'_>) -> (PlanDecision, Millis) {
        (self.plan(req), req.now)
    }

    /// What happens to a submission that would overrun its budget in `env`
    /// (the user policy of the environment, when the planner has one).
    fn over_budget(&self, _env: &str) -> OverBudget {
        OverBudget::Queue
    }

    /// How many plans built their inputs afresh and how many reused those of
    /// an earlier plan, for planners that keep such a cache (benchmarks print
    /// it); (0, 0) otherwise.
    fn offers_built_and_reused(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Whether `req` is *idle* for this planner: [`CapacityPlanner::plan`]
    /// answers every idle request of the environment with one and the same
    /// decision, whatever the time, the prices and the previous plan's
    /// `raised_at`. The engine then reuses the decision of one idle tick for
    /// the idle ticks after it instead of planning each again (only while
    /// no budget is set: the ledger reads the plan's rate), so a stretch
    /// where the forecaster still sees past work but forecasts nothing
    /// costs a forecast per tick, not a plan (see `Engine::plans_reused`).
    /// Default: never idle.
    fn is_idle(&self, _req: &PlanRequest<'_>) -> bool {
        false
    }
}
