//! The backtest: a discrete-event simulated cluster that replays a trace
//! under several scaling policies and reports what each would have cost.
//!
//! - [`trace`] joins submissions with completions into the jobs to replay;
//! - [`prices`] holds the instance shapes and per-pool price curves;
//! - [`cluster`] is the simulator of one compute environment (boot delay,
//!   billing, spot interruptions, packing, autoscaling, floors);
//! - [`policy`] turns each policy (`reactive`, `static`, `predictive`,
//!   `oracle`) into cluster modes; `predictive` and `oracle` run the real
//!   decision engine and apply its `ScalingCommand`s;
//! - [`peers`] are the baselines a cost-aware team would run instead
//!   (`batch_spot`, `karpenter`, `ec2_predictive`), from their public docs;
//! - [`bound`] is the physical limit of a trace's cost (`lower_bound_usd`);
//! - [`oracle`] is the forecaster that knows the future (lower-bound reference);
//! - [`report`] is the result (JSON, table, SVG plot).
//!
//! Everything here is pure and deterministic for a given seed: no clock, no
//! I/O (the CLI reads the files and writes the outputs).

pub mod bound;
pub mod budget;
pub mod cluster;
pub mod costs;
pub mod inputs;
pub mod oracle;
pub mod peers;
pub mod policy;
pub mod prices;
pub mod report;
pub mod spot_bench;
pub mod spot_market;
pub mod spot_trace;
pub mod trace;

pub use budget::BudgetBook;
pub use cluster::{Cluster, FloorCommand, Mode, RunStats, Series, SimCompletion, SpendSegment};
pub use oracle::OracleForecaster;
pub use policy::{run_backtest, BacktestInput, PolicyKind};
pub use prices::{InstanceType, PriceCurve, SimPrices};
pub use report::{BacktestReport, PolicyReport, TraceInfo};
pub use trace::{SimJob, Workload};

use crate::events::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Simulator settings. Defaults follow AWS behaviour where one is documented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Launch → ready (EC2 boot + ECS agent registration), ms.
    pub boot_delay_ms: Millis,
    /// Per-second billing with this minimum per instance (EC2 Linux: 60 s).
    pub min_billing_ms: Millis,
    /// Idle time after which an autoscaled instance is terminated.
    pub idle_timeout_ms: Millis,
    /// Default spot interruption rate, per instance-hour.
    pub spot_interruptions_per_hour: f64,
    /// Per-pool overrides, keyed `instance_type` or `instance_type/region`.
    pub spot_rate_overrides: BTreeMap<String, f64>,
    /// Reclaim spot instances when their pool's price rises above on-demand.
    pub interrupt_on_price_spike: bool,
    /// Sampling interval of the reported time series.
    pub bucket_ms: i64,
    /// Maximum capacity of an autoscaled environment (Batch `maxvCpus`).
    pub max_vcpus: Option<i64>,
    /// Static fleet size in vCPUs (default: p90 of the trace's demand).
    pub static_vcpus: Option<i64>,
    /// Spot interruptions a rigid job may suffer before it is only placed
    /// on on-demand capacity (a Batch retry strategy that falls back to an
    /// on-demand queue; without it a long rigid job can restart forever).
    /// Sooner than that, an interrupted rigid job with a deadline falls back
    /// when another loss would leave no time for a full on-demand re-run
    /// (now + 2 × its requested time past the deadline). Elastic jobs keep
    /// their progress and stay eligible for spot.
    pub spot_retries: u32,
    /// The simulation stops this long after the last trace event even if
    /// jobs are still queued or running (they count as unfinished).
    pub max_tail_ms: Millis,
    /// RNG seed (spot interruptions).
    pub seed: u64,
    /// Measured spot markets replayed as the capacity of traced spot pools
    /// (`backtest --spot-traces`); untraced pools keep the rate model.
    #[serde(skip)]
    pub spot_markets: Option<std::sync::Arc<spot_market::SpotMarkets>>,
    /// With `spot_markets`: run the engine-driven policies in closed loop
    /// and feed them the traced pools' notices and refused launches as
    /// spot signals, as a live scheduler would (`backtest --spot-signals
    /// learn`, the default); `false` runs the same closed loop without
    /// them (the constant-rate planner on the measured market).
    #[serde(skip)]
    pub spot_signals: bool,
    /// Keep the per-bucket samples ([`cluster::Series`]) the plots draw:
    /// a run without a plot skips them (on a ten-year trace they are a
    /// million samples per policy). Counts and costs do not depend on them.
    #[serde(skip, default = "yes")]
    pub record_series: bool,
}

fn yes() -> bool {
    true
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            boot_delay_ms: 120_000,
            min_billing_ms: 60_000,
            idle_timeout_ms: 600_000,
            spot_interruptions_per_hour: crate::pricing::DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR,
            spot_rate_overrides: BTreeMap::new(),
            interrupt_on_price_spike: true,
            bucket_ms: 300_000,
            max_vcpus: None,
            static_vcpus: None,
            spot_retries: 1,
            max_tail_ms: 30 * 86_400_000,
            seed: 42,
            spot_markets: None,
            spot_signals: true,
            record_series: true,
        }
    }
}

impl SimConfig {
    /// Interruption rate per hour of a spot pool.
    pub fn spot_rate(&self, instance_type: &str, region: &str) -> f64 {
        if self.spot_rate_overrides.is_empty() {
            return self.spot_interruptions_per_hour;
        }
        let k = format!("{instance_type}/{region}");
        self.spot_rate_overrides
            .get(&k)
            .or_else(|| self.spot_rate_overrides.get(instance_type))
            .copied()
            .unwrap_or(self.spot_interruptions_per_hour)
    }
}

/// Errors of the backtest's pure part.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown policy `{0}` (expected reactive, static, batch_spot, karpenter, ec2_predictive, predictive or oracle)")]
    UnknownPolicy(String),
    #[error("no instance types with on-demand prices: the catalogue is empty or has no region matching the prices")]
    NoInstanceTypes,
    #[error("the trace has no job submissions")]
    EmptyTrace,
    #[error("budgets need the engine in the loop, and this command source cannot build one")]
    ClosedLoopNeedsEngine,
}

#[cfg(test)]
mod tests;
