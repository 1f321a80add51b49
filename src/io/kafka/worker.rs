//! The decision core on a thread of its own, fed in order by the service
//! loop.
//!
//! Why: one thread polling, decoding, merging *and* deciding was the
//! service's bound (`prescale bench kafka`: the loop's thread was busy
//! while the broker and librdkafka idled). Here the loop hands merged
//! events over in batches and goes back to reading, while this thread
//! applies them, so reading and deciding overlap.
//!
//! Order is what keeps it exact: events and calls travel one FIFO
//! channel, and the decisions come back on one FIFO channel, so the brain
//! sees the same sequence as if the loop called it directly and commands
//! are published in the same order. A [`Worker::call`] returns only once
//! everything sent before it has been applied, and by then the decisions
//! of those events are already waiting on the decisions channel: a
//! checkpoint taken through `call` reflects exactly the events whose
//! commands the loop publishes before writing it.

use super::merge::Tp;
use super::port::Brain;
use super::stats::{AppliedHook, Stats};
use super::KafkaError;
use crate::events::{Command, Event};
use std::sync::atomic::Ordering;
use std::sync::{mpsc as sync_mpsc, Arc};
use tokio::sync::mpsc;

/// Batches in flight to the decision thread before the loop waits: enough
/// to keep it busy through a burst, few enough that the loop does not read
/// far ahead of what has been decided.
const IN_FLIGHT: usize = 16;

/// Commands decided on one event, with what the loop needs to publish them.
pub struct Decided {
    pub commands: Vec<Command>,
    /// Produce time (ms) of the message that triggered them (a header on
    /// each command, for end-to-end latency).
    pub trigger_ts: Option<i64>,
    /// The decision tick's span, so publishing nests under it.
    pub span: tracing::Span,
    /// The event, when the brain refused it (to be dead-lettered). Boxed:
    /// rare, and an event inline would triple the size of every decision.
    pub refused: Option<Box<RefusedAt>>,
}

/// An event the brain refused, with the message it came from.
#[derive(Debug)]
pub struct RefusedAt {
    pub event: Event,
    pub reason: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Where a merged event came from: its merge slot and offset.
pub type Origin = (usize, i64);

/// A merged event on its way to the brain, with its message's produce time
/// and origin.
type Item = (Event, Option<i64>, Origin);

/// Work run on the brain in its turn (see [`Worker::post`]).
type BrainCall = Box<dyn FnOnce(&mut dyn Brain) + Send>;

enum Job {
    Events(Vec<Item>),
    Call(BrainCall),
}

/// Handle to the decision thread of one assignment. Dropping it stops the
/// thread once it has applied what was sent.
pub struct Worker {
    jobs: Option<sync_mpsc::SyncSender<Job>>,
    batch: Vec<Item>,
    /// Batch vectors the decision thread has emptied, handed back for the
    /// next batches (see [`Worker::flush`]).
    spare: sync_mpsc::Receiver<Vec<Item>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn stopped() -> KafkaError {
    KafkaError::Thread("the decision thread stopped (a panic in the engine; see its log)".into())
}

impl Worker {
    /// Start the thread that owns `brain`. What it decides goes to
    /// `decided`; it counts applied events in `stats` and calls
    /// `on_applied` (when set) with each batch's produce times.
    /// `slots`: the topic-partition of each merge slot (origins of refused
    /// events).
    pub fn spawn(
        mut brain: Box<dyn Brain>,
        slots: Vec<Tp>,
        stats: Arc<Stats>,
        on_applied: Option<AppliedHook>,
        decided: mpsc::UnboundedSender<Decided>,
    ) -> Result<Self, KafkaError> {
        let (tx, rx) = sync_mpsc::sync_channel::<Job>(IN_FLIGHT);
        // One more than can be in flight: the thread never waits to hand a
        // vector back.
        let (spare_tx, spare) = sync_mpsc::sync_channel::<Vec<Item>>(IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("prescale-decide".into())
            .spawn(move || {
                let mut out = Vec::new();
                let mut produced = Vec::new();
                for job in rx {
                    match job {
                        Job::Events(mut items) => {
                            // Counted once per batch: the loop's thread
                            // writes counters beside these, and one shared
                            // cache line written per event by both threads
                            // costs them both.
                            stats
                                .events
                                .fetch_add(items.len() as u64, Ordering::Relaxed);
                            let timed = on_applied.is_some();
                            for (ev, trigger_ts, (slot, offset)) in items.drain(..) {
                                let refused = brain.handle(ev, &mut out).map(|r| {
                                    let (topic, partition) =
                                        slots.get(slot).cloned().unwrap_or_default();
                                    Box::new(RefusedAt {
                                        event: r.event,
                                        reason: r.reason,
                                        topic,
                                        partition,
                                        offset,
                                    })
                                });
                                if let (true, Some(p)) = (timed, trigger_ts) {
                                    produced.push(p);
                                }
                                if !out.is_empty() || refused.is_some() {
                                    let d = Decided {
                                        commands: std::mem::take(&mut out),
                                        trigger_ts,
                                        span: brain.tick_span(),
                                        refused,
                                    };
                                    // The loop gone means the service is
                                    // stopping; nothing is left to publish to.
                                    if decided.send(d).is_err() {
                                        return;
                                    }
                                }
                            }
                            if let Some(hook) = &on_applied {
                                if !produced.is_empty() {
                                    hook(produced.as_slice());
                                    produced.clear();
                                }
                            }
                            // Back to the loop, empty, to be filled again;
                            // dropped when the loop has enough spares.
                            let _ = spare_tx.try_send(items);
                        }
                        Job::Call(f) => f(brain.as_mut()),
                    }
                }
            })
            .map_err(|e| KafkaError::Thread(format!("starting the decision thread: {e}")))?;
        Ok(Self {
            jobs: Some(tx),
            batch: Vec::new(),
            spare,
            thread: Some(thread),
        })
    }

    /// Queue one merged event; it is sent with the batch at [`Self::flush`].
    pub fn push(&mut self, ev: Event, trigger_ts: Option<i64>, origin: Origin) {
        self.batch.push((ev, trigger_ts, origin));
    }

    /// Send the queued events. Waits while the thread is [`IN_FLIGHT`]
    /// batches behind: that is the loop's back-pressure.
    pub fn flush(&mut self) -> Result<(), KafkaError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // The next batch goes into a vector the decision thread emptied,
        // else a new one, either made at least as large as this one.
        // Growing a vector of events from empty on every batch took about
        // 8 % of the loop's thread (reallocation copies); a fresh one per
        // batch, freed on the other thread, cost page faults on fresh
        // memory on both threads; a spare or a new vector smaller than the
        // batches now arriving grew again on most batches (6 % of the
        // loop's thread). Capacities only rise to the largest batch, which
        // the merge bounds.
        let capacity = self.batch.capacity();
        let mut next = self.spare.try_recv().unwrap_or_default();
        next.reserve(capacity);
        let items = std::mem::replace(&mut self.batch, next);
        self.send(Job::Events(items))
    }

    /// Run `f` on the brain after everything sent before it, without
    /// waiting for it.
    pub fn post(
        &mut self,
        f: impl FnOnce(&mut dyn Brain) + Send + 'static,
    ) -> Result<(), KafkaError> {
        self.flush()?;
        self.send(Job::Call(Box::new(f)))
    }

    /// Run `f` on the brain after everything sent before it, and wait for
    /// its answer. When it returns, the decisions of every earlier event are
    /// on the decisions channel.
    pub fn call<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut dyn Brain) -> R + Send + 'static,
    ) -> Result<R, KafkaError> {
        let (tx, rx) = sync_mpsc::sync_channel(1);
        self.post(move |b| {
            // The caller waits on `rx`; it cannot be gone.
            let _ = tx.send(f(b));
        })?;
        rx.recv().map_err(|_| stopped())
    }

    fn send(&mut self, job: Job) -> Result<(), KafkaError> {
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{PreemptionAction, PreemptionCommand};
    use crate::io::kafka::port::{BrainError, Refused};
    use crate::state::tests_support::job;

    /// Counts events and answers with what it has seen; decides a command
    /// on every third event.
    struct Counting {
        seen: Vec<i64>,
        template: Command,
    }

    impl Brain for Counting {
        fn handle(&mut self, ev: Event, out: &mut Vec<Command>) -> Option<Refused> {
            self.seen.push(ev.time());
            if self.seen.len() % 3 == 0 {
                out.push(self.template.clone());
            }
            None
        }
        fn finish(&mut self, _out: &mut Vec<Command>) {}
        fn save(&self) -> Result<serde_json::Value, BrainError> {
            Ok(serde_json::json!(self.seen))
        }
    }

    fn events(n: i64) -> Vec<Event> {
        (0..n).map(|i| job(&format!("j{i}"), i, 1.0)).collect()
    }

    fn a_command() -> Command {
        Command::Preemption(PreemptionCommand {
            command_id: "c".into(),
            issued_at: 0,
            job_id: "j".into(),
            compute_environment: "ce".into(),
            action: PreemptionAction::Queue,
            reason: "test".into(),
        })
    }

    #[test]
    fn a_call_sees_every_event_sent_before_it_and_their_decisions_are_already_out() {
        let stats = Arc::new(Stats::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let template = a_command();
        let brain = Box::new(Counting {
            seen: Vec::new(),
            template,
        });
        let mut w = Worker::spawn(brain, Vec::new(), stats.clone(), None, tx).expect("spawn");
        for (i, ev) in events(10).into_iter().enumerate() {
            w.push(ev, Some(i as i64), (0, i as i64));
            if i % 4 == 3 {
                w.flush().expect("flush");
            }
        }
        // Not flushed explicitly: the call sends the rest first.
        let seen = w.call(|b| b.save()).expect("call").expect("save");
        assert_eq!(seen, serde_json::json!((0..10).collect::<Vec<i64>>()));
        assert_eq!(stats.events.load(Ordering::Relaxed), 10);
        let mut triggers = Vec::new();
        while let Ok(d) = rx.try_recv() {
            assert_eq!(d.commands.len(), 1);
            triggers.push(d.trigger_ts);
        }
        assert_eq!(triggers, vec![Some(2), Some(5), Some(8)]);
    }

    #[test]
    fn a_panicking_engine_is_an_error_not_a_hang() {
        struct Panics;
        impl Brain for Panics {
            fn handle(&mut self, _: Event, _: &mut Vec<Command>) -> Option<Refused> {
                panic!("engine bug");
            }
            fn finish(&mut self, _: &mut Vec<Command>) {}
            fn save(&self) -> Result<serde_json::Value, BrainError> {
                Ok(serde_json::Value::Null)
            }
        }
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut w = Worker::spawn(
            Box::new(Panics),
            Vec::new(),
            Arc::new(Stats::default()),
            None,
            tx,
        )
        .expect("spawn");
        w.push(events(1).remove(0), None, (0, 0));
        let err = w.call(|_| ()).expect_err("the thread died");
        assert!(err.to_string().contains("decision thread stopped"), "{err}");
    }
}
