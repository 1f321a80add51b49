//! The physical limit of a trace's cost: what its jobs would cost if every
//! job ran, from submission, on the cheapest capacity of the price data
//! that fits it, perfectly packed (a job pays only its share of an
//! instance: the largest of its vCPU, memory and GPU fractions, so the
//! resource that binds decides), with no idle time, no boot time, no
//! billing minimum and spot never interrupted.
//!
//! Left out on purpose (so no real fleet can go below it): boot and idle
//! time, packing waste and gang parts on whole instances, interruptions
//! and their lost work, and the queueing a finite fleet would need. The
//! price a job pays is the pool's price curve integrated over the job's own
//! run from its submission, so time-varying spot prices are honoured.

use super::prices::SimPrices;
use super::trace::Workload;
use crate::events::{Market, Millis};

/// The limit over a whole trace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LowerBound {
    /// Cheapest of every market in the price data (spot, uninterrupted).
    pub usd: f64,
    /// On-demand pools only.
    pub on_demand_usd: f64,
}

/// The share of one instance of pool `p` a job of `mcpu`, `mem`, `gpus`
/// takes when perfectly packed (∞ when the type lacks a resource it needs).
fn share(prices: &SimPrices, p: usize, mcpu: i64, mem: i64, gpus: i32) -> f64 {
    let t = &prices.types[prices.pools[p].ty];
    let frac = |need: f64, have: f64| {
        if need <= 0.0 {
            0.0
        } else if have <= 0.0 {
            f64::INFINITY
        } else {
            need / have
        }
    };
    frac(mcpu as f64, t.vcpus as f64 * 1000.0)
        .max(frac(mem as f64, t.memory_mib as f64))
        .max(frac(gpus as f64, t.gpus as f64))
}

/// The limit of `workload` on `prices` (see the module doc).
pub fn lower_bound(workload: &Workload, prices: &SimPrices) -> LowerBound {
    let mins: Vec<f64> = prices.pools.iter().map(|p| p.curve.min_price()).collect();
    let mut out = LowerBound::default();
    for j in &workload.jobs {
        if j.cancelled_in_queue || j.runtime_ms <= 0 {
            continue;
        }
        let (a, b): (Millis, Millis) = (j.submit, j.submit + j.runtime_ms);
        let hours = j.runtime_ms as f64 / 3_600_000.0;
        let mut best = f64::INFINITY;
        let mut best_od = f64::INFINITY;
        for (p, pool) in prices.pools.iter().enumerate() {
            let od = pool.market == Market::OnDemand;
            if !od && pool.market != Market::Spot {
                continue;
            }
            let sh = share(prices, p, j.mcpu, j.memory_mib, j.gpus);
            if !sh.is_finite() {
                continue;
            }
            // The pool's lowest price bounds its cost from below: skip the
            // integral when even that cannot win.
            let floor = sh * mins[p] * hours;
            if floor >= best && (!od || floor >= best_od) {
                continue;
            }
            let usd = sh * pool.curve.integral(a, b);
            best = best.min(usd);
            if od {
                best_od = best_od.min(usd);
            }
        }
        if best.is_finite() {
            out.usd += best;
        }
        if best_od.is_finite() {
            out.on_demand_usd += best_od;
        }
    }
    out
}
