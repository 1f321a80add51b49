//! What the simulated cluster can buy: instance shapes and, per pool
//! (type × market × region), a piecewise-constant price curve over time.
//!
//! The simulator does not read price files itself: it is handed curves built
//! from the shared price book (see `sim::inputs`), so the backtest prices
//! exactly what the planner sees. Curves carry a prefix integral so billing an
//! instance over any interval is `O(log n)`.

use crate::events::{Market, Millis};
use std::collections::HashMap;

/// One instance type's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: i64,
    pub gpus: i32,
}

/// Hourly price as a step function of time. Before the first point the first
/// price applies; after the last point the last price applies.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceCurve {
    times: Vec<Millis>,
    usd_per_hour: Vec<f64>,
    /// `cum[i]` = dollars accrued from `times[0]` to `times[i]`.
    cum: Vec<f64>,
}

const MS_PER_HOUR: f64 = 3_600_000.0;

impl PriceCurve {
    /// A constant price (on-demand).
    pub fn constant(usd_per_hour: f64) -> Self {
        PriceCurve {
            times: vec![0],
            usd_per_hour: vec![usd_per_hour],
            cum: vec![0.0],
        }
    }

    /// From `(time, price)` points in any order; later duplicates of a time
    /// win. Returns `None` when there are no points.
    pub fn from_points(mut pts: Vec<(Millis, f64)>) -> Option<Self> {
        if pts.is_empty() {
            return None;
        }
        pts.sort_by_key(|p| p.0);
        let mut times: Vec<Millis> = Vec::with_capacity(pts.len());
        let mut prices: Vec<f64> = Vec::with_capacity(pts.len());
        for (t, p) in pts {
            if times.last() == Some(&t) {
                *prices.last_mut().expect("non-empty") = p;
            } else if prices.last() == Some(&p) {
                // Same price again: no step.
            } else {
                times.push(t);
                prices.push(p);
            }
        }
        let mut cum = Vec::with_capacity(times.len());
        cum.push(0.0);
        for i in 1..times.len() {
            let dt = (times[i] - times[i - 1]) as f64;
            cum.push(cum[i - 1] + prices[i - 1] * dt / MS_PER_HOUR);
        }
        Some(PriceCurve {
            times,
            usd_per_hour: prices,
            cum,
        })
    }

    fn idx(&self, t: Millis) -> usize {
        // Index of the last point at or before t (0 when before the first).
        match self.times.binary_search(&t) {
            Ok(i) => i,
            Err(0) => 0,
            Err(i) => i - 1,
        }
    }

    /// Hourly price at `t` on a walk forward in time: `from` is where the
    /// previous call (at an earlier or equal time) left off. The same value
    /// as [`PriceCurve::at`], in steps over the points passed instead of a
    /// search per call.
    pub fn at_walking(&self, t: Millis, from: &mut usize) -> f64 {
        let mut i = (*from).min(self.times.len() - 1);
        while i + 1 < self.times.len() && self.times[i + 1] <= t {
            i += 1;
        }
        *from = i;
        self.usd_per_hour[i]
    }

    /// Hourly price at `t`.
    pub fn at(&self, t: Millis) -> f64 {
        self.usd_per_hour[self.idx(t)]
    }

    /// Dollars accrued from `times[0]` to `t` (negative before it).
    fn cum_at(&self, t: Millis) -> f64 {
        let i = self.idx(t);
        self.cum[i] + self.usd_per_hour[i] * (t - self.times[i]) as f64 / MS_PER_HOUR
    }

    /// Dollars for running over `[a, b)`.
    pub fn integral(&self, a: Millis, b: Millis) -> f64 {
        if b <= a {
            return 0.0;
        }
        self.cum_at(b) - self.cum_at(a)
    }

    /// Times (≥ `from`) at which the price steps above `threshold`.
    pub fn rises_above(&self, threshold: f64) -> Vec<Millis> {
        let mut out = Vec::new();
        for i in 0..self.times.len() {
            let above = self.usd_per_hour[i] > threshold;
            let was = i > 0 && self.usd_per_hour[i - 1] > threshold;
            if above && !was {
                out.push(self.times[i]);
            }
        }
        out
    }

    /// Mean price over `[a, b)` (the point price when the interval is empty).
    pub fn mean(&self, a: Millis, b: Millis) -> f64 {
        if b <= a {
            self.at(a)
        } else {
            self.integral(a, b) * MS_PER_HOUR / (b - a) as f64
        }
    }

    /// Mean price over the curve's own span (the point price if one point).
    pub fn mean_all(&self) -> f64 {
        let (a, b) = (self.times[0], *self.times.last().expect("non-empty"));
        self.mean(a, b)
    }

    pub fn points(&self) -> usize {
        self.times.len()
    }

    /// The lowest hourly price the curve ever takes.
    pub fn min_price(&self) -> f64 {
        self.usd_per_hour
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }
}

/// A place capacity can be bought: one type in one market and region.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub ty: usize,
    pub market: Market,
    pub region: String,
    pub curve: PriceCurve,
    /// Times the (spot) price rises above the type's on-demand price: with
    /// `SimConfig::interrupt_on_price_spike` such a rise reclaims the pool.
    pub spikes: Vec<Millis>,
}

/// Everything the simulator may buy.
#[derive(Debug, Clone, Default)]
pub struct SimPrices {
    pub types: Vec<InstanceType>,
    pub pools: Vec<Pool>,
    by_key: HashMap<(String, Market, String), usize>,
    type_by_name: HashMap<String, usize>,
    /// The on-demand pool of each type (first region seen), if any.
    od_pool: Vec<Option<usize>>,
}

impl SimPrices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or look up) an instance type; returns its index.
    pub fn add_type(&mut self, t: InstanceType) -> usize {
        if let Some(&i) = self.type_by_name.get(&t.name) {
            return i;
        }
        let i = self.types.len();
        self.type_by_name.insert(t.name.clone(), i);
        self.types.push(t);
        self.od_pool.push(None);
        i
    }

    pub fn type_index(&self, name: &str) -> Option<usize> {
        self.type_by_name.get(name).copied()
    }

    /// Add a pool for a known type. Spike times are computed against the
    /// type's on-demand price, so add on-demand pools first.
    pub fn add_pool(
        &mut self,
        ty: usize,
        market: Market,
        region: &str,
        curve: PriceCurve,
    ) -> usize {
        let key = (self.types[ty].name.clone(), market, region.to_string());
        let spikes = match (market, self.od_pool[ty]) {
            (Market::Spot, Some(od)) => {
                let od_price = self.pools[od].curve.at(0);
                curve.rises_above(od_price)
            }
            _ => Vec::new(),
        };
        let pool = Pool {
            ty,
            market,
            region: region.to_string(),
            curve,
            spikes,
        };
        if let Some(&i) = self.by_key.get(&key) {
            self.pools[i] = pool;
            return i;
        }
        let i = self.pools.len();
        self.pools.push(pool);
        self.by_key.insert(key, i);
        if market == Market::OnDemand && self.od_pool[ty].is_none() {
            self.od_pool[ty] = Some(i);
        }
        i
    }

    pub fn pool(&self, type_name: &str, market: Market, region: &str) -> Option<usize> {
        self.by_key
            .get(&(type_name.to_string(), market, region.to_string()))
            .copied()
    }

    pub fn on_demand_pool(&self, ty: usize) -> Option<usize> {
        self.od_pool[ty]
    }

    /// Any pool of the type in the market (first added), for commands that
    /// name no region we know.
    pub fn any_pool(&self, type_name: &str, market: Market) -> Option<usize> {
        let ty = self.type_index(type_name)?;
        self.pools
            .iter()
            .position(|p| p.ty == ty && p.market == market)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_integral_is_piecewise() {
        let c = PriceCurve::from_points(vec![(3_600_000, 2.0), (0, 1.0)]).unwrap();
        assert_eq!(c.at(-5), 1.0);
        assert_eq!(c.at(3_600_000), 2.0);
        // 1 h at $1 + 1 h at $2.
        assert!((c.integral(0, 7_200_000) - 3.0).abs() < 1e-9);
        // Before the first point the first price extends backwards.
        assert!((c.integral(-3_600_000, 0) - 1.0).abs() < 1e-9);
        assert!((c.mean(1_800_000, 5_400_000) - 1.5).abs() < 1e-9);
    }

    /// A forward walk reads what a search per time reads, at and between
    /// the points, before the first and after the last, repeats included.
    #[test]
    fn walking_reads_what_a_search_reads() {
        let pts = vec![(0, 1.0), (10, 2.0), (25, 1.5), (40, 3.0)];
        let c = PriceCurve::from_points(pts).unwrap();
        let mut from = 0;
        for t in [-5, 0, 0, 3, 10, 24, 25, 39, 40, 41, 1_000] {
            assert_eq!(c.at_walking(t, &mut from), c.at(t), "t {t}");
        }
    }

    #[test]
    fn spikes_against_on_demand() {
        let mut p = SimPrices::new();
        let t = p.add_type(InstanceType {
            name: "m5.large".into(),
            vcpus: 2,
            memory_mib: 8192,
            gpus: 0,
        });
        p.add_pool(
            t,
            Market::OnDemand,
            "us-east-1",
            PriceCurve::constant(0.096),
        );
        let s = p.add_pool(
            t,
            Market::Spot,
            "us-east-1",
            PriceCurve::from_points(vec![(0, 0.03), (10, 0.2), (20, 0.3), (30, 0.03), (40, 0.1)])
                .unwrap(),
        );
        assert_eq!(p.pools[s].spikes, vec![10, 40]);
        assert_eq!(p.pool("m5.large", Market::Spot, "us-east-1"), Some(s));
    }
}
