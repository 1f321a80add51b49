//! The `prescale run` loop: one `tokio::select!` over the group consumer
//! (job submissions, completions, and the internal budget-spend topic), the
//! broadcast consumer (every partition of prices and budget allocations, no
//! group: each instance needs all prices and every project's budget), a
//! timer (checkpoints, idle detection, budget exchange) and a control
//! channel.
//!
//! Per message: decode (bad → `<topic>.dlq` with error headers, counted) →
//! deterministic merge ([`super::merge`]) → `Brain::handle` → commands
//! published to the command topics, keyed by compute environment, with the
//! command id in a header.
//!
//! Recovery: see [`crate::checkpoint`]. Rebalances are eager; when an
//! assignment is taken away its state is checkpointed first, and on every
//! new assignment the instance restores the snapshot of exactly that assignment
//! if it has one, otherwise it starts a fresh engine and replays its
//! partitions (and all prices) from the beginning. Commands re-decided during
//! a replay carry the ids they had the first time.

use super::client::{caught_up_c, consumer_config, partitions_of};
use super::codec::{decode_input, encode_output, headers};
use super::config::KafkaConfig;
use super::merge::{Merger, OrderKey, Push, Tp};
use super::publish::Publisher;
use super::split::{MessageView, Split, Woken, AHEAD};
use super::worker::{Decided, RefusedAt, Worker};
use super::KafkaError;
use crate::checkpoint::{self, Snapshot};
use crate::events::avro::EventKind;
use crate::events::{Command, Event};
use futures::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The decision core as the service sees it. `crate::engine::Engine`
/// implements it (see `cli/run.rs`); keeping the loop generic keeps Kafka out
/// of the core and lets the benchmark swap in a no-op brain. The loop calls
/// it on a thread of its own, in input order (the `worker` module).
pub trait Brain: Send {
    /// Apply one event. A record that contradicts one applied before (same
    /// job id, other content: see [`crate::engine::Handled`]) changes
    /// nothing and is handed back, to be dead-lettered.
    fn handle(&mut self, ev: Event, out: &mut Vec<Command>) -> Option<Refused>;
    /// End of input (only with `exit_when_idle`): flush what the last
    /// buckets decide, as a file replay does at end of file.
    fn finish(&mut self, out: &mut Vec<Command>);
    fn save(&self) -> Result<serde_json::Value, String>;
    /// `save`, serialised as JSON. Brains override it to serialise their
    /// state directly: building the `Value` tree of a large state first
    /// doubles the time the loop stands still at each checkpoint.
    fn save_json(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.save()?).map_err(|e| format!("serialising engine state: {e}"))
    }
    /// The state as of now, to be serialised on another thread: encoding a
    /// large state for the periodic checkpoint stood the engine (and so the
    /// loop, which waits for the capture) still. Brains
    /// override it with a copy of their state (cheaper than its JSON); the
    /// default encodes at once.
    fn capture(&self) -> Result<Capture, String> {
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
    /// Project and user budget use per environment, for their owners
    /// ([`crate::budget::share`]); brains without budgets report none.
    fn budget_usage(&self) -> Vec<crate::budget::share::Usage> {
        Vec::new()
    }
    /// A budget account's allocation as announced (`project:…`, `user:…`),
    /// when this brain knows it.
    fn budget_allocation(&self, _account: &str) -> Option<f64> {
        None
    }
    /// Whether this brain's project budgets are split with other instances
    /// (it owns only part of the group's partitions).
    fn split_budgets(&mut self, _split: bool) {}
    /// A share of a project budget granted to one of this brain's
    /// environments.
    fn apply_share(&mut self, _share: &crate::budget::share::Share) {}
}

/// An input record a brain refused, and why.
#[derive(Debug)]
pub struct Refused {
    pub event: Event,
    pub reason: String,
}

/// A brain's state captured for a checkpoint; called (on another thread)
/// for its JSON.
pub type Capture = Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send>;

/// Makes brains: fresh, or restored from a snapshot's engine state.
pub trait BrainFactory: Send + Sync {
    fn create(&self, restore: Option<&serde_json::Value>) -> Result<Box<dyn Brain>, String>;
}

/// Requests to a running service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Checkpoint now.
    Checkpoint,
    /// Checkpoint and stop.
    Stop,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Instance name (diagnostics; a header on commands).
    pub instance: String,
    /// Stop after input has been idle (everything read, nothing buffered) for
    /// this long, calling `Brain::finish` first. For replays and tests.
    pub exit_when_idle: Option<Duration>,
}

/// Counters, shared so a caller (metrics, the benchmark) can read them live.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub events: AtomicU64,
    pub dead_letters: AtomicU64,
    pub commands: AtomicU64,
    pub checkpoints: AtomicU64,
    pub rebalances: AtomicU64,
    /// Most messages the merge held at once (checked once per batch).
    pub merge_peak: AtomicU64,
    /// Input partitions (group topics) currently owned.
    pub assigned: AtomicU64,
    /// When set, each applied event's produce time (ms since the epoch)
    /// and produce→decided latency (ms) are recorded in `latencies_ms`
    /// (benchmarks, which tell warm-up from steady state by produce time).
    pub record_latency: std::sync::atomic::AtomicBool,
    pub latencies_ms: Mutex<Vec<(i64, f64)>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub instance: String,
    pub messages: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub commands: u64,
    pub checkpoints: u64,
    pub rebalances: u64,
    pub merge_peak: u64,
    pub restored_from_snapshot: bool,
    /// Snapshots refused at restore (edited or corrupt: checksum or JSON).
    pub refused_snapshots: u64,
    pub partitions: Vec<String>,
    pub finished: bool,
}

/// What the rebalance callback hands to the loop.
#[derive(Debug)]
struct Plan {
    assignment: Vec<Tp>,
    snapshot: Option<Snapshot>,
}

struct GroupCtx {
    dir: PathBuf,
    group: String,
    /// The internal budget-spend topic: always read from its beginning
    /// (latest-wins records, see [`super::spend`]).
    spend_topic: String,
    /// `KafkaConfig::reread_messages`.
    reread: u32,
    plan: Mutex<Option<Plan>>,
    /// Snapshots refused at restore (checksum or JSON), see
    /// [`checkpoint::read_with_fallback`].
    refused_snapshots: AtomicU64,
}

/// librdkafka reports reaching the end of a partition (which the loop asks
/// for, to know when it is caught up) as an error; it is not one.
fn log_client_error(error: &RdError, reason: &str) {
    if !is_partition_eof(error) {
        tracing::error!(error = %error, reason, "kafka client error");
    }
}

/// The end of a partition, as a poll result or as a client-wide error
/// (split partition queues report it so).
fn is_partition_eof(error: &RdError) -> bool {
    use rdkafka::types::RDKafkaErrorCode;
    matches!(
        error,
        RdError::PartitionEOF(_) | RdError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

impl ClientContext for GroupCtx {
    fn error(&self, error: RdError, reason: &str) {
        log_client_error(&error, reason);
    }
}

/// Context of the price consumer (manual assignment, no group).
struct PriceCtx;

impl ClientContext for PriceCtx {
    fn error(&self, error: RdError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for PriceCtx {}

impl ConsumerContext for GroupCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assignment: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let path = checkpoint::path_for(&self.dir, &self.group, &assignment);
                // A snapshot that fails its checksum is refused: the one
                // before it is restored instead, or the partitions replayed.
                let found = checkpoint::read_with_fallback(&path);
                for e in &found.refused {
                    tracing::warn!(error = %e, "refused a snapshot");
                }
                if !found.refused.is_empty() {
                    let how = if found.snapshot.is_some() {
                        "restoring the snapshot before it"
                    } else {
                        "replaying the partitions from the beginning"
                    };
                    tracing::warn!("{how}");
                }
                self.refused_snapshots
                    .fetch_add(found.refused.len() as u64, Ordering::Relaxed);
                let snapshot = found.snapshot;
                // Seek every partition to what the restored state reflects
                // (from a little before it, see `reread_from`), or to the
                // beginning when there is no state.
                for (t, p) in &assignment {
                    let off = snapshot
                        .as_ref()
                        .filter(|_| *t != self.spend_topic)
                        .and_then(|s| s.offsets.get(t))
                        .and_then(|m| m.get(p))
                        .map(|&o| reread_from(o, self.reread))
                        .unwrap_or(Offset::Beginning);
                    let _ = tpl.set_partition_offset(t, *p, off);
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
                let owned: Vec<String> =
                    assignment.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                tracing::info!(
                    partitions = assignment.len(),
                    restored = snapshot.is_some(),
                    owned = owned.join(","),
                    "assigned"
                );
                *self.plan.lock().expect("plan lock") = Some(Plan {
                    assignment,
                    snapshot,
                });
            }
            _ => {
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
                tracing::info!("partitions revoked");
                *self.plan.lock().expect("plan lock") = Some(Plan {
                    assignment: Vec::new(),
                    snapshot: None,
                });
            }
        }
    }
}

/// The per-assignment state of the loop.
struct Active {
    assignment: Vec<Tp>,
    /// The decision core, on a thread of its own (see [`super::worker`]).
    worker: Worker,
    exchange: super::spend::Exchange,
    /// Another instance owns part of the group: budgets are split, and the
    /// exchange runs (alone, there is nobody to exchange with).
    split: bool,
    merger: Merger,
    dirty: bool,
    /// The periodic checkpoint being written on another thread; it yields
    /// the offsets it saved, committed once it is on disk.
    pending: Option<std::thread::JoinHandle<Result<Offsets, KafkaError>>>,
    /// Merger slot by input index and partition, filled on first sight, so
    /// the per-message path compares no topic names in the merger.
    slots: Vec<Vec<Option<Option<usize>>>>,
    /// The input index of each merge slot (`None`: not an input), for
    /// messages of split partition queues, whose slot is known. Derived from
    /// the merger when the assignment is activated.
    slot_input: Vec<Option<usize>>,
}

impl Active {
    fn slot(&mut self, input: usize, topic: &str, partition: i32) -> Option<usize> {
        let p = usize::try_from(partition).ok()?;
        if self.slots.len() <= input {
            self.slots.resize(input + 1, Vec::new());
        }
        let row = &mut self.slots[input];
        if row.len() <= p {
            row.resize(p + 1, None);
        }
        *row[p].get_or_insert_with(|| self.merger.slot(topic, partition))
    }
}

/// Where to start reading a partition that resumes at `offset`: up to
/// `reread` messages before it (`KafkaConfig::reread_messages`), which the
/// merger ignores. A broker may answer a fetch from inside a record batch
/// with the following batch (tansu 0.6 does), which would skip the rest of
/// the batch; starting from before shows the merger the partition's
/// continuity (see [`super::merge`]).
fn reread_from(offset: i64, reread: u32) -> Offset {
    Offset::Offset(offset.saturating_sub(i64::from(reread)).max(0))
}

/// How often the timer refreshes `prescale_consumer_lag`.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Run the service until stopped (control channel, closed channel) or, with
/// `exit_when_idle`, until input is exhausted.
pub async fn run(
    cfg: &KafkaConfig,
    factory: &dyn BrainFactory,
    opts: &RunOptions,
    mut control: mpsc::Receiver<Control>,
    stats: Arc<Stats>,
) -> Result<RunReport, KafkaError> {
    let topics = &cfg.topics;
    let spend_topic = topics.budget_spend();
    let broadcast_topics = topics.broadcast();
    let group_topics = [
        topics.job_submission(),
        topics.job_completion(),
        spend_topic.clone(),
    ];
    // Per input topic: its kind, its events-in counter (looked up once: the
    // per-message path only increments) and its name for librdkafka's
    // watermark lookups (converted once, not per question).
    let inputs: Vec<Input> = topics
        .inputs()
        .into_iter()
        .map(|(kind, t)| Input {
            counter: crate::telemetry::metrics().events_in(&t),
            c_topic: std::ffi::CString::new(t.as_str()).unwrap_or_default(),
            broadcast: broadcast_topics.contains(&t),
            topic: t,
            kind,
        })
        .collect();

    let ctx = GroupCtx {
        dir: cfg.checkpoint_dir.clone(),
        group: cfg.group_id.clone(),
        spend_topic: spend_topic.clone(),
        reread: cfg.reread_messages,
        plan: Mutex::new(None),
        refused_snapshots: AtomicU64::new(0),
    };
    // In `Arc`s: partition queues split off them hold a reference.
    let group: Arc<StreamConsumer<GroupCtx>> =
        Arc::new(service_consumer_config(cfg, Some(&cfg.group_id)).create_with_context(ctx)?);
    let prices: Arc<StreamConsumer<PriceCtx>> =
        Arc::new(service_consumer_config(cfg, None).create_with_context(PriceCtx)?);
    let refs: Vec<&str> = group_topics.iter().map(String::as_str).collect();
    group.subscribe(&refs)?;
    let publisher = Publisher::new(cfg)?;

    let mut active: Option<Active> = None;
    // The active assignment's input partitions, each on a queue of its own
    // (see [`super::split`]); replaced with `active`.
    let mut gsplit: Option<Split<GroupCtx>> = None;
    let mut psplit: Option<Split<PriceCtx>> = None;
    let mut restored = false;
    let mut finished = false;
    let mut last_input = Instant::now();
    let merge_idle = Duration::from_millis(cfg.merge_idle_ms);
    let checkpoint_every = Duration::from_millis(cfg.checkpoint_interval_ms.max(10));
    let mut last_checkpoint = Instant::now();
    // The timer drains events held by the merge grace and checkpoints.
    let period = checkpoint_every.min(Duration::from_millis(cfg.merge_idle_ms.clamp(10, 1_000)));
    let mut tick = tokio::time::interval(period);
    let mut last_lag = Instant::now()
        .checked_sub(LAG_EVERY)
        .unwrap_or_else(Instant::now);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One decisions channel for the whole run: a worker replaced at a
    // rebalance may still have decisions in it, published in order.
    let (decided_tx, decided) = mpsc::unbounded_channel();
    let mut outbox = Outbox {
        decided,
        sink: Sink {
            cfg,
            publisher: &publisher,
            scaling: topics.scaling_command(),
            preemption: topics.preemption_command(),
            instance: opts.instance.as_bytes().to_vec(),
            stats: &stats,
        },
    };

    // The merger's question, answered from librdkafka's cached watermarks.
    macro_rules! caught {
        () => {
            |t: &str, p: i32, n: Option<i64>| match inputs.iter().find(|i| i.topic == t) {
                Some(i) if i.broadcast => caught_up_c(prices.client(), &i.c_topic, p, n),
                Some(i) => caught_up_c(group.client(), &i.c_topic, p, n),
                None => true,
            }
        };
    }

    // A rebalance happened inside a poll: rebuild before anything else.
    // True when it did (the price consumer was then reassigned too).
    macro_rules! apply_plan {
        () => {{
            let plan = group.context().plan.lock().expect("plan lock").take();
            let applied = plan.is_some();
            if let Some(plan) = plan {
                stats.rebalances.fetch_add(1, Ordering::Relaxed);
                let owned = plan.assignment.len() as u64;
                // Hand over cleanly: the state of the assignment being given
                // up is checkpointed with the offsets it reflects, so
                // whichever instance is next given exactly that set (this one
                // after a restart, or a peer sharing `checkpoint_dir`)
                // restores it instead of replaying.
                if let Some(a) = active.as_mut() {
                    if a.dirty {
                        save(cfg, &group, &mut outbox, a, Write::Now)?;
                    } else {
                        finish_pending(&group, a, &stats, true)?;
                    }
                }
                active = None;
                // Before `activate` re-assigns the price consumer (see
                // `Split::new`).
                gsplit = None;
                psplit = None;
                if !plan.assignment.is_empty() {
                    let a = activate(cfg, factory, &prices, &inputs, plan, &stats, &decided_tx)?;
                    restored |= a.1;
                    let broadcast_topics = &broadcast_topics;
                    let parts = |broadcast: bool| {
                        a.0.merger
                            .partitions()
                            .filter(move |(_, (t, _))| broadcast_topics.contains(t) == broadcast)
                            .map(|(slot, (t, p))| (slot, t.as_str(), *p))
                    };
                    gsplit = Some(Split::new(&group, parts(false)));
                    psplit = Some(Split::new(&prices, parts(true)));
                    active = Some(a.0);
                } else {
                    prices.unassign()?;
                }
                // Published once the hand-over is done.
                stats.assigned.store(owned, Ordering::Relaxed);
                last_input = Instant::now();
            }
            applied
        }};
    }
    // A price message taken before the price consumer was reassigned is
    // stale: the new assignment reads it again if it is still wanted.
    let stale = |m: &Result<BorrowedMessage<'_>, RdError>| {
        let from_prices =
            |m: &BorrowedMessage<'_>| inputs.iter().any(|i| i.broadcast && i.topic == m.topic());
        m.as_ref().is_ok_and(from_prices)
    };

    enum Step<'a> {
        /// From a consumer's own queue.
        Msg(Result<BorrowedMessage<'a>, RdError>),
        /// From a partition queue, waited for.
        Woken(Result<OwnedMessage, RdError>),
        /// The decision thread decided something.
        Decided(Option<Decided>),
        Tick,
        Ctl(Option<Control>),
    }

    let mut group_done = GroupDone::default();
    let ing = Ingest {
        cfg,
        inputs: &inputs,
        publisher: &publisher,
        stats: &stats,
        group: &group,
        prices: &prices,
    };

    loop {
        // A consumer whose own queue was not seen empty since its split
        // is asked first, so its split partitions become readable.
        let mut early = None;
        if gsplit.as_ref().is_some_and(|s| !s.is_clear()) {
            early = poll_own(&group, &mut gsplit).map(Step::Msg);
        }
        if early.is_none() && psplit.as_ref().is_some_and(|s| !s.is_clear()) {
            early = poll_own(&prices, &mut psplit).map(Step::Msg);
        }
        let step = match early {
            Some(step) => step,
            None => {
                // The partitions with room in the merge, waited on alongside the
                // consumers' own queues.
                let waits: Vec<_> = match &active {
                    Some(a) => {
                        let queued = |slot| a.merger.queued(slot);
                        let g = gsplit.iter().flat_map(|s| s.waits(queued));
                        let p = psplit.iter().flat_map(|s| s.waits(queued));
                        g.chain(p).collect()
                    }
                    None => Vec::new(),
                };
                let woken = async move {
                    if waits.is_empty() {
                        std::future::pending::<Woken>().await
                    } else {
                        futures::future::select_all(waits).await.0
                    }
                };
                tokio::select! {
                    m = group.recv() => Step::Msg(m),
                    m = prices.recv() => Step::Msg(m),
                    (_, m) = woken => Step::Woken(m),
                    d = outbox.decided.recv() => Step::Decided(d),
                    _ = tick.tick() => Step::Tick,
                    c = control.recv() => Step::Ctl(c),
                }
            }
        };

        let fresh = apply_plan!();

        match step {
            Step::Msg(_) | Step::Woken(_) => {
                // One clock reading per batch: arrival times only feed the
                // merge grace (milliseconds), and the batch takes far less.
                let now = Instant::now();
                // Taken before a reassignment that happened since: the new
                // assignment reads it again if it still wants it.
                let first = match &step {
                    Step::Msg(m) => (!(fresh && stale(m))).then(|| view(m)),
                    Step::Woken(m) => (!fresh).then(|| view(m)),
                    Step::Tick | Step::Ctl(_) | Step::Decided(_) => {
                        unreachable!("a message step")
                    }
                };
                if let Some(first) = first {
                    if ing.take(active.as_mut(), first, None, now)? {
                        last_input = now;
                    }
                }
                // Then take what is already at hand without waiting, up to a
                // batch, merging and deciding after each pass: one wake-up
                // per batch instead of per message.
                let mut n = 1usize;
                loop {
                    let before = n;
                    // The consumers' own queues first: prices and budgets
                    // when not split, the budget-spend topic, and messages
                    // of split partitions fetched before the split.
                    while n < MAX_BATCH {
                        let Some(m) = poll_own(&group, &mut gsplit) else {
                            break;
                        };
                        apply_plan!();
                        if ing.take(active.as_mut(), view(&m), None, now)? {
                            last_input = now;
                        }
                        n += 1;
                    }
                    while n < MAX_BATCH {
                        let Some(m) = poll_own(&prices, &mut psplit) else {
                            break;
                        };
                        if ing.take(active.as_mut(), view(&m), None, now)? {
                            last_input = now;
                        }
                        n += 1;
                    }
                    // Then each partition with room in the merge.
                    if let Some(a) = active.as_mut() {
                        let pumped = ing.pump(gsplit.as_ref(), MAX_BATCH - n, a, now)?
                            + ing.pump(psplit.as_ref(), MAX_BATCH - n, a, now)?;
                        if pumped > 0 {
                            last_input = now;
                        }
                        n += pumped;
                        stats
                            .merge_peak
                            .fetch_max(a.merger.buffered() as u64, Ordering::Relaxed);
                        drain(a, merge_idle, caught!())?;
                    }
                    outbox.publish_ready()?;
                    if n == before || n >= MAX_BATCH {
                        break;
                    }
                }
            }
            Step::Decided(d) => {
                if let Some(d) = d {
                    outbox.publish(d)?;
                }
                outbox.publish_ready()?;
            }
            Step::Tick => {
                publisher.retry_failed()?;
                if let Some(a) = active.as_mut().filter(|a| a.split) {
                    a.exchange.round(&mut a.worker, &publisher, &spend_topic)?;
                }
                if last_lag.elapsed() >= LAG_EVERY {
                    super::lag::report(&group, crate::telemetry::metrics());
                    super::lag::report(&prices, crate::telemetry::metrics());
                    last_lag = Instant::now();
                }
                if let Some(a) = active.as_mut() {
                    a.worker.post(|b| b.on_timer())?;
                    drain(a, merge_idle, caught!())?;
                    outbox.publish_ready()?;
                    finish_pending(&group, a, &stats, false)?;
                    if a.dirty && last_checkpoint.elapsed() >= checkpoint_every {
                        save(cfg, &group, &mut outbox, a, Write::Background)?;
                        last_checkpoint = Instant::now();
                    }
                    if let Some(idle) = opts.exit_when_idle {
                        // Only after input was seen (or state restored): an
                        // instance still waiting for a producer is not done.
                        let seen = stats.messages.load(Ordering::Relaxed) > 0 || restored;
                        if seen
                            && last_input.elapsed() >= idle
                            && a.merger.drained(caught!())
                            && group_done.check(&group, &a.assignment, &group_topics[..2])
                        {
                            let mut out = a.worker.call(|b| {
                                let mut out = Vec::new();
                                b.finish(&mut out);
                                out
                            })?;
                            outbox.publish_ready()?;
                            outbox.sink.publish(&mut out, None)?;
                            save(cfg, &group, &mut outbox, a, Write::Now)?;
                            finished = true;
                            break;
                        }
                    }
                }
            }
            Step::Ctl(Some(Control::Checkpoint)) => {
                if let Some(a) = active.as_mut() {
                    save(cfg, &group, &mut outbox, a, Write::Now)?;
                }
            }
            Step::Ctl(Some(Control::Stop)) | Step::Ctl(None) => {
                if let Some(a) = active.as_mut() {
                    save(cfg, &group, &mut outbox, a, Write::Now)?;
                }
                break;
            }
        }
    }
    publisher.flush(Duration::from_secs(30))?;
    let partitions = active
        .as_ref()
        .map(|a| {
            a.assignment
                .iter()
                .map(|(t, p)| format!("{t}/{p}"))
                .collect()
        })
        .unwrap_or_default();
    Ok(RunReport {
        instance: opts.instance.clone(),
        messages: stats.messages.load(Ordering::Relaxed),
        events: stats.events.load(Ordering::Relaxed),
        dead_letters: stats.dead_letters.load(Ordering::Relaxed),
        commands: stats.commands.load(Ordering::Relaxed),
        checkpoints: stats.checkpoints.load(Ordering::Relaxed),
        rebalances: stats.rebalances.load(Ordering::Relaxed),
        merge_peak: stats.merge_peak.load(Ordering::Relaxed),
        restored_from_snapshot: restored,
        refused_snapshots: group.context().refused_snapshots.load(Ordering::Relaxed),
        partitions,
        finished,
    })
}

/// Build the state for a new assignment: restore or start fresh, and point
/// the broadcast consumer (prices, budget allocations) at the matching
/// offsets.
fn activate(
    cfg: &KafkaConfig,
    factory: &dyn BrainFactory,
    prices: &StreamConsumer<PriceCtx>,
    inputs: &[Input],
    plan: Plan,
    stats: &Arc<Stats>,
    decided: &mpsc::UnboundedSender<Decided>,
) -> Result<(Active, bool), KafkaError> {
    let broadcast_topics = cfg.topics.broadcast();
    let spend_topic = &cfg.topics.budget_spend();
    let reread = cfg.reread_messages;
    let restored = plan.snapshot.is_some();
    let mut brain = factory
        .create(plan.snapshot.as_ref().map(|s| &s.engine))
        .map_err(KafkaError::Engine)?;
    // Budgets are split only while another instance owns part of the group:
    // alone, this one decides every project itself, as a file replay does.
    let owned = plan
        .assignment
        .iter()
        .filter(|(t, _)| t == spend_topic)
        .count();
    let total = partitions_of(prices.client(), spend_topic, Duration::from_secs(10))
        .map(|p| p.len())
        .unwrap_or(0);
    let split = owned < total;
    brain.split_budgets(split);
    let offsets = plan
        .snapshot
        .as_ref()
        .map(|s| s.offsets.clone())
        .unwrap_or_default();
    if let Some(s) = &plan.snapshot {
        for (k, v) in &s.counters {
            let c = match k.as_str() {
                "events" => &stats.events,
                "dead_letters" => &stats.dead_letters,
                "commands" => &stats.commands,
                _ => continue,
            };
            c.store(*v, Ordering::Relaxed);
        }
    }
    let mut broadcast: Vec<Tp> = Vec::new();
    for t in &broadcast_topics {
        for p in partitions_of(prices.client(), t, Duration::from_secs(10))? {
            broadcast.push((t.clone(), p));
        }
    }
    let mut tpl = TopicPartitionList::new();
    let start = |t: &str, p: i32| offsets.get(t).and_then(|m| m.get(&p)).copied();
    for (t, p) in &broadcast {
        let off = start(t, *p)
            .map(|o| reread_from(o, reread))
            .unwrap_or(Offset::Beginning);
        tpl.add_partition_offset(t, *p, off)?;
    }
    prices.assign(&tpl)?;
    // Where each partition resumes; "from the beginning" is resolved to the
    // partition's low watermark, so the merger knows the first offset to
    // expect and can refuse a message left over from before the seek.
    let resume = |t: &str, p: i32| {
        start(t, p).or_else(|| {
            prices
                .fetch_watermarks(t, p, Duration::from_secs(5))
                .ok()
                .map(|(low, _)| low)
        })
    };
    // The internal budget-spend topic is not event-time input: it bypasses
    // the merge.
    let all: Vec<(Tp, Option<i64>)> = plan
        .assignment
        .iter()
        .filter(|(t, _)| t != spend_topic)
        .chain(&broadcast)
        .map(|(t, p)| ((t.clone(), *p), resume(t, *p)))
        .collect();
    let merger = Merger::new(all).with_reread(reread);
    // The merger numbers its partitions (slots) in its own order.
    let slot_input = merger
        .partitions()
        .map(|(_, (t, _))| inputs.iter().position(|i| i.topic == *t))
        .collect();
    Ok((
        Active {
            assignment: plan.assignment,
            worker: Worker::spawn(
                brain,
                merger.partitions().map(|(_, tp)| tp.clone()).collect(),
                stats.clone(),
                decided.clone(),
            )?,
            exchange: super::spend::Exchange::default(),
            split,
            merger,
            dirty: false,
            pending: None,
            slots: Vec::new(),
            slot_input,
        },
        restored,
    ))
}

fn seq_header(m: &dyn MessageView) -> Option<u64> {
    std::str::from_utf8(m.header(headers::SEQ)?)
        .ok()?
        .parse()
        .ok()
}

/// Poll a consumer's own queue without waiting. Seeing it empty makes its
/// split partitions readable (see [`super::split`]).
fn poll_own<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    split: &mut Option<Split<C>>,
) -> Option<Result<BorrowedMessage<'c>, RdError>> {
    let m = consumer.recv().now_or_never();
    if m.is_none() {
        split.iter_mut().for_each(Split::set_clear);
    }
    m
}

/// A consumer's poll result as the ingest path takes it.
fn view<M: MessageView>(m: &Result<M, RdError>) -> Result<&dyn MessageView, &RdError> {
    m.as_ref().map(|m| m as &dyn MessageView)
}

/// Messages handled per wake-up of the loop at most (bounds the time
/// between looks at the timer and the control channel).
const MAX_BATCH: usize = 1024;

/// librdkafka's prefetch per partition, unless `-X queued.min.messages`
/// says otherwise. Each input partition has a queue of its own (see
/// [`super::split`]), so this bounds how far a partition the merge is not
/// waiting for runs ahead; the default (100 000) would let a dozen
/// partitions hold over a million messages.
const PREFETCH_PER_PARTITION: &str = "10000";

/// The service's consumers: [`consumer_config`] with
/// [`PREFETCH_PER_PARTITION`].
fn service_consumer_config(cfg: &KafkaConfig, group: Option<&str>) -> rdkafka::ClientConfig {
    let mut c = consumer_config(cfg, group);
    if !cfg.properties.contains_key("queued.min.messages") {
        c.set("queued.min.messages", PREFETCH_PER_PARTITION);
    }
    c
}

/// One input topic as the loop sees it.
struct Input {
    topic: String,
    c_topic: std::ffi::CString,
    kind: EventKind,
    /// Read whole by every instance (prices, budget allocations).
    broadcast: bool,
    counter: prometheus_client::metrics::counter::Counter,
}

/// What taking a message in needs besides the assignment's state.
struct Ingest<'a> {
    cfg: &'a KafkaConfig,
    inputs: &'a [Input],
    publisher: &'a Publisher,
    stats: &'a Stats,
    /// The consumers, to seek a partition back when the merger asks.
    group: &'a StreamConsumer<GroupCtx>,
    prices: &'a StreamConsumer<PriceCtx>,
}

impl Ingest<'_> {
    /// One poll result: count a message and put it in the merge (or the
    /// budget exchange, or the dead-letter topic); log a client error.
    /// Returns whether it was a message. `slot`: the merge slot of the
    /// partition queue it was read from, when it came from one.
    fn take(
        &self,
        a: Option<&mut Active>,
        m: Result<&dyn MessageView, &RdError>,
        slot: Option<usize>,
        now: Instant,
    ) -> Result<bool, KafkaError> {
        match m {
            Ok(m) => {
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                if let Some(a) = a {
                    self.ingest(a, m, slot, now)?;
                }
                return Ok(true);
            }
            Err(e) if is_partition_eof(e) => {}
            // Transient client errors (broker down, coordinator moving) are
            // retried by librdkafka.
            Err(e) => tracing::warn!(error = %e, "consumer error"),
        }
        Ok(false)
    }

    /// Take up to `budget` messages, without waiting, from the split
    /// partitions whose merge buffer holds fewer than [`AHEAD`].
    fn pump<C: ConsumerContext + 'static>(
        &self,
        split: Option<&Split<C>>,
        budget: usize,
        a: &mut Active,
        now: Instant,
    ) -> Result<usize, KafkaError> {
        let mut n = 0;
        for (slot, q) in split.into_iter().flat_map(Split::ready) {
            let room = AHEAD.saturating_sub(a.merger.queued(slot)).min(budget - n);
            // One stream per pass, not one `recv` per message: each
            // registers a waker slot under a lock.
            let mut stream = q.stream();
            for _ in 0..room {
                let Some(Some(m)) = stream.next().now_or_never() else {
                    break;
                };
                if self.take(Some(a), view(&m), Some(slot), now)? {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The input and merge slot of a message read from a consumer's own
    /// queue, by its topic name; `None` when it is not event-time input (a
    /// budget-spend record is handed to the exchange here) or its partition
    /// is not in the merge.
    fn locate_by_topic(
        &self,
        a: &mut Active,
        m: &dyn MessageView,
    ) -> Result<Option<(usize, usize)>, KafkaError> {
        let topic = m.topic();
        let Some(i) = self.inputs.iter().position(|i| i.topic == topic) else {
            if topic == self.cfg.topics.budget_spend() {
                match a.exchange.on_record(m.payload().unwrap_or(&[])) {
                    Ok(Some(share)) => a.worker.post(move |b| b.apply_share(&share))?,
                    Ok(None) => {}
                    Err(e) => self.dead_letter(m, &e)?,
                }
            }
            return Ok(None);
        };
        Ok(a.slot(i, topic, m.partition()).map(|slot| (i, slot)))
    }

    /// Decode one input message into the merge buffer; one that does not
    /// decode or validate goes to the dead-letter topic and only advances
    /// its offset. Seeks its partition back when the merger asks (see
    /// [`Push::Rewind`]).
    ///
    /// `known`: the merge slot of the partition queue it came from. Its
    /// input is then looked up by slot: the topic name (a C string checked
    /// as UTF-8 and compared with each input's) is only read for messages
    /// of the consumers' own queues.
    fn ingest(
        &self,
        a: &mut Active,
        m: &dyn MessageView,
        known: Option<usize>,
        now: Instant,
    ) -> Result<(), KafkaError> {
        let cfg = self.cfg;
        let by_slot = known.and_then(|s| Some((a.slot_input.get(s).copied().flatten()?, s)));
        let found = match by_slot {
            Some(found) => Some(found),
            None => self.locate_by_topic(a, m)?,
        };
        let Some((i, slot)) = found else {
            return Ok(());
        };
        let input = &self.inputs[i];
        let pushed = match decode_input(cfg, input.kind, m.payload().unwrap_or(&[])) {
            Ok(ev) => {
                let key = OrderKey::new(&ev, input.kind, seq_header(m), m.partition(), m.offset());
                let pushed = a
                    .merger
                    .push(slot, m.offset(), key, ev, m.timestamp_ms(), now);
                if pushed == Push::Taken {
                    input.counter.inc();
                }
                pushed
            }
            Err(e) => {
                // Dead-lettered once, not again when read again (a restart
                // rereads messages before its resume point).
                let pushed = a.merger.push_skipped(slot, m.offset(), now);
                if pushed == Push::Taken {
                    self.dead_letter(m, &e.to_string())?;
                    a.dirty = true;
                }
                pushed
            }
        };
        if let Push::Rewind(to) = pushed {
            self.rewind(m, to, input.broadcast)?;
        }
        Ok(())
    }

    /// Dead-letter `m` (see [`dead_letter`]) and count it.
    fn dead_letter(&self, m: &dyn MessageView, error: &str) -> Result<(), KafkaError> {
        dead_letter(self.cfg, self.publisher, m, error)?;
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics().inc_dlq(m.topic());
        Ok(())
    }

    /// Seek the partition of `m` back to `to`, as the merger asked;
    /// `broadcast`: the price consumer reads it.
    fn rewind(&self, m: &dyn MessageView, to: i64, broadcast: bool) -> Result<(), KafkaError> {
        let (t, p) = (m.topic(), m.partition());
        tracing::info!(
            topic = t,
            partition = p,
            offset = m.offset(),
            to,
            "offsets skipped after a seek: reading the partition again from further back"
        );
        // How long librdkafka may take to accept the seek.
        let timeout = Duration::from_secs(5);
        if broadcast {
            self.prices.seek(t, p, Offset::Offset(to), timeout)?;
        } else {
            self.group.seek(t, p, Offset::Offset(to), timeout)?;
        }
        Ok(())
    }
}

/// Send a message that failed to decode to `<topic>.dlq`, unchanged, with
/// headers naming the error and where it came from.
fn dead_letter(
    cfg: &KafkaConfig,
    p: &Publisher,
    m: &dyn MessageView,
    error: &str,
) -> Result<(), KafkaError> {
    let dlq = cfg.topics.dlq(m.topic());
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    tracing::warn!(
        topic = m.topic(),
        partition = m.partition(),
        offset = m.offset(),
        error,
        "dead-lettered"
    );
    p.send(
        &dlq,
        m.key().unwrap_or(&[]),
        m.payload().unwrap_or(&[]),
        &[
            (headers::DLQ_ERROR, error.as_bytes()),
            (headers::DLQ_TOPIC, m.topic().as_bytes()),
            (headers::DLQ_PARTITION, partition.as_bytes()),
            (headers::DLQ_OFFSET, offset.as_bytes()),
        ],
        None,
    )
}

/// Where decided commands go.
struct Sink<'a> {
    cfg: &'a KafkaConfig,
    publisher: &'a Publisher,
    scaling: String,
    preemption: String,
    instance: Vec<u8>,
    stats: &'a Stats,
}

impl Sink<'_> {
    /// Publish and clear `out`. `trigger_ts` is the produce timestamp of the
    /// input message whose arrival made the engine decide; it travels as a
    /// header so latency can be measured end to end.
    fn publish(&self, out: &mut Vec<Command>, trigger_ts: Option<i64>) -> Result<(), KafkaError> {
        let ts = trigger_ts.map(|t| t.to_string());
        for c in out.drain(..) {
            let topic = match c {
                Command::Scaling(_) => &self.scaling,
                Command::Preemption(_) => &self.preemption,
            };
            let value = encode_output(self.cfg, &c)?;
            let mut h: Vec<(&str, &[u8])> = vec![
                (headers::COMMAND_ID, c.id().as_bytes()),
                (headers::INSTANCE, &self.instance),
            ];
            if let Some(ts) = &ts {
                h.push((headers::TRIGGER_TS, ts.as_bytes()));
            }
            self.publisher
                .send(topic, c.key().as_bytes(), &value, &h, None)?;
            self.stats.commands.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::metrics()
                .inc_decision(c.key(), crate::store::points::command_kind(&c));
        }
        Ok(())
    }
}

impl Sink<'_> {
    /// Dead-letter an event the brain refused (it contradicts one applied
    /// before): re-encoded as its topic carries it, with the reason and its
    /// origin in the headers, as for a message that does not decode. A
    /// replay from a snapshot taken before it refuses it again, so like
    /// every dead letter it arrives at least once.
    fn dead_letter_refused(&self, r: &RefusedAt) -> Result<(), KafkaError> {
        let kind = match r.event {
            Event::JobSubmitted(_) => EventKind::JobSubmitted,
            Event::JobCompleted(_) => EventKind::JobCompleted,
            Event::PriceTick(_) => EventKind::PriceTick,
            Event::BudgetAllocation(_) => EventKind::BudgetAllocation,
        };
        let value = super::codec::encode_input(self.cfg, kind, &r.event)?;
        let (partition, offset) = (r.partition.to_string(), r.offset.to_string());
        tracing::warn!(
            topic = %r.topic,
            partition = r.partition,
            offset = r.offset,
            error = %r.reason,
            "dead-lettered a conflicting duplicate"
        );
        self.publisher.send(
            &self.cfg.topics.dlq(&r.topic),
            r.event.key().as_bytes(),
            &value,
            &[
                (headers::DLQ_ERROR, r.reason.as_bytes()),
                (headers::DLQ_TOPIC, r.topic.as_bytes()),
                (headers::DLQ_PARTITION, partition.as_bytes()),
                (headers::DLQ_OFFSET, offset.as_bytes()),
            ],
            None,
        )?;
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics().inc_dlq(&r.topic);
        Ok(())
    }
}

/// Decided commands on their way out: the decision thread's channel, and
/// where they are published.
struct Outbox<'a> {
    decided: mpsc::UnboundedReceiver<Decided>,
    sink: Sink<'a>,
}

impl Outbox<'_> {
    /// Publish one event's decisions, nested under its decision tick, or
    /// dead-letter the event the brain refused.
    fn publish(&self, mut d: Decided) -> Result<(), KafkaError> {
        if let Some(r) = d.refused.take() {
            self.sink.dead_letter_refused(&r)?;
        }
        if d.commands.is_empty() {
            return Ok(());
        }
        let _t = d.span.enter();
        let _p = crate::telemetry::spans::publish(d.commands.len()).entered();
        self.sink.publish(&mut d.commands, d.trigger_ts)
    }

    /// Publish every decision the thread has sent so far.
    fn publish_ready(&mut self) -> Result<(), KafkaError> {
        while let Ok(d) = self.decided.try_recv() {
            self.publish(d)?;
        }
        Ok(())
    }
}

/// Hand the events the merge releases to the decision thread, in order.
fn drain(
    a: &mut Active,
    merge_idle: Duration,
    mut caught: impl FnMut(&str, i32, Option<i64>) -> bool,
) -> Result<(), KafkaError> {
    let now = Instant::now();
    // No message is read during one drain, so an empty partition's answer
    // cannot change between its pops except through a fetch landing
    // meanwhile, which the next drain sees: ask librdkafka (locks and a
    // topic lookup) once per partition per drain, not once per event.
    let mut asked: Vec<(String, i32, Option<i64>, bool)> = Vec::new();
    let mut caught = |t: &str, p: i32, next: Option<i64>| {
        if let Some(&(.., v)) = asked
            .iter()
            .find(|(at, ap, an, _)| *ap == p && *an == next && at == t)
        {
            return v;
        }
        let v = caught(t, p, next);
        asked.push((t.to_string(), p, next, v));
        v
    };
    while let Some(r) = a.merger.pop(now, merge_idle, &mut caught) {
        a.worker.push(r.event, r.produced_at, (r.slot, r.offset));
        a.dirty = true;
    }
    a.worker.flush()
}

/// Resume offsets per topic and partition, as snapshots hold them.
type Offsets = std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>;

/// Whether the whole group is done with its job topics, asked before an
/// idle instance reports itself finished: the partitions it does not own
/// must have been consumed by their owners too (their committed offsets, which
/// owners commit after each snapshot, at the end of each partition). An
/// instance whose peer died holding partitions that nobody took over would
/// otherwise report a finished run with that input never read.
#[derive(Default)]
struct GroupDone {
    last: Option<Instant>,
    warned: Option<Instant>,
}

/// How often [`GroupDone`] asks the broker.
const GROUP_DONE_EVERY: Duration = Duration::from_secs(1);

impl GroupDone {
    fn check(&mut self, group: &StreamConsumer<GroupCtx>, own: &[Tp], topics: &[String]) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < GROUP_DONE_EVERY) {
            return false;
        }
        self.last = Some(Instant::now());
        match unconsumed(group, own, topics) {
            Ok(left) if left.is_empty() => true,
            Ok(left) => {
                if self
                    .warned
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    tracing::warn!(
                        partitions = ?left,
                        "idle, but the group has not consumed these partitions: not finished"
                    );
                    self.warned = Some(Instant::now());
                }
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the group's offsets; not finished yet");
                false
            }
        }
    }
}

/// Partitions of `topics` this instance does not own whose group offset is
/// short of their end, as `topic/partition committed/end`.
fn unconsumed(
    group: &StreamConsumer<GroupCtx>,
    own: &[Tp],
    topics: &[String],
) -> Result<Vec<String>, KafkaError> {
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in partitions_of(group.client(), t, timeout)? {
            if !own.iter().any(|(ot, op)| ot == t && *op == p) {
                tpl.add_partition(t, p);
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = group.committed_offsets(tpl, timeout)?;
    let mut left = Vec::new();
    for e in committed.elements() {
        let (low, high) = group.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        if at < high {
            left.push(format!("{}/{} {at}/{high}", e.topic(), e.partition()));
        }
    }
    Ok(left)
}

/// Where a checkpoint's state is encoded and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// On the loop, done when `save` returns (stop, rebalance, on request).
    Now,
    /// On a thread of its own (the periodic checkpoint): the engine only
    /// copies its state; [`finish_pending`] commits once it is on disk.
    Background,
}

/// Checkpoint: flush commands, snapshot atomically, then commit offsets.
/// Waits for a checkpoint still being written in the background first, so
/// snapshots land in order.
fn save(
    cfg: &KafkaConfig,
    group: &StreamConsumer<GroupCtx>,
    outbox: &mut Outbox<'_>,
    a: &mut Active,
    how: Write,
) -> Result<(), KafkaError> {
    let stats = outbox.sink.stats;
    finish_pending(group, a, stats, true)?;
    let write = begin_save(cfg, outbox, a)?;
    match how {
        Write::Now => {
            let offsets = write()?;
            saved(group, a, stats, &offsets);
        }
        Write::Background => {
            let h = std::thread::Builder::new()
                .name("prescale-checkpoint".into())
                .spawn(write)
                .map_err(|e| KafkaError::Engine(format!("starting the checkpoint writer: {e}")))?;
            a.pending = Some(h);
        }
    }
    Ok(())
}

/// Collect a background checkpoint: wait for it (`wait`) or only take it
/// if it is done; then commit the offsets it saved.
fn finish_pending(
    group: &StreamConsumer<GroupCtx>,
    a: &mut Active,
    stats: &Stats,
    wait: bool,
) -> Result<(), KafkaError> {
    let Some(h) = a.pending.take() else {
        return Ok(());
    };
    if !wait && !h.is_finished() {
        a.pending = Some(h);
        return Ok(());
    }
    let offsets = h
        .join()
        .map_err(|_| KafkaError::Engine("the checkpoint writer panicked".into()))??;
    saved(group, a, stats, &offsets);
    Ok(())
}

/// Capture what the snapshot holds, then publish and flush every command
/// decided before it; the returned closure encodes and writes it and yields
/// the offsets it saved.
fn begin_save(
    cfg: &KafkaConfig,
    outbox: &mut Outbox<'_>,
    a: &mut Active,
) -> Result<impl FnOnce() -> Result<Offsets, KafkaError> + Send + 'static, KafkaError> {
    // The capture follows every event the merge has released; once it
    // returns, their decisions are all on the decisions channel.
    let engine = a
        .worker
        .call(|b| b.capture())?
        .map_err(KafkaError::Engine)?;
    outbox.publish_ready()?;
    outbox.sink.publisher.flush(Duration::from_secs(60))?;
    let stats = outbox.sink.stats;
    let offsets = a.merger.offsets();
    let counters = [
        ("events", &stats.events),
        ("dead_letters", &stats.dead_letters),
        ("commands", &stats.commands),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
    .collect();
    let snap = Snapshot {
        version: checkpoint::FORMAT_VERSION,
        group: cfg.group_id.clone(),
        assignment: a.assignment.clone(),
        offsets: offsets.clone(),
        engine: serde_json::Value::Null,
        counters,
        written_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let path = checkpoint::path_for(&cfg.checkpoint_dir, &cfg.group_id, &a.assignment);
    a.dirty = false;
    Ok(move || {
        let engine = engine().map_err(KafkaError::Engine)?;
        checkpoint::write_with_engine(&path, &snap, &engine)?;
        Ok(offsets)
    })
}

/// A snapshot is on disk: commit its offsets (for lag monitoring) and count it.
fn saved(group: &StreamConsumer<GroupCtx>, a: &Active, stats: &Stats, offsets: &Offsets) {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &a.assignment {
        if let Some(o) = offsets.get(t).and_then(|m| m.get(p)) {
            if let Err(e) = tpl.add_partition_offset(t, *p, Offset::Offset(*o)) {
                tracing::warn!(error = %e, "offset commit skipped");
            }
        }
    }
    if tpl.count() > 0 {
        // Informational for lag monitoring: positions come from snapshots.
        if let Err(e) = group.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed (snapshot is authoritative)");
        }
    }
    stats.checkpoints.fetch_add(1, Ordering::Relaxed);
}
