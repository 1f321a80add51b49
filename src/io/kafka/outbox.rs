//! Publishing: the commands the decision thread decided, in the order it
//! decided them, to the command topics (keyed by compute environment, the
//! command id and the instance in headers), and the events it refused, to
//! their topic's dead-letter topic.

use super::codec::{encode_input, encode_output, headers};
use super::publish::Publisher;
use super::stats::Stats;
use super::worker::{Decided, RefusedAt};
use super::{KafkaConfig, KafkaError};
use crate::events::avro::EventKind;
use crate::events::{Command, Event};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// Where decided commands go.
pub(super) struct Sink<'a> {
    pub(super) cfg: &'a KafkaConfig,
    pub(super) publisher: &'a Publisher,
    scaling: String,
    preemption: String,
    instance: Vec<u8>,
    pub(super) stats: &'a Stats,
}

impl<'a> Sink<'a> {
    pub(super) fn new(
        cfg: &'a KafkaConfig,
        publisher: &'a Publisher,
        instance: &str,
        stats: &'a Stats,
    ) -> Self {
        Sink {
            cfg,
            publisher,
            scaling: cfg.topics.scaling_command(),
            preemption: cfg.topics.preemption_command(),
            instance: instance.as_bytes().to_vec(),
            stats,
        }
    }

    /// Publish and clear `out`. `trigger_ts` is the produce timestamp of the
    /// input message whose arrival made the engine decide; it travels as a
    /// header so latency can be measured end to end.
    pub(super) fn publish(
        &self,
        out: &mut Vec<Command>,
        trigger_ts: Option<i64>,
    ) -> Result<(), KafkaError> {
        let ts = trigger_ts.map(|t| t.to_string());
        for c in out.drain(..) {
            let topic = match c {
                Command::Scaling(_) => &self.scaling,
                Command::Preemption(_) => &self.preemption,
            };
            let value = encode_output(self.cfg, &c)?;
            let mut h: Vec<(&str, &[u8])> = vec![
                (headers::COMMAND_ID, c.id().as_bytes()),
                (headers::INSTANCE, &self.instance),
            ];
            if let Some(ts) = &ts {
                h.push((headers::TRIGGER_TS, ts.as_bytes()));
            }
            self.publisher
                .send(topic, c.key().as_bytes(), &value, &h, None)?;
            self.stats.commands.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::metrics()
                .inc_decision(c.key(), crate::store::points::command_kind(&c));
        }
        Ok(())
    }

    /// Dead-letter an event the brain refused (it contradicts one applied
    /// before): re-encoded as its topic carries it, with the reason and its
    /// origin in the headers, as for a message that does not decode. A
    /// replay from a snapshot taken before it refuses it again, so like
    /// every dead letter it arrives at least once.
    fn dead_letter_refused(&self, r: &RefusedAt) -> Result<(), KafkaError> {
        let kind = match r.event {
            Event::JobSubmitted(_) => EventKind::JobSubmitted,
            Event::JobCompleted(_) => EventKind::JobCompleted,
            Event::PriceTick(_) => EventKind::PriceTick,
            Event::BudgetAllocation(_) => EventKind::BudgetAllocation,
            Event::SpotSignal(_) => EventKind::SpotSignal,
        };
        let value = encode_input(self.cfg, kind, &r.event)?;
        let (partition, offset) = (r.partition.to_string(), r.offset.to_string());
        tracing::warn!(
            topic = %r.topic,
            partition = r.partition,
            offset = r.offset,
            error = %r.reason,
            "dead-lettered a conflicting duplicate"
        );
        self.publisher.send(
            &self.cfg.topics.dlq(&r.topic),
            r.event.key().as_bytes(),
            &value,
            &[
                (headers::DLQ_ERROR, r.reason.as_bytes()),
                (headers::DLQ_TOPIC, r.topic.as_bytes()),
                (headers::DLQ_PARTITION, partition.as_bytes()),
                (headers::DLQ_OFFSET, offset.as_bytes()),
            ],
            None,
        )?;
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics().inc_dlq(&r.topic);
        Ok(())
    }
}

/// Decided commands on their way out: the decision thread's channel, and
/// where they are published.
pub(super) struct Outbox<'a> {
    pub(super) decided: mpsc::UnboundedReceiver<Decided>,
    pub(super) sink: Sink<'a>,
}

impl Outbox<'_> {
    /// Publish one event's decisions, nested under its decision tick, or
    /// dead-letter the event the brain refused.
    pub(super) fn publish(&self, mut d: Decided) -> Result<(), KafkaError> {
        if let Some(r) = d.refused.take() {
            self.sink.dead_letter_refused(&r)?;
        }
        if d.commands.is_empty() {
            return Ok(());
        }
        let _t = d.span.enter();
        let _p = crate::telemetry::spans::publish(d.commands.len()).entered();
        self.sink.publish(&mut d.commands, d.trigger_ts)
    }

    /// Publish every decision the thread has sent so far.
    pub(super) fn publish_ready(&mut self) -> Result<(), KafkaError> {
        while let Ok(d) = self.decided.try_recv() {
            self.publish(d)?;
        }
        Ok(())
    }
}
