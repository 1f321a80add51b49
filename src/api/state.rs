//! What the API answers from: the decision engine itself (demand history,
//! prices, budget ledger), never a copy of its event handling, so an answer
//! cannot disagree with what the engine decides on the same events.
//!
//! [`ServiceState`] is the engine of `prescale serve`, fed from events
//! files through [`ServiceState::apply`] (the engine's own `handle`: same
//! duplicate and conflict checks, same budget admissions). In `prescale run
//! --api-listen` the engine is the live one on the service's decision
//! thread (see [`super::live`]). Either way handlers read it through a
//! [`View`].

use crate::budget::{BudgetError, Ledger};
use crate::engine::{Engine, Handled};
use crate::events::{Event, Millis};
use crate::forecast::{Ets, Forecaster};
use crate::policy::PolicyFile;
use crate::pricing::{Catalog, PriceBook};
use crate::state::{DemandState, StateConfig};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Recent job runtimes kept per (environment, job type) for `/predict_demand`.
pub const RUNTIME_SAMPLES: usize = 2000;

/// Runtimes (s) of recently completed jobs, keyed `env/job_type`: what
/// `/predict_demand` answers a job's runtime quantiles from. The engine
/// keeps no such history (it decides on demand, not runtimes), so the API
/// records it beside the engine, from the same events.
#[derive(Debug, Clone, Default)]
pub struct Runtimes(BTreeMap<String, VecDeque<f64>>);

impl Runtimes {
    /// The key a completion will be recorded under: its job's environment
    /// and type, known from the submission the engine still holds (read
    /// before the engine applies the completion, which forgets it).
    pub fn key_before(demand: &DemandState, ev: &Event) -> Option<String> {
        match ev {
            Event::JobCompleted(c) => Some(
                demand
                    .outstanding_job(&c.job_id)
                    .map(|o| format!("{}/{}", o.job.compute_environment, o.job.job_type))
                    .unwrap_or_else(|| format!("{}/", c.compute_environment)),
            ),
            _ => None,
        }
    }

    /// Record a completion the engine applied, under `key`.
    pub fn record(&mut self, key: String, ev: &Event) {
        if let Event::JobCompleted(c) = ev {
            self.push(key, c.started_at, c.finished_at);
        }
    }

    /// Record one runtime (event times, ms) under `key`; a negative one
    /// is not a runtime and is left out.
    pub fn push(&mut self, key: String, started_at: Millis, finished_at: Millis) {
        let rt = (finished_at - started_at) as f64 / 1000.0;
        if rt.is_finite() && rt >= 0.0 {
            let q = self.0.entry(key).or_default();
            if q.len() == RUNTIME_SAMPLES {
                q.pop_front();
            }
            q.push_back(rt);
        }
    }

    /// Samples of `env/job_type`, or of every job type of `env` when that
    /// type has none.
    pub fn samples(&self, env: &str, job_type: &str) -> Vec<f64> {
        let exact = format!("{env}/{job_type}");
        let mut samples: Vec<f64> = self
            .0
            .get(&exact)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default();
        if samples.is_empty() {
            let prefix = format!("{env}/");
            samples = self
                .0
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .flat_map(|(_, q)| q.iter().copied())
                .collect();
        }
        samples
    }
}

/// Why an input event changed nothing.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejected {
    /// A budget allocation the ledger refused (unknown period, bad amount).
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// Contradicts a record with the same identity applied before.
    #[error("{0}")]
    Conflict(String),
}

/// The engine `prescale serve` answers from, with what the API keeps
/// beside it.
pub struct ServiceState {
    engine: Engine,
    runtimes: Runtimes,
    pub latest_event: Option<Millis>,
    pub events_applied: u64,
    /// Events whose content was rejected (e.g. an allocation with an
    /// unknown period), with the reason; counted, never fatal.
    pub rejected: Vec<String>,
}

impl ServiceState {
    /// An engine as `prescale serve` builds one by default: the policy's
    /// cost-aware planner and the statistical forecaster for its decision
    /// ticks.
    pub fn new(catalog: Arc<Catalog>, policy: PolicyFile, cfg: StateConfig) -> Self {
        let forecaster: Arc<dyn Forecaster> = Arc::new(Ets::default());
        Self::with_engine(crate::wiring::serve_engine(
            catalog, &policy, forecaster, cfg,
        ))
    }

    /// Serve from `engine` (built by the caller's wiring, as `prescale run`
    /// builds its own).
    pub fn with_engine(engine: Engine) -> Self {
        ServiceState {
            engine,
            runtimes: Runtimes::default(),
            latest_event: None,
            events_applied: 0,
            rejected: Vec::new(),
        }
    }

    /// Applies one input event through the engine (its commands are
    /// dropped: `serve` actuates nothing).
    pub fn apply(&mut self, ev: &Event) -> Result<(), Rejected> {
        self.events_applied += 1;
        let t = ev.time();
        if self.latest_event.is_none_or(|m| t > m) {
            self.latest_event = Some(t);
        }
        let key = Runtimes::key_before(&self.engine.state().demand, ev);
        let rejected_before = self.engine.counters().rejected_budget_allocations;
        let mut out = Vec::new();
        let handled = self.engine.handle(ev, &mut out);
        let rejected = match (handled, ev) {
            (Handled::Conflict(reason), _) => Err(Rejected::Conflict(reason)),
            (Handled::Duplicate, _) => Ok(()),
            (Handled::Applied, Event::BudgetAllocation(a))
                if self.engine.counters().rejected_budget_allocations > rejected_before =>
            {
                // The engine counts the refusal; the ledger's own check says why.
                match Ledger::default().on_allocation(a) {
                    Err(e) => Err(Rejected::Budget(e)),
                    Ok(_) => Ok(()),
                }
            }
            (Handled::Applied, _) => {
                if let Some(key) = key {
                    self.runtimes.record(key, ev);
                }
                Ok(())
            }
        };
        if let Err(e) = &rejected {
            if self.rejected.len() < 1000 {
                self.rejected.push(e.to_string());
            }
        }
        rejected
    }

    /// The engine, for what the API changes through it (budget
    /// allocations).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// What handlers read.
    pub fn view(&self) -> View<'_> {
        View {
            engine: &self.engine,
            runtimes: &self.runtimes,
            events_applied: self.events_applied,
            latest_event: self.latest_event,
        }
    }
}

/// The engine as a handler reads it, with the API's runtime samples.
pub struct View<'a> {
    pub engine: &'a Engine,
    pub runtimes: &'a Runtimes,
    /// Input events handed to the engine.
    pub events_applied: u64,
    /// The newest event time seen, when known.
    pub latest_event: Option<Millis>,
}

impl View<'_> {
    pub fn demand(&self) -> &DemandState {
        &self.engine.state().demand
    }
    pub fn book(&self) -> &PriceBook {
        &self.engine.state().book
    }
    pub fn ledger(&self) -> &Ledger {
        &self.engine.state().ledger
    }
    pub fn catalog(&self) -> &Catalog {
        self.engine.catalog()
    }

    /// Event time to stamp API-originated changes with: the newest event
    /// seen, else the wall clock (an adapter concern, kept out of the core).
    pub fn now(&self) -> Millis {
        self.latest_event
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    }
}
