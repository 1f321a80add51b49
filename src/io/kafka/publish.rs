//! A producer that never drops silently: sends retry while librdkafka's queue
//! is full, and a message whose delivery failed (librdkafka gives up on
//! errors it does not know to be retriable, such as a broker answering
//! `UNKNOWN` while it restarts) is kept and sent again. A checkpoint is never
//! taken over commands that did not reach the broker: `flush` only succeeds
//! once every failed message has been redelivered.

use super::config::KafkaConfig;
use super::KafkaError;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Counts deliveries, keeps the last delivery error and the messages that
/// still have to be sent again.
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    /// Failed delivery attempts since the process started (each one is
    /// retried; this is not a count of lost messages).
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    retry: Mutex<Vec<OwnedMessage>>,
}

pub struct Ctx(pub Arc<DeliveryCounter>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, topic = m.topic(), "delivery failed; will retry");
                if let Ok(mut l) = self.0.last_error.lock() {
                    *l = Some(e.to_string());
                }
                if let Ok(mut q) = self.0.retry.lock() {
                    q.push(m.detach());
                }
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
}

impl Publisher {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let counter = Arc::new(DeliveryCounter::default());
        let producer = Self::create(cfg, &counter)?;
        Ok(Publisher {
            producer: RwLock::new(producer),
            cfg: cfg.clone(),
            counter,
        })
    }

    fn create(
        cfg: &KafkaConfig,
        counter: &Arc<DeliveryCounter>,
    ) -> Result<ThreadedProducer<Ctx>, KafkaError> {
        Ok(super::client::producer_config(cfg).create_with_context(Ctx(counter.clone()))?)
    }

    /// Swap in a new producer. Dropping the old one purges what it still
    /// held; those messages come back through the delivery callback into
    /// the retry queue, so nothing is lost.
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
    /// is full rather than dropping it.
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
        let mut rec = BaseRecord::to(topic).key(key).payload(payload).headers(h);
        if let Some(ts) = timestamp_ms {
            rec = rec.timestamp(ts);
        }
        self.enqueue(rec)
    }

    fn enqueue(&self, mut rec: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
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

    /// Queue again every message whose delivery failed; returns how many.
    /// Cheap when there are none, so the service calls it on every tick.
    pub fn retry_failed(&self) -> Result<usize, KafkaError> {
        let failed = match self.counter.retry.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Ok(0),
        };
        for m in &failed {
            let mut h = OwnedHeaders::new();
            if let Some(hs) = m.headers() {
                for x in hs.iter() {
                    h = h.insert(Header {
                        key: x.key,
                        value: x.value,
                    });
                }
            }
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(m.topic()).headers(h);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(p) = m.payload() {
                rec = rec.payload(p);
            }
            if let Some(ts) = m.timestamp().to_millis() {
                rec = rec.timestamp(ts);
            }
            self.enqueue(rec)?;
        }
        if !failed.is_empty() {
            tracing::info!(messages = failed.len(), "re-sent after failed delivery");
        }
        Ok(failed.len())
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
            let pending = self.counter.retry.lock().map(|q| q.len()).unwrap_or(0);
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() + pause >= deadline {
                let last = self.counter.last_error.lock().ok().and_then(|l| l.clone());
                return Err(KafkaError::Delivery {
                    failed: pending as u64,
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
    use std::collections::BTreeSet;

    /// The broker answers `UNKNOWN` (which librdkafka does not retry) to the
    /// first produce requests, as tansu does while it restarts: every
    /// message still arrives with its headers, and `flush` succeeds. (The
    /// mock broker stamps its own timestamps, so those are not compared.)
    #[test]
    fn failed_deliveries_are_sent_again() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 4],
        );
        let cfg = KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            ..KafkaConfig::default()
        };
        let p = Publisher::new(&cfg).unwrap();
        for i in 0..20u32 {
            let v = i.to_string();
            p.send("t", v.as_bytes(), v.as_bytes(), &[("h", b"x")], Some(1_000))
                .unwrap();
            // Spread over several produce requests.
            std::thread::sleep(Duration::from_millis(5));
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
        let mut got = BTreeSet::new();
        let started = Instant::now();
        while got.len() < 20 && started.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let h = m.headers().map(|h| h.get(0).value.map(|v| v.to_vec()));
                assert_eq!(h, Some(Some(b"x".to_vec())), "headers kept");
                got.insert(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
            }
        }
        assert_eq!(got.len(), 20, "{got:?}");
    }
}
