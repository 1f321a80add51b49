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
//!
//! Offsets may legitimately skip (transaction markers, compaction), so the
//! next message need not be exactly the next offset. But a message past the
//! next offset is only taken when the partition proved continuity since its
//! last seek (it delivered a message before the next offset first).
//! Otherwise it may be left over from before a seek, or the broker may have
//! answered a fetch from inside a record batch with the *following* batch
//! (tansu 0.6 does; Kafka returns the containing batch), and taking it would
//! lose the messages in between: the merger asks for the partition to be
//! read again from further back ([`Push::Rewind`]), doubling the distance
//! each time, and ignores what it has already read. The service starts a
//! restored partition [`REREAD`] messages early for the same reason, so a
//! rewind is rare.

use crate::events::avro::EventKind;
use crate::events::{Event, Millis};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A topic-partition.
pub type Tp = (String, i32);

/// What a buffered event may keep of its message until it is released,
/// for its producer sequence to be read only when the merge needs it.
///
/// The sequence (`prescale-seq` header) only breaks ties between partition
/// heads of equal event time, and reading it is librdkafka parsing every
/// header of the message into a list it allocates (about a fifth of the
/// loop thread on `prescale bench kafka`). An event pushed with
/// [`Merger::push_held`] keeps its message instead; the merge reads the
/// sequence when the event's time ties with another head's, and otherwise
/// never: the release order is the same as with every sequence read at
/// push (the tie-break is still the same total order).
pub trait Hold {
    /// The message's producer sequence, when it has one.
    fn seq(&self) -> Option<u64>;
}

/// Nothing held: every sequence is given at push ([`Merger::push`]).
#[derive(Debug)]
pub enum Unheld {}

impl Hold for Unheld {
    fn seq(&self) -> Option<u64> {
        match *self {}
    }
}

/// Messages before its resume point that a restored partition is read from
/// by default (librdkafka producers batch up to 10,000 messages by default).
/// A first rewind goes twice as far as this or the configured distance,
/// whichever is more (see [`Merger::with_reread`]).
pub const REREAD: u32 = 10_000;

/// How far a first rewind seeks back when partitions were read from
/// `reread` messages before their resume offsets: twice that or twice
/// [`REREAD`], whichever is more.
fn first_rewind(reread: u32) -> i64 {
    2 * i64::from(reread.max(REREAD))
}

/// The total order in which events are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
        EventKind::SpotSignal => 4,
    }
}

/// The sequence of a key whose message has none.
const NO_SEQ: u64 = u64::MAX;

impl OrderKey {
    pub fn new(ev: &Event, kind: EventKind, seq: Option<u64>, partition: i32, offset: i64) -> Self {
        OrderKey {
            time: ev.time(),
            seq: seq.unwrap_or(NO_SEQ),
            kind: kind_rank(kind),
            partition,
            offset,
        }
    }
}

#[derive(Debug)]
struct Entry<H> {
    offset: i64,
    /// `None`: a message that was dead-lettered; it only advances the offset.
    item: Option<(OrderKey, Event)>,
    /// The message, while the key's sequence is not read yet (see [`Hold`]).
    held: Option<H>,
    produced_at: Option<i64>,
    arrived: Instant,
}

#[derive(Debug)]
struct Part<H> {
    queue: VecDeque<Entry<H>>,
    /// Offset after the last message released (or skipped) — the resume point.
    released: Option<i64>,
    /// Offset after the last message received from the consumer.
    received: Option<i64>,
    /// Whether, since the partition was last sought (assigned or rewound),
    /// it delivered a message before `received`: then a later message past
    /// `received` is a true gap in the offsets.
    continuous: bool,
    /// How far before `received` the last rewind sought (0: none pending).
    back: i64,
}

impl<H> Part<H> {
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

/// The head of a partition's queue as [`Merger::pop`] compares it: kept
/// apart from the queues, side by side, so finding the smallest head reads
/// one short array instead of every partition's queue (a pop looked at a
/// dozen queues, two cache lines each, for every event released).
#[derive(Debug, Clone, Copy)]
struct Head {
    /// Its `seq` is not read yet while `held`.
    key: OrderKey,
    arrived: Instant,
    /// The entry still holds its message (see [`Hold`]).
    held: bool,
}

impl<H> Part<H> {
    /// The head of the queue, which [`Part::settle`] makes an event.
    fn head(&self) -> Option<Head> {
        match self.queue.front() {
            Some(Entry {
                item: Some((key, _)),
                held,
                arrived,
                ..
            }) => Some(Head {
                key: *key,
                arrived: *arrived,
                held: held.is_some(),
            }),
            Some(Entry { item: None, .. }) => {
                unreachable!("settled queues start with an event")
            }
            None => None,
        }
    }
}

/// What [`Merger::push`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Taken,
    /// Already read, or not an assigned slot.
    Ignored,
    /// Not taken: it lies past the next offset and the partition has not
    /// shown continuity since its last seek (see the module doc). Seek the
    /// partition to this offset; what was already read is ignored.
    Rewind(i64),
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
#[derive(Debug)]
pub struct Merger<H = Unheld> {
    parts: Vec<(Tp, Part<H>)>,
    /// Each part's [`Part::head`], by slot (`None`: nothing buffered).
    heads: Vec<Option<Head>>,
    /// [`Merger::release`]'s answers by slot, kept for its next call.
    asked: Vec<Option<bool>>,
    buffered: usize,
    /// How far before the next offset a first rewind seeks: further than a
    /// restored partition was read from.
    first_rewind: i64,
}

impl<H: Hold> Merger<H> {
    /// A merger over `assigned` partitions, each resuming at the given offset
    /// (`None`: from the beginning of the partition).
    pub fn new(assigned: impl IntoIterator<Item = (Tp, Option<i64>)>) -> Self {
        let parts: BTreeMap<Tp, Part<H>> = assigned
            .into_iter()
            .map(|(tp, start)| {
                (
                    tp,
                    Part {
                        queue: VecDeque::new(),
                        released: start,
                        received: start,
                        continuous: false,
                        back: 0,
                    },
                )
            })
            .collect();
        Merger {
            heads: vec![None; parts.len()],
            asked: Vec::new(),
            parts: parts.into_iter().collect(),
            buffered: 0,
            first_rewind: first_rewind(REREAD),
        }
    }

    /// The partitions were read from `reread` messages before their resume
    /// offsets (`KafkaConfig::reread_messages`): a rewind goes further.
    pub fn with_reread(mut self, reread: u32) -> Self {
        self.first_rewind = first_rewind(reread);
        self
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

    /// Messages buffered for the partition in `slot` (events and skipped
    /// messages behind them); 0 for a slot that does not exist.
    pub fn queued(&self, slot: usize) -> usize {
        self.parts.get(slot).map_or(0, |(_, p)| p.queue.len())
    }

    /// The assigned partitions with their slots.
    pub fn partitions(&self) -> impl Iterator<Item = (usize, &Tp)> {
        self.parts.iter().enumerate().map(|(i, (tp, _))| (i, tp))
    }

    /// Buffer a decoded event read at `offset` from the partition in `slot`.
    pub fn push(
        &mut self,
        slot: usize,
        offset: i64,
        key: OrderKey,
        event: Event,
        produced_at: Option<i64>,
        now: Instant,
    ) -> Push {
        self.push_entry(slot, offset, Some((key, event)), None, produced_at, now)
    }

    /// [`Merger::push`] with the key's sequence still in `held`, read only
    /// if the merge needs it (see [`Hold`]); `key.seq` is ignored, the
    /// offset is `key.offset`. `held` is dropped when the event is
    /// released, or at once when the message is not taken.
    pub fn push_held(
        &mut self,
        slot: usize,
        key: OrderKey,
        event: Event,
        held: H,
        produced_at: Option<i64>,
        now: Instant,
    ) -> Push {
        self.push_entry(
            slot,
            key.offset,
            Some((key, event)),
            Some(held),
            produced_at,
            now,
        )
    }

    /// Record a message that was dead-lettered: it is consumed in order but
    /// never reaches the engine.
    pub fn push_skipped(&mut self, slot: usize, offset: i64, now: Instant) -> Push {
        self.push_entry(slot, offset, None, None, None, now)
    }

    fn push_entry(
        &mut self,
        slot: usize,
        offset: i64,
        item: Option<(OrderKey, Event)>,
        held: Option<H>,
        produced_at: Option<i64>,
        arrived: Instant,
    ) -> Push {
        let first_rewind = self.first_rewind;
        let Some((_, p)) = self.parts.get_mut(slot) else {
            return Push::Ignored;
        };
        if let Some(r) = p.received {
            if offset < r {
                p.continuous = true;
                return Push::Ignored;
            }
            if offset > r && !p.continuous {
                p.back = (p.back * 2).max(first_rewind);
                return Push::Rewind(r.saturating_sub(p.back).max(0));
            }
        }
        p.continuous = true;
        p.back = 0;
        p.received = Some(offset + 1);
        if item.is_some() {
            self.buffered += 1;
        }
        let was_empty = p.queue.is_empty();
        // Only an event's message is held (for its sequence).
        debug_assert!(held.is_none() || item.is_some());
        p.queue.push_back(Entry {
            offset,
            item,
            held,
            produced_at,
            arrived,
        });
        p.settle();
        // Behind a head, the head stays.
        if was_empty {
            self.heads[slot] = p.head();
        }
        Push::Taken
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
        self.pop_by(now, idle, |_, (t, p), next| caught_up(t, *p, next))
    }

    /// [`Merger::pop`] until it releases nothing, each event to `out`,
    /// asking `caught_up` about a partition at most once: nothing is read
    /// meanwhile, so an empty partition's answer can only change through a
    /// fetch landing, which the next call sees. (Asked per pop, the
    /// partitions that stay empty, such as a topic nobody writes to, were
    /// asked again for every event released.)
    pub fn release(
        &mut self,
        now: Instant,
        idle: Duration,
        mut caught_up: impl FnMut(&str, i32, Option<i64>) -> bool,
        mut out: impl FnMut(Released),
    ) {
        let mut asked = std::mem::take(&mut self.asked);
        asked.clear();
        asked.resize(self.parts.len(), None);
        while let Some(r) = self.pop_by(now, idle, |slot, (t, p), next| {
            *asked[slot].get_or_insert_with(|| caught_up(t, *p, next))
        }) {
            out(r);
        }
        self.asked = asked;
    }

    /// [`Merger::pop`], with `caught_up` asked by slot too.
    fn pop_by(
        &mut self,
        now: Instant,
        idle: Duration,
        mut caught_up: impl FnMut(usize, &Tp, Option<i64>) -> bool,
    ) -> Option<Released> {
        // The smallest head first; the (costlier) caught-up questions only
        // when there is something to release.
        // (slot, its head's time)
        let mut best: Option<(usize, Millis)> = None;
        // Whether some partition has nothing buffered: only then are the
        // partitions looked at a second time (most pops of a busy merge
        // find a head everywhere).
        let mut some_empty = false;
        for i in 0..self.heads.len() {
            let Some(t) = self.heads[i].map(|h| h.key.time) else {
                some_empty = true;
                continue;
            };
            let better = match best {
                None => true,
                Some((_, time)) if t != time => t < time,
                // A tie in time: the sequences decide (read now if held).
                Some((b, _)) => {
                    self.read_seq(i);
                    self.read_seq(b);
                    self.key(i) < self.key(b)
                }
            };
            if better {
                best = Some((i, t));
            }
        }
        let (slot, _) = best?;
        let arrived = self.heads[slot]?.arrived;
        if some_empty {
            for (slot, h) in self.heads.iter().enumerate() {
                let (tp, p) = &self.parts[slot];
                if h.is_none() && !caught_up(slot, tp, p.received) {
                    return None;
                }
            }
        }
        if some_empty && now.saturating_duration_since(arrived) < idle {
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
        self.heads[slot] = p.head();
        self.buffered -= 1;
        Some(Released {
            slot,
            offset,
            event,
            produced_at,
        })
    }

    /// The key of the head in `slot` (`None`: nothing buffered).
    fn key(&self, slot: usize) -> Option<OrderKey> {
        self.heads[slot].map(|h| h.key)
    }

    /// Read the sequence of the head in `slot` from its held message, if
    /// it is not read yet; the message is then let go.
    fn read_seq(&mut self, slot: usize) {
        let Some(h) = self.heads[slot].as_mut().filter(|h| h.held) else {
            return;
        };
        let Some(e) = self.parts[slot].1.queue.front_mut() else {
            return;
        };
        let seq = e.held.take().and_then(|m| m.seq()).unwrap_or(NO_SEQ);
        if let Some((k, _)) = &mut e.item {
            k.seq = seq;
        }
        h.key.seq = seq;
        h.held = false;
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
        assert_eq!(m.push(slot, off, k, e, None, Instant::now()), Push::Taken);
    }

    fn id(r: &Released) -> String {
        match &r.event {
            Event::BudgetAllocation(b) => b.id.clone(),
            _ => unreachable!(),
        }
    }

    /// `release` gives what repeated `pop`s give, in the same order, and
    /// asks about each empty partition once.
    #[test]
    fn release_equals_repeated_pops_and_asks_each_partition_once() {
        let build = || {
            let mut m =
                Merger::<Unheld>::new([(tp("a", 0), None), (tp("a", 1), None), (tp("b", 0), None)]);
            for (p, off, time) in [(0, 0, 5), (0, 1, 9), (1, 0, 7), (1, 1, 8), (0, 2, 30)] {
                push(&mut m, "a", p, off, time, None);
            }
            m
        };
        let now = Instant::now();
        let mut popped = Vec::new();
        let mut m = build();
        // Partition a/1 is caught up once emptied; b/0 never had anything.
        while let Some(r) = m.pop(now, Duration::ZERO, |_, _, _| true) {
            popped.push(id(&r));
        }
        let mut released = Vec::new();
        let mut asked = Vec::new();
        let mut m = build();
        m.release(
            now,
            Duration::ZERO,
            |t, p, _| {
                asked.push(format!("{t}{p}"));
                true
            },
            |r| released.push(id(&r)),
        );
        assert_eq!(released, popped);
        assert_eq!(released, ["a0@0", "a1@0", "a1@1", "a0@1", "a0@2"]);
        asked.sort();
        assert_eq!(asked, ["a1", "b0"], "each empty partition asked once");
        // A partition still fetching holds the release back.
        let mut m = build();
        let mut n = 0;
        m.release(now, Duration::ZERO, |t, _, _| t != "b", |_| n += 1);
        assert_eq!(n, 0);
        assert_eq!(m.buffered(), 5);
    }

    /// A held message that counts how often its sequence is read.
    struct Counted(Option<u64>, std::rc::Rc<std::cell::Cell<usize>>);

    impl Hold for Counted {
        fn seq(&self) -> Option<u64> {
            self.1.set(self.1.get() + 1);
            self.0
        }
    }

    /// Events pushed with their sequences held release in exactly the
    /// order of the same events pushed with them read, and a sequence is
    /// read only for a head whose time ties with another head's.
    #[test]
    fn held_sequences_release_in_the_same_order_and_are_read_only_on_ties() {
        // (partition, time, seq): ties across partitions at 20 and 40, one
        // without a sequence; none within a partition matters.
        let input: [(i32, Millis, Option<u64>); 9] = [
            (0, 10, Some(1)),
            (0, 20, Some(5)),
            (0, 40, None),
            (1, 20, Some(4)),
            (1, 30, Some(6)),
            (1, 40, Some(9)),
            (2, 15, Some(2)),
            (2, 20, Some(3)),
            (2, 50, Some(10)),
        ];
        let tps = [(tp("a", 0), None), (tp("a", 1), None), (tp("a", 2), None)];
        let now = Instant::now();
        let mut eager: Merger = Merger::new(tps.clone());
        let mut lazy: Merger<Counted> = Merger::new(tps);
        let reads = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut next = [0i64; 3];
        for (p, time, seq) in input {
            let off = next[p as usize];
            next[p as usize] += 1;
            let e = ev(time, &format!("a{p}@{off}"));
            let k = OrderKey::new(&e, EventKind::BudgetAllocation, seq, p, off);
            assert_eq!(
                eager.push(p as usize, off, k, e.clone(), None, now),
                Push::Taken
            );
            let k = OrderKey::new(&e, EventKind::BudgetAllocation, None, p, off);
            let held = Counted(seq, reads.clone());
            assert_eq!(
                lazy.push_held(p as usize, k, e, held, None, now),
                Push::Taken
            );
        }
        let order = |m: &mut dyn FnMut() -> Option<Released>| {
            std::iter::from_fn(m).map(|r| id(&r)).collect::<Vec<_>>()
        };
        let want = order(&mut || eager.pop(now, Duration::ZERO, |_, _, _| true));
        let got = order(&mut || lazy.pop(now, Duration::ZERO, |_, _, _| true));
        assert_eq!(got, want);
        assert_eq!(
            want,
            ["a0@0", "a2@0", "a2@1", "a1@0", "a0@1", "a1@1", "a1@2", "a0@2", "a2@2"]
        );
        // The heads at 20 (three) and 40 (two) were read, once each.
        assert_eq!(reads.get(), 5);
    }

    #[test]
    fn waits_for_partitions_that_are_not_caught_up() {
        let mut m = Merger::<Unheld>::new([(tp("a", 0), None), (tp("a", 1), None)]);
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
        let mut m = Merger::<Unheld>::new([(tp("a", 0), None), (tp("a", 1), None)]);
        let t0 = Instant::now();
        let e = ev(10, "x");
        let k = OrderKey::new(&e, EventKind::BudgetAllocation, None, 0, 0);
        assert_eq!(m.push(0, 0, k, e, None, t0), Push::Taken);
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
            let mut m = Merger::<Unheld>::new([(tp("a", 0), None), (tp("b", 0), None)]);
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
        let mut m = Merger::<Unheld>::new([(tp("a", 0), Some(4))]);
        assert_eq!(m.push_skipped(0, 4, Instant::now()), Push::Taken);
        assert_eq!(m.offsets()["a"][&0], 5);
        push(&mut m, "a", 0, 5, 1, None);
        assert_eq!(m.push_skipped(0, 6, Instant::now()), Push::Taken);
        let e = ev(0, "dup");
        let k = OrderKey::new(&e, EventKind::BudgetAllocation, None, 0, 5);
        assert_eq!(
            m.push(0, 5, k, e, None, Instant::now()),
            Push::Ignored,
            "offset 5 was already read"
        );
        assert_eq!(m.slot("zz", 0), None, "unassigned");
        assert_eq!(
            m.push_skipped(7, 0, Instant::now()),
            Push::Ignored,
            "no such slot"
        );
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

    fn try_push(m: &mut Merger, off: i64) -> Push {
        let e = ev(off, &format!("a0@{off}"));
        let k = OrderKey::new(&e, EventKind::BudgetAllocation, None, 0, off);
        m.push(0, off, k, e, None, Instant::now())
    }

    fn offsets(m: &mut Merger) -> Vec<i64> {
        std::iter::from_fn(|| m.pop(Instant::now(), Duration::ZERO, |_, _, _| true))
            .map(|r| r.offset)
            .collect()
    }

    #[test]
    fn a_stray_message_past_the_resume_point_is_not_taken() {
        // Resuming at 10: a message at 12 still in hand from before the seek
        // must not make 10 and 11 look like duplicates when they come.
        let mut m = Merger::<Unheld>::new([(tp("a", 0), Some(10))]);
        assert_eq!(try_push(&mut m, 12), Push::Rewind(0), "stray taken");
        push(&mut m, "a", 0, 10, 1, None);
        push(&mut m, "a", 0, 11, 2, None);
        push(&mut m, "a", 0, 12, 3, None);
        assert_eq!(offsets(&mut m), vec![10, 11, 12]);
    }

    #[test]
    fn a_broker_skipping_to_the_next_batch_is_read_again_from_further_back() {
        // tansu 0.6 answers a fetch inside a batch (here of 50,000) with
        // the next batch. Resuming at 175,000, read from 165,000 (REREAD
        // before): the broker answers from 200,000. The merger rewinds 2×,
        // 4×, ... REREAD until the broker answers from before 175,000, and
        // ignores what precedes it.
        let mut m = Merger::<Unheld>::new([(tp("a", 0), Some(175_000))]);
        let mut at = 175_000 - i64::from(REREAD);
        let mut seeks = Vec::new();
        loop {
            let first = (at / 50_000 + i64::from(at % 50_000 != 0)) * 50_000;
            match try_push(&mut m, first) {
                Push::Rewind(to) => {
                    seeks.push(to);
                    at = to;
                }
                Push::Ignored => break,
                Push::Taken => panic!("took {first} while expecting 1500"),
            }
        }
        assert_eq!(seeks, vec![155_000, 135_000]);
        for off in 150_001..175_000 {
            assert_eq!(try_push(&mut m, off), Push::Ignored);
        }
        for off in 175_000..175_003 {
            assert_eq!(try_push(&mut m, off), Push::Taken);
        }
        assert_eq!(offsets(&mut m), vec![175_000, 175_001, 175_002]);
    }

    #[test]
    fn a_rewind_goes_further_than_the_configured_reread() {
        let mut m = Merger::<Unheld>::new([(tp("a", 0), Some(200_000))]).with_reread(50_000);
        assert_eq!(try_push(&mut m, 250_000), Push::Rewind(100_000));
        let mut m = Merger::<Unheld>::new([(tp("a", 0), Some(200_000))]).with_reread(0);
        assert_eq!(try_push(&mut m, 250_000), Push::Rewind(180_000));
    }

    #[test]
    fn a_gap_after_continuity_is_taken() {
        // Offsets 5 then 7 (6 is a transaction marker, say): a true gap,
        // as is one right after a message before the resume point.
        let mut m = Merger::<Unheld>::new([(tp("a", 0), Some(5))]);
        assert_eq!(try_push(&mut m, 5), Push::Taken);
        assert_eq!(try_push(&mut m, 7), Push::Taken);
        let mut m = Merger::<Unheld>::new([(tp("a", 0), Some(5))]);
        assert_eq!(try_push(&mut m, 4), Push::Ignored);
        assert_eq!(try_push(&mut m, 6), Push::Taken);
        assert_eq!(offsets(&mut m), vec![6]);
    }
}
