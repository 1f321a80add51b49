//! The price book: every price tick per pool (provider, region, zone,
//! instance type, market), queried "as of" an event time so the backtest and
//! the live service see the same prices for the same input.

use super::Catalog;
use crate::events::{Market, Millis, PriceTick};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One price pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PoolKey {
    pub provider: String,
    pub region: String,
    pub zone: Option<String>,
    pub instance_type: String,
    pub market: Market,
}

impl PoolKey {
    pub fn of(t: &PriceTick) -> PoolKey {
        PoolKey {
            provider: t.provider.to_string(),
            region: t.region.to_string(),
            zone: t.zone.as_ref().map(|z| z.to_string()),
            instance_type: t.instance_type.to_string(),
            market: t.market,
        }
    }

    fn id(&self) -> String {
        let mut id = String::new();
        write_id(
            &mut id,
            [
                &self.provider,
                &self.region,
                self.zone.as_deref().unwrap_or("-"),
                &self.instance_type,
            ],
            self.market,
        );
        id
    }
}

/// A pool's id, `provider|region|zone|type|market` (zone `-` when none):
/// what [`PoolKey::id`] returns and [`with_tick_id`] writes.
fn write_id(out: &mut String, parts: [&str; 4], market: Market) {
    use std::fmt::Write;
    let [provider, region, zone, itype] = parts;
    let _ = write!(out, "{provider}|{region}|{zone}|{itype}|{market}");
}

/// `f` of the id of `t`'s pool ([`PoolKey::id`]), written into a buffer
/// kept per thread: every price tick looks its pool up, and a replay
/// applies hundreds of thousands.
fn with_tick_id<R>(t: &PriceTick, f: impl FnOnce(&str) -> R) -> R {
    thread_local!(static ID: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) });
    ID.with(|buf| {
        let mut id = buf.borrow_mut();
        id.clear();
        let zone = t.zone.as_deref().unwrap_or("-");
        write_id(
            &mut id,
            [&t.provider, &t.region, zone, &t.instance_type],
            t.market,
        );
        f(&id)
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pool {
    key: PoolKey,
    /// (time, USD/h), sorted by time.
    ticks: Vec<(Millis, f64)>,
}

impl Pool {
    fn at(&self, t: Millis) -> Option<(Millis, f64)> {
        let i = self.ticks.partition_point(|(at, _)| *at <= t);
        (i > 0).then(|| self.ticks[i - 1])
    }

    /// See [`PriceBook::pool_quiet_until`].
    fn quiet_until(&self, t: Millis, max_age_ms: i64) -> Millis {
        let mut until = Millis::MAX;
        let i = self.ticks.partition_point(|(at, _)| *at <= t);
        if let Some(&(next, _)) = self.ticks.get(i) {
            until = until.min(next);
        }
        if let Some(&(at, _)) = i.checked_sub(1).and_then(|j| self.ticks.get(j)) {
            let flips = at.saturating_add(max_age_ms).saturating_add(1);
            if flips > t {
                until = until.min(flips);
            }
        }
        until
    }

    /// This pool's entry of [`PriceBook::offer_refs`].
    fn offer_ref(&self, usd_per_hour: f64, age_ms: i64) -> OfferRef<'_> {
        let k = &self.key;
        OfferRef {
            provider: &k.provider,
            region: &k.region,
            zone: k.zone.as_deref(),
            instance_type: &k.instance_type,
            market: k.market,
            usd_per_hour,
            age_ms: Some(age_ms),
        }
    }
}

/// A catalogue on-demand price's entry of [`PriceBook::offer_refs`].
fn catalog_ref<'a>(region: &'a str, instance_type: &'a str, usd_per_hour: f64) -> OfferRef<'a> {
    OfferRef {
        provider: "aws",
        region,
        zone: None,
        instance_type,
        market: Market::OnDemand,
        usd_per_hour,
        age_ms: None,
    }
}

/// A price the planner may buy at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub pool: PoolKey,
    pub usd_per_hour: f64,
    /// Time since the price was last confirmed; `None` for catalogue prices,
    /// which are list prices and do not go stale.
    pub age_ms: Option<i64>,
}

/// An [`Offer`] borrowed from the book or the catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfferRef<'a> {
    pub provider: &'a str,
    pub region: &'a str,
    pub zone: Option<&'a str>,
    pub instance_type: &'a str,
    pub market: Market,
    pub usd_per_hour: f64,
    /// As [`Offer::age_ms`].
    pub age_ms: Option<i64>,
}

/// Names one content of one book in this process: any change to a book,
/// and any new book (built, cloned or restored), gets a stamp never used
/// before. Whoever derives data from a book (the planner's offers, kept
/// across decision ticks) keeps the stamp, asks the book which pools
/// changed since it ([`PriceBook::changed_since`]) and re-derives those, or
/// rebuilds when the book cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookStamp(u64);

/// How many pool changes a book remembers ([`PriceBook::changed_since`]).
/// A reader further behind rebuilds what it derived; with more changes than
/// that between two reads, re-deriving every pool costs no more anyway
/// (a month of AWS spot prices holds ~10,000 pools).
const CHANGES_KEPT: usize = 16_384;

/// The book's stamp and the pools changed under its latest stamps, oldest
/// first: fresh (a new stamp, nothing remembered) on construction and on
/// clone, since a copy may diverge from the original.
#[derive(Debug)]
struct Changes {
    stamp: u64,
    /// The oldest stamp `log` answers from: every change after it is in
    /// `log`.
    base: u64,
    /// (the stamp a change gave the book, the id of the pool it changed),
    /// stamps increasing.
    log: std::collections::VecDeque<(u64, String)>,
}

impl Changes {
    fn next() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A new stamp for a change to the pool `id`.
    fn pool_changed(&mut self, id: &str) {
        self.stamp = Self::next();
        self.log.push_back((self.stamp, id.to_string()));
        if self.log.len() > CHANGES_KEPT {
            if let Some((s, _)) = self.log.pop_front() {
                self.base = s;
            }
        }
    }

    /// A new stamp for a change that names no pool: nothing before it can
    /// be patched.
    fn all_changed(&mut self) {
        self.stamp = Self::next();
        self.base = self.stamp;
        self.log.clear();
    }

    fn since(&self, stamp: u64) -> Option<impl Iterator<Item = &str>> {
        let from = if stamp == self.base {
            0
        } else {
            let i = self.log.partition_point(|(s, _)| *s < stamp);
            if self.log.get(i)?.0 != stamp {
                return None;
            }
            i + 1
        };
        Some(self.log.range(from..).map(|(_, id)| id.as_str()))
    }
}

impl Default for Changes {
    fn default() -> Self {
        let stamp = Self::next();
        Changes {
            stamp,
            base: stamp,
            log: Default::default(),
        }
    }
}

impl Clone for Changes {
    fn clone(&self) -> Self {
        Changes::default()
    }
}

/// Latest and historical prices. Serialisable (it is part of checkpoints).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "StoredBook")]
pub struct PriceBook {
    pools: BTreeMap<String, Pool>,
    ticks_applied: u64,
    #[serde(skip)]
    changes: Changes,
    /// Pool ids by (instance type, market, region): regional prices without
    /// a scan of every pool. Derived from `pools` (rebuilt when restored).
    #[serde(skip)]
    regional: BTreeMap<(String, Market, String), Vec<String>>,
    /// Pools of other markets than spot (derived, rebuilt when restored):
    /// see [`PriceBook::spot_only`].
    #[serde(skip)]
    non_spot_pools: usize,
}

/// What a checkpoint holds of a [`PriceBook`].
#[derive(Deserialize)]
struct StoredBook {
    pools: BTreeMap<String, Pool>,
    ticks_applied: u64,
}

impl From<StoredBook> for PriceBook {
    fn from(s: StoredBook) -> Self {
        let mut regional: BTreeMap<(String, Market, String), Vec<String>> = BTreeMap::new();
        for (id, pool) in &s.pools {
            regional
                .entry(PriceBook::regional_key(&pool.key))
                .or_default()
                .push(id.clone());
        }
        let non_spot_pools = s
            .pools
            .values()
            .filter(|p| p.key.market != Market::Spot)
            .count();
        PriceBook {
            pools: s.pools,
            ticks_applied: s.ticks_applied,
            regional,
            changes: Changes::default(),
            non_spot_pools,
        }
    }
}

impl PriceBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a tick. Out-of-order ticks are inserted in time order; a tick
    /// equal to one already held (same pool, time and price) is ignored, so
    /// replays are idempotent.
    pub fn apply(&mut self, tick: &PriceTick) {
        self.apply_unless(tick, false);
    }

    /// [`PriceBook::apply`], unless the tick's pool already holds its price
    /// at its time (a copy of a tick applied before, as
    /// [`PriceBook::prices_at`] would show): whether it was applied. One
    /// lookup of the pool where checking and applying took two.
    pub fn apply_unless_held(&mut self, tick: &PriceTick) -> bool {
        self.apply_unless(tick, true)
    }

    fn apply_unless(&mut self, tick: &PriceTick, held_is_copy: bool) -> bool {
        // Whether it was applied, for a known pool; `None` for a new one.
        let known = with_tick_id(tick, |id| {
            let pool = self.pools.get_mut(id)?;
            let copy = held_is_copy
                && Self::held_at(pool, tick).any(|p| p.to_bits() == tick.usd_per_hour.to_bits());
            if !copy && Self::record(pool, tick) {
                self.changes.pool_changed(id);
            }
            Some(!copy)
        });
        let applied = known.unwrap_or_else(|| {
            self.add_pool(tick);
            true
        });
        self.ticks_applied += u64::from(applied);
        applied
    }

    /// The prices `pool` holds at exactly `tick`'s time, oldest first.
    fn held_at<'p>(pool: &'p Pool, tick: &PriceTick) -> impl Iterator<Item = f64> + 'p {
        let at = tick.at;
        let from = pool.ticks.partition_point(|x| x.0 < at);
        pool.ticks[from..]
            .iter()
            .take_while(move |x| x.0 == at)
            .map(|x| x.1)
    }

    /// A pool first priced by `tick`, holding it (a change of the book).
    fn add_pool(&mut self, tick: &PriceTick) {
        let key = PoolKey::of(tick);
        let id = key.id();
        if key.market != Market::Spot {
            self.non_spot_pools += 1;
        }
        self.regional
            .entry(Self::regional_key(&key))
            .or_default()
            .push(id.clone());
        let mut pool = Pool {
            key,
            ticks: Vec::new(),
        };
        Self::record(&mut pool, tick);
        self.changes.pool_changed(&id);
        self.pools.insert(id, pool);
    }

    /// Put the tick in its pool's history; whether it was new.
    fn record(pool: &mut Pool, tick: &PriceTick) -> bool {
        let v = (tick.at, tick.usd_per_hour);
        match pool.ticks.last() {
            Some(last) if last.0 <= tick.at => {
                *last != v && {
                    pool.ticks.push(v);
                    true
                }
            }
            None => {
                pool.ticks.push(v);
                true
            }
            Some(_) => {
                let i = pool.ticks.partition_point(|x| x.0 <= tick.at);
                (i == 0 || pool.ticks[i - 1] != v) && {
                    pool.ticks.insert(i, v);
                    true
                }
            }
        }
    }

    /// The content of this book (see `BookStamp`).
    pub fn stamp(&self) -> BookStamp {
        BookStamp(self.changes.stamp)
    }

    /// The ids of the pools changed since the book held `stamp` (in the
    /// order of the changes, a pool once per change): `None` when the book
    /// cannot say (`stamp` is another book's, or older than the changes it
    /// remembers, or a change named no pool), so whatever was derived from
    /// it must be derived again. Empty when `stamp` is the current one.
    pub fn changed_since(&self, stamp: BookStamp) -> Option<impl Iterator<Item = &str>> {
        self.changes.since(stamp.0)
    }

    /// The key of the pool with this id ([`PriceBook::changed_since`]).
    pub fn pool_key(&self, id: &str) -> Option<&PoolKey> {
        self.pools.get(id).map(|p| &p.key)
    }

    /// The ids of every pool, in id order.
    pub fn pool_ids(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// The first time after `t` at which [`PriceBook::offer_refs`] could
    /// answer differently, or a price younger than `max_age_ms` at `t` turns
    /// older than that, while the book stays as it is: a tick already held
    /// but later than `t` takes effect, or a price crosses the age.
    /// `Millis::MAX` when neither happens.
    pub fn quiet_until(&self, t: Millis, max_age_ms: i64) -> Millis {
        self.pools
            .values()
            .map(|p| p.quiet_until(t, max_age_ms))
            .min()
            .unwrap_or(Millis::MAX)
    }

    /// [`PriceBook::quiet_until`] of the one pool with this id: when its
    /// entry of [`PriceBook::offer_refs`] could next differ from its entry
    /// at `t`, the book staying as it is. `Millis::MAX` for an unknown id.
    pub fn pool_quiet_until(&self, id: &str, t: Millis, max_age_ms: i64) -> Millis {
        self.pools
            .get(id)
            .map_or(Millis::MAX, |p| p.quiet_until(t, max_age_ms))
    }

    /// The entry of [`PriceBook::offer_refs`] at `t` of the pool with this
    /// id: its price as of `t`, if it has one.
    pub fn pool_offer_ref(&self, id: &str, t: Millis) -> Option<OfferRef<'_>> {
        let pool = self.pools.get(id)?;
        pool.at(t).map(|(at, p)| pool.offer_ref(p, t - at))
    }

    /// The entry of [`PriceBook::offer_refs`] at `t` for the catalogue's
    /// on-demand price of `instance_type` in `region`: there when the
    /// catalogue has that price and a shape for the type, and no ON_DEMAND
    /// pool of the book prices that type in that region as of `t`.
    pub fn catalog_offer_ref<'a>(
        &self,
        catalog: &Catalog,
        region: &'a str,
        instance_type: &'a str,
        t: Millis,
    ) -> Option<OfferRef<'a>> {
        let p = catalog.ondemand_price(region, instance_type)?;
        catalog.spec(instance_type)?;
        if self
            .region_prices(region, instance_type, Market::OnDemand, t)
            .next()
            .is_some()
        {
            return None;
        }
        Some(catalog_ref(region, instance_type, p))
    }

    /// Price of a pool as of `t` (latest tick at or before it), with its time.
    pub fn price_at(&self, key: &PoolKey, t: Millis) -> Option<(Millis, f64)> {
        self.pools.get(&key.id())?.at(t)
    }

    fn regional_key(k: &PoolKey) -> (String, Market, String) {
        (k.instance_type.clone(), k.market, k.region.clone())
    }

    /// Prices as of `t` of the pools (zones, providers) of one type and
    /// market in a region.
    fn region_prices<'a>(
        &'a self,
        region: &str,
        instance_type: &str,
        market: Market,
        t: Millis,
    ) -> impl Iterator<Item = f64> + 'a {
        self.regional
            .get(&(instance_type.to_string(), market, region.to_string()))
            .into_iter()
            .flatten()
            .filter_map(move |id| self.pools.get(id)?.at(t).map(|(_, p)| p))
    }

    /// Mean as of `t` over the zones of a region of one type and market
    /// (a regional price where the buyer does not name a zone).
    pub fn region_price(
        &self,
        region: &str,
        instance_type: &str,
        market: Market,
        t: Millis,
    ) -> Option<f64> {
        let (mut sum, mut n) = (0.0, 0u32);
        for p in self.region_prices(region, instance_type, market, t) {
            sum += p;
            n += 1;
        }
        (n > 0).then(|| sum / n as f64)
    }

    /// Cheapest pool as of `t` of one type and market in a region.
    pub fn cheapest_region_price(
        &self,
        region: &str,
        instance_type: &str,
        market: Market,
        t: Millis,
    ) -> Option<f64> {
        self.region_prices(region, instance_type, market, t)
            .reduce(f64::min)
    }

    /// The full history of a pool.
    pub fn history(&self, key: &PoolKey) -> &[(Millis, f64)] {
        self.pools
            .get(&key.id())
            .map(|p| p.ticks.as_slice())
            .unwrap_or(&[])
    }

    /// All pools with a price as of `t`, plus the catalogue's on-demand
    /// prices for (region, type) pairs that no ON_DEMAND tick overrides.
    /// Deterministic order.
    pub fn offers(&self, catalog: &Catalog, t: Millis) -> Vec<Offer> {
        self.offer_refs(catalog, t)
            .into_iter()
            .map(|o| Offer {
                pool: PoolKey {
                    provider: o.provider.to_string(),
                    region: o.region.to_string(),
                    zone: o.zone.map(str::to_string),
                    instance_type: o.instance_type.to_string(),
                    market: o.market,
                },
                usd_per_hour: o.usd_per_hour,
                age_ms: o.age_ms,
            })
            .collect()
    }

    /// [`PriceBook::offers`], borrowed: the planner runs this on every
    /// decision tick over thousands of pools, and copying every key there
    /// cost more than the planning itself.
    pub fn offer_refs<'a>(&'a self, catalog: &'a Catalog, t: Millis) -> Vec<OfferRef<'a>> {
        let mut out = Vec::with_capacity(self.pools.len());
        let mut ticked_ondemand: std::collections::BTreeSet<(&str, &str)> =
            std::collections::BTreeSet::new();
        for pool in self.pools.values() {
            if let Some((at, p)) = pool.at(t) {
                let k = &pool.key;
                if k.market == Market::OnDemand {
                    ticked_ondemand.insert((&k.region, &k.instance_type));
                }
                out.push(pool.offer_ref(p, t - at));
            }
        }
        for (region, spec, p) in catalog.ondemand_offers() {
            if ticked_ondemand.contains(&(region, spec.name.as_str())) {
                continue;
            }
            out.push(catalog_ref(region, &spec.name, p));
        }
        out
    }

    /// Drop history older than `t`, keeping each pool's last tick before it
    /// (so prices as of `t` and later are unchanged). Bounds memory in the service.
    pub fn prune_before(&mut self, t: Millis) {
        self.changes.all_changed();
        for pool in self.pools.values_mut() {
            let i = pool.ticks.partition_point(|x| x.0 < t);
            if i > 1 {
                pool.ticks.drain(..i - 1);
            }
        }
    }

    pub fn pools(&self) -> usize {
        self.pools.len()
    }

    /// Whether every price held is a spot price: on-demand offers are then
    /// the catalogue's, the same at any time (see
    /// `engine::CapacityPlanner::is_idle`).
    pub fn spot_only(&self) -> bool {
        self.non_spot_pools == 0
    }

    /// The prices held for the tick's pool at exactly its time, oldest
    /// first: a copy of a tick already applied finds its own price here.
    pub fn prices_at(&self, tick: &PriceTick) -> Vec<f64> {
        let Some(pool) = with_tick_id(tick, |id| self.pools.get(id)) else {
            return Vec::new();
        };
        Self::held_at(pool, tick).collect()
    }

    pub fn ticks_applied(&self) -> u64 {
        self.ticks_applied
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A us-east-1 spot tick (shared by the pricing and planner tests).
    pub(crate) fn tick(at: Millis, itype: &str, p: f64) -> PriceTick {
        PriceTick {
            at,
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: Some("use1-az1".into()),
            instance_type: itype.into(),
            market: Market::Spot,
            usd_per_hour: p,
        }
    }

    #[test]
    fn stamps_change_with_content_and_on_clone() {
        let mut b = PriceBook::new();
        let s0 = b.stamp();
        b.apply(&tick(100, "m5.large", 0.03));
        let s1 = b.stamp();
        assert_ne!(s0, s1);
        // The same tick again changes nothing.
        b.apply(&tick(100, "m5.large", 0.03));
        assert_eq!(b.stamp(), s1);
        // A clone or a restored copy may diverge: never the same stamp.
        assert_ne!(b.clone().stamp(), s1);
        let json = serde_json::to_string(&b).unwrap();
        assert_ne!(
            serde_json::from_str::<PriceBook>(&json).unwrap().stamp(),
            s1
        );
        b.apply(&tick(50, "m5.large", 0.02));
        assert_ne!(b.stamp(), s1);
    }

    #[test]
    fn changed_since_names_the_changed_pools_or_cannot_say() {
        let mut b = PriceBook::new();
        let s0 = b.stamp();
        assert_eq!(b.changed_since(s0).unwrap().count(), 0);
        b.apply(&tick(100, "m5.large", 0.03));
        let s1 = b.stamp();
        b.apply(&tick(100, "m5.large", 0.03));
        b.apply(&tick(200, "c5.large", 0.05));
        b.apply(&tick(50, "m5.large", 0.02));
        let m5 = PoolKey::of(&tick(0, "m5.large", 0.0)).id();
        let c5 = PoolKey::of(&tick(0, "c5.large", 0.0)).id();
        fn since(b: &PriceBook, s: BookStamp) -> Option<Vec<&str>> {
            b.changed_since(s).map(|i| i.collect())
        }
        assert_eq!(since(&b, s0), Some(vec![&*m5, &*c5, &*m5]));
        assert_eq!(since(&b, s1), Some(vec![&*c5, &*m5]));
        assert_eq!(since(&b, b.stamp()), Some(vec![]));
        // Another book's stamp, a copy's, pruned history: cannot say.
        assert!(b.clone().changed_since(s1).is_none());
        assert!(PriceBook::new().changed_since(s1).is_none());
        let s = b.stamp();
        b.prune_before(150);
        assert!(b.changed_since(s).is_none());
        let s = b.stamp();
        // More changes than kept: the oldest stamps can no longer say.
        for k in 0..=CHANGES_KEPT as i64 {
            b.apply(&tick(1_000 + k, "m5.large", 0.03 + k as f64));
        }
        assert!(b.changed_since(s).is_none());
        let recent = b.stamp();
        b.apply(&tick(1_000_000, "c5.large", 0.04));
        assert_eq!(since(&b, recent), Some(vec![&*c5]));
    }

    #[test]
    fn quiet_until_is_the_next_held_tick_or_age_crossing() {
        let mut b = PriceBook::new();
        assert_eq!(b.quiet_until(0, 1_000), Millis::MAX);
        b.apply(&tick(100, "m5.large", 0.03));
        b.apply(&tick(5_000, "m5.large", 0.04));
        b.apply(&tick(300, "c5.large", 0.05));
        // Before any price: the first tick.
        assert_eq!(b.quiet_until(0, 1_000), 100);
        // m5 turns stale after 1,100; c5 appears at 300.
        assert_eq!(b.quiet_until(100, 1_000), 300);
        assert_eq!(b.quiet_until(300, 1_000), 1_101);
        // Both stale: the held m5 tick at 5,000 is next.
        assert_eq!(b.quiet_until(2_000, 1_000), 5_000);
        assert_eq!(b.quiet_until(5_000, 1_000), 6_001);
        assert_eq!(b.quiet_until(7_000, 1_000), Millis::MAX);
    }

    #[test]
    fn regional_prices_survive_a_checkpoint() {
        let mut b = PriceBook::new();
        for (zone, p) in [("a", 0.30), ("b", 0.10)] {
            let mut t = tick(1_000, "c5.large", p);
            t.zone = Some(zone.into());
            b.apply(&t);
        }
        let r = b.region_price(
            &tick(0, "c5.large", 0.0).region,
            "c5.large",
            Market::Spot,
            2_000,
        );
        let restored: PriceBook =
            serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let region = tick(0, "c5.large", 0.0).region;
        assert_eq!(
            restored.region_price(&region, "c5.large", Market::Spot, 2_000),
            r
        );
        assert!((r.unwrap() - 0.20).abs() < 1e-12);
        assert_eq!(
            restored.cheapest_region_price(&region, "c5.large", Market::Spot, 2_000),
            Some(0.10)
        );
    }

    #[test]
    fn as_of_lookups_and_out_of_order() {
        let mut b = PriceBook::new();
        b.apply(&tick(100, "m5.large", 0.03));
        b.apply(&tick(300, "m5.large", 0.05));
        b.apply(&tick(200, "m5.large", 0.04));
        b.apply(&tick(200, "m5.large", 0.04));
        let k = PoolKey::of(&tick(0, "m5.large", 0.0));
        assert_eq!(b.price_at(&k, 50), None);
        assert_eq!(b.price_at(&k, 250), Some((200, 0.04)));
        assert_eq!(b.history(&k).len(), 3);
        b.prune_before(250);
        assert_eq!(b.price_at(&k, 250), Some((200, 0.04)));
        assert_eq!(b.history(&k).len(), 2);
    }

    #[test]
    fn offers_include_catalogue_ondemand() {
        let c = Catalog::bundled();
        let mut b = PriceBook::new();
        b.apply(&tick(0, "m5.large", 0.03));
        let offers = b.offers(&c, 1000);
        let spot = offers
            .iter()
            .find(|o| o.pool.market == Market::Spot)
            .unwrap();
        assert_eq!(spot.age_ms, Some(1000));
        assert!(offers
            .iter()
            .any(|o| o.pool.market == Market::OnDemand && o.pool.instance_type == "m5.large"));
    }
}
