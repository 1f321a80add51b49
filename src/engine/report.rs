//! What one decision tick did, returned by the engine to whoever asked
//! ([`super::Engine::handle_reporting`]): the Kafka service's observer turns
//! it into prediction-store points and metrics. The adapters read what the
//! engine did instead of watching it from outside.

use crate::events::{BudgetScope, Millis};
use crate::forecast::Forecast;
use std::ops::Range;

/// One decision tick.
#[derive(Debug, Clone, PartialEq)]
pub struct TickReport {
    /// Event time of the tick (the end of the bucket it closed).
    pub at: Millis,
    /// The forecast each environment's plan used, in decision order.
    pub forecasts: Vec<TickForecast>,
    /// What the planner answered for each environment, in decision order.
    pub plans: Vec<TickPlan>,
    /// Commands the tick issued, as positions in the caller's command
    /// vector; the budget actions (QUEUE, PREEMPT, RESUME, MIGRATE) first.
    pub commands: Range<usize>,
    /// How many of `commands` are budget actions.
    pub budget_actions: usize,
    /// Every budget account after the tick (empty when no budget is set).
    pub budgets: Vec<BudgetLine>,
}

/// The forecast of one environment at a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct TickForecast {
    pub compute_environment: String,
    /// Where the forecast starts: the end of the history it was made from.
    pub origin: Millis,
    /// The model that made it (`Forecaster::name`).
    pub model: String,
    pub forecast: Forecast,
}

/// The plan of one environment at a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct TickPlan {
    pub compute_environment: String,
    pub min_vcpus: i64,
    pub desired_vcpus: i64,
    pub max_vcpus: i64,
    pub usd_per_vcpu_hour: f64,
    /// Position of the scaling command it became in the caller's command
    /// vector; None when the decision was unchanged (nothing published).
    pub command: Option<usize>,
}

/// One budget account as the tick left it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetLine {
    pub scope: BudgetScope,
    pub id: String,
    pub allocated: f64,
    pub committed: f64,
    pub spent: f64,
}
