//! TEMPORARY: the shared actuator trait as specified in the lead's design note, until
//! `crate::io::actuate` lands on main. Replaced by `use crate::io::actuate::*` at the merge.
#![allow(dead_code)]

use crate::events::{PreemptionCommand, ScalingCommand};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Transient,
    Permanent,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ActuateError {
    pub retry: Retry,
    pub message: String,
}

impl ActuateError {
    pub fn transient(msg: impl Into<String>) -> Self {
        ActuateError {
            retry: Retry::Transient,
            message: msg.into(),
        }
    }
    pub fn permanent(msg: impl Into<String>) -> Self {
        ActuateError {
            retry: Retry::Permanent,
            message: msg.into(),
        }
    }
}

#[allow(async_fn_in_trait)]
pub trait Actuator: Send {
    fn kind(&self) -> &'static str;
    async fn check(&mut self) -> Result<(), ActuateError>;
    fn manages(&self, environment: &str) -> bool;
    async fn apply_scaling(&mut self, cmd: &ScalingCommand, dry_run: bool)
        -> Result<(), ActuateError>;
    async fn apply_preemption(
        &mut self,
        cmd: &PreemptionCommand,
        dry_run: bool,
    ) -> Result<(), ActuateError>;
    async fn reconcile(&mut self, last: &ScalingCommand, dry_run: bool)
        -> Result<bool, ActuateError>;
}
