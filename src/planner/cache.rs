//! Offers kept across decision ticks (see [`OffersCache`]): the planner's
//! own cache, which [`super::CostAwarePlanner`] holds; the engine knows
//! nothing of it.

use super::market::{may_offer, offers_with_sources, ref_to_offer, MarketView, Source};
use super::offers::SortKey;
use super::{
    market_view, plan_priced_until, reserved_of, risk_model, Offer, PlanInput, PlanOutput,
};
use crate::events::{Market, Millis};
use crate::policy::ReservedInstances;
use crate::pricing::book::{BookStamp, PoolKey};
use crate::pricing::PriceBook;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

/// Offers built once per market view and kept across decision ticks,
/// patched pool by pool as prices change. Building the offers (every priced
/// pool of the book joined with the catalogue, then sorted) was the largest
/// part of a tick. An offer depends on the book, the catalogue and the
/// policy's market view (the key) only through its own pool, and on the
/// time only through which of the pool's held prices applies and whether it
/// is stale. So an entry, right at the tick it was last brought up to date,
/// is right at a later tick once it re-derives
///
/// - the pools the book changed since then ([`PriceBook::changed_since`]),
/// - the pools whose next held price took effect or whose price turned
///   stale in between (each pool's [`PriceBook::pool_quiet_until`], kept in
///   a time-ordered agenda),
/// - and the catalogue's on-demand offer of the region and type of each
///   on-demand pool among those (a book price hides the catalogue's).
///
/// Offers stay in pool-key order, which ranking sorts by at every plan.
/// It builds them in full when it has none for the key, when the book
/// cannot say what changed (another book, a change log overflowed, history
/// pruned) or when the time went back. Environments of one tick share an
/// entry. (The `price_at` of a catalogue price or of reserved capacity,
/// which only reports, is the tick its offer was last derived at.)
#[derive(Debug, Default)]
pub struct OffersCache {
    pub(super) entries: std::sync::Mutex<Vec<CachedOffers>>,
    built: AtomicU64,
    reused: AtomicU64,
    patched: AtomicU64,
    pools_patched: AtomicU64,
}

#[derive(Debug)]
pub(super) struct CachedOffers {
    key: OffersKey,
    /// The book's content the offers are right for.
    stamp: BookStamp,
    /// The tick the offers are right at.
    at: Millis,
    /// What a fresh build sorted by [`Offer::pool_order`] would give (but
    /// for reporting `price_at`, see [`OffersCache`]); ordered by (pool
    /// key, source), since the sort is stable and builds in source order.
    pub(super) offers: Vec<Offer>,
    /// The source of each offer, by index.
    pub(super) sources: Vec<Source>,
    /// (time, pool id): when each pool that may give an offer, or may hide
    /// a catalogue price, could next give another one (none after
    /// `Millis::MAX`).
    agenda: BTreeSet<(Millis, String)>,
    /// Each pool's time in `agenda`.
    due: HashMap<String, Millis, foldhash::fast::RandomState>,
}

impl OffersCache {
    /// How many plans built their offers in full and how many used kept
    /// ones (as they were, or patched).
    pub fn built_and_reused(&self) -> (u64, u64) {
        (
            self.built.load(Relaxed),
            self.reused.load(Relaxed) + self.patched.load(Relaxed),
        )
    }

    /// Of the plans that used kept offers, how many patched them first,
    /// and how many pools they re-derived in all.
    pub fn patched(&self) -> (u64, u64) {
        (self.patched.load(Relaxed), self.pools_patched.load(Relaxed))
    }
}

/// [`super::plan_environment`], with the offers taken from (or added to)
/// `cache`: the same plan, with the offers built only when the cache has
/// none it can bring up to date.
pub fn plan_environment_cached(input: &PlanInput<'_>, cache: &OffersCache) -> PlanOutput {
    plan_environment_kept(input, cache).0
}

/// [`plan_environment_cached`], and the first time after `input.now` at
/// which the same input at a later time could be planned otherwise: when
/// the offers it planned with could change while the book does not (a held
/// price taking effect, a price turning stale: the entry's agenda) or the
/// scale-in cool-down's answer could (`Millis::MAX` for never). These are
/// the plan's only ways to depend on the time, so the engine may reuse the
/// plan for the same inputs until then (see `CapacityPlanner::plan_until`).
pub fn plan_environment_kept(input: &PlanInput<'_>, cache: &OffersCache) -> (PlanOutput, Millis) {
    let key = OffersKey::of(input);
    let (book, now) = (input.book, input.now);
    let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
    entries.retain(|e| e.at <= now && book.changed_since(e.stamp).is_some());
    let i = match entries.iter().position(|e| e.key == key) {
        Some(i) => {
            match entries[i].update(input) {
                0 => cache.reused.fetch_add(1, Relaxed),
                n => {
                    cache.pools_patched.fetch_add(n as u64, Relaxed);
                    cache.patched.fetch_add(1, Relaxed)
                }
            };
            i
        }
        None => {
            cache.built.fetch_add(1, Relaxed);
            entries.push(CachedOffers::build(input, key));
            entries.len() - 1
        }
    };
    let offers_until = entries[i].agenda.first().map_or(Millis::MAX, |(t, _)| *t);
    match input.spot_risk {
        // The learned risk changes at every tick (exposure accrues, old
        // evidence fades), so it is not part of the key (each tick would
        // build and keep another entry): it is laid over a copy, and the
        // plan is promised for no later time (the engine plans again).
        Some(book) => {
            let mut offers = entries[i].offers.clone();
            super::spot_risk::apply(book, &mut offers);
            (plan_priced_until(input, &offers).0, now)
        }
        None => {
            let (out, steady_until) = plan_priced_until(input, &entries[i].offers);
            (out, steady_until.min(offers_until))
        }
    }
}

impl CachedOffers {
    /// The offers of `input`, built in full.
    fn build(input: &PlanInput<'_>, key: OffersKey) -> CachedOffers {
        let reserved = reserved_of(input);
        let view = market_view(input, &reserved);
        let (book, now) = (input.book, input.now);
        let mut pairs = offers_with_sources(book, input.catalog, now, &view);
        // Stable: equal pool keys stay in source order.
        pairs.sort_by(|a, b| a.0.pool_order(&b.0));
        let (mut offers, sources): (Vec<Offer>, Vec<Source>) = pairs.into_iter().unzip();
        risk_model(input).apply(&mut offers);
        let mut entry = CachedOffers {
            key,
            stamp: book.stamp(),
            at: now,
            offers,
            sources,
            agenda: BTreeSet::new(),
            due: HashMap::default(),
        };
        for id in book.pool_ids() {
            if let Some(pool) = book.pool_key(id) {
                entry.schedule(book, id, pool, input.catalog, &view, now);
            }
        }
        entry
    }

    /// Brings the offers from their tick and book content to `input`'s
    /// (the caller checked the book can say what changed, and that the
    /// time did not go back); how many pools it re-derived.
    fn update(&mut self, input: &PlanInput<'_>) -> usize {
        let (book, now) = (input.book, input.now);
        let mut ids: BTreeSet<String> = book
            .changed_since(self.stamp)
            .into_iter()
            .flatten()
            .map(str::to_string)
            .collect();
        while self.agenda.first().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, id)) = self.agenda.pop_first() {
                self.due.remove(&id);
                ids.insert(id);
            }
        }
        self.stamp = book.stamp();
        self.at = now;
        if ids.is_empty() {
            return 0;
        }
        let reserved = reserved_of(input);
        let view = market_view(input, &reserved);
        let risk = risk_model(input);
        let priced = |offer: Option<Offer>| {
            offer.map(|mut o| {
                risk.apply(std::slice::from_mut(&mut o));
                o
            })
        };
        // On-demand pools hide or show the catalogue's price of their type
        // and region.
        let mut catalogue: BTreeSet<(&str, &str)> = BTreeSet::new();
        for id in &ids {
            let Some(pool) = book.pool_key(id) else {
                continue;
            };
            let offer = book
                .pool_offer_ref(id, now)
                .and_then(|r| ref_to_offer(&r, input.catalog, now, &view));
            self.put(pool_sort_key(pool), Source::Book, priced(offer));
            self.schedule(book, id, pool, input.catalog, &view, now);
            if pool.market == Market::OnDemand {
                catalogue.insert((&pool.region, &pool.instance_type));
            }
        }
        for (region, itype) in catalogue {
            let offer = book
                .catalog_offer_ref(input.catalog, region, itype, now)
                .and_then(|r| ref_to_offer(&r, input.catalog, now, &view));
            // The pool key of a catalogue price (`PriceBook::offer_refs`).
            let key = ("aws", region, "-", itype, Market::OnDemand);
            self.put(key, Source::Catalog, priced(offer));
        }
        ids.len()
    }

    /// Puts the pool `id` on the agenda at the time its offer could next
    /// change, if it may ever give one or hide a catalogue price.
    fn schedule(
        &mut self,
        book: &PriceBook,
        id: &str,
        pool: &PoolKey,
        catalog: &crate::pricing::Catalog,
        view: &MarketView<'_>,
        now: Millis,
    ) {
        if let Some(t) = self.due.remove(id) {
            self.agenda.remove(&(t, id.to_string()));
        }
        if pool.market != Market::OnDemand && !may_offer(pool, catalog, view) {
            return;
        }
        let t = book.pool_quiet_until(id, now, view.max_price_age_ms);
        if t != Millis::MAX {
            self.agenda.insert((t, id.to_string()));
            self.due.insert(id.to_string(), t);
        }
    }

    /// Sets the offer of one pool and source: replaced, added in order, or
    /// removed when `offer` is `None`.
    fn put(&mut self, key: SortKey<'_>, source: Source, offer: Option<Offer>) {
        let (mut lo, mut hi) = (0, self.offers.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if (self.offers[mid].sort_key(), self.sources[mid]) < (key, source) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let found = lo < self.offers.len()
            && self.sources[lo] == source
            && self.offers[lo].sort_key() == key;
        match (found, offer) {
            (true, Some(o)) => self.offers[lo] = o,
            (true, None) => {
                self.offers.remove(lo);
                self.sources.remove(lo);
            }
            (false, Some(o)) => {
                self.offers.insert(lo, o);
                self.sources.insert(lo, source);
            }
            (false, None) => {}
        }
    }
}

/// The sort key ([`Offer::sort_key`]) of the offer of a book pool.
fn pool_sort_key(k: &PoolKey) -> SortKey<'_> {
    (
        &k.provider,
        &k.region,
        k.zone.as_deref().unwrap_or("-"),
        &k.instance_type,
        k.market,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::PriceTick;
    use crate::forecast::Forecast;
    use crate::policy::EnvPolicy;
    use crate::pricing::Catalog;
    use proptest::prelude::*;

    /// Pools of every kind the offers treat apart: spot in two zones, a
    /// burstable and an arm64 type (the default policy filters them), an
    /// on-demand pool without a zone (it hides the catalogue's price of its
    /// type) and one with a zone, a reserved pool (never offered from the
    /// book), a region the catalogue has no on-demand prices for (a stale
    /// spot price there is dropped) and a type it has no shape for.
    const POOLS: &[(&str, Option<&str>, &str, Market)] = &[
        ("us-east-1", Some("use1-az1"), "m5.large", Market::Spot),
        ("us-east-1", Some("use1-az2"), "m5.large", Market::Spot),
        ("us-east-1", Some("use1-az1"), "c5.xlarge", Market::Spot),
        ("us-east-1", Some("use1-az1"), "t3.medium", Market::Spot),
        ("us-east-1", Some("use1-az1"), "m6g.large", Market::Spot),
        ("us-east-1", None, "c5.large", Market::OnDemand),
        ("us-east-1", Some("use1-az1"), "r5.large", Market::OnDemand),
        ("us-east-1", None, "m5.large", Market::Reserved),
        ("us-west-2", Some("usw2-az1"), "c5.xlarge", Market::Spot),
        ("us-east-1", Some("use1-az1"), "zz.unknown", Market::Spot),
    ];

    #[derive(Debug, Clone)]
    enum Step {
        /// A price for `POOLS[pool]` at `dt_s` from the current tick
        /// (before it: out of order; after it: held until it applies).
        Tick { pool: usize, dt_s: i64, price: f64 },
        /// The next decision tick, `advance_s` later.
        Plan { advance_s: i64 },
        /// History pruned (the book can then not say what changed).
        Prune,
    }

    fn step() -> impl Strategy<Value = Step> {
        let price = prop_oneof![Just(0.05), (1u32..400).prop_map(|c| f64::from(c) / 1000.0)];
        prop_oneof![
            8 => (0..POOLS.len(), -1_800i64..7_200, price)
                .prop_map(|(pool, dt_s, price)| Step::Tick { pool, dt_s, price }),
            4 => prop_oneof![Just(0i64), 1i64..3_600].prop_map(|advance_s| Step::Plan { advance_s }),
            1 => Just(Step::Prune),
        ]
    }

    fn tick(pool: usize, at: Millis, price: f64) -> PriceTick {
        let (region, zone, itype, market) = POOLS[pool];
        PriceTick {
            at,
            provider: "aws".into(),
            region: region.into(),
            zone: zone.map(Into::into),
            instance_type: itype.into(),
            market,
            usd_per_hour: price,
        }
    }

    /// The default policy with prices stale after 15 min and a reserved
    /// inventory (two equal entries: equal pool keys), and a narrower one.
    fn policies() -> [EnvPolicy; 2] {
        let reserved = ReservedInstances {
            provider: "aws".into(),
            region: "us-east-1".into(),
            instance_type: "c5.xlarge".into(),
            count: 2,
        };
        [
            EnvPolicy {
                max_price_age_s: 900,
                reserved: vec![reserved.clone(), reserved],
                ..EnvPolicy::default()
            },
            EnvPolicy {
                max_price_age_s: 1_800,
                markets: vec![Market::Spot, Market::OnDemand],
                instance_types: ["m5.large", "c5.large", "c5.xlarge", "r5.large", "t3.medium"]
                    .map(String::from)
                    .to_vec(),
                architectures: Vec::new(),
                exclude_burstable: false,
                ..EnvPolicy::default()
            },
        ]
    }

    fn input<'a>(
        now: Millis,
        book: &'a PriceBook,
        catalog: &'a Catalog,
        policy: &'a EnvPolicy,
        forecast: &'a Forecast,
        rates: &'a BTreeMap<String, f64>,
    ) -> PlanInput<'a> {
        PlanInput {
            env: "e",
            now,
            bucket_ms: 300_000,
            forecast,
            queued_vcpus: 8.0,
            running_vcpus: 24.0,
            top_priority: Some(0),
            deadline_pressure: false,
            memory_mib_per_vcpu: 2048.0,
            gpus_per_vcpu: 0.0,
            policy,
            book,
            catalog,
            reserved: &[],
            budget_headroom_usd_per_h: None,
            previous: None,
            interruption_rates: rates,
            spot_risk: None,
        }
    }

    /// The kept offers of `input`'s key equal a fresh build sorted, but for
    /// the reporting `price_at` of catalogue and reserved offers.
    fn kept_equal_fresh(inp: &PlanInput<'_>, cache: &OffersCache) -> Result<(), TestCaseError> {
        let key = OffersKey::of(inp);
        let entries = cache.entries.lock().unwrap();
        let e = entries.iter().find(|e| e.key == key).expect("an entry");
        let mut kept = e.offers.clone();
        for (o, s) in kept.iter_mut().zip(&e.sources) {
            if *s != Source::Book {
                o.price_at = inp.now;
            }
        }
        let mut fresh = super::super::priced_offers(inp);
        fresh.sort_by(Offer::pool_order);
        prop_assert_eq!(kept, fresh, "at {}", inp.now);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Over random price ticks (new pools, changes, held, out of order,
        /// repeated, going stale, history pruned) and decision ticks, the
        /// kept offers are the fresh ones and so are the plans.
        #[test]
        fn patched_offers_and_plans_equal_fresh(steps in prop::collection::vec(step(), 1..80)) {
            let catalog = Catalog::bundled();
            let policies = policies();
            let forecast = Forecast {
                quantiles: vec![0.1, 0.5, 0.9],
                values: vec![vec![20.0, 40.0, 60.0], vec![30.0, 50.0, 90.0]],
            };
            let mut rates = BTreeMap::new();
            rates.insert("us-east-1/m5.large".to_string(), 0.2);
            let cache = OffersCache::default();
            let mut book = PriceBook::new();
            let mut now: Millis = 10 * 3_600_000;
            for s in steps {
                match s {
                    Step::Tick { pool, dt_s, price } => book.apply(&tick(pool, now + dt_s * 1000, price)),
                    Step::Prune => book.prune_before(now - 3_600_000),
                    Step::Plan { advance_s } => {
                        now += advance_s * 1000;
                        for p in &policies {
                            let inp = input(now, &book, &catalog, p, &forecast, &rates);
                            let fresh = crate::planner::plan_environment(&inp);
                            prop_assert_eq!(plan_environment_cached(&inp, &cache), fresh);
                            kept_equal_fresh(&inp, &cache)?;
                        }
                    }
                }
            }
        }
    }

    /// The catalogue, the first policy, a one-step 40-vCPU forecast and no
    /// interruption rates: one environment's plans, tick after tick.
    fn one_plan_setting() -> (Catalog, EnvPolicy, Forecast, BTreeMap<String, f64>) {
        let [p, _] = policies();
        let forecast = Forecast {
            quantiles: vec![0.5],
            values: vec![vec![40.0]],
        };
        (Catalog::bundled(), p, forecast, BTreeMap::new())
    }

    /// Ticks between plans patch the kept offers: built once, then only
    /// the changed pools re-derived.
    #[test]
    fn price_ticks_patch_the_kept_offers() {
        let (catalog, p, forecast, rates) = one_plan_setting();
        let cache = OffersCache::default();
        let mut book = PriceBook::new();
        for pool in 0..POOLS.len() {
            book.apply(&tick(pool, 0, 0.05));
        }
        for k in 1..50i64 {
            let now = k * 60_000;
            book.apply(&tick((k as usize) % 3, now - 1, 0.01 * (k % 7 + 1) as f64));
            let inp = input(now, &book, &catalog, &p, &forecast, &rates);
            assert_eq!(
                plan_environment_cached(&inp, &cache),
                crate::planner::plan_environment(&inp)
            );
        }
        let (built, reused) = cache.built_and_reused();
        let (patched, pools) = cache.patched();
        assert_eq!((built, reused), (1, 48));
        assert!(
            patched >= 48 && pools < 3 * 48,
            "{patched} plans, {pools} pools"
        );
    }

    #[test]
    fn another_book_or_pruned_history_builds_again() {
        let (catalog, p, forecast, rates) = one_plan_setting();
        let cache = OffersCache::default();
        let mut book = PriceBook::new();
        book.apply(&tick(0, 0, 0.05));
        let plan = |book: &PriceBook, now| {
            let inp = input(now, book, &catalog, &p, &forecast, &rates);
            plan_environment_cached(&inp, &cache)
        };
        plan(&book, 1_000);
        let copy = book.clone();
        plan(&copy, 2_000);
        book.prune_before(1_500);
        plan(&book, 3_000);
        // Back in time.
        plan(&book, 2_500);
        assert_eq!(cache.built_and_reused(), (4, 0));
    }
}
