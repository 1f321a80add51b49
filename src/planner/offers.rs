//! Offers: one purchasable pool (provider, region, zone, instance type,
//! market) with its shape, price and risk. The optimiser works on a plain
//! slice of offers, so it is independent of where prices come from (price
//! book, catalogue, a test).

use crate::events::{Market, Millis, Text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Provider, region, zone (`-` when none), instance type and market: the
/// parts of a pool key ([`Offer::pool_order`]).
pub(crate) type SortKey<'a> = (&'a str, &'a str, &'a str, &'a str, Market);

/// One pool the planner may buy from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub provider: Text,
    pub region: Text,
    pub zone: Option<Text>,
    pub instance_type: Text,
    pub market: Market,
    pub vcpus: f64,
    pub memory_mib: i64,
    pub gpus: i32,
    /// CPU architecture from the catalogue (`amd64`, `arm64`).
    #[serde(default)]
    pub arch: Text,
    /// List price. For reserved capacity this is the (already paid) nominal
    /// rate: reported, but its marginal cost is 0.
    pub usd_per_hour: f64,
    /// On-demand price of the same type and region when known (the spot
    /// risk model and stale-price fallback use it).
    pub on_demand_usd_per_hour: Option<f64>,
    /// Expected interruptions per instance-hour (0 for on-demand/reserved).
    pub interruption_rate_per_h: f64,
    /// Probability that a spot launch in the pool is refused for capacity,
    /// learned from spot signals (`planner::spot_risk`); 0 when nothing was
    /// learned (then it is left out of the serialized offer).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub launch_failure_p: f64,
    /// How many instances the pool can supply (reserved: the count owned).
    pub available: Option<i64>,
    /// When the price was last observed (event time).
    pub price_at: Millis,
    /// The price is older than the policy's `max_price_age_s`.
    pub stale: bool,
}

impl Offer {
    /// Pool-key order ([`Offer::pool_key`]) without building key strings.
    pub fn pool_order(&self, other: &Offer) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }

    /// What [`Offer::pool_order`] compares: the parts of the pool key.
    pub(crate) fn sort_key(&self) -> SortKey<'_> {
        (
            self.provider.as_str(),
            self.region.as_str(),
            self.zone.as_deref().unwrap_or("-"),
            self.instance_type.as_str(),
            self.market,
        )
    }

    /// Stable identity of the pool, used for sorting, diversification and
    /// interruption-rate overrides: `provider/region/zone/type/MARKET`.
    pub fn pool_key(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.provider,
            self.region,
            self.zone.as_deref().unwrap_or("-"),
            self.instance_type,
            self.market
        )
    }

    /// Marginal list price: what buying one more hour of this pool adds to
    /// the bill. Reserved capacity is already paid for.
    pub fn marginal_usd_per_hour(&self) -> f64 {
        match self.market {
            Market::Reserved => 0.0,
            _ => self.usd_per_hour,
        }
    }

    /// Expected cost per hour of *useful* work for jobs of `job_s` seconds
    /// that restart from scratch after an interruption (see
    /// [`spot_slowdown`]). A spot pool with a learned launch-failure
    /// probability `p` is served on-demand that share of the time (a
    /// refused launch falls back to on-demand capacity of the same type,
    /// as a fleet's fallback or the reactive scheduler does), so its
    /// expected cost is `(1 − p) · spot + p · on-demand`.
    pub fn expected_usd_per_hour(&self, job_s: f64, restart_s: f64) -> f64 {
        let spot = self.marginal_usd_per_hour()
            * spot_slowdown(self.effective_rate(), job_s / 3600.0, restart_s / 3600.0);
        let p = self.launch_failure_p;
        if self.market != Market::Spot || p <= 0.0 {
            return spot;
        }
        let fallback = self
            .on_demand_usd_per_hour
            .filter(|od| od.is_finite() && *od >= 0.0)
            .unwrap_or(self.usd_per_hour)
            .max(self.marginal_usd_per_hour());
        let p = p.min(1.0);
        (1.0 - p) * spot + p * fallback
    }

    pub fn effective_rate(&self) -> f64 {
        if self.market == Market::Spot {
            self.interruption_rate_per_h
        } else {
            0.0
        }
    }
}

/// Expected wall time to finish `t_h` hours of work that is lost on each
/// interruption (Poisson, rate `lambda` per hour) and takes `r_h` hours to
/// restart, divided by `t_h`: `(1/λ + r)(e^{λt} − 1) / t`. This is the
/// classic restart-from-scratch result; it is 1 at λ = 0, ≈ 1 + λ(t/2 + r)
/// for small λt, and grows exponentially for long jobs on risky pools —
/// exactly the case where spot stops being cheap. Capped at 1e6 to stay
/// finite (such a pool is never chosen).
pub fn spot_slowdown(lambda: f64, t_h: f64, r_h: f64) -> f64 {
    if lambda <= 0.0 || t_h <= 0.0 {
        return 1.0;
    }
    let x = (lambda * t_h).min(40.0);
    let f = (1.0 / lambda + r_h) * x.exp_m1() / t_h;
    f.clamp(1.0, 1e6)
}

/// Interruption-rate model for spot pools.
///
/// Without observed interruptions, a pool's rate is the policy's base rate
/// scaled by how close its spot price is to on-demand (a pool bid up towards
/// on-demand is contended; AWS Spot Advisor shows the same correlation):
/// `base × clamp((spot/od) / 0.35, 0.5, 4)`. Explicit overrides (by pool key,
/// `region/type` or `type`) win, so an operator or the backtest can feed
/// measured rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RiskModel {
    pub base_rate_per_h: f64,
    pub overrides: BTreeMap<String, f64>,
}

impl RiskModel {
    pub fn new(base_rate_per_h: f64) -> Self {
        RiskModel {
            base_rate_per_h,
            overrides: BTreeMap::new(),
        }
    }

    pub fn rate_for(&self, o: &Offer) -> f64 {
        if o.market != Market::Spot {
            return 0.0;
        }
        if self.overrides.is_empty() {
            return self.price_rate(o);
        }
        let keys = [
            o.pool_key(),
            format!("{}/{}", o.region, o.instance_type),
            o.instance_type.to_string(),
        ];
        for k in &keys {
            if let Some(r) = self.overrides.get(k) {
                return r.max(0.0);
            }
        }
        self.price_rate(o)
    }

    fn price_rate(&self, o: &Offer) -> f64 {
        match o.on_demand_usd_per_hour {
            Some(od) if od > 0.0 => {
                self.base_rate_per_h * ((o.usd_per_hour / od) / 0.35).clamp(0.5, 4.0)
            }
            _ => self.base_rate_per_h,
        }
    }

    /// Sets every offer's `interruption_rate_per_h` from this model.
    pub fn apply(&self, offers: &mut [Offer]) {
        for o in offers {
            o.interruption_rate_per_h = self.rate_for(o);
        }
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Filters an offer list by allowed markets/regions/providers/types
/// (empty lists allow everything).
pub fn filter_offers<'a>(
    offers: &'a [Offer],
    markets: &[Market],
    regions: &[String],
    providers: &[String],
    types: &[String],
) -> Vec<&'a Offer> {
    offers
        .iter()
        .filter(|o| markets.is_empty() || markets.contains(&o.market))
        .filter(|o| regions.is_empty() || regions.iter().any(|r| r == o.region))
        .filter(|o| {
            providers.is_empty()
                || providers
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&o.provider))
        })
        .filter(|o| types.is_empty() || types.iter().any(|t| t == o.instance_type))
        .collect()
}

/// Canonical architecture name (`x86_64` → `amd64`, `aarch64` → `arm64`).
pub fn canonical_arch(a: &str) -> String {
    canonical_arch_ref(a).into_owned()
}

/// [`canonical_arch`] without an allocation for names already canonical
/// (the planner compares every offer's architecture on every tick).
fn canonical_arch_ref(a: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let is = |n: &str| a.eq_ignore_ascii_case(n);
    if is("x86_64") || is("x86-64") || is("amd64") {
        Cow::Borrowed("amd64")
    } else if is("aarch64") || is("arm64") {
        Cow::Borrowed("arm64")
    } else if a.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(a.to_ascii_lowercase())
    } else {
        Cow::Borrowed(a)
    }
}

/// Burstable types (AWS `t2`, `t3`, `t3a`, `t4g`...) run on CPU credits and
/// throttle under sustained batch load, so fleets avoid them by default.
pub fn is_burstable(instance_type: &str) -> bool {
    let b = instance_type.as_bytes();
    b.len() > 1 && b[0] == b't' && b[1].is_ascii_digit()
}

/// Keeps offers whose architecture is allowed (empty: any; offers with an
/// unknown architecture pass) and, if asked, drops burstable types.
pub fn filter_shape<'a>(
    offers: Vec<&'a Offer>,
    archs: &[String],
    exclude_burstable: bool,
) -> Vec<&'a Offer> {
    let archs: Vec<String> = archs.iter().map(|a| canonical_arch(a)).collect();
    offers
        .into_iter()
        .filter(|o| {
            archs.is_empty()
                || o.arch.is_empty()
                || archs.iter().any(|a| *a == *canonical_arch_ref(&o.arch))
        })
        .filter(|o| !(exclude_burstable && is_burstable(&o.instance_type)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowdown_is_one_without_risk_and_grows_with_rate() {
        assert_eq!(spot_slowdown(0.0, 1.0, 0.1), 1.0);
        let a = spot_slowdown(0.05, 1.0, 0.05);
        let b = spot_slowdown(0.5, 1.0, 0.05);
        assert!(a > 1.0 && b > a);
        // small λt ≈ 1 + λ(t/2 + r)
        assert!((a - (1.0 + 0.05 * (0.5 + 0.05))).abs() < 0.01);
        assert!(spot_slowdown(100.0, 100.0, 1.0) <= 1e6);
    }
}
