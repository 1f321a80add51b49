//! The Kafka adapter: live topics in, commands out.
//!
//! - [`config`]: what to connect to and how (plain data; file < env < flags).
//! - [`codec`]: message values ⇄ events/commands (plain Avro or Confluent
//!   framing) and the header names prescale uses.
//! - [`merge`]: the deterministic event-time merge across partitions that
//!   lets a Kafka replay give exactly a file replay's commands; [`split`]:
//!   a queue per partition, so the merge reads no further ahead than it
//!   needs.
//! - [`client`], [`publish`]: rdkafka plumbing.
//! - [`observe`], [`extras`], [`lag`]: what the service reports (prediction
//!   store, metrics) and periodic retraining, around the engine.
//! - [`spend`]: project budgets shared between instances over an internal
//!   topic.
//! - [`service`]: the `prescale run` loop (consume → decode → merge →
//!   publish, with dead letters, checkpoints and rebalances); `worker`:
//!   the engine on a thread of its own, fed in order by the loop.

pub mod brain;
pub mod client;
pub mod codec;
pub mod config;
pub mod extras;
pub mod lag;
pub mod merge;
pub mod observe;
pub mod produce;
pub mod publish;
pub mod service;
pub mod spend;
pub mod split;
mod worker;

pub use config::KafkaConfig;

/// Errors of the Kafka adapter.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("{failed} message(s) could not be delivered; last error: {last}")]
    Delivery { failed: u64, last: String },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Codec(#[from] crate::events::avro::CodecError),
}
