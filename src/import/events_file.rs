//! Events files: recorded topics as an Avro object container file.
//!
//! Each record is an envelope `{topic, key, payload}` whose payload is the
//! Avro datum a Kafka message on that topic would carry. A file therefore
//! replays through Kafka byte for byte (`prescale produce`) and decodes through
//! the same path as live messages, which is what lets the backtest and the
//! service share one brain.

use crate::events::avro::{decode_event, encode_event, CodecError, EventKind};
use crate::events::Event;
use apache_avro::{types::Value, Codec, Reader, Schema, Writer};
use std::io::{Read, Write};
use std::path::Path;

pub const ENVELOPE_AVSC: &str = r#"{
  "type": "record", "name": "RecordedMessage", "namespace": "dev.prescale",
  "fields": [
    {"name": "topic", "type": "string"},
    {"name": "key", "type": "string"},
    {"name": "payload", "type": "bytes"}
  ]
}"#;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an events file: {message}")]
    Format { path: String, message: String },
    #[error("{path}: record {record}: {source}")]
    Record {
        path: String,
        record: u64,
        source: CodecError,
    },
}

fn envelope_schema() -> Schema {
    Schema::parse_str(ENVELOPE_AVSC).expect("envelope schema parses")
}

/// One raw recorded message.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedMessage {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

impl RecordedMessage {
    pub fn from_event(ev: &Event) -> Result<Self, CodecError> {
        Ok(RecordedMessage {
            topic: ev.topic().to_string(),
            key: ev.key().to_string(),
            payload: encode_event(ev)?,
        })
    }
}

/// Writes events to an events file.
pub struct EventsWriter<W: Write> {
    writer: Writer<'static, W>,
}

impl EventsWriter<std::io::BufWriter<std::fs::File>> {
    pub fn create(path: &Path) -> Result<Self, FileError> {
        let f = std::fs::File::create(path).map_err(|source| FileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::new(std::io::BufWriter::new(f)))
    }
}

impl<W: Write> EventsWriter<W> {
    pub fn new(w: W) -> Self {
        // The writer borrows its schema for its whole life; leaking one small
        // parsed schema per writer is the simplest way to own it.
        let schema: &'static Schema = Box::leak(Box::new(envelope_schema()));
        EventsWriter {
            writer: Writer::with_codec(schema, w, Codec::Deflate(Default::default()))
                .expect("envelope schema is valid"),
        }
    }

    pub fn append_message(&mut self, m: &RecordedMessage) -> Result<(), apache_avro::Error> {
        let v = Value::Record(vec![
            ("topic".into(), Value::String(m.topic.clone())),
            ("key".into(), Value::String(m.key.clone())),
            ("payload".into(), Value::Bytes(m.payload.clone())),
        ]);
        self.writer.append_value(v)?;
        Ok(())
    }

    pub fn append(&mut self, ev: &Event) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let m = RecordedMessage::from_event(ev)?;
        self.append_message(&m)?;
        Ok(())
    }

    /// Flush and return the inner writer.
    pub fn finish(self) -> Result<W, apache_avro::Error> {
        self.writer.into_inner()
    }
}

/// Does this file start with the Avro container magic?
pub fn is_events_file(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"Obj\x01")
        .unwrap_or(false)
}

/// Read the raw messages of an events file.
pub fn read_messages(path: &Path) -> Result<Vec<RecordedMessage>, FileError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| FileError::Io {
        path: p.clone(),
        source,
    })?;
    let reader = Reader::new(std::io::BufReader::new(f)).map_err(|e| FileError::Format {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, v) in reader.enumerate() {
        let v = v.map_err(|e| FileError::Format {
            path: p.clone(),
            message: format!("record {i}: {e}"),
        })?;
        let mut topic = None;
        let mut key = None;
        let mut payload = None;
        if let Value::Record(fields) = v {
            for (name, val) in fields {
                match (name.as_str(), val) {
                    ("topic", Value::String(s)) => topic = Some(s),
                    ("key", Value::String(s)) => key = Some(s),
                    ("payload", Value::Bytes(b)) => payload = Some(b),
                    _ => {}
                }
            }
        }
        match (topic, key, payload) {
            (Some(topic), Some(key), Some(payload)) => out.push(RecordedMessage {
                topic,
                key,
                payload,
            }),
            _ => {
                return Err(FileError::Format {
                    path: p,
                    message: format!("record {i} is not a {{topic, key, payload}} envelope"),
                })
            }
        }
    }
    Ok(out)
}

/// Outcome of decoding an events file: the good events in file order, and the
/// records that failed (index and error), which callers count and report.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<Event>,
    pub bad: Vec<(u64, CodecError)>,
}

/// Read and decode an events file. With `skip_bad` false, the first bad record
/// is an error naming the file, the record and the field.
pub fn read_events(path: &Path, skip_bad: bool) -> Result<Decoded, FileError> {
    let msgs = read_messages(path)?;
    let mut out = Decoded::default();
    for (i, m) in msgs.iter().enumerate() {
        let r = EventKind::from_default_topic(&m.topic).and_then(|k| decode_event(k, &m.payload));
        match r {
            Ok(ev) => out.events.push(ev),
            Err(e) if skip_bad => out.bad.push((i as u64, e)),
            Err(source) => {
                return Err(FileError::Record {
                    path: path.display().to_string(),
                    record: i as u64,
                    source,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.avro");
        let ev = Event::PriceTick(PriceTick {
            at: 1,
            provider: "aws".into(),
            region: "r".into(),
            zone: None,
            instance_type: "m5.large".into(),
            market: Market::Spot,
            usd_per_hour: 0.02,
        });
        let mut w = EventsWriter::create(&path).unwrap();
        w.append(&ev).unwrap();
        w.append_message(&RecordedMessage {
            topic: "price-tick".into(),
            key: "k".into(),
            payload: vec![1, 2, 3],
        })
        .unwrap();
        w.finish().unwrap();
        assert!(is_events_file(&path));
        let err = read_events(&path, false).unwrap_err().to_string();
        assert!(err.contains("record 1"), "{err}");
        let d = read_events(&path, true).unwrap();
        assert_eq!(d.events, vec![ev]);
        assert_eq!(d.bad.len(), 1);
    }
}
