//! The API over a running service's live engine (`prescale run
//! --api-listen`).
//!
//! The engine lives on the service's decision thread (see
//! `io::kafka::worker`), so a request does not read it from here: it sends
//! its computation over the service's control channel as a
//! [`Control::Engine`] call, which runs on that thread in its turn between
//! batches of events, and answers on a oneshot channel. The answer is
//! therefore exactly the engine's state after the events handed to it so
//! far, with no second copy to drift.
//!
//! Ownership: an instance holds the engines of the environments whose job
//! partitions it was assigned. A request about an environment this
//! instance has no events for is answered 404 saying so and naming this
//! instance and group, and, when the group's API directory
//! (`io::kafka::directory`) lists another live instance holding it, that
//! instance and its API address (`holder` in the answer). Any instance
//! answers what does not depend on an environment: prices are read by
//! every instance whole.

use super::state::{Runtimes, View};
use super::ApiError;
use crate::events::{Command, Event};
use crate::io::kafka::directory::{Directory, Entry};
use crate::io::kafka::port::{Brain, BrainError, BrainFactory, BudgetShare, Capture, Refused};
use crate::io::kafka::service::{Control, EngineCall, Stats};
use axum::http::StatusCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// What the API keeps beside the live engine, shared with the brains that
/// [`Served`] makes: recent runtimes and the newest event time.
#[derive(Debug, Default)]
struct Facts {
    runtimes: Mutex<Runtimes>,
    /// Newest event time handed to the engine (`i64::MIN`: none yet).
    latest: AtomicI64,
}

/// The API's handle on a running service's engine.
pub struct LiveEngine {
    control: mpsc::Sender<Control>,
    facts: Arc<Facts>,
    stats: Arc<Stats>,
    instance: String,
    group: String,
    directory: Option<Arc<Directory>>,
}

/// Asks the live engine which environments it holds; see
/// [`LiveEngine::probe`].
#[derive(Clone)]
pub struct EnvironmentsProbe {
    control: mpsc::Sender<Control>,
}

impl EnvironmentsProbe {
    /// The environments the live engine holds, sorted (`None`: no engine
    /// yet, or the service stopped).
    pub async fn environments(&self) -> Option<Vec<String>> {
        let (tx, rx) = oneshot::channel();
        let call: EngineCall = Box::new(move |brain: Option<&mut dyn Brain>| {
            let envs = brain.and_then(|b| b.engine()).map(|e| {
                e.state()
                    .demand
                    .environments()
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            });
            let _ = tx.send(envs);
        });
        self.control.send(Control::Engine(call)).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// Wraps the service's brain factory so every brain it makes also keeps
/// what the API needs beside the engine (see [`Runtimes`]).
pub struct Served<F> {
    inner: F,
    facts: Arc<Facts>,
}

impl LiveEngine {
    /// The API's end, and the factory to run the service with.
    /// `control`: the service's control channel; `stats`: its counters.
    pub fn new<F: BrainFactory>(
        inner: F,
        control: mpsc::Sender<Control>,
        stats: Arc<Stats>,
        instance: &str,
        group: &str,
    ) -> (Self, Served<F>) {
        let facts = Arc::new(Facts {
            runtimes: Mutex::default(),
            latest: AtomicI64::new(i64::MIN),
        });
        let live = LiveEngine {
            control,
            facts: facts.clone(),
            stats,
            instance: instance.to_string(),
            group: group.to_string(),
            directory: None,
        };
        (live, Served { inner, facts })
    }

    /// Name the holders of environments this instance does not hold from
    /// `dir` (see the module doc).
    pub fn with_directory(mut self, dir: Arc<Directory>) -> Self {
        self.directory = Some(dir);
        self
    }

    /// A handle that asks the live engine which environments it holds
    /// (what this instance publishes to the directory).
    pub fn probe(&self) -> EnvironmentsProbe {
        EnvironmentsProbe {
            control: self.control.clone(),
        }
    }

    fn who(&self) -> String {
        format!(
            "instance `{}` of group `{}`, {} input partition(s) assigned",
            self.instance,
            self.group,
            self.stats.assigned.load(Ordering::Relaxed)
        )
    }

    /// Run `f` on the live engine (see the module doc); `env`: the
    /// environment the request is about, which this instance must own.
    pub async fn ask<R: Send + 'static>(
        &self,
        env: Option<String>,
        f: impl FnOnce(&View<'_>) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let (tx, rx) = oneshot::channel();
        let facts = self.facts.clone();
        let who = self.who();
        let directory = self.directory.clone();
        let call: EngineCall = Box::new(move |brain: Option<&mut dyn Brain>| {
            let answer = match brain.and_then(|b| b.engine()) {
                None => Err(ApiError::status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no engine yet: {who} (joining its group); try again shortly"),
                    None,
                )),
                Some(engine) => {
                    let engine = &*engine;
                    let owned = env
                        .as_deref()
                        .is_none_or(|e| engine.state().demand.environments().contains(&e));
                    if owned {
                        let runtimes = facts.runtimes.lock().unwrap_or_else(|e| e.into_inner());
                        let latest = facts.latest.load(Ordering::Relaxed);
                        f(&View {
                            engine,
                            runtimes: &runtimes,
                            events_applied: engine.counters().events,
                            latest_event: (latest != i64::MIN).then_some(latest),
                        })
                    } else {
                        let env = env.as_deref().unwrap_or_default();
                        let now = chrono::Utc::now().timestamp_millis();
                        let holder = directory.as_ref().and_then(|d| d.holder_of(env, now));
                        Err(not_owned(env, &who, holder))
                    }
                }
            };
            // The request may have been dropped (client gone, timeout).
            let _ = tx.send(answer);
        });
        let stopped = || {
            ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is stopping",
                None,
            )
        };
        self.control
            .send(Control::Engine(call))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// 404 for an environment this instance holds no engine state for, naming
/// the instance that does when the directory knows one.
fn not_owned(env: &str, who: &str, holder: Option<Entry>) -> ApiError {
    let Some(h) = holder else {
        return ApiError::status(
            StatusCode::NOT_FOUND,
            format!(
                "unknown compute_environment `{env}` on this instance ({who}): no events seen for it here, \
                 and no live instance of the group lists it in the API directory"
            ),
            Some("compute_environment"),
        );
    };
    let at = h.api.as_deref().unwrap_or("no API");
    let mut e = ApiError::status(
        StatusCode::NOT_FOUND,
        format!(
            "compute_environment `{env}` is held by instance `{}` of this group (API: {at}), \
             not by this instance ({who}): ask it there",
            h.instance
        ),
        Some("compute_environment"),
    );
    e.holder = Some(serde_json::json!({"instance": h.instance, "api": h.api}));
    e
}

impl<F: BrainFactory> BrainFactory for Served<F> {
    fn create(&self, restore: Option<&serde_json::Value>) -> Result<Box<dyn Brain>, BrainError> {
        let inner = self.inner.create(restore)?;
        // A new brain is a new state (a new assignment, restored or
        // replayed): the samples start again with it, so a replay does not
        // count its completions twice.
        *self
            .facts
            .runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Runtimes::default();
        self.facts.latest.store(i64::MIN, Ordering::Relaxed);
        Ok(Box::new(ServedBrain {
            inner,
            facts: self.facts.clone(),
        }))
    }
}

/// A brain that also records, for the API, the runtimes of the completions
/// its engine applies.
struct ServedBrain {
    inner: Box<dyn Brain>,
    facts: Arc<Facts>,
}

impl Brain for ServedBrain {
    fn handle(&mut self, ev: Event, out: &mut Vec<Command>) -> Option<Refused> {
        self.facts.latest.fetch_max(ev.time(), Ordering::Relaxed);
        let Event::JobCompleted(c) = &ev else {
            return self.inner.handle(ev, out);
        };
        let before = self.inner.engine().map(|e| {
            let key = Runtimes::key_before(&e.state().demand, &ev);
            (key, e.counters().duplicates)
        });
        let span = (c.started_at, c.finished_at);
        let refused = self.inner.handle(ev, out);
        if let (Some((Some(key), dups)), None) = (before, &refused) {
            let applied = self
                .inner
                .engine()
                .is_some_and(|e| e.counters().duplicates == dups);
            if applied {
                let mut r = self
                    .facts
                    .runtimes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                r.push(key, span.0, span.1);
            }
        }
        refused
    }
    fn finish(&mut self, out: &mut Vec<Command>) {
        self.inner.finish(out);
    }
    fn save(&self) -> Result<serde_json::Value, BrainError> {
        self.inner.save()
    }
    fn save_json(&self) -> Result<Vec<u8>, BrainError> {
        self.inner.save_json()
    }
    fn capture(&self) -> Result<Capture, BrainError> {
        self.inner.capture()
    }
    fn on_timer(&mut self) {
        self.inner.on_timer();
    }
    fn tick_span(&self) -> tracing::Span {
        self.inner.tick_span()
    }
    fn budgets(&mut self) -> Option<&mut dyn BudgetShare> {
        self.inner.budgets()
    }
    fn engine(&mut self) -> Option<&mut crate::engine::Engine> {
        self.inner.engine()
    }
}
