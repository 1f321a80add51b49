//! `prescale actuate slurm`: scaling commands → powered cloud nodes of a
//! partition; preemption commands → `scontrol requeue / hold / release`.
//!
//! Each scaling command is turned into a target: the partition's powered
//! vCPUs (nodes up or booting, static nodes included) brought to the
//! command's desired vCPUs within its min and max, a node at a time
//! ([`super::nodes::plan`]). Slurm's own power saving still resumes a node
//! for a job that has none; prescale adds the nodes a forecast says will
//! be needed before the jobs arrive, and takes idle ones down when the
//! forecast falls (the operator sets `SuspendTime=INFINITE` on managed
//! partitions so Slurm's idle timer does not undo that; docs/slurm.md).
//! Only nodes of the managed partitions are ever touched; every `scontrol`
//! call is logged with the command id; dry-run logs and changes nothing.

use super::nodes::{parse_sinfo, plan, NodeAction, Plan, Power, SinfoNode};
use super::{SlurmCommands, SlurmError};
use crate::events::{PreemptionAction, PreemptionCommand, ScalingCommand};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Which environments map to which partitions, and how to reach Slurm.
#[derive(Debug, Clone, Default)]
pub struct SlurmActuatorConfig {
    /// Compute environment → partition (managed partitions).
    pub partitions: BTreeMap<String, String>,
    /// Prefix the ingester put before Slurm job ids (stripped here).
    pub job_id_prefix: String,
    pub commands: SlurmCommands,
    /// An idle node is powered down only once it has been seen idle this
    /// long (zero: at once). With Slurm's `SuspendTime` as the grace,
    /// prescale never takes down a node Slurm's own power saving would
    /// still keep for the next job, so it only adds capacity ahead of
    /// need and never costs a job a boot that reactive scaling would not.
    pub idle_grace: Duration,
}

/// Counters the actuator reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SlurmActuatorStats {
    pub scontrol_calls: u64,
    pub powered_up: u64,
    pub powered_down: u64,
    pub failed_nodes_reported: u64,
    pub shortfall_commands: u64,
}

pub struct SlurmActuator {
    cfg: SlurmActuatorConfig,
    /// Nodes already reported unusable (reported once until they recover).
    reported: BTreeSet<String>,
    /// When each idle node was first seen idle (since it last was not).
    idle_since: BTreeMap<String, Instant>,
    pub stats: SlurmActuatorStats,
}

impl SlurmActuator {
    pub fn new(cfg: SlurmActuatorConfig) -> Self {
        SlurmActuator {
            cfg,
            reported: BTreeSet::new(),
            idle_since: BTreeMap::new(),
            stats: SlurmActuatorStats::default(),
        }
    }

    pub fn kind(&self) -> &'static str {
        "slurm"
    }

    pub fn manages(&self, environment: &str) -> bool {
        self.cfg.partitions.contains_key(environment)
    }

    fn partition(&self, environment: &str) -> Result<&str, SlurmError> {
        self.cfg
            .partitions
            .get(environment)
            .map(String::as_str)
            .ok_or_else(|| {
                SlurmError::permanent(format!(
                    "environment `{environment}` is not mapped to a Slurm partition"
                ))
            })
    }

    /// Every mapped partition exists and has nodes.
    pub async fn check(&mut self) -> Result<(), SlurmError> {
        let nodes = self.nodes().await?;
        for (env, part) in &self.cfg.partitions {
            if !nodes.iter().any(|n| n.partitions.iter().any(|p| p == part)) {
                return Err(SlurmError::permanent(format!(
                    "environment `{env}`: Slurm partition `{part}` does not exist or has no \
                     nodes (cloud nodes need PrivateData=cloud in slurm.conf to be listed)"
                )));
            }
        }
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<SinfoNode>, SlurmError> {
        let text = self.cfg.commands.run("sinfo", &["--all", "--json"]).await?;
        parse_sinfo(&text)
    }

    /// The partition's nodes and the plan for `cmd`.
    async fn plan_for(&mut self, cmd: &ScalingCommand) -> Result<(String, Plan), SlurmError> {
        let part = self.partition(&cmd.compute_environment)?.to_string();
        let nodes: Vec<SinfoNode> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.partitions.contains(&part))
            .collect();
        let recent = self.recently_busy(&nodes, Instant::now());
        let p = plan(
            &nodes,
            cmd.min_vcpus,
            cmd.desired_vcpus,
            cmd.max_vcpus,
            &recent,
        );
        self.report_unusable(&part, &p, &cmd.command_id);
        Ok((part, p))
    }

    /// Idle nodes seen idle for less than the grace (the actuator's own
    /// observations: a restart starts their clocks again, which only keeps
    /// nodes up a little longer).
    fn recently_busy(&mut self, nodes: &[SinfoNode], now: Instant) -> BTreeSet<String> {
        for n in nodes {
            if n.power() == Power::Idle {
                self.idle_since.entry(n.name.clone()).or_insert(now);
            } else {
                self.idle_since.remove(&n.name);
            }
        }
        let grace = self.cfg.idle_grace;
        nodes
            .iter()
            .filter(|n| {
                self.idle_since
                    .get(&n.name)
                    .is_some_and(|t| now.duration_since(*t) < grace)
            })
            .map(|n| n.name.clone())
            .collect()
    }

    /// A node that failed to boot (DOWN after ResumeTimeout) or was drained
    /// is reported once, and the plan works around it.
    fn report_unusable(&mut self, part: &str, p: &Plan, command_id: &str) {
        let now: BTreeSet<String> = p.unusable.iter().map(|(n, _)| n.clone()).collect();
        for (node, reason) in &p.unusable {
            if self.reported.insert(node.clone()) {
                self.stats.failed_nodes_reported += 1;
                tracing::warn!(
                    command_id,
                    partition = part,
                    node,
                    reason,
                    "node unusable (failed to boot, down or drained); planning around it"
                );
            }
        }
        self.reported.retain(|n| now.contains(n));
    }

    async fn scontrol(
        &mut self,
        args: &[String],
        command_id: &str,
        dry_run: bool,
    ) -> Result<(), SlurmError> {
        let line = format!("scontrol {}", args.join(" "));
        if dry_run {
            tracing::info!(command_id, "dry-run: would run `{line}`");
            return Ok(());
        }
        tracing::info!(command_id, "running `{line}`");
        self.stats.scontrol_calls += 1;
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cfg.commands.run("scontrol", &a).await.map(|_| ())
    }

    /// Apply the plan. A node that refuses (already changing state) does
    /// not stop the others; the first error is returned after all were
    /// tried, so the runtime retries and the next plan re-reads the nodes.
    async fn execute(
        &mut self,
        p: &Plan,
        command_id: &str,
        dry_run: bool,
    ) -> Result<(), SlurmError> {
        let mut first_err = None;
        for a in &p.actions {
            match self.scontrol(&a.scontrol_args(), command_id, dry_run).await {
                Ok(()) if !dry_run => match a {
                    NodeAction::PowerUp(_) => self.stats.powered_up += 1,
                    NodeAction::PowerDown(_) => self.stats.powered_down += 1,
                },
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(command_id, error = %e, "scontrol failed");
                    first_err.get_or_insert(SlurmError::transient(e.message));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub async fn apply_scaling(
        &mut self,
        cmd: &ScalingCommand,
        dry_run: bool,
    ) -> Result<(), SlurmError> {
        if cmd.min_vcpus < 0 || cmd.desired_vcpus < 0 || cmd.max_vcpus < 0 {
            return Err(SlurmError::permanent(format!(
                "command {}: negative capacity (min {}, desired {}, max {})",
                cmd.command_id, cmd.min_vcpus, cmd.desired_vcpus, cmd.max_vcpus
            )));
        }
        let (part, p) = self.plan_for(cmd).await?;
        tracing::info!(
            command_id = %cmd.command_id,
            partition = %part,
            min = cmd.min_vcpus,
            desired = cmd.desired_vcpus,
            max = cmd.max_vcpus,
            powered_vcpus = p.powered_vcpus,
            target_vcpus = p.target_vcpus,
            actions = p.actions.len(),
            "scaling"
        );
        if p.shortfall_vcpus > 0 {
            self.stats.shortfall_commands += 1;
            tracing::warn!(command_id = %cmd.command_id, partition = %part, shortfall_vcpus = p.shortfall_vcpus, "not enough usable nodes for the desired capacity");
        }
        self.execute(&p, &cmd.command_id, dry_run).await
    }

    /// Re-plan the last command against the nodes as they are now (a node
    /// Slurm powered down, one that failed to boot): Ok(true) when
    /// something had to be changed.
    pub async fn reconcile(
        &mut self,
        last: &ScalingCommand,
        dry_run: bool,
    ) -> Result<bool, SlurmError> {
        let (_, p) = self.plan_for(last).await?;
        if p.actions.is_empty() {
            return Ok(false);
        }
        tracing::info!(command_id = %last.command_id, actions = p.actions.len(), "reconcile: re-applying");
        self.execute(&p, &last.command_id, dry_run).await?;
        Ok(true)
    }

    /// QUEUE → hold (a pending job stays pending), PREEMPT / MIGRATE →
    /// requeue (Slurm places it again; it has no live migration), RESUME →
    /// release.
    pub async fn apply_preemption(
        &mut self,
        cmd: &PreemptionCommand,
        dry_run: bool,
    ) -> Result<(), SlurmError> {
        self.partition(&cmd.compute_environment)?;
        let id = cmd
            .job_id
            .strip_prefix(self.cfg.job_id_prefix.as_str())
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_'))
            .ok_or_else(|| {
                SlurmError::permanent(format!(
                    "command {}: job id `{}` is not a Slurm job id (prefix `{}`)",
                    cmd.command_id, cmd.job_id, self.cfg.job_id_prefix
                ))
            })?;
        let verb = match cmd.action {
            PreemptionAction::Queue => "hold",
            PreemptionAction::Preempt | PreemptionAction::Migrate => "requeue",
            PreemptionAction::Resume => "release",
        };
        let args = vec![verb.to_string(), id.to_string()];
        self.scontrol(&args, &cmd.command_id, dry_run).await
    }
}

fn actuate_error(e: SlurmError) -> crate::io::actuate::ActuateError {
    if e.transient {
        crate::io::actuate::ActuateError::transient(e.message)
    } else {
        crate::io::actuate::ActuateError::permanent(e.message)
    }
}

/// The shared runtime (`io::actuate::run`) drives the Slurm actuator.
impl crate::io::actuate::Actuator for SlurmActuator {
    fn kind(&self) -> &'static str {
        "slurm"
    }
    async fn check(&mut self) -> Result<(), crate::io::actuate::ActuateError> {
        SlurmActuator::check(self).await.map_err(actuate_error)
    }
    fn manages(&self, environment: &str) -> bool {
        SlurmActuator::manages(self, environment)
    }
    async fn apply_scaling(
        &mut self,
        cmd: &ScalingCommand,
        dry_run: bool,
    ) -> Result<(), crate::io::actuate::ActuateError> {
        SlurmActuator::apply_scaling(self, cmd, dry_run)
            .await
            .map_err(actuate_error)
    }
    async fn apply_preemption(
        &mut self,
        cmd: &PreemptionCommand,
        dry_run: bool,
    ) -> Result<(), crate::io::actuate::ActuateError> {
        SlurmActuator::apply_preemption(self, cmd, dry_run)
            .await
            .map_err(actuate_error)
    }
    async fn reconcile(
        &mut self,
        last: &ScalingCommand,
        dry_run: bool,
    ) -> Result<bool, crate::io::actuate::ActuateError> {
        SlurmActuator::reconcile(self, last, dry_run)
            .await
            .map_err(actuate_error)
    }
}
