//! A queue per input partition: the merge's flow control.
//!
//! The merge ([`super::merge`]) releases an event only once every partition
//! has a head or is caught up. Read through a consumer's single queue, a
//! partition the broker happens to serve ahead of the others piles up in the
//! merge buffer while the merge waits for the rest: in a 1 M message replay
//! up to 766 k messages sat there (one partition 307 k messages ahead), and
//! growing and filling that buffer was most of the service's time. Pausing
//! the partition that runs ahead (Kafka Streams' way) drops what librdkafka
//! prefetched and fetches it again on resume, from inside a record batch,
//! which the test broker answers with the next batch (see [`super::merge`]):
//! every resume needed rewinds, and one run stalled after them.
//!
//! Split into a queue of its own per partition, librdkafka keeps its
//! prefetch limit (`queued.min.messages`) per partition and stops fetching a
//! partition whose queue is full. The loop reads a partition only while the
//! merge holds fewer than [`AHEAD`] of its messages, so a partition that
//! runs ahead waits in librdkafka's queue, bounded, and the fetches go to
//! the partitions the merge is waiting for.
//!
//! One ordering rule: messages of a partition fetched before it was split
//! were already handed to the consumer's own queue. A split partition's
//! queue is therefore read only after that queue was seen empty since the
//! split ([`Split::set_clear`]).
//!
//! The loop reads a split queue in batches ([`Reader::read`]: librdkafka's
//! `rd_kafka_consume_batch_queue` on a second handle of the same queue),
//! not one `poll` per message: rdkafka's per-message poll reads the clock,
//! allocates a reference count for the message's event and goes through a
//! stream's waker bookkeeping, about a tenth of the loop thread's time on
//! `prescale bench kafka`. Waiting for a quiet queue still goes through
//! rdkafka's stream ([`Split::waits`]), whose wake-up callback is the
//! queue's own.

use super::codec::{headers, seq_value};
use super::merge::{Hold, Tp};
use rdkafka::bindings as rd;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Message, OwnedMessage};
use std::ffi::{CStr, CString};
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;

/// Messages of one partition the merge may hold before the loop stops
/// reading that partition's queue. Small enough that the merge buffer stays
/// small, large enough that one pass over the partitions reads many
/// messages per look at each queue.
pub const AHEAD: usize = 256;

/// The split partitions of one consumer.
pub struct Split<C: ConsumerContext + 'static> {
    /// Each partition's merge slot and queue.
    queues: Vec<(usize, Queue<C>)>,
    /// The consumer's own queue was seen empty since the split.
    clear: bool,
    /// The queues are read by reader threads ([`Split::hand_over`]): the
    /// loop neither reads nor waits on them.
    handed_over: bool,
}

/// A message taken off a partition queue while waiting, with its merge slot.
pub type Woken = (usize, Result<OwnedMessage, RdError>);

impl<C: ConsumerContext + 'static> Split<C> {
    /// Split `partitions` (merge slot, topic, partition) off `consumer`'s
    /// own queue. Call after every `assign`, which undoes splits, and drop
    /// the previous `Split` of the same consumer first: dropping a queue
    /// switches off its partition's wake-up callback, which a new queue of
    /// the same partition shares.
    pub fn new<'a>(
        consumer: &Arc<StreamConsumer<C>>,
        partitions: impl IntoIterator<Item = (usize, &'a str, i32)>,
    ) -> Self {
        let queues = partitions
            .into_iter()
            .filter_map(|(slot, topic, partition)| {
                split_one(consumer, topic, partition).map(|q| (slot, q))
            })
            .collect();
        Split {
            queues,
            clear: false,
            handed_over: false,
        }
    }

    /// [`Split::new`] before the merge slots are known: split at once,
    /// bind the slots later ([`Unbound::bind`]). What librdkafka fetches
    /// for a partition from its split on lands in the partition's own
    /// queue, bounded by its prefetch limit, instead of the consumer's
    /// queue, which the loop must read whole into the merge before any
    /// partition queue: splitting only once the assignment's state was
    /// built let up to 75 k messages pile up in the merge on
    /// `prescale bench kafka` (all of them re-sorted and held in memory).
    pub fn early<'a>(
        consumer: &Arc<StreamConsumer<C>>,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Unbound<C> {
        let queues = partitions
            .into_iter()
            .filter_map(|(topic, partition)| {
                split_one(consumer, topic, partition).map(|q| ((topic.to_string(), partition), q))
            })
            .collect();
        Unbound { queues }
    }

    /// The consumer's own queue was just seen empty: from now on messages
    /// of split partitions come only through their queues.
    pub fn set_clear(&mut self) {
        self.clear = true;
    }

    /// Whether [`Split::set_clear`] was called.
    pub fn is_clear(&self) -> bool {
        self.clear
    }

    /// The partitions' merge slots and readers, to read without waiting;
    /// none until [`Split::set_clear`]. The reader keeps each partition's
    /// merge buffer under [`AHEAD`].
    pub fn ready(&self) -> impl Iterator<Item = (usize, &Reader)> {
        let n = if self.clear && !self.handed_over {
            self.queues.len()
        } else {
            0
        };
        self.queues[..n].iter().map(|(slot, q)| (*slot, &*q.reader))
    }

    /// The partitions' merge slots and batch readers, for reader threads
    /// (see [`super::pipe`]); from now on [`Split::ready`] and
    /// [`Split::waits`] give nothing. The queues stay here, dropped with
    /// the split; the readers' handles must be dropped first (the
    /// pipeline is joined before its split is dropped).
    pub fn hand_over(&mut self) -> Vec<(usize, Arc<Reader>)> {
        self.handed_over = true;
        self.queues
            .iter()
            .map(|(slot, q)| (*slot, q.reader.clone()))
            .collect()
    }

    /// Futures resolving with the next message of each partition that has
    /// room, for the loop to wait on (none until [`Split::set_clear`]).
    pub fn waits<'s>(
        &'s self,
        mut queued: impl FnMut(usize) -> usize,
    ) -> impl Iterator<Item = Pin<Box<dyn Future<Output = Woken> + 's>>> {
        self.queues
            .iter()
            .filter(move |(slot, _)| self.clear && !self.handed_over && queued(*slot) < AHEAD)
            .map(|(slot, q)| {
                let slot = *slot;
                Box::pin(async move { (slot, q.stream.recv().await.map(|m| m.detach())) })
                    as Pin<Box<dyn Future<Output = Woken> + 's>>
            })
    }
}

/// One split partition: its batch reader, and rdkafka's stream over the
/// same queue for waiting. The reader is declared first so it is dropped
/// first: its handle must go before the consumer the stream keeps alive.
struct Queue<C: ConsumerContext + 'static> {
    reader: Arc<Reader>,
    stream: StreamPartitionQueue<C>,
}

/// Split one partition off `consumer`'s queue.
fn split_one<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    topic: &str,
    partition: i32,
) -> Option<Queue<C>> {
    let q = consumer
        .split_partition_queue(topic, partition)
        .and_then(|stream| {
            let reader = Arc::new(Reader::new(consumer, topic, partition)?);
            Some(Queue { reader, stream })
        });
    if q.is_none() {
        // The partition then stays on the consumer's own queue, which the
        // loop reads anyway: slower, not wrong.
        tracing::warn!(topic, partition, "could not split partition queue");
    }
    q
}

/// A second handle on a split partition's queue (librdkafka counts its
/// references), read in batches.
pub struct Reader(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka's queues lock internally; a queue handle may be used
// and destroyed from any thread.
unsafe impl Send for Reader {}
// SAFETY: as above; reading through `&Reader` takes the queue's own lock.
unsafe impl Sync for Reader {}

impl Reader {
    fn new<C: ConsumerContext + 'static>(
        consumer: &StreamConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: `native_ptr` is the consumer's live rd_kafka_t; librdkafka
        // only reads the topic name during the call. The handle it returns
        // holds a reference to the partition's queue until destroyed.
        let q = unsafe {
            rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        NonNull::new(q).map(Reader)
    }

    /// Set (or, with `None`, remove) librdkafka's callback for messages
    /// arriving in the queue, replacing the one the split's stream set.
    ///
    /// # Safety
    /// `opaque` must stay valid for `cb` until the callback is removed or
    /// replaced (librdkafka calls it with the queue's lock held, which
    /// removing it takes, so no call runs after removal returns).
    pub unsafe fn on_nonempty(
        &self,
        cb: Option<unsafe extern "C" fn(*mut rd::rd_kafka_t, *mut std::ffi::c_void)>,
        opaque: *mut std::ffi::c_void,
    ) {
        // SAFETY: a live queue handle; the caller answers for `opaque`.
        unsafe { rd::rd_kafka_queue_cb_event_enable(self.0.as_ptr(), cb, opaque) }
    }

    /// Take up to `max` (at most [`AHEAD`]) messages waiting in the queue,
    /// without waiting: one lock round per message inside librdkafka, no
    /// clock reading or allocation per message on this side.
    pub fn read(&self, max: usize) -> Batch {
        let mut b = Batch {
            ptrs: [std::ptr::null_mut(); AHEAD],
            next: 0,
            len: 0,
        };
        let max = max.min(AHEAD);
        if max == 0 {
            return b;
        }
        // SAFETY: the queue handle is live; librdkafka writes at most `max`
        // message pointers into the array, each ours to destroy.
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(self.0.as_ptr(), 0, b.ptrs.as_mut_ptr(), max)
        };
        // -1: an error (an invalid queue); nothing was taken.
        b.len = usize::try_from(n).unwrap_or(0).min(max);
        b
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_partition` and is
        // destroyed once; the consumer is still alive (see `Queue`).
        unsafe { rd::rd_kafka_queue_destroy(self.0.as_ptr()) }
    }
}

/// Messages taken by one [`Reader::read`], handed out in order; those not
/// handed out are destroyed with the batch (an error part-way through).
pub struct Batch {
    ptrs: [*mut rd::rd_kafka_message_t; AHEAD],
    next: usize,
    len: usize,
}

impl Iterator for Batch {
    type Item = Polled;

    fn next(&mut self) -> Option<Polled> {
        while self.next < self.len {
            let p = self.ptrs[self.next];
            self.next += 1;
            if let Some(p) = NonNull::new(p) {
                return Some(Polled(p));
            }
        }
        None
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for m in self.by_ref() {
            drop(m);
        }
    }
}

/// One message (or a consumer error, such as the end of a partition)
/// taken off a partition queue in a batch; destroyed when dropped.
pub struct Polled(NonNull<rd::rd_kafka_message_t>);

impl Polled {
    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: librdkafka handed this message to us and it lives until
        // `Drop`; nothing else writes to it meanwhile.
        unsafe { self.0.as_ref() }
    }

    /// The message, or the error it carries (as rdkafka's poll reports it).
    pub fn result(&self) -> Result<&dyn MessageView, RdError> {
        let m = self.raw();
        match m.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(self),
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                Err(RdError::PartitionEOF(m.partition))
            }
            e => Err(RdError::MessageConsumption(e.into())),
        }
    }
}

impl Drop for Polled {
    fn drop(&mut self) {
        // SAFETY: a message from `rd_kafka_consume_batch_queue`, destroyed
        // once.
        unsafe { rd::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

/// A message read in a batch can wait in the merge for its sequence to be
/// needed (see [`Hold`]): its headers are parsed only then.
impl Hold for Polled {
    fn seq(&self) -> Option<u64> {
        self.producer_seq()
    }
}

/// A C pointer and length as an optional slice (`None`: null).
///
/// SAFETY: the caller guarantees `p` points to `len` readable bytes living
/// as long as the returned slice, when not null.
unsafe fn bytes<'a>(p: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

impl MessageView for Polled {
    fn topic(&self) -> &str {
        // SAFETY: a consumed message's topic handle is live while the
        // message is, and its name is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.raw().rkt)) };
        // Kafka topic names are ASCII; a name librdkafka holds is valid.
        name.to_str().unwrap_or_default()
    }
    fn partition(&self) -> i32 {
        self.raw().partition
    }
    fn offset(&self) -> i64 {
        self.raw().offset
    }
    fn key(&self) -> Option<&[u8]> {
        let m = self.raw();
        // SAFETY: librdkafka's key pointer and length, owned by the message.
        unsafe { bytes(m.key, m.key_len) }
    }
    fn payload(&self) -> Option<&[u8]> {
        let m = self.raw();
        // SAFETY: as for the key.
        unsafe { bytes(m.payload, m.len) }
    }
    fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; librdkafka writes the type only.
        let t = unsafe { rd::rd_kafka_message_timestamp(self.0.as_ptr(), &mut kind) };
        let none =
            t == -1 || kind == rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        (!none).then_some(t)
    }
    fn header(&self, name: &CStr) -> Option<&[u8]> {
        let mut hdrs = std::ptr::null_mut();
        let (mut value, mut size) = (std::ptr::null(), 0usize);
        // SAFETY: a live message; the headers librdkafka parses belong to
        // the message, and the value pointer into them lives as long.
        unsafe {
            if rd::rd_kafka_message_headers(self.0.as_ptr(), &mut hdrs)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
            // Index 0 among the headers called `name`: the first.
            if rd::rd_kafka_header_get(hdrs, 0, name.as_ptr(), &mut value, &mut size)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
            bytes(value, size)
        }
    }
}

/// Partitions split off a consumer whose merge slots are not known yet
/// (see [`Split::early`]).
pub struct Unbound<C: ConsumerContext + 'static> {
    queues: Vec<(Tp, Queue<C>)>,
}

impl<C: ConsumerContext + 'static> Unbound<C> {
    /// The [`Split`] with each partition's merge slot. Every partition
    /// split must have one: the queue of a partition without one would be
    /// dropped with what it holds and what is fetched for it later.
    pub fn bind(self, mut slot: impl FnMut(&str, i32) -> Option<usize>) -> Split<C> {
        let queues = self
            .queues
            .into_iter()
            .filter_map(|((topic, partition), q)| {
                let s = slot(&topic, partition);
                if s.is_none() {
                    tracing::error!(
                        topic,
                        partition,
                        "a split partition is not in the merge: its messages are not read"
                    );
                }
                s.map(|s| (s, q))
            })
            .collect();
        Split {
            queues,
            clear: false,
            handed_over: false,
        }
    }
}

/// What the loop needs of a message, whether borrowed from a queue or
/// detached from one (object-safe, so one ingest path serves both).
pub trait MessageView {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    fn timestamp_ms(&self) -> Option<i64>;
    /// The value of the first header named `name`.
    fn header(&self, name: &CStr) -> Option<&[u8]>;
    /// The producer sequence of its [`headers::SEQ`] header, if it has one.
    fn producer_seq(&self) -> Option<u64> {
        self.header(headers::SEQ_C).and_then(seq_value)
    }
}

impl<M: Message> MessageView for M {
    fn topic(&self) -> &str {
        Message::topic(self)
    }
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }
    fn timestamp_ms(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }
    fn header(&self, name: &CStr) -> Option<&[u8]> {
        use rdkafka::message::Headers;
        let name = name.to_bytes();
        Message::headers(self)?
            .iter()
            .find(|h| h.key.as_bytes() == name)
            .and_then(|h| h.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::kafka::client::consumer_config;
    use crate::io::kafka::KafkaConfig;
    use futures::FutureExt;
    use rdkafka::consumer::{Consumer, DefaultConsumerContext};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use rdkafka::ClientConfig;
    use std::time::{Duration, Instant};

    fn produce(brokers: &str, partition: i32, from: usize, n: usize) {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        for i in from..from + n {
            let v = i.to_string();
            p.send(
                BaseRecord::<(), _>::to("t")
                    .partition(partition)
                    .payload(&v),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
    }

    /// What the loop relies on, against librdkafka's in-process mock
    /// broker: before `set_clear` nothing is read from the split queues;
    /// messages of a partition fetched before its split come through the
    /// consumer's own queue, and reading that first, then the partition's
    /// queue, gives every offset once and in order; once the own queue was
    /// empty, new messages come only through the partition queues.
    #[tokio::test]
    async fn split_partitions_deliver_every_offset_once_in_order() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        produce(&brokers, 0, 0, 600);
        produce(&brokers, 1, 0, 10);
        let cfg = KafkaConfig {
            brokers: brokers.clone(),
            ..KafkaConfig::default()
        };
        let c: Arc<StreamConsumer<DefaultConsumerContext>> =
            Arc::new(consumer_config(&cfg, None).create().unwrap());
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
        tpl.add_partition_offset("t", 1, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();

        /// Offsets read per partition, and how many messages of a split
        /// partition came through the own queue after it was seen empty.
        #[derive(Default)]
        struct Seen {
            offsets: [Vec<i64>; 2],
            own_before_clear: usize,
            own_after_clear: usize,
        }
        fn round(
            c: &StreamConsumer<DefaultConsumerContext>,
            split: &mut Split<DefaultConsumerContext>,
            seen: &mut Seen,
        ) {
            // The consumer's own queue first, until empty.
            while let Some(m) = c.recv().now_or_never() {
                if let Ok(m) = m {
                    if split.is_clear() {
                        seen.own_after_clear += 1;
                    } else {
                        seen.own_before_clear += 1;
                    }
                    seen.offsets[Message::partition(&m) as usize].push(Message::offset(&m));
                }
            }
            split.set_clear();
            for (_, q) in split.ready() {
                // Small batches, so one pass reads several.
                loop {
                    let mut n = 0;
                    for m in q.read(7) {
                        n += 1;
                        if let Ok(m) = m.result() {
                            seen.offsets[m.partition() as usize].push(m.offset());
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        let mut seen = Seen::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Messages of the partitions read before the split, as the loop
        // does between an assignment and the split.
        while seen.own_before_clear < 100 && Instant::now() < deadline {
            if let Some(Ok(m)) = c.recv().now_or_never() {
                seen.offsets[Message::partition(&m) as usize].push(Message::offset(&m));
                seen.own_before_clear += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let mut split = Split::new(&c, [(0, "t", 0), (1, "t", 1)]);
        assert_eq!(
            split.ready().count(),
            0,
            "readable before the own queue was seen empty"
        );
        while Instant::now() < deadline
            && (seen.offsets[0].len() < 600 || seen.offsets[1].len() < 10)
        {
            round(&c, &mut split, &mut seen);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // More input after the split: partition queues only.
        produce(&brokers, 1, 10, 50);
        while Instant::now() < deadline && seen.offsets[1].len() < 60 {
            round(&c, &mut split, &mut seen);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let [p0, p1] = &seen.offsets;
        assert_eq!(*p0, (0..600).collect::<Vec<i64>>());
        assert_eq!(*p1, (0..60).collect::<Vec<i64>>());
        assert!(
            seen.own_before_clear >= 100,
            "nothing was read before the split"
        );
        assert_eq!(
            seen.own_after_clear, 0,
            "a split partition's message came through the own queue"
        );
    }
}
