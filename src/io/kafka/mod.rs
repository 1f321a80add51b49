//! The Kafka adapter: live topics in, commands out.
//!
//! - [`config`]: what to connect to and how (plain data; file < env < flags).
//! - [`codec`]: message values ⇄ events/commands (plain Avro or Confluent
//!   framing) and the header names prescale uses.
//! - [`merge`]: the deterministic event-time merge across partitions that
//!   lets a Kafka replay give exactly a file replay's commands; [`split`]:
//!   a queue per partition, so the merge reads no further ahead than it
//!   needs; [`pipe`]: reader threads that take and decode those queues'
//!   messages off the loop thread (`decode_threads`).
//! - [`client`], [`publish`]: rdkafka plumbing.
//! - [`observe`], [`extras`], [`lag`]: what the service reports (prediction
//!   store, metrics) and periodic retraining, around the engine.
//! - [`port`]: the decision core as the loop sees it ([`port::Brain`],
//!   lifecycle only, and its [`port::BudgetShare`] facet); imports nothing
//!   of the adapter.
//! - [`spend`]: project budgets shared between instances over an internal
//!   topic (the budget exchange).
//! - [`service`]: the `prescale run` loop, one `tokio::select!` over the
//!   consumers, the decisions, a timer and a control channel; each job it
//!   dispatches lives in a file of its own: `rebalance` (assignment and
//!   rebalance messages from the group consumer's callbacks), `ingest`
//!   (poll, decode, dead letters, rewinds), `handoff` (the per-assignment
//!   state: merge → decision thread), `outbox` (publishing decided
//!   commands), `checkpoints` (snapshots and offset commits); `worker`:
//!   the engine on a thread of its own, fed in order by the loop.
//!   Dependencies point one way: `service` → the parts → `worker` /
//!   `spend` → `port`.

pub mod brain;
mod checkpoints;
pub mod client;
pub mod codec;
pub mod config;
pub mod directory;
mod error;
pub mod extras;
mod handoff;
mod ingest;
pub mod lag;
pub mod merge;
pub mod observe;
mod outbox;
mod pipe;
pub mod port;
pub mod produce;
pub mod publish;
mod rebalance;
pub mod service;
pub mod spend;
pub mod split;
mod stats;
mod worker;

pub use config::KafkaConfig;
pub use error::{KafkaError, Retry};
