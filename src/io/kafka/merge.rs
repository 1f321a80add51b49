//! Deterministic event-time merge of many input partitions.
//!
//! Kafka orders messages only within a partition; the order in which a
//! consumer sees different partitions and topics depends on fetch timing. The
//! engine's output depends on the order of its inputs, so to make a replay
//! through Kafka give exactly the commands of a file replay, the service
//! buffers each partition and releases the event with the smallest
//! `(event time, producer sequence, kind, partition, offset)` — but only once
//! every partition either has a buffered head or is caught up with the broker
//! (nothing more to read). A partition still fetching therefore holds the
//! merge back; an idle partition does not — after a grace period
//! (`idle`, wall-clock, like Kafka Streams' `max.task.idle.ms`): "caught up"
//! is only as fresh as the last fetch, so with live producers an event of
//! another partition may be in flight. Topics replayed after they were
//! written merge identically whatever the grace; live input merges
//! identically when the grace exceeds the producers' skew across partitions.
//!
//! The merger also tracks, per partition, the offset *after the last event
//! released to the engine*. That, not the consumer position, is what a
//! checkpoint stores: buffered-but-unreleased messages are re-read after a
//! restart.

use crate::events::avro::EventKind;
use crate::events::{Event, Millis};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A topic-partition.
pub type Tp = (String, i32);

/// The total order in which events are released.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey {
    pub time: Millis,
    /// Producer sequence (`prescale-seq` header); `u64::MAX` when absent so
    /// sequenced replays and unsequenced live input still order totally.
    pub seq: u64,
    pub kind: u8,
    pub partition: i32,
    pub offset: i64,
}

fn kind_rank(k: EventKind) -> u8 {
    match k {
        EventKind::PriceTick => 0,
        EventKind::BudgetAllocation => 1,
        EventKind::JobSubmitted => 2,
        EventKind::JobCompleted => 3,
    }
}

impl OrderKey {
    pub fn new(ev: &Event, kind: EventKind, seq: Option<u64>, partition: i32, offset: i64) -> Self {
        OrderKey {
            time: ev.time(),
            seq: seq.unwrap_or(u64::MAX),
            kind: kind_rank(kind),
            partition,
            offset,
        }
    }
}

#[derive(Debug)]
struct Entry {
    offset: i64,
    /// `None`: a message that was dead-lettered; it only advances the offset.
    item: Option<(OrderKey, Event)>,
    produced_at: Option<i64>,
    arrived: Instant,
}

#[derive(Debug, Default)]
struct Part {
    queue: VecDeque<Entry>,
    /// Offset after the last message released (or skipped) — the resume point.
    released: Option<i64>,
    /// Offset after the last message received from the consumer.
    received: Option<i64>,
    /// Nothing received yet since the partition was (re)assigned at a known
    /// offset: the first message must be exactly that offset.
    awaiting_start: bool,
}

impl Part {
    fn settle(&mut self) {
        while let Some(Entry {
            item: None, offset, ..
        }) = self.queue.front()
        {
            self.released = Some(offset + 1);
            self.queue.pop_front();
        }
    }
}

/// One released event.
#[derive(Debug)]
pub struct Released {
    /// The partition's slot (see [`Merger::slot`]).
    pub slot: usize,
    pub offset: i64,
    pub event: Event,
    /// The message's produce timestamp, when it had one.
    pub produced_at: Option<i64>,
}

/// The merge buffer over a set of assigned partitions.
///
/// Partitions live in a small vector sorted by topic-partition and are
/// addressed by slot, so the per-message path allocates nothing (a consumer
/// owns a dozen partitions or so; a linear scan beats hashing there).
#[derive(Debug, Default)]
pub struct Merger {
    parts: Vec<(Tp, Part)>,
    buffered: usize,
}

impl Merger {
    /// A merger over `assigned` partitions, each resuming at the given offset
    /// (`None`: from the beginning of the partition).
    pub fn new(assigned: impl IntoIterator<Item = (Tp, Option<i64>)>) -> Self {
        let parts: BTreeMap<Tp, Part> = assigned
            .into_iter()
            .map(|(tp, start)| {
                (
                    tp,
                    Part {
                        queue: VecDeque::new(),
                        released: start,
                        received: start,
                        awaiting_start: start.is_some(),
                    },
                )
            })
            .collect();
        Merger {
            parts: parts.into_iter().collect(),
            buffered: 0,
        }
    }

    /// The slot of an assigned partition (`None`: not assigned).
    pub fn slot(&self, topic: &str, partition: i32) -> Option<usize> {
        self.parts
            .iter()
            .position(|((t, p), _)| *p == partition && t == topic)
    }

    pub fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.slot(topic, partition).is_some()
    }

    /// Messages buffered (decoded, not yet released).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Buffer a decoded event read at `offset` from the partition in `slot`.
    /// Returns false (and ignores it) when the slot does not exist or the
    /// offset was already seen.
    pub fn push(
        &mut self,
        slot: usize,
        offset: i64,
        key: OrderKey,
        event: Event,
        produced_at: Option<i64>,
        now: Instant,
    ) -> bool {
        self.push_entry(slot, offset, Some((key, event)), produced_at, now)
    }

    /// Record a message that was dead-lettered: it is consumed in order but
    /// never reaches the engine.
    pub fn push_skipped(&mut self, slot: usize, offset: i64, now: Instant) -> bool {
        self.push_entry(slot, offset, None, None, now)
    }

    fn push_entry(
        &mut self,
        slot: usize,
        offset: i64,
        item: Option<(OrderKey, Event)>,
        produced_at: Option<i64>,
        arrived: Instant,
    ) -> bool {
        let Some((_, p)) = self.parts.get_mut(slot) else {
            return false;
        };
        if p.received.is_some_and(|r| offset < r) {
            return false;
        }
        // A message fetched before the partition was (re)assigned can still
        // be in hand after the seek; taking it would skip everything between
        // the resume point and it (they would later look like duplicates).
        // The consumer was seeked to the resume point, so the skipped
        // messages come again, in order.
        if p.awaiting_start && p.received != Some(offset) {
            return false;
        }
        p.awaiting_start = false;
        p.received = Some(offset + 1);
        if item.is_some() {
            self.buffered += 1;
        }
        p.queue.push_back(Entry {
            offset,
            item,
            produced_at,
            arrived,
        });
        p.settle();
        true
    }

    /// Release the next event in merge order, if every partition allows it.
    /// `caught_up(topic, partition, next_offset)` answers whether a partition
    /// with nothing buffered has nothing more to read from the broker
    /// (`next_offset` is `None` before anything was read); while any
    /// partition is empty, the head must also have waited `idle`.
    pub fn pop(
        &mut self,
        now: Instant,
        idle: Duration,
        mut caught_up: impl FnMut(&str, i32, Option<i64>) -> bool,
    ) -> Option<Released> {
        // The smallest head first; the (costlier) caught-up questions only
        // when there is something to release.
        let mut best: Option<(usize, &OrderKey, Instant)> = None;
        for (i, (_, p)) in self.parts.iter().enumerate() {
            match p.queue.front() {
                Some(Entry {
                    item: Some((k, _)),
                    arrived,
                    ..
                }) if best.is_none_or(|(_, b, _)| k < b) => {
                    best = Some((i, k, *arrived));
                }
                Some(Entry { item: None, .. }) => {
                    unreachable!("settled queues start with an event")
                }
                _ => {}
            }
        }
        let (slot, _, arrived) = best?;
        let mut any_empty = false;
        for (tp, p) in &self.parts {
            if p.queue.is_empty() {
                if !caught_up(&tp.0, tp.1, p.received) {
                    return None;
                }
                any_empty = true;
            }
        }
        if any_empty && now.saturating_duration_since(arrived) < idle {
            return None;
        }
        let p = &mut self.parts[slot].1;
        let Entry {
            offset,
            item,
            produced_at,
            ..
        } = p.queue.pop_front().expect("chosen head exists");
        let (_, event) = item.expect("chosen head is an event");
        p.released = Some(offset + 1);
        p.settle();
        self.buffered -= 1;
        Some(Released {
            slot,
            offset,
            event,
            produced_at,
        })
    }

    /// True when nothing is buffered and every partition is caught up.
    pub fn drained(&self, mut caught_up: impl FnMut(&str, i32, Option<i64>) -> bool) -> bool {
        self.parts
            .iter()
            .all(|(tp, p)| p.queue.is_empty() && caught_up(&tp.0, tp.1, p.received))
    }

    /// Resume offsets: for each partition, the offset after the last event
    /// the engine has seen (absent: nothing read yet, start from the
    /// beginning).
    pub fn offsets(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for ((t, p), part) in &self.parts {
            if let Some(o) = part.released {
                out.entry(t.clone()).or_default().insert(*p, o);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;

    fn ev(t: Millis, id: &str) -> Event {
        Event::BudgetAllocation(BudgetAllocation {
            at: t,
            scope: BudgetScope::Project,
            id: id.into(),
            usd: 1.0,
            period: None,
        })
    }

    fn tp(t: &str, p: i32) -> Tp {
        (t.to_string(), p)
    }

    fn push(m: &mut Merger, t: &str, p: i32, off: i64, time: Millis, seq: Option<u64>) {
        let e = ev(time, &format!("{t}{p}@{off}"));
        let k = OrderKey::new(&e, EventKind::BudgetAllocation, seq, p, off);
        let slot = m.slot(t, p).unwrap();
        assert!(m.push(slot, off, k, e, None, Instant::now()));
    }

    fn id(r: &Released) -> String {
        match &r.event {
            Event::BudgetAllocation(b) => b.id.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn waits_for_partitions_that_are_not_caught_up() {
        let mut m = Merger::new([(tp("a", 0), None), (tp("a", 1), None)]);
        push(&mut m, "a", 0, 0, 10, None);
        // Partition 1 has nothing yet and is still fetching: hold.
        assert!(m
            .pop(Instant::now(), Duration::ZERO, |_, _, _| false)
            .is_none());
        // Once it is known to be idle, release.
        let r = m
            .pop(Instant::now(), Duration::ZERO, |_, _, _| true)
            .unwrap();
        assert_eq!(id(&r), "a0@0");
        assert_eq!(m.offsets()["a"][&0], 1);
        assert!(!m.offsets()["a"].contains_key(&1));
    }

    #[test]
    fn idle_partitions_hold_the_merge_for_the_grace_period() {
        let mut m = Merger::new([(tp("a", 0), None), (tp("a", 1), None)]);
        let t0 = Instant::now();
        let e = ev(10, "x");
        let k = OrderKey::new(&e, EventKind::BudgetAllocation, None, 0, 0);
        assert!(m.push(0, 0, k, e, None, t0));
        let grace = Duration::from_millis(50);
        assert!(m
            .pop(t0 + Duration::from_millis(10), grace, |_, _, _| true)
            .is_none());
        assert!(m.pop(t0 + grace, grace, |_, _, _| true).is_some());
    }

    #[test]
    fn releases_in_event_time_then_sequence_order_whatever_the_arrival_order() {
        let arrivals_a = [
            ("a", 0, 0, 5, Some(3)),
            ("b", 0, 0, 5, Some(1)),
            ("a", 0, 1, 7, Some(4)),
            ("b", 0, 1, 6, Some(2)),
        ];
        let mut arrivals_b = arrivals_a;
        arrivals_b.reverse();
        let mut results = Vec::new();
        for arrivals in [arrivals_a, arrivals_b] {
            let mut m = Merger::new([(tp("a", 0), None), (tp("b", 0), None)]);
            // Arrival order within a partition is kept (offsets ascend).
            let mut sorted = arrivals.to_vec();
            sorted.sort_by_key(|x| (x.0, x.2));
            for (t, p, off, time, seq) in sorted {
                push(&mut m, t, p, off, time, seq);
            }
            let mut out = Vec::new();
            while let Some(r) = m.pop(Instant::now(), Duration::ZERO, |_, _, _| true) {
                out.push(id(&r));
            }
            results.push(out);
        }
        assert_eq!(results[0], vec!["b0@0", "a0@0", "b0@1", "a0@1"]);
        assert_eq!(results[0], results[1]);
    }

    #[test]
    fn skipped_messages_advance_offsets_and_duplicates_are_ignored() {
        let mut m = Merger::new([(tp("a", 0), Some(4))]);
        assert!(m.push_skipped(0, 4, Instant::now()));
        assert_eq!(m.offsets()["a"][&0], 5);
        push(&mut m, "a", 0, 5, 1, None);
        assert!(m.push_skipped(0, 6, Instant::now()));
        let e = ev(0, "dup");
        let k = OrderKey::new(&e, EventKind::BudgetAllocation, None, 0, 5);
        assert!(
            !m.push(0, 5, k, e, None, Instant::now()),
            "offset 5 was already read"
        );
        assert_eq!(m.slot("zz", 0), None, "unassigned");
        assert!(!m.push_skipped(7, 0, Instant::now()), "no such slot");
        assert_eq!(m.buffered(), 1);
        let r = m
            .pop(Instant::now(), Duration::ZERO, |_, _, _| true)
            .unwrap();
        assert_eq!(r.offset, 5);
        // The skipped message behind it is settled too.
        assert_eq!(m.offsets()["a"][&0], 7);
        assert!(m.drained(|_, _, _| true));
        assert!(!m.drained(|_, _, _| false));
    }

    #[test]
    fn a_stray_message_past_the_resume_point_is_not_taken() {
        // Resuming at 10: a message at 12 still in hand from before the seek
        // must not make 10 and 11 look like duplicates when they come.
        let mut m = Merger::new([(tp("a", 0), Some(10))]);
        let e = ev(0, "stray");
        let k = OrderKey::new(&e, EventKind::BudgetAllocation, None, 0, 12);
        assert!(!m.push(0, 12, k, e, None, Instant::now()), "stray taken");
        push(&mut m, "a", 0, 10, 1, None);
        push(&mut m, "a", 0, 11, 2, None);
        push(&mut m, "a", 0, 12, 3, None);
        let got: Vec<i64> =
            std::iter::from_fn(|| m.pop(Instant::now(), Duration::ZERO, |_, _, _| true))
                .map(|r| r.offset)
                .collect();
        assert_eq!(got, vec![10, 11, 12]);
    }
}
