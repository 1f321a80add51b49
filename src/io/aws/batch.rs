//! `prescale actuate batch`: AWS Batch managed compute environments.
//!
//! Batch buys one market per managed compute environment, so each prescale environment maps to
//! a spot and an on-demand compute environment (CE) and the job queue that feeds them. A scaling
//! command splits its min / desired / max vCPUs between the two CEs in the proportion of its
//! instance mix ([`plan`]) and becomes one `UpdateComputeEnvironment` per CE (plus the instance
//! types of that market, where the CE's allocation strategy allows an update), one
//! `UpdateJobQueue` when the preferred market changes, and a `TagResource` per CE recording the
//! command id. Preemption commands act on jobs: `TerminateJob` with a reason naming the command.

use super::config::{resource_name, BatchTarget, InstanceVcpus, Mapping};
use super::{classify, market_vcpus, tags, ActuateError, Actuator};
use crate::events::{Market, PreemptionAction, PreemptionCommand, ScalingCommand};
use aws_sdk_batch::types::{
    ComputeEnvironmentDetail, ComputeEnvironmentOrder, ComputeResourceUpdate, CrAllocationStrategy,
};
use aws_sdk_batch::Client;
use std::collections::{BTreeMap, HashMap};

/// What prescale reads of one compute environment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CeView {
    pub name: String,
    pub arn: String,
    pub min: i32,
    pub desired: i32,
    pub max: i32,
    pub instance_types: Vec<String>,
    /// Whether `instanceTypes` may be updated in place: every allocation strategy but BEST_FIT
    /// (the default when none is set) allows it.
    pub types_updatable: bool,
}

impl CeView {
    fn from_sdk(d: &ComputeEnvironmentDetail) -> CeView {
        let r = d.compute_resources();
        let strategy = r.and_then(|r| r.allocation_strategy());
        CeView {
            name: d.compute_environment_name().unwrap_or_default().to_string(),
            arn: d.compute_environment_arn().unwrap_or_default().to_string(),
            min: r.and_then(|r| r.minv_cpus()).unwrap_or(0),
            desired: r.and_then(|r| r.desiredv_cpus()).unwrap_or(0),
            max: r.and_then(|r| r.maxv_cpus()).unwrap_or(0),
            instance_types: r.map(|r| r.instance_types().to_vec()).unwrap_or_default(),
            types_updatable: !matches!(strategy, None | Some(CrAllocationStrategy::BestFit)),
        }
    }
}

/// The sizes one compute environment gets.
#[derive(Debug, Clone, PartialEq)]
pub struct CePlan {
    pub min: i32,
    pub desired: i32,
    pub max: i32,
    /// New instance types (None: leave them).
    pub instance_types: Option<Vec<String>>,
}

/// What one command asks of an environment's two compute environments and its queue.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    pub spot: CePlan,
    pub on_demand: CePlan,
    /// The market whose CE the queue should try first (None: leave the order).
    pub preferred: Option<Market>,
}

fn vcpus_i32(v: i64) -> i32 {
    v.clamp(0, i64::from(i32::MAX)) as i32
}

/// Split the command between the spot and on-demand CEs in the proportion of its instance mix
/// (a command without a mix goes to on-demand, which cannot be interrupted). Each size is split
/// so the two parts add up to the command's figure exactly. A command without a ceiling
/// (`max_vcpus` 0) keeps each CE's own maximum, raised to the desired size when below it.
pub fn plan(
    cmd: &ScalingCommand,
    spot: &CeView,
    on_demand: &CeView,
    vcpus: &InstanceVcpus,
) -> Result<BatchPlan, ActuateError> {
    if cmd.min_vcpus < 0 || cmd.desired_vcpus < 0 || cmd.max_vcpus < 0 {
        return Err(ActuateError::permanent(format!(
            "command {}: negative size (min {}, desired {}, max {})",
            cmd.command_id, cmd.min_vcpus, cmd.desired_vcpus, cmd.max_vcpus
        )));
    }
    let split = market_vcpus(cmd, vcpus)?;
    let f = if split.total() > 0.0 {
        split.spot / split.total()
    } else {
        0.0
    };
    let part = |x: i64| {
        let s = (x as f64 * f).round() as i64;
        (vcpus_i32(s), vcpus_i32(x - s))
    };
    let (smin, omin) = part(cmd.min_vcpus);
    let (sdes, odes) = part(cmd.desired_vcpus.max(cmd.min_vcpus));
    let (smax, omax) = if cmd.max_vcpus == 0 {
        (spot.max, on_demand.max)
    } else {
        part(cmd.max_vcpus.max(cmd.desired_vcpus).max(cmd.min_vcpus))
    };
    let types = |m: Market, ce: &CeView| -> Option<Vec<String>> {
        let mut v: Vec<String> = Vec::new();
        for a in cmd.instance_mix.iter().filter(|a| match m {
            Market::Spot => a.market == Market::Spot,
            _ => a.market != Market::Spot,
        }) {
            if !v.contains(&a.instance_type) {
                v.push(a.instance_type.clone());
            }
        }
        (ce.types_updatable && !v.is_empty()).then_some(v)
    };
    let ce = |min: i32, desired: i32, max: i32, t| CePlan {
        min,
        desired: desired.max(min),
        max: max.max(desired).max(min),
        instance_types: t,
    };
    Ok(BatchPlan {
        spot: ce(smin, sdes, smax, types(Market::Spot, spot)),
        on_demand: ce(omin, odes, omax, types(Market::OnDemand, on_demand)),
        preferred: (split.total() > 0.0).then_some(if split.spot >= split.on_demand {
            Market::Spot
        } else {
            Market::OnDemand
        }),
    })
}

impl CePlan {
    /// Drift check: min and max only. Batch itself moves `desiredvCpus` between them with the
    /// queue's demand, so a desired figure that differs is Batch at work, not drift.
    fn matches(&self, ce: &CeView) -> bool {
        ce.min == self.min
            && ce.max == self.max
            && self
                .instance_types
                .as_ref()
                .is_none_or(|t| *t == ce.instance_types)
    }
}

/// Applies scaling and preemption commands to AWS Batch.
pub struct BatchActuator {
    client: Client,
    targets: BTreeMap<String, BatchTarget>,
    vcpus: InstanceVcpus,
}

impl BatchActuator {
    pub fn new(sdk: &aws_config::SdkConfig, mapping: &Mapping) -> BatchActuator {
        BatchActuator {
            client: Client::new(sdk),
            targets: mapping.batch.clone(),
            vcpus: InstanceVcpus::new(&mapping.instance_vcpus),
        }
    }

    fn target(&self, env: &str, command_id: &str) -> Result<BatchTarget, ActuateError> {
        self.targets.get(env).cloned().ok_or_else(|| {
            ActuateError::permanent(format!(
                "command {command_id}: environment `{env}` has no [batch.{env}] in the mapping file"
            ))
        })
    }

    async fn describe_ces(
        &self,
        names: &[String],
        command_id: &str,
    ) -> Result<Vec<CeView>, ActuateError> {
        let mut out = Vec::new();
        for chunk in names.chunks(100) {
            tracing::info!(command_id, call = "DescribeComputeEnvironments", compute_environments = ?chunk, "aws call");
            let r = self
                .client
                .describe_compute_environments()
                .set_compute_environments(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| classify("DescribeComputeEnvironments", &chunk.join(","), &e))?;
            out.extend(r.compute_environments().iter().map(CeView::from_sdk));
        }
        Ok(out)
    }

    /// The environment's (spot, on-demand) CEs as Batch describes them now.
    async fn ces(
        &self,
        t: &BatchTarget,
        env: &str,
        command_id: &str,
    ) -> Result<(CeView, CeView), ActuateError> {
        let names = [
            t.spot_compute_environment.clone(),
            t.on_demand_compute_environment.clone(),
        ];
        let found = self.describe_ces(&names, command_id).await?;
        let pick = |want: &str| {
            found
                .iter()
                .find(|c| c.name == resource_name(want) || c.arn == want)
                .cloned()
                .ok_or_else(|| {
                    ActuateError::permanent(format!(
                        "command {command_id}: compute environment `{want}` (environment {env}) does not exist"
                    ))
                })
        };
        Ok((
            pick(&t.spot_compute_environment)?,
            pick(&t.on_demand_compute_environment)?,
        ))
    }

    async fn update_ce(
        &self,
        cmd: &ScalingCommand,
        ce: &CeView,
        p: &CePlan,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        let id = cmd.command_id.as_str();
        tracing::info!(
            command_id = id, call = "UpdateComputeEnvironment", compute_environment = %ce.name,
            min_vcpus = p.min, desired_vcpus = p.desired, max_vcpus = p.max,
            instance_types = ?p.instance_types, dry_run, "aws call"
        );
        if !dry_run {
            self.client
                .update_compute_environment()
                .compute_environment(&ce.name)
                .compute_resources(
                    ComputeResourceUpdate::builder()
                        .minv_cpus(p.min)
                        .desiredv_cpus(p.desired)
                        .maxv_cpus(p.max)
                        .set_instance_types(p.instance_types.clone())
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify("UpdateComputeEnvironment", &ce.name, &e))?;
        }
        tracing::info!(command_id = id, call = "TagResource", resource = %ce.arn, dry_run, "aws call");
        if !dry_run {
            self.client
                .tag_resource()
                .resource_arn(&ce.arn)
                .tags(tags::LAST_COMMAND_ID, &cmd.command_id)
                .tags(tags::LAST_ISSUED_AT, cmd.issued_at.to_string())
                .tags(tags::MANAGED_BY, "prescale")
                .send()
                .await
                .map_err(|e| classify("TagResource", &ce.arn, &e))?;
        }
        Ok(())
    }

    /// Put the preferred market's CE first in the queue, when it is not already.
    async fn order_queue(
        &self,
        cmd: &ScalingCommand,
        t: &BatchTarget,
        first: &CeView,
        second: &CeView,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        let id = cmd.command_id.as_str();
        tracing::info!(command_id = id, call = "DescribeJobQueues", job_queue = %t.job_queue, "aws call");
        let r = self
            .client
            .describe_job_queues()
            .job_queues(&t.job_queue)
            .send()
            .await
            .map_err(|e| classify("DescribeJobQueues", &t.job_queue, &e))?;
        let q = r.job_queues().first().ok_or_else(|| {
            ActuateError::permanent(format!(
                "command {id}: job queue `{}` does not exist",
                t.job_queue
            ))
        })?;
        let mut order: Vec<&ComputeEnvironmentOrder> =
            q.compute_environment_order().iter().collect();
        order.sort_by_key(|o| o.order());
        let now_first = order
            .first()
            .and_then(|o| o.compute_environment())
            .map(resource_name);
        if now_first == Some(first.name.as_str()) {
            return Ok(());
        }
        tracing::info!(
            command_id = id, call = "UpdateJobQueue", job_queue = %t.job_queue,
            order = ?[&first.name, &second.name], dry_run, "aws call"
        );
        if !dry_run {
            let entry = |n: i32, ce: &CeView| {
                ComputeEnvironmentOrder::builder()
                    .order(n)
                    .compute_environment(&ce.arn)
                    .build()
            };
            self.client
                .update_job_queue()
                .job_queue(&t.job_queue)
                .compute_environment_order(entry(1, first))
                .compute_environment_order(entry(2, second))
                .send()
                .await
                .map_err(|e| classify("UpdateJobQueue", &t.job_queue, &e))?;
        }
        Ok(())
    }

    async fn write(
        &self,
        cmd: &ScalingCommand,
        t: &BatchTarget,
        spot: &CeView,
        od: &CeView,
        p: &BatchPlan,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        // Shrink before growing, so the two CEs never hold more than either command asked for.
        let spot_first = p.spot.desired <= spot.desired;
        let both = [(spot, &p.spot), (od, &p.on_demand)];
        let ordered = if spot_first {
            [both[0], both[1]]
        } else {
            [both[1], both[0]]
        };
        for (ce, cp) in ordered {
            self.update_ce(cmd, ce, cp, dry_run).await?;
        }
        match p.preferred {
            Some(Market::Spot) => self.order_queue(cmd, t, spot, od, dry_run).await,
            Some(_) => self.order_queue(cmd, t, od, spot, dry_run).await,
            None => Ok(()),
        }
    }

    async fn terminate(&self, cmd: &PreemptionCommand, dry_run: bool) -> Result<(), ActuateError> {
        let reason = format!(
            "prescale {:?} command {}: {}",
            cmd.action, cmd.command_id, cmd.reason
        );
        tracing::info!(command_id = %cmd.command_id, call = "TerminateJob", job_id = %cmd.job_id, reason = %reason, dry_run, "aws call");
        if !dry_run {
            self.client
                .terminate_job()
                .job_id(&cmd.job_id)
                .reason(reason)
                .send()
                .await
                .map_err(|e| classify("TerminateJob", &cmd.job_id, &e))?;
        }
        Ok(())
    }

    /// Submit a copy of the job (same name, queue, definition, parameters and tags) through its
    /// definition: Batch cannot restart a stopped job, so resuming means submitting it again.
    async fn resubmit(
        &self,
        cmd: &PreemptionCommand,
        t: &BatchTarget,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        let id = cmd.command_id.as_str();
        tracing::info!(command_id = id, call = "DescribeJobs", job_id = %cmd.job_id, "aws call");
        let r = self
            .client
            .describe_jobs()
            .jobs(&cmd.job_id)
            .send()
            .await
            .map_err(|e| classify("DescribeJobs", &cmd.job_id, &e))?;
        let job = r.jobs().first().ok_or_else(|| {
            ActuateError::permanent(format!(
                "command {id}: job {} not found (Batch keeps finished jobs for about 7 days)",
                cmd.job_id
            ))
        })?;
        let definition = job.job_definition().unwrap_or_default().to_string();
        let name = job.job_name().unwrap_or("prescale-resumed").to_string();
        let queue = job
            .job_queue()
            .map(str::to_string)
            .unwrap_or_else(|| t.job_queue.clone());
        let mut job_tags: HashMap<String, String> = job.tags().cloned().unwrap_or_default();
        job_tags.insert("prescale:resumed-from".into(), cmd.job_id.clone());
        job_tags.insert(tags::LAST_COMMAND_ID.into(), cmd.command_id.clone());
        tracing::info!(command_id = id, call = "SubmitJob", job_name = %name, job_queue = %queue, job_definition = %definition, dry_run, "aws call");
        if !dry_run {
            self.client
                .submit_job()
                .job_name(name)
                .job_queue(queue)
                .job_definition(definition)
                .set_parameters(job.parameters().cloned())
                .set_tags(Some(job_tags))
                .send()
                .await
                .map_err(|e| classify("SubmitJob", &cmd.job_id, &e))?;
        }
        Ok(())
    }
}

impl Actuator for BatchActuator {
    fn kind(&self) -> &'static str {
        "batch"
    }

    async fn check(&mut self) -> Result<(), ActuateError> {
        let mut missing = Vec::new();
        let names: Vec<String> = self
            .targets
            .values()
            .flat_map(|t| {
                [
                    t.spot_compute_environment.clone(),
                    t.on_demand_compute_environment.clone(),
                ]
            })
            .collect();
        let found = self.describe_ces(&names, "-").await?;
        for (env, t) in &self.targets {
            for ce in [
                &t.spot_compute_environment,
                &t.on_demand_compute_environment,
            ] {
                if !found
                    .iter()
                    .any(|c| c.name == resource_name(ce) || c.arn == *ce)
                {
                    missing.push(format!("compute environment {ce} (environment {env})"));
                }
            }
            tracing::info!(command_id = "-", call = "DescribeJobQueues", job_queue = %t.job_queue, "aws call");
            let q = self
                .client
                .describe_job_queues()
                .job_queues(&t.job_queue)
                .send()
                .await
                .map_err(|e| classify("DescribeJobQueues", &t.job_queue, &e))?;
            if q.job_queues().is_empty() {
                missing.push(format!("job queue {} (environment {env})", t.job_queue));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ActuateError::permanent(format!(
                "not found: {}",
                missing.join(", ")
            )))
        }
    }

    fn manages(&self, environment: &str) -> bool {
        self.targets.contains_key(environment)
    }

    async fn apply_scaling(
        &mut self,
        cmd: &ScalingCommand,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        let t = self.target(&cmd.compute_environment, &cmd.command_id)?;
        let (spot, od) = self
            .ces(&t, &cmd.compute_environment, &cmd.command_id)
            .await?;
        let p = plan(cmd, &spot, &od, &self.vcpus)?;
        self.write(cmd, &t, &spot, &od, &p, dry_run).await
    }

    /// PREEMPT: `TerminateJob`. MIGRATE: `TerminateJob`, then the job is submitted again to its
    /// queue, whose order now puts the preferred market first. RESUME: the job is submitted again
    /// through its definition. QUEUE: Batch has no hold for a queued job; acknowledged with a log
    /// line (the job stays in its queue, which is what QUEUE asks).
    async fn apply_preemption(
        &mut self,
        cmd: &PreemptionCommand,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        let t = self.target(&cmd.compute_environment, &cmd.command_id)?;
        match cmd.action {
            PreemptionAction::Preempt => self.terminate(cmd, dry_run).await,
            PreemptionAction::Migrate => {
                self.terminate(cmd, dry_run).await?;
                self.resubmit(cmd, &t, dry_run).await
            }
            PreemptionAction::Resume => self.resubmit(cmd, &t, dry_run).await,
            PreemptionAction::Queue => {
                tracing::info!(command_id = %cmd.command_id, job_id = %cmd.job_id, "QUEUE: the job stays queued (no call made)");
                Ok(())
            }
        }
    }

    async fn reconcile(
        &mut self,
        last: &ScalingCommand,
        dry_run: bool,
    ) -> Result<bool, ActuateError> {
        let t = self.target(&last.compute_environment, &last.command_id)?;
        let (spot, od) = self
            .ces(&t, &last.compute_environment, &last.command_id)
            .await?;
        let p = plan(last, &spot, &od, &self.vcpus)?;
        if p.spot.matches(&spot) && p.on_demand.matches(&od) {
            return Ok(false);
        }
        tracing::warn!(
            command_id = %last.command_id, environment = %last.compute_environment,
            spot = ?(spot.min, spot.max), on_demand = ?(od.min, od.max),
            want_spot = ?(p.spot.min, p.spot.max), want_on_demand = ?(p.on_demand.min, p.on_demand.max),
            "drift: compute environments differ from the last command; re-applying"
        );
        self.write(last, &t, &spot, &od, &p, dry_run).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::InstanceAllocation;

    fn cmd(min: i64, desired: i64, max: i64, mix: &[(&str, Market, i32)]) -> ScalingCommand {
        ScalingCommand {
            command_id: "c".into(),
            issued_at: 1,
            compute_environment: "ce".into(),
            min_vcpus: min,
            desired_vcpus: desired,
            max_vcpus: max,
            instance_mix: mix
                .iter()
                .map(|(t, m, n)| InstanceAllocation {
                    instance_type: t.to_string(),
                    market: *m,
                    region: "us-east-1".into(),
                    count: *n,
                })
                .collect(),
            constraints: Default::default(),
            forecast: vec![],
            reason: String::new(),
        }
    }

    fn ce(max: i32, updatable: bool) -> CeView {
        CeView {
            max,
            types_updatable: updatable,
            ..Default::default()
        }
    }

    #[test]
    fn splits_by_the_mix_and_adds_up_exactly() {
        let v = InstanceVcpus::new(&Default::default());
        // 12 spot vCPUs (6 x m5.large), 4 on-demand (1 x m5.xlarge): 75 % spot.
        let c = cmd(
            3,
            17,
            101,
            &[
                ("m5.large", Market::Spot, 6),
                ("m5.xlarge", Market::OnDemand, 1),
            ],
        );
        let p = plan(&c, &ce(0, true), &ce(0, false), &v).unwrap();
        assert_eq!(p.spot.min + p.on_demand.min, 3);
        assert_eq!(p.spot.desired + p.on_demand.desired, 17);
        assert_eq!(p.spot.max + p.on_demand.max, 101);
        assert_eq!((p.spot.desired, p.on_demand.desired), (13, 4));
        assert_eq!(p.spot.instance_types, Some(vec!["m5.large".to_string()]));
        assert_eq!(
            p.on_demand.instance_types, None,
            "BEST_FIT CE keeps its types"
        );
        assert_eq!(p.preferred, Some(Market::Spot));
    }

    #[test]
    fn no_mix_goes_on_demand_and_no_ceiling_keeps_each_max() {
        let v = InstanceVcpus::new(&Default::default());
        let p = plan(&cmd(2, 40, 0, &[]), &ce(16, true), &ce(32, true), &v).unwrap();
        assert_eq!((p.spot.min, p.spot.desired, p.spot.max), (0, 0, 16));
        assert_eq!(
            (p.on_demand.min, p.on_demand.desired, p.on_demand.max),
            (2, 40, 40)
        );
        assert_eq!(p.preferred, None);
    }
}
