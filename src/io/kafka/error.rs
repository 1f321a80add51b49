//! Errors of the Kafka adapter, each saying whether trying again can help
//! ([`Retry`]), so whoever runs the service (a supervisor restarting it, an
//! operator reading the log) knows whether to wait or to fix something.

use super::port::BrainError;
use rdkafka::error::KafkaError as RdError;
use rdkafka::types::RDKafkaErrorCode as Code;

/// Whether an error may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The broker or the network: the same call (or a restart, which
    /// resumes from the last snapshot) may succeed once it is back.
    Later,
    /// The configuration, the input or the program: trying again fails
    /// the same way until something is changed.
    Never,
}

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Retry::Later => {
                "transient: a restart resumes from the last snapshot once the broker answers"
            }
            Retry::Never => "permanent: restarting alone will not help",
        })
    }
}

/// Errors of the Kafka adapter.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] RdError),
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("{failed} message(s) could not be delivered; last error: {last}")]
    Delivery { failed: u64, last: String },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("engine: {0}")]
    Brain(#[from] BrainError),
    /// The decision thread or the checkpoint writer died (a panic: a bug,
    /// see the log) or could not be started.
    #[error("{0}")]
    Thread(String),
    #[error(transparent)]
    Codec(#[from] crate::events::avro::CodecError),
}

impl KafkaError {
    /// Whether trying again can help (see [`Retry`]).
    pub fn retry(&self) -> Retry {
        match self {
            KafkaError::Client(e) => client_retry(e),
            // Undelivered after the publisher's own retries: the broker is
            // down or unreachable.
            KafkaError::Delivery { .. } => Retry::Later,
            KafkaError::Checkpoint(crate::checkpoint::CheckpointError::Io { .. }) => Retry::Later,
            KafkaError::Checkpoint(_)
            | KafkaError::Topic { .. }
            | KafkaError::Brain(_)
            | KafkaError::Thread(_)
            | KafkaError::Codec(_) => Retry::Never,
        }
    }
}

/// librdkafka's error codes that mean "not now" rather than "not so".
fn client_retry(e: &RdError) -> Retry {
    match e.rdkafka_error_code() {
        Some(
            Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::MessageTimedOut
            | Code::OperationTimedOut
            | Code::RequestTimedOut
            | Code::BrokerNotAvailable
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::NetworkException
            | Code::CoordinatorNotAvailable
            | Code::NotCoordinator
            | Code::CoordinatorLoadInProgress
            | Code::QueueFull
            | Code::RebalanceInProgress
            | Code::Resolve,
        ) => Retry::Later,
        _ => Retry::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_that_is_down_is_worth_waiting_for_a_bad_topic_is_not() {
        let down = KafkaError::Client(RdError::MetadataFetch(Code::AllBrokersDown));
        assert_eq!(down.retry(), Retry::Later);
        let timeout = KafkaError::Client(RdError::Seek("x".into()));
        assert_eq!(timeout.retry(), Retry::Never);
        let undelivered = KafkaError::Delivery {
            failed: 3,
            last: "Local: Message timed out".into(),
        };
        assert_eq!(undelivered.retry(), Retry::Later);
        let topic = KafkaError::Topic {
            topic: "t".into(),
            message: "has no partitions".into(),
        };
        assert_eq!(topic.retry(), Retry::Never);
        let stopped = KafkaError::Thread("the decision thread stopped".into());
        assert_eq!(stopped.retry(), Retry::Never);
    }
}
