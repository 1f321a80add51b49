//! A producer that never drops silently: sends retry while librdkafka's queue
//! is full, and failed deliveries are counted so a checkpoint is never taken
//! over commands that did not reach the broker.

use super::config::KafkaConfig;
use super::KafkaError;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts deliveries and keeps the last delivery error.
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
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
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.0.last_error.lock() {
                    *l = Some(e.to_string());
                }
            }
        }
    }
}

pub struct Publisher {
    producer: ThreadedProducer<Ctx>,
    pub counter: Arc<DeliveryCounter>,
}

impl Publisher {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let counter = Arc::new(DeliveryCounter::default());
        let producer =
            super::client::producer_config(cfg).create_with_context(Ctx(counter.clone()))?;
        Ok(Publisher { producer, counter })
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
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Wait until everything queued is delivered; an error if any delivery
    /// failed since the last successful flush.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)?;
        let failed = self.counter.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = self.counter.last_error.lock().ok().and_then(|l| l.clone());
            return Err(KafkaError::Delivery {
                failed,
                last: last.unwrap_or_default(),
            });
        }
        Ok(())
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}
