//! The `prescale run` loop: one `tokio::select!` over the group consumer
//! (job submissions, completions, and the internal budget-spend topic), the
//! broadcast consumer (every partition of prices and budget allocations, no
//! group: each instance needs all prices and every project's budget), the
//! decision thread's output, a timer (checkpoints, idle detection, budget
//! exchange) and a control channel. This file only dispatches; each job
//! lives in a part of its own:
//!
//! - [`super::rebalance`]: the group consumer's callbacks assign partitions
//!   and send a typed [`super::rebalance::Rebalance`] to the loop, which
//!   takes it after every poll ([`Loop::rebalance`]);
//! - [`super::ingest`]: per message, decode (bad → `<topic>.dlq` with error
//!   headers, counted) → the deterministic merge ([`super::merge`]);
//! - [`super::handoff`]: the per-assignment state, and the hand-off of
//!   merged events to the decision thread ([`super::worker`]), which runs
//!   `Brain::handle`;
//! - [`super::outbox`]: the commands decided, published to the command
//!   topics keyed by compute environment, with the command id in a header;
//! - [`super::checkpoints`]: snapshots and offset commits.
//!
//! Recovery: see [`crate::checkpoint`]. Rebalances are eager; when an
//! assignment is taken away its state is checkpointed first, and on every
//! new assignment the instance restores the snapshot of exactly that
//! assignment if it has one, otherwise it starts a fresh engine and replays
//! its partitions (and all prices) from the beginning. Commands re-decided
//! during a replay carry the ids they had the first time.

use super::checkpoints::{finish_pending, save, Write};
use super::handoff::{Active, Start};
use super::ingest::{self, poll_own, view, Ingest, Input};
use super::outbox::{Outbox, Sink};
use super::pipe::{Fence, Gate, Pipeline, Source};
use super::publish::Publisher;
use super::rebalance::{
    service_consumer_config, GroupCtx, GroupDone, Orphans, PriceCtx, Rebalance, Rebalances,
};
use super::split::{Split, Woken, AHEAD};
use super::worker::Decided;
use super::{KafkaConfig, KafkaError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use super::port::{Brain, BrainError, BrainFactory, BudgetShare, Capture, Refused};
pub use super::stats::{AppliedHook, Stats};

/// Requests to a running service.
pub enum Control {
    /// Checkpoint now.
    Checkpoint,
    /// Checkpoint and stop.
    Stop,
    /// Run this on the live brain, in its turn after the events already
    /// handed to it (the HTTP API of `prescale run --api-listen`); called
    /// with `None` while this instance owns no partitions.
    Engine(EngineCall),
}

/// Work for the live brain (see [`Control::Engine`]): it runs on the
/// decision thread, so it must be quick; it answers through a channel of
/// its own.
pub type EngineCall = Box<dyn FnOnce(Option<&mut dyn Brain>) + Send>;

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Checkpoint => "Checkpoint",
            Control::Stop => "Stop",
            Control::Engine(_) => "Engine(..)",
        })
    }
}

#[derive(Clone, Default)]
pub struct RunOptions {
    /// Instance name (diagnostics; a header on commands).
    pub instance: String,
    /// Stop after input has been idle (everything read, nothing buffered) for
    /// this long, calling `Brain::finish` first. For replays and tests.
    pub exit_when_idle: Option<Duration>,
    /// Called on the decision thread after each batch of applied events
    /// (see [`AppliedHook`]; the benchmark's latency probe).
    pub on_applied: Option<AppliedHook>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("instance", &self.instance)
            .field("exit_when_idle", &self.exit_when_idle)
            .field("on_applied", &self.on_applied.is_some())
            .finish()
    }
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

/// How often the timer refreshes `prescale_consumer_lag`.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Messages handled per wake-up of the loop at most (bounds the time
/// between looks at the timer and the control channel).
const MAX_BATCH: usize = 1024;

/// Run the service until stopped (control channel, closed channel) or, with
/// `exit_when_idle`, until input is exhausted.
pub async fn run(
    cfg: &KafkaConfig,
    factory: &dyn BrainFactory,
    opts: &RunOptions,
    control: mpsc::Receiver<Control>,
    stats: Arc<Stats>,
) -> Result<RunReport, KafkaError> {
    let topics = &cfg.topics;
    let group_topics = [
        topics.job_submission(),
        topics.job_completion(),
        topics.budget_spend(),
    ];
    let inputs = ingest::inputs(cfg);
    let (ctx, rebalances) = GroupCtx::new(cfg);
    // In `Arc`s: partition queues split off them hold a reference.
    let group: Arc<StreamConsumer<GroupCtx>> =
        Arc::new(service_consumer_config(cfg, Some(&cfg.group_id)).create_with_context(ctx)?);
    let prices: Arc<StreamConsumer<PriceCtx>> =
        Arc::new(service_consumer_config(cfg, None).create_with_context(PriceCtx)?);
    let refs: Vec<&str> = group_topics.iter().map(String::as_str).collect();
    group.subscribe(&refs)?;
    let publisher = Publisher::new(cfg)?;
    // One decisions channel for the whole run: a worker replaced at a
    // rebalance may still have decisions in it, published in order.
    let (decided_tx, decided) = mpsc::unbounded_channel();
    let mut lp = Loop {
        cfg,
        opts,
        start: Start {
            cfg,
            factory,
            prices: &prices,
            inputs: &inputs,
            stats: &stats,
            decided: &decided_tx,
            on_applied: opts.on_applied.clone(),
        },
        ing: Ingest {
            cfg,
            inputs: &inputs,
            publisher: &publisher,
            stats: &stats,
            group: &group,
            prices: &prices,
        },
        group: &group,
        prices: &prices,
        group_topics: &group_topics,
        rebalances,
        phase: Phase::Idle,
        outbox: Outbox {
            decided,
            sink: Sink::new(cfg, &publisher, &opts.instance, &stats),
        },
        merge_idle: Duration::from_millis(cfg.merge_idle_ms),
        checkpoint_every: Duration::from_millis(cfg.checkpoint_interval_ms.max(10)),
        last_input: Instant::now(),
        last_checkpoint: Instant::now(),
        last_lag: Instant::now()
            .checked_sub(LAG_EVERY)
            .unwrap_or_else(Instant::now),
        group_done: GroupDone::default(),
        orphans: Orphans::new(&opts.instance),
        restored: false,
        finished: false,
    };
    lp.run(control).await?;
    publisher.flush(Duration::from_secs(30))?;
    let partitions = match &lp.phase {
        Phase::Consuming(c) => c
            .active
            .assignment
            .iter()
            .map(|(t, p)| format!("{t}/{p}"))
            .collect(),
        Phase::Idle => Vec::new(),
    };
    Ok(RunReport {
        instance: opts.instance.clone(),
        messages: stats.messages.load(Ordering::Relaxed),
        events: stats.events.load(Ordering::Relaxed),
        dead_letters: stats.dead_letters.load(Ordering::Relaxed),
        commands: stats.commands.load(Ordering::Relaxed),
        checkpoints: stats.checkpoints.load(Ordering::Relaxed),
        rebalances: stats.rebalances.load(Ordering::Relaxed),
        merge_peak: stats.merge_peak.load(Ordering::Relaxed),
        restored_from_snapshot: lp.restored,
        refused_snapshots: group.context().refused_snapshots(),
        partitions,
        finished: lp.finished,
    })
}

/// What the loop holds, by what the group consumer has given it: nothing,
/// or an assignment it is consuming. The split partition queues exist only
/// with the assignment they were split for.
enum Phase {
    Idle,
    Consuming(Box<Consuming>),
}

struct Consuming {
    active: Active,
    /// Reader threads reading the split queues (`decode_threads` ≥ 1).
    /// Before the splits: dropped (threads joined) first, since they use
    /// the splits' queues.
    piped: Option<Piped>,
    /// The assignment's input partitions, each on a queue of its own (see
    /// [`super::split`]).
    group: Split<GroupCtx>,
    prices: Split<PriceCtx>,
}

/// The pipelined path's reader threads and the gate of each consumer's
/// split queues (group, prices).
struct Piped {
    pipeline: Pipeline,
    gates: [Arc<Gate>; 2],
}

impl Consuming {
    /// Build the state of a new assignment: the splits, and with
    /// `decode_threads` ≥ 1 the reader threads that take them over.
    fn new(
        cfg: &KafkaConfig,
        inputs: &[Input],
        fence: Arc<Fence>,
        active: Active,
        mut group: Split<GroupCtx>,
        mut prices: Split<PriceCtx>,
    ) -> Result<Self, KafkaError> {
        let threads = cfg.decode_threads();
        let piped = if threads == 0 {
            None
        } else {
            let gates = [Gate::new(fence), Gate::new(Arc::default())];
            let mut sources = Vec::new();
            let handed = [group.hand_over(), prices.hand_over()];
            for (readers, gate) in handed.into_iter().zip(&gates) {
                for (slot, reader) in readers {
                    let Some(i) = active.input_of(slot) else {
                        continue;
                    };
                    sources.push(Source {
                        slot,
                        kind: inputs[i].kind,
                        reader,
                        gate: gate.clone(),
                    });
                }
            }
            let pipeline = Pipeline::start(cfg, threads, sources)
                .map_err(|e| KafkaError::Thread(format!("starting the reader threads: {e}")))?;
            Some(Piped { pipeline, gates })
        };
        Ok(Consuming {
            active,
            piped,
            group,
            prices,
        })
    }

    /// Open the readers' gate of each consumer whose own queue was seen
    /// empty since the split (see [`super::split`]).
    fn sync_gates(&self) {
        if let Some(p) = &self.piped {
            for (clear, gate) in [self.group.is_clear(), self.prices.is_clear()]
                .into_iter()
                .zip(&p.gates)
            {
                if clear {
                    p.pipeline.open(gate);
                }
            }
        }
    }
}

impl Phase {
    fn active_mut(&mut self) -> Option<&mut Active> {
        match self {
            Phase::Consuming(c) => Some(&mut c.active),
            Phase::Idle => None,
        }
    }
}

/// What woke the loop.
enum Step<'c> {
    /// From a consumer's own queue.
    Msg(Result<BorrowedMessage<'c>, RdError>),
    /// From a partition queue, waited for.
    Woken(Result<OwnedMessage, RdError>),
    /// A reader thread sent decoded messages.
    Piped,
    /// The decision thread decided something.
    Decided(Option<Decided>),
    Tick,
    Ctl(Option<Control>),
}

/// The loop's state between wake-ups.
struct Loop<'a> {
    cfg: &'a KafkaConfig,
    opts: &'a RunOptions,
    start: Start<'a>,
    ing: Ingest<'a>,
    group: &'a Arc<StreamConsumer<GroupCtx>>,
    prices: &'a Arc<StreamConsumer<PriceCtx>>,
    /// The group's topics: job submissions, completions, budget spend.
    group_topics: &'a [String; 3],
    rebalances: Rebalances,
    phase: Phase,
    outbox: Outbox<'a>,
    merge_idle: Duration,
    checkpoint_every: Duration,
    last_input: Instant,
    last_checkpoint: Instant,
    last_lag: Instant,
    group_done: GroupDone,
    /// Job partitions nobody consumes, adopted (see [`Orphans`]).
    orphans: Orphans,
    /// Some assignment was restored from a snapshot.
    restored: bool,
    /// Input was exhausted and finished (`exit_when_idle`).
    finished: bool,
}

impl<'a> Loop<'a> {
    async fn run(&mut self, mut control: mpsc::Receiver<Control>) -> Result<(), KafkaError> {
        // The timer drains events held by the merge grace and checkpoints.
        let period = self.checkpoint_every.min(Duration::from_millis(
            self.cfg.merge_idle_ms.clamp(10, 1_000),
        ));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = self.next_step(&mut tick, &mut control).await;
            // A rebalance happened inside a poll: rebuild before anything else.
            let fresh = self.rebalance()?;
            let go_on = match step {
                Step::Msg(_) | Step::Woken(_) | Step::Piped => {
                    self.batch(step, fresh)?;
                    true
                }
                Step::Decided(d) => {
                    if let Some(d) = d {
                        self.outbox.publish(d)?;
                    }
                    self.outbox.publish_ready()?;
                    true
                }
                Step::Tick => self.on_tick()?,
                Step::Ctl(c) => self.on_control(c)?,
            };
            if !go_on {
                return Ok(());
            }
        }
    }

    /// Wait for the next thing to do. A consumer whose own queue was not
    /// seen empty since its split is asked first, without waiting, so its
    /// split partitions become readable.
    async fn next_step(
        &mut self,
        tick: &mut tokio::time::Interval,
        control: &mut mpsc::Receiver<Control>,
    ) -> Step<'a> {
        let (group, prices): (&'a StreamConsumer<GroupCtx>, &'a StreamConsumer<PriceCtx>) =
            (self.group, self.prices);
        if let Phase::Consuming(c) = &mut self.phase {
            if !c.group.is_clear() {
                if let Some(m) = poll_own(group, Some(&mut c.group)) {
                    return Step::Msg(m);
                }
            }
            if !c.prices.is_clear() {
                if let Some(m) = poll_own(prices, Some(&mut c.prices)) {
                    return Step::Msg(m);
                }
            }
            c.sync_gates();
            // Decoded messages already waiting: no need to sleep.
            if let Some(p) = &c.piped {
                let merger = &c.active.merger;
                if p.pipeline.has_ready(|slot| merger.queued(slot) < AHEAD) {
                    return Step::Piped;
                }
            }
        }
        let ready = match &self.phase {
            Phase::Consuming(c) => c.piped.as_ref().map(|p| p.pipeline.ready()),
            Phase::Idle => None,
        };
        let piped = async move {
            match ready {
                Some(r) => r.notified().await,
                None => std::future::pending().await,
            }
        };
        // The partitions with room in the merge, waited on alongside the
        // consumers' own queues.
        let waits: Vec<_> = match &self.phase {
            Phase::Consuming(c) => {
                let queued = |slot| c.active.merger.queued(slot);
                c.group
                    .waits(queued)
                    .chain(c.prices.waits(queued))
                    .collect()
            }
            Phase::Idle => Vec::new(),
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
            () = piped => Step::Piped,
            d = self.outbox.decided.recv() => Step::Decided(d),
            _ = tick.tick() => Step::Tick,
            c = control.recv() => Step::Ctl(c),
        }
    }

    /// Apply the latest rebalance, if one happened since the last look:
    /// hand the assignment given up over cleanly (its state checkpointed
    /// with the offsets it reflects, so whichever instance is next given
    /// exactly that set, this one after a restart or a peer sharing
    /// `checkpoint_dir`, restores it instead of replaying), then start the
    /// new one. True when it did (the price consumer was then reassigned
    /// too).
    fn rebalance(&mut self) -> Result<bool, KafkaError> {
        let Some(r) = self.rebalances.latest() else {
            return Ok(false);
        };
        let stats = self.start.stats;
        stats.rebalances.fetch_add(1, Ordering::Relaxed);
        self.orphans.reset();
        let owned = r.assignment().len() as u64;
        // The state given up is checkpointed first (or its pending write
        // finished), so the next owner restores it.
        match &mut self.phase {
            Phase::Consuming(c) if c.active.dirty => self.checkpoint_now()?,
            Phase::Consuming(c) => finish_pending(self.group, &mut c.active, stats, true)?,
            Phase::Idle => {}
        }
        // Before `Active::start` re-assigns the price consumer (see
        // `Split::new`): the splits go with the state.
        self.phase = Phase::Idle;
        match r {
            Rebalance::Assigned {
                assignment,
                snapshot,
            } if !assignment.is_empty() => {
                self.restored |= snapshot.is_some();
                // The job partitions are split off at once, before the
                // state is built (engine, metadata and watermark requests):
                // see `Split::early`. Every one of them is in the merge;
                // the budget-spend topic bypasses it.
                let spend = self.cfg.topics.budget_spend();
                let early = Split::early(
                    self.group,
                    assignment
                        .iter()
                        .filter(|(t, _)| *t != spend)
                        .map(|(t, p)| (t.as_str(), *p)),
                );
                let active = Active::start(&self.start, assignment, snapshot)?;
                let group = early.bind(|t, p| active.merger.slot(t, p));
                let topics = self.cfg.topics.broadcast();
                let prices = Split::new(
                    self.prices,
                    active
                        .merger
                        .partitions()
                        .filter(|(_, (t, _))| topics.contains(t))
                        .map(|(slot, (t, p))| (slot, t.as_str(), *p)),
                );
                self.phase = Phase::Consuming(Box::new(Consuming::new(
                    self.cfg,
                    self.start.inputs,
                    self.group.context().fence(),
                    active,
                    group,
                    prices,
                )?));
            }
            _ => self.prices.unassign()?,
        }
        // Published once the hand-over is done.
        stats.assigned.store(owned, Ordering::Relaxed);
        self.last_input = Instant::now();
        Ok(true)
    }

    /// A message woke the loop: take it, then what is already at hand
    /// without waiting, up to a batch, merging and deciding after each
    /// pass: one wake-up per batch instead of per message. `fresh`: a
    /// rebalance was applied since it was taken.
    fn batch(&mut self, step: Step<'a>, fresh: bool) -> Result<(), KafkaError> {
        // One clock reading per batch: arrival times only feed the merge
        // grace (milliseconds), and the batch takes far less.
        let now = Instant::now();
        // Taken before a reassignment that happened since: the new
        // assignment reads it again if it still wants it. (A price message
        // taken before the price consumer was reassigned is stale.)
        let first = match &step {
            Step::Msg(m) => (!(fresh && self.ing.read_by_prices(m))).then(|| view(m)),
            Step::Woken(m) => (!fresh).then(|| view(m)),
            Step::Piped => None,
            Step::Tick | Step::Ctl(_) | Step::Decided(_) => unreachable!("a message step"),
        };
        if let Some(first) = first {
            let took = self.ing.take(self.phase.active_mut(), first, None, now)?;
            if self.ing.count(took) {
                self.last_input = now;
            }
        }
        let mut n = 1usize;
        loop {
            let before = n;
            n = self.take_own(n, now)?;
            // Then each partition with room in the merge.
            if let Phase::Consuming(c) = &mut self.phase {
                c.sync_gates();
                let a = &mut c.active;
                let mut pumped = self.ing.pump(&c.group, MAX_BATCH - n, a, now)?
                    + self.ing.pump(&c.prices, MAX_BATCH - n, a, now)?;
                if let Some(p) = &mut c.piped {
                    pumped += self
                        .ing
                        .pump_piped(&mut p.pipeline, MAX_BATCH - n, a, now)?;
                }
                if pumped > 0 {
                    self.last_input = now;
                }
                n += pumped;
                self.start
                    .stats
                    .merge_peak
                    .fetch_max(a.merger.buffered() as u64, Ordering::Relaxed);
                let ing = &self.ing;
                a.release(self.merge_idle, |t, p, next| ing.caught(t, p, next));
            }
            self.outbox.publish_ready()?;
            if n == before || n >= MAX_BATCH {
                // What the passes released, to the decision thread at once.
                if let Some(a) = self.phase.active_mut() {
                    a.worker.flush()?;
                }
                return Ok(());
            }
        }
    }

    /// Take what the consumers' own queues hold, without waiting, while
    /// the batch (`n` so far) has room: prices and budgets when not split,
    /// the budget-spend topic, and messages of split partitions fetched
    /// before the split. Returns the batch's new size.
    fn take_own(&mut self, mut n: usize, now: Instant) -> Result<usize, KafkaError> {
        let (group, prices): (&'a StreamConsumer<GroupCtx>, &'a StreamConsumer<PriceCtx>) =
            (self.group, self.prices);
        while n < MAX_BATCH {
            let split = match &mut self.phase {
                Phase::Consuming(c) => Some(&mut c.group),
                Phase::Idle => None,
            };
            let Some(m) = poll_own(group, split) else {
                break;
            };
            self.rebalance()?;
            let took = self
                .ing
                .take(self.phase.active_mut(), view(&m), None, now)?;
            if self.ing.count(took) {
                self.last_input = now;
            }
            n += 1;
        }
        while n < MAX_BATCH {
            let split = match &mut self.phase {
                Phase::Consuming(c) => Some(&mut c.prices),
                Phase::Idle => None,
            };
            let Some(m) = poll_own(prices, split) else {
                break;
            };
            let took = self
                .ing
                .take(self.phase.active_mut(), view(&m), None, now)?;
            if self.ing.count(took) {
                self.last_input = now;
            }
            n += 1;
        }
        Ok(n)
    }

    /// The timer: retry failed deliveries, exchange budgets, report lag,
    /// drain what the merge grace held, checkpoint when due, and (with
    /// `exit_when_idle`) finish once input is exhausted. False when the
    /// loop is to end.
    fn on_tick(&mut self) -> Result<bool, KafkaError> {
        self.ing.publisher.retry_failed()?;
        if let Some(a) = self.phase.active_mut().filter(|a| a.split) {
            let topic = self.cfg.topics.budget_spend();
            a.exchange
                .round(&mut a.worker, self.ing.publisher, &topic)?;
        }
        if self.last_lag.elapsed() >= LAG_EVERY {
            super::lag::report(self.group, crate::telemetry::metrics());
            super::lag::report(self.prices, crate::telemetry::metrics());
            self.last_lag = Instant::now();
        }
        let Phase::Consuming(c) = &mut self.phase else {
            return Ok(true);
        };
        let a = &mut c.active;
        a.worker.post(|b| b.on_timer())?;
        let ing = &self.ing;
        a.drain(self.merge_idle, |t, p, next| ing.caught(t, p, next))?;
        self.outbox.publish_ready()?;
        finish_pending(self.group, a, self.start.stats, false)?;
        if a.dirty && self.last_checkpoint.elapsed() >= self.checkpoint_every {
            save(self.cfg, self.group, &mut self.outbox, a, Write::Background)?;
            self.last_checkpoint = Instant::now();
        }
        let orphans = self
            .orphans
            .check(self.group, &a.assignment, &self.group_topics[..2]);
        if !orphans.is_empty() {
            // Taken as a rebalance at the top of the next turn; on failure
            // (metadata not answered) the next check tries again.
            if let Err(e) = self
                .group
                .context()
                .adopt(self.group, &a.assignment, &orphans)
            {
                tracing::warn!(error = %e, "could not adopt partitions nobody consumes");
            }
        }
        if self.input_exhausted() {
            self.finish()?;
            return Ok(false);
        }
        Ok(true)
    }

    /// With `exit_when_idle`: input was seen (or state restored: an
    /// instance still waiting for a producer is not done), nothing arrived
    /// for the idle time, the merge is drained and the whole group has
    /// consumed its job topics.
    fn input_exhausted(&mut self) -> bool {
        let Some(idle) = self.opts.exit_when_idle else {
            return false;
        };
        let Phase::Consuming(c) = &mut self.phase else {
            return false;
        };
        let seen = self.start.stats.messages.load(Ordering::Relaxed) > 0 || self.restored;
        let ing = &self.ing;
        seen && self.last_input.elapsed() >= idle
            && c.active.merger.drained(|t, p, next| ing.caught(t, p, next))
            && self
                .group_done
                .check(self.group, &c.active.assignment, &self.group_topics[..2])
    }

    /// End of input: what the last buckets decide is published and the
    /// state checkpointed, as a file replay ends.
    fn finish(&mut self) -> Result<(), KafkaError> {
        let Phase::Consuming(c) = &mut self.phase else {
            return Ok(());
        };
        let a = &mut c.active;
        let mut out = a.worker.call(|b| {
            let mut out = Vec::new();
            b.finish(&mut out);
            out
        })?;
        self.outbox.publish_ready()?;
        self.outbox.sink.publish(&mut out, None)?;
        save(self.cfg, self.group, &mut self.outbox, a, Write::Now)?;
        self.finished = true;
        Ok(())
    }

    /// Checkpoint the consuming assignment now (a request, or the stop).
    fn checkpoint_now(&mut self) -> Result<(), KafkaError> {
        if let Phase::Consuming(c) = &mut self.phase {
            save(
                self.cfg,
                self.group,
                &mut self.outbox,
                &mut c.active,
                Write::Now,
            )?;
        }
        Ok(())
    }

    /// A request on the control channel; false when the loop is to end.
    fn on_control(&mut self, c: Option<Control>) -> Result<bool, KafkaError> {
        match c {
            Some(Control::Checkpoint) => {
                self.checkpoint_now()?;
                Ok(true)
            }
            Some(Control::Engine(call)) => {
                match self.phase.active_mut() {
                    Some(a) => a.worker.post(move |b| call(Some(b)))?,
                    None => call(None),
                }
                Ok(true)
            }
            Some(Control::Stop) | None => {
                self.checkpoint_now()?;
                Ok(false)
            }
        }
    }
}
