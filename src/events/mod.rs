//! The event model: what producers publish (jobs, prices, budget allocations)
//! and what prescale publishes (scaling and preemption commands).
//!
//! Field names follow the Avro schemas in `schemas/*.avsc`; `avro` holds the
//! codec (events files, which hold recorded topics, are read and written by
//! `import::events_file`: the core does no I/O). Times are
//! milliseconds since the Unix epoch (`timestamp-millis` in Avro).

pub mod avro;
mod binary;
mod period;

pub use period::Period;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Milliseconds since the Unix epoch (event time).
pub type Millis = i64;

/// Default topic names (configurable in the service).
pub mod topics {
    pub const JOB_SUBMISSION: &str = "job-submission";
    pub const JOB_COMPLETION: &str = "job-completion";
    pub const PRICE_TICK: &str = "price-tick";
    pub const BUDGET_ALLOCATION: &str = "budget-allocation";
    /// Spot interruption warnings, rebalance recommendations and launches
    /// refused for capacity ([`super::SpotSignal`]).
    pub const SPOT_SIGNAL: &str = "spot-signal";
    pub const SCALING_COMMAND: &str = "scaling-command";
    pub const PREEMPTION_COMMAND: &str = "preemption-command";
    /// Internal: project budget use and shares between instances
    /// (`budget::share`), JSON records.
    pub const BUDGET_SPEND: &str = "prescale.budget-spend";
    /// Internal: which instance holds which environments, and where its
    /// API listens (`io::kafka::directory`), JSON records.
    pub const API_DIRECTORY: &str = "prescale.api-directory";
}

/// Where capacity is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Market {
    Spot,
    OnDemand,
    Reserved,
}

impl Market {
    pub const ALL: [Market; 3] = [Market::Spot, Market::OnDemand, Market::Reserved];

    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "SPOT",
            Market::OnDemand => "ON_DEMAND",
            Market::Reserved => "RESERVED",
        }
    }
}

impl std::fmt::Display for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Market {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "SPOT" => Ok(Market::Spot),
            "ON_DEMAND" | "ONDEMAND" => Ok(Market::OnDemand),
            "RESERVED" => Ok(Market::Reserved),
            other => Err(format!(
                "unknown market `{other}` (expected SPOT, ON_DEMAND or RESERVED)"
            )),
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Succeeded,
    Failed,
    Preempted,
    Cancelled,
}

/// A short string held inline when it fits (24 bytes: job ids, environment,
/// project and user names): decoding a job event then allocates nothing, and
/// the state frees nothing when the job completes.
pub type Text = compact_str::CompactString;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSubmitted {
    pub job_id: Text,
    pub submitted_at: Millis,
    pub compute_environment: Text,
    pub job_type: Text,
    pub project: Text,
    pub user: Text,
    /// Higher is more important.
    pub priority: i32,
    pub vcpus: f64,
    pub memory_mib: i64,
    pub gpus: i32,
    pub estimated_runtime_s: Option<i64>,
    pub budget_usd: Option<f64>,
    pub deadline: Option<Millis>,
    /// May be scaled up/down (or shrunk before preemption) while running.
    pub elasticity: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompleted {
    pub job_id: Text,
    pub compute_environment: Text,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub status: JobStatus,
    pub instance_type: Option<Text>,
    pub market: Option<Market>,
    pub region: Option<Text>,
    pub vcpu_seconds: f64,
    pub max_memory_mib: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceTick {
    pub at: Millis,
    pub provider: Text,
    pub region: Text,
    pub zone: Option<Text>,
    pub instance_type: Text,
    pub market: Market,
    pub usd_per_hour: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BudgetScope {
    Job,
    Project,
    User,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetAllocation {
    pub at: Millis,
    pub scope: BudgetScope,
    pub id: String,
    pub usd: f64,
    pub period: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceAllocation {
    pub instance_type: String,
    pub market: Market,
    pub region: String,
    pub count: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileValue {
    pub quantile: f64,
    pub vcpus: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingCommand {
    /// Deterministic from environment and tick, so actuators can apply each once.
    pub command_id: String,
    pub issued_at: Millis,
    pub compute_environment: String,
    pub min_vcpus: i64,
    pub desired_vcpus: i64,
    /// Ceiling on the environment's capacity; 0 means none (the actuator
    /// leaves the environment's own maximum as it is).
    pub max_vcpus: i64,
    pub instance_mix: Vec<InstanceAllocation>,
    pub constraints: BTreeMap<String, String>,
    pub forecast: Vec<QuantileValue>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PreemptionAction {
    Queue,
    Preempt,
    Migrate,
    Resume,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreemptionCommand {
    pub command_id: String,
    pub issued_at: Millis,
    pub job_id: String,
    pub compute_environment: String,
    pub action: PreemptionAction,
    pub reason: String,
}

/// What a [`SpotSignal`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SpotSignalKind {
    /// The two-minute notice: the instance will be reclaimed (AWS "EC2 Spot
    /// Instance Interruption Warning"; GCP preemption notice).
    InterruptionWarning,
    /// The instance is at elevated risk of interruption (AWS "EC2 Instance
    /// Rebalance Recommendation"); not every one is followed by a reclaim.
    RebalanceRecommendation,
    /// A spot launch in the pool was refused for lack of capacity
    /// (`InsufficientInstanceCapacity`, a fleet's launch error).
    CapacityUnavailable,
}

impl SpotSignalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpotSignalKind::InterruptionWarning => "INTERRUPTION_WARNING",
            SpotSignalKind::RebalanceRecommendation => "REBALANCE_RECOMMENDATION",
            SpotSignalKind::CapacityUnavailable => "CAPACITY_UNAVAILABLE",
        }
    }
}

/// Something the spot market told us about one pool (instance type in a
/// region, and zone when known). The engine learns each pool's
/// interruption hazard and launch-failure probability from these
/// (`engine::spot`, `planner::spot_risk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpotSignal {
    pub at: Millis,
    pub kind: SpotSignalKind,
    pub region: Text,
    pub zone: Option<Text>,
    pub instance_type: Text,
    /// The instance warned (interruption, rebalance), when known: a copy of
    /// a signal with an instance id is told from a new one by it.
    pub instance_id: Option<Text>,
    /// How many instances (or refused launches) the signal stands for, ≥ 1.
    pub count: i32,
}

/// An input event, as read from one of the input topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    JobSubmitted(JobSubmitted),
    JobCompleted(JobCompleted),
    PriceTick(PriceTick),
    BudgetAllocation(BudgetAllocation),
    SpotSignal(SpotSignal),
}

impl Event {
    /// Event time.
    pub fn time(&self) -> Millis {
        match self {
            Event::JobSubmitted(e) => e.submitted_at,
            Event::JobCompleted(e) => e.finished_at,
            Event::PriceTick(e) => e.at,
            Event::BudgetAllocation(e) => e.at,
            Event::SpotSignal(e) => e.at,
        }
    }

    /// The default topic this event travels on.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::JobSubmitted(_) => topics::JOB_SUBMISSION,
            Event::JobCompleted(_) => topics::JOB_COMPLETION,
            Event::PriceTick(_) => topics::PRICE_TICK,
            Event::BudgetAllocation(_) => topics::BUDGET_ALLOCATION,
            Event::SpotSignal(_) => topics::SPOT_SIGNAL,
        }
    }

    /// The Kafka key: jobs by compute environment (so one owner sees a whole
    /// environment), prices and spot signals by instance type, budgets by
    /// scope id.
    pub fn key(&self) -> &str {
        match self {
            Event::JobSubmitted(e) => &e.compute_environment,
            Event::JobCompleted(e) => &e.compute_environment,
            Event::PriceTick(e) => &e.instance_type,
            Event::BudgetAllocation(e) => &e.id,
            Event::SpotSignal(e) => &e.instance_type,
        }
    }
}

/// An output command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    Scaling(ScalingCommand),
    Preemption(PreemptionCommand),
}

impl Command {
    pub fn id(&self) -> &str {
        match self {
            Command::Scaling(c) => &c.command_id,
            Command::Preemption(c) => &c.command_id,
        }
    }
    pub fn topic(&self) -> &'static str {
        match self {
            Command::Scaling(_) => topics::SCALING_COMMAND,
            Command::Preemption(_) => topics::PREEMPTION_COMMAND,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            Command::Scaling(c) => &c.compute_environment,
            Command::Preemption(c) => &c.compute_environment,
        }
    }
}

/// A deterministic command id: the same inputs always give the same id, so a
/// restarted instance re-issues commands that actuators can de-duplicate.
pub fn command_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..12])
}
