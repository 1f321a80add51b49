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
        let w = half_life_weight(elapsed_h, half_life_h);
        self.exposure_h *= w;
        self.interruptions *= w;
    }

    /// Posterior mean hazard per instance-hour.
    pub fn rate_per_h(&self) -> f64 {
        (self.prior_rate_per_h * self.prior_hours + self.interruptions)
            / (self.prior_hours + self.exposure_h)
    }
}

/// The weight left to evidence `elapsed_h` hours old under exponential
/// forgetting with half-life `half_life_h`: 1 when nothing is forgotten (a
/// non-positive half-life or no time passed). Every learned spot figure
/// (hazards, launch failures, spell ages) forgets this way.
pub fn half_life_weight(elapsed_h: f64, half_life_h: f64) -> f64 {
    if half_life_h > 0.0 && elapsed_h > 0.0 {
        0.5f64.powf(elapsed_h / half_life_h)
    } else {
        1.0
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
        let w = half_life_weight(elapsed_h, half_life_h);
        self.attempts *= w;
        self.failures *= w;
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
