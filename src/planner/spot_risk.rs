//! Learned spot risk per pool: the interruption hazard and the probability
//! that a spot launch fails for lack of capacity, estimated online from
//! what the service observes (interruption warnings, rebalance
//! recommendations, failed launches, and the instance-hours it ran there).
//!
//! Why Bayesian and not a plain ratio: a pool seen for ten minutes with no
//! interruption is not a safe pool, and a pool with one interruption in its
//! first hour is not a 1/h pool. The policy's constant rate is the prior,
//! worth `prior_hours` of exposure, and the evidence takes over as it grows:
//!
//! - hazard: Gamma(α, β) prior on a Poisson rate, α = rate × prior_hours,
//!   β = prior_hours; after `n` interruptions in `h` instance-hours the
//!   posterior mean is `(α + n) / (β + h)`;
//! - launch failure: Beta(a, b) prior on a Bernoulli, posterior mean
//!   `(a + failures) / (a + b + attempts)`.
//!
//! Spot markets drift (capacity comes and goes by the hour), so evidence is
//! discounted with a half-life: old hours and old interruptions weigh less.
//! Pure: the caller passes elapsed times; nothing here reads a clock.

use super::Offer;
use crate::events::Market;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Posterior of one pool's interruption hazard (per instance-hour).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HazardEstimate {
    /// Prior mean rate (the policy's constant rate).
    pub prior_rate_per_h: f64,
    /// How many instance-hours of evidence the prior is worth.
    pub prior_hours: f64,
    /// Discounted interruptions observed.
    pub interruptions: f64,
    /// Discounted instance-hours observed.
    pub exposure_h: f64,
}

impl HazardEstimate {
    pub fn new(prior_rate_per_h: f64, prior_hours: f64) -> Self {
        HazardEstimate {
            prior_rate_per_h: prior_rate_per_h.max(0.0),
            prior_hours: prior_hours.max(1e-9),
            interruptions: 0.0,
            exposure_h: 0.0,
        }
    }

    /// Records `hours` of spot instance time and `interruptions` seen in it.
    pub fn observe(&mut self, hours: f64, interruptions: u32) {
        self.exposure_h += hours.max(0.0);
        self.interruptions += f64::from(interruptions);
    }

    /// Discounts the evidence for `elapsed_h` hours with half-life
    /// `half_life_h` (non-positive half-life: no forgetting).
    pub fn forget(&mut self, elapsed_h: f64, half_life_h: f64) {
        if half_life_h > 0.0 && elapsed_h > 0.0 {
            let w = 0.5f64.powf(elapsed_h / half_life_h);
            self.exposure_h *= w;
            self.interruptions *= w;
        }
    }

    /// Posterior mean hazard per instance-hour.
    pub fn rate_per_h(&self) -> f64 {
        (self.prior_rate_per_h * self.prior_hours + self.interruptions)
            / (self.prior_hours + self.exposure_h)
    }
}

/// Posterior of the probability that a spot launch in a pool fails.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LaunchFailureEstimate {
    pub prior_p: f64,
    pub prior_attempts: f64,
    pub failures: f64,
    pub attempts: f64,
}

impl LaunchFailureEstimate {
    pub fn new(prior_p: f64, prior_attempts: f64) -> Self {
        LaunchFailureEstimate {
            prior_p: prior_p.clamp(0.0, 1.0),
            prior_attempts: prior_attempts.max(1e-9),
            failures: 0.0,
            attempts: 0.0,
        }
    }

    pub fn observe(&mut self, attempts: u32, failures: u32) {
        self.attempts += f64::from(attempts.max(failures));
        self.failures += f64::from(failures);
    }

    pub fn forget(&mut self, elapsed_h: f64, half_life_h: f64) {
        if half_life_h > 0.0 && elapsed_h > 0.0 {
            let w = 0.5f64.powf(elapsed_h / half_life_h);
            self.attempts *= w;
            self.failures *= w;
        }
    }

    pub fn p(&self) -> f64 {
        (self.prior_p * self.prior_attempts + self.failures) / (self.prior_attempts + self.attempts)
    }
}

/// Settings of the learned risk model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpotRiskConfig {
    /// Prior hazard for a pool never observed (the policy's constant rate).
    pub prior_rate_per_h: f64,
    /// Weight of the prior, in instance-hours.
    pub prior_hours: f64,
    /// Prior rate at which a pool without capacity gets it back, per hour
    /// (1 / the mean outage).
    pub prior_recovery_per_h: f64,
    /// Prior launch-failure probability and its weight in attempts.
    pub prior_launch_failure: f64,
    pub prior_launch_attempts: f64,
    /// Evidence half-life, hours (spot markets drift).
    pub half_life_h: f64,
    /// Half-life of the launch-failure evidence, hours: shorter, since
    /// capacity comes back within hours (the measured traces' outages last
    /// a fraction of an hour to a few hours) while a pool's hazard is a
    /// slower property.
    #[serde(default = "default_launch_half_life_h")]
    pub launch_half_life_h: f64,
    /// What a rebalance recommendation counts for, in interruptions (AWS
    /// sends one when an instance is at elevated risk; not every one is
    /// followed by a reclaim).
    #[serde(default = "default_rebalance_weight")]
    pub rebalance_weight: f64,
}

fn default_launch_half_life_h() -> f64 {
    2.0
}

fn default_rebalance_weight() -> f64 {
    0.25
}

impl Default for SpotRiskConfig {
    fn default() -> Self {
        SpotRiskConfig {
            prior_rate_per_h: crate::pricing::DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR,
            prior_hours: 4.0,
            prior_recovery_per_h: 1.0,
            prior_launch_failure: 0.05,
            prior_launch_attempts: 4.0,
            half_life_h: 24.0,
            launch_half_life_h: default_launch_half_life_h(),
            rebalance_weight: default_rebalance_weight(),
        }
    }
}

/// Learned risk of every pool seen, keyed by pool (`Offer::pool_key` or
/// any stable name). Deterministic (ordered map).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpotRiskBook {
    pub cfg: SpotRiskConfig,
    pub pools: BTreeMap<String, (HazardEstimate, LaunchFailureEstimate)>,
}

impl SpotRiskBook {
    pub fn new(cfg: SpotRiskConfig) -> Self {
        SpotRiskBook {
            cfg,
            pools: BTreeMap::new(),
        }
    }

    fn entry(&mut self, pool: &str) -> &mut (HazardEstimate, LaunchFailureEstimate) {
        let c = self.cfg;
        self.pools.entry(pool.to_string()).or_insert_with(|| {
            (
                HazardEstimate::new(c.prior_rate_per_h, c.prior_hours),
                LaunchFailureEstimate::new(c.prior_launch_failure, c.prior_launch_attempts),
            )
        })
    }

    /// `hours` of spot instance time ran in `pool` with `interruptions`.
    pub fn observe_exposure(&mut self, pool: &str, hours: f64, interruptions: u32) {
        self.entry(pool).0.observe(hours, interruptions);
    }

    /// Spot launches tried in `pool`, `failures` of them refused for capacity.
    pub fn observe_launches(&mut self, pool: &str, attempts: u32, failures: u32) {
        self.entry(pool).1.observe(attempts, failures);
    }

    /// Discounts all evidence by `elapsed_h` hours (the hazard with
    /// `half_life_h`, launch failures with `launch_half_life_h`).
    pub fn forget(&mut self, elapsed_h: f64) {
        let (hl, ll) = (self.cfg.half_life_h, self.cfg.launch_half_life_h);
        for (h, l) in self.pools.values_mut() {
            h.forget(elapsed_h, hl);
            l.forget(elapsed_h, ll);
        }
    }

    /// `weight` interruptions (a warning is 1, a rebalance recommendation
    /// `rebalance_weight`) in `pool`, with no exposure: the exposure is
    /// counted apart, from what the service believes it runs there.
    pub fn observe_interruptions(&mut self, pool: &str, weight: f64) {
        self.entry(pool).0.interruptions += weight.max(0.0);
    }

    /// `hours` of spot instance time in `pool`.
    pub fn observe_hours(&mut self, pool: &str, hours: f64) {
        self.entry(pool).0.exposure_h += hours.max(0.0);
    }

    /// Launch evidence as weights: `attempts` (≥ `failures`) of which
    /// `failures` were refused.
    pub fn observe_launch_weights(&mut self, pool: &str, attempts: f64, failures: f64) {
        let l = &mut self.entry(pool).1;
        let failures = failures.max(0.0);
        l.attempts += attempts.max(failures);
        l.failures += failures;
    }

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
    pub fn apply(&self, offers: &mut [Offer]) {
        if self.pools.is_empty() {
            return;
        }
        let groups: Vec<((&str, &str), Group)> = self.groups().into_iter().collect();
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
        let c = self.cfg;
        for (o, g) in offers.iter_mut().zip(of) {
            let Some(g) = g else {
                continue;
            };
            let e = groups[g].1.evidence(o.zone.as_deref(), z_count[g]);
            let prior = o.interruption_rate_per_h.max(0.0);
            o.interruption_rate_per_h = (prior * c.prior_hours + e.interruptions)
                / (c.prior_hours + e.exposure_h).max(1e-9);
            let (pa, p0) = (c.prior_launch_attempts, c.prior_launch_failure);
            o.launch_failure_p =
                ((p0 * pa + e.failures) / (pa + e.attempts).max(1e-9)).clamp(0.0, 1.0);
        }
    }

    /// The evidence per (region, type), its zones apart.
    fn groups(&self) -> BTreeMap<(&str, &str), Group<'_>> {
        let mut out: BTreeMap<(&str, &str), Group> = BTreeMap::new();
        for (key, (h, l)) in &self.pools {
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

    /// Learned hazard of `pool` (the prior if never seen).
    pub fn hazard_per_h(&self, pool: &str) -> f64 {
        self.pools
            .get(pool)
            .map_or(self.cfg.prior_rate_per_h, |(h, _)| h.rate_per_h())
    }

    /// Learned launch-failure probability of `pool`.
    pub fn launch_failure(&self, pool: &str) -> f64 {
        self.pools
            .get(pool)
            .map_or(self.cfg.prior_launch_failure, |(_, l)| l.p())
    }
}

/// The book key of a pool without a zone: `region/type`.
pub fn region_key(region: &str, instance_type: &str) -> String {
    format!("{region}/{instance_type}")
}

/// The book key of a pool in a zone: `region/zone/type`.
pub fn zone_key(region: &str, zone: &str, instance_type: &str) -> String {
    format!("{region}/{zone}/{instance_type}")
}

/// Discounted counts for one pool, as [`SpotRiskBook::apply`] reads them.
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
        book.apply(&mut learned);
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
        book.apply(&mut learned);
        let b = &learned[1];
        assert!(b.launch_failure_p > 0.8, "{b:?}");
        assert!(b.expected_usd_per_hour(7200.0, 120.0) > 0.14, "{b:?}");
        let best = &rank_offers(&req, &learned, 0)[0];
        assert_eq!(best.pools[0].zone.as_deref(), Some("us-east-1a"));

        // Both zones reclaim often: on-demand is the cheaper.
        book.observe_interruptions(&zb, 60.0);
        book.observe_interruptions(&zone_key("us-east-1", "us-east-1a", "c5.xlarge"), 60.0);
        let mut learned = offers.clone();
        book.apply(&mut learned);
        let best = &rank_offers(&req, &learned, 0)[0];
        assert_eq!(best.pools[0].market, Market::OnDemand);
    }

    #[test]
    fn an_empty_book_changes_no_offer() {
        use crate::planner::optimize::tests_support::offer;
        let offers = vec![offer("c5.xlarge", Market::Spot, 4.0, 8192, 0, 0.06)];
        let mut same = offers.clone();
        SpotRiskBook::new(SpotRiskConfig::default()).apply(&mut same);
        assert_eq!(same, offers);
        // Evidence for another pool changes none either.
        let mut book = SpotRiskBook::new(SpotRiskConfig::default());
        book.observe_interruptions(&region_key("eu-west-1", "c5.xlarge"), 3.0);
        book.apply(&mut same);
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
