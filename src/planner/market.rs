//! From the price book and catalogue to the planner's offers: shapes joined
//! on, stale prices flagged and not trusted blindly, reserved capacity added
//! as already-paid pools.

use super::offers::{canonical_arch, Offer};
use crate::events::{Market, Millis, Text};
use crate::policy::ReservedInstances;
use crate::pricing::book::{OfferRef, PoolKey};
use crate::pricing::{Catalog, InstanceSpec, PriceBook};

/// What to do with prices.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketView<'a> {
    /// Prices older than this are stale.
    pub max_price_age_ms: i64,
    pub markets: &'a [Market],
    pub regions: &'a [String],
    pub providers: &'a [String],
    pub instance_types: &'a [String],
    pub reserved: &'a [ReservedInstances],
    /// Shape filters applied to market offers before they are built (the
    /// optimiser would drop them anyway; see `offers::filter_shape`):
    /// allowed CPU architectures (empty: any), burstable types, and a
    /// minimum instance size. Reserved inventory is never filtered here.
    pub shape: ShapeFilter<'a>,
}

/// Which instance shapes may be offered at all (see [`MarketView::shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ShapeFilter<'a> {
    pub architectures: &'a [String],
    pub exclude_burstable: bool,
    pub min_vcpus: f64,
}

impl ShapeFilter<'_> {
    /// No filtering.
    pub const ANY: ShapeFilter<'static> = ShapeFilter {
        architectures: &[],
        exclude_burstable: false,
        min_vcpus: 0.0,
    };

    fn allows(&self, spec: &crate::pricing::InstanceSpec) -> bool {
        spec.vcpus >= self.min_vcpus
            && !(self.exclude_burstable && super::offers::is_burstable(&spec.name))
            && (self.architectures.is_empty()
                || spec.arch.is_empty()
                || self
                    .architectures
                    .iter()
                    .any(|a| canonical_arch(a) == canonical_arch(&spec.arch)))
    }
}

impl MarketView<'_> {
    /// Whether the policy buys in this market, region, provider and type.
    fn allows(&self, m: Market, region: &str, provider: &str, itype: &str) -> bool {
        (self.markets.is_empty() || self.markets.contains(&m))
            && (self.regions.is_empty() || self.regions.iter().any(|r| r == region))
            && (self.providers.is_empty()
                || self
                    .providers
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(provider)))
            && (self.instance_types.is_empty() || self.instance_types.iter().any(|t| t == itype))
    }
}

/// Where an offer of [`offers_from_book`] comes from. Its offers come in
/// this order (book pools in id order, then catalogue prices, then the
/// reserved inventory), which a stable sort keeps among equal pool keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    /// A pool of the book.
    Book,
    /// A catalogue on-demand price no book pool overrides.
    Catalog,
    /// The policy's reserved inventory.
    Reserved,
}

/// Every pool the planner may buy from as of `now`.
///
/// Stale rule: a spot price not confirmed for `max_price_age_ms` is still
/// offered (the pool probably exists) but priced at the type's on-demand
/// price in that region, and flagged `stale`; without an on-demand price the
/// pool is dropped. So a silent feed can make spot look no cheaper than
/// on-demand, never cheaper than it is. On-demand ticks that go stale fall
/// back to the catalogue list price when there is one; catalogue prices
/// themselves never go stale.
///
/// Reserved instances become pools with `available = count` and their
/// on-demand rate as nominal price (marginal cost 0). Types the catalogue
/// has no shape for are skipped (the planner cannot size them), and so are
/// shapes `view.shape` does not allow (decided once per type, before any
/// offer is built: the planner runs this every decision tick over ~10,000
/// pools, and building offers it then drops was most of a backtest's time).
pub fn offers_from_book(
    book: &PriceBook,
    catalog: &Catalog,
    now: Millis,
    view: &MarketView<'_>,
) -> Vec<Offer> {
    build(book, catalog, now, view, |o, _| o)
}

/// [`offers_from_book`], each offer with its [`Source`].
pub(super) fn offers_with_sources(
    book: &PriceBook,
    catalog: &Catalog,
    now: Millis,
    view: &MarketView<'_>,
) -> Vec<(Offer, Source)> {
    build(book, catalog, now, view, |o, s| (o, s))
}

/// [`offers_from_book`], each offer passed through `wrap`.
fn build<T>(
    book: &PriceBook,
    catalog: &Catalog,
    now: Millis,
    view: &MarketView<'_>,
    wrap: impl Fn(Offer, Source) -> T,
) -> Vec<T> {
    let refs = book.offer_refs(catalog, now);
    // At most one offer per pool: sized once, not grown by doubling (its
    // reallocations, copying offers and faulting fresh pages, were a
    // quarter of the planner's time on a dense replay).
    let mut out = Vec::with_capacity(refs.len() + view.reserved.len());
    // Shape verdicts per type name (few hundred types, ~10,000 pools).
    let mut shape_ok: std::collections::HashMap<
        &str,
        Option<&crate::pricing::InstanceSpec>,
        foldhash::fast::RandomState,
    > = Default::default();
    // Pools come grouped by region: keep the region's on-demand table.
    let mut od_region: Option<(&str, Option<&std::collections::BTreeMap<String, f64>>)> = None;
    for o in refs {
        if o.market == Market::Reserved
            || !view.allows(o.market, o.region, o.provider, o.instance_type)
        {
            // Reserved capacity comes from the policy's inventory below.
            continue;
        }
        let spec = *shape_ok.entry(o.instance_type).or_insert_with(|| {
            catalog
                .spec(o.instance_type)
                .filter(|spec| view.shape.allows(spec))
        });
        let Some(spec) = spec else {
            continue;
        };
        let table = match od_region {
            Some((r, t)) if r == o.region => t,
            _ => {
                let t = catalog.ondemand_prices_in(o.region);
                od_region = Some((o.region, t));
                t
            }
        };
        let od = table.and_then(|t| t.get(o.instance_type)).copied();
        if let Some(offer) = ref_offer(&o, spec, od, now, view) {
            let source = if o.age_ms.is_some() {
                Source::Book
            } else {
                Source::Catalog
            };
            out.push(wrap(offer, source));
        }
    }
    if view.markets.is_empty() || view.markets.contains(&Market::Reserved) {
        for r in view.reserved {
            if r.count <= 0
                || !view.allows(Market::Reserved, &r.region, &r.provider, &r.instance_type)
            {
                continue;
            }
            let Some(spec) = catalog.spec(&r.instance_type) else {
                continue;
            };
            let od = catalog.ondemand_price(&r.region, &r.instance_type);
            let offer = Offer {
                provider: r.provider.as_str().into(),
                region: r.region.as_str().into(),
                zone: None,
                instance_type: r.instance_type.as_str().into(),
                market: Market::Reserved,
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
                gpus: spec.gpus,
                arch: spec.arch.as_str().into(),
                usd_per_hour: od.unwrap_or(0.0),
                on_demand_usd_per_hour: od,
                interruption_rate_per_h: 0.0,
                launch_failure_p: 0.0,
                available: Some(r.count as i64),
                price_at: now,
                stale: false,
            };
            out.push(wrap(offer, Source::Reserved));
        }
    }
    out
}

/// Whether a pool of the book can ever give an offer under `view`: its
/// market, region, provider and type allowed, its shape known and allowed.
/// (Whether it does at a time depends on its price then.)
pub(super) fn may_offer(key: &PoolKey, catalog: &Catalog, view: &MarketView<'_>) -> bool {
    key.market != Market::Reserved
        && view.allows(key.market, &key.region, &key.provider, &key.instance_type)
        && catalog
            .spec(&key.instance_type)
            .is_some_and(|spec| view.shape.allows(spec))
}

/// The offer [`offers_from_book`] makes of one entry of
/// [`PriceBook::offer_refs`] (a book pool or a catalogue price), if any:
/// the same rules, one entry at a time.
pub(super) fn ref_to_offer(
    o: &OfferRef<'_>,
    catalog: &Catalog,
    now: Millis,
    view: &MarketView<'_>,
) -> Option<Offer> {
    if o.market == Market::Reserved || !view.allows(o.market, o.region, o.provider, o.instance_type)
    {
        return None;
    }
    let spec = catalog
        .spec(o.instance_type)
        .filter(|spec| view.shape.allows(spec))?;
    let od = catalog.ondemand_price(o.region, o.instance_type);
    ref_offer(o, spec, od, now, view)
}

/// The offer of an allowed entry with a known shape (`spec`) and the
/// type's on-demand price in its region (`od`): the stale rule applied.
fn ref_offer(
    o: &OfferRef<'_>,
    spec: &InstanceSpec,
    od: Option<f64>,
    now: Millis,
    view: &MarketView<'_>,
) -> Option<Offer> {
    let stale = o.age_ms.is_some_and(|a| a > view.max_price_age_ms);
    let price = match (stale, o.market) {
        (false, _) => o.usd_per_hour,
        (true, Market::Spot) => od?.max(o.usd_per_hour),
        (true, _) => od.unwrap_or(o.usd_per_hour),
    };
    if !(price.is_finite() && price >= 0.0) {
        return None;
    }
    Some(Offer {
        provider: o.provider.into(),
        region: o.region.into(),
        zone: o.zone.map(Text::from),
        instance_type: o.instance_type.into(),
        market: o.market,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        gpus: spec.gpus,
        arch: spec.arch.as_str().into(),
        usd_per_hour: price,
        on_demand_usd_per_hour: od,
        interruption_rate_per_h: 0.0,
        launch_failure_p: 0.0,
        available: None,
        price_at: now - o.age_ms.unwrap_or(0),
        stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::book::tests::tick;

    #[test]
    fn stale_spot_is_priced_at_on_demand_and_reserved_added() {
        let cat = Catalog::bundled();
        let mut book = PriceBook::new();
        book.apply(&tick(0, "m5.large", 0.03));
        let reserved = vec![ReservedInstances {
            provider: "aws".into(),
            region: "us-east-1".into(),
            instance_type: "c5.xlarge".into(),
            count: 3,
        }];
        let view = MarketView {
            max_price_age_ms: 3_600_000,
            markets: &[],
            regions: &[],
            providers: &[],
            instance_types: &["m5.large".to_string(), "c5.xlarge".to_string()],
            reserved: &reserved,
            shape: ShapeFilter::ANY,
        };
        let fresh = offers_from_book(&book, &cat, 1000, &view);
        let spot = fresh.iter().find(|o| o.market == Market::Spot).unwrap();
        assert_eq!(spot.usd_per_hour, 0.03);
        assert!(!spot.stale);
        assert_eq!(spot.vcpus, 2.0);
        let res = fresh.iter().find(|o| o.market == Market::Reserved).unwrap();
        assert_eq!(res.available, Some(3));
        assert_eq!(res.marginal_usd_per_hour(), 0.0);
        let old = offers_from_book(&book, &cat, 2 * 3_600_000, &view);
        let spot = old.iter().find(|o| o.market == Market::Spot).unwrap();
        assert!(spot.stale);
        assert_eq!(
            Some(spot.usd_per_hour),
            cat.ondemand_price("us-east-1", "m5.large")
        );
    }
}
