//! The pipelined read path (`decode_threads` ≥ 1): reader threads take
//! the split partition queues' messages in batches, decode them and read
//! their `prescale-seq` header, and hand the decoded events to the loop,
//! whose thread then only merges, hands over to the decision thread and
//! publishes.
//!
//! Why: on `prescale bench kafka` decoding was a fifth to a third of the
//! loop thread, librdkafka's batch serve about a seventh and destroying
//! messages about an eighth, and on many cores the loop thread is the
//! bound of the whole path. On two cores the CPU per message over all
//! threads is the figure, and a hand-over between threads only adds to it,
//! hence the default: off on two cores or fewer (see
//! `KafkaConfig::decode_threads`).
//!
//! What keeps it exact:
//!
//! - **Order.** A partition is read by one reader, in order, and its
//!   batches travel one FIFO channel ([`Pipe`]) to the loop, which pushes
//!   them into the merge as the inline path does. Events of different
//!   partitions are ordered by the merge, which waits for a partition that
//!   is not caught up (its next offset behind librdkafka's high watermark),
//!   whether its messages are still in librdkafka, on a reader or in a
//!   channel.
//! - **Flow control.** Each partition's channel holds at most [`DEPTH`]
//!   batches of at most [`AHEAD`] messages, and a reader takes messages off
//!   a partition queue only while that channel has room; the loop takes
//!   from a channel only while the merge holds fewer than [`AHEAD`] of the
//!   partition's messages. A partition that runs ahead therefore waits in
//!   librdkafka's queue (bounded by its prefetch limit), not in memory.
//! - **The split rule.** A split partition's queue is read only once the
//!   consumer's own queue was seen empty since the split: the loop opens a
//!   [`Gate`] per consumer when it sees that ([`Pipeline::sync_gates`]);
//!   readers read nothing before.
//! - **Rebalances.** librdkafka's `assign` forwards every assigned
//!   partition's queue to the consumer's own queue again, and reading a
//!   forwarded queue reads its destination: a reader still reading after
//!   an assign would take messages of the consumer's own queue (budget
//!   spend, partitions not split yet). The group consumer's rebalance
//!   callbacks therefore pass its [`Fence`] first, which waits for a read in
//!   progress and stops every reader of an earlier assignment from reading
//!   again; the loop then drops the [`Pipeline`] (stopping and joining its
//!   threads, dropping what the channels hold) with the assignment, before
//!   it splits the new one, as it drops the inline path's queues. Nothing
//!   read for a revoked partition reaches the new merge.
//! - **Rewinds.** When the merge asks for a partition to be read again from
//!   further back, the loop bumps the partition's epoch, then seeks. A
//!   reader tags each batch with the epoch it loads *after* taking the
//!   messages, so a batch taken after the seek is never mistaken for a
//!   stale one (librdkafka drops outdated messages from its queue, not from
//!   batches already taken); the loop drops batches of an older epoch,
//!   which predate the seek.
//! - **Dead letters.** A message that does not decode travels as a copy
//!   ([`Dead`]: topic, partition, offset, key, value) with its error, and
//!   the loop dead-letters it exactly as the inline path does, once.
//!
//! librdkafka messages do not cross threads: a reader reads what the merge
//! needs (event, offset, produce time, sequence) and destroys the message
//! itself. The merge's lazy sequence read (only on ties, see
//! [`super::merge::Hold`]) is the inline path's saving on the loop thread;
//! here the header is parsed on the reader, off the loop, and the loop no
//! longer destroys messages.

use super::codec::decode_input;
use super::merge::OrderKey;
use super::split::{MessageView, Reader, AHEAD};
use super::KafkaConfig;
use crate::events::avro::EventKind;
use crate::events::Event;
use rdkafka::bindings as rd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc, RwLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Batches a partition's channel holds: one the loop is taking while the
/// reader fills the next.
pub const DEPTH: usize = 2;

/// How long an idle reader sleeps at most between looks at its queues.
/// Wake-ups come from librdkafka (a queue became non-empty), from the loop
/// (room in a channel, a gate opened) and from stop; this only bounds the
/// cost of a wake-up missed.
const IDLE: Duration = Duration::from_millis(50);

/// One message as a reader hands it to the loop.
#[derive(Debug)]
pub enum Item {
    /// Decoded, with its key (sequence read) and produce time.
    Event {
        key: OrderKey,
        event: Event,
        produced: Option<i64>,
    },
    /// Did not decode: a copy of the message for the dead-letter topic.
    Bad { dead: Dead, error: String },
}

impl Item {
    /// The message's offset in its partition.
    pub fn offset(&self) -> i64 {
        match self {
            Item::Event { key, .. } => key.offset,
            Item::Bad { dead, .. } => dead.offset,
        }
    }
}

/// An owned copy of a message that failed to decode: what the dead-letter
/// topic needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl MessageView for Dead {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
    fn timestamp_ms(&self) -> Option<i64> {
        None
    }
    fn header(&self, _: &std::ffi::CStr) -> Option<&[u8]> {
        None
    }
}

/// Decode one message of an input of `kind`, reading its sequence: what
/// the inline path does on the loop thread, here on a reader.
pub fn decode(cfg: &KafkaConfig, kind: EventKind, m: &dyn MessageView) -> Item {
    let (partition, offset) = (m.partition(), m.offset());
    match decode_input(cfg, kind, m.payload().unwrap_or(&[])) {
        Ok(event) => Item::Event {
            key: OrderKey::new(&event, kind, m.producer_seq(), partition, offset),
            produced: m.timestamp_ms(),
            event,
        },
        Err(e) => Item::Bad {
            dead: Dead {
                topic: m.topic().to_string(),
                partition,
                offset,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            },
            error: e.to_string(),
        },
    }
}

/// Messages of one partition read in one batch, with the partition's epoch
/// when they were taken (see the module doc, "Rewinds").
#[derive(Debug)]
pub struct Decoded {
    pub epoch: u64,
    pub items: Vec<Item>,
}

/// Shared by a consumer's rebalance callbacks and the readers of its
/// partitions: [`Fence::pass`] returns once no reader is inside a read, and
/// no reader of an earlier generation reads again.
#[derive(Debug, Default)]
pub struct Fence(RwLock<u64>);

impl Fence {
    /// The current generation (readers started now read under it).
    pub fn generation(&self) -> u64 {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Close the current generation: call before `assign`/`unassign`.
    pub fn pass(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    /// Run `read` if `generation` is still current, holding the fence
    /// against [`Fence::pass`] meanwhile.
    fn within<R>(&self, generation: u64, read: impl FnOnce() -> R) -> Option<R> {
        let g = self.0.read().unwrap_or_else(|e| e.into_inner());
        (*g == generation).then(read)
    }
}

/// What a reader must see before it reads a consumer's split queues: the
/// consumer's own queue seen empty since the split (`open`, set by the
/// loop), and no assign since the readers started (`fence`).
#[derive(Debug)]
pub struct Gate {
    open: AtomicBool,
    fence: Arc<Fence>,
    generation: u64,
}

impl Gate {
    /// A closed gate under `fence`'s current generation.
    pub fn new(fence: Arc<Fence>) -> Arc<Self> {
        Arc::new(Gate {
            open: AtomicBool::new(false),
            generation: fence.generation(),
            fence,
        })
    }

    fn read<R>(&self, read: impl FnOnce() -> R) -> Option<R> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        self.fence.within(self.generation, read)
    }
}

/// One partition as the pipeline is given it: its merge slot, input kind,
/// batch reader and the gate of its consumer.
pub struct Source {
    pub slot: usize,
    pub kind: EventKind,
    pub reader: Arc<Reader>,
    pub gate: Arc<Gate>,
}

/// One partition on a reader thread.
struct Feed {
    kind: EventKind,
    reader: Arc<Reader>,
    gate: Arc<Gate>,
    tx: mpsc::Sender<Decoded>,
    epoch: Arc<AtomicU64>,
    /// Emptied batch vectors handed back by the loop.
    spare: sync_mpsc::Receiver<Vec<Item>>,
}

/// One partition on the loop's side.
pub struct Pipe {
    pub slot: usize,
    rx: mpsc::Receiver<Decoded>,
    /// The epoch batches must carry to be taken (the loop's copy).
    epoch: u64,
    shared: Arc<AtomicU64>,
    spare: sync_mpsc::Sender<Vec<Item>>,
    /// Index of its reader thread.
    reader: usize,
}

impl Pipe {
    /// The next batch that does not predate a seek, without waiting.
    pub fn next(&mut self) -> Option<Decoded> {
        loop {
            let d = self.rx.try_recv().ok()?;
            if d.epoch == self.epoch {
                return Some(d);
            }
            self.recycle(d.items);
        }
    }

    /// Hand an emptied batch vector back to the reader.
    pub fn recycle(&self, mut items: Vec<Item>) {
        items.clear();
        let _ = self.spare.send(items);
    }

    /// The partition is about to be sought back (a rewind): what was read
    /// before is stale. Call before the seek.
    pub fn rewound(&mut self) {
        self.epoch = self.shared.fetch_add(1, Ordering::AcqRel) + 1;
    }

    fn has_batch(&self) -> bool {
        !self.rx.is_empty()
    }
}

/// The reader threads of one assignment and the loop's ends of their
/// channels. Dropping it stops and joins the threads.
pub struct Pipeline {
    pub pipes: Vec<Pipe>,
    threads: Vec<(Thread, Option<JoinHandle<()>>)>,
    stop: Arc<AtomicBool>,
    /// Notified by a reader after it sent something.
    ready: Arc<Notify>,
    /// Readers to wake after the loop took from their pipes.
    to_wake: Vec<bool>,
}

impl Pipeline {
    /// Start `threads` readers (at most one per source) over `sources`,
    /// dealt out in turn.
    pub fn start(
        cfg: &KafkaConfig,
        threads: usize,
        sources: Vec<Source>,
    ) -> Result<Self, std::io::Error> {
        let n = threads.min(sources.len());
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Notify::new());
        let mut feeds: Vec<Vec<Feed>> = (0..n).map(|_| Vec::new()).collect();
        let mut pipes = Vec::with_capacity(sources.len());
        for (i, s) in sources.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(DEPTH);
            let (spare_tx, spare_rx) = sync_mpsc::channel();
            let epoch = Arc::new(AtomicU64::new(0));
            feeds[i % n].push(Feed {
                kind: s.kind,
                reader: s.reader,
                gate: s.gate,
                tx,
                epoch: epoch.clone(),
                spare: spare_rx,
            });
            pipes.push(Pipe {
                slot: s.slot,
                rx,
                epoch: 0,
                shared: epoch,
                spare: spare_tx,
                reader: i % n,
            });
        }
        let mut p = Pipeline {
            pipes,
            threads: Vec::with_capacity(n),
            stop,
            ready,
            to_wake: vec![false; n],
        };
        for (i, feeds) in feeds.into_iter().enumerate() {
            let cfg = cfg.clone();
            let (stop, ready) = (p.stop.clone(), p.ready.clone());
            // Named so `bench kafka` reports their CPU apart.
            let h = std::thread::Builder::new()
                .name(format!("prescale-read-{i}"))
                .spawn(move || read_loop(&cfg, feeds, &stop, &ready))?;
            p.threads.push((h.thread().clone(), Some(h)));
        }
        Ok(p)
    }

    /// Notified when a reader sent a batch (a permit is kept when the loop
    /// is not waiting).
    pub fn ready(&self) -> Arc<Notify> {
        self.ready.clone()
    }

    /// Whether a pipe the merge has room for (`room(slot)`) holds a batch.
    pub fn has_ready(&self, mut room: impl FnMut(usize) -> bool) -> bool {
        self.pipes.iter().any(|p| room(p.slot) && p.has_batch())
    }

    /// The loop took from pipe `i`: its reader is woken at
    /// [`Pipeline::wake_readers`] (it may have waited for room).
    pub fn took(&mut self, i: usize) {
        self.to_wake[self.pipes[i].reader] = true;
    }

    /// Wake the readers whose pipes the loop took from since the last call.
    pub fn wake_readers(&mut self) {
        for (i, w) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                self.threads[i].0.unpark();
            }
        }
    }

    /// Open `gate` (its consumer's own queue was seen empty since the
    /// split) and wake every reader, if it was closed.
    pub fn open(&self, gate: &Gate) {
        if !gate.open.swap(true, Ordering::AcqRel) {
            for (t, _) in &self.threads {
                t.unpark();
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for (t, _) in &self.threads {
            t.unpark();
        }
        for (_, h) in &mut self.threads {
            if let Some(h) = h.take() {
                if h.join().is_err() {
                    tracing::error!("a reader thread panicked");
                }
            }
        }
    }
}

/// librdkafka's wake-up callback of a reader's queues: unpark the reader.
///
/// SAFETY (for the caller registering it): `opaque` is a `Thread` that
/// outlives the registration; librdkafka calls this with the queue's lock
/// held, and un-registering takes that lock, so no call runs after it.
unsafe extern "C" fn wake(_: *mut rd::rd_kafka_t, opaque: *mut std::ffi::c_void) {
    // SAFETY: see above.
    unsafe { (*(opaque as *const Thread)).unpark() }
}

/// A reader thread: read every partition whose channel has room and whose
/// gate is open, decode, send; park when nothing was read.
fn read_loop(cfg: &KafkaConfig, mut feeds: Vec<Feed>, stop: &AtomicBool, ready: &Notify) {
    let me = Box::new(std::thread::current());
    let opaque = (&*me as *const Thread)
        .cast_mut()
        .cast::<std::ffi::c_void>();
    for f in &feeds {
        // SAFETY: `me` outlives the registration, removed below before it
        // is dropped. This replaces the split queue's stream callback,
        // which the loop does not wait on while the pipeline runs.
        unsafe { f.reader.on_nonempty(Some(wake), opaque) };
    }
    while !stop.load(Ordering::Acquire) {
        let mut sent = false;
        for f in &mut feeds {
            match pass(cfg, f) {
                Some(true) => sent = true,
                Some(false) => {}
                // The loop dropped its end: the pipeline is going.
                None => return unregister(&feeds, me),
            }
        }
        if sent {
            ready.notify_one();
        } else {
            std::thread::park_timeout(IDLE);
        }
    }
    unregister(&feeds, me);
}

fn unregister(feeds: &[Feed], me: Box<Thread>) {
    for f in feeds {
        // SAFETY: removing the callback; librdkafka takes the queue's lock.
        unsafe { f.reader.on_nonempty(None, std::ptr::null_mut()) };
    }
    drop(me);
}

/// Read, decode and send one batch of `f`'s partition if its channel has
/// room and its gate is open. `Some(sent)`, or `None` when the loop's end
/// is gone.
fn pass(cfg: &KafkaConfig, f: &mut Feed) -> Option<bool> {
    if f.tx.is_closed() {
        return None;
    }
    // The only sender: room now is room at the send.
    if f.tx.capacity() == 0 {
        return Some(false);
    }
    let Some(batch) = f.gate.read(|| f.reader.read(AHEAD)) else {
        return Some(false);
    };
    // Loaded after the messages were taken (see the module doc).
    let epoch = f.epoch.load(Ordering::Acquire);
    let mut items = f.spare.try_recv().unwrap_or_default();
    for m in batch {
        match m.result() {
            Ok(v) => items.push(decode(cfg, f.kind, v)),
            Err(e) if super::rebalance::is_partition_eof(&e) => {}
            Err(e) => tracing::warn!(error = %e, "consumer error"),
        }
    }
    if items.is_empty() {
        return Some(false);
    }
    Some(f.tx.try_send(Decoded { epoch, items }).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::avro::encode_event;
    use crate::events::{BudgetAllocation, BudgetScope};

    struct Msg {
        payload: Vec<u8>,
        seq: Option<&'static [u8]>,
    }

    impl MessageView for Msg {
        fn topic(&self) -> &str {
            "budgets"
        }
        fn partition(&self) -> i32 {
            2
        }
        fn offset(&self) -> i64 {
            41
        }
        fn key(&self) -> Option<&[u8]> {
            Some(b"k")
        }
        fn payload(&self) -> Option<&[u8]> {
            Some(&self.payload)
        }
        fn timestamp_ms(&self) -> Option<i64> {
            Some(7)
        }
        fn header(&self, name: &std::ffi::CStr) -> Option<&[u8]> {
            (name == super::super::codec::headers::SEQ_C)
                .then_some(self.seq)
                .flatten()
        }
    }

    /// A reader's decode gives the inline path's key (sequence read),
    /// event and produce time; a message that does not decode becomes a
    /// copy for the dead-letter topic with the decoder's error.
    #[test]
    fn decode_reads_the_key_and_copies_what_does_not_decode() {
        let cfg = KafkaConfig::default();
        let ev = Event::BudgetAllocation(BudgetAllocation {
            at: 1_000,
            scope: BudgetScope::Project,
            id: "p".into(),
            usd: 3.0,
            period: None,
        });
        let m = Msg {
            payload: encode_event(&ev).unwrap(),
            seq: Some(b"17"),
        };
        match decode(&cfg, EventKind::BudgetAllocation, &m) {
            Item::Event {
                key,
                event,
                produced,
            } => {
                let want = OrderKey::new(&ev, EventKind::BudgetAllocation, Some(17), 2, 41);
                assert_eq!(key, want);
                assert_eq!(event, ev);
                assert_eq!(produced, Some(7));
            }
            other => panic!("not decoded: {other:?}"),
        }
        let bad = Msg {
            payload: vec![0xff, 0x01],
            seq: None,
        };
        let item = decode(&cfg, EventKind::BudgetAllocation, &bad);
        assert_eq!(item.offset(), 41);
        match item {
            Item::Bad { dead, error } => {
                assert_eq!(
                    dead,
                    Dead {
                        topic: "budgets".into(),
                        partition: 2,
                        offset: 41,
                        key: Some(b"k".to_vec()),
                        payload: Some(vec![0xff, 0x01]),
                    }
                );
                assert!(!error.is_empty());
            }
            other => panic!("decoded garbage: {other:?}"),
        }
    }

    fn allocation(i: i64) -> Event {
        Event::BudgetAllocation(BudgetAllocation {
            at: 1_000 + i,
            scope: BudgetScope::Project,
            id: format!("p{i}"),
            usd: 1.0,
            period: None,
        })
    }

    /// A batch of the epoch before a rewind is dropped; the next one is
    /// taken, and the emptied vectors go back to the reader.
    #[test]
    fn batches_older_than_a_rewind_are_dropped() {
        let (tx, rx) = mpsc::channel(4);
        let (spare, spare_rx) = sync_mpsc::channel();
        let mut pipe = Pipe {
            slot: 0,
            rx,
            epoch: 0,
            shared: Arc::default(),
            spare,
            reader: 0,
        };
        let batch = |epoch: u64, at: i64| Decoded {
            epoch,
            items: vec![Item::Bad {
                dead: Dead {
                    topic: "t".into(),
                    partition: 0,
                    offset: at,
                    key: None,
                    payload: None,
                },
                error: String::new(),
            }],
        };
        tx.try_send(batch(0, 1)).unwrap();
        assert_eq!(pipe.next().unwrap().items[0].offset(), 1);
        tx.try_send(batch(0, 2)).unwrap();
        pipe.rewound();
        assert_eq!(pipe.shared.load(Ordering::Acquire), 1);
        tx.try_send(batch(1, 0)).unwrap();
        let d = pipe.next().unwrap();
        assert_eq!(
            (d.epoch, d.items[0].offset()),
            (1, 0),
            "a stale batch taken"
        );
        assert!(pipe.next().is_none());
        pipe.recycle(d.items);
        assert_eq!(spare_rx.try_iter().count(), 2, "the stale one and this one");
    }

    /// Reader threads against librdkafka's in-process mock broker: nothing
    /// is read before the gate opens; then every offset of each partition
    /// arrives once, in order (with what came through the consumer's own
    /// queue before the split first), decoded, and a message that does not
    /// decode arrives as a copy in its place; dropping the pipeline joins
    /// the threads.
    #[tokio::test]
    async fn readers_deliver_every_offset_once_in_order_after_the_gate_opens() {
        use crate::io::kafka::client::consumer_config;
        use crate::io::kafka::split::Split;
        use futures::FutureExt;
        use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
        use std::time::Instant;

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let counts = [700i64, 20];
        for (p, n) in counts.iter().enumerate() {
            for i in 0..*n {
                let v = if p == 1 && i == 7 {
                    b"\xff\xff".to_vec()
                } else {
                    encode_event(&allocation(i)).unwrap()
                };
                producer
                    .send(BaseRecord::<(), _>::to("t").partition(p as i32).payload(&v))
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let cfg = KafkaConfig {
            brokers,
            ..KafkaConfig::default()
        };
        let c: Arc<StreamConsumer<DefaultConsumerContext>> =
            Arc::new(consumer_config(&cfg, None).create().unwrap());
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
        tpl.add_partition_offset("t", 1, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut split = Split::new(&c, [(0, "t", 0), (1, "t", 1)]);
        let gate = Gate::new(Arc::default());
        let sources = split
            .hand_over()
            .into_iter()
            .map(|(slot, reader)| Source {
                slot,
                kind: EventKind::BudgetAllocation,
                reader,
                gate: gate.clone(),
            })
            .collect();
        let mut pipeline = Pipeline::start(&cfg, 2, sources).unwrap();
        assert_eq!(split.ready().count(), 0, "the split reads nothing itself");
        let mut seen: [Vec<i64>; 2] = Default::default();
        // The consumer's own queue first, until seen empty; the readers
        // read nothing meanwhile.
        let deadline = Instant::now() + Duration::from_secs(20);
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Some(m) = c.recv().now_or_never() {
            let m = m.unwrap();
            seen[m.partition() as usize].push(m.offset());
        }
        assert!(!pipeline.has_ready(|_| true), "read before the gate opened");
        pipeline.open(&gate);
        let mut bad = Vec::new();
        while Instant::now() < deadline
            && (seen[0].len() < counts[0] as usize || seen[1].len() < counts[1] as usize)
        {
            for i in 0..pipeline.pipes.len() {
                while let Some(d) = pipeline.pipes[i].next() {
                    pipeline.took(i);
                    let slot = pipeline.pipes[i].slot;
                    for item in d.items {
                        if let Item::Event { event, key, .. } = &item {
                            assert_eq!(*event, allocation(key.offset));
                            assert_eq!(key.partition as usize, slot);
                        } else {
                            bad.push((slot, item.offset()));
                        }
                        seen[slot].push(item.offset());
                    }
                }
            }
            pipeline.wake_readers();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(seen[0], (0..counts[0]).collect::<Vec<_>>());
        assert_eq!(seen[1], (0..counts[1]).collect::<Vec<_>>());
        assert_eq!(bad, [(1, 7)]);
        drop(pipeline);
        drop(split);
    }

    /// A fence's pass waits for a read in progress, and readers of an
    /// earlier generation read nothing after it; a gate reads nothing
    /// until opened.
    #[test]
    fn a_fence_stops_readers_of_earlier_generations() {
        let fence = Arc::new(Fence::default());
        let gate = Gate::new(fence.clone());
        assert_eq!(gate.read(|| 1), None, "read through a closed gate");
        gate.open.store(true, Ordering::Release);
        assert_eq!(gate.read(|| 1), Some(1));
        // A read in progress holds the pass back.
        let (inside_tx, inside_rx) = sync_mpsc::channel();
        let (go_tx, go_rx) = sync_mpsc::channel::<()>();
        let g = gate.clone();
        let reader = std::thread::spawn(move || {
            g.read(|| {
                inside_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            })
        });
        inside_rx.recv().unwrap();
        let passed = Arc::new(AtomicBool::new(false));
        let (f, p) = (fence.clone(), passed.clone());
        let passer = std::thread::spawn(move || {
            f.pass();
            p.store(true, Ordering::Release);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!passed.load(Ordering::Acquire), "passed during a read");
        go_tx.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), Some(()));
        passer.join().unwrap();
        assert!(passed.load(Ordering::Acquire));
        assert_eq!(gate.read(|| 1), None, "read after the fence was passed");
        // Readers started after it read again.
        let later = Gate::new(fence);
        later.open.store(true, Ordering::Release);
        assert_eq!(later.read(|| 1), Some(1));
    }
}
