//! Learned spot risk laid over the planner's offers. The estimates
//! themselves ([`SpotRiskBook`]) live in `pricing::spot_risk`, below the
//! engine, which learns them from spot signals; the planner reads them here.

pub use crate::pricing::spot_risk::*;

use super::Offer;
use crate::events::Market;
use std::collections::{BTreeMap, BTreeSet};

/// Sets each spot offer's interruption rate and launch-failure
/// probability from the evidence, with the rate the offer already
/// carries (the policy's constant rate scaled by price, or an
/// operator's override) as the prior: `(λ₀·prior_hours + n) /
/// (prior_hours + h)` and `(p₀·prior_attempts + f) / (prior_attempts +
/// a)`. Offers of pools without evidence keep their rate.
///
/// Keys: `region/type` holds evidence without a zone (and all the
/// exposure: the service commands type and region, the fleet picks the
/// zone), `region/zone/type` the interruptions and refusals a signal
/// placed in a zone. A zone's share of its region's exposure, and of
/// the region's zone-less evidence, is `1/Z`, Z the number of zones the
/// offers list for that type and region: so a zone that sent warnings
/// reads riskier than its region's other zones, which read safer.
pub fn apply(book: &SpotRiskBook, offers: &mut [Offer]) {
    if book.pools.is_empty() {
        return;
    }
    let groups: Vec<((&str, &str), Group)> = groups(book).into_iter().collect();
    let group_of = |o: &Offer| {
        let k = (o.region.as_str(), o.instance_type.as_str());
        (o.market == Market::Spot)
            .then(|| groups.binary_search_by(|(g, _)| g.cmp(&k)).ok())
            .flatten()
    };
    let of: Vec<Option<usize>> = offers.iter().map(group_of).collect();
    let mut zones: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); groups.len()];
    for (o, g) in offers.iter().zip(&of) {
        if let (Some(g), Some(z)) = (g, o.zone.as_deref()) {
            zones[*g].insert(z);
        }
    }
    let z_count: Vec<f64> = zones.iter().map(|z| z.len().max(1) as f64).collect();
    let c = book.cfg;
    for (o, g) in offers.iter_mut().zip(of) {
        let Some(g) = g else {
            continue;
        };
        let e = groups[g].1.evidence(o.zone.as_deref(), z_count[g]);
        let prior = o.interruption_rate_per_h.max(0.0);
        o.interruption_rate_per_h =
            (prior * c.prior_hours + e.interruptions) / (c.prior_hours + e.exposure_h).max(1e-9);
        let (pa, p0) = (c.prior_launch_attempts, c.prior_launch_failure);
        o.launch_failure_p = ((p0 * pa + e.failures) / (pa + e.attempts).max(1e-9)).clamp(0.0, 1.0);
    }
}

/// The evidence per (region, type), its zones apart.
fn groups(book: &SpotRiskBook) -> BTreeMap<(&str, &str), Group<'_>> {
    let mut out: BTreeMap<(&str, &str), Group> = BTreeMap::new();
    for (key, (h, l)) in &book.pools {
        let parts: Vec<&str> = key.split('/').collect();
        let e = Evidence {
            interruptions: h.interruptions,
            exposure_h: h.exposure_h,
            failures: l.failures,
            attempts: l.attempts,
        };
        match parts[..] {
            [region, ty] => out.entry((region, ty)).or_default().region = e,
            [region, zone, ty] => {
                out.entry((region, ty)).or_default().zones.insert(zone, e);
            }
            _ => {}
        }
    }
    out
}

/// Discounted counts for one pool, as [`apply`] reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Evidence {
    interruptions: f64,
    exposure_h: f64,
    failures: f64,
    attempts: f64,
}

/// One (region, type): its zone-less evidence and each zone's own.
#[derive(Debug, Default)]
struct Group<'a> {
    region: Evidence,
    zones: BTreeMap<&'a str, Evidence>,
}

impl Group<'_> {
    /// The evidence for an offer in `zone` (None: the whole region) when
    /// the offers list `z_count` zones of this type and region. Without
    /// any zone's own evidence every zone reads the region's.
    fn evidence(&self, zone: Option<&str>, z_count: f64) -> Evidence {
        let r = self.region;
        match zone.filter(|_| !self.zones.is_empty()) {
            None => self.zones.values().fold(r, |mut a, z| {
                a.interruptions += z.interruptions;
                a.failures += z.failures;
                a.attempts += z.attempts;
                a
            }),
            Some(zone) => {
                let own = self.zones.get(zone).copied().unwrap_or_default();
                Evidence {
                    interruptions: own.interruptions + r.interruptions / z_count,
                    exposure_h: r.exposure_h / z_count,
                    failures: own.failures + r.failures / z_count,
                    attempts: own.attempts + r.attempts / z_count,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A synthetic pool with a known Poisson hazard: the estimate, started
    /// from a prior 10× off, converges on the true rate.
    #[test]
    fn hazard_converges_on_a_known_rate() {
        let true_rate = 0.3; // per instance-hour
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut est = HazardEstimate::new(0.03, 4.0);
        let step_h = 1.0 / 60.0;
        let mut errs = Vec::new();
        for hour in 1..=20_000 {
            for _ in 0..60 {
                let hit = rng.random::<f64>() < true_rate * step_h;
                est.observe(step_h, u32::from(hit));
            }
            if [10, 100, 20_000].contains(&hour) {
                errs.push((est.rate_per_h() - true_rate).abs() / true_rate);
            }
        }
        // 6000 expected events: standard error ≈ 1.3 %; 5 % is ~4 σ.
        assert!(errs[2] < 0.05, "{errs:?}");
        assert!(errs[2] < errs[0], "{errs:?}");
    }

    /// Two zones of one spot pool at the same price: once warnings were
    /// learned in zone a, the plan moves to zone b, which holds; and zone
    /// b reads safer than the region's prior, since it ran without one.
    #[test]
    fn the_plan_moves_to_the_zone_that_holds() {
        use crate::planner::optimize::tests_support::offer;
        use crate::planner::{rank_offers, InstanceRequest};
        let mut offers: Vec<Offer> = ["us-east-1a", "us-east-1b"]
            .iter()
            .map(|z| {
                let mut o = offer("c5.xlarge", Market::Spot, 4.0, 8192, 0, 0.06);
                o.zone = Some((*z).into());
                o.on_demand_usd_per_hour = Some(0.17);
                o.interruption_rate_per_h = 0.01;
                o
            })
            .collect();
        offers.push(offer("c5.xlarge", Market::OnDemand, 4.0, 8192, 0, 0.17));
        let req = InstanceRequest {
            vcpus: 4.0,
            duration_s: Some(2 * 3600),
            ..Default::default()
        };
        // Equal: the tie goes to pool-key order, zone a.
        let best = &rank_offers(&req, &offers, 0)[0];
        assert_eq!(best.pools[0].zone.as_deref(), Some("us-east-1a"));

        let mut book = SpotRiskBook::new(SpotRiskConfig::default());
        book.observe_hours(&region_key("us-east-1", "c5.xlarge"), 40.0);
        book.observe_interruptions(&zone_key("us-east-1", "us-east-1a", "c5.xlarge"), 12.0);
        let mut learned = offers.clone();
        apply(&book, &mut learned);
        let (a, b) = (&learned[0], &learned[1]);
        assert!(a.interruption_rate_per_h > 0.5, "{a:?}");
        assert!(b.interruption_rate_per_h < 0.01, "{b:?}");
        assert_eq!(learned[2], offers[2], "on-demand untouched");
        let best = &rank_offers(&req, &learned, 0)[0];
        assert_eq!(best.pools[0].zone.as_deref(), Some("us-east-1b"));
        assert_eq!(best.pools[0].market, Market::Spot);

        // Zone b then refuses launches: a refused launch is served
        // on-demand, so b's expected cost nears on-demand's, and zone a,
        // interrupted but launching, is the cheaper again.
        let zb = zone_key("us-east-1", "us-east-1b", "c5.xlarge");
        for _ in 0..20 {
            book.observe_launch_weights(&zb, 1.0, 1.0);
        }
        let mut learned = offers.clone();
        apply(&book, &mut learned);
        let b = &learned[1];
        assert!(b.launch_failure_p > 0.8, "{b:?}");
        assert!(b.expected_usd_per_hour(7200.0, 120.0) > 0.14, "{b:?}");
        let best = &rank_offers(&req, &learned, 0)[0];
        assert_eq!(best.pools[0].zone.as_deref(), Some("us-east-1a"));

        // Both zones reclaim often: on-demand is the cheaper.
        book.observe_interruptions(&zb, 60.0);
        book.observe_interruptions(&zone_key("us-east-1", "us-east-1a", "c5.xlarge"), 60.0);
        let mut learned = offers.clone();
        apply(&book, &mut learned);
        let best = &rank_offers(&req, &learned, 0)[0];
        assert_eq!(best.pools[0].market, Market::OnDemand);
    }

    #[test]
    fn an_empty_book_changes_no_offer() {
        use crate::planner::optimize::tests_support::offer;
        let offers = vec![offer("c5.xlarge", Market::Spot, 4.0, 8192, 0, 0.06)];
        let mut same = offers.clone();
        apply(&SpotRiskBook::new(SpotRiskConfig::default()), &mut same);
        assert_eq!(same, offers);
        // Evidence for another pool changes none either.
        let mut book = SpotRiskBook::new(SpotRiskConfig::default());
        book.observe_interruptions(&region_key("eu-west-1", "c5.xlarge"), 3.0);
        apply(&book, &mut same);
        assert_eq!(same, offers);
    }

    #[test]
    fn prior_rules_an_unseen_pool_and_forgetting_lets_a_changed_market_show() {
        let mut book = SpotRiskBook::new(SpotRiskConfig::default());
        assert_eq!(book.hazard_per_h("p"), book.cfg.prior_rate_per_h);
        // 100 calm hours, then 10 hours with 5 interruptions.
        book.observe_exposure("p", 100.0, 0);
        let calm = book.hazard_per_h("p");
        book.forget(48.0);
        book.observe_exposure("p", 10.0, 5);
        assert!(book.hazard_per_h("p") > 10.0 * calm);
        book.observe_launches("p", 10, 9);
        assert!(book.launch_failure("p") > 0.6);
    }
}
