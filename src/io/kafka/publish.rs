//! A producer that never drops silently and keeps every partition's order
//! across a broker outage. Sends retry while librdkafka's queue is full. A
//! message whose delivery failed (librdkafka gives up on errors it does not
//! know to be retriable, such as a broker answering `UNKNOWN` while it
//! stops, and on messages that time out) is kept and sent again, and so is
//! everything queued behind it, in the original order: new messages wait
//! until that re-send has gone out ([`order::ResendOrder`]). Re-sending the
//! failed message alone would put it after newer messages of its partition,
//! and a consumer would apply a job's events out of order. A checkpoint is
//! never taken over commands that did not reach the broker: `flush` only
//! succeeds once every failed message has been redelivered.

mod order;

use super::config::KafkaConfig;
use super::KafkaError;
use order::{Admission, Resend, ResendOrder};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage, Timestamp};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Counts deliveries, keeps the last delivery error and the messages that
/// still have to be sent again (in their order).
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    /// Failed delivery attempts since the process started (each one is
    /// retried; this is not a count of lost messages).
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    order: Mutex<Pending>,
}

/// The re-send bookkeeping and its pause.
struct Pending {
    order: ResendOrder<OwnedMessage>,
    /// No re-send before this: a broker that fails requests (tansu answers
    /// `UNKNOWN` for seconds while it stops) would otherwise get the whole
    /// backlog again after every failed request.
    not_before: Option<Instant>,
    /// The next pause: doubles with each failure that follows a re-send,
    /// back to the first once a delivery succeeds.
    pause: Duration,
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

impl Default for Pending {
    fn default() -> Self {
        Pending {
            order: ResendOrder::default(),
            not_before: None,
            pause: FIRST_PAUSE,
        }
    }
}

impl std::ops::Deref for Pending {
    type Target = ResendOrder<OwnedMessage>;
    fn deref(&self) -> &Self::Target {
        &self.order
    }
}

impl std::ops::DerefMut for Pending {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.order
    }
}

impl DeliveryCounter {
    fn order(&self) -> MutexGuard<'_, Pending> {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // bookkeeping is whole between calls.
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliveries that overtook an earlier failed message of their
    /// partition: order that could not be kept (only possible without
    /// idempotence, when a batch already in flight behind a failed one
    /// succeeds).
    pub fn reordered(&self) -> u64 {
        self.order().reordered()
    }
}

pub struct Ctx(pub Arc<DeliveryCounter>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    /// The message's sequence number in [`ResendOrder`].
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, seq: usize) {
        let seq = seq as u64;
        match r {
            Ok(m) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
                let part = (m.topic().to_string(), m.partition());
                let mut order = self.0.order();
                order.pause = FIRST_PAUSE;
                if order.delivered(seq, &part) {
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        "a message was written after an earlier one of its partition failed: order not kept"
                    );
                }
            }
            Err((e, m)) => {
                let purged = matches!(e, RdError::MessageProduction(RDKafkaErrorCode::PurgeQueue));
                let part = (m.topic().to_string(), m.partition());
                let mut order = self.0.order();
                if !purged {
                    self.0.failed.fetch_add(1, Ordering::Relaxed);
                    if !order.needs_drain() {
                        let pause = order.pause;
                        order.not_before = Some(Instant::now() + pause);
                        order.pause = (pause * 2).min(LONGEST_PAUSE);
                        tracing::warn!(error = %e, topic = m.topic(), partition = m.partition(),
                            pause_ms = pause.as_millis() as u64,
                            "delivery failed; holding new messages until it and those behind it are sent again");
                    }
                    if let Ok(mut l) = self.0.last_error.lock() {
                        *l = Some(e.to_string());
                    }
                }
                order.failed(seq, part, m.detach(), purged);
            }
        }
    }
}

pub struct Publisher {
    /// Replaced when re-sent messages keep failing: an idempotent producer
    /// whose sequence numbers the broker no longer accepts (as after a broker
    /// restart) stays stuck, while a new one gets a fresh producer id.
    producer: RwLock<ThreadedProducer<Ctx>>,
    cfg: KafkaConfig,
    pub counter: Arc<DeliveryCounter>,
    /// One re-send at a time: a second thread must not interleave its
    /// batch with the first's.
    resending: Mutex<()>,
}

impl Publisher {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let counter = Arc::new(DeliveryCounter::default());
        let producer = Self::create(cfg, &counter)?;
        Ok(Publisher {
            producer: RwLock::new(producer),
            cfg: cfg.clone(),
            counter,
            resending: Mutex::new(()),
        })
    }

    fn create(
        cfg: &KafkaConfig,
        counter: &Arc<DeliveryCounter>,
    ) -> Result<ThreadedProducer<Ctx>, KafkaError> {
        let mut c = super::client::producer_config(cfg);
        // Without idempotence librdkafka keeps a partition's order across
        // its own retries only with one request in flight (its default
        // allows a million).
        let idempotent = c.get("enable.idempotence") != Some("false");
        if !idempotent
            && !cfg
                .properties
                .contains_key("max.in.flight.requests.per.connection")
        {
            c.set("max.in.flight.requests.per.connection", "1");
        }
        Ok(c.create_with_context(Ctx(counter.clone()))?)
    }

    /// Swap in a new producer. Dropping the old one purges what it still
    /// held; those messages come back through the delivery callback into
    /// the re-send queue, so nothing is lost.
    fn rebuild(&self) -> Result<(), KafkaError> {
        let fresh = Self::create(&self.cfg, &self.counter)?;
        let old = match self.producer.write() {
            Ok(mut p) => std::mem::replace(&mut *p, fresh),
            Err(_) => return Ok(()),
        };
        drop(old);
        tracing::warn!("deliveries kept failing: replaced the producer");
        Ok(())
    }

    fn producer(&self) -> std::sync::RwLockReadGuard<'_, ThreadedProducer<Ctx>> {
        // A poisoned lock only means a panic elsewhere while swapping; the
        // producer inside is still whole.
        self.producer.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue one message; waits (briefly, repeatedly) while the local queue
    /// is full rather than dropping it. While earlier failed messages wait
    /// to be sent again, it is held behind them.
    pub fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
        timestamp_ms: Option<i64>,
    ) -> Result<(), KafkaError> {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let ts = timestamp_ms.map_or(Timestamp::NotAvailable, Timestamp::CreateTime);
        let m = OwnedMessage::new(
            Some(payload.to_vec()),
            Some(key.to_vec()),
            topic.to_string(),
            ts,
            -1,
            -1,
            Some(h),
        );
        let admitted = self.counter.order().admit(m);
        match admitted {
            Admission::Send(seq, m) => {
                let r = self.enqueue(&m, seq);
                self.counter.order().handed();
                r
            }
            Admission::Held => self.retry_failed().map(|_| ()),
        }
    }

    /// Hand one message to librdkafka, its sequence number as the opaque.
    fn enqueue(&self, m: &OwnedMessage, seq: u64) -> Result<(), KafkaError> {
        let mut h = OwnedHeaders::new();
        if let Some(hs) = m.headers() {
            for x in hs.iter() {
                h = h.insert(Header {
                    key: x.key,
                    value: x.value,
                });
            }
        }
        let mut rec: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(m.topic(), seq as usize).headers(h);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(p) = m.payload() {
            rec = rec.payload(p);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            rec = rec.timestamp(ts);
        }
        let producer = self.producer();
        loop {
            match producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Send again what failed, with everything queued or held behind it, in
    /// the original order; returns how many were handed to librdkafka. Never
    /// waits for the broker: while librdkafka still holds messages a failure
    /// may give back, or during the pause after a failure, it purges
    /// librdkafka's queues and leaves the rest to a later call. Cheap when nothing failed, so the service calls it on every
    /// tick (and `send` while it holds messages back).
    pub fn retry_failed(&self) -> Result<usize, KafkaError> {
        let Ok(_one) = self.resending.try_lock() else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let empty = {
                let producer = self.producer();
                if self.counter.order().needs_drain() {
                    producer.purge(PurgeConfig::default().queue());
                }
                producer.in_flight_count() == 0
            };
            let batch = {
                let mut order = self.counter.order();
                if order.not_before.is_some_and(|t| Instant::now() < t) {
                    break;
                }
                order.take_resend(empty)
            };
            let batch = match batch {
                Resend::Batch(b) => b,
                Resend::Flowing | Resend::Wait => break,
            };
            for (seq, m) in &batch {
                self.enqueue(m, *seq)?;
            }
            total += batch.len();
        }
        if total > 0 {
            tracing::info!(messages = total, "re-sent in order after failed deliveries");
        }
        Ok(total)
    }

    /// Messages failed or held back, not yet handed to librdkafka again.
    fn pending(&self) -> usize {
        let order = self.counter.order();
        if order.holding() {
            order.pending().max(1)
        } else {
            0
        }
    }

    /// Wait until everything queued is delivered, re-sending failed
    /// messages (with a growing pause, for a broker that is restarting) until
    /// `timeout`; an error only if some are still undelivered by then.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(100);
        let mut rounds = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.producer().flush(left)?;
            // Everything was answered: what failed can go out at once.
            self.retry_failed()?;
            if self.pending() == 0 && self.in_flight() == 0 {
                return Ok(());
            }
            if self.in_flight() > 0 {
                continue;
            }
            if Instant::now() + pause >= deadline {
                let last = self.counter.last_error.lock().ok().and_then(|l| l.clone());
                return Err(KafkaError::Delivery {
                    failed: self.pending() as u64,
                    last: last.unwrap_or_default(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(5));
            rounds += 1;
            if rounds >= 2 {
                self.rebuild()?;
            }
            self.retry_failed()?;
        }
    }

    pub fn in_flight(&self) -> i32 {
        self.producer().in_flight_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    /// The broker answers `UNKNOWN` (which librdkafka does not retry) to
    /// produce requests, as tansu does while it stops; every message still
    /// arrives with its headers, once, and `flush` succeeds. `burst`: once
    /// the producer knows the partition, all 40 messages go out together
    /// and two requests fail; each try is then one request (a replaced
    /// producer's first one included), so the order must be exactly the
    /// sent one. Otherwise four requests fail and the messages are spread
    /// over many requests, and the broker that fails one request and
    /// accepts the next is the case that cannot be repaired without
    /// idempotence (see `order`): the order read back must then be the sent
    /// one exactly when no delivery was counted as `reordered`. (The mock
    /// broker stamps its own timestamps, so those are not compared.)
    fn failed_deliveries_come_back_in_order(idempotent: bool, burst: bool) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let mut cfg = KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            ..KafkaConfig::default()
        };
        if !idempotent {
            cfg.properties
                .insert("enable.idempotence".into(), "false".into());
        }
        if burst {
            cfg.properties.insert("linger.ms".into(), "50".into());
        }
        let p = Publisher::new(&cfg).unwrap();
        let mut sent: Vec<i32> = Vec::new();
        if burst {
            // Partition known: the burst is not split by a metadata answer.
            p.send("t", b"-1", b"-1", &[("h", b"x")], None).unwrap();
            p.flush(Duration::from_secs(10)).unwrap();
            sent.push(-1);
        }
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 4][..if burst { 2 } else { 4 }],
        );
        for i in 0..40i32 {
            let v = i.to_string();
            p.send("t", v.as_bytes(), v.as_bytes(), &[("h", b"x")], Some(1_000))
                .unwrap();
            if !burst {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        p.flush(Duration::from_secs(30)).unwrap();
        assert!(
            p.counter.failed.load(Ordering::Relaxed) > 0,
            "no failure injected"
        );

        let c: BaseConsumer = super::super::client::consumer_config(&cfg, Some("g"))
            .create()
            .unwrap();
        c.subscribe(&["t"]).unwrap();
        let mut got = Vec::new();
        let started = Instant::now();
        // Until all 40 are read, then a little longer: copies would show.
        let mut all_at = None;
        sent.extend(0..40);
        while all_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_millis(500))
            && started.elapsed() < Duration::from_secs(20)
        {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let h = m.headers().map(|h| h.get(0).value.map(|v| v.to_vec()));
                assert_eq!(h, Some(Some(b"x".to_vec())), "headers kept");
                let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                got.push(v.parse::<i32>().unwrap());
            }
            if got.len() >= sent.len() && all_at.is_none() {
                all_at = Some(Instant::now());
            }
        }
        let mut each = got.clone();
        each.sort_unstable();
        assert_eq!(each, sent, "each message once: {got:?}");
        let reordered = p.counter.reordered();
        if burst {
            assert_eq!((reordered, got), (0, sent));
        } else {
            assert_eq!(got == sent, reordered == 0, "{reordered} counted: {got:?}");
        }
    }

    #[test]
    fn failed_deliveries_come_back_in_order_idempotent() {
        failed_deliveries_come_back_in_order(true, true);
        failed_deliveries_come_back_in_order(true, false);
    }

    #[test]
    fn failed_deliveries_come_back_in_order_not_idempotent() {
        failed_deliveries_come_back_in_order(false, true);
        failed_deliveries_come_back_in_order(false, false);
    }
}
