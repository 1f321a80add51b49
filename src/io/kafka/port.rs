//! The decision core as the service sees it: the [`Brain`] port and its
//! optional [`BudgetShare`] facet.
//!
//! `crate::engine::Engine` implements it (see [`super::brain`] and
//! [`super::observe`]); keeping the loop generic keeps Kafka out of the core
//! and lets the benchmark swap in a no-op brain. The loop calls it on a
//! thread of its own, in input order (see [`super::worker`]).
//!
//! This file imports nothing of the adapter: the loop, the decision thread
//! and the budget exchange all depend on it, never the other way round.

use crate::budget::share::{Share, Usage};
use crate::events::{Command, Event};

/// Why a brain could not do what the loop asked. Neither goes away by
/// asking again: the service stops and says why (see
/// [`super::KafkaError::retry`]).
#[derive(Debug, thiserror::Error)]
pub enum BrainError {
    /// The state could not be encoded for a snapshot.
    #[error("serialising engine state: {0}")]
    Encode(#[source] serde_json::Error),
    /// A snapshot's engine state could not be restored (written by another
    /// version, or not an engine state).
    #[error("{0}")]
    Restore(String),
}

/// The lifecycle of the decision core: events in, commands out, state to
/// save. What a feature needs beyond it is a facet of its own
/// ([`Brain::budgets`]), so the port does not grow with every feature.
pub trait Brain: Send {
    /// Apply one event. A record that contradicts one applied before (same
    /// job id, other content: see [`crate::engine::Handled`]) changes
    /// nothing and is handed back, to be dead-lettered.
    fn handle(&mut self, ev: Event, out: &mut Vec<Command>) -> Option<Refused>;
    /// End of input (only with `exit_when_idle`): flush what the last
    /// buckets decide, as a file replay does at end of file.
    fn finish(&mut self, out: &mut Vec<Command>);
    fn save(&self) -> Result<serde_json::Value, BrainError>;
    /// `save`, serialised as JSON. Brains override it to serialise their
    /// state directly: building the `Value` tree of a large state first
    /// doubles the time the loop stands still at each checkpoint.
    fn save_json(&self) -> Result<Vec<u8>, BrainError> {
        serde_json::to_vec(&self.save()?).map_err(BrainError::Encode)
    }
    /// The state as of now, to be serialised on another thread: encoding a
    /// large state for the periodic checkpoint stood the engine (and so the
    /// loop, which waits for the capture) still. Brains override it with a
    /// copy of their state (cheaper than its JSON); the default encodes at
    /// once.
    fn capture(&self) -> Result<Capture, BrainError> {
        let bytes = self.save_json()?;
        Ok(Box::new(move || Ok(bytes)))
    }
    /// The loop's timer fired (wall-clock work such as periodic
    /// retraining, which must not wait for input to arrive).
    fn on_timer(&mut self) {}
    /// The span of the last decision tick, so publishing nests under it.
    fn tick_span(&self) -> tracing::Span {
        tracing::Span::none()
    }
    /// Project and user budgets shared with other instances (see
    /// [`super::spend`]); brains without budgets have none.
    fn budgets(&mut self) -> Option<&mut dyn BudgetShare> {
        None
    }
    /// The engine itself, for the HTTP API served from the live service
    /// (`prescale run --api-listen`); brains without one (benchmarks)
    /// answer none and the API says so.
    fn engine(&mut self) -> Option<&mut crate::engine::Engine> {
        None
    }
}

/// Budgets split between instances: what the exchange of
/// [`super::spend`] reads from and grants to a brain.
pub trait BudgetShare {
    /// Project and user budget use per environment, for their owners
    /// ([`crate::budget::share`]).
    fn usage(&self) -> Vec<Usage>;
    /// A budget account's allocation as announced (`project:…`, `user:…`),
    /// when known.
    fn allocation(&self, account: &str) -> Option<f64>;
    /// Whether project budgets are split with other instances (this one
    /// owns only part of the group's partitions).
    fn set_split(&mut self, split: bool);
    /// A share of a project budget granted to one of this brain's
    /// environments.
    fn grant(&mut self, share: &Share);
}

impl BudgetShare for crate::engine::Engine {
    fn usage(&self) -> Vec<Usage> {
        self.budget_usage()
    }
    fn allocation(&self, account: &str) -> Option<f64> {
        self.budget_allocation(account)
    }
    fn set_split(&mut self, split: bool) {
        self.set_budget_split(split);
    }
    fn grant(&mut self, share: &Share) {
        self.apply_share(share);
    }
}

/// An input record a brain refused, and why.
#[derive(Debug)]
pub struct Refused {
    pub event: Event,
    pub reason: String,
}

/// A brain's state captured for a checkpoint; called (on another thread)
/// for its JSON.
pub type Capture = Box<dyn FnOnce() -> Result<Vec<u8>, BrainError> + Send>;

/// Makes brains: fresh, or restored from a snapshot's engine state.
pub trait BrainFactory: Send + Sync {
    fn create(&self, restore: Option<&serde_json::Value>) -> Result<Box<dyn Brain>, BrainError>;
}
