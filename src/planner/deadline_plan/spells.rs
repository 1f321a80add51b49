//! Age-dependent capacity hazards learned from a pool's spells.
//!
//! Measured spot markets are not memoryless: up-spells are heavy-tailed
//! (most last under an hour, a few last days) and most outages are short
//! flaps. So the chance that capacity goes (or comes back) in the next step
//! depends on how long the current spell has lasted — its *age*. This
//! module learns that dependence the way survival analysis does, with a
//! **piecewise-constant hazard** (the piecewise-exponential model): spell
//! ages are cut into buckets ([`AgeBuckets`]) and each bucket's rate is
//! events ÷ exposure of the spells that passed through it.
//!
//! Why buckets of doubling width: spell lengths spread over three orders of
//! magnitude (minutes to days), so equal evidence per bucket needs
//! log-spaced edges; the first bucket is one decision step, the edges after
//! it are hours (0.1 · 2^k h up to 6.4 h), fixed by the market's time scale,
//! not by any trace.
//!
//! Why shrinkage: a day of history holds a few dozen spells, too few to
//! trust every bucket alone. Each bucket starts as if **one pseudo-spell**
//! at the pool's pooled rate had crossed it (prior exposure = the bucket's
//! width, prior events = pooled rate × width), so a bucket follows its own
//! evidence once real spells have crossed it and the pooled rate before.
//! The pooled rate itself has the prior of [`super::super::spot_risk`]
//! (the policy's constant rate, worth `prior_hours`). With a constant true
//! hazard every bucket converges on it and the plan is the Markov one.
//!
//! Evidence is discounted with the same half-life as the rest of the learned
//! risk. Pure: the caller says when a step has passed; no clock.

/// Hour edges of the age buckets after the first (one step) bucket.
pub const AGE_EDGES_H: [f64; 7] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4];

/// Age buckets for one decision step: bucket 0 is a spell's first step,
/// then the hour edges of [`AGE_EDGES_H`] above one step; the last bucket
/// is open.
#[derive(Debug, Clone, PartialEq)]
pub struct AgeBuckets {
    step_h: f64,
    /// Lower edge of each bucket, hours (bucket 0: 0).
    lower_h: Vec<f64>,
}

impl AgeBuckets {
    pub fn new(step_h: f64) -> Self {
        let step_h = step_h.max(1e-9);
        let mut lower_h = vec![0.0, step_h];
        lower_h.extend(AGE_EDGES_H.iter().filter(|&&e| e > step_h * (1.0 + 1e-9)));
        AgeBuckets { step_h, lower_h }
    }

    pub fn len(&self) -> usize {
        self.lower_h.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lower_h.is_empty()
    }

    pub fn step_h(&self) -> f64 {
        self.step_h
    }

    /// The bucket of a spell `age_h` hours old.
    pub fn of(&self, age_h: f64) -> usize {
        let eps = self.step_h * 1e-6;
        self.lower_h
            .iter()
            .rposition(|&l| l <= age_h + eps)
            .unwrap_or(0)
    }

    /// Width of bucket `b`, hours; the open last bucket counts as wide as
    /// its lower edge (the doubling continued).
    pub fn width_h(&self, b: usize) -> f64 {
        match self.lower_h.get(b + 1) {
            Some(up) => up - self.lower_h[b],
            None => self.lower_h[b].max(self.step_h),
        }
    }

    /// Probability that a spell in bucket `b` is in the next bucket one step
    /// later (it survived): one over the bucket's width in steps, 1 for the
    /// one-step first bucket, 0 for the last. A geometric sojourn keeps the
    /// plan's state small (a bucket, not an exact age).
    pub fn advance_p(&self, b: usize) -> f64 {
        if b + 1 >= self.len() {
            0.0
        } else {
            (self.step_h / self.width_h(b)).min(1.0)
        }
    }
}

/// Discounted exposure and events per age bucket of one kind of spell.
#[derive(Debug, Clone, PartialEq)]
pub struct SpellStats {
    pub exposure_h: Vec<f64>,
    pub events: Vec<f64>,
}

impl SpellStats {
    pub fn new(buckets: usize) -> Self {
        SpellStats {
            exposure_h: vec![0.0; buckets],
            events: vec![0.0; buckets],
        }
    }

    fn scale(&mut self, w: f64) {
        self.exposure_h.iter_mut().for_each(|x| *x *= w);
        self.events.iter_mut().for_each(|x| *x *= w);
    }
}

/// Prior of a pooled rate: mean per hour and weight in hours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePrior {
    pub rate_per_h: f64,
    pub hours: f64,
}

/// The shrunk hazard per bucket (per hour) of the spells in `stats` (one
/// pool, or several pooled): see the module docs.
pub fn age_hazards(buckets: &AgeBuckets, stats: &[&SpellStats], prior: RatePrior) -> Vec<f64> {
    let n = buckets.len();
    let sum = |f: &dyn Fn(&SpellStats) -> &Vec<f64>, b: usize| -> f64 {
        stats
            .iter()
            .map(|s| f(s).get(b).copied().unwrap_or(0.0))
            .sum()
    };
    let exposure: Vec<f64> = (0..n).map(|b| sum(&|s| &s.exposure_h, b)).collect();
    let events: Vec<f64> = (0..n).map(|b| sum(&|s| &s.events, b)).collect();
    let hours = prior.hours.max(1e-9);
    let pooled = (prior.rate_per_h.max(0.0) * hours + events.iter().sum::<f64>())
        / (hours + exposure.iter().sum::<f64>());
    (0..n)
        .map(|b| {
            let w = buckets.width_h(b);
            (events[b] + pooled * w) / (exposure[b] + w)
        })
        .collect()
}

/// Expected time until the spell ends, hours, from each bucket, under the
/// per-bucket hazards `rates` (the plan's geometric bucket sojourns, in
/// continuous time: leave bucket `b` at rate λ_b + 1/width_b).
pub fn expected_residual_h(buckets: &AgeBuckets, rates: &[f64]) -> Vec<f64> {
    let n = buckets.len();
    let mut out = vec![0.0; n];
    for b in (0..n).rev() {
        let lam = rates.get(b).copied().unwrap_or(0.0).max(1e-9);
        out[b] = if b + 1 == n {
            1.0 / lam
        } else {
            let adv = 1.0 / buckets.width_h(b);
            (1.0 + adv * out[b + 1]) / (lam + adv)
        };
    }
    out
}

/// One pool's capacity spells, learned online: the current state and age,
/// and the up- and down-spell statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct SpellLearner {
    buckets: AgeBuckets,
    half_life_h: f64,
    pub up: SpellStats,
    pub down: SpellStats,
    state: Option<bool>,
    /// Age of the current spell; `None` until a change was seen (the spell
    /// began before observation: its age is unknown, its evidence skipped).
    age_h: Option<f64>,
    /// Time observed so far (a lower bound on an unknown age).
    seen_h: f64,
}

impl SpellLearner {
    pub fn new(buckets: AgeBuckets, half_life_h: f64) -> Self {
        let n = buckets.len();
        SpellLearner {
            buckets,
            half_life_h,
            up: SpellStats::new(n),
            down: SpellStats::new(n),
            state: None,
            age_h: None,
            seen_h: 0.0,
        }
    }

    pub fn buckets(&self) -> &AgeBuckets {
        &self.buckets
    }

    /// Records the state seen one step after the last observation (the
    /// first call only sets the state).
    pub fn observe(&mut self, available: bool) {
        let dt = self.buckets.step_h;
        let w = crate::pricing::spot_risk::half_life_weight(dt, self.half_life_h);
        self.up.scale(w);
        self.down.scale(w);
        let Some(was) = self.state else {
            self.state = Some(available);
            return;
        };
        self.seen_h += dt;
        if let Some(age) = self.age_h {
            let b = self.buckets.of(age);
            let st = if was { &mut self.up } else { &mut self.down };
            st.exposure_h[b] += dt;
            if available != was {
                st.events[b] += 1.0;
            }
        }
        if available != was {
            self.state = Some(available);
            self.age_h = Some(0.0);
        } else if let Some(age) = self.age_h.as_mut() {
            *age += dt;
        }
    }

    /// Capacity now (`None` before the first observation).
    pub fn state(&self) -> Option<bool> {
        self.state
    }

    /// Age of the current spell, hours (the time observed when the spell
    /// began before observation started).
    pub fn age_h(&self) -> f64 {
        self.age_h.unwrap_or(self.seen_h)
    }

    pub fn bucket(&self) -> usize {
        self.buckets.of(self.age_h())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn buckets_follow_the_step_and_hour_edges() {
        let b = AgeBuckets::new(0.1);
        assert_eq!(b.len(), 8);
        assert_eq!(b.of(0.0), 0);
        assert_eq!(b.of(0.1), 1);
        assert_eq!(b.of(0.3), 2);
        assert_eq!(b.of(100.0), 7);
        assert!((b.advance_p(0) - 1.0).abs() < 1e-12);
        assert!((b.advance_p(2) - 0.5).abs() < 1e-12); // [0.2, 0.4): 2 steps
        assert_eq!(b.advance_p(7), 0.0);
        let fine = AgeBuckets::new(0.05);
        assert_eq!(fine.len(), 9);
        assert_eq!(fine.of(0.05), 1);
        assert_eq!(fine.of(0.1), 2);
    }

    /// Spells of exactly 3 steps up, 1 step down (tick 0.1 h): an up-spell
    /// ends in the step from age 0.2 h, so bucket [0.2, 0.4) holds every
    /// event: 1 event per 0.1 h of exposure there (10/h, less the one
    /// pseudo-spell's pull), none in buckets 0 and 1.
    #[test]
    fn hand_worked_spells_land_in_their_age_buckets() {
        let b = AgeBuckets::new(0.1);
        let mut l = SpellLearner::new(b.clone(), 0.0);
        let pattern = [true, true, true, false];
        for i in 0..4 * 200 {
            l.observe(pattern[i % 4]);
        }
        assert!(l.up.events[0] == 0.0 && l.up.events[1] == 0.0);
        assert!((l.up.events[2] - 199.0).abs() < 1e-9, "{:?}", l.up.events);
        assert!((l.up.exposure_h[2] - 19.9).abs() < 1e-9);
        assert!((l.up.exposure_h[0] - 19.9).abs() < 1e-9);
        let prior = RatePrior {
            rate_per_h: 0.01,
            hours: 4.0,
        };
        let h = age_hazards(&b, &[&l.up], prior);
        assert!(h[2] > 9.0 && h[0] < 0.1 && h[1] < 0.1, "{h:?}");
        // Down-spells last one step: all their events in bucket 0.
        let d = age_hazards(&b, &[&l.down], prior);
        assert!(d[0] > 9.0, "{d:?}");
        // Age: the last observation was down, one step after the flip at
        // the 4th tick: age 0 (the flip's own tick).
        assert_eq!(l.state(), Some(false));
        assert_eq!(l.bucket(), 0);
    }

    /// A memoryless pool: every bucket converges on its one rate.
    #[test]
    fn constant_hazard_is_learned_in_every_bucket() {
        let b = AgeBuckets::new(0.1);
        let mut l = SpellLearner::new(b.clone(), 0.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (lam, mu) = (0.5f64, 2.0f64);
        let (pl, pm) = (1.0 - (-lam * 0.1).exp(), 1.0 - (-mu * 0.1).exp());
        let mut up = true;
        for _ in 0..400_000 {
            l.observe(up);
            if rng.random_bool(if up { pl } else { pm }) {
                up = !up;
            }
        }
        let prior = RatePrior {
            rate_per_h: 0.01,
            hours: 4.0,
        };
        // Discrete steps: the per-step probability, read as a rate.
        let want_up = pl / 0.1;
        for (i, h) in age_hazards(&b, &[&l.up], prior).iter().enumerate() {
            assert!((h - want_up).abs() < 0.1 * want_up, "bucket {i}: {h}");
        }
        let want_dn = pm / 0.1;
        let d = age_hazards(&b, &[&l.down], prior);
        for h in &d[..5] {
            assert!((h - want_dn).abs() < 0.1 * want_dn, "{d:?}");
        }
    }

    #[test]
    fn residual_life_of_a_constant_hazard_is_its_mean() {
        let b = AgeBuckets::new(0.1);
        let r = expected_residual_h(&b, &vec![0.25; b.len()]);
        for x in r {
            assert!((x - 4.0).abs() < 1e-9);
        }
        // A falling hazard: old spells last longer.
        let falling: Vec<f64> = (0..b.len()).map(|i| 4.0 / (1 + i) as f64).collect();
        let r = expected_residual_h(&b, &falling);
        assert!(r.windows(2).all(|w| w[0] < w[1]), "{r:?}");
    }
}
