//! The engine behind the service's [`Brain`] interface: the same
//! `crate::engine::Engine` the backtest drives, with its state serialised
//! into snapshots.

use super::port::{Brain, BrainError, BrainFactory, BudgetShare, Capture, Refused};
use crate::engine::Engine;
use crate::events::{Command, Event};
use crate::wiring::EngineFactory;

pub struct EngineBrain(pub Engine);

/// The event back, when the engine refused it (see [`Refused`]).
pub(super) fn refused(h: crate::engine::Handled, event: Event) -> Option<Refused> {
    match h {
        crate::engine::Handled::Conflict(reason) => Some(Refused { event, reason }),
        crate::engine::Handled::Applied | crate::engine::Handled::Duplicate => None,
    }
}

/// A copy of an engine's state, encoded later (on the checkpoint writer's
/// thread): the [`Brain::capture`] of every brain that wraps an engine.
pub(super) fn capture_engine(engine: &Engine) -> Capture {
    let st = engine.state().clone();
    Box::new(move || serde_json::to_vec(&st).map_err(BrainError::Encode))
}

impl Brain for EngineBrain {
    fn handle(&mut self, ev: Event, out: &mut Vec<Command>) -> Option<Refused> {
        refused(self.0.handle(&ev, out), ev)
    }
    fn finish(&mut self, out: &mut Vec<Command>) {
        self.0.finish(out);
    }
    fn save(&self) -> Result<serde_json::Value, BrainError> {
        serde_json::to_value(self.0.state()).map_err(BrainError::Encode)
    }
    fn save_json(&self) -> Result<Vec<u8>, BrainError> {
        serde_json::to_vec(self.0.state()).map_err(BrainError::Encode)
    }
    fn capture(&self) -> Result<Capture, BrainError> {
        Ok(capture_engine(&self.0))
    }
    fn tick_span(&self) -> tracing::Span {
        self.0.tick_span().clone()
    }
    fn budgets(&mut self) -> Option<&mut dyn BudgetShare> {
        Some(&mut self.0)
    }
    fn engine(&mut self) -> Option<&mut Engine> {
        Some(&mut self.0)
    }
}

impl BrainFactory for EngineFactory {
    fn create(&self, restore: Option<&serde_json::Value>) -> Result<Box<dyn Brain>, BrainError> {
        let engine = self.engine_from(restore).map_err(BrainError::Restore)?;
        Ok(Box::new(EngineBrain(engine)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CapacityPlanner, EngineConfig, PlanDecision, PlanRequest};
    use crate::events::*;
    use crate::forecast::Forecaster;
    use crate::forecast::{Forecast, History};
    use crate::pricing::Catalog;
    use crate::state::StateConfig;
    use std::sync::Arc;

    const MIN: i64 = 60_000;

    /// Mean of the history at every quantile, scaled per quantile: enough
    /// arithmetic on floats that a lossy snapshot would change the output.
    struct Mean;
    impl Forecaster for Mean {
        fn name(&self) -> &str {
            "mean"
        }
        fn forecast(&self, h: &History<'_>, horizon: usize, q: &[f64]) -> Forecast {
            let m = h.values.iter().sum::<f64>() / h.values.len().max(1) as f64;
            Forecast {
                quantiles: q.to_vec(),
                values: vec![q.iter().map(|x| m * (0.5 + x) / 3.0).collect(); horizon],
            }
        }
    }

    struct Ceil;
    impl CapacityPlanner for Ceil {
        fn plan(&self, r: &PlanRequest<'_>) -> PlanDecision {
            let v = r.forecast.values[0].last().copied().unwrap_or(0.0);
            PlanDecision {
                min_vcpus: v.floor() as i64,
                desired_vcpus: (v.ceil() as i64).max(r.outstanding.vcpus.ceil() as i64),
                max_vcpus: 1000,
                instance_mix: vec![],
                constraints: Default::default(),
                reason: format!("{v:.17}"),
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
            planner: Arc::new(Ceil),
        }
    }

    fn events() -> Vec<Event> {
        let mut v = Vec::new();
        for i in 0..60i64 {
            let env = ["ce-a", "ce-b", "ce-c"][(i % 3) as usize];
            v.push(Event::JobSubmitted(JobSubmitted {
                job_id: compact_str::format_compact!("j{i}"),
                submitted_at: i * 7 * MIN,
                compute_environment: env.into(),
                job_type: "batch".into(),
                project: "p".into(),
                user: "u".into(),
                priority: 1,
                // Dyadic sizes: the state sums outstanding vCPUs in HashMap
                // order, which is exact only for such values (reported to
                // the state module's owner).
                vcpus: 1.0 + (i % 5) as f64 / 4.0,
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

    #[test]
    fn snapshot_restore_mid_stream_gives_the_same_commands() {
        let f = factory();
        let evs = events();
        let want = f.replay(&evs);
        assert!(want.len() > 5, "the test input must make decisions");
        for cut in [1, 17, 31, 59] {
            let mut b = f.create(None).unwrap();
            let mut got = Vec::new();
            for ev in &evs[..cut] {
                b.handle(ev.clone(), &mut got);
            }
            // Through bytes, as the snapshot file does.
            let snap: serde_json::Value = serde_json::from_slice(&b.save_json().unwrap()).unwrap();
            assert_eq!(snap, b.save().unwrap(), "save_json is save, serialised");
            let mut b = f.create(Some(&snap)).unwrap();
            for ev in &evs[cut..] {
                b.handle(ev.clone(), &mut got);
            }
            b.finish(&mut got);
            if got != want {
                let i = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                panic!(
                    "cut at {cut}: {} vs {} commands, first difference at {i}:\n got {:?}\nwant {:?}",
                    got.len(),
                    want.len(),
                    got.get(i),
                    want.get(i)
                );
            }
        }
    }
}
