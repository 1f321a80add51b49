//! A queue per input partition: the merge's flow control.
//!
//! The merge ([`super::merge`]) releases an event only once every partition
//! has a head or is caught up. Read through a consumer's single queue, a
//! partition the broker happens to serve ahead of the others piles up in the
//! merge buffer while the merge waits for the rest: in a 1 M message replay
//! up to 766 k messages sat there (one partition 307 k messages ahead), and
//! growing and filling that buffer was most of the service's time. Pausing
//! the partition that runs ahead (Kafka Streams' way) stalled on the test
//! broker.
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

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Message, OwnedMessage};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Messages of one partition the merge may hold before the loop stops
/// reading that partition's queue. Small enough that the merge buffer stays
/// small, large enough that one pass over the partitions reads many
/// messages per look at each queue.
pub const AHEAD: usize = 256;

/// The split partitions of one consumer.
pub struct Split<C: ConsumerContext + 'static> {
    /// Each partition's merge slot and queue.
    queues: Vec<(usize, StreamPartitionQueue<C>)>,
    /// The consumer's own queue was seen empty since the split.
    clear: bool,
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
                let q = consumer.split_partition_queue(topic, partition);
                if q.is_none() {
                    // The partition then stays on the consumer's own queue,
                    // which the loop reads anyway: slower, not wrong.
                    tracing::warn!(topic, partition, "could not split partition queue");
                }
                q.map(|q| (slot, q))
            })
            .collect();
        Split {
            queues,
            clear: false,
        }
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

    /// The partitions' merge slots and queues, to read without waiting;
    /// none until [`Split::set_clear`]. The reader keeps each partition's
    /// merge buffer under [`AHEAD`].
    pub fn ready(&self) -> impl Iterator<Item = (usize, &StreamPartitionQueue<C>)> {
        let n = if self.clear { self.queues.len() } else { 0 };
        self.queues[..n].iter().map(|(slot, q)| (*slot, q))
    }

    /// Futures resolving with the next message of each partition that has
    /// room, for the loop to wait on (none until [`Split::set_clear`]).
    pub fn waits<'s>(
        &'s self,
        mut queued: impl FnMut(usize) -> usize,
    ) -> impl Iterator<Item = Pin<Box<dyn Future<Output = Woken> + 's>>> {
        self.queues
            .iter()
            .filter(move |(slot, _)| self.clear && queued(*slot) < AHEAD)
            .map(|(slot, q)| {
                let slot = *slot;
                Box::pin(async move { (slot, q.recv().await.map(|m| m.detach())) })
                    as Pin<Box<dyn Future<Output = Woken> + 's>>
            })
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
    fn header(&self, name: &str) -> Option<&[u8]>;
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
    fn header(&self, name: &str) -> Option<&[u8]> {
        use rdkafka::message::Headers;
        Message::headers(self)?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
    }
}
