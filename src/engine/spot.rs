//! What the engine learns of spot pools from [`SpotSignal`]s: each pool's
//! interruption hazard and launch-failure probability
//! ([`SpotRiskBook`]), which the planner lays over its constant-rate prior
//! (`planner::spot_risk`).
//!
//! Evidence, all in event time (the engine reads no clock):
//!
//! - interruptions: each warning counts 1 (a rebalance recommendation
//!   `rebalance_weight`) in its pool, `region/zone/type` when the signal
//!   names a zone, else `region/type`;
//! - exposure: the spot instance-hours the scheduler reports busy, per
//!   `region/type`: each completed job that ran on spot adds its
//!   `vcpu_seconds` over its instance type's vCPUs. The engine does not see
//!   the fleet itself; what it commanded is no measure of what it held (an
//!   actuator meets a floor with any capacity, and a refused pool holds
//!   nothing), while busy hours are hours it certainly held. Idle hours
//!   and interrupted attempts are left out, so the hazard errs high;
//! - launches: per decision tick and `region/type`, the refused launches
//!   reported since the last tick (at most one per commanded instance, at
//!   least one: a retry loop reporting each attempt counts once per
//!   instance) against the commanded instances, so the probability reads as
//!   the share of the time the pool refuses what it is asked for.
//!
//! Evidence fades with the book's half-lives, advanced at each decision
//! tick by the event time since the one before.
//!
//! Nothing is learned, and nothing changes in the plans, until the first
//! signal arrives: without a spot-signal feed the engine plans exactly as
//! it did without this module. The learner is part of the checkpointed
//! [`super::EngineState`] (left out of it while unused), so a restored
//! engine goes on from the same evidence.

use crate::events::{InstanceAllocation, JobCompleted, Market, Millis, SpotSignal, SpotSignalKind};
use crate::pricing::spot_risk::{region_key, zone_key, SpotRiskBook, SpotRiskConfig};
use crate::pricing::Catalog;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long a warned instance id is remembered to tell a redelivered copy
/// of its signal from a new one (event time).
const SEEN_FOR_MS: Millis = 6 * 3_600_000;

/// The engine's spot learning state (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpotLearner {
    /// None until the first signal.
    book: Option<SpotRiskBook>,
    /// The decision tick the evidence was last advanced to.
    advanced_to: Option<Millis>,
    /// Per environment, its last command's spot instances per `region/type`.
    commanded: BTreeMap<String, Vec<(String, i64)>>,
    /// Refused launches reported since the last tick, per book key, and the
    /// `region/type` each key belongs to.
    refused: BTreeMap<String, (String, f64)>,
    /// `KIND/instance-id` of signals applied, with their time, to tell a
    /// copy from a new signal (a string key: the checkpoint is JSON).
    seen: BTreeMap<String, Millis>,
}

impl SpotLearner {
    /// Nothing learned (the checkpoint leaves it out).
    pub fn is_empty(&self) -> bool {
        self.book.is_none()
    }

    /// The learned risk, once a signal arrived.
    pub fn book(&self) -> Option<&SpotRiskBook> {
        self.book.as_ref()
    }

    /// Whether `s` is a copy of a signal already applied: one naming the
    /// same instance for the same reason (a signal without an instance id
    /// cannot be told from a repeat and is always news).
    pub fn is_copy(&self, s: &SpotSignal) -> bool {
        s.instance_id
            .as_deref()
            .is_some_and(|id| self.seen.contains_key(&seen_key(s.kind, id)))
    }

    /// Take one signal in.
    pub fn on_signal(&mut self, s: &SpotSignal) {
        if let Some(id) = s.instance_id.as_deref() {
            self.seen.insert(seen_key(s.kind, id), s.at);
        }
        let book = self
            .book
            .get_or_insert_with(|| SpotRiskBook::new(SpotRiskConfig::default()));
        let region = region_key(&s.region, &s.instance_type);
        let key = match s.zone.as_deref() {
            Some(z) => zone_key(&s.region, z, &s.instance_type),
            None => region.clone(),
        };
        let n = f64::from(s.count.max(0));
        match s.kind {
            SpotSignalKind::InterruptionWarning => book.observe_interruptions(&key, n),
            SpotSignalKind::RebalanceRecommendation => {
                let w = book.cfg.rebalance_weight;
                book.observe_interruptions(&key, n * w);
            }
            SpotSignalKind::CapacityUnavailable => {
                self.refused.entry(key).or_insert((region, 0.0)).1 += n;
            }
        }
    }

    /// What `env`'s latest plan commands on spot (call after each plan;
    /// ignored until a signal arrived).
    pub fn commanded(&mut self, env: &str, mix: &[InstanceAllocation]) {
        if self.book.is_none() {
            return;
        }
        let spot: Vec<(String, i64)> = mix
            .iter()
            .filter(|a| a.market == Market::Spot && a.count > 0)
            .map(|a| (region_key(&a.region, &a.instance_type), i64::from(a.count)))
            .collect();
        match self.commanded.get_mut(env) {
            Some(v) => *v = spot,
            None if spot.is_empty() => {}
            None => {
                self.commanded.insert(env.to_string(), spot);
            }
        }
    }

    /// A completed job: its busy spot hours are exposure of its pool
    /// (ignored until a signal arrived, or when the job did not run on
    /// spot or its type is unknown to the catalogue).
    pub fn on_completed(&mut self, c: &JobCompleted, catalog: &Catalog) {
        let Some(book) = self.book.as_mut() else {
            return;
        };
        let (Some(Market::Spot), Some(ty), Some(region)) =
            (c.market, c.instance_type.as_deref(), c.region.as_deref())
        else {
            return;
        };
        let Some(vcpus) = catalog.spec(ty).map(|s| s.vcpus).filter(|v| *v > 0.0) else {
            return;
        };
        if c.vcpu_seconds.is_finite() && c.vcpu_seconds > 0.0 {
            book.observe_hours(&region_key(region, ty), c.vcpu_seconds / vcpus / 3600.0);
        }
    }

    /// Advance the evidence to the decision tick `now`: fade it by the
    /// event time since the last tick, and fold the refused launches
    /// reported since then against the instances commanded.
    pub fn advance(&mut self, now: Millis) {
        let Some(book) = self.book.as_mut() else {
            return;
        };
        let elapsed_h = self
            .advanced_to
            .map_or(0.0, |t| (now - t).max(0) as f64 / 3.6e6);
        if self.advanced_to.is_none_or(|t| now > t) {
            self.advanced_to = Some(now);
        }
        book.forget(elapsed_h);
        let mut held: BTreeMap<&str, i64> = BTreeMap::new();
        for (pool, n) in self.commanded.values().flatten() {
            *held.entry(pool.as_str()).or_default() += n;
        }
        let mut refused: BTreeMap<&str, f64> = BTreeMap::new();
        for (region, f) in self.refused.values() {
            *refused.entry(region.as_str()).or_default() += f;
        }
        // A refusal reported by a retry loop per attempt counts at most
        // once per commanded instance (at least once) per tick.
        let scale: BTreeMap<&str, f64> = refused
            .iter()
            .map(|(&r, &f)| {
                let cap = held.get(r).copied().unwrap_or(0).max(1) as f64;
                (r, if f > cap { cap / f } else { 1.0 })
            })
            .collect();
        for (key, (region, f)) in &self.refused {
            let f = f * scale.get(region.as_str()).copied().unwrap_or(1.0);
            book.observe_launch_weights(key, f, f);
        }
        for (&pool, &n) in &held {
            let n = n as f64;
            // The instances asked for and not refused held this tick.
            let failed = refused.get(pool).map_or(0.0, |f| f * scale[pool]);
            book.observe_launch_weights(pool, (n - failed).max(0.0), 0.0);
        }
        self.refused.clear();
        self.seen.retain(|_, at| *at + SEEN_FOR_MS >= now);
    }
}

fn seen_key(kind: SpotSignalKind, id: &str) -> String {
    format!("{}/{id}", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(at: Millis, kind: SpotSignalKind, zone: Option<&str>, count: i32) -> SpotSignal {
        SpotSignal {
            at,
            kind,
            region: "us-east-1".into(),
            zone: zone.map(Into::into),
            instance_type: "c5.xlarge".into(),
            instance_id: None,
            count,
        }
    }

    fn spot(n: i32) -> Vec<InstanceAllocation> {
        vec![InstanceAllocation {
            instance_type: "c5.xlarge".into(),
            market: Market::Spot,
            region: "us-east-1".into(),
            count: n,
        }]
    }

    const H: Millis = 3_600_000;

    /// Ten busy c5.xlarge (4 vCPUs) for `ms`, reported as one completion.
    fn busy(at: Millis, ms: Millis) -> JobCompleted {
        JobCompleted {
            job_id: format!("j{at}").into(),
            compute_environment: "e".into(),
            started_at: at - ms,
            finished_at: at,
            status: crate::events::JobStatus::Succeeded,
            instance_type: Some("c5.xlarge".into()),
            market: Some(Market::Spot),
            region: Some("us-east-1".into()),
            vcpu_seconds: 10.0 * 4.0 * ms as f64 / 1000.0,
            max_memory_mib: None,
        }
    }

    /// A synthetic pool: 10 instances busy, interrupted at a known rate
    /// (one warning every 4 h among them: 0.025 per instance-hour); the
    /// learned hazard converges on it from the 0.01 prior.
    #[test]
    fn learned_hazard_converges_on_the_pool_rate() {
        let cat = Catalog::bundled();
        let mut l = SpotLearner::default();
        assert!(l.is_empty());
        // Before any signal nothing is kept.
        l.commanded("e", &spot(10));
        l.on_completed(&busy(0, H), &cat);
        l.advance(0);
        assert!(l.book().is_none());
        l.on_signal(&signal(0, SpotSignalKind::InterruptionWarning, None, 1));
        l.commanded("e", &spot(10));
        let mut t = 0;
        for step in 1..=20 * 24 * 12 {
            t = step * H / 12;
            l.on_completed(&busy(t, H / 12), &cat);
            if step % 48 == 0 {
                l.on_signal(&signal(t, SpotSignalKind::InterruptionWarning, None, 1));
            }
            l.advance(t);
            l.commanded("e", &spot(10));
        }
        // What the planner lays over a zone-less offer of the pool with the
        // prior 0.01/h: the book's own posterior of the pool.
        let (book, key) = (l.book().unwrap(), region_key("us-east-1", "c5.xlarge"));
        let rate = book.hazard_per_h(&key);
        assert!((rate - 0.025).abs() < 0.0025, "learned {rate} at {t}");
        // No refusal: the launch-failure probability fell far below the prior.
        let p = book.launch_failure(&key);
        assert!(p < 0.01, "{p}");
    }

    /// Refused launches raise the probability, at most once per commanded
    /// instance per tick, and it fades within hours once the pool holds.
    #[test]
    fn refusals_count_once_per_instance_and_fade() {
        let mut l = SpotLearner::default();
        l.on_signal(&signal(0, SpotSignalKind::CapacityUnavailable, None, 1));
        l.advance(0);
        l.commanded("e", &spot(4));
        // A retry loop reports 1000 refusals in one tick.
        l.on_signal(&signal(
            H / 12,
            SpotSignalKind::CapacityUnavailable,
            None,
            1000,
        ));
        l.advance(H / 12);
        let (_, lf) = l.book().unwrap().pools["us-east-1/c5.xlarge"];
        assert!(lf.failures <= 5.0 + 1e-9, "{lf:?}");
        let p_bad = l.book().unwrap().launch_failure("us-east-1/c5.xlarge");
        assert!(p_bad > 0.4, "{p_bad}");
        for step in 2..=12 * 6 {
            l.advance(step * H / 12);
        }
        let p_later = l.book().unwrap().launch_failure("us-east-1/c5.xlarge");
        assert!(p_later < 0.1, "{p_bad} → {p_later}");
    }

    /// The learner is checkpointed with the engine state, as JSON.
    #[test]
    fn the_learner_survives_a_json_checkpoint() {
        let mut l = SpotLearner::default();
        let mut s = signal(
            0,
            SpotSignalKind::InterruptionWarning,
            Some("us-east-1a"),
            2,
        );
        s.instance_id = Some("i-0abc".into());
        l.on_signal(&s);
        l.on_signal(&signal(0, SpotSignalKind::CapacityUnavailable, None, 3));
        l.commanded("e", &spot(4));
        l.advance(H);
        l.on_signal(&signal(H, SpotSignalKind::CapacityUnavailable, None, 1));
        let json = serde_json::to_string(&l).unwrap();
        let back: SpotLearner = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
        assert!(back.is_copy(&s));
    }

    #[test]
    fn a_copy_of_an_instance_signal_is_told_apart() {
        let mut l = SpotLearner::default();
        let mut s = signal(0, SpotSignalKind::InterruptionWarning, None, 1);
        s.instance_id = Some("i-0abc".into());
        assert!(!l.is_copy(&s));
        l.on_signal(&s);
        assert!(l.is_copy(&s));
        let mut r = s.clone();
        r.kind = SpotSignalKind::RebalanceRecommendation;
        assert!(!l.is_copy(&r));
        // Forgotten after SEEN_FOR_MS.
        l.advance(SEEN_FOR_MS + 1);
        assert!(!l.is_copy(&s));
    }
}
