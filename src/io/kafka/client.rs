//! Building rdkafka clients from [`KafkaConfig`], creating topics, and the
//! one question the merger asks of the consumer: "is this partition caught
//! up?".

use super::config::KafkaConfig;
use super::KafkaError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use std::ffi::{CStr, CString};
use std::time::Duration;

/// Client settings prescale chooses; every `-X`/`properties` entry is applied
/// afterwards and wins.
pub fn client_config(cfg: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Producer settings: idempotent (no duplicates from librdkafka's own
/// retries), small linger so commands leave quickly.
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    client_config(
        cfg,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "1"),
            ("message.timeout.ms", "60000"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
}

/// Consumer settings: offsets are managed by prescale (committed only after
/// a snapshot), so auto-commit and auto-store are off.
pub fn consumer_config(cfg: &KafkaConfig, group: Option<&str>) -> ClientConfig {
    let mut c = client_config(
        cfg,
        &[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "true"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            // The rebalance timeout: how long the coordinator waits for a
            // member (e.g. one killed with SIGKILL) to rejoin. The loop polls
            // continuously, so a short bound is safe and speeds recovery.
            ("max.poll.interval.ms", "30000"),
            // Eager rebalancing: an instance gives up its whole assignment and
            // receives a new one, matching the per-assignment snapshots.
            ("partition.assignment.strategy", "range"),
            // librdkafka stops fetching a partition for this long (1 s by
            // default) once its local queue holds `queued.min.messages`; a
            // loop that drains the queue faster than the broker refills it,
            // as when catching up on a backlog, then stands still for the
            // rest of the second (most of a 300 k message replay).
            ("fetch.queue.backoff.ms", "5"),
        ],
    );
    match group {
        Some(g) => {
            if !cfg.properties.contains_key("group.id") {
                c.set("group.id", g);
            }
        }
        None => {
            // librdkafka wants a group id even for manual assignment; it is
            // never joined since nothing subscribes or commits with it.
            c.set("group.id", format!("{}-assign", cfg.group_id));
        }
    }
    c
}

/// Create topics that do not exist yet (tansu does not auto-create).
pub async fn ensure_topics(cfg: &KafkaConfig, names: &[(String, i32)]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, &[]).create()?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in res {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Topic {
                    topic: name,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Partition ids of a topic, from the broker's metadata.
pub fn partitions_of<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let md = client.fetch_metadata(Some(topic), timeout)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| KafkaError::Topic {
            topic: topic.to_string(),
            message: "not in the broker's metadata".into(),
        })?;
    if let Some(e) = t.error() {
        return Err(KafkaError::Topic {
            topic: topic.to_string(),
            message: format!("{:?}", RDKafkaErrorCode::from(e)),
        });
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(KafkaError::Topic {
            topic: topic.to_string(),
            message: "has no partitions (create it first: scripts/kafka.sh topics)".into(),
        });
    }
    Ok(ids)
}

/// The low and high watermarks librdkafka last saw for a partition in fetch
/// responses (no network round trip). `None` before the first fetch.
pub fn cached_watermarks<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    cached_watermarks_c(client, &CString::new(topic).ok()?, partition)
}

/// [`cached_watermarks`] for a topic name already converted for C (hot loops).
pub fn cached_watermarks_c<C: ClientContext>(
    client: &Client<C>,
    topic: &CStr,
    partition: i32,
) -> Option<(i64, i64)> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: `native_ptr` is a live rd_kafka_t owned by `client`; the topic
    // string outlives the call; librdkafka only reads it and writes the two
    // out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return None;
    }
    Some((low, high))
}

/// Whether a consumer has read everything the broker held at its last fetch
/// of this partition. `next` is the next offset the consumer will return
/// (`None`: it has returned nothing yet).
pub fn caught_up<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partition: i32,
    next: Option<i64>,
) -> bool {
    match CString::new(topic) {
        Ok(t) => caught_up_c(client, &t, partition, next),
        Err(_) => false,
    }
}

/// [`caught_up`] for a topic name already converted for C (hot loops).
pub fn caught_up_c<C: ClientContext>(
    client: &Client<C>,
    topic: &CStr,
    partition: i32,
    next: Option<i64>,
) -> bool {
    match cached_watermarks_c(client, topic, partition) {
        None => false,
        Some((low, high)) => match next {
            Some(n) => n >= high,
            None => high == 0 || (low >= 0 && low >= high),
        },
    }
}
