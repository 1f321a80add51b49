//! Actuators: apply prescale's commands to real compute environments.
//!
//! Every actuator (EC2 Auto Scaling, AWS Batch, Slurm, a state file) is one
//! implementation of [`Actuator`]; the Kafka runtime around it ([`run`]) is
//! written once, so consuming, de-duplication, ordering, retries, dead
//! letters and reconciliation behave the same whatever the target is.
//!
//! - [`Actuator`]: what one kind of target does with one command.
//! - [`Ledger`]: the last applied command per environment, persisted before
//!   the Kafka offset is committed, so a restarted actuator never applies a
//!   command twice nor an older one after a newer one.
//! - [`run`]: the `tokio::select!` loop over command messages, the
//!   reconcile timer and the shutdown channel.
//! - [`file`]: an actuator that keeps each environment's desired state in a
//!   JSON file, for tooling prescale has no actuator for (and the runtime's
//!   own tests).

pub mod file;
mod ledger;
mod runtime;

pub use ledger::{Ledger, LedgerError, Verdict};
pub use runtime::{run, ActuateConfig, RunError, RunSummary};

use crate::events::{PreemptionCommand, ScalingCommand};

/// Whether an error is worth retrying.
///
/// `Transient`: throttling, a 5xx, a timeout, a node still booting — the same
/// call may succeed later. `Permanent`: the command cannot be applied as it
/// is (unknown environment, an invalid size); retrying would only delay the
/// commands behind it, so it goes to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Transient,
    Permanent,
}

/// An actuator's error, carrying whether to retry.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ActuateError {
    pub retry: Retry,
    pub message: String,
}

impl ActuateError {
    pub fn transient(message: impl Into<String>) -> Self {
        ActuateError {
            retry: Retry::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        ActuateError {
            retry: Retry::Permanent,
            message: message.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }
}

/// What one actuator does to one kind of compute resource.
///
/// The runtime calls these one at a time (never concurrently), in command
/// order, after it has dropped duplicates and stale commands with the
/// [`Ledger`]. `dry_run` means: log the exact calls that would be made (one
/// line each, with the command id) and change nothing.
#[allow(async_fn_in_trait)]
pub trait Actuator: Send {
    /// Short name for logs, metrics and the default consumer group: "asg",
    /// "batch", "slurm", "file".
    fn kind(&self) -> &'static str;

    /// Start-up check that every mapped environment's resources exist, with
    /// an error naming the missing one.
    async fn check(&mut self) -> Result<(), ActuateError>;

    /// Whether this actuator maps `environment` (commands for others are
    /// dead-lettered: a command nobody applies must be visible).
    fn manages(&self, environment: &str) -> bool;

    /// Apply one scaling command (min / desired / max vCPUs, instance mix).
    async fn apply_scaling(
        &mut self,
        cmd: &ScalingCommand,
        dry_run: bool,
    ) -> Result<(), ActuateError>;

    /// Apply one preemption command (QUEUE / PREEMPT / MIGRATE / RESUME).
    async fn apply_preemption(
        &mut self,
        cmd: &PreemptionCommand,
        dry_run: bool,
    ) -> Result<(), ActuateError>;

    /// Compare the resource as it is now with `last`, the last command
    /// applied to its environment, and re-apply what drifted (someone changed
    /// it by hand). `Ok(true)` when something was re-applied.
    async fn reconcile(
        &mut self,
        last: &ScalingCommand,
        dry_run: bool,
    ) -> Result<bool, ActuateError>;
}
