//! Message values ⇄ events/commands, with the configured framing. Pure: no
//! client, so the dead-letter decisions are unit-tested.

use super::config::{Framing, KafkaConfig};
use crate::events::avro::{
    confluent_frame, confluent_unframe, decode_event, decode_preemption, decode_scaling,
    encode_command, encode_event, CodecError, EventKind,
};
use crate::events::{Command, Event};

/// Header names prescale writes. Actuators and tools can rely on them.
pub mod headers {
    /// Producer-side sequence number (position in the replayed file). The
    /// merger breaks event-time ties with it so a replay orders equal-time
    /// events exactly as the file did.
    pub const SEQ: &str = "prescale-seq";
    /// [`SEQ`] for librdkafka's header lookup.
    pub const SEQ_C: &std::ffi::CStr = c"prescale-seq";
    /// Command id on command messages (also inside the value), so actuators
    /// can de-duplicate without decoding.
    pub const COMMAND_ID: &str = "prescale-command-id";
    /// Dead-letter headers.
    pub const DLQ_ERROR: &str = "prescale-error";
    pub const DLQ_TOPIC: &str = "prescale-source-topic";
    pub const DLQ_PARTITION: &str = "prescale-source-partition";
    pub const DLQ_OFFSET: &str = "prescale-source-offset";
    /// Produce timestamp (ms) of the input message that triggered a command.
    pub const TRIGGER_TS: &str = "prescale-trigger-ts";
    /// Instance that published a command (diagnostics only).
    pub const INSTANCE: &str = "prescale-instance";
}

/// The producer sequence a [`headers::SEQ`] header value carries (decimal
/// text); `None` when it is not one.
pub fn seq_value(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Decode an input message value of a known kind.
pub fn decode_input(cfg: &KafkaConfig, kind: EventKind, value: &[u8]) -> Result<Event, CodecError> {
    let datum = match cfg.framing {
        Framing::Plain => value,
        Framing::Confluent => {
            let (id, datum) = confluent_unframe(value)?;
            if let Some(want) = cfg.schema_id(kind) {
                if id != want {
                    return Err(CodecError::Framing(format!(
                        "schema id {id} is not the configured {want}"
                    )));
                }
            }
            datum
        }
    };
    decode_event(kind, datum)
}

/// Frame an already-encoded datum of `kind` for the wire.
pub fn frame_input(cfg: &KafkaConfig, kind: EventKind, datum: Vec<u8>) -> Vec<u8> {
    match cfg.framing {
        Framing::Plain => datum,
        Framing::Confluent => confluent_frame(cfg.schema_id(kind).unwrap_or(0), &datum),
    }
}

/// Encode an input event for its topic.
pub fn encode_input(cfg: &KafkaConfig, kind: EventKind, ev: &Event) -> Result<Vec<u8>, CodecError> {
    Ok(frame_input(cfg, kind, encode_event(ev)?))
}

/// Command schema ids (Confluent framing) live under these keys.
const SCALING_KEY: &str = "scaling_command";
const PREEMPTION_KEY: &str = "preemption_command";

/// Encode a command for its topic.
pub fn encode_output(cfg: &KafkaConfig, c: &Command) -> Result<Vec<u8>, CodecError> {
    let datum = encode_command(c)?;
    Ok(match cfg.framing {
        Framing::Plain => datum,
        Framing::Confluent => {
            let key = match c {
                Command::Scaling(_) => SCALING_KEY,
                Command::Preemption(_) => PREEMPTION_KEY,
            };
            confluent_frame(cfg.schema_ids.get(key).copied().unwrap_or(0), &datum)
        }
    })
}

/// Decode a command message from a scaling (`scaling == true`) or preemption
/// topic.
pub fn decode_output(
    cfg: &KafkaConfig,
    scaling: bool,
    value: &[u8],
) -> Result<Command, CodecError> {
    let datum = match cfg.framing {
        Framing::Plain => value,
        Framing::Confluent => confluent_unframe(value)?.1,
    };
    Ok(if scaling {
        Command::Scaling(decode_scaling(datum)?)
    } else {
        Command::Preemption(decode_preemption(datum)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;

    fn tick() -> Event {
        Event::PriceTick(PriceTick {
            at: 10,
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: None,
            instance_type: "m5.large".into(),
            market: Market::Spot,
            usd_per_hour: 0.03,
        })
    }

    #[test]
    fn the_c_header_name_is_the_header_name() {
        assert_eq!(headers::SEQ_C.to_str(), Ok(headers::SEQ));
    }

    #[test]
    fn plain_and_confluent_round_trip() {
        let mut cfg = KafkaConfig::default();
        let b = encode_input(&cfg, EventKind::PriceTick, &tick()).unwrap();
        assert_eq!(
            decode_input(&cfg, EventKind::PriceTick, &b).unwrap(),
            tick()
        );
        cfg.framing = Framing::Confluent;
        cfg.schema_ids.insert("price_tick".into(), 7);
        let b = encode_input(&cfg, EventKind::PriceTick, &tick()).unwrap();
        assert_eq!(&b[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(
            decode_input(&cfg, EventKind::PriceTick, &b).unwrap(),
            tick()
        );
        // A pinned id rejects other schemas' records.
        cfg.schema_ids.insert("price_tick".into(), 8);
        let e = decode_input(&cfg, EventKind::PriceTick, &b).unwrap_err();
        assert!(e.to_string().contains("schema id 7"), "{e}");
    }

    #[test]
    fn wrong_kind_and_garbage_are_errors() {
        let cfg = KafkaConfig::default();
        let b = encode_input(&cfg, EventKind::PriceTick, &tick()).unwrap();
        assert!(decode_input(&cfg, EventKind::JobSubmitted, &b).is_err());
        assert!(decode_input(&cfg, EventKind::JobSubmitted, b"not avro").is_err());
    }
}
