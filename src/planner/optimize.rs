//! The instance-mix optimiser: the cheapest expected-cost set of instances
//! that covers a demand (vCPU, memory, GPUs) within the caller's limits.
//!
//! Fleet mode solves an integer program with `good_lp` on the pure-Rust
//! `microlp` solver (simplex + branch and bound):
//!
//! ```text
//! minimise   Σ_i c_i x_i                c_i = marginal price × spot slowdown
//! subject to Σ_i vcpu_i x_i ≥ V,  Σ_i mem_i x_i ≥ M,  Σ_i gpu_i x_i ≥ G
//!            vcpu_i x_i ≤ max(s·V, vcpu_i)      for every spot pool i
//!            Σ_i list_i x_i ≤ max_usd_per_hour  (reserved counts 0)
//!            Σ_i c_i x_i · T ≤ max_usd_per_job
//!            0 ≤ x_i ≤ min(available_i, ⌈max_d need_d / res_id⌉), x_i ∈ ℤ
//! ```
//!
//! Single-instance mode (a job that must fit on one machine) is an exact
//! linear scan. See `docs/planner.md` for why and the complexity.

use super::offers::{filter_offers, filter_shape, Offer};
use crate::events::{Market, Millis};
use good_lp::{constraint, microlp, variable, Expression, ProblemVariables, Solution, SolverModel};
use serde::{Deserialize, Serialize};

/// Above this many candidate pools the fleet MILP keeps only the cheapest
/// ones (by stand-alone cost); below it the optimum is exact.
pub const MAX_MILP_OFFERS: usize = 48;

/// A demand to place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRequest {
    pub vcpus: f64,
    pub memory_mib: i64,
    pub gpus: i32,
    /// Expected runtime of the work; drives the spot risk (lost work grows
    /// with job length) and the per-job cost. Default one hour.
    pub duration_s: Option<i64>,
    /// Work must finish by then: spot pools whose expected completion time
    /// (with restarts) misses it are not used.
    pub deadline: Option<Millis>,
    pub max_usd_per_hour: Option<f64>,
    pub max_usd_per_job: Option<f64>,
    /// Allowed markets / regions / providers / types; empty = any.
    pub markets: Vec<Market>,
    pub regions: Vec<String>,
    pub providers: Vec<String>,
    pub instance_types: Vec<String>,
    /// `false`: one instance must hold the whole demand (a job).
    /// `true`: any number of instances (a fleet).
    pub fleet: bool,
    pub restart_overhead_s: i64,
    /// Largest share of the demand's vCPUs one spot pool may provide.
    pub max_spot_pool_share: f64,
    /// How many ranked alternatives to return besides the optimum.
    pub alternatives: usize,
    /// Spot risk: base interruption rate and measured per-pool overrides
    /// (see [`super::RiskModel`]); applied by [`super::optimal_instances`].
    pub spot_interruption_rate_per_h: f64,
    pub interruption_rates: std::collections::BTreeMap<String, f64>,
    /// Prices older than this are stale (see [`super::market`]).
    pub max_price_age_s: i64,
    /// Already-paid capacity the request may use first.
    pub reserved: Vec<crate::policy::ReservedInstances>,
    /// Allowed CPU architectures (`amd64`, `arm64`); empty = any.
    pub architectures: Vec<String>,
    /// Leave out burstable (CPU-credit) types.
    pub exclude_burstable: bool,
}

impl Default for InstanceRequest {
    fn default() -> Self {
        InstanceRequest {
            vcpus: 0.0,
            memory_mib: 0,
            gpus: 0,
            duration_s: None,
            deadline: None,
            max_usd_per_hour: None,
            max_usd_per_job: None,
            markets: Vec::new(),
            regions: Vec::new(),
            providers: Vec::new(),
            instance_types: Vec::new(),
            fleet: false,
            restart_overhead_s: 120,
            max_spot_pool_share: 0.5,
            alternatives: 5,
            spot_interruption_rate_per_h: crate::pricing::DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR,
            interruption_rates: std::collections::BTreeMap::new(),
            max_price_age_s: 6 * 3600,
            reserved: Vec::new(),
            architectures: vec!["amd64".to_string()],
            exclude_burstable: true,
        }
    }
}

impl InstanceRequest {
    pub fn duration_h(&self) -> f64 {
        self.duration_s.unwrap_or(3600).max(1) as f64 / 3600.0
    }
}

/// Instances bought from one pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChosenPool {
    pub provider: String,
    pub region: String,
    pub zone: Option<String>,
    pub instance_type: String,
    pub market: Market,
    pub count: i64,
    /// List price of one instance.
    pub usd_per_hour: f64,
    /// Risk-adjusted marginal cost of one instance (0 for reserved).
    pub expected_usd_per_hour: f64,
    pub interruption_rate_per_h: f64,
    pub stale_price: bool,
}

/// One candidate answer: a whole mix, with totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedChoice {
    pub rank: usize,
    pub pools: Vec<ChosenPool>,
    pub vcpus: f64,
    pub memory_mib: i64,
    pub gpus: i64,
    /// Marginal list spend rate (reserved counts 0).
    pub usd_per_hour: f64,
    /// Risk-adjusted spend rate per hour of useful work.
    pub expected_usd_per_hour: f64,
    /// Expected cost of running the demand for its duration.
    pub expected_job_usd: f64,
    /// "milp" (optimum over a fleet), "exact-scan" (single instance) or
    /// "single-pool" (an alternative using only one pool), or "lp-rounded"
    /// (a large fleet: LP relaxation rounded, see `lp_bound_usd_per_hour`).
    pub method: String,
    /// For "lp-rounded": the LP relaxation's risk-adjusted USD/h, a lower
    /// bound on the optimum; the answer is within
    /// `expected_usd_per_hour - lp_bound_usd_per_hour` of optimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lp_bound_usd_per_hour: Option<f64>,
}

/// Per-offer data the solver needs, computed once.
struct Cand<'a> {
    offer: &'a Offer,
    cost: f64,
    list: f64,
    ub: i64,
}

fn candidates<'a>(req: &InstanceRequest, offers: &[&'a Offer], now: Millis) -> Vec<Cand<'a>> {
    let t_h = req.duration_h();
    let r_s = req.restart_overhead_s.max(0) as f64;
    let avail_h = req.deadline.map(|d| (d - now) as f64 / 3.6e6);
    let mut out: Vec<Cand<'a>> = offers
        .iter()
        .copied()
        .filter(|o| o.vcpus > 0.0 && o.usd_per_hour.is_finite() && o.usd_per_hour >= 0.0)
        .filter_map(|o| {
            let cost = o.expected_usd_per_hour(t_h * 3600.0, r_s);
            if cost >= 1e5 {
                return None;
            }
            if let (Some(avail), Market::Spot) = (avail_h, o.market) {
                let slowdown = if o.marginal_usd_per_hour() > 0.0 {
                    cost / o.marginal_usd_per_hour()
                } else {
                    1.0
                };
                if slowdown * t_h > avail && t_h <= avail {
                    return None;
                }
            }
            let mut ub = needed_alone(req, o)?;
            if !req.fleet {
                ub = 1;
            }
            if let Some(a) = o.available {
                ub = ub.min(a);
            }
            if ub <= 0 {
                return None;
            }
            Some(Cand {
                offer: o,
                cost,
                list: o.marginal_usd_per_hour(),
                ub,
            })
        })
        .collect();
    // Pool-key order (offers kept across ticks are stored in it already,
    // which this stable sort then only checks).
    out.sort_by(|a, b| a.offer.pool_order(b.offer));
    out
}

/// Instances of `o` alone that cover the demand (None if it cannot: a
/// needed resource it lacks, or a single instance too small).
fn needed_alone(req: &InstanceRequest, o: &Offer) -> Option<i64> {
    let dims = [
        (req.vcpus, o.vcpus),
        (req.memory_mib as f64, o.memory_mib as f64),
        (req.gpus as f64, o.gpus as f64),
    ];
    let mut n: i64 = 0;
    for (need, have) in dims {
        if need <= 0.0 {
            continue;
        }
        if have <= 0.0 {
            return None;
        }
        if !req.fleet {
            if have + 1e-9 < need {
                return None;
            }
            n = n.max(1);
        } else {
            n = n.max((need / have - 1e-9).ceil() as i64);
        }
    }
    Some(n.max(if req.fleet { 0 } else { 1 }))
}

fn choice_from(cands: &[&Cand<'_>], counts: &[i64], t_h: f64, method: &str) -> RankedChoice {
    let mut pools = Vec::new();
    let (mut v, mut m, mut g, mut list, mut exp) = (0.0, 0i64, 0i64, 0.0, 0.0);
    for (c, &n) in cands.iter().zip(counts) {
        if n <= 0 {
            continue;
        }
        let o = c.offer;
        v += o.vcpus * n as f64;
        m += o.memory_mib * n;
        g += o.gpus as i64 * n;
        list += c.list * n as f64;
        exp += c.cost * n as f64;
        pools.push(ChosenPool {
            provider: o.provider.to_string(),
            region: o.region.to_string(),
            zone: o.zone.as_deref().map(str::to_string),
            instance_type: o.instance_type.to_string(),
            market: o.market,
            count: n,
            usd_per_hour: o.usd_per_hour,
            expected_usd_per_hour: c.cost,
            interruption_rate_per_h: o.effective_rate(),
            stale_price: o.stale,
        });
    }
    RankedChoice {
        rank: 0,
        pools,
        vcpus: v,
        memory_mib: m,
        gpus: g,
        usd_per_hour: list,
        expected_usd_per_hour: exp,
        expected_job_usd: exp * t_h,
        method: method.to_string(),
        lp_bound_usd_per_hour: None,
    }
}

/// A pool covering the demand by itself: `n` instances of candidate `i`,
/// ranked by `key` (expected USD/h plus [`tie`]).
#[derive(Debug, Clone, Copy)]
struct Alone {
    key: f64,
    n: i64,
    i: usize,
}

/// Tie-break: among equal expected costs prefer fewer resources bought
/// (less overshoot), then the pool key order (deterministic).
fn tie(o: &Offer) -> f64 {
    1e-9 * (o.vcpus + o.gpus as f64 * 8.0)
}

/// The ranked answers for a request over a set of offers: the optimum
/// first, then up to `req.alternatives` single-pool alternatives by
/// expected cost. Empty when nothing is feasible.
pub fn rank_offers(req: &InstanceRequest, offers: &[Offer], now: Millis) -> Vec<RankedChoice> {
    let offers = filter_shape(
        filter_offers(
            offers,
            &req.markets,
            &req.regions,
            &req.providers,
            &req.instance_types,
        ),
        &req.architectures,
        req.exclude_burstable,
    );
    let cands = candidates(req, &offers, now);
    let t_h = req.duration_h();
    if req.vcpus <= 0.0 && req.memory_mib <= 0 && req.gpus <= 0 {
        let mut c = choice_from(&[], &[], t_h, "milp");
        c.rank = 1;
        return vec![c];
    }
    // Stand-alone answers: each pool covering the demand by itself
    // ([`Alone`]); materialised lazily.
    let mut alone: Vec<Alone> = Vec::with_capacity(cands.len());
    for (i, c) in cands.iter().enumerate() {
        let Some(n) = needed_alone(req, c.offer) else {
            continue;
        };
        if n > c.ub {
            continue;
        }
        let (list, exp) = (c.list * n as f64, c.cost * n as f64);
        let ok = req.max_usd_per_hour.is_none_or(|cap| list <= cap + 1e-9)
            && req
                .max_usd_per_job
                .is_none_or(|cap| exp * t_h <= cap + 1e-9);
        if ok {
            let key = exp + tie(c.offer) * n as f64;
            alone.push(Alone { key, n, i });
        }
    }
    // In cost order, but only as far as it is read: the fleet solver reads
    // at most `MAX_MILP_OFFERS` and a plan without alternatives one, of
    // what can be thousands of pools (a full sort was a tenth of a
    // stretched replay). The index breaks ties, so the order is total and
    // the prefix is exactly a full sort's.
    let read = if req.alternatives > 0 {
        alone.len()
    } else if req.fleet {
        MAX_MILP_OFFERS.min(alone.len())
    } else {
        1.min(alone.len())
    };
    let by_cost = |a: &Alone, b: &Alone| a.key.total_cmp(&b.key).then(a.i.cmp(&b.i));
    if read > 0 && read < alone.len() {
        alone.select_nth_unstable_by(read - 1, by_cost);
    }
    alone[..read].sort_unstable_by(by_cost);
    let alone = &alone[..read];
    let method = if req.fleet {
        "single-pool"
    } else {
        "exact-scan"
    };
    let materialise = |a: &Alone| choice_from(&[&cands[a.i]], &[a.n], t_h, method);
    let mut out = Vec::new();
    if req.fleet {
        if let Some(best) = solve_fleet(req, &cands, alone) {
            out.push(best);
        }
    } else if let Some(first) = alone.first() {
        out.push(materialise(first));
    }
    if out.is_empty() {
        return out;
    }
    for a in alone {
        if out.len() > req.alternatives {
            break;
        }
        let ch = materialise(a);
        // One alternative per (type, market, region): other zones of the
        // same pool add nothing to the choice a user makes.
        let sig = |c: &RankedChoice| {
            c.pools
                .iter()
                .map(|p| (p.instance_type.clone(), p.market, p.region.clone()))
                .collect::<Vec<_>>()
        };
        if out.iter().any(|o| sig(o) == sig(&ch)) {
            continue;
        }
        out.push(ch);
    }
    for (i, c) in out.iter_mut().enumerate() {
        c.rank = i + 1;
    }
    out
}

/// Solves the fleet MILP over (at most [`MAX_MILP_OFFERS`]) candidates.
fn solve_fleet(req: &InstanceRequest, cands: &[Cand<'_>], alone: &[Alone]) -> Option<RankedChoice> {
    let t_h = req.duration_h();
    // Candidate pruning: exact below the threshold; above it, keep the
    // pools that are cheapest on their own plus every bounded reserved pool
    // (free, so always worth offering to the solver).
    let mut keep: Vec<usize> = if cands.len() <= MAX_MILP_OFFERS {
        (0..cands.len()).collect()
    } else {
        let mut k: Vec<usize> = cands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.offer.market == Market::Reserved)
            .map(|(i, _)| i)
            .collect();
        // At most `MAX_MILP_OFFERS` of `alone` are read: each is either
        // one of the reserved pools already kept or makes `k` one longer.
        for a in alone {
            if k.len() >= MAX_MILP_OFFERS {
                break;
            }
            if !k.contains(&a.i) {
                k.push(a.i);
            }
        }
        // Pools that only help in combination (e.g. memory-only) when
        // nothing covers alone: fall back to cheapest per vCPU.
        if k.len() < MAX_MILP_OFFERS {
            let mut rest: Vec<usize> = (0..cands.len()).filter(|i| !k.contains(i)).collect();
            rest.sort_by(|&a, &b| {
                (cands[a].cost / cands[a].offer.vcpus)
                    .total_cmp(&(cands[b].cost / cands[b].offer.vcpus))
                    .then(a.cmp(&b))
            });
            k.extend(rest.into_iter().take(MAX_MILP_OFFERS - k.len()));
        }
        k.sort_unstable();
        k
    };
    keep.dedup();
    let sel: Vec<&Cand<'_>> = keep.iter().map(|&i| &cands[i]).collect();
    if sel.is_empty() {
        return None;
    }
    // Exact MILP when the integer search space is small; otherwise the LP
    // relaxation rounded to a feasible fleet (gap reported, see docs).
    let space: f64 = sel.iter().map(|c| (c.ub as f64 + 1.0).ln()).sum();
    let exact = space <= (EXACT_SEARCH_SPACE as f64).ln();
    let lp = solve_model(req, &sel, t_h, !exact)?;
    if exact {
        let ch = choice_from(&sel, &lp.counts, t_h, "milp");
        return feasible(req, &sel, &lp.counts).then_some(ch);
    }
    let counts = round_lp(req, &sel, &lp.values, t_h)?;
    let mut ch = choice_from(&sel, &counts, t_h, "lp-rounded");
    ch.lp_bound_usd_per_hour = Some(lp.objective);
    Some(ch)
}

/// Above this many integer points (Π (ub_i + 1)) the fleet is solved by
/// LP relaxation + rounding instead of branch and bound.
pub const EXACT_SEARCH_SPACE: u64 = 2_000_000;

struct ModelSolution {
    values: Vec<f64>,
    counts: Vec<i64>,
    /// Objective without the tie-break (risk-adjusted USD/h).
    objective: f64,
}

/// Builds and solves the fleet program; `relaxed` drops integrality.
fn solve_model(
    req: &InstanceRequest,
    sel: &[&Cand<'_>],
    t_h: f64,
    relaxed: bool,
) -> Option<ModelSolution> {
    let mut vars = ProblemVariables::new();
    let x: Vec<_> = sel
        .iter()
        .map(|c| {
            let v = variable().min(0).max(c.ub.min(i32::MAX as i64) as f64);
            vars.add(if relaxed { v } else { v.integer() })
        })
        .collect();
    let mut obj = Expression::from(0.0);
    let (mut ev, mut em, mut eg, mut elist, mut ecost) = (
        Expression::from(0.0),
        Expression::from(0.0),
        Expression::from(0.0),
        Expression::from(0.0),
        Expression::from(0.0),
    );
    for (c, &xi) in sel.iter().zip(&x) {
        obj += (c.cost + tie(c.offer)) * xi;
        ev += c.offer.vcpus * xi;
        em += c.offer.memory_mib as f64 * xi;
        eg += c.offer.gpus as f64 * xi;
        elist += c.list * xi;
        ecost += c.cost * t_h * xi;
    }
    let mut model = vars.minimise(obj).using(microlp);
    if req.vcpus > 0.0 {
        model = model.with(constraint!(ev >= req.vcpus));
    }
    if req.memory_mib > 0 {
        model = model.with(constraint!(em >= req.memory_mib as f64));
    }
    if req.gpus > 0 {
        model = model.with(constraint!(eg >= req.gpus as f64));
    }
    if req.vcpus > 0.0 {
        for (c, &xi) in sel.iter().zip(&x) {
            if c.offer.market == Market::Spot {
                let cap = share_cap(req, c.offer);
                model = model.with(constraint!(c.offer.vcpus * xi <= cap));
            }
        }
    }
    if let Some(cap) = req.max_usd_per_hour {
        model = model.with(constraint!(elist <= cap + 1e-9));
    }
    if let Some(cap) = req.max_usd_per_job {
        model = model.with(constraint!(ecost <= cap + 1e-9));
    }
    let sol = model.solve().ok()?;
    let values: Vec<f64> = x.iter().map(|&v| sol.value(v).max(0.0)).collect();
    let counts: Vec<i64> = values.iter().map(|v| v.round() as i64).collect();
    let objective = sel.iter().zip(&values).map(|(c, v)| c.cost * v).sum();
    Some(ModelSolution {
        values,
        counts,
        objective,
    })
}

fn share_cap(req: &InstanceRequest, o: &Offer) -> f64 {
    (req.max_spot_pool_share.clamp(1e-6, 1.0) * req.vcpus).max(o.vcpus)
}

/// Every constraint of the program holds for `counts` (guards against
/// solver tolerances and checks rounded answers).
fn feasible(req: &InstanceRequest, sel: &[&Cand<'_>], counts: &[i64]) -> bool {
    let t_h = req.duration_h();
    let (mut v, mut m, mut g, mut list, mut cost) = (0.0, 0i64, 0i64, 0.0, 0.0);
    for (c, &n) in sel.iter().zip(counts) {
        if n < 0 || n > c.ub {
            return false;
        }
        if c.offer.market == Market::Spot
            && req.vcpus > 0.0
            && c.offer.vcpus * n as f64 > share_cap(req, c.offer) + 1e-9
        {
            return false;
        }
        v += c.offer.vcpus * n as f64;
        m += c.offer.memory_mib * n;
        g += c.offer.gpus as i64 * n;
        list += c.list * n as f64;
        cost += c.cost * n as f64;
    }
    v + 1e-6 >= req.vcpus
        && m >= req.memory_mib
        && g >= req.gpus as i64
        && req.max_usd_per_hour.is_none_or(|cap| list <= cap + 1e-9)
        && req
            .max_usd_per_job
            .is_none_or(|cap| cost * t_h <= cap + 1e-9)
}

/// Rounds an LP optimum to a feasible integer fleet: floor every count,
/// then add, one instance at a time, the pool with the lowest cost per
/// share of the remaining deficit that keeps every cap; finally drop
/// instances (dearest first) that are no longer needed. Deterministic; the
/// result is within a few instances' cost of the LP bound.
fn round_lp(req: &InstanceRequest, sel: &[&Cand<'_>], lp: &[f64], t_h: f64) -> Option<Vec<i64>> {
    let mut x: Vec<i64> = lp.iter().map(|v| (v + 1e-7).floor() as i64).collect();
    let need = [req.vcpus, req.memory_mib as f64, req.gpus as f64];
    let res = |c: &Cand<'_>| {
        [
            c.offer.vcpus,
            c.offer.memory_mib as f64,
            c.offer.gpus as f64,
        ]
    };
    let totals = |x: &[i64]| {
        let mut t = [0.0f64; 3];
        let (mut list, mut cost) = (0.0, 0.0);
        for (c, &n) in sel.iter().zip(x) {
            let r = res(c);
            for d in 0..3 {
                t[d] += r[d] * n as f64;
            }
            list += c.list * n as f64;
            cost += c.cost * n as f64;
        }
        (t, list, cost)
    };
    for _ in 0..100_000 {
        let (t, list, cost) = totals(&x);
        let deficit: Vec<f64> = (0..3).map(|d| (need[d] - t[d]).max(0.0)).collect();
        if deficit.iter().all(|&d| d <= 1e-6) {
            break;
        }
        let mut best: Option<(f64, usize)> = None;
        for (i, c) in sel.iter().enumerate() {
            if x[i] >= c.ub {
                continue;
            }
            if c.offer.market == Market::Spot
                && req.vcpus > 0.0
                && c.offer.vcpus * (x[i] + 1) as f64 > share_cap(req, c.offer) + 1e-9
            {
                continue;
            }
            if req
                .max_usd_per_hour
                .is_some_and(|cap| list + c.list > cap + 1e-9)
                || req
                    .max_usd_per_job
                    .is_some_and(|cap| (cost + c.cost) * t_h > cap + 1e-9)
            {
                continue;
            }
            let r = res(c);
            let covered: f64 = (0..3)
                .filter(|&d| deficit[d] > 0.0)
                .map(|d| r[d].min(deficit[d]) / need[d])
                .sum();
            if covered <= 0.0 {
                continue;
            }
            let score = (c.cost + tie(c.offer)) / covered;
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        let (_, i) = best?;
        x[i] += 1;
    }
    // Trim: dearest pools first.
    let mut order: Vec<usize> = (0..sel.len()).collect();
    order.sort_by(|&a, &b| sel[b].cost.total_cmp(&sel[a].cost).then(a.cmp(&b)));
    for i in order {
        while x[i] > 0 {
            x[i] -= 1;
            if !feasible(req, sel, &x) {
                x[i] += 1;
                break;
            }
        }
    }
    feasible(req, sel, &x).then_some(x)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn offer(t: &str, m: Market, v: f64, mem: i64, g: i32, p: f64) -> Offer {
        Offer {
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: None,
            instance_type: t.into(),
            market: m,
            vcpus: v,
            memory_mib: mem,
            gpus: g,
            arch: "amd64".into(),
            usd_per_hour: p,
            on_demand_usd_per_hour: None,
            interruption_rate_per_h: 0.0,
            launch_failure_p: 0.0,
            available: None,
            price_at: 0,
            stale: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::offer;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Enumerates every count vector (small cases) and returns the least
    /// expected cost meeting all constraints of the MILP.
    fn brute_force(req: &InstanceRequest, offers: &[Offer]) -> Option<f64> {
        let cands = candidates(req, &offers.iter().collect::<Vec<_>>(), 0);
        let t_h = req.duration_h();
        let mut best: Option<f64> = None;
        let mut counts = vec![0i64; cands.len()];
        loop {
            let (mut v, mut m, mut g, mut list, mut cost) = (0.0, 0i64, 0i64, 0.0, 0.0);
            let mut share_ok = true;
            for (c, &n) in cands.iter().zip(&counts) {
                v += c.offer.vcpus * n as f64;
                m += c.offer.memory_mib * n;
                g += c.offer.gpus as i64 * n;
                list += c.list * n as f64;
                cost += c.cost * n as f64;
                if c.offer.market == Market::Spot
                    && c.offer.vcpus * n as f64
                        > (req.max_spot_pool_share * req.vcpus).max(c.offer.vcpus) + 1e-9
                {
                    share_ok = false;
                }
            }
            let ok = share_ok
                && v + 1e-9 >= req.vcpus
                && m >= req.memory_mib
                && g >= req.gpus as i64
                && req.max_usd_per_hour.is_none_or(|c| list <= c + 1e-9)
                && req.max_usd_per_job.is_none_or(|c| cost * t_h <= c + 1e-9);
            if ok && best.is_none_or(|b| cost < b) {
                best = Some(cost);
            }
            // next count vector
            let mut i = 0;
            loop {
                if i == counts.len() {
                    return best;
                }
                if counts[i] < cands[i].ub {
                    counts[i] += 1;
                    break;
                }
                counts[i] = 0;
                i += 1;
            }
        }
    }

    #[test]
    fn milp_matches_brute_force_on_random_cases() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut checked = 0;
        for case in 0..150 {
            let n = rng.random_range(2..=4);
            let mut offers = Vec::new();
            for i in 0..n {
                let market =
                    [Market::Spot, Market::OnDemand, Market::Reserved][rng.random_range(0..3)];
                let v = [1.0, 2.0, 4.0, 8.0][rng.random_range(0..4)];
                let mut o = offer(
                    &format!("c{i}"),
                    market,
                    v,
                    (v as i64) * [1024, 2048, 4096][rng.random_range(0..3)],
                    if rng.random_bool(0.2) { 1 } else { 0 },
                    rng.random_range(0.01..1.0),
                );
                o.interruption_rate_per_h = rng.random_range(0.0..0.5);
                if market == Market::Reserved {
                    o.available = Some(rng.random_range(0..3));
                }
                offers.push(o);
            }
            let req = InstanceRequest {
                vcpus: rng.random_range(1..=12) as f64,
                memory_mib: rng.random_range(0..20_000),
                gpus: if rng.random_bool(0.2) { 1 } else { 0 },
                duration_s: Some(rng.random_range(600..7200)),
                max_usd_per_hour: rng.random_bool(0.3).then(|| rng.random_range(0.5..3.0)),
                max_usd_per_job: rng.random_bool(0.2).then(|| rng.random_range(0.5..5.0)),
                fleet: true,
                max_spot_pool_share: [0.34, 0.5, 1.0][rng.random_range(0..3)],
                ..Default::default()
            };
            let got = rank_offers(&req, &offers, 0);
            let want = brute_force(&req, &offers);
            match (got.first(), want) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    assert!(
                        (g.expected_usd_per_hour - w).abs() < 1e-6,
                        "case {case}: milp {} vs brute {w}: {req:?} {offers:?}",
                        g.expected_usd_per_hour
                    );
                    checked += 1;
                }
                (g, w) => panic!("case {case}: feasibility differs: {g:?} vs {w:?}"),
            }
        }
        assert!(checked > 50, "too few feasible cases ({checked})");
    }

    #[test]
    fn large_fleet_is_rounded_close_to_the_lp_bound() {
        let mut offers = Vec::new();
        for i in 0..60 {
            let v = [2.0, 4.0, 8.0, 16.0][i % 4];
            let mut o = offer(
                &format!("c{i}"),
                if i % 3 == 0 {
                    Market::OnDemand
                } else {
                    Market::Spot
                },
                v,
                (v as i64) * 4096,
                0,
                v * (if i % 3 == 0 { 0.05 } else { 0.015 } + 0.0005 * i as f64),
            );
            o.zone = Some(compact_str::format_compact!("z{}", i % 5));
            o.interruption_rate_per_h = 0.05;
            offers.push(o);
        }
        let req = InstanceRequest {
            vcpus: 5000.0,
            memory_mib: 5000 * 2048,
            fleet: true,
            max_spot_pool_share: 0.2,
            ..Default::default()
        };
        let best = &rank_offers(&req, &offers, 0)[0];
        assert_eq!(best.method, "lp-rounded");
        assert!(best.vcpus >= 5000.0);
        let bound = best.lp_bound_usd_per_hour.unwrap();
        // within the price of two of the largest instances of the bound
        assert!(
            best.expected_usd_per_hour - bound <= 2.0 * 16.0 * 0.1,
            "{best:?}"
        );
        assert!(best.pools.len() >= 5, "diversified: {best:?}");
    }

    #[test]
    fn reserved_is_used_first() {
        let mut r = offer("m5.xlarge", Market::Reserved, 4.0, 16384, 0, 0.192);
        r.available = Some(2);
        let offers = vec![
            r,
            offer("m5.xlarge", Market::OnDemand, 4.0, 16384, 0, 0.192),
            offer("m5.xlarge", Market::Spot, 4.0, 16384, 0, 0.05),
        ];
        let req = InstanceRequest {
            vcpus: 8.0,
            fleet: true,
            ..Default::default()
        };
        let best = &rank_offers(&req, &offers, 0)[0];
        assert_eq!(best.pools.len(), 1);
        assert_eq!(best.pools[0].market, Market::Reserved);
        assert_eq!(best.pools[0].count, 2);
        assert_eq!(best.usd_per_hour, 0.0);
        // More than reserved holds: the rest goes elsewhere, reserved still full.
        let req = InstanceRequest {
            vcpus: 16.0,
            fleet: true,
            max_spot_pool_share: 1.0,
            ..Default::default()
        };
        let best = &rank_offers(&req, &offers, 0)[0];
        let res: i64 = best
            .pools
            .iter()
            .filter(|p| p.market == Market::Reserved)
            .map(|p| p.count)
            .sum();
        assert_eq!(res, 2);
        assert!(best.pools.iter().any(|p| p.market == Market::Spot));
    }

    #[test]
    fn rising_interruption_rate_moves_off_spot() {
        let mut spot = offer("c5.large", Market::Spot, 2.0, 4096, 0, 0.04);
        let od = offer("c5.large", Market::OnDemand, 2.0, 4096, 0, 0.085);
        let req = InstanceRequest {
            vcpus: 2.0,
            duration_s: Some(4 * 3600),
            ..Default::default()
        };
        spot.interruption_rate_per_h = 0.02;
        let best = &rank_offers(&req, &[spot.clone(), od.clone()], 0)[0];
        assert_eq!(best.pools[0].market, Market::Spot);
        spot.interruption_rate_per_h = 0.5;
        let best = &rank_offers(&req, &[spot, od], 0)[0];
        assert_eq!(best.pools[0].market, Market::OnDemand);
    }

    #[test]
    fn spot_is_spread_across_pools() {
        let mut a = offer("c5.large", Market::Spot, 2.0, 4096, 0, 0.03);
        let mut b = offer("m5.large", Market::Spot, 2.0, 8192, 0, 0.035);
        let mut c = offer("c5.large", Market::Spot, 2.0, 4096, 0, 0.032);
        c.region = "us-west-2".into();
        for o in [&mut a, &mut b, &mut c] {
            o.interruption_rate_per_h = 0.02;
        }
        let req = InstanceRequest {
            vcpus: 60.0,
            fleet: true,
            max_spot_pool_share: 0.34,
            ..Default::default()
        };
        let best = &rank_offers(&req, &[a, b, c], 0)[0];
        assert_eq!(best.pools.len(), 3, "{best:?}");
        for p in &best.pools {
            assert!(p.count as f64 * 2.0 <= 0.34 * 60.0 + 2.0);
        }
    }

    #[test]
    fn max_usd_per_job_and_shape_are_respected() {
        let small = offer("c5.large", Market::OnDemand, 2.0, 4096, 0, 0.085);
        let gpu = offer("g5.xlarge", Market::OnDemand, 4.0, 16384, 1, 1.006);
        let req = InstanceRequest {
            vcpus: 2.0,
            gpus: 1,
            ..Default::default()
        };
        let best = &rank_offers(&req, &[small.clone(), gpu.clone()], 0)[0];
        assert_eq!(best.pools[0].instance_type, "g5.xlarge");
        let req = InstanceRequest {
            max_usd_per_job: Some(0.5),
            ..req
        };
        assert!(rank_offers(&req, &[small, gpu], 0).is_empty());
    }

    #[test]
    fn deadline_rules_out_slow_spot() {
        let mut spot = offer("c5.large", Market::Spot, 2.0, 4096, 0, 0.01);
        spot.interruption_rate_per_h = 0.3;
        let od = offer("c5.large", Market::OnDemand, 2.0, 4096, 0, 0.085);
        let req = InstanceRequest {
            vcpus: 2.0,
            duration_s: Some(3600),
            deadline: Some(3_700_000),
            ..Default::default()
        };
        let best = &rank_offers(&req, &[spot, od], 0)[0];
        assert_eq!(best.pools[0].market, Market::OnDemand);
    }
}
