//! One environment's plan at one tick, over offers already priced: the
//! steps of [`plan_priced`], each a function of its own. The `reason` text is
//! written step by step, in this order, and is part of the command (and of
//! its identity in the backtest's byte-for-byte checks), so each step
//! appends to it exactly as it always has.

use super::RankedChoice;
use super::{
    quantile_value, rank_offers, ChosenPool, InstanceRequest, Offer, PlanInput, PlanOutput,
};
use crate::events::{InstanceAllocation, Market, Millis, QuantileValue};
use crate::policy::{EnvPolicy, PriorityClass};
use std::collections::BTreeMap;
use std::fmt::Write as _;

fn fmt_num(x: f64) -> String {
    format!("{x:.1}")
}

/// [`super::plan_with_offers`] over offers whose interruption rates are
/// already set: borrowed, so offers shared by several environments in one
/// tick ([`super::OffersCache`]) are not copied per environment.
pub(super) fn plan_priced(input: &PlanInput<'_>, offers: &[Offer]) -> PlanOutput {
    plan_priced_until(input, offers).0
}

/// [`plan_priced`], and until when (exclusive) its own steps answer an
/// input equal to `input` but for a later time the same (see
/// [`cool_down_steady_until`]; the offers' own dependence on time is the
/// caller's).
pub(super) fn plan_priced_until(input: &PlanInput<'_>, offers: &[Offer]) -> (PlanOutput, Millis) {
    let p = input.policy;
    let (class, q) = priority_quantile(input);
    let mut reason = String::new();
    let _ = write!(
        reason,
        "{}: {} priority{} -> q{:.2}",
        input.env,
        class.as_str(),
        if input.deadline_pressure {
            " (deadline pressure)"
        } else {
            ""
        },
        q
    );

    // 1. Demand over the provisioning lead time.
    let lead = lead_time_demand(input, q, &mut reason);
    let mut desired = lead.desired;

    // 2. Scale-in cool-down.
    let steady_until = cool_down_steady_until(input, lead.desired);
    desired = cool_down(input, desired, &mut reason);

    // 3. Reserved capacity (already paid) and floors.
    let reserved_v = reserved_vcpus(offers);
    let mut min = p
        .min_vcpus
        .max(lead.low_floor.floor() as i64)
        .max(reserved_v as i64);
    if let Some(cap) = p.max_vcpus {
        if desired > cap {
            let _ = write!(reason, "; capped by max_vcpus {cap}");
            desired = cap;
        }
    }
    desired = desired.max(p.min_vcpus);

    // 4. Instance mix within the hourly spend cap.
    let hourly_cap = match (p.max_usd_per_hour, input.budget_headroom_usd_per_h) {
        (Some(a), Some(b)) => Some(a.min(b).max(0.0)),
        (a, b) => a.or(b.map(|x| x.max(0.0))),
    };
    let mix = choose_mix(input, offers, desired, reserved_v, hourly_cap, &mut reason);
    desired = mix.desired;
    let bought = describe_mix(mix.chosen.as_ref(), desired, &mut reason);
    let usd_per_vcpu_hour = vcpu_hour_rate(mix.chosen.as_ref(), bought.expected_usd_h, offers);

    // 5. Ceiling: only where the user asked for one (policy `max_vcpus`) or
    // a budget limits the spend rate; 0 means none. A ceiling derived from
    // the forecast alone would turn every forecast miss (a wide gang job
    // arriving between ticks) into queueing the deadline may not survive.
    let mut ceiling: Option<i64> = p.max_vcpus;
    if let (Some(cap), Some(u)) = (hourly_cap, mix.unit_list) {
        if u > 0.0 {
            let b = (reserved_v + cap / u).floor() as i64;
            ceiling = Some(ceiling.map_or(b, |c| c.min(b)));
        }
    }
    let max = ceiling.map_or(0, |c| c.max(desired));
    min = min.min(desired);
    let _ = write!(reason, " => min {min} desired {desired} max {max}");

    let out = PlanOutput {
        min_vcpus: min,
        desired_vcpus: desired,
        max_vcpus: max,
        instance_mix: bought.instance_mix,
        constraints: constraints(p, hourly_cap, class),
        quantile_used: q,
        forecast_used: lead.forecast_used,
        usd_per_hour: bought.usd_h,
        expected_usd_per_hour: bought.expected_usd_h,
        usd_per_vcpu_hour,
        reason,
    };
    (out, steady_until)
}

/// The priority class of the pending work (deadline pressure counts as
/// high) and the forecast quantile the policy provisions at for it.
fn priority_quantile(input: &PlanInput<'_>) -> (PriorityClass, f64) {
    let p = input.policy;
    let class = if input.deadline_pressure {
        PriorityClass::High
    } else {
        input
            .top_priority
            .map(|pr| p.class_of(pr))
            .unwrap_or(PriorityClass::Normal)
    };
    (class, p.quantile_for(class))
}

/// What step 1 finds: demand over the provisioning lead time.
struct LeadDemand {
    /// Peak of the provisioning quantile, or the running work, plus the queue.
    desired: i64,
    /// The lowest forecast quantile's least value over the lead time.
    low_floor: f64,
    /// Peak of each forecast quantile over the lead time.
    forecast_used: Vec<QuantileValue>,
}

/// The forecast steps within the provisioning lead time.
fn lead_steps(p: &EnvPolicy, bucket_ms: i64, forecast_steps: usize) -> usize {
    let lead_ms = p.lead_time_s.max(0) * 1000;
    if bucket_ms > 0 {
        ((lead_ms + bucket_ms - 1) / bucket_ms).max(1) as usize
    } else {
        1
    }
    .min(forecast_steps)
}

/// Whether step 1 finds nothing to provision for work of normal priority
/// (nothing outstanding): the forecast has a step within the lead time, and
/// the provisioning quantile is exactly `+0.0` at each such step (the
/// reason prints the peak). See `CostAwarePlanner::is_idle`.
pub(super) fn nothing_forecast(
    p: &EnvPolicy,
    bucket_ms: i64,
    f: &crate::forecast::Forecast,
) -> bool {
    let h = lead_steps(p, bucket_ms, f.values.len());
    let q = p.quantile_for(PriorityClass::Normal);
    h > 0
        && f.values[..h]
            .iter()
            .all(|row| quantile_value(&f.quantiles, row, q).to_bits() == 0)
}

fn lead_time_demand(input: &PlanInput<'_>, q: f64, reason: &mut String) -> LeadDemand {
    let p = input.policy;
    let f = input.forecast;
    let h = lead_steps(p, input.bucket_ms, f.values.len());
    let window = &f.values[..h];
    let peak_q = window
        .iter()
        .map(|row| quantile_value(&f.quantiles, row, q))
        .fold(0.0f64, f64::max);
    let low_floor = window
        .iter()
        .map(|row| row.first().copied().unwrap_or(0.0))
        .fold(f64::INFINITY, f64::min);
    let low_floor = if low_floor.is_finite() {
        low_floor
    } else {
        0.0
    };
    let forecast_used: Vec<QuantileValue> = f
        .quantiles
        .iter()
        .enumerate()
        .map(|(i, &ql)| QuantileValue {
            quantile: ql,
            vcpus: window
                .iter()
                .map(|row| row.get(i).copied().unwrap_or(0.0))
                .fold(0.0f64, f64::max),
        })
        .collect();
    if h == 0 {
        reason.push_str("; no forecast, following running work");
    } else {
        let _ = write!(
            reason,
            "; forecast peak {} vCPU over {} s",
            fmt_num(peak_q),
            p.lead_time_s
        );
    }
    let base = peak_q.max(input.running_vcpus.max(0.0)) + input.queued_vcpus.max(0.0);
    let _ = write!(
        reason,
        "; running {} + queued {}",
        fmt_num(input.running_vcpus),
        fmt_num(input.queued_vcpus)
    );
    LeadDemand {
        desired: base.ceil().max(0.0) as i64,
        low_floor,
        forecast_used,
    }
}

/// Step 2: no scale-in within the cool-down after the last raise.
fn cool_down(input: &PlanInput<'_>, desired: i64, reason: &mut String) -> i64 {
    let p = input.policy;
    if let Some(prev) = input.previous {
        if prev.desired_vcpus > desired && input.now - prev.raised_at < p.scale_in_cooldown_s * 1000
        {
            let _ = write!(
                reason,
                "; held at {} (scale-in cool-down {} s, raised {} s ago)",
                prev.desired_vcpus,
                p.scale_in_cooldown_s,
                (input.now - prev.raised_at) / 1000
            );
            return prev.desired_vcpus;
        }
    }
    desired
}

/// Until when (exclusive) [`cool_down`] answers an input equal to `input`
/// but for a later time as it answers `input`, given the lead-time demand
/// `desired` it holds back (which does not depend on the time). It holds
/// only a demand below the previous plan's, and only inside the cool-down:
/// past it, or for a demand not below, time cannot change its answer. A
/// hold names the seconds since the raise in the reason: no later time.
pub(super) fn cool_down_steady_until(input: &PlanInput<'_>, desired: i64) -> Millis {
    let Some(prev) = input.previous else {
        return Millis::MAX;
    };
    let end = prev
        .raised_at
        .saturating_add(input.policy.scale_in_cooldown_s.saturating_mul(1000));
    if input.now >= end || desired >= prev.desired_vcpus {
        Millis::MAX
    } else {
        input.now
    }
}

/// vCPUs of reserved capacity among the offers (already paid for).
fn reserved_vcpus(offers: &[Offer]) -> f64 {
    offers
        .iter()
        .filter(|o| o.market == Market::Reserved)
        .map(|o| o.vcpus * o.available.unwrap_or(0).max(0) as f64)
        .sum()
}

/// What step 4 chose.
struct MixChoice {
    chosen: Option<RankedChoice>,
    /// `desired`, lowered to what the spend cap affords.
    desired: i64,
    /// List cost per non-reserved vCPU-hour of the unconstrained mix: how
    /// far a dollar of headroom goes.
    unit_list: Option<f64>,
}

/// Step 4: the cheapest mix for `desired`; when it costs more than the
/// hourly cap, the most vCPUs the cap affords (from what a dollar buys in
/// the unconstrained mix, then 10 % less at a time until a mix fits).
fn choose_mix(
    input: &PlanInput<'_>,
    offers: &[Offer],
    desired: i64,
    reserved_v: f64,
    hourly_cap: Option<f64>,
    reason: &mut String,
) -> MixChoice {
    let solve = |v: i64, cap: Option<f64>| rank_offers(&request(input, v, cap), offers, input.now);
    let uncapped = solve(desired, None).into_iter().next();
    let unit_list = uncapped.as_ref().and_then(|c| {
        let paid_v: f64 = c
            .pools
            .iter()
            .filter(|p| p.market != Market::Reserved)
            .map(|p| p.count as f64 * vcpus_of(offers, p))
            .sum();
        (paid_v > 0.0).then(|| c.usd_per_hour / paid_v)
    });
    let mut choice = MixChoice {
        chosen: uncapped.clone(),
        desired,
        unit_list,
    };
    let Some(cap) = hourly_cap.filter(|&cap| {
        uncapped
            .as_ref()
            .is_some_and(|c| c.usd_per_hour > cap + 1e-9)
    }) else {
        return choice;
    };
    let mut v = match unit_list {
        Some(u) if u > 0.0 => (reserved_v + cap / u).floor() as i64,
        _ => reserved_v as i64,
    }
    .min(desired);
    choice.chosen = None;
    for _ in 0..12 {
        if let Some(c) = solve(v, Some(cap)).into_iter().next() {
            choice.chosen = Some(c);
            break;
        }
        if v == 0 {
            break;
        }
        v = (v as f64 * 0.9).floor() as i64;
    }
    let _ = write!(
        reason,
        "; budget caps spend at ${}/h -> desired {} instead of {}",
        fmt_num(cap),
        v,
        desired
    );
    choice.desired = v;
    choice
}

/// The instance request for `v` vCPUs under the environment's policy.
fn request(input: &PlanInput<'_>, v: i64, cap: Option<f64>) -> InstanceRequest {
    let p = input.policy;
    InstanceRequest {
        vcpus: v as f64,
        memory_mib: (v as f64 * input.memory_mib_per_vcpu.max(0.0)).ceil() as i64,
        gpus: (v as f64 * input.gpus_per_vcpu.max(0.0)).ceil() as i32,
        duration_s: Some(p.typical_job_s),
        deadline: None,
        max_usd_per_hour: cap,
        max_usd_per_job: None,
        markets: p.markets.clone(),
        regions: p.regions.clone(),
        providers: p.providers.clone(),
        instance_types: p.instance_types.clone(),
        fleet: true,
        restart_overhead_s: p.restart_overhead_s,
        max_spot_pool_share: p.max_spot_pool_share,
        alternatives: 0,
        architectures: p.architectures.clone(),
        exclude_burstable: p.exclude_burstable,
        ..InstanceRequest::default()
    }
}

/// The chosen mix as a command lists it, and what it costs.
struct Bought {
    instance_mix: Vec<InstanceAllocation>,
    usd_h: f64,
    expected_usd_h: f64,
}

/// Allocations of the chosen pools, merged per (type, market, region), and
/// the mix's part of the reason.
fn describe_mix(chosen: Option<&RankedChoice>, desired: i64, reason: &mut String) -> Bought {
    let mut instance_mix: Vec<InstanceAllocation> = Vec::new();
    let (mut usd_h, mut exp_h) = (0.0, 0.0);
    match chosen {
        Some(c) => {
            usd_h = c.usd_per_hour;
            exp_h = c.expected_usd_per_hour;
            for pool in &c.pools {
                match instance_mix.iter_mut().find(|a| {
                    a.instance_type == pool.instance_type
                        && a.market == pool.market
                        && a.region == pool.region
                }) {
                    Some(a) => a.count += pool.count as i32,
                    None => instance_mix.push(InstanceAllocation {
                        instance_type: pool.instance_type.clone(),
                        market: pool.market,
                        region: pool.region.clone(),
                        count: pool.count as i32,
                    }),
                }
            }
            if !c.pools.is_empty() {
                let mut parts: Vec<String> = Vec::new();
                for a in &instance_mix {
                    parts.push(format!(
                        "{}x {} {} {}",
                        a.count, a.instance_type, a.market, a.region
                    ));
                }
                let _ = write!(
                    reason,
                    "; mix {} at ${}/h list, ${}/h risk-adjusted",
                    parts.join(", "),
                    format_args!("{:.3}", usd_h),
                    format_args!("{:.3}", exp_h)
                );
                let stale = c.pools.iter().filter(|p| p.stale_price).count();
                if stale > 0 {
                    let _ = write!(reason, "; {stale} pool(s) on stale prices");
                }
            }
        }
        None if desired > 0 => {
            reason.push_str("; no allowed priced capacity fits: mix left to the scheduler");
        }
        None => {}
    }
    Bought {
        instance_mix,
        usd_h,
        expected_usd_h: exp_h,
    }
}

/// Expected cost of one vCPU-hour on the mix; with nothing bought, the
/// cheapest allowed on-demand rate; 0 when there is none.
fn vcpu_hour_rate(chosen: Option<&RankedChoice>, exp_h: f64, offers: &[Offer]) -> f64 {
    let mix_v = chosen.map(|c| c.vcpus).unwrap_or(0.0);
    let usd_per_vcpu_hour = if mix_v > 0.0 {
        exp_h / mix_v
    } else {
        // Nothing bought: price work at the cheapest allowed on-demand rate.
        offers
            .iter()
            .filter(|o| o.market == Market::OnDemand && o.vcpus > 0.0)
            .map(|o| o.usd_per_hour / o.vcpus)
            .fold(f64::INFINITY, f64::min)
    };
    if usd_per_vcpu_hour.is_finite() {
        usd_per_vcpu_hour
    } else {
        0.0
    }
}

/// The constraints a command carries for the actuators.
fn constraints(
    p: &EnvPolicy,
    hourly_cap: Option<f64>,
    class: PriorityClass,
) -> BTreeMap<String, String> {
    let mut constraints = BTreeMap::new();
    if let Some(j) = p.max_usd_per_job {
        constraints.insert("max_usd_per_job".to_string(), format!("{j}"));
    }
    if let Some(cap) = hourly_cap {
        constraints.insert("max_usd_per_hour".to_string(), format!("{cap:.4}"));
    }
    constraints.insert(
        "markets".to_string(),
        p.markets
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    constraints.insert(
        "serverless_burst".to_string(),
        p.serverless_burst.to_string(),
    );
    constraints.insert("priority_class".to_string(), class.as_str().to_string());
    constraints
}

fn vcpus_of(offers: &[Offer], p: &ChosenPool) -> f64 {
    offers
        .iter()
        .find(|o| {
            o.instance_type == p.instance_type && o.region == p.region && o.market == p.market
        })
        .map(|o| o.vcpus)
        .unwrap_or(0.0)
}
