//! Cost-aware planning: turns a demand forecast, the queue, the policy and
//! prices into an environment's capacity targets and instance mix.
//!
//! Pure: no I/O, no wall clock, no hash-map iteration, so the same inputs
//! always give the same plan and the same `reason` text (the engine hashes
//! commands by their inputs). See `docs/planner.md`.

pub mod deadline;
pub mod deadline_plan;
pub mod market;
pub mod offers;
pub mod optimize;
pub mod spot_risk;

pub use market::{offers_from_book, MarketView, ShapeFilter};
pub use offers::{spot_slowdown, Offer, RiskModel};
pub use optimize::{rank_offers, ChosenPool, InstanceRequest, RankedChoice};

use crate::events::{InstanceAllocation, Market, Millis, QuantileValue};
use crate::forecast::Forecast;
use crate::policy::{EnvPolicy, PolicyFile, PriorityClass, ReservedInstances};
use crate::pricing::book::BookStamp;
use crate::pricing::{Catalog, PriceBook};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What the previous tick decided, for the scale-in cool-down.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreviousPlan {
    pub desired_vcpus: i64,
    /// When `desired_vcpus` was last raised (event time).
    pub raised_at: Millis,
}

/// Everything one planning decision depends on.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub env: &'a str,
    /// Decision time (event time of the tick).
    pub now: Millis,
    /// Width of one forecast bucket.
    pub bucket_ms: i64,
    /// Concurrent vCPU demand forecast, `values[h][q]`, quantiles ascending.
    pub forecast: &'a Forecast,
    /// vCPUs of jobs submitted but not started / running now.
    pub queued_vcpus: f64,
    pub running_vcpus: f64,
    /// Highest priority among queued and running jobs (None: idle).
    pub top_priority: Option<i32>,
    /// A queued or running job's deadline falls within the lead time plus
    /// its runtime: provision at the high quantile.
    pub deadline_pressure: bool,
    /// Shape of the demand, from recent jobs (memory and GPUs per vCPU).
    pub memory_mib_per_vcpu: f64,
    pub gpus_per_vcpu: f64,
    pub policy: &'a EnvPolicy,
    pub book: &'a PriceBook,
    pub catalog: &'a Catalog,
    /// Already-paid instances of this environment, besides the policy's
    /// own `reserved` list (e.g. from an inventory feed).
    pub reserved: &'a [ReservedInstances],
    /// USD/h the environment may still burn within its budgets (None: no
    /// budget applies). Reserved capacity does not burn.
    pub budget_headroom_usd_per_h: Option<f64>,
    pub previous: Option<PreviousPlan>,
    /// Measured spot interruption rates per pool (see [`RiskModel`]).
    pub interruption_rates: &'a BTreeMap<String, f64>,
}

/// The decision for one environment at one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOutput {
    pub min_vcpus: i64,
    pub desired_vcpus: i64,
    pub max_vcpus: i64,
    pub instance_mix: Vec<InstanceAllocation>,
    pub constraints: BTreeMap<String, String>,
    pub quantile_used: f64,
    /// Peak of each forecast quantile over the lead time (for the
    /// command's `forecast` field).
    pub forecast_used: Vec<QuantileValue>,
    /// Marginal list spend rate of the mix (reserved counts 0).
    pub usd_per_hour: f64,
    /// Risk-adjusted spend rate (spot slowdown included).
    pub expected_usd_per_hour: f64,
    /// Expected cost of one vCPU-hour of work on this mix; the engine uses
    /// it for a submitted job's expected cost (budget commitment).
    pub usd_per_vcpu_hour: f64,
    pub reason: String,
}

/// Linear interpolation of a quantile level between forecast levels;
/// clamps outside the forecast's range.
pub fn quantile_value(levels: &[f64], values: &[f64], q: f64) -> f64 {
    let n = levels.len().min(values.len());
    if n == 0 {
        return 0.0;
    }
    if q <= levels[0] {
        return values[0];
    }
    for i in 1..n {
        if q <= levels[i] {
            let (l0, l1) = (levels[i - 1], levels[i]);
            let w = if l1 > l0 { (q - l0) / (l1 - l0) } else { 1.0 };
            return values[i - 1] + w * (values[i] - values[i - 1]);
        }
    }
    values[n - 1]
}

fn fmt_num(x: f64) -> String {
    format!("{x:.1}")
}

/// Plans one environment over an explicit list of offers (reserved pools
/// included, with `available` = count owned). [`plan_environment`] builds
/// the offers from the price book and catalogue and plans the same way.
pub fn plan_with_offers(input: &PlanInput<'_>, offers: &[Offer]) -> PlanOutput {
    let mut offers: Vec<Offer> = offers.to_vec();
    apply_risk(input, &mut offers);
    plan_priced(input, &offers)
}

/// Sets each offer's interruption rate from the policy's base rate and the
/// measured overrides.
fn apply_risk(input: &PlanInput<'_>, offers: &mut [Offer]) {
    let mut risk = RiskModel::new(input.policy.spot_interruption_rate_per_h);
    risk.overrides = input.interruption_rates.clone();
    risk.apply(offers);
}

/// [`plan_with_offers`] over offers whose interruption rates are already
/// set ([`apply_risk`]): borrowed, so offers shared by several environments
/// in one tick ([`OffersCache`]) are not copied per environment.
fn plan_priced(input: &PlanInput<'_>, offers: &[Offer]) -> PlanOutput {
    let p = input.policy;
    let class = if input.deadline_pressure {
        PriorityClass::High
    } else {
        input
            .top_priority
            .map(|pr| p.class_of(pr))
            .unwrap_or(PriorityClass::Normal)
    };
    let q = p.quantile_for(class);
    let mut reason = String::new();
    let _ = write!(
        reason,
        "{}: {} priority{} -> q{:.2}",
        input.env,
        class.as_str(),
        if input.deadline_pressure {
            " (deadline pressure)"
        } else {
            ""
        },
        q
    );

    // 1. Demand over the provisioning lead time.
    let f = input.forecast;
    let lead_ms = p.lead_time_s.max(0) * 1000;
    let h = if input.bucket_ms > 0 {
        ((lead_ms + input.bucket_ms - 1) / input.bucket_ms).max(1) as usize
    } else {
        1
    }
    .min(f.values.len());
    let window = &f.values[..h];
    let peak_q = window
        .iter()
        .map(|row| quantile_value(&f.quantiles, row, q))
        .fold(0.0f64, f64::max);
    let low_floor = window
        .iter()
        .map(|row| row.first().copied().unwrap_or(0.0))
        .fold(f64::INFINITY, f64::min);
    let low_floor = if low_floor.is_finite() {
        low_floor
    } else {
        0.0
    };
    let forecast_used: Vec<QuantileValue> = f
        .quantiles
        .iter()
        .enumerate()
        .map(|(i, &ql)| QuantileValue {
            quantile: ql,
            vcpus: window
                .iter()
                .map(|row| row.get(i).copied().unwrap_or(0.0))
                .fold(0.0f64, f64::max),
        })
        .collect();
    if h == 0 {
        reason.push_str("; no forecast, following running work");
    } else {
        let _ = write!(
            reason,
            "; forecast peak {} vCPU over {} s",
            fmt_num(peak_q),
            p.lead_time_s
        );
    }
    let base = peak_q.max(input.running_vcpus.max(0.0)) + input.queued_vcpus.max(0.0);
    let _ = write!(
        reason,
        "; running {} + queued {}",
        fmt_num(input.running_vcpus),
        fmt_num(input.queued_vcpus)
    );
    let mut desired = base.ceil().max(0.0) as i64;

    // 2. Scale-in cool-down.
    if let Some(prev) = input.previous {
        if prev.desired_vcpus > desired && input.now - prev.raised_at < p.scale_in_cooldown_s * 1000
        {
            let _ = write!(
                reason,
                "; held at {} (scale-in cool-down {} s, raised {} s ago)",
                prev.desired_vcpus,
                p.scale_in_cooldown_s,
                (input.now - prev.raised_at) / 1000
            );
            desired = prev.desired_vcpus;
        }
    }

    // 3. Reserved capacity (already paid) and floors.
    let reserved_v: f64 = offers
        .iter()
        .filter(|o| o.market == Market::Reserved)
        .map(|o| o.vcpus * o.available.unwrap_or(0).max(0) as f64)
        .sum();
    let mut min = p
        .min_vcpus
        .max(low_floor.floor() as i64)
        .max(reserved_v as i64);
    if let Some(cap) = p.max_vcpus {
        if desired > cap {
            let _ = write!(reason, "; capped by max_vcpus {cap}");
            desired = cap;
        }
    }
    desired = desired.max(p.min_vcpus);

    // 4. Instance mix within the hourly spend cap.
    let hourly_cap = match (p.max_usd_per_hour, input.budget_headroom_usd_per_h) {
        (Some(a), Some(b)) => Some(a.min(b).max(0.0)),
        (a, b) => a.or(b.map(|x| x.max(0.0))),
    };
    let request = |v: i64, cap: Option<f64>| InstanceRequest {
        vcpus: v as f64,
        memory_mib: (v as f64 * input.memory_mib_per_vcpu.max(0.0)).ceil() as i64,
        gpus: (v as f64 * input.gpus_per_vcpu.max(0.0)).ceil() as i32,
        duration_s: Some(p.typical_job_s),
        deadline: None,
        max_usd_per_hour: cap,
        max_usd_per_job: None,
        markets: p.markets.clone(),
        regions: p.regions.clone(),
        providers: p.providers.clone(),
        instance_types: p.instance_types.clone(),
        fleet: true,
        restart_overhead_s: p.restart_overhead_s,
        max_spot_pool_share: p.max_spot_pool_share,
        alternatives: 0,
        architectures: p.architectures.clone(),
        exclude_burstable: p.exclude_burstable,
        ..InstanceRequest::default()
    };
    let solve = |v: i64, cap: Option<f64>| rank_offers(&request(v, cap), offers, input.now);
    let uncapped = solve(desired, None).into_iter().next();
    // List cost per non-reserved vCPU-hour of the unconstrained mix: how
    // far a dollar of headroom goes.
    let unit_list = uncapped.as_ref().and_then(|c| {
        let paid_v: f64 = c
            .pools
            .iter()
            .filter(|p| p.market != Market::Reserved)
            .map(|p| p.count as f64 * vcpus_of(offers, p))
            .sum();
        (paid_v > 0.0).then(|| c.usd_per_hour / paid_v)
    });
    let mut chosen = uncapped.clone();
    if let (Some(cap), Some(c)) = (hourly_cap, &uncapped) {
        if c.usd_per_hour > cap + 1e-9 {
            let mut v = match unit_list {
                Some(u) if u > 0.0 => (reserved_v + cap / u).floor() as i64,
                _ => reserved_v as i64,
            }
            .min(desired);
            chosen = None;
            for _ in 0..12 {
                if let Some(c) = solve(v, Some(cap)).into_iter().next() {
                    chosen = Some(c);
                    break;
                }
                if v == 0 {
                    break;
                }
                v = (v as f64 * 0.9).floor() as i64;
            }
            let _ = write!(
                reason,
                "; budget caps spend at ${}/h -> desired {} instead of {}",
                fmt_num(cap),
                v,
                desired
            );
            desired = v;
        }
    }
    let mut instance_mix: Vec<InstanceAllocation> = Vec::new();
    let (mut usd_h, mut exp_h) = (0.0, 0.0);
    match &chosen {
        Some(c) => {
            usd_h = c.usd_per_hour;
            exp_h = c.expected_usd_per_hour;
            for pool in &c.pools {
                match instance_mix.iter_mut().find(|a| {
                    a.instance_type == pool.instance_type
                        && a.market == pool.market
                        && a.region == pool.region
                }) {
                    Some(a) => a.count += pool.count as i32,
                    None => instance_mix.push(InstanceAllocation {
                        instance_type: pool.instance_type.clone(),
                        market: pool.market,
                        region: pool.region.clone(),
                        count: pool.count as i32,
                    }),
                }
            }
            if !c.pools.is_empty() {
                let mut parts: Vec<String> = Vec::new();
                for a in &instance_mix {
                    parts.push(format!(
                        "{}x {} {} {}",
                        a.count, a.instance_type, a.market, a.region
                    ));
                }
                let _ = write!(
                    reason,
                    "; mix {} at ${}/h list, ${}/h risk-adjusted",
                    parts.join(", "),
                    format_args!("{:.3}", usd_h),
                    format_args!("{:.3}", exp_h)
                );
                let stale = c.pools.iter().filter(|p| p.stale_price).count();
                if stale > 0 {
                    let _ = write!(reason, "; {stale} pool(s) on stale prices");
                }
            }
        }
        None if desired > 0 => {
            reason.push_str("; no allowed priced capacity fits: mix left to the scheduler");
        }
        None => {}
    }
    let mix_v = chosen.as_ref().map(|c| c.vcpus).unwrap_or(0.0);
    let usd_per_vcpu_hour = if mix_v > 0.0 {
        exp_h / mix_v
    } else {
        // Nothing bought: price work at the cheapest allowed on-demand rate.
        offers
            .iter()
            .filter(|o| o.market == Market::OnDemand && o.vcpus > 0.0)
            .map(|o| o.usd_per_hour / o.vcpus)
            .fold(f64::INFINITY, f64::min)
    };
    let usd_per_vcpu_hour = if usd_per_vcpu_hour.is_finite() {
        usd_per_vcpu_hour
    } else {
        0.0
    };

    // 5. Ceiling: only where the user asked for one (policy `max_vcpus`) or
    // a budget limits the spend rate; 0 means none. A ceiling derived from
    // the forecast alone would turn every forecast miss (a wide gang job
    // arriving between ticks) into queueing the deadline may not survive.
    let mut ceiling: Option<i64> = p.max_vcpus;
    if let (Some(cap), Some(u)) = (hourly_cap, unit_list) {
        if u > 0.0 {
            let b = (reserved_v + cap / u).floor() as i64;
            ceiling = Some(ceiling.map_or(b, |c| c.min(b)));
        }
    }
    let max = ceiling.map_or(0, |c| c.max(desired));
    min = min.min(desired);
    let _ = write!(reason, " => min {min} desired {desired} max {max}");

    let mut constraints = BTreeMap::new();
    if let Some(j) = p.max_usd_per_job {
        constraints.insert("max_usd_per_job".to_string(), format!("{j}"));
    }
    if let Some(cap) = hourly_cap {
        constraints.insert("max_usd_per_hour".to_string(), format!("{cap:.4}"));
    }
    constraints.insert(
        "markets".to_string(),
        p.markets
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    constraints.insert(
        "serverless_burst".to_string(),
        p.serverless_burst.to_string(),
    );
    constraints.insert("priority_class".to_string(), class.as_str().to_string());

    PlanOutput {
        min_vcpus: min,
        desired_vcpus: desired,
        max_vcpus: max,
        instance_mix,
        constraints,
        quantile_used: q,
        forecast_used,
        usd_per_hour: usd_h,
        expected_usd_per_hour: exp_h,
        usd_per_vcpu_hour,
        reason,
    }
}

/// Plans one environment: builds the offers allowed by its policy from the
/// price book and catalogue (stale prices flagged, reserved capacity
/// added) and decides min/desired/max vCPUs and the instance mix.
pub fn plan_environment(input: &PlanInput<'_>) -> PlanOutput {
    plan_priced(input, &priced_offers(input))
}

/// The offers [`plan_environment`] plans over: allowed by the policy, from
/// the book as of `input.now`, interruption rates set.
fn priced_offers(input: &PlanInput<'_>) -> Vec<Offer> {
    let p = input.policy;
    let mut reserved = p.reserved.clone();
    reserved.extend(input.reserved.iter().cloned());
    let offers = offers_from_book(
        input.book,
        input.catalog,
        input.now,
        &MarketView {
            max_price_age_ms: p.max_price_age_s * 1000,
            markets: &p.markets,
            regions: &p.regions,
            providers: &p.providers,
            instance_types: &p.instance_types,
            reserved: &reserved,
            shape: ShapeFilter {
                architectures: &p.architectures,
                exclude_burstable: p.exclude_burstable,
                min_vcpus: p.min_instance_vcpus,
            },
        },
    );
    let mut offers = offers;
    apply_risk(input, &mut offers);
    offers
}

/// What [`priced_offers`] reads besides the book and the time (which the
/// cache checks through [`CachedOffers`]).
#[derive(Debug, Clone, PartialEq)]
struct OffersKey {
    /// The catalogue's address: the engine keeps one for its life, but a
    /// cache shared with another must not mix them up.
    catalog: usize,
    max_price_age_s: i64,
    markets: Vec<Market>,
    regions: Vec<String>,
    providers: Vec<String>,
    instance_types: Vec<String>,
    reserved: Vec<ReservedInstances>,
    extra_reserved: Vec<ReservedInstances>,
    min_instance_vcpus: f64,
    architectures: Vec<String>,
    exclude_burstable: bool,
    spot_interruption_rate_per_h: f64,
    interruption_rates: BTreeMap<String, f64>,
}

impl OffersKey {
    fn of(input: &PlanInput<'_>) -> Self {
        let p = input.policy;
        OffersKey {
            catalog: std::ptr::from_ref(input.catalog) as usize,
            max_price_age_s: p.max_price_age_s,
            markets: p.markets.clone(),
            regions: p.regions.clone(),
            providers: p.providers.clone(),
            instance_types: p.instance_types.clone(),
            reserved: p.reserved.clone(),
            extra_reserved: input.reserved.to_vec(),
            min_instance_vcpus: p.min_instance_vcpus,
            architectures: p.architectures.clone(),
            exclude_burstable: p.exclude_burstable,
            spot_interruption_rate_per_h: p.spot_interruption_rate_per_h,
            interruption_rates: input.interruption_rates.clone(),
        }
    }
}

/// Offers built once per market view and kept across decision ticks while
/// they stay right. Building the offers (every priced pool of the book
/// joined with the catalogue) was the largest part of a tick; they depend
/// on the book, the catalogue, the policy's market view (the key) and the
/// time only through which held prices apply and which of them are stale.
/// So an entry serves any tick from the one it was built at until the book
/// changes (its `BookStamp`) or [`PriceBook::quiet_until`] says a held
/// price takes effect or turns stale. Environments of one tick share it too.
/// (A catalogue price's `price_at`, which only reports, is then the tick the
/// offers were built at.)
#[derive(Debug, Default)]
pub struct OffersCache {
    entries: std::sync::Mutex<Vec<CachedOffers>>,
    built: std::sync::atomic::AtomicU64,
    reused: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct CachedOffers {
    key: OffersKey,
    stamp: BookStamp,
    /// Valid for ticks in `from..until`.
    from: Millis,
    until: Millis,
    offers: Vec<Offer>,
}

impl OffersCache {
    /// How many plans built their offers and how many reused cached ones.
    pub fn built_and_reused(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.built.load(Relaxed), self.reused.load(Relaxed))
    }
}

/// [`plan_environment`], with the offers taken from (or added to) `cache`:
/// the same plan, with the offers built only when the book or the time made
/// the cached ones wrong.
pub fn plan_environment_cached(input: &PlanInput<'_>, cache: &OffersCache) -> PlanOutput {
    use std::sync::atomic::Ordering::Relaxed;
    let key = OffersKey::of(input);
    let stamp = input.book.stamp();
    let now = input.now;
    let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
    entries.retain(|e| e.stamp == stamp && e.from <= now && now < e.until);
    let i = match entries.iter().position(|e| e.key == key) {
        Some(i) => {
            cache.reused.fetch_add(1, Relaxed);
            i
        }
        None => {
            cache.built.fetch_add(1, Relaxed);
            let until = input
                .book
                .quiet_until(now, input.policy.max_price_age_s.saturating_mul(1000));
            // In pool-key order, which ranking sorts by at every plan.
            let mut offers = priced_offers(input);
            offers.sort_by(Offer::pool_order);
            entries.push(CachedOffers {
                key,
                stamp,
                from: now,
                until,
                offers,
            });
            entries.len() - 1
        }
    };
    plan_priced(input, &entries[i].offers)
}

/// The cheapest expected-cost instances for a demand, optimum first, then
/// ranked single-pool alternatives; empty when nothing allowed fits.
pub fn optimal_instances(
    req: &InstanceRequest,
    book: &PriceBook,
    catalog: &Catalog,
    now: Millis,
) -> Vec<RankedChoice> {
    let mut offers = offers_from_book(
        book,
        catalog,
        now,
        &MarketView {
            max_price_age_ms: req.max_price_age_s.max(1) * 1000,
            markets: &req.markets,
            regions: &req.regions,
            providers: &req.providers,
            instance_types: &req.instance_types,
            reserved: &req.reserved,
            shape: ShapeFilter {
                architectures: &req.architectures,
                exclude_burstable: req.exclude_burstable,
                min_vcpus: 0.0,
            },
        },
    );
    let mut risk = RiskModel::new(req.spot_interruption_rate_per_h);
    risk.overrides = req.interruption_rates.clone();
    risk.apply(&mut offers);
    rank_offers(req, &offers, now)
}

/// The engine's [`crate::engine::CapacityPlanner`] backed by this planner
/// and a policy file. The engine's request carries only outstanding vCPUs
/// (submitted, not completed), so they are treated as running work with an
/// empty queue (the forecast covers the same quantity, so nothing is counted
/// twice), at normal priority, with 2 GiB per vCPU and no GPUs.
#[derive(Debug, Clone, Default)]
pub struct CostAwarePlanner {
    pub policy: PolicyFile,
    pub interruption_rates: BTreeMap<String, f64>,
}

impl crate::engine::CapacityPlanner for CostAwarePlanner {
    fn plan(&self, req: &crate::engine::PlanRequest<'_>) -> crate::engine::PlanDecision {
        let policy = self.policy.for_env(req.compute_environment);
        let input = PlanInput {
            env: req.compute_environment,
            now: req.now,
            bucket_ms: req.bucket_ms,
            forecast: req.forecast,
            queued_vcpus: 0.0,
            running_vcpus: req.outstanding.vcpus,
            top_priority: req.outstanding.top_priority,
            deadline_pressure: req.outstanding.deadline_pressure,
            memory_mib_per_vcpu: if req.outstanding.vcpus > 0.0 {
                req.outstanding.memory_mib / req.outstanding.vcpus
            } else {
                2048.0
            },
            gpus_per_vcpu: if req.outstanding.vcpus > 0.0 {
                req.outstanding.gpus / req.outstanding.vcpus
            } else {
                0.0
            },
            policy,
            book: req.book,
            catalog: req.catalog,
            reserved: &[],
            budget_headroom_usd_per_h: req.budget_headroom_usd_per_h,
            previous: req.previous,
            interruption_rates: &self.interruption_rates,
        };
        let out = match req.offers_cache {
            Some(cache) => plan_environment_cached(&input, cache),
            None => plan_environment(&input),
        };
        crate::engine::PlanDecision {
            min_vcpus: out.min_vcpus,
            desired_vcpus: out.desired_vcpus,
            max_vcpus: out.max_vcpus,
            instance_mix: out.instance_mix,
            constraints: out.constraints,
            reason: out.reason,
            usd_per_vcpu_hour: out.usd_per_vcpu_hour,
        }
    }

    fn policy(&self, env: &str) -> Option<&EnvPolicy> {
        Some(self.policy.for_env(env))
    }
}

fn vcpus_of(offers: &[Offer], p: &ChosenPool) -> f64 {
    offers
        .iter()
        .find(|o| {
            o.instance_type == p.instance_type && o.region == p.region && o.market == p.market
        })
        .map(|o| o.vcpus)
        .unwrap_or(0.0)
}

/// Expected cost of a job at a plan's `usd_per_vcpu_hour`: what the budget
/// ledger commits on admission.
pub fn expected_job_cost(vcpus: f64, runtime_s: Option<i64>, usd_per_vcpu_hour: f64) -> f64 {
    let hours = runtime_s.unwrap_or(3600).max(0) as f64 / 3600.0;
    vcpus.max(0.0) * hours * usd_per_vcpu_hour.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::optimize::tests_support::offer;
    use super::*;

    fn input<'a>(
        f: &'a Forecast,
        p: &'a EnvPolicy,
        rates: &'a BTreeMap<String, f64>,
    ) -> PlanInput<'a> {
        static BOOK: std::sync::OnceLock<PriceBook> = std::sync::OnceLock::new();
        static CAT: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        PlanInput {
            env: "ricc",
            now: 1_000_000,
            bucket_ms: 300_000,
            forecast: f,
            queued_vcpus: 10.0,
            running_vcpus: 40.0,
            top_priority: Some(0),
            deadline_pressure: false,
            memory_mib_per_vcpu: 2048.0,
            gpus_per_vcpu: 0.0,
            policy: p,
            book: BOOK.get_or_init(PriceBook::new),
            catalog: CAT.get_or_init(Catalog::default),
            reserved: &[],
            budget_headroom_usd_per_h: None,
            previous: None,
            interruption_rates: rates,
        }
    }

    fn fc() -> Forecast {
        Forecast {
            quantiles: vec![0.1, 0.5, 0.9],
            values: vec![vec![30.0, 60.0, 90.0], vec![35.0, 70.0, 120.0]],
        }
    }

    fn market_offers() -> Vec<Offer> {
        let mut spot_a = offer("c5.xlarge", Market::Spot, 4.0, 8192, 0, 0.06);
        spot_a.on_demand_usd_per_hour = Some(0.17);
        let mut spot_b = offer("m5.xlarge", Market::Spot, 4.0, 16384, 0, 0.07);
        spot_b.on_demand_usd_per_hour = Some(0.192);
        let mut spot_c = spot_a.clone();
        spot_c.region = "us-west-2".into();
        vec![
            spot_a,
            spot_b,
            spot_c,
            offer("c5.xlarge", Market::OnDemand, 4.0, 8192, 0, 0.17),
        ]
    }

    #[test]
    fn quantile_by_priority_and_queue_drive_desired() {
        let (f, p, r) = (fc(), EnvPolicy::default(), BTreeMap::new());
        let out = plan_with_offers(&input(&f, &p, &r), &market_offers());
        // lead 300 s = 1 bucket: p50 peak 60 (> running 40) + queued 10
        assert_eq!(out.desired_vcpus, 70);
        assert_eq!(out.quantile_used, 0.5);
        assert_eq!(out.min_vcpus, 30);
        let mix_v: i32 = out.instance_mix.iter().map(|a| a.count * 4).sum();
        assert!(mix_v >= 70);
        assert!(out.instance_mix.iter().all(|a| a.market == Market::Spot));
        let mut inp = input(&f, &p, &r);
        inp.top_priority = Some(5);
        let hi = plan_with_offers(&inp, &market_offers());
        assert_eq!(hi.quantile_used, 0.9);
        assert_eq!(hi.desired_vcpus, 100);
        // No policy ceiling and no budget: no max.
        assert_eq!(hi.max_vcpus, 0);
        // deterministic reason
        assert_eq!(hi.reason, plan_with_offers(&inp, &market_offers()).reason);
    }

    #[test]
    fn cooldown_holds_scale_in_and_budget_caps() {
        let (f, p, r) = (fc(), EnvPolicy::default(), BTreeMap::new());
        let mut inp = input(&f, &p, &r);
        inp.previous = Some(PreviousPlan {
            desired_vcpus: 200,
            raised_at: inp.now - 60_000,
        });
        let out = plan_with_offers(&inp, &market_offers());
        assert_eq!(out.desired_vcpus, 200);
        assert!(out.reason.contains("cool-down"));
        let mut inp = input(&f, &p, &r);
        inp.budget_headroom_usd_per_h = Some(0.6);
        let out = plan_with_offers(&inp, &market_offers());
        assert!(out.usd_per_hour <= 0.6 + 1e-9, "{out:?}");
        assert!(out.desired_vcpus < 70);
        assert!(out.max_vcpus <= 40 + 4);
        assert!(out.reason.contains("budget caps"));
    }

    #[test]
    fn reserved_counts_toward_min_and_is_free() {
        let (f, p, r) = (fc(), EnvPolicy::default(), BTreeMap::new());
        let mut offers = market_offers();
        let mut res = offer("c5.xlarge", Market::Reserved, 4.0, 8192, 0, 0.17);
        res.available = Some(10);
        offers.push(res);
        let out = plan_with_offers(&input(&f, &p, &r), &offers);
        assert_eq!(out.min_vcpus, 40);
        let reserved: i32 = out
            .instance_mix
            .iter()
            .filter(|a| a.market == Market::Reserved)
            .map(|a| a.count)
            .sum();
        assert_eq!(reserved, 10);
    }

    #[test]
    fn offers_cache_gives_the_plans_of_fresh_offers() {
        use crate::pricing::book::tests::tick;
        let cat = Catalog::bundled();
        let mut book = PriceBook::new();
        book.apply(&tick(0, "m5.large", 0.03));
        book.apply(&tick(0, "c5.xlarge", 0.05));
        let (f, rates) = (fc(), BTreeMap::new());
        let spot = EnvPolicy::default();
        let od = EnvPolicy {
            markets: vec![Market::OnDemand],
            ..EnvPolicy::default()
        };
        let cache = OffersCache::default();
        // The second time, the spot prices are stale (priced at on-demand).
        for now in [1_000, 7 * 3_600_000] {
            for p in [&spot, &od, &spot] {
                let inp = PlanInput {
                    book: &book,
                    catalog: &cat,
                    now,
                    ..input(&f, p, &rates)
                };
                let fresh = plan_environment(&inp);
                assert!(!fresh.instance_mix.is_empty());
                assert_eq!(plan_environment_cached(&inp, &cache), fresh);
            }
            // One entry per market view, not per environment.
            assert_eq!(cache.entries.lock().unwrap().len(), 2);
        }
    }

    #[test]
    fn offers_kept_across_ticks_give_the_plans_of_fresh_offers() {
        use crate::pricing::book::tests::tick;
        let cat = Catalog::bundled();
        let (f, rates) = (fc(), BTreeMap::new());
        let p = EnvPolicy::default();
        let h = 3_600_000;
        let mut book = PriceBook::new();
        book.apply(&tick(0, "m5.large", 0.03));
        book.apply(&tick(0, "c5.xlarge", 0.05));
        // Held before it applies: a cheaper m5 from 2 h on.
        book.apply(&tick(2 * h, "m5.large", 0.004));
        let cache = OffersCache::default();
        let mut plans = Vec::new();
        for (i, now) in (0..40).map(|k| k * 15 * 60_000).enumerate() {
            if i == 20 {
                // A new price between ticks.
                book.apply(&tick(now - 1, "c5.xlarge", 0.002));
            }
            let inp = PlanInput {
                book: &book,
                catalog: &cat,
                now,
                ..input(&f, &p, &rates)
            };
            let fresh = plan_environment(&inp);
            assert_eq!(plan_environment_cached(&inp, &cache), fresh, "at {now}");
            plans.push(fresh);
        }
        // The held tick and the new price changed the plan; staleness
        // (6 h after 0 and 2 h) was seen; most ticks reused their offers.
        assert_ne!(plans[7], plans[8]);
        assert_ne!(plans[19], plans[20]);
        let (built, reused) = cache.built_and_reused();
        assert!(built >= 4 && reused >= 30, "built {built}, reused {reused}");
    }

    #[test]
    fn interpolates_quantiles() {
        let levels = [0.1, 0.5, 0.9];
        let vals = [10.0, 20.0, 40.0];
        assert_eq!(quantile_value(&levels, &vals, 0.5), 20.0);
        assert_eq!(quantile_value(&levels, &vals, 0.7), 30.0);
        assert_eq!(quantile_value(&levels, &vals, 0.99), 40.0);
        assert_eq!(quantile_value(&levels, &vals, 0.01), 10.0);
    }
}
