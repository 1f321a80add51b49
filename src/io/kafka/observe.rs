//! What the running service reports about its decisions, without touching
//! them: a [`BrainFactory`] that wraps the engine and, after every event,
//! turns the [`TickReport`]s the engine returned (forecasts used, plans,
//! commands, budgets) into prediction-store points (`docs/telemetry.md`)
//! and metrics (ticks, forecast error, spend, budgets), and starts periodic
//! retraining ([`crate::io::retrain`]).
//!
//! Why a wrapper and not code in the engine: the engine is pure and shared
//! with the backtest; everything here is I/O or wall-clock. The engine says
//! what each tick did, so nothing here forecasts again or reads the engine
//! from outside, and the decisions are exactly those of an unwrapped engine.
//!
//! Store writes go through [`StoreHandle`], which never blocks; when no store
//! is configured only the metrics are kept.

use super::port::{Brain, BrainError, BrainFactory, BudgetShare, Capture, Refused};
use crate::engine::{Engine, TickForecast, TickReport};
use crate::events::{Command, Event, Millis, ScalingCommand};
use crate::forecast::{Forecaster, SharedForecaster};
use crate::io::retrain::{RetrainConfig, Retrainer};
use crate::state::{GPUS, MEMORY_MIB, VCPU};
use crate::store::points::{self, Demand, Point};
use crate::store::StoreHandle;
use crate::telemetry::Metrics;
use crate::wiring::EngineFactory;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Builds observed engines (see the module docs).
pub struct ObservingFactory {
    engines: EngineFactory,
    /// The model retraining swaps in; each brain's engine takes it up.
    model: SharedForecaster,
    store: Option<StoreHandle>,
    metrics: &'static Metrics,
    retrainer: Option<Arc<Mutex<Retrainer>>>,
}

impl ObservingFactory {
    /// Wrap `engines`: its forecaster becomes hot-swappable. Retraining
    /// starts only when `retrain.interval_s > 0`.
    pub fn new(
        engines: EngineFactory,
        store: Option<StoreHandle>,
        retrain: &RetrainConfig,
        metrics: &'static Metrics,
    ) -> Self {
        let shared = SharedForecaster::new(engines.forecaster.clone());
        let retrainer = (retrain.interval_s > 0).then(|| {
            Arc::new(Mutex::new(Retrainer::new(
                retrain.clone(),
                shared.clone(),
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
            model: shared,
            store,
            metrics,
            retrainer,
        }
    }

    /// The model the engines forecast with (swap it to change it; each
    /// engine takes the new one up after its next decision tick, or at the
    /// service's next timer).
    pub fn model(&self) -> &SharedForecaster {
        &self.model
    }
}

impl BrainFactory for ObservingFactory {
    fn create(&self, restore: Option<&serde_json::Value>) -> Result<Box<dyn Brain>, BrainError> {
        let mut engine = self
            .engines
            .engine_from(restore)
            .map_err(BrainError::Restore)?;
        let using = self.model.current();
        engine.set_forecaster(using.clone());
        Ok(Box::new(ObservingBrain {
            engine,
            model: self.model.clone(),
            using,
            reports: Vec::new(),
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
/// latest prices the service had seen when the command was issued (the
/// cheapest pool of each type, market and region in the engine's price
/// book; the catalogue's on-demand price when no tick was seen), accrued in
/// event time.
#[derive(Debug, Default, Clone, Copy)]
struct SpendAcc {
    usd_per_hour: f64,
    since: Option<Millis>,
    usd_total: f64,
}

struct ObservingBrain {
    engine: Engine,
    model: SharedForecaster,
    /// The model the engine forecasts with now.
    using: Arc<dyn Forecaster>,
    /// What the engine's ticks did during the last call (kept for its
    /// allocation).
    reports: Vec<TickReport>,
    store: Option<StoreHandle>,
    metrics: &'static Metrics,
    retrainer: Option<Arc<Mutex<Retrainer>>>,
    book: Bookkeeping,
}

impl Brain for ObservingBrain {
    fn handle(&mut self, ev: Event, out: &mut Vec<Command>) -> Option<Refused> {
        let (t0, n0) = (Instant::now(), out.len());
        if let (Event::PriceTick(p), Some(s)) = (&ev, &self.store) {
            s.write(points::price(p));
        }
        let mut reports = std::mem::take(&mut self.reports);
        reports.clear();
        let h = self.engine.handle_reporting(&ev, out, Some(&mut reports));
        self.after(t0, &reports, &out[n0..]);
        self.reports = reports;
        super::brain::refused(h, ev)
    }

    fn finish(&mut self, out: &mut Vec<Command>) {
        let (t0, n0) = (Instant::now(), out.len());
        let mut reports = Vec::new();
        self.engine.finish_reporting(out, Some(&mut reports));
        self.after(t0, &reports, &out[n0..]);
    }

    fn save(&self) -> Result<serde_json::Value, BrainError> {
        serde_json::to_value(self.engine.state()).map_err(BrainError::Encode)
    }

    fn save_json(&self) -> Result<Vec<u8>, BrainError> {
        serde_json::to_vec(self.engine.state()).map_err(BrainError::Encode)
    }

    fn capture(&self) -> Result<Capture, BrainError> {
        Ok(super::brain::capture_engine(&self.engine))
    }

    fn on_timer(&mut self) {
        self.take_up_model();
        self.maybe_retrain();
    }

    fn tick_span(&self) -> tracing::Span {
        self.engine.tick_span().clone()
    }

    fn budgets(&mut self) -> Option<&mut dyn BudgetShare> {
        Some(&mut self.engine)
    }

    fn engine(&mut self) -> Option<&mut Engine> {
        Some(&mut self.engine)
    }
}

impl ObservingBrain {
    /// Report what the ticks of one call did (`new`: every command of the
    /// call, budget refusals at submission included).
    fn after(&mut self, t0: Instant, reports: &[TickReport], new: &[Command]) {
        let ticks = reports.len();
        if ticks == 0 && new.is_empty() {
            return;
        }
        let recs: Vec<&TickForecast> = reports.iter().flat_map(|r| &r.forecasts).collect();
        if ticks > 0 {
            let per = t0.elapsed().as_secs_f64() / ticks as f64;
            for _ in 0..ticks {
                self.metrics.observe_tick(per);
            }
        }
        // Points are only built when a store takes them.
        let write = self.store.is_some();
        let mut pts: Vec<Point> = Vec::new();
        let bucket_ms = self.engine.config().state.bucket_ms;
        // Observed demand up to each tick, and last tick's forecast error.
        for r in &recs {
            self.observe_demand(&r.compute_environment, r.origin, bucket_ms, &mut pts);
        }
        for r in &recs {
            if write {
                pts.extend(points::forecast(
                    &r.compute_environment,
                    &r.model,
                    r.origin,
                    bucket_ms,
                    &r.forecast,
                ));
            }
            let f = &r.forecast;
            let mid = f
                .quantiles
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - 0.5).abs().total_cmp(&(b.1 - 0.5).abs()))
                .map(|(i, _)| i);
            if let Some(p50) = mid.and_then(|i| f.values.first()?.get(i).copied()) {
                self.book
                    .next_p50
                    .insert(r.compute_environment.clone(), (r.origin, p50));
            }
        }
        self.account_spend(&recs, new, &mut pts);
        if write {
            pts.extend(points::commands(new));
        }
        if ticks > 0 {
            let at = recs.iter().map(|r| r.origin).max();
            // The budgets as the call's last tick left them.
            let budgets = reports.last().map_or(&[][..], |r| &r.budgets[..]);
            if let Some(at) = at {
                for a in budgets {
                    let scope = crate::budget::scope_str(a.scope);
                    self.metrics.set_budget(scope, &a.id, a.allocated, a.spent);
                    if !write {
                        continue;
                    }
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
            self.take_up_model();
            self.maybe_retrain();
        }
        if let Some(s) = &self.store {
            s.write_all(pts);
        }
    }

    /// Forecast with the model retraining swapped in, if it did.
    fn take_up_model(&mut self) {
        let current = self.model.current();
        if !Arc::ptr_eq(&current, &self.using) {
            self.engine.set_forecaster(current.clone());
            self.using = current;
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
            if self.store.is_some() {
                pts.extend(points::demand(env, t, &d));
            }
            t += bucket_ms;
        }
        self.book.demand_until.insert(env.to_string(), t.max(from));
    }

    /// Accrue spend per environment up to each tick; a scaling command
    /// changes the rate from its issue time. Ticks and commands are taken in
    /// event-time order (a tick before a command of the same time).
    fn account_spend(&mut self, recs: &[&TickForecast], new: &[Command], pts: &mut Vec<Point>) {
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
        for (t, kind, i) in steps {
            if kind == 0 {
                let env = &recs[i].compute_environment;
                let acc = self.book.spend.entry(env.clone()).or_default();
                if let Some(since) = acc.since {
                    let usd = acc.usd_per_hour * (t - since).max(0) as f64 / 3_600_000.0;
                    acc.usd_total += usd;
                    self.metrics.add_spend_usd(env, usd);
                    acc.since = Some(t.max(since));
                }
                self.metrics.touch_spend(env);
                if self.store.is_some() {
                    pts.extend(points::spend(env, t, acc.usd_total, acc.usd_per_hour));
                }
            } else if let Command::Scaling(s) = &new[i] {
                let rate = self.mix_rate(s);
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

    fn mix_rate(&self, s: &ScalingCommand) -> f64 {
        s.instance_mix
            .iter()
            .map(|a| {
                let p = self
                    .engine
                    .state()
                    .book
                    .cheapest_region_price(&a.region, &a.instance_type, a.market, Millis::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CapacityPlanner, EngineConfig, PlanDecision, PlanRequest};
    use crate::events::{InstanceAllocation, JobSubmitted, Market, PriceTick};
    use crate::forecast::{Forecast, History};
    use crate::pricing::Catalog;
    use crate::state::StateConfig;

    const MIN: i64 = 60_000;

    struct Mean;
    impl Forecaster for Mean {
        fn name(&self) -> &str {
            "mean"
        }
        fn forecast(&self, h: &History<'_>, horizon: usize, q: &[f64]) -> Forecast {
            let m = h.values.iter().sum::<f64>() / h.values.len().max(1) as f64;
            Forecast {
                quantiles: q.to_vec(),
                values: vec![q.iter().map(|x| m * (0.5 + x)).collect(); horizon],
            }
        }
    }

    /// Buys ceil(p50 / 4) spot "x4" instances.
    struct Buy;
    impl CapacityPlanner for Buy {
        fn plan(&self, r: &PlanRequest<'_>) -> PlanDecision {
            let v = r.forecast.values[0][1];
            let n = (v / 4.0).ceil() as i32;
            PlanDecision {
                min_vcpus: 0,
                desired_vcpus: v.ceil() as i64,
                max_vcpus: 1000,
                instance_mix: vec![InstanceAllocation {
                    instance_type: "x4".into(),
                    market: Market::Spot,
                    region: "r".into(),
                    count: n,
                }],
                constraints: Default::default(),
                reason: String::new(),
                usd_per_vcpu_hour: 0.0,
            }
        }
    }

    fn factory() -> EngineFactory {
        EngineFactory {
            config: EngineConfig {
                state: StateConfig {
                    bucket_ms: 10 * MIN,
                    allowed_lateness_ms: MIN,
                    ..Default::default()
                },
                ..Default::default()
            },
            catalog: Arc::new(Catalog::default()),
            forecaster: Arc::new(Mean),
            planner: Arc::new(Buy),
        }
    }

    fn events() -> Vec<Event> {
        let mut v = vec![Event::PriceTick(PriceTick {
            at: 0,
            provider: "p".into(),
            region: "r".into(),
            zone: Some("z".into()),
            instance_type: "x4".into(),
            market: Market::Spot,
            usd_per_hour: 2.0,
        })];
        for i in 0..60i64 {
            v.push(Event::JobSubmitted(JobSubmitted {
                job_id: compact_str::format_compact!("j{i}"),
                submitted_at: i * 7 * MIN,
                compute_environment: ["ce-a", "ce-b"][(i % 2) as usize].into(),
                job_type: "batch".into(),
                project: "p".into(),
                user: "u".into(),
                priority: 1,
                vcpus: 1.0 + (i % 4) as f64,
                memory_mib: 1024,
                gpus: 0,
                estimated_runtime_s: Some(600),
                budget_usd: None,
                deadline: None,
                elasticity: false,
            }));
        }
        v
    }

    fn run(brain: &mut dyn Brain, evs: &[Event]) -> Vec<Command> {
        let mut out = Vec::new();
        for e in evs {
            brain.handle(e.clone(), &mut out);
        }
        brain.finish(&mut out);
        out
    }

    #[test]
    fn observing_changes_no_decision_and_fills_the_metrics() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let f = factory();
        let evs = events();
        let want = f.replay(&evs);
        assert!(want.len() > 5);
        let obs = ObservingFactory::new(f, None, &RetrainConfig::default(), metrics);
        let got = run(&mut *obs.create(None).unwrap(), &evs);
        assert_eq!(got, want);
        let text = metrics.render();
        let s = crate::telemetry::metrics::parse_samples(&text);
        let get = |name: &str, env: &str| {
            s.iter()
                .find(|x| {
                    x.name == name
                        && x.labels
                            .iter()
                            .any(|(k, v)| k == "compute_environment" && v == env)
                })
                .map(|x| x.value)
        };
        for env in ["ce-a", "ce-b"] {
            assert!(get("prescale_forecast_abs_error_vcpus_count", env).unwrap() >= 10.0);
            // 2 USD/h per instance, bought continuously for hours
            assert!(
                get("prescale_spend_usd_total", env).unwrap() > 2.0,
                "{text}"
            );
        }
        assert!(text.contains("prescale_store_points_dropped_total{reason=\"write_failed\"} 0"));
    }

    #[tokio::test]
    async fn observing_with_a_store_queues_every_kind_of_point() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let cfg = crate::store::StoreConfig {
            url: "http://127.0.0.1:9".into(),
            flush_interval_ms: 600_000,
            ..Default::default()
        };
        let (h, w) = crate::store::StoreWriter::spawn(cfg, metrics).unwrap();
        let obs = ObservingFactory::new(
            factory(),
            Some(h.clone()),
            &RetrainConfig::default(),
            metrics,
        );
        let evs = events();
        let cmds = run(&mut *obs.create(None).unwrap(), &evs);
        let scaling = cmds
            .iter()
            .filter(|c| matches!(c, Command::Scaling(_)))
            .count() as u64;
        // per tick and environment (two here): a demand bucket, a spend
        // point and 12 x 3 forecast points; plus decisions and the price
        let st = h.stats();
        let ticks = metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("prescale_ticks_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap() as u64;
        assert!(ticks > 10);
        assert!(
            st.accepted > 2 * ticks * (1 + 1 + 36) + scaling,
            "{st:?}, {ticks} ticks, {scaling} scaling"
        );
        let fin = w.shutdown(std::time::Duration::from_secs(1)).await;
        assert_eq!(fin.written + fin.dropped(), fin.accepted);
    }
}
