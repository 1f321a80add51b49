//! The API directory: which instance of a group holds which compute
//! environments, and where its HTTP API listens.
//!
//! Instances of one group split the environments between them by their job
//! partitions, so a request about an environment can reach an instance that
//! does not hold it. Each `prescale run --api-listen` instance therefore
//! publishes a small JSON record ([`Entry`]) to the internal topic
//! `prescale.api-directory`, keyed by its name, every [`PUBLISH_EVERY`]: its
//! group, its advertised API address and the environments its engine holds;
//! and one with `left: true` when it stops. Every instance reads the topic
//! whole and keeps the newest record per instance of its own group
//! ([`Directory`]), so it can say who holds an environment it does not.
//!
//! A record is trusted for [`STALE_AFTER`] from its own timestamp, judged
//! against this host's wall clock (the hosts of one deployment are assumed
//! to keep NTP time): an instance that stopped publishing (killed, cut off)
//! is not named after that, since its environments are about to move.
//! Records that do not parse are dead-lettered to the topic's dead-letter
//! twin (`topics.dlq`) with the reason, counted, and skipped.

use super::client::{consumer_config, partitions_of};
use super::publish::Publisher;
use super::{KafkaConfig, KafkaError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;
use tokio::sync::watch;

/// How often an instance publishes its record.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How long a record is believed: three missed periods, well inside the
/// group's session timeout (10 s) after which the environments move.
pub const STALE_AFTER: Duration = Duration::from_secs(6);

/// One instance's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub instance: String,
    pub group: String,
    /// Where its API answers (`http://host:port`), if it serves one.
    pub api: Option<String>,
    /// The environments its engine holds, sorted.
    pub environments: Vec<String>,
    /// When the record was written (Unix ms, the writer's wall clock).
    pub at_ms: i64,
    /// The instance stopped; it holds nothing any more.
    #[serde(default)]
    pub left: bool,
}

/// The newest record of every instance of one group, and what was refused.
#[derive(Debug)]
pub struct Directory {
    group: String,
    me: String,
    entries: RwLock<BTreeMap<String, Entry>>,
    refused: AtomicU64,
}

impl Directory {
    /// The directory of `group`, as seen by instance `me` (never named as
    /// another environment's holder).
    pub fn new(group: &str, me: &str) -> Self {
        Self {
            group: group.to_string(),
            me: me.to_string(),
            entries: RwLock::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// Take a record read from the topic: the newest per instance wins (a
    /// record replayed from the topic's start never undoes a newer one);
    /// other groups' records are ignored.
    pub fn apply(&self, e: Entry) {
        if e.group != self.group {
            return;
        }
        let mut m = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match m.get(&e.instance) {
            Some(old) if old.at_ms > e.at_ms => {}
            _ => {
                m.insert(e.instance.clone(), e);
            }
        }
    }

    /// Another live instance whose newest record lists `env`, at `now_ms`.
    pub fn holder_of(&self, env: &str, now_ms: i64) -> Option<Entry> {
        let fresh_from = now_ms - STALE_AFTER.as_millis() as i64;
        let m = self.entries.read().unwrap_or_else(|p| p.into_inner());
        m.values()
            .filter(|e| e.instance != self.me && !e.left && e.at_ms >= fresh_from)
            .filter(|e| {
                e.environments
                    .binary_search_by(|x| x.as_str().cmp(env))
                    .is_ok()
            })
            .max_by_key(|e| e.at_ms)
            .cloned()
    }

    /// Records refused as unreadable so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// What one instance publishes about itself.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    pub topic: String,
    pub instance: String,
    pub group: String,
    /// The API address to advertise.
    pub api: Option<String>,
}

/// Publish this instance's record every [`PUBLISH_EVERY`] (the environments
/// from `environments`, `None` while it holds no engine) and read everyone's
/// into `dir`, until `stop` turns true; then publish that it left.
pub async fn run<F, Fut>(
    kafka: &KafkaConfig,
    cfg: &DirectoryConfig,
    dir: &Directory,
    mut environments: F,
    mut stop: watch::Receiver<bool>,
) -> Result<(), KafkaError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<Vec<String>>>,
{
    let publisher = Publisher::new(kafka)?;
    // The end of the topic is not news here (and librdkafka would log it
    // as an error).
    let reader: StreamConsumer = consumer_config(kafka, None)
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions_of(reader.client(), &cfg.topic, Duration::from_secs(10))? {
        tpl.add_partition_offset(&cfg.topic, p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let dlq = kafka.topics.dlq(&cfg.topic);
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = reader.recv() => match m {
                Ok(m) => read_one(&publisher, dir, &dlq, m.key(), m.payload()),
                Err(e) => tracing::warn!(error = %e, topic = %cfg.topic, "api directory: read failed"),
            },
            _ = tick.tick() => {
                if let Some(envs) = environments().await {
                    publish(&publisher, cfg, envs, false)?;
                }
            }
            _ = stop.changed() => break,
        }
    }
    publish(&publisher, cfg, Vec::new(), true)?;
    publisher.flush(Duration::from_secs(5))
}

fn publish(
    p: &Publisher,
    cfg: &DirectoryConfig,
    mut environments: Vec<String>,
    left: bool,
) -> Result<(), KafkaError> {
    environments.sort();
    environments.dedup();
    let e = Entry {
        instance: cfg.instance.clone(),
        group: cfg.group.clone(),
        api: cfg.api.clone(),
        environments,
        at_ms: chrono::Utc::now().timestamp_millis(),
        left,
    };
    let body = serde_json::to_vec(&e).expect("an entry serialises");
    p.send(&cfg.topic, e.instance.as_bytes(), &body, &[], None)
}

/// Apply one record, or dead-letter it with the reason.
fn read_one(p: &Publisher, dir: &Directory, dlq: &str, key: Option<&[u8]>, body: Option<&[u8]>) {
    match serde_json::from_slice::<Entry>(body.unwrap_or_default()) {
        Ok(e) => dir.apply(e),
        Err(err) => {
            dir.refused.fetch_add(1, Ordering::Relaxed);
            let reason = format!("api directory record: {err}");
            tracing::warn!(dlq, %reason, "dead-lettered");
            let h: [(&str, &[u8]); 1] = [(super::codec::headers::DLQ_ERROR, reason.as_bytes())];
            if let Err(e) = p.send(
                dlq,
                key.unwrap_or_default(),
                body.unwrap_or_default(),
                &h,
                None,
            ) {
                tracing::warn!(error = %e, "api directory: dead letter not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: &str, envs: &[&str], at_ms: i64) -> Entry {
        Entry {
            instance: instance.into(),
            group: "g".into(),
            api: Some(format!("http://{instance}:8080")),
            environments: envs.iter().map(|s| s.to_string()).collect(),
            at_ms,
            left: false,
        }
    }

    #[test]
    fn names_the_fresh_holder_never_itself_nor_a_stale_or_departed_one() {
        let d = Directory::new("g", "a");
        d.apply(entry("a", &["ce-1"], 1_000));
        d.apply(entry("b", &["ce-2", "ce-3"], 1_000));
        assert_eq!(d.holder_of("ce-3", 2_000).unwrap().instance, "b");
        assert!(d.holder_of("ce-1", 2_000).is_none(), "itself");
        assert!(d.holder_of("ce-9", 2_000).is_none(), "nobody");
        let stale = 1_000 + STALE_AFTER.as_millis() as i64 + 1;
        assert!(d.holder_of("ce-3", stale).is_none(), "stale");
        d.apply(Entry {
            left: true,
            ..entry("b", &[], 3_000)
        });
        assert!(d.holder_of("ce-3", 3_000).is_none(), "left");
    }

    #[test]
    fn an_older_record_read_later_does_not_undo_a_newer_one_and_other_groups_are_ignored() {
        let d = Directory::new("g", "a");
        d.apply(entry("b", &["ce-2"], 5_000));
        d.apply(entry("b", &["ce-7"], 4_000));
        assert_eq!(d.holder_of("ce-2", 5_500).unwrap().at_ms, 5_000);
        assert!(d.holder_of("ce-7", 5_500).is_none());
        d.apply(Entry {
            group: "other".into(),
            ..entry("c", &["ce-2"], 5_400)
        });
        assert_eq!(d.holder_of("ce-2", 5_500).unwrap().instance, "b");
    }

    #[test]
    fn an_environment_moved_to_another_instance_is_named_there() {
        let d = Directory::new("g", "a");
        d.apply(entry("b", &["ce-2"], 1_000));
        d.apply(entry("c", &["ce-2"], 2_000));
        d.apply(entry("b", &[], 2_500));
        assert_eq!(d.holder_of("ce-2", 3_000).unwrap().instance, "c");
    }
}
