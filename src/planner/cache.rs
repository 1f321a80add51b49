//! Offers kept across decision ticks (see [`OffersCache`]): the planner's
//! own cache, which [`super::CostAwarePlanner`] holds; the engine knows
//! nothing of it.

use super::{plan_priced, priced_offers, Offer, PlanInput, PlanOutput};
use crate::events::{Market, Millis};
use crate::policy::ReservedInstances;
use crate::pricing::book::BookStamp;
use std::collections::BTreeMap;

/// What [`super::priced_offers`] reads besides the book and the time (which the
/// cache checks through [`CachedOffers`]).
#[derive(Debug, Clone, PartialEq)]
struct OffersKey {
    /// The catalogue's address: engines sharing one planner may hold
    /// different catalogues, whose offers must not mix.
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
/// changes (its `BookStamp`) or [`crate::pricing::PriceBook::quiet_until`] says a held
/// price takes effect or turns stale. Environments of one tick share it too.
/// (A catalogue price's `price_at`, which only reports, is then the tick the
/// offers were built at.)
#[derive(Debug, Default)]
pub struct OffersCache {
    pub(super) entries: std::sync::Mutex<Vec<CachedOffers>>,
    built: std::sync::atomic::AtomicU64,
    reused: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
pub(super) struct CachedOffers {
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

/// [`super::plan_environment`], with the offers taken from (or added to) `cache`:
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
