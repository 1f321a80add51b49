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

use super::merge::Tp;
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
                split_one(consumer, topic, partition).map(|q| (slot, q))
            })
            .collect();
        Split {
            queues,
            clear: false,
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

/// Split one partition off `consumer`'s queue.
fn split_one<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    topic: &str,
    partition: i32,
) -> Option<StreamPartitionQueue<C>> {
    let q = consumer.split_partition_queue(topic, partition);
    if q.is_none() {
        // The partition then stays on the consumer's own queue, which the
        // loop reads anyway: slower, not wrong.
        tracing::warn!(topic, partition, "could not split partition queue");
    }
    q
}

/// Partitions split off a consumer whose merge slots are not known yet
/// (see [`Split::early`]).
pub struct Unbound<C: ConsumerContext + 'static> {
    queues: Vec<(Tp, StreamPartitionQueue<C>)>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::kafka::client::consumer_config;
    use crate::io::kafka::KafkaConfig;
    use futures::{FutureExt, StreamExt};
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
                let mut s = q.stream();
                while let Some(Some(m)) = s.next().now_or_never() {
                    if let Ok(m) = m {
                        seen.offsets[Message::partition(&m) as usize].push(Message::offset(&m));
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
