//! The planner behind the engine's port ([`CapacityPlanner`]): the one place
//! the engine's request becomes the planner's [`PlanInput`] and its
//! [`PlanOutput`] the engine's answer.

use super::{plan_environment_kept, OffersCache, PlanInput};
use crate::engine::{CapacityPlanner, PlanDecision, PlanRequest};
use crate::events::Millis;
use crate::policy::{OverBudget, PolicyFile};
use std::collections::BTreeMap;

/// The engine's [`CapacityPlanner`] backed by this planner and a policy
/// file. The engine's request carries only outstanding vCPUs (submitted,
/// not completed), so they are treated as running work with an empty queue
/// (the forecast covers the same quantity, so nothing is counted twice), at
/// normal priority, with 2 GiB per vCPU and no GPUs.
///
/// It keeps the offers it builds ([`OffersCache`]) across plans: shared by
/// the environments of a tick and kept across ticks, patched for the pools
/// whose prices changed or took effect or turned stale since. Engines
/// sharing one planner share the cache; an entry is used only with the book
/// it was built from (which can say what changed since), so none is used
/// for another book.
#[derive(Debug, Default)]
pub struct CostAwarePlanner {
    pub policy: PolicyFile,
    pub interruption_rates: BTreeMap<String, f64>,
    offers: OffersCache,
}

impl CostAwarePlanner {
    /// A planner for `policy`, with no measured interruption rates.
    pub fn new(policy: PolicyFile) -> Self {
        CostAwarePlanner {
            policy,
            ..Default::default()
        }
    }
}

/// A copy plans the same and starts with an empty cache.
impl Clone for CostAwarePlanner {
    fn clone(&self) -> Self {
        CostAwarePlanner {
            policy: self.policy.clone(),
            interruption_rates: self.interruption_rates.clone(),
            offers: OffersCache::default(),
        }
    }
}

impl CapacityPlanner for CostAwarePlanner {
    fn plan(&self, req: &PlanRequest<'_>) -> PlanDecision {
        self.plan_until(req).0
    }

    /// The plan depends on the time only through the offers (held prices
    /// taking effect, prices turning stale) and the scale-in cool-down; the
    /// planner's offers cache and its cool-down step say until when neither
    /// can change the answer (see `planner::plan_environment_kept`).
    fn plan_until(&self, req: &PlanRequest<'_>) -> (PlanDecision, Millis) {
        let policy = self.policy.for_env(req.compute_environment);
        let o = req.outstanding;
        let input = PlanInput {
            env: req.compute_environment,
            now: req.now,
            bucket_ms: req.bucket_ms,
            forecast: req.forecast,
            queued_vcpus: 0.0,
            running_vcpus: o.vcpus,
            top_priority: o.top_priority,
            deadline_pressure: o.deadline_pressure,
            memory_mib_per_vcpu: if o.vcpus > 0.0 {
                o.memory_mib / o.vcpus
            } else {
                2048.0
            },
            gpus_per_vcpu: if o.vcpus > 0.0 { o.gpus / o.vcpus } else { 0.0 },
            policy,
            book: req.book,
            catalog: req.catalog,
            reserved: &[],
            budget_headroom_usd_per_h: req.budget_headroom_usd_per_h,
            previous: req.previous,
            interruption_rates: &self.interruption_rates,
            spot_risk: req.spot_risk,
        };
        let (out, until) = plan_environment_kept(&input, &self.offers);
        let d = PlanDecision {
            min_vcpus: out.min_vcpus,
            desired_vcpus: out.desired_vcpus,
            max_vcpus: out.max_vcpus,
            instance_mix: out.instance_mix,
            constraints: out.constraints,
            reason: out.reason,
            usd_per_vcpu_hour: out.usd_per_vcpu_hour,
        };
        (d, until)
    }

    fn over_budget(&self, env: &str) -> OverBudget {
        self.policy.for_env(env).over_budget
    }

    fn offers_built_and_reused(&self) -> (u64, u64) {
        self.offers.built_and_reused()
    }

    /// Idle: no `min_vcpus` floor, nothing outstanding (normal priority,
    /// no deadline pressure, nothing running or queued), no budget cap, a
    /// previous plan of 0 vCPUs (or none), spot-only prices, and the
    /// provisioning quantile exactly 0 over the lead time. Such a request
    /// plans nothing whatever the time and the spot prices: the lead-time
    /// demand is 0, no cool-down holds, the mix for 0 vCPUs is empty
    /// whatever the offers (`rank_offers`), the ceiling is the policy's,
    /// and the reason names only the policy's constants and zeros. The one
    /// price in the answer, the rate of a plan that buys nothing, is the
    /// cheapest allowed on-demand offer: with spot-only books the
    /// catalogue's, never stale. With a floor the mix follows spot prices.
    fn is_idle(&self, req: &PlanRequest<'_>) -> bool {
        let p = self.policy.for_env(req.compute_environment);
        p.min_vcpus <= 0
            && req.outstanding.jobs == 0
            && req.budget_headroom_usd_per_h.is_none()
            && req.previous.is_none_or(|prev| prev.desired_vcpus == 0)
            && req.book.spot_only()
            && super::plan::nothing_forecast(p, req.bucket_ms, req.forecast)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig};
    use crate::forecast::Naive;
    use crate::pricing::Catalog;
    use crate::state::tests_support::{done, job, price};
    use std::sync::Arc;

    const MIN: i64 = 60_000;

    /// This planner without its promise ([`CapacityPlanner::plan_until`]
    /// left at its default): every request is planned.
    struct Unpromising(CostAwarePlanner);
    impl CapacityPlanner for Unpromising {
        fn plan(&self, r: &PlanRequest<'_>) -> PlanDecision {
            self.0.plan(r)
        }
        fn is_idle(&self, r: &PlanRequest<'_>) -> bool {
            self.0.is_idle(r)
        }
    }

    /// A busy environment's decision is reused only where planning would give
    /// it again: steady long jobs (inputs that repeat), a burst that comes and
    /// goes (a raise, then the scale-in cool-down's hold, whose reason names
    /// the time), and spot prices that change and repeat, decide the same
    /// commands and tick reports with and without the reuse.
    #[test]
    fn busy_decisions_are_reused_only_where_planning_gives_the_same() {
        let mut evs = Vec::new();
        for i in 0..8 {
            evs.push(job(&format!("long{i}"), i * MIN, 4.0));
            evs.push(done(&format!("long{i}"), 1500 * MIN + i * MIN));
        }
        for i in 0..6 {
            evs.push(job(&format!("burst{i}"), 400 * MIN + i * MIN, 16.0));
            evs.push(done(&format!("burst{i}"), 520 * MIN + i * MIN));
        }
        for k in 0..60 {
            evs.push(price(k * 37 * MIN, 0.02 + (k % 4) as f64 * 0.005));
        }
        evs.sort_by_key(|e| e.time());
        let csv = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/aws-ondemand-us-east-1.csv"
        ));
        let catalog = Catalog::parse(&csv[..], "sample").unwrap();
        let catalog = Arc::new(catalog);
        let run = |planner: Arc<dyn CapacityPlanner>| {
            let mut e = Engine::new(
                EngineConfig::default(),
                catalog.clone(),
                Arc::new(Naive::default()),
                planner,
            );
            let (mut out, mut reports) = (Vec::new(), Vec::new());
            for ev in &evs {
                e.handle_reporting(ev, &mut out, Some(&mut reports));
            }
            e.finish_reporting(&mut out, Some(&mut reports));
            (out, reports, e.busy_plans_reused())
        };
        let policy = crate::policy::PolicyFile::default;
        let (out, reports, reused) = run(Arc::new(CostAwarePlanner::new(policy())));
        let planned = run(Arc::new(Unpromising(CostAwarePlanner::new(policy()))));
        assert_eq!(planned.2, 0);
        assert!(reused > 50, "{reused} of {} ticks", reports.len());
        assert!(out.len() > 3, "{out:?}");
        assert!(
            reports
                .iter()
                .any(|r| r.plans.iter().any(|p| p.desired_vcpus > 32)),
            "the burst raised the plan"
        );
        assert_eq!(out, planned.0);
        assert_eq!(reports, planned.1);
    }
}
