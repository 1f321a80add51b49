//! Glue between the shared decision core and the simulator: price curves
//! from the catalogue and the (tiled) price ticks, and the engine as the
//! source of `predictive` / `oracle` commands.

use super::policy::CommandSource;
use super::prices::{InstanceType, PriceCurve, SimPrices};
use crate::engine::Engine;
use crate::events::{Command, Event, Market, Millis, PriceTick, ScalingCommand};
use crate::forecast::Forecaster;
use crate::pricing::{Catalog, Tiling};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What the simulator can buy: every on-demand (region, type) of the
/// catalogue at its list price, and a spot pool per (type, region) the ticks
/// price. A region's spot curve is the mean over its zones of each zone's
/// latest price (the planner's instance mix names a region, not a zone, and
/// the mean neither favours nor penalises any zone). Spot prices of types
/// the catalogue cannot shape are ignored.
pub fn sim_prices(catalog: &Catalog, spot: &[PriceTick]) -> SimPrices {
    sim_prices_from(catalog, spot.iter().map(|t| (t.at, t)))
}

/// [`sim_prices`] of a tiled history's emitted ticks, none written out.
pub fn sim_prices_tiled(catalog: &Catalog, tiling: &Tiling<'_>) -> SimPrices {
    sim_prices_from(catalog, tiling.iter().map(|t| (t.at, t.tick)))
}

/// One (type, region)'s spot ticks: time, zone, price.
type ZoneTicks<'a> = Vec<(Millis, &'a str, f64)>;

/// [`sim_prices`] of `(time, tick)` pairs in time order (a tick's own time
/// is not read: a tiling shifts it).
fn sim_prices_from<'a>(
    catalog: &Catalog,
    ticks: impl Iterator<Item = (Millis, &'a PriceTick)>,
) -> SimPrices {
    let mut p = SimPrices::new();
    for (region, spec, price) in catalog.ondemand_offers() {
        let ty = p.add_type(shape(spec));
        p.add_pool(ty, Market::OnDemand, region, PriceCurve::constant(price));
    }
    // (type, region) → (time, zone, price), in time order. A tiling repeats
    // the same history ticks: their group is looked up once per tick.
    let mut groups: BTreeMap<(&str, &str), ZoneTicks> = BTreeMap::new();
    let mut keys: HashMap<*const PriceTick, (&str, &str)> = HashMap::new();
    for (at, t) in ticks.filter(|(_, t)| t.market == Market::Spot) {
        let key = *keys
            .entry(t as *const PriceTick)
            .or_insert((t.instance_type.as_str(), t.region.as_str()));
        let zone = t.zone.as_deref().unwrap_or("");
        groups
            .entry(key)
            .or_default()
            .push((at, zone, t.usd_per_hour));
    }
    for ((itype, region), mut ticks) in groups {
        let Some(spec) = catalog.spec(itype) else {
            continue;
        };
        ticks.sort_by_key(|t| t.0);
        let ty = p.add_type(shape(spec));
        if let Some(curve) = PriceCurve::from_points(zone_means(&ticks)) {
            p.add_pool(ty, Market::Spot, region, curve);
        }
    }
    p
}

/// After each tick, the mean over the zones seen so far of each zone's
/// latest price (summed in zone order, as a map by zone would).
fn zone_means(ticks: &[(Millis, &str, f64)]) -> Vec<(Millis, f64)> {
    let mut zones: Vec<&str> = ticks.iter().map(|t| t.1).collect();
    zones.sort_unstable();
    zones.dedup();
    let slot: HashMap<&str, usize> = zones.iter().enumerate().map(|(i, &z)| (z, i)).collect();
    let mut latest: Vec<Option<f64>> = vec![None; zones.len()];
    let mut seen = 0usize;
    ticks
        .iter()
        .map(|&(at, zone, usd)| {
            let s = &mut latest[slot[zone]];
            seen += usize::from(s.is_none());
            *s = Some(usd);
            let mean = latest.iter().flatten().sum::<f64>() / seen as f64;
            (at, mean)
        })
        .collect()
}

fn shape(spec: &crate::pricing::InstanceSpec) -> InstanceType {
    InstanceType {
        name: spec.name.clone(),
        vcpus: spec.vcpus.round().max(1.0) as u32,
        memory_mib: spec.memory_mib,
        gpus: spec.gpus,
    }
}

/// Feed every input event to a fresh [`Engine`] in time order and collect
/// its scaling commands — exactly what the live service would publish.
pub struct EngineSource<F: Fn(Option<Arc<dyn Forecaster>>) -> Engine> {
    /// Builds the engine, optionally with a forecaster replacing its own.
    pub make: F,
}

impl<F: Fn(Option<Arc<dyn Forecaster>>) -> Engine> CommandSource for EngineSource<F> {
    fn commands(
        &self,
        events: &[Event],
        forecaster: Option<Arc<dyn Forecaster>>,
    ) -> Vec<ScalingCommand> {
        let mut engine = (self.make)(forecaster);
        let mut out = Vec::new();
        for ev in events {
            engine.handle(ev, &mut out);
        }
        engine.finish(&mut out);
        out.into_iter()
            .filter_map(|c| match c {
                Command::Scaling(s) => Some(s),
                Command::Preemption(_) => None,
            })
            .collect()
    }

    fn engine(&self, forecaster: Option<Arc<dyn Forecaster>>) -> Option<Engine> {
        Some((self.make)(forecaster))
    }
}
