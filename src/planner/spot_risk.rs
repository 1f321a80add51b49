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

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

    /// Discounts all evidence by `elapsed_h` hours.
    pub fn forget(&mut self, elapsed_h: f64) {
        let hl = self.cfg.half_life_h;
        for (h, l) in self.pools.values_mut() {
            h.forget(elapsed_h, hl);
            l.forget(elapsed_h, hl);
        }
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
