//! Publishing recorded messages (events files, imported traces) to the input
//! topics, as `prescale produce` does.

use super::codec::{frame_input, headers};
use super::config::KafkaConfig;
use super::publish::Publisher;
use super::KafkaError;
use crate::events::avro::EventKind;
use crate::import::events_file::RecordedMessage;
use std::time::{Duration, Instant};

/// Pacing of a replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    AsFastAsPossible,
    /// Messages per second, evenly spaced.
    Rate(f64),
}

/// Publish `msgs` in order. Each message keeps its key (jobs: compute
/// environment) and carries its position as the `prescale-seq` header
/// (starting at `first_seq`), which the service's merge uses to order
/// equal-time events exactly as the file did. Returns the number published.
pub fn publish_messages(
    cfg: &KafkaConfig,
    publisher: &Publisher,
    msgs: &[RecordedMessage],
    first_seq: u64,
    pace: Pace,
) -> Result<usize, KafkaError> {
    let started = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let topic = cfg
            .topics
            .configured(&m.topic)
            .ok_or_else(|| KafkaError::Topic {
                topic: m.topic.clone(),
                message: format!("record {i}: not one of prescale's topics"),
            })?;
        let payload = match EventKind::from_default_topic(&m.topic) {
            Ok(k) => frame_input(cfg, k, m.payload.clone()),
            Err(_) => m.payload.clone(),
        };
        if let Pace::Rate(rate) = pace {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let seq = (first_seq + i as u64).to_string();
        publisher.send(
            &topic,
            m.key.as_bytes(),
            &payload,
            &[(headers::SEQ, seq.as_bytes())],
            None,
        )?;
    }
    Ok(msgs.len())
}

/// Publish one budget allocation on the budget-allocation topic, keyed by
/// its account, as an input producer would: every instance's engine
/// applies it in order (the HTTP API of `prescale run --api-listen`).
pub fn publish_allocation(
    cfg: &KafkaConfig,
    publisher: &Publisher,
    a: &crate::events::BudgetAllocation,
) -> Result<(), KafkaError> {
    let ev = crate::events::Event::BudgetAllocation(a.clone());
    let value = super::codec::encode_input(cfg, EventKind::BudgetAllocation, &ev)?;
    publisher.send(
        &cfg.topics.budget_allocation(),
        ev.key().as_bytes(),
        &value,
        &[],
        None,
    )
}
