//! What the running service reports about its decisions, without touching
//! them: a [`BrainFactory`] that wraps the engine and, after every event,
//! turns what the engine saw and decided into prediction-store points
//! (`docs/telemetry.md`) and metrics (ticks, forecast error, spend, budgets),
//! and starts periodic retraining ([`crate::forecast::retrain`]).
//!
//! Why a wrapper and not code in the engine: the engine is pure and shared
//! with the backtest; everything here is I/O or wall-clock. The forecasts are
//! captured by [`RecordingForecaster`] as the engine makes them (forecasting
//! twice would double the most expensive part of a tick), so the decisions
//! are exactly those of an unwrapped engine.
//!
//! Store writes go through [`StoreHandle`], which never blocks; when no store
//! is configured only the metrics are kept.

use super::brain::EngineFactory;
use super::service::{Brain, BrainFactory};
use crate::engine::Engine;
use crate::events::{Command, Event, Market, Millis, ScalingCommand};
use crate::forecast::retrain::{RetrainConfig, Retrainer};
use crate::forecast::{Forecast, Forecaster, History, SharedForecaster};
use crate::state::{GPUS, MEMORY_MIB, VCPU};
use crate::store::points::{self, Demand, Point};
use crate::store::StoreHandle;
use crate::telemetry::Metrics;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One forecast the engine made: for `env`, from the history ending at
/// `origin` (the decision tick), by `model`.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub env: String,
    pub origin: Millis,
    pub model: String,
    pub forecast: Forecast,
}

/// The engine's forecaster: forwards to the hot-swappable model and keeps
/// a copy of each answer until the observer takes it.
pub struct RecordingForecaster {
    model: SharedForecaster,
    log: Mutex<Vec<Recorded>>,
}

impl RecordingForecaster {
    pub fn new(model: SharedForecaster) -> Self {
        RecordingForecaster {
            model,
            log: Mutex::new(Vec::new()),
        }
    }

    /// The swappable model behind it.
    pub fn model(&self) -> &SharedForecaster {
        &self.model
    }

    /// Take what was recorded since the last call.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Forecaster for RecordingForecaster {
    fn name(&self) -> &str {
        "recording"
    }

    fn forecast(&self, h: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        let m = self.model.current();
        let f = m.forecast(h, horizon, quantiles);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded even if nobody takes (e.g. a forecast outside the loop).
        if log.len() < 100_000 {
            log.push(Recorded {
                env: h.key.to_string(),
                origin: h.start + h.values.len() as i64 * h.bucket_ms,
                model: m.name().to_string(),
                forecast: f.clone(),
            });
        }
        f
    }
}

/// Cheapest USD/h per (instance type, market, region).
type Prices = BTreeMap<(String, Market, String), f64>;

/// Builds observed engines (see the module docs).
pub struct ObservingFactory {
    engines: EngineFactory,
    recorder: Arc<RecordingForecaster>,
    store: Option<StoreHandle>,
    metrics: &'static Metrics,
    retrainer: Option<Arc<Mutex<Retrainer>>>,
}

impl ObservingFactory {
    /// Wrap `engines`: its forecaster becomes hot-swappable and recorded.
    /// Retraining starts only when `retrain.interval_s > 0`.
    pub fn new(
        mut engines: EngineFactory,
        store: Option<StoreHandle>,
        retrain: &RetrainConfig,
        metrics: &'static Metrics,
    ) -> Self {
        let shared = SharedForecaster::new(engines.forecaster.clone());
        let recorder = Arc::new(RecordingForecaster::new(shared.clone()));
        engines.forecaster = recorder.clone();
        let retrainer = (retrain.interval_s > 0).then(|| {
            Arc::new(Mutex::new(Retrainer::new(
                retrain.clone(),
                shared,
                engines.config.state.bucket_ms,
                engines.config.horizon_buckets,
                engines.config.quantiles.clone(),
                chrono::Utc::now().timestamp_millis(),
                metrics,
            )))
        });
        // Exposed from the start, so "nothing dropped" is visible as 0.
        metrics.touch_store_dropped();
        ObservingFactory {
            engines,
            recorder,
            store,
            metrics,
            retrainer,
        }
    }

    /// The model the engines forecast with (swap it to change it).
    pub fn model(&self) -> &SharedForecaster {
        self.recorder.model()
    }
}

impl BrainFactory for ObservingFactory {
    fn create(&self, restore: Option<&serde_json::Value>) -> Result<Box<dyn Brain>, String> {
        let engine = self.engines.engine_from(restore)?;
        self.recorder.take();
        Ok(Box::new(ObservingBrain {
            engine,
            recorder: self.recorder.clone(),
            store: self.store.clone(),
            metrics: self.metrics,
            retrainer: self.retrainer.clone(),
            book: Bookkeeping::default(),
        }))
    }
}

/// Per-brain memory of what was already reported.
#[derive(Debug, Default)]
struct Bookkeeping {
    /// End of the last bucket written as observed demand, per environment.
    demand_until: BTreeMap<String, Millis>,
    /// The p50 forecast of the next bucket: (bucket start, vCPUs).
    next_p50: BTreeMap<String, (Millis, f64)>,
    spend: BTreeMap<String, SpendAcc>,
}

/// Spend of one environment: the commanded instance mix priced at the
/// prices the engine knew when it issued the command, accrued in event time.
#[derive(Debug, Default, Clone, Copy)]
struct SpendAcc {
    usd_per_hour: f64,
    since: Option<Millis>,
    usd_total: f64,
}

struct ObservingBrain {
    engine: Engine,
    recorder: Arc<RecordingForecaster>,
    store: Option<StoreHandle>,
    metrics: &'static Metrics,
    retrainer: Option<Arc<Mutex<Retrainer>>>,
    book: Bookkeeping,
}

impl Brain for ObservingBrain {
    fn handle(&mut self, ev: &Event, out: &mut Vec<Command>) {
        let (t0, ticks0, n0) = (Instant::now(), self.engine.counters().ticks, out.len());
        self.engine.handle(ev, out);
        if let (Event::PriceTick(p), Some(s)) = (ev, &self.store) {
            s.write(points::price(p));
        }
        self.after(t0, ticks0, &out[n0..]);
    }

    fn finish(&mut self, out: &mut Vec<Command>) {
        let (t0, ticks0, n0) = (Instant::now(), self.engine.counters().ticks, out.len());
        self.engine.finish(out);
        self.after(t0, ticks0, &out[n0..]);
    }

    fn save(&self) -> Result<serde_json::Value, String> {
        serde_json::to_value(self.engine.state())
            .map_err(|e| format!("serialising engine state: {e}"))
    }

    fn save_json(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self.engine.state())
            .map_err(|e| format!("serialising engine state: {e}"))
    }

    fn on_timer(&mut self) {
        self.maybe_retrain();
    }
}

impl ObservingBrain {
    fn after(&mut self, t0: Instant, ticks0: u64, new: &[Command]) {
        let ticks = self.engine.counters().ticks - ticks0;
        let recs = self.recorder.take();
        if ticks == 0 && recs.is_empty() && new.is_empty() {
            return;
        }
        if ticks > 0 {
            let per = t0.elapsed().as_secs_f64() / ticks as f64;
            for _ in 0..ticks {
                self.metrics.observe_tick(per);
            }
        }
        let mut pts: Vec<Point> = Vec::new();
        let bucket_ms = self.engine.config().state.bucket_ms;
        // Observed demand up to each tick, and last tick's forecast error.
        for r in &recs {
            self.observe_demand(&r.env, r.origin, bucket_ms, &mut pts);
        }
        for r in &recs {
            pts.extend(points::forecast(
                &r.env,
                &r.model,
                r.origin,
                bucket_ms,
                &r.forecast,
            ));
            let f = &r.forecast;
            let mid = f
                .quantiles
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - 0.5).abs().total_cmp(&(b.1 - 0.5).abs()))
                .map(|(i, _)| i);
            if let Some(p50) = mid.and_then(|i| f.values.first()?.get(i).copied()) {
                self.book.next_p50.insert(r.env.clone(), (r.origin, p50));
            }
        }
        self.account_spend(&recs, new, &mut pts);
        pts.extend(points::commands(new));
        if ticks > 0 {
            let at = recs.iter().map(|r| r.origin).max();
            if let Some(at) = at {
                for a in self.engine.state().ledger.accounts.values() {
                    let scope = crate::budget::scope_str(a.scope);
                    self.metrics.set_budget(scope, &a.id, a.allocated, a.spent);
                    pts.extend(points::budget(
                        scope,
                        &a.id,
                        at,
                        a.allocated,
                        a.committed,
                        a.spent,
                    ));
                }
            }
            self.maybe_retrain();
        }
        if let Some(s) = &self.store {
            s.write_all(pts);
        }
    }

    /// Start a retraining on the engine's history when one is due.
    fn maybe_retrain(&mut self) {
        if let Some(r) = &self.retrainer {
            let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
            r.maybe_start(
                &self.engine.state().demand,
                chrono::Utc::now().timestamp_millis(),
            );
        }
    }

    /// Demand points for `env`'s closed buckets not yet written, up to
    /// `until` (the tick); the forecast error of the bucket the previous
    /// tick predicted.
    fn observe_demand(&mut self, env: &str, until: Millis, bucket_ms: i64, pts: &mut Vec<Point>) {
        let series: Vec<&crate::state::Series> = self
            .engine
            .state()
            .demand
            .series()
            .iter()
            .filter(|s| s.compute_environment == env)
            .collect();
        let Some(first) = series.iter().map(|s| s.start).min() else {
            return;
        };
        let from = self
            .book
            .demand_until
            .get(env)
            .copied()
            .unwrap_or(first)
            .max(first);
        let mut t = from;
        while t + bucket_ms <= until {
            let mut d = Demand::default();
            for s in &series {
                let i = (t - s.start).div_euclid(bucket_ms);
                if i < 0 {
                    continue;
                }
                let i = i as usize;
                if let Some(v) = s.values.get(i) {
                    d.vcpus += v[VCPU];
                    d.memory_mib += v[MEMORY_MIB];
                    d.gpus += v[GPUS];
                }
                if let Some(n) = s.submissions.get(i) {
                    d.submissions += *n as f64;
                }
            }
            if let Some((at, p50)) = self.book.next_p50.get(env) {
                if *at == t {
                    self.metrics.observe_forecast_error(env, p50 - d.vcpus);
                }
            }
            if let Some(p) = points::demand(env, t, &d) {
                pts.push(p);
            }
            t += bucket_ms;
        }
        self.book.demand_until.insert(env.to_string(), t.max(from));
    }

    /// Accrue spend per environment up to each tick; a scaling command
    /// changes the rate from its issue time. Ticks and commands are taken in
    /// event-time order (a tick before a command of the same time).
    fn account_spend(&mut self, recs: &[Recorded], new: &[Command], pts: &mut Vec<Point>) {
        let mut steps: Vec<(Millis, u8, usize)> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| (r.origin, 0, i))
            .collect();
        steps.extend(new.iter().enumerate().filter_map(|(i, c)| match c {
            Command::Scaling(s) => Some((s.issued_at, 1, i)),
            Command::Preemption(_) => None,
        }));
        steps.sort_unstable();
        let mut prices: Option<(Millis, Prices)> = None;
        for (t, kind, i) in steps {
            if kind == 0 {
                let env = &recs[i].env;
                let acc = self.book.spend.entry(env.clone()).or_default();
                if let Some(since) = acc.since {
                    let usd = acc.usd_per_hour * (t - since).max(0) as f64 / 3_600_000.0;
                    acc.usd_total += usd;
                    self.metrics.add_spend_usd(env, usd);
                    acc.since = Some(t.max(since));
                }
                self.metrics.touch_spend(env);
                pts.extend(points::spend(env, t, acc.usd_total, acc.usd_per_hour));
            } else if let Command::Scaling(s) = &new[i] {
                if prices.as_ref().is_none_or(|p| p.0 != t) {
                    prices = Some((t, self.price_map(t)));
                }
                let rate = prices
                    .as_ref()
                    .map(|(_, m)| self.mix_rate(s, m))
                    .unwrap_or(0.0);
                let acc = self
                    .book
                    .spend
                    .entry(s.compute_environment.clone())
                    .or_default();
                acc.usd_per_hour = rate;
                acc.since = Some(acc.since.map_or(t, |x| x.max(t)));
            }
        }
    }

    /// Cheapest price per (instance type, market, region) as of `t`.
    fn price_map(&self, t: Millis) -> Prices {
        let mut m = Prices::new();
        for o in self.engine.state().book.offers(self.engine.catalog(), t) {
            let k = (o.pool.instance_type, o.pool.market, o.pool.region);
            let e = m.entry(k).or_insert(f64::INFINITY);
            *e = e.min(o.usd_per_hour);
        }
        m
    }

    fn mix_rate(&self, s: &ScalingCommand, prices: &Prices) -> f64 {
        s.instance_mix
            .iter()
            .map(|a| {
                let p = prices
                    .get(&(a.instance_type.clone(), a.market, a.region.clone()))
                    .copied()
                    .or_else(|| {
                        self.engine
                            .catalog()
                            .ondemand_price(&a.region, &a.instance_type)
                    })
                    .unwrap_or(0.0);
                p * a.count.max(0) as f64
            })
            .sum()
    }
}
