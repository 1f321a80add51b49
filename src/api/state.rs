//! The state the API serves from: demand history, prices, budgets, policy.
//! Fed with events (from an events file at start, later from live topics)
//! through [`ServiceState::apply`].

use crate::budget::{BudgetError, Ledger};
use crate::events::{Event, Millis};
use crate::policy::PolicyFile;
use crate::pricing::{Catalog, PriceBook};
use crate::state::{DemandState, StateConfig};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Recent job runtimes kept per (environment, job type) for `/predict_demand`.
pub const RUNTIME_SAMPLES: usize = 2000;

pub struct ServiceState {
    pub demand: DemandState,
    pub book: PriceBook,
    pub catalog: Arc<Catalog>,
    pub ledger: Ledger,
    pub policy: PolicyFile,
    /// Runtimes (s) of recently completed jobs, keyed `env/job_type`.
    pub runtimes: BTreeMap<String, VecDeque<f64>>,
    pub latest_event: Option<Millis>,
    pub events_applied: u64,
    /// Events whose content was rejected (e.g. an allocation with an
    /// unknown period), with the reason; counted, never fatal.
    pub rejected: Vec<String>,
}

impl ServiceState {
    pub fn new(catalog: Arc<Catalog>, policy: PolicyFile, cfg: StateConfig) -> Self {
        ServiceState {
            demand: DemandState::new(cfg),
            book: PriceBook::new(),
            catalog,
            ledger: Ledger::new(),
            policy,
            runtimes: BTreeMap::new(),
            latest_event: None,
            events_applied: 0,
            rejected: Vec::new(),
        }
    }

    /// Applies one input event.
    pub fn apply(&mut self, ev: &Event) -> Result<(), BudgetError> {
        self.events_applied += 1;
        let t = ev.time();
        if self.latest_event.is_none_or(|m| t > m) {
            self.latest_event = Some(t);
        }
        // The job type of a completing job is known from its submission.
        let completed_key = match ev {
            Event::JobCompleted(c) => Some(
                self.demand
                    .outstanding_job(&c.job_id)
                    .map(|o| format!("{}/{}", o.job.compute_environment, o.job.job_type))
                    .unwrap_or_else(|| format!("{}/", c.compute_environment)),
            ),
            _ => None,
        };
        let mut ticks = Vec::new();
        self.demand.apply(ev, &mut ticks);
        match ev {
            Event::PriceTick(p) => self.book.apply(p),
            Event::BudgetAllocation(a) => {
                if let Err(e) = self.ledger.on_allocation(a) {
                    if self.rejected.len() < 1000 {
                        self.rejected.push(e.to_string());
                    }
                    return Err(e);
                }
            }
            Event::JobSubmitted(_) => {}
            Event::JobCompleted(c) => {
                let key = completed_key.unwrap_or_default();
                let rt = (c.finished_at - c.started_at) as f64 / 1000.0;
                if rt.is_finite() && rt >= 0.0 {
                    let q = self.runtimes.entry(key).or_default();
                    if q.len() == RUNTIME_SAMPLES {
                        q.pop_front();
                    }
                    q.push_back(rt);
                }
            }
        }
        Ok(())
    }

    /// Event time to stamp API-originated changes with: the newest event
    /// seen, else the wall clock (an adapter concern, kept out of the core).
    pub fn now(&self) -> Millis {
        self.latest_event
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    }
}
