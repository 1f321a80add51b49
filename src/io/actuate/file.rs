//! An actuator that keeps each environment's desired capacity in a JSON
//! file: the hand-off point for infrastructure prescale has no actuator for
//! (a cron job, a Terraform variable file, a site's own script read it), and
//! the target the runtime's own tests read back.
//!
//! The file is rewritten atomically on every change, so a reader never sees
//! half of it; the reconcile loop puts back an environment someone edited.

use super::{ActuateError, Actuator};
use crate::events::{
    InstanceAllocation, Millis, PreemptionAction, PreemptionCommand, ScalingCommand,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// One environment's desired state, as the last command set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub command_id: String,
    pub issued_at: Millis,
    pub min_vcpus: i64,
    pub desired_vcpus: i64,
    pub max_vcpus: i64,
    pub instance_mix: Vec<InstanceAllocation>,
}

impl From<&ScalingCommand> for Desired {
    fn from(c: &ScalingCommand) -> Self {
        Desired {
            command_id: c.command_id.clone(),
            issued_at: c.issued_at,
            min_vcpus: c.min_vcpus,
            desired_vcpus: c.desired_vcpus,
            max_vcpus: c.max_vcpus,
            instance_mix: c.instance_mix.clone(),
        }
    }
}

/// A job's state as preemption commands left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub compute_environment: String,
    pub action: PreemptionAction,
    pub command_id: String,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub environments: BTreeMap<String, Desired>,
    pub jobs: BTreeMap<String, JobState>,
}

/// Settings of `prescale actuate file`.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Environments to manage; empty: all.
    pub environments: BTreeSet<String>,
}

pub struct FileActuator {
    cfg: FileConfig,
}

impl FileActuator {
    pub fn new(cfg: FileConfig) -> Self {
        FileActuator { cfg }
    }

    fn read(&self) -> Result<StateFile, ActuateError> {
        match std::fs::read_to_string(&self.cfg.path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| {
                ActuateError::permanent(format!(
                    "{}: not a state file: {e}",
                    self.cfg.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => Err(ActuateError::transient(format!(
                "{}: {e}",
                self.cfg.path.display()
            ))),
        }
    }

    fn write(&self, s: &StateFile) -> Result<(), ActuateError> {
        let io = |e: std::io::Error| {
            ActuateError::transient(format!("{}: {e}", self.cfg.path.display()))
        };
        let tmp = self.cfg.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(s).expect("state serializes");
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, &self.cfg.path).map_err(io)
    }
}

impl Actuator for FileActuator {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn check(&mut self) -> Result<(), ActuateError> {
        let dir = self.cfg.path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir {
            if !d.is_dir() {
                return Err(ActuateError::permanent(format!(
                    "state file directory {} does not exist",
                    d.display()
                )));
            }
        }
        self.read().map(|_| ())
    }

    fn manages(&self, environment: &str) -> bool {
        self.cfg.environments.is_empty() || self.cfg.environments.contains(environment)
    }

    async fn apply_scaling(
        &mut self,
        cmd: &ScalingCommand,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        let desired = Desired::from(cmd);
        tracing::info!(command_id = %cmd.command_id, environment = %cmd.compute_environment,
            min = desired.min_vcpus, desired = desired.desired_vcpus, max = desired.max_vcpus, dry_run,
            "write {}", self.cfg.path.display());
        if dry_run {
            return Ok(());
        }
        let mut s = self.read()?;
        s.environments
            .insert(cmd.compute_environment.clone(), desired);
        self.write(&s)
    }

    async fn apply_preemption(
        &mut self,
        cmd: &PreemptionCommand,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        tracing::info!(command_id = %cmd.command_id, job_id = %cmd.job_id, action = ?cmd.action, dry_run,
            "write {}", self.cfg.path.display());
        if dry_run {
            return Ok(());
        }
        let mut s = self.read()?;
        s.jobs.insert(
            cmd.job_id.clone(),
            JobState {
                compute_environment: cmd.compute_environment.clone(),
                action: cmd.action,
                command_id: cmd.command_id.clone(),
            },
        );
        self.write(&s)
    }

    async fn reconcile(
        &mut self,
        last: &ScalingCommand,
        dry_run: bool,
    ) -> Result<bool, ActuateError> {
        let s = self.read()?;
        if s.environments.get(&last.compute_environment) == Some(&Desired::from(last)) {
            return Ok(false);
        }
        self.apply_scaling(last, dry_run).await?;
        Ok(true)
    }
}
