//! `prescale actuate asg`: one EC2 Auto Scaling group per prescale environment.
//!
//! A scaling command becomes one `UpdateAutoScalingGroup` (MinSize / DesiredCapacity / MaxSize,
//! and, when the command names an instance mix, the `MixedInstancesPolicy` overrides and
//! instances distribution), then one `CreateOrUpdateTags` recording the command id on the group.
//! The mapping from command to sizes is [`plan`], a pure function of the command and what
//! `DescribeAutoScalingGroups` said, so the same code applies a command and checks for drift.

use super::config::{AsgTarget, InstanceVcpus, Mapping};
use super::{classify, market_vcpus, tags, ActuateError, Actuator};
use crate::events::{PreemptionCommand, ScalingCommand};
use aws_sdk_autoscaling::types::{
    AutoScalingGroup, InstancesDistribution, LaunchTemplate, LaunchTemplateOverrides,
    LaunchTemplateSpecification, MixedInstancesPolicy, Tag,
};
use aws_sdk_autoscaling::Client;
use std::collections::BTreeMap;

/// The spot allocation strategy prescale asks for: AWS's recommended default, which picks the
/// lowest-priced pools among those least likely to be interrupted.
pub const SPOT_ALLOCATION_STRATEGY: &str = "price-capacity-optimized";

/// AWS accepts at most this many launch template overrides per group.
const MAX_OVERRIDES: usize = 40;

/// What prescale reads of a group (a plain copy of the parts of `AutoScalingGroup` it uses).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupView {
    pub name: String,
    pub min: i32,
    pub desired: i32,
    pub max: i32,
    /// Launch template of the group or of its mixed instances policy (None: launch configuration).
    pub launch_template: Option<LaunchTemplateSpecification>,
    /// (instance type, weighted capacity) of the mixed instances policy's overrides.
    pub overrides: Vec<(String, Option<String>)>,
    pub on_demand_base: Option<i32>,
    pub on_demand_pct_above_base: Option<i32>,
    pub spot_strategy: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl GroupView {
    fn from_sdk(g: &AutoScalingGroup) -> GroupView {
        let mip = g.mixed_instances_policy();
        let lt = mip.and_then(|m| m.launch_template());
        let dist = mip.and_then(|m| m.instances_distribution());
        GroupView {
            name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
            min: g.min_size().unwrap_or(0),
            desired: g.desired_capacity().unwrap_or(0),
            max: g.max_size().unwrap_or(0),
            launch_template: lt
                .and_then(|l| l.launch_template_specification())
                .or(g.launch_template())
                .cloned(),
            overrides: lt
                .map(|l| {
                    l.overrides()
                        .iter()
                        .map(|o| {
                            (
                                o.instance_type().unwrap_or_default().to_string(),
                                o.weighted_capacity().map(str::to_string),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            on_demand_base: dist.and_then(|d| d.on_demand_base_capacity()),
            on_demand_pct_above_base: dist
                .and_then(|d| d.on_demand_percentage_above_base_capacity()),
            spot_strategy: dist
                .and_then(|d| d.spot_allocation_strategy())
                .map(str::to_string),
            tags: g
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
        }
    }
}

/// What one command asks of one group, in the group's capacity units.
#[derive(Debug, Clone, PartialEq)]
pub struct AsgPlan {
    pub min: i32,
    pub desired: i32,
    pub max: i32,
    /// New instance mix (None: leave the group's mix as it is).
    pub mix: Option<MixPlan>,
}

/// Overrides and distribution from the command's instance mix.
#[derive(Debug, Clone, PartialEq)]
pub struct MixPlan {
    /// (instance type, weighted capacity), cheapest first as the command lists them.
    pub overrides: Vec<(String, String)>,
    pub on_demand_base: i32,
    pub on_demand_pct_above_base: i32,
}

/// vCPUs one capacity unit of the group stands for.
///
/// Weighted groups (prescale writes `WeightedCapacity` = the type's vCPUs / `vcpus_per_unit`,
/// default 1) count units of vCPUs; a group without weights counts instances, so one unit is
/// its instance type's vCPUs. `vcpus_per_unit` in the mapping file overrides both.
fn vcpus_per_unit(
    target: &AsgTarget,
    group: &GroupView,
    writes_weights: bool,
    vcpus: &InstanceVcpus,
) -> Result<f64, String> {
    if let Some(v) = target.vcpus_per_unit {
        return Ok(v);
    }
    if writes_weights {
        return Ok(1.0);
    }
    for (ty, w) in &group.overrides {
        if let (Some(w), Some(v)) = (
            w.as_deref().and_then(|w| w.parse::<f64>().ok()),
            vcpus.get(ty),
        ) {
            if w > 0.0 {
                return Ok(v / w);
            }
        }
    }
    let types: Vec<&str> = group.overrides.iter().map(|(t, _)| t.as_str()).collect();
    if let [only] = types.as_slice() {
        if let Some(v) = vcpus.get(only) {
            return Ok(v);
        }
    }
    Err(format!(
        "cannot tell how many vCPUs one unit of group {} stands for (no instance weights, instance types {types:?}); set vcpus_per_unit for it in the mapping file",
        group.name
    ))
}

fn units(vcpus: i64, per_unit: f64) -> i32 {
    let u = (vcpus.max(0) as f64 / per_unit).ceil();
    u.min(i32::MAX as f64) as i32
}

/// The sizes and mix one command asks of one group. Pure: what the group looks like now only
/// supplies its unit and, for a command without a ceiling (`max_vcpus` 0), its own maximum.
pub fn plan(
    cmd: &ScalingCommand,
    target: &AsgTarget,
    group: &GroupView,
    vcpus: &InstanceVcpus,
) -> Result<AsgPlan, ActuateError> {
    let writes_weights = !cmd.instance_mix.is_empty();
    let per_unit = vcpus_per_unit(target, group, writes_weights, vcpus)
        .map_err(|e| ActuateError::permanent(format!("command {}: {e}", cmd.command_id)))?;
    if cmd.min_vcpus < 0 || cmd.desired_vcpus < 0 || cmd.max_vcpus < 0 {
        return Err(ActuateError::permanent(format!(
            "command {}: negative size (min {}, desired {}, max {})",
            cmd.command_id, cmd.min_vcpus, cmd.desired_vcpus, cmd.max_vcpus
        )));
    }
    let min = units(cmd.min_vcpus, per_unit);
    let desired = units(cmd.desired_vcpus, per_unit).max(min);
    let max = if cmd.max_vcpus == 0 {
        group.max
    } else {
        units(cmd.max_vcpus, per_unit)
    }
    .max(desired);
    let mix = if writes_weights {
        Some(mix_plan(cmd, per_unit, min, vcpus)?)
    } else {
        None
    };
    Ok(AsgPlan {
        min,
        desired,
        max,
        mix,
    })
}

/// Overrides weighted by vCPUs, and the on-demand share as base + percentage above base: the
/// on-demand part of the mix up to MinSize is the base (the floor is bought where it cannot be
/// interrupted), the rest of the on-demand part is a percentage of what lies above the base.
/// At DesiredCapacity = the mix's size this buys exactly the mix's on-demand vCPUs.
fn mix_plan(
    cmd: &ScalingCommand,
    per_unit: f64,
    min_units: i32,
    vcpus: &InstanceVcpus,
) -> Result<MixPlan, ActuateError> {
    let split = market_vcpus(cmd, vcpus)?;
    let mut overrides: Vec<(String, String)> = Vec::new();
    for a in &cmd.instance_mix {
        if overrides.iter().any(|(t, _)| *t == a.instance_type) {
            continue;
        }
        let v = vcpus.get(&a.instance_type).unwrap_or(1.0);
        let w = ((v / per_unit).round() as i64).clamp(1, 999);
        overrides.push((a.instance_type.clone(), w.to_string()));
    }
    overrides.truncate(MAX_OVERRIDES);
    let od = (split.on_demand / per_unit).round() as i64;
    let total = (split.total() / per_unit).round() as i64;
    let base = od.min(i64::from(min_units));
    let pct = if total > base {
        ((100 * (od - base)) as f64 / (total - base) as f64).round() as i32
    } else {
        100
    };
    Ok(MixPlan {
        overrides,
        on_demand_base: base as i32,
        on_demand_pct_above_base: pct.clamp(0, 100),
    })
}

impl AsgPlan {
    /// Whether the group already is what this plan asks for.
    pub fn matches(&self, g: &GroupView) -> bool {
        let sizes = (g.min, g.desired, g.max) == (self.min, self.desired, self.max);
        let mix = match &self.mix {
            None => true,
            Some(m) => {
                let have: Vec<(String, String)> = g
                    .overrides
                    .iter()
                    .map(|(t, w)| (t.clone(), w.clone().unwrap_or_default()))
                    .collect();
                have == m.overrides
                    && g.on_demand_base == Some(m.on_demand_base)
                    && g.on_demand_pct_above_base == Some(m.on_demand_pct_above_base)
                    && g.spot_strategy.as_deref() == Some(SPOT_ALLOCATION_STRATEGY)
            }
        };
        sizes && mix
    }
}

/// Applies scaling commands to Auto Scaling groups.
pub struct AsgActuator {
    client: Client,
    targets: BTreeMap<String, AsgTarget>,
    vcpus: InstanceVcpus,
}

impl AsgActuator {
    pub fn new(sdk: &aws_config::SdkConfig, mapping: &Mapping) -> AsgActuator {
        AsgActuator {
            client: Client::new(sdk),
            targets: mapping.asg.clone(),
            vcpus: InstanceVcpus::new(&mapping.instance_vcpus),
        }
    }

    fn target(&self, env: &str, command_id: &str) -> Result<&AsgTarget, ActuateError> {
        self.targets.get(env).ok_or_else(|| {
            ActuateError::permanent(format!(
                "command {command_id}: environment `{env}` has no [asg.{env}] in the mapping file"
            ))
        })
    }

    async fn describe(
        &self,
        names: &[String],
        command_id: &str,
    ) -> Result<Vec<GroupView>, ActuateError> {
        let mut out = Vec::new();
        // DescribeAutoScalingGroups takes at most 100 names per call.
        for chunk in names.chunks(100) {
            tracing::info!(command_id, call = "DescribeAutoScalingGroups", groups = ?chunk, "aws call");
            let r = self
                .client
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(chunk.to_vec()))
                .max_records(100)
                .send()
                .await
                .map_err(|e| classify("DescribeAutoScalingGroups", &chunk.join(","), &e))?;
            out.extend(r.auto_scaling_groups().iter().map(GroupView::from_sdk));
        }
        Ok(out)
    }

    async fn group(
        &self,
        target: &AsgTarget,
        env: &str,
        command_id: &str,
    ) -> Result<GroupView, ActuateError> {
        self.describe(std::slice::from_ref(&target.group), command_id)
            .await?
            .into_iter()
            .find(|g| g.name == target.group)
            .ok_or_else(|| {
                ActuateError::permanent(format!(
                    "command {command_id}: Auto Scaling group `{}` (environment {env}) does not exist",
                    target.group
                ))
            })
    }

    /// One `UpdateAutoScalingGroup` and one `CreateOrUpdateTags` (each logged with the command id).
    async fn write(
        &self,
        cmd: &ScalingCommand,
        group: &GroupView,
        p: &AsgPlan,
        dry_run: bool,
    ) -> Result<(), ActuateError> {
        let id = cmd.command_id.as_str();
        let mut req = self
            .client
            .update_auto_scaling_group()
            .auto_scaling_group_name(&group.name)
            .min_size(p.min)
            .desired_capacity(p.desired)
            .max_size(p.max);
        let mix = match (&p.mix, &group.launch_template) {
            (Some(m), Some(lt)) => {
                req = req.mixed_instances_policy(mixed_policy(m, lt));
                Some(m)
            }
            (Some(_), None) => {
                tracing::warn!(command_id = id, group = %group.name, "group has no launch template (launch configuration?); instance mix not applied, sizes are");
                None
            }
            (None, _) => None,
        };
        tracing::info!(
            command_id = id, call = "UpdateAutoScalingGroup", group = %group.name,
            min = p.min, desired = p.desired, max = p.max,
            overrides = ?mix.map(|m| &m.overrides),
            on_demand_base = mix.map(|m| m.on_demand_base),
            on_demand_pct_above_base = mix.map(|m| m.on_demand_pct_above_base),
            dry_run, "aws call"
        );
        if !dry_run {
            req.send()
                .await
                .map_err(|e| classify("UpdateAutoScalingGroup", &group.name, &e))?;
        }
        let tag = |k: &str, v: String| {
            Tag::builder()
                .resource_id(&group.name)
                .resource_type("auto-scaling-group")
                .key(k)
                .value(v)
                .propagate_at_launch(false)
                .build()
        };
        tracing::info!(command_id = id, call = "CreateOrUpdateTags", group = %group.name, dry_run, "aws call");
        if !dry_run {
            self.client
                .create_or_update_tags()
                .tags(tag(tags::LAST_COMMAND_ID, cmd.command_id.clone()))
                .tags(tag(tags::LAST_ISSUED_AT, cmd.issued_at.to_string()))
                .tags(tag(tags::MANAGED_BY, "prescale".into()))
                .send()
                .await
                .map_err(|e| classify("CreateOrUpdateTags", &group.name, &e))?;
        }
        Ok(())
    }
}

/// The launch template by id or by name, not both: `DescribeAutoScalingGroups` returns both,
/// and `UpdateAutoScalingGroup` refuses a specification that has both.
fn template_ref(lt: &LaunchTemplateSpecification) -> LaunchTemplateSpecification {
    let b = LaunchTemplateSpecification::builder().set_version(lt.version().map(str::to_string));
    match lt.launch_template_id() {
        Some(id) => b.launch_template_id(id),
        None => b.set_launch_template_name(lt.launch_template_name().map(str::to_string)),
    }
    .build()
}

fn mixed_policy(m: &MixPlan, lt: &LaunchTemplateSpecification) -> MixedInstancesPolicy {
    let overrides: Vec<LaunchTemplateOverrides> = m
        .overrides
        .iter()
        .map(|(t, w)| {
            LaunchTemplateOverrides::builder()
                .instance_type(t)
                .weighted_capacity(w)
                .build()
        })
        .collect();
    MixedInstancesPolicy::builder()
        .launch_template(
            LaunchTemplate::builder()
                .launch_template_specification(template_ref(lt))
                .set_overrides(Some(overrides))
                .build(),
        )
        .instances_distribution(
            InstancesDistribution::builder()
                .on_demand_base_capacity(m.on_demand_base)
                .on_demand_percentage_above_base_capacity(m.on_demand_pct_above_base)
                .spot_allocation_strategy(SPOT_ALLOCATION_STRATEGY)
                .build(),
        )
        .build()
}

impl Actuator for AsgActuator {
    fn kind(&self) -> &'static str {
        "asg"
    }

    async fn check(&mut self) -> Result<(), ActuateError> {
        let names: Vec<String> = self.targets.values().map(|t| t.group.clone()).collect();
        let found = self.describe(&names, "-").await?;
        let missing: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| !found.iter().any(|g| g.name == t.group))
            .map(|(env, t)| format!("{} (environment {env})", t.group))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ActuateError::permanent(format!(
                "Auto Scaling group(s) not found: {}",
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
        let target = self
            .target(&cmd.compute_environment, &cmd.command_id)?
            .clone();
        let group = self
            .group(&target, &cmd.compute_environment, &cmd.command_id)
            .await?;
        let p = plan(cmd, &target, &group, &self.vcpus)?;
        self.write(cmd, &group, &p, dry_run).await
    }

    /// An Auto Scaling group runs no jobs prescale can address, so preemption commands are
    /// acknowledged with a log line (the scheduler on top of the group acts on them).
    async fn apply_preemption(
        &mut self,
        cmd: &PreemptionCommand,
        _dry_run: bool,
    ) -> Result<(), ActuateError> {
        self.target(&cmd.compute_environment, &cmd.command_id)?;
        tracing::info!(
            command_id = %cmd.command_id, job_id = %cmd.job_id, action = ?cmd.action,
            environment = %cmd.compute_environment,
            "preemption command acknowledged; an Auto Scaling group has no job API (no call made)"
        );
        Ok(())
    }

    async fn reconcile(
        &mut self,
        last: &ScalingCommand,
        dry_run: bool,
    ) -> Result<bool, ActuateError> {
        let target = self
            .target(&last.compute_environment, &last.command_id)?
            .clone();
        let group = self
            .group(&target, &last.compute_environment, &last.command_id)
            .await?;
        let p = plan(last, &target, &group, &self.vcpus)?;
        if p.matches(&group) {
            return Ok(false);
        }
        tracing::warn!(
            command_id = %last.command_id, group = %group.name,
            have = ?(group.min, group.desired, group.max), want = ?(p.min, p.desired, p.max),
            "drift: group differs from the last command; re-applying"
        );
        self.write(last, &group, &p, dry_run).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{InstanceAllocation, Market};

    fn cmd(min: i64, desired: i64, max: i64, mix: &[(&str, Market, i32)]) -> ScalingCommand {
        ScalingCommand {
            command_id: "c1".into(),
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

    fn target() -> AsgTarget {
        AsgTarget {
            group: "g".into(),
            vcpus_per_unit: None,
        }
    }

    #[test]
    fn weighted_mix_is_in_vcpus_with_on_demand_base_up_to_min() {
        let v = InstanceVcpus::new(&Default::default());
        // 2 x m5.xlarge (4 vCPU) on demand + 6 x m5.large (2 vCPU) spot = 8 OD + 12 spot.
        let c = cmd(
            4,
            20,
            64,
            &[
                ("m5.large", Market::Spot, 6),
                ("m5.xlarge", Market::OnDemand, 2),
            ],
        );
        let p = plan(&c, &target(), &GroupView::default(), &v).unwrap();
        assert_eq!((p.min, p.desired, p.max), (4, 20, 64));
        let m = p.mix.unwrap();
        assert_eq!(
            m.overrides,
            vec![
                ("m5.large".into(), "2".into()),
                ("m5.xlarge".into(), "4".into())
            ]
        );
        // base = min(8, 4) = 4; above base 16 units of which 4 on demand = 25 %.
        assert_eq!((m.on_demand_base, m.on_demand_pct_above_base), (4, 25));
        // At desired 20: 4 + 25 % of 16 = 8 on-demand vCPUs, as the mix says.
    }

    #[test]
    fn unweighted_group_counts_instances_and_keeps_its_max_without_ceiling() {
        let v = InstanceVcpus::new(&Default::default());
        let g = GroupView {
            max: 3,
            overrides: vec![("m5.xlarge".into(), None)],
            ..Default::default()
        };
        let p = plan(&cmd(3, 9, 0, &[]), &target(), &g, &v).unwrap();
        // 4 vCPUs per instance: min ceil(3/4) = 1, desired ceil(9/4) = 3, max stays 3.
        assert_eq!((p.min, p.desired, p.max, p.mix.is_none()), (1, 3, 3, true));
        let p = plan(&cmd(0, 17, 0, &[]), &target(), &g, &v).unwrap();
        assert_eq!(p.max, 5, "max raised to desired");
    }

    #[test]
    fn unknowns_are_permanent_errors_naming_what() {
        let v = InstanceVcpus::new(&Default::default());
        let e = plan(&cmd(0, 1, 2, &[]), &target(), &GroupView::default(), &v).unwrap_err();
        assert!(e.message.contains("vcpus_per_unit"), "{}", e.message);
        let e = plan(
            &cmd(0, 1, 2, &[("zz.huge", Market::Spot, 1)]),
            &target(),
            &GroupView::default(),
            &v,
        )
        .unwrap_err();
        assert!(e.message.contains("zz.huge"), "{}", e.message);
        assert_eq!(e.retry, super::super::Retry::Permanent);
    }
}
