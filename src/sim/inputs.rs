//! Glue between the shared decision core and the simulator: price curves
//! from the catalogue and the (tiled) price ticks, and the engine as the
//! source of `predictive` / `oracle` commands.

use super::policy::CommandSource;
use super::prices::{InstanceType, PriceCurve, SimPrices};
use crate::engine::Engine;
use crate::events::{Command, Event, Market, Millis, PriceTick, ScalingCommand};
use crate::forecast::Forecaster;
use crate::pricing::Catalog;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the simulator can buy: every on-demand (region, type) of the
/// catalogue at its list price, and a spot pool per (type, region) the ticks
/// price. A region's spot curve is the mean over its zones of each zone's
/// latest price (the planner's instance mix names a region, not a zone, and
/// the mean neither favours nor penalises any zone). Spot prices of types
/// the catalogue cannot shape are ignored.
pub fn sim_prices(catalog: &Catalog, spot: &[PriceTick]) -> SimPrices {
    let mut p = SimPrices::new();
    for (region, spec, price) in catalog.ondemand_offers() {
        let ty = p.add_type(shape(spec));
        p.add_pool(ty, Market::OnDemand, region, PriceCurve::constant(price));
    }
    // (type, region) → zone → ticks, in time order.
    let mut groups: BTreeMap<(&str, &str), Vec<&PriceTick>> = BTreeMap::new();
    for t in spot.iter().filter(|t| t.market == Market::Spot) {
        groups
            .entry((t.instance_type.as_str(), t.region.as_str()))
            .or_default()
            .push(t);
    }
    for ((itype, region), mut ticks) in groups {
        let Some(spec) = catalog.spec(itype) else {
            continue;
        };
        ticks.sort_by_key(|t| t.at);
        let mut latest: BTreeMap<&str, f64> = BTreeMap::new();
        let mut pts: Vec<(Millis, f64)> = Vec::with_capacity(ticks.len());
        for t in ticks {
            latest.insert(t.zone.as_deref().unwrap_or(""), t.usd_per_hour);
            let mean = latest.values().sum::<f64>() / latest.len() as f64;
            pts.push((t.at, mean));
        }
        let ty = p.add_type(shape(spec));
        if let Some(curve) = PriceCurve::from_points(pts) {
            p.add_pool(ty, Market::Spot, region, curve);
        }
    }
    p
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
