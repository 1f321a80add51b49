//! Ingest and dead letters: a poll result is counted, decoded and put in
//! the merge (or handed to the budget exchange); a message that does not
//! decode goes to `<topic>.dlq` with headers naming the error; a partition
//! whose continuity the merger doubts is read again from further back
//! (rewind).

use super::client::caught_up_c;
use super::codec::{decode_input, headers};
use super::handoff::Active;
use super::merge::{OrderKey, Push};
use super::pipe::{Item, Pipeline};
use super::publish::Publisher;
use super::rebalance::{is_partition_eof, GroupCtx, PriceCtx};
use super::split::{MessageView, Polled, Split, AHEAD};
use super::stats::Stats;
use super::{KafkaConfig, KafkaError};
use crate::events::avro::EventKind;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::Offset;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One input topic as the loop sees it.
pub(super) struct Input {
    pub(super) topic: String,
    c_topic: std::ffi::CString,
    pub(super) kind: EventKind,
    /// Read whole by every instance (prices, budget allocations).
    pub(super) broadcast: bool,
    counter: prometheus_client::metrics::counter::Counter,
}

/// Per input topic: its kind, its events-in counter (looked up once: the
/// per-message path only increments) and its name for librdkafka's
/// watermark lookups (converted once, not per question).
pub(super) fn inputs(cfg: &KafkaConfig) -> Vec<Input> {
    let broadcast = cfg.topics.broadcast();
    cfg.topics
        .inputs()
        .into_iter()
        .map(|(kind, t)| Input {
            counter: crate::telemetry::metrics().events_in(&t),
            c_topic: std::ffi::CString::new(t.as_str()).unwrap_or_default(),
            broadcast: broadcast.contains(&t),
            topic: t,
            kind,
        })
        .collect()
}

/// A message to take in: borrowed (read from a consumer's own queue or
/// waited for), or taken off a partition queue in a batch, which the merge
/// may keep until its sequence is needed (see [`super::merge::Hold`]).
enum Msg<'m> {
    View(&'m dyn MessageView),
    Held(Polled),
}

impl Msg<'_> {
    fn view(&self) -> &dyn MessageView {
        match self {
            Msg::View(m) => *m,
            Msg::Held(m) => m,
        }
    }
}

/// What taking a message in needs besides the assignment's state.
pub(super) struct Ingest<'a> {
    pub(super) cfg: &'a KafkaConfig,
    pub(super) inputs: &'a [Input],
    pub(super) publisher: &'a Publisher,
    pub(super) stats: &'a Stats,
    /// The consumers, to seek a partition back when the merger asks.
    pub(super) group: &'a StreamConsumer<GroupCtx>,
    pub(super) prices: &'a StreamConsumer<PriceCtx>,
}

/// What [`Ingest::take`] took: the counters are the caller's to add, so a
/// pass over a partition queue adds once (an atomic add per message on
/// counters other threads read was about 6 % of the loop thread on
/// `prescale bench kafka`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Took {
    /// A client error or end-of-partition notice, not a message.
    Nothing,
    /// A message that did not become a merged event (dead-lettered, read
    /// again, budget spend, not assigned).
    Message,
    /// A message whose event the merge took, of this input.
    Event(usize),
    /// A message the merge refused as past a gap: its partition was sought
    /// back (see [`Push::Rewind`]), so what was read of it after this
    /// message is stale (librdkafka drops such messages from its queue,
    /// not from a batch already taken).
    Rewound,
}

impl Ingest<'_> {
    /// One poll result: put a message in the merge (or the budget
    /// exchange, or the dead-letter topic); log a client error. Counts
    /// nothing (see [`Took`], [`Ingest::count`]). `slot`: the merge slot of
    /// the partition queue it was read from, when it came from one.
    pub(super) fn take(
        &self,
        a: Option<&mut Active>,
        m: Result<&dyn MessageView, &RdError>,
        slot: Option<usize>,
        now: Instant,
    ) -> Result<Took, KafkaError> {
        match m {
            Ok(m) => {
                return match a {
                    Some(a) => self.ingest(a, Msg::View(m), slot, now),
                    None => Ok(Took::Message),
                };
            }
            Err(e) if is_partition_eof(e) => {}
            // Transient client errors (broker down, coordinator moving) are
            // retried by librdkafka.
            Err(e) => tracing::warn!(error = %e, "consumer error"),
        }
        Ok(Took::Nothing)
    }

    /// Count what one [`Ingest::take`] took; whether it was a message.
    pub(super) fn count(&self, took: Took) -> bool {
        if let Took::Event(i) = took {
            self.inputs[i].counter.inc();
        }
        if took == Took::Nothing {
            return false;
        }
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Take up to `budget` messages, without waiting, from the split
    /// partitions whose merge buffer holds fewer than [`AHEAD`], counting
    /// them once per partition.
    pub(super) fn pump<C: ConsumerContext + 'static>(
        &self,
        split: &Split<C>,
        budget: usize,
        a: &mut Active,
        now: Instant,
    ) -> Result<usize, KafkaError> {
        let mut n = 0;
        for (slot, q) in split.ready() {
            let room = AHEAD.saturating_sub(a.merger.queued(slot)).min(budget - n);
            let (mut messages, mut events) = (0u64, (0usize, 0u64));
            for m in q.read(room) {
                // A message is handed over whole; an error only looked at.
                let took = match m.result().err() {
                    None => self.ingest(a, Msg::Held(m), Some(slot), now)?,
                    Some(e) => self.take(Some(a), Err(&e), Some(slot), now)?,
                };
                match took {
                    Took::Nothing => continue,
                    Took::Message => {}
                    Took::Rewound => {
                        // The rest of the batch predates the seek: dropped,
                        // as librdkafka drops what is left in the queue.
                        messages += 1;
                        break;
                    }
                    Took::Event(i) => {
                        // One partition is one input.
                        if events.0 != i && events.1 > 0 {
                            self.inputs[events.0].counter.inc_by(events.1);
                            events.1 = 0;
                        }
                        events = (i, events.1 + 1);
                    }
                }
                messages += 1;
            }
            if events.1 > 0 {
                self.inputs[events.0].counter.inc_by(events.1);
            }
            if messages > 0 {
                self.stats.messages.fetch_add(messages, Ordering::Relaxed);
            }
            n += messages as usize;
        }
        Ok(n)
    }

    /// The merger's question, whether a partition is read to its end,
    /// answered from librdkafka's cached watermarks.
    pub(super) fn caught(&self, t: &str, p: i32, next: Option<i64>) -> bool {
        match self.inputs.iter().find(|i| i.topic == t) {
            Some(i) if i.broadcast => caught_up_c(self.prices.client(), &i.c_topic, p, next),
            Some(i) => caught_up_c(self.group.client(), &i.c_topic, p, next),
            None => true,
        }
    }

    /// Whether a message was read by the price consumer (broadcast input).
    pub(super) fn read_by_prices(&self, m: &Result<BorrowedMessage<'_>, RdError>) -> bool {
        m.as_ref().is_ok_and(|m| {
            self.inputs
                .iter()
                .any(|i| i.broadcast && i.topic == m.topic())
        })
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
                    Ok(Some(share)) => a.worker.post(move |b| {
                        if let Some(s) = b.budgets() {
                            s.grant(&share);
                        }
                    })?,
                    Ok(None) => {}
                    Err(e) => self.dead_letter(m, &e.to_string())?,
                }
            }
            return Ok(None);
        };
        Ok(a.slot(i, topic, m.partition()).map(|slot| (i, slot)))
    }

    /// Decode one input message into the merge buffer; one that does not
    /// decode or validate goes to the dead-letter topic and only advances
    /// its offset. Seeks its partition back when the merger asks (see
    /// [`Push::Rewind`]). Returns what it took (see [`Took`]).
    ///
    /// `known`: the merge slot of the partition queue it came from. Its
    /// input is then looked up by slot: the topic name (a C string checked
    /// as UTF-8 and compared with each input's) is only read for messages
    /// of the consumers' own queues.
    fn ingest(
        &self,
        a: &mut Active,
        msg: Msg<'_>,
        known: Option<usize>,
        now: Instant,
    ) -> Result<Took, KafkaError> {
        let m = msg.view();
        let by_slot = known.and_then(|s| Some((a.input_of(s)?, s)));
        let found = match by_slot {
            Some(found) => Some(found),
            None => self.locate_by_topic(a, m)?,
        };
        let Some((i, slot)) = found else {
            return Ok(Took::Message);
        };
        let kind = self.inputs[i].kind;
        let (partition, offset) = (m.partition(), m.offset());
        let mut event = false;
        let pushed = match decode_input(self.cfg, kind, m.payload().unwrap_or(&[])) {
            Ok(ev) => {
                event = true;
                let produced = m.timestamp_ms();
                match msg {
                    Msg::View(m) => {
                        let key = OrderKey::new(&ev, kind, m.producer_seq(), partition, offset);
                        a.merger.push(slot, offset, key, ev, produced, now)
                    }
                    // The sequence is read from the message if the merge
                    // needs it.
                    Msg::Held(m) => {
                        let key = OrderKey::new(&ev, kind, None, partition, offset);
                        a.merger.push_held(slot, key, ev, m, produced, now)
                    }
                }
            }
            Err(e) => {
                // Dead-lettered once, not again when read again (a restart
                // rereads messages before its resume point).
                let pushed = a.merger.push_skipped(slot, offset, now);
                if pushed == Push::Taken {
                    self.dead_letter(m, &e.to_string())?;
                    a.dirty = true;
                }
                pushed
            }
        };
        self.outcome(pushed, i, event, partition, offset, || {})
    }

    /// What a push into the merge took (see [`Took`]); on
    /// [`Push::Rewind`], `before_seek` runs, then the partition is sought
    /// back.
    fn outcome(
        &self,
        pushed: Push,
        i: usize,
        event: bool,
        partition: i32,
        offset: i64,
        before_seek: impl FnOnce(),
    ) -> Result<Took, KafkaError> {
        let input = &self.inputs[i];
        Ok(match pushed {
            Push::Rewind(to) => {
                before_seek();
                self.rewind(&input.topic, partition, offset, to, input.broadcast)?;
                Took::Rewound
            }
            Push::Taken if event => Took::Event(i),
            _ => Took::Message,
        })
    }

    /// Take up to `budget` decoded messages from the reader threads' pipes
    /// (see [`super::pipe`]) whose partitions the merge holds fewer than
    /// [`AHEAD`] of, counting them once per pipe, as [`Ingest::pump`] does
    /// with the partition queues.
    pub(super) fn pump_piped(
        &self,
        pipeline: &mut Pipeline,
        budget: usize,
        a: &mut Active,
        now: Instant,
    ) -> Result<usize, KafkaError> {
        let mut n = 0;
        for p in 0..pipeline.pipes.len() {
            let slot = pipeline.pipes[p].slot;
            let Some(i) = a.input_of(slot) else {
                continue;
            };
            let (mut messages, mut events) = (0u64, 0u64);
            while n + (messages as usize) < budget && a.merger.queued(slot) < AHEAD {
                let Some(d) = pipeline.pipes[p].next() else {
                    break;
                };
                pipeline.took(p);
                let mut items = d.items;
                for item in items.drain(..) {
                    messages += 1;
                    let pipe = &mut pipeline.pipes[p];
                    match self.ingest_decoded(a, i, slot, item, now, || pipe.rewound())? {
                        Took::Event(_) => events += 1,
                        // The rest of the batch predates the seek.
                        Took::Rewound => break,
                        Took::Message | Took::Nothing => {}
                    }
                }
                pipeline.pipes[p].recycle(items);
            }
            if events > 0 {
                self.inputs[i].counter.inc_by(events);
            }
            if messages > 0 {
                self.stats.messages.fetch_add(messages, Ordering::Relaxed);
            }
            n += messages as usize;
        }
        pipeline.wake_readers();
        Ok(n)
    }

    /// [`Ingest::ingest`] for a message a reader thread decoded, of input
    /// `i` in merge slot `slot`. `before_seek`: see [`Ingest::outcome`].
    fn ingest_decoded(
        &self,
        a: &mut Active,
        i: usize,
        slot: usize,
        item: Item,
        now: Instant,
        before_seek: impl FnOnce(),
    ) -> Result<Took, KafkaError> {
        let offset = item.offset();
        let (pushed, event, partition) = match item {
            Item::Event {
                key,
                event,
                produced,
            } => {
                let partition = key.partition;
                let pushed = a.merger.push(slot, offset, key, event, produced, now);
                (pushed, true, partition)
            }
            Item::Bad { dead, error } => {
                let pushed = a.merger.push_skipped(slot, offset, now);
                if pushed == Push::Taken {
                    self.dead_letter(&dead, &error)?;
                    a.dirty = true;
                }
                (pushed, false, dead.partition)
            }
        };
        self.outcome(pushed, i, event, partition, offset, before_seek)
    }

    /// Dead-letter `m` (see [`dead_letter`]) and count it.
    fn dead_letter(&self, m: &dyn MessageView, error: &str) -> Result<(), KafkaError> {
        dead_letter(self.cfg, self.publisher, m, error)?;
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics().inc_dlq(m.topic());
        Ok(())
    }

    /// Seek partition `p` of topic `t` back to `to`, as the merger asked
    /// of the message at `offset`; `broadcast`: the price consumer reads it.
    fn rewind(
        &self,
        t: &str,
        p: i32,
        offset: i64,
        to: i64,
        broadcast: bool,
    ) -> Result<(), KafkaError> {
        tracing::info!(
            topic = t,
            partition = p,
            offset,
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

/// Poll a consumer's own queue without waiting. Seeing it empty makes its
/// split partitions readable (see [`super::split`]).
pub(super) fn poll_own<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    split: Option<&mut Split<C>>,
) -> Option<Result<BorrowedMessage<'c>, RdError>> {
    let m = consumer.recv().now_or_never();
    if m.is_none() {
        if let Some(s) = split {
            s.set_clear();
        }
    }
    m
}

/// A consumer's poll result as the ingest path takes it.
pub(super) fn view<M: MessageView>(m: &Result<M, RdError>) -> Result<&dyn MessageView, &RdError> {
    m.as_ref().map(|m| m as &dyn MessageView)
}
