//! Glue between the shared decision core and the simulator: price curves
//! from the catalogue and the (tiled) price ticks, and the engine as the
//! source of `predictive` / `oracle` commands.

use super::policy::CommandSource;
use super::prices::{InstanceType, PriceCurve, SimPrices};
use crate::engine::Engine;
use crate::events::{Command, Event, Market, Millis, PriceTick, ScalingCommand};
use crate::forecast::Forecaster;
use crate::pricing::{Catalog, Tiling};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the simulator can buy: every on-demand (region, type) of the
/// catalogue at its list price, and a spot pool per (type, region) the ticks
/// price. A region's spot curve is the mean over its zones of each zone's
/// latest price (the planner's instance mix names a region, not a zone, and
/// the mean neither favours nor penalises any zone). Spot prices of types
/// the catalogue cannot shape are ignored.
pub fn sim_prices(catalog: &Catalog, spot: &[PriceTick]) -> SimPrices {
    let sources: Vec<&PriceTick> = spot.iter().collect();
    sim_prices_from(catalog, &sources, spot.iter().map(|t| t.at).zip(0..))
}

/// [`sim_prices`] of a tiled history's emitted ticks, none written out.
pub fn sim_prices_tiled(catalog: &Catalog, tiling: &Tiling<'_>) -> SimPrices {
    let sources: Vec<&PriceTick> = (0..tiling.len()).map(|i| tiling.source(i)).collect();
    sim_prices_from(catalog, &sources, tiling.iter().map(|t| (t.at, t.index)))
}

/// [`sim_prices`] of ticks given as `(time, index into sources)` in time
/// order (a source's own time is not read: a tiling shifts it). Each
/// source's (type, region) group and zone are looked up once, as a tiling
/// repeats the same sources many times; the ticks are walked twice, to
/// size each group's vector and to fill it.
fn sim_prices_from(
    catalog: &Catalog,
    sources: &[&PriceTick],
    ticks: impl Iterator<Item = (Millis, usize)> + Clone,
) -> SimPrices {
    let mut p = SimPrices::new();
    for (region, spec, price) in catalog.ondemand_offers() {
        let ty = p.add_type(shape(spec));
        p.add_pool(ty, Market::OnDemand, region, PriceCurve::constant(price));
    }
    fn zone_of<'a>(t: &&'a PriceTick) -> &'a str {
        t.zone.as_deref().unwrap_or("")
    }
    let mut keys: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut zones: Vec<Vec<&str>> = Vec::new();
    let group: Vec<Option<usize>> = sources
        .iter()
        .map(|t| {
            (t.market == Market::Spot).then(|| {
                let next = keys.len();
                let g = *keys
                    .entry((t.instance_type.as_str(), t.region.as_str()))
                    .or_insert(next);
                if g == zones.len() {
                    zones.push(Vec::new());
                }
                zones[g].push(zone_of(t));
                g
            })
        })
        .collect();
    zones.iter_mut().for_each(|z| {
        z.sort_unstable();
        z.dedup();
    });
    // Zones are numbered in name order, so means sum as a map by zone would.
    let slot: Vec<usize> = sources
        .iter()
        .zip(&group)
        .map(|(t, g)| g.map_or(0, |g| zones[g].binary_search(&zone_of(t)).unwrap_or(0)))
        .collect();
    let mut counts = vec![0usize; zones.len()];
    ticks.clone().for_each(|(_, i)| {
        if let Some(g) = group[i] {
            counts[g] += 1;
        }
    });
    let mut series: Vec<ZoneTicks> = counts.iter().map(|&n| Vec::with_capacity(n)).collect();
    for (at, i) in ticks {
        if let Some(g) = group[i] {
            series[g].push((at, slot[i], sources[i].usd_per_hour));
        }
    }
    for ((itype, region), g) in keys {
        let mut ticks = std::mem::take(&mut series[g]);
        let Some(spec) = catalog.spec(itype).filter(|_| !ticks.is_empty()) else {
            continue;
        };
        ticks.sort_by_key(|t| t.0);
        let ty = p.add_type(shape(spec));
        if let Some(curve) = PriceCurve::from_points(zone_means(&ticks, zones[g].len())) {
            p.add_pool(ty, Market::Spot, region, curve);
        }
    }
    p
}

/// One (type, region)'s spot ticks: time, zone (its number), price.
type ZoneTicks = Vec<(Millis, usize, f64)>;

/// After each tick, the mean over the zones seen so far of each zone's
/// latest price (summed in zone order).
fn zone_means(ticks: &[(Millis, usize, f64)], zones: usize) -> Vec<(Millis, f64)> {
    let mut latest: Vec<Option<f64>> = vec![None; zones];
    let mut seen = 0usize;
    ticks
        .iter()
        .map(|&(at, zone, usd)| {
            let s = &mut latest[zone];
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
