//! The merge hand-off: the state the loop keeps for one assignment (the
//! event-time merge and the decision thread it feeds), how it is built
//! when partitions are assigned, and [`Active::drain`], which hands the
//! events the merge releases to the decision thread in order.

use super::client::partitions_of;
use super::ingest::Input;
use super::merge::{Merger, Tp};
use super::port::BrainFactory;
use super::rebalance::{reread_from, PriceCtx};
use super::spend::Exchange;
use super::split::Polled;
use super::stats::{AppliedHook, Stats};
use super::worker::{Decided, Worker};
use super::{KafkaConfig, KafkaError};
use crate::checkpoint::Snapshot;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Resume offsets per topic and partition, as snapshots hold them.
pub(super) type Offsets = std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>;

/// The per-assignment state of the loop.
pub(super) struct Active {
    pub(super) assignment: Vec<Tp>,
    /// The decision core, on a thread of its own (see [`super::worker`]).
    pub(super) worker: Worker,
    pub(super) exchange: Exchange,
    /// Another instance owns part of the group: budgets are split, and the
    /// exchange runs (alone, there is nobody to exchange with).
    pub(super) split: bool,
    /// Events read in batches keep their messages until released or their
    /// sequence is needed (see [`super::merge::Hold`]).
    pub(super) merger: Merger<Polled>,
    /// Events were handed to the engine since the last checkpoint.
    pub(super) dirty: bool,
    /// The periodic checkpoint being written on another thread; it yields
    /// the offsets it saved, committed once it is on disk.
    pub(super) pending: Option<std::thread::JoinHandle<Result<Offsets, KafkaError>>>,
    /// Merger slot by input index and partition, filled on first sight, so
    /// the per-message path compares no topic names in the merger.
    slots: Vec<Vec<Option<Option<usize>>>>,
    /// The input index of each merge slot (`None`: not an input), for
    /// messages of split partition queues, whose slot is known. Derived from
    /// the merger when the assignment is activated.
    slot_input: Vec<Option<usize>>,
}

/// What [`Active::start`] needs from the loop.
pub(super) struct Start<'a> {
    pub(super) cfg: &'a KafkaConfig,
    pub(super) factory: &'a dyn BrainFactory,
    pub(super) prices: &'a StreamConsumer<PriceCtx>,
    pub(super) inputs: &'a [Input],
    pub(super) stats: &'a Arc<Stats>,
    pub(super) decided: &'a mpsc::UnboundedSender<Decided>,
    /// Called on the decision thread with each batch's produce times.
    pub(super) on_applied: Option<AppliedHook>,
}

impl Active {
    /// Build the state for a new assignment: restore or start fresh, and
    /// point the broadcast consumer (prices, budget allocations) at the
    /// matching offsets.
    pub(super) fn start(
        s: &Start<'_>,
        assignment: Vec<Tp>,
        snapshot: Option<Snapshot>,
    ) -> Result<Active, KafkaError> {
        let spend_topic = &s.cfg.topics.budget_spend();
        let mut brain = s.factory.create(snapshot.as_ref().map(|s| &s.engine))?;
        // Budgets are split only while another instance owns part of the
        // group: alone, this one decides every project itself, as a file
        // replay does.
        let owned = assignment.iter().filter(|(t, _)| t == spend_topic).count();
        let total = partitions_of(s.prices.client(), spend_topic, Duration::from_secs(10))
            .map(|p| p.len())
            .unwrap_or(0);
        let split = owned < total;
        if let Some(b) = brain.budgets() {
            b.set_split(split);
        }
        let offsets = snapshot
            .as_ref()
            .map(|s| s.offsets.clone())
            .unwrap_or_default();
        if let Some(snap) = &snapshot {
            restore_counters(s.stats, snap);
        }
        let merger = assign_broadcast(s, &assignment, &offsets)?;
        // The merger numbers its partitions (slots) in its own order.
        let slot_input = merger
            .partitions()
            .map(|(_, (t, _))| s.inputs.iter().position(|i| i.topic == *t))
            .collect();
        let worker = Worker::spawn(
            brain,
            merger.partitions().map(|(_, tp)| tp.clone()).collect(),
            s.stats.clone(),
            s.on_applied.clone(),
            s.decided.clone(),
        )?;
        Ok(Active {
            assignment,
            worker,
            exchange: Exchange::default(),
            split,
            merger,
            dirty: false,
            pending: None,
            slots: Vec::new(),
            slot_input,
        })
    }

    /// The merge slot of an input's partition, by input index (looked up
    /// by name once per partition).
    pub(super) fn slot(&mut self, input: usize, topic: &str, partition: i32) -> Option<usize> {
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

    /// The input index of a merge slot, when it is an input's.
    pub(super) fn input_of(&self, slot: usize) -> Option<usize> {
        self.slot_input.get(slot).copied().flatten()
    }

    /// Hand the events the merge releases to the decision thread, in order.
    /// `caught`: whether a partition is read to its end (see
    /// [`Merger::pop`]).
    pub(super) fn drain(
        &mut self,
        merge_idle: Duration,
        caught: impl FnMut(&str, i32, Option<i64>) -> bool,
    ) -> Result<(), KafkaError> {
        self.release(merge_idle, caught);
        self.worker.flush()
    }

    /// [`Active::drain`] without sending: the events released wait in the
    /// worker's batch for the next [`Worker::flush`] (the loop sends once
    /// per wake-up, not once per pass over the partitions: each send may
    /// wake the decision thread, a futex call on both threads).
    pub(super) fn release(
        &mut self,
        merge_idle: Duration,
        caught: impl FnMut(&str, i32, Option<i64>) -> bool,
    ) {
        let now = Instant::now();
        let (worker, dirty) = (&mut self.worker, &mut self.dirty);
        self.merger.release(now, merge_idle, caught, |r| {
            worker.push(r.event, r.produced_at, (r.slot, r.offset));
            *dirty = true;
        });
    }
}

/// A restored snapshot's counters continue where they were.
fn restore_counters(stats: &Stats, snap: &Snapshot) {
    for (k, v) in &snap.counters {
        let c = match k.as_str() {
            "events" => &stats.events,
            "dead_letters" => &stats.dead_letters,
            "commands" => &stats.commands,
            _ => continue,
        };
        c.store(*v, Ordering::Relaxed);
    }
}

/// Assign every broadcast partition to the price consumer at the offsets
/// the state reflects, and build the merger over them and the assigned
/// input partitions.
fn assign_broadcast(
    s: &Start<'_>,
    assignment: &[Tp],
    offsets: &Offsets,
) -> Result<Merger<Polled>, KafkaError> {
    let spend_topic = &s.cfg.topics.budget_spend();
    let reread = s.cfg.reread_messages;
    let mut broadcast: Vec<Tp> = Vec::new();
    for t in &s.cfg.topics.broadcast() {
        for p in partitions_of(s.prices.client(), t, Duration::from_secs(10))? {
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
    s.prices.assign(&tpl)?;
    // Where each partition resumes; "from the beginning" is resolved to the
    // partition's low watermark, so the merger knows the first offset to
    // expect and can refuse a message left over from before the seek.
    let resume = |t: &str, p: i32| {
        start(t, p).or_else(|| {
            s.prices
                .fetch_watermarks(t, p, Duration::from_secs(5))
                .ok()
                .map(|(low, _)| low)
        })
    };
    // The internal budget-spend topic is not event-time input: it bypasses
    // the merge.
    let all: Vec<(Tp, Option<i64>)> = assignment
        .iter()
        .filter(|(t, _)| t != spend_topic)
        .chain(&broadcast)
        .map(|(t, p)| ((t.clone(), *p), resume(t, *p)))
        .collect();
    Ok(Merger::new(all).with_reread(reread))
}
