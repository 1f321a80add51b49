//! Where `prescale ingest slurm` sends its events: the input topics (with
//! read-back recovery of a batch cut short) or an events file.

use super::ingest::{Sink, KEY_HEADER};
use super::SlurmError;
use crate::events::avro::EventKind;
use crate::events::Event;
use crate::import::events_file::EventsWriter;
use crate::io::kafka::client::{consumer_config, partitions_of};
use crate::io::kafka::codec::{encode_input, headers};
use crate::io::kafka::publish::Publisher;
use crate::io::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

fn kafka(e: impl std::fmt::Display) -> SlurmError {
    // Broker errors (away, restarting) are worth retrying.
    SlurmError::transient(format!("kafka: {e}"))
}

/// The job-submission and job-completion topics.
pub struct KafkaSink {
    cfg: KafkaConfig,
    publisher: Publisher,
    consumer: BaseConsumer,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SlurmError> {
        Ok(KafkaSink {
            cfg: cfg.clone(),
            publisher: Publisher::new(cfg).map_err(kafka)?,
            consumer: consumer_config(cfg, None).create().map_err(kafka)?,
        })
    }

    fn topics(&self) -> [String; 2] {
        [
            self.cfg.topics.job_submission(),
            self.cfg.topics.job_completion(),
        ]
    }
}

impl Sink for KafkaSink {
    fn publish(&mut self, events: &[(String, Event)], first_seq: u64) -> Result<(), SlurmError> {
        for (i, (key, ev)) in events.iter().enumerate() {
            let topic = self
                .cfg
                .topics
                .configured(ev.topic())
                .ok_or_else(|| SlurmError::permanent(format!("no topic for {}", ev.topic())))?;
            let kind = EventKind::from_default_topic(ev.topic())
                .map_err(|e| SlurmError::permanent(e.to_string()))?;
            let payload = encode_input(&self.cfg, kind, ev)
                .map_err(|e| SlurmError::permanent(format!("{key}: {e}")))?;
            let seq = (first_seq + i as u64).to_string();
            self.publisher
                .send(
                    &topic,
                    ev.key().as_bytes(),
                    &payload,
                    &[(headers::SEQ, seq.as_bytes()), (KEY_HEADER, key.as_bytes())],
                    None,
                )
                .map_err(kafka)?;
        }
        self.publisher.flush(Duration::from_secs(60)).map_err(kafka)
    }

    fn mark(&mut self) -> Result<serde_json::Value, SlurmError> {
        let mut marks: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for t in self.topics() {
            for p in partitions_of(self.consumer.client(), &t, TIMEOUT).map_err(kafka)? {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(&t, p, TIMEOUT)
                    .map_err(kafka)?;
                marks.entry(t.clone()).or_default().insert(p, high);
            }
        }
        Ok(serde_json::to_value(marks).expect("json"))
    }

    fn published_since(
        &mut self,
        mark: &serde_json::Value,
    ) -> Result<BTreeSet<String>, SlurmError> {
        let marks: BTreeMap<String, BTreeMap<i32, i64>> = serde_json::from_value(mark.clone())
            .map_err(|e| SlurmError::permanent(format!("pending batch mark: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        let mut any = false;
        for (t, parts) in &marks {
            for (p, from) in parts {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(t, *p, TIMEOUT)
                    .map_err(kafka)?;
                if high > *from {
                    tpl.add_partition_offset(t, *p, Offset::Offset(*from))
                        .map_err(kafka)?;
                    any = true;
                }
            }
        }
        let mut found = BTreeSet::new();
        if !any {
            return Ok(found);
        }
        self.consumer.assign(&tpl).map_err(kafka)?;
        // Read until the partitions stay quiet: offsets are not counted
        // against the watermarks, since a broker may number a produced
        // batch differently (tansu) and counting would stop early.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut quiet = 0;
        while quiet < 8 {
            if Instant::now() > deadline {
                return Err(SlurmError::transient(
                    "reading back the pending batch timed out",
                ));
            }
            let m = match self.consumer.poll(Duration::from_millis(200)) {
                None | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                    quiet += 1;
                    continue;
                }
                Some(Err(e)) => return Err(kafka(e)),
                Some(Ok(m)) => m,
            };
            quiet = 0;
            if let Some(h) = m.headers() {
                for x in h.iter().filter(|x| x.key == KEY_HEADER) {
                    if let Some(v) = x.value {
                        found.insert(String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
        }
        self.consumer.unassign().map_err(kafka)?;
        Ok(found)
    }
}

/// An events file, written when the ingester stops. It is one session's
/// capture (for `prescale backtest`), not restart-safe: a restart writes a
/// new file.
pub struct FileSink {
    writer: Option<EventsWriter<std::io::BufWriter<std::fs::File>>>,
}

impl FileSink {
    pub fn create(path: &Path) -> Result<Self, SlurmError> {
        let w = EventsWriter::create(path).map_err(|e| SlurmError::permanent(e.to_string()))?;
        Ok(FileSink { writer: Some(w) })
    }

    /// Write the file's last block and close it.
    pub fn finish(&mut self) -> Result<(), SlurmError> {
        if let Some(w) = self.writer.take() {
            use std::io::Write;
            let mut f = w
                .finish()
                .map_err(|e| SlurmError::permanent(e.to_string()))?;
            f.flush()
                .map_err(|e| SlurmError::permanent(e.to_string()))?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn publish(&mut self, events: &[(String, Event)], _first_seq: u64) -> Result<(), SlurmError> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| SlurmError::permanent("events file already closed"))?;
        for (key, ev) in events {
            w.append(ev)
                .map_err(|e| SlurmError::permanent(format!("{key}: {e}")))?;
        }
        Ok(())
    }

    fn mark(&mut self) -> Result<serde_json::Value, SlurmError> {
        Ok(serde_json::Value::Null)
    }

    fn published_since(&mut self, _: &serde_json::Value) -> Result<BTreeSet<String>, SlurmError> {
        Ok(BTreeSet::new())
    }
}
