//! Cost-aware planning: turns a demand forecast, the queue, the policy and
//! prices into an environment's capacity targets and instance mix.
//!
//! Pure: no I/O, no wall clock, no hash-map iteration, so the same inputs
//! always give the same plan and the same `reason` text (the engine hashes
//! commands by their inputs). See `docs/planner.md`.

mod cache;
mod cost_aware;
pub mod deadline;
pub mod deadline_plan;
pub mod market;
pub mod offers;
pub mod optimize;
mod plan;
pub mod spot_risk;

/// The engine keeps what the previous tick decided; the planner reads it.
pub use crate::engine::PreviousPlan;
pub use cache::{plan_environment_cached, plan_environment_kept, OffersCache};
pub use cost_aware::CostAwarePlanner;
pub use market::{offers_from_book, MarketView, ShapeFilter};
pub use offers::{spot_slowdown, Offer, RiskModel};
pub use optimize::{rank_offers, ChosenPool, InstanceRequest, RankedChoice};

use crate::events::{InstanceAllocation, Millis, QuantileValue};
use crate::forecast::Forecast;
use crate::policy::{EnvPolicy, ReservedInstances};
use crate::pricing::{Catalog, PriceBook};
use plan::{plan_priced, plan_priced_until};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything one planning decision depends on.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub env: &'a str,
    /// Decision time (event time of the tick).
    pub now: Millis,
    /// Width of one forecast bucket.
    pub bucket_ms: i64,
    /// Concurrent vCPU demand forecast, `values[h][q]`, quantiles ascending.
    pub forecast: &'a Forecast,
    /// vCPUs of jobs submitted but not started / running now.
    pub queued_vcpus: f64,
    pub running_vcpus: f64,
    /// Highest priority among queued and running jobs (None: idle).
    pub top_priority: Option<i32>,
    /// A queued or running job's deadline falls within the lead time plus
    /// its runtime: provision at the high quantile.
    pub deadline_pressure: bool,
    /// Shape of the demand, from recent jobs (memory and GPUs per vCPU).
    pub memory_mib_per_vcpu: f64,
    pub gpus_per_vcpu: f64,
    pub policy: &'a EnvPolicy,
    pub book: &'a PriceBook,
    pub catalog: &'a Catalog,
    /// Already-paid instances of this environment, besides the policy's
    /// own `reserved` list (e.g. from an inventory feed).
    pub reserved: &'a [ReservedInstances],
    /// USD/h the environment may still burn within its budgets (None: no
    /// budget applies). Reserved capacity does not burn.
    pub budget_headroom_usd_per_h: Option<f64>,
    pub previous: Option<PreviousPlan>,
    /// Measured spot interruption rates per pool (see [`RiskModel`]).
    pub interruption_rates: &'a BTreeMap<String, f64>,
    /// Spot risk learned from spot signals (see [`spot_risk`]), applied
    /// over the rates above, which are its prior. None: nothing learned.
    pub spot_risk: Option<&'a spot_risk::SpotRiskBook>,
}

/// The decision for one environment at one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOutput {
    pub min_vcpus: i64,
    pub desired_vcpus: i64,
    pub max_vcpus: i64,
    pub instance_mix: Vec<InstanceAllocation>,
    pub constraints: BTreeMap<String, String>,
    pub quantile_used: f64,
    /// Peak of each forecast quantile over the lead time (for the
    /// command's `forecast` field).
    pub forecast_used: Vec<QuantileValue>,
    /// Marginal list spend rate of the mix (reserved counts 0).
    pub usd_per_hour: f64,
    /// Risk-adjusted spend rate (spot slowdown included).
    pub expected_usd_per_hour: f64,
    /// Expected cost of one vCPU-hour of work on this mix; the engine uses
    /// it for a submitted job's expected cost (budget commitment).
    pub usd_per_vcpu_hour: f64,
    pub reason: String,
}

/// Linear interpolation of a quantile level between forecast levels,
/// clamped outside the forecast's range: the forecast's own reading
/// ([`crate::forecast::eval::level_value`]), so the planner provisions at
/// the value `forecast eval` scores.
pub use crate::forecast::eval::level_value as quantile_value;

/// Plans one environment over an explicit list of offers (reserved pools
/// included, with `available` = count owned). [`plan_environment`] builds
/// the offers from the price book and catalogue and plans the same way.
pub fn plan_with_offers(input: &PlanInput<'_>, offers: &[Offer]) -> PlanOutput {
    let mut offers: Vec<Offer> = offers.to_vec();
    apply_risk(input, &mut offers);
    plan_priced(input, &offers)
}

/// Sets each offer's interruption rate from the policy's base rate and the
/// measured overrides, then the learned risk over them.
fn apply_risk(input: &PlanInput<'_>, offers: &mut [Offer]) {
    risk_model(input).apply(offers);
    if let Some(book) = input.spot_risk {
        spot_risk::apply(book, offers);
    }
}

/// The risk model of [`apply_risk`].
fn risk_model(input: &PlanInput<'_>) -> RiskModel {
    let mut risk = RiskModel::new(input.policy.spot_interruption_rate_per_h);
    risk.overrides = input.interruption_rates.clone();
    risk
}

/// Plans one environment: builds the offers allowed by its policy from the
/// price book and catalogue (stale prices flagged, reserved capacity
/// added) and decides min/desired/max vCPUs and the instance mix.
pub fn plan_environment(input: &PlanInput<'_>) -> PlanOutput {
    plan_priced(input, &priced_offers(input))
}

/// The offers [`plan_environment`] plans over: allowed by the policy, from
/// the book as of `input.now`, interruption rates set.
fn priced_offers(input: &PlanInput<'_>) -> Vec<Offer> {
    let reserved = reserved_of(input);
    let mut offers = offers_from_book(
        input.book,
        input.catalog,
        input.now,
        &market_view(input, &reserved),
    );
    apply_risk(input, &mut offers);
    offers
}

/// The reserved inventory [`priced_offers`] offers: the policy's, then the
/// input's.
fn reserved_of(input: &PlanInput<'_>) -> Vec<ReservedInstances> {
    let mut reserved = input.policy.reserved.clone();
    reserved.extend(input.reserved.iter().cloned());
    reserved
}

/// The market view [`priced_offers`] builds the offers with.
fn market_view<'a>(input: &'a PlanInput<'_>, reserved: &'a [ReservedInstances]) -> MarketView<'a> {
    let p = input.policy;
    MarketView {
        max_price_age_ms: p.max_price_age_s * 1000,
        markets: &p.markets,
        regions: &p.regions,
        providers: &p.providers,
        instance_types: &p.instance_types,
        reserved,
        shape: ShapeFilter {
            architectures: &p.architectures,
            exclude_burstable: p.exclude_burstable,
            min_vcpus: p.min_instance_vcpus,
        },
    }
}

/// The cheapest expected-cost instances for a demand, optimum first, then
/// ranked single-pool alternatives; empty when nothing allowed fits.
pub fn optimal_instances(
    req: &InstanceRequest,
    book: &PriceBook,
    catalog: &Catalog,
    now: Millis,
) -> Vec<RankedChoice> {
    let mut offers = offers_from_book(
        book,
        catalog,
        now,
        &MarketView {
            max_price_age_ms: req.max_price_age_s.max(1) * 1000,
            markets: &req.markets,
            regions: &req.regions,
            providers: &req.providers,
            instance_types: &req.instance_types,
            reserved: &req.reserved,
            shape: ShapeFilter {
                architectures: &req.architectures,
                exclude_burstable: req.exclude_burstable,
                min_vcpus: 0.0,
            },
        },
    );
    let mut risk = RiskModel::new(req.spot_interruption_rate_per_h);
    risk.overrides = req.interruption_rates.clone();
    risk.apply(&mut offers);
    rank_offers(req, &offers, now)
}

#[cfg(test)]
mod tests {
    use super::optimize::tests_support::offer;
    use super::*;
    use crate::events::Market;

    fn input<'a>(
        f: &'a Forecast,
        p: &'a EnvPolicy,
        rates: &'a BTreeMap<String, f64>,
    ) -> PlanInput<'a> {
        static BOOK: std::sync::OnceLock<PriceBook> = std::sync::OnceLock::new();
        static CAT: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        PlanInput {
            env: "ricc",
            now: 1_000_000,
            bucket_ms: 300_000,
            forecast: f,
            queued_vcpus: 10.0,
            running_vcpus: 40.0,
            top_priority: Some(0),
            deadline_pressure: false,
            memory_mib_per_vcpu: 2048.0,
            gpus_per_vcpu: 0.0,
            policy: p,
            book: BOOK.get_or_init(PriceBook::new),
            catalog: CAT.get_or_init(Catalog::default),
            reserved: &[],
            budget_headroom_usd_per_h: None,
            previous: None,
            interruption_rates: rates,
            spot_risk: None,
        }
    }

    fn fc() -> Forecast {
        Forecast {
            quantiles: vec![0.1, 0.5, 0.9],
            values: vec![vec![30.0, 60.0, 90.0], vec![35.0, 70.0, 120.0]],
        }
    }

    fn market_offers() -> Vec<Offer> {
        let mut spot_a = offer("c5.xlarge", Market::Spot, 4.0, 8192, 0, 0.06);
        spot_a.on_demand_usd_per_hour = Some(0.17);
        let mut spot_b = offer("m5.xlarge", Market::Spot, 4.0, 16384, 0, 0.07);
        spot_b.on_demand_usd_per_hour = Some(0.192);
        let mut spot_c = spot_a.clone();
        spot_c.region = "us-west-2".into();
        vec![
            spot_a,
            spot_b,
            spot_c,
            offer("c5.xlarge", Market::OnDemand, 4.0, 8192, 0, 0.17),
        ]
    }

    #[test]
    fn quantile_by_priority_and_queue_drive_desired() {
        let (f, p, r) = (fc(), EnvPolicy::default(), BTreeMap::new());
        let out = plan_with_offers(&input(&f, &p, &r), &market_offers());
        // lead 300 s = 1 bucket: p50 peak 60 (> running 40) + queued 10
        assert_eq!(out.desired_vcpus, 70);
        assert_eq!(out.quantile_used, 0.5);
        assert_eq!(out.min_vcpus, 30);
        let mix_v: i32 = out.instance_mix.iter().map(|a| a.count * 4).sum();
        assert!(mix_v >= 70);
        assert!(out.instance_mix.iter().all(|a| a.market == Market::Spot));
        let mut inp = input(&f, &p, &r);
        inp.top_priority = Some(5);
        let hi = plan_with_offers(&inp, &market_offers());
        assert_eq!(hi.quantile_used, 0.9);
        assert_eq!(hi.desired_vcpus, 100);
        // No policy ceiling and no budget: no max.
        assert_eq!(hi.max_vcpus, 0);
        // deterministic reason
        assert_eq!(hi.reason, plan_with_offers(&inp, &market_offers()).reason);
    }

    #[test]
    fn cooldown_holds_scale_in_and_budget_caps() {
        let (f, p, r) = (fc(), EnvPolicy::default(), BTreeMap::new());
        let mut inp = input(&f, &p, &r);
        inp.previous = Some(PreviousPlan {
            desired_vcpus: 200,
            raised_at: inp.now - 60_000,
        });
        let out = plan_with_offers(&inp, &market_offers());
        assert_eq!(out.desired_vcpus, 200);
        assert!(out.reason.contains("cool-down"));
        let mut inp = input(&f, &p, &r);
        inp.budget_headroom_usd_per_h = Some(0.6);
        let out = plan_with_offers(&inp, &market_offers());
        assert!(out.usd_per_hour <= 0.6 + 1e-9, "{out:?}");
        assert!(out.desired_vcpus < 70);
        assert!(out.max_vcpus <= 40 + 4);
        assert!(out.reason.contains("budget caps"));
    }

    #[test]
    fn reserved_counts_toward_min_and_is_free() {
        let (f, p, r) = (fc(), EnvPolicy::default(), BTreeMap::new());
        let mut offers = market_offers();
        let mut res = offer("c5.xlarge", Market::Reserved, 4.0, 8192, 0, 0.17);
        res.available = Some(10);
        offers.push(res);
        let out = plan_with_offers(&input(&f, &p, &r), &offers);
        assert_eq!(out.min_vcpus, 40);
        let reserved: i32 = out
            .instance_mix
            .iter()
            .filter(|a| a.market == Market::Reserved)
            .map(|a| a.count)
            .sum();
        assert_eq!(reserved, 10);
    }

    #[test]
    fn offers_cache_gives_the_plans_of_fresh_offers() {
        use crate::pricing::book::tests::tick;
        let cat = Catalog::bundled();
        let mut book = PriceBook::new();
        book.apply(&tick(0, "m5.large", 0.03));
        book.apply(&tick(0, "c5.xlarge", 0.05));
        let (f, rates) = (fc(), BTreeMap::new());
        let spot = EnvPolicy::default();
        let od = EnvPolicy {
            markets: vec![Market::OnDemand],
            ..EnvPolicy::default()
        };
        let cache = OffersCache::default();
        // The second time, the spot prices are stale (priced at on-demand).
        for now in [1_000, 7 * 3_600_000] {
            for p in [&spot, &od, &spot] {
                let inp = PlanInput {
                    book: &book,
                    catalog: &cat,
                    now,
                    ..input(&f, p, &rates)
                };
                let fresh = plan_environment(&inp);
                assert!(!fresh.instance_mix.is_empty());
                assert_eq!(plan_environment_cached(&inp, &cache), fresh);
            }
            // One entry per market view, not per environment.
            assert_eq!(cache.entries.lock().unwrap().len(), 2);
        }
    }

    #[test]
    fn offers_kept_across_ticks_give_the_plans_of_fresh_offers() {
        use crate::pricing::book::tests::tick;
        let cat = Catalog::bundled();
        let (f, rates) = (fc(), BTreeMap::new());
        let p = EnvPolicy::default();
        let h = 3_600_000;
        let mut book = PriceBook::new();
        book.apply(&tick(0, "m5.large", 0.03));
        book.apply(&tick(0, "c5.xlarge", 0.05));
        // Held before it applies: a cheaper m5 from 2 h on.
        book.apply(&tick(2 * h, "m5.large", 0.004));
        let cache = OffersCache::default();
        let mut plans = Vec::new();
        for (i, now) in (0..40).map(|k| k * 15 * 60_000).enumerate() {
            if i == 20 {
                // A new price between ticks.
                book.apply(&tick(now - 1, "c5.xlarge", 0.002));
            }
            let inp = PlanInput {
                book: &book,
                catalog: &cat,
                now,
                ..input(&f, &p, &rates)
            };
            let fresh = plan_environment(&inp);
            assert_eq!(plan_environment_cached(&inp, &cache), fresh, "at {now}");
            plans.push(fresh);
        }
        // The held tick and the new price changed the plan; staleness
        // (6 h after 0 and 2 h) was seen; the offers were built once and
        // patched three times: the held m5 price at 2 h, the new c5 price
        // at 5 h, the m5 price stale at 8 h.
        assert_ne!(plans[7], plans[8]);
        assert_ne!(plans[19], plans[20]);
        let (built, reused) = cache.built_and_reused();
        let (patched, _) = cache.patched();
        assert!(
            built == 1 && reused == 39 && patched == 3,
            "built {built}, reused {reused}, patched {patched}"
        );
    }

    #[test]
    fn interpolates_quantiles() {
        let levels = [0.1, 0.5, 0.9];
        let vals = [10.0, 20.0, 40.0];
        assert_eq!(quantile_value(&levels, &vals, 0.5), 20.0);
        assert_eq!(quantile_value(&levels, &vals, 0.7), 30.0);
        assert_eq!(quantile_value(&levels, &vals, 0.99), 40.0);
        assert_eq!(quantile_value(&levels, &vals, 0.01), 10.0);
    }
}
