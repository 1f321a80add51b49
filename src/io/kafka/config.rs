//! Service configuration: plain data, loaded from a TOML file, then
//! environment variables, then command-line flags (later wins). Kept apart
//! from the runtime loop so it can be built, checked and tested without a
//! broker.

use crate::events::avro::EventKind;
use crate::events::topics;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables the service reads, e.g.
/// `PRESCALE_KAFKA_BROKERS`, `PRESCALE_KAFKA_GROUP_ID`,
/// `PRESCALE_KAFKA_TOPICS__PRICE_TICK` (`__` separates nested keys).
pub const ENV_PREFIX: &str = "PRESCALE_KAFKA_";

/// How Avro datums are framed in Kafka message values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// The bare Avro datum (what `prescale produce` writes by default).
    #[default]
    Plain,
    /// Confluent Schema Registry wire format: magic byte 0, 4-byte schema id,
    /// datum. Readers accept any id unless `schema_ids` pins one per topic.
    Confluent,
}

/// Topic names. Defaults follow `events::topics`; `prefix` is prepended to
/// every name that is not set explicitly (handy for tests and for sharing a
/// cluster between deployments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Topics {
    pub prefix: String,
    pub job_submission: Option<String>,
    pub job_completion: Option<String>,
    pub price_tick: Option<String>,
    pub budget_allocation: Option<String>,
    pub spot_signal: Option<String>,
    pub scaling_command: Option<String>,
    pub preemption_command: Option<String>,
    /// Internal topic of project budget use and shares (see
    /// `budget::share`); give it the input topics' partition count, so a
    /// project's records reach the instance that owns its partition.
    pub budget_spend: Option<String>,
    /// Internal topic of the API directory (see `io::kafka::directory`).
    pub api_directory: Option<String>,
    /// Suffix of dead-letter topics: `<input topic><dlq_suffix>`.
    pub dlq_suffix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            prefix: String::new(),
            job_submission: None,
            job_completion: None,
            price_tick: None,
            budget_allocation: None,
            spot_signal: None,
            scaling_command: None,
            preemption_command: None,
            budget_spend: None,
            api_directory: None,
            dlq_suffix: ".dlq".into(),
        }
    }
}

impl Topics {
    fn name(&self, explicit: &Option<String>, default: &str) -> String {
        explicit
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.prefix, default))
    }
    pub fn job_submission(&self) -> String {
        self.name(&self.job_submission, topics::JOB_SUBMISSION)
    }
    pub fn job_completion(&self) -> String {
        self.name(&self.job_completion, topics::JOB_COMPLETION)
    }
    pub fn price_tick(&self) -> String {
        self.name(&self.price_tick, topics::PRICE_TICK)
    }
    pub fn budget_allocation(&self) -> String {
        self.name(&self.budget_allocation, topics::BUDGET_ALLOCATION)
    }
    pub fn spot_signal(&self) -> String {
        self.name(&self.spot_signal, topics::SPOT_SIGNAL)
    }
    pub fn scaling_command(&self) -> String {
        self.name(&self.scaling_command, topics::SCALING_COMMAND)
    }
    pub fn preemption_command(&self) -> String {
        self.name(&self.preemption_command, topics::PREEMPTION_COMMAND)
    }
    pub fn budget_spend(&self) -> String {
        self.name(&self.budget_spend, topics::BUDGET_SPEND)
    }
    pub fn api_directory(&self) -> String {
        self.name(&self.api_directory, topics::API_DIRECTORY)
    }
    /// The input topics every instance reads whole (prices, budget
    /// allocations, spot signals: pool-wide facts), outside the consumer
    /// group's split.
    pub fn broadcast(&self) -> [String; 3] {
        [
            self.price_tick(),
            self.budget_allocation(),
            self.spot_signal(),
        ]
    }
    pub fn dlq(&self, topic: &str) -> String {
        format!("{topic}{}", self.dlq_suffix)
    }

    /// The configured topic carrying each kind of input event.
    pub fn inputs(&self) -> [(EventKind, String); 5] {
        [
            (EventKind::JobSubmitted, self.job_submission()),
            (EventKind::JobCompleted, self.job_completion()),
            (EventKind::PriceTick, self.price_tick()),
            (EventKind::BudgetAllocation, self.budget_allocation()),
            (EventKind::SpotSignal, self.spot_signal()),
        ]
    }

    /// Which kind of event a configured input topic carries.
    pub fn kind_of(&self, topic: &str) -> Option<EventKind> {
        self.inputs()
            .into_iter()
            .find(|(_, t)| t == topic)
            .map(|(k, _)| k)
    }

    /// Map a default topic name (as recorded in events files) to the
    /// configured one.
    pub fn configured(&self, default_topic: &str) -> Option<String> {
        Some(match default_topic {
            topics::JOB_SUBMISSION => self.job_submission(),
            topics::JOB_COMPLETION => self.job_completion(),
            topics::PRICE_TICK => self.price_tick(),
            topics::BUDGET_ALLOCATION => self.budget_allocation(),
            topics::SPOT_SIGNAL => self.spot_signal(),
            topics::SCALING_COMMAND => self.scaling_command(),
            topics::PREEMPTION_COMMAND => self.preemption_command(),
            _ => return None,
        })
    }

    /// Every topic the service reads or writes, with its DLQ twins.
    pub fn all(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (_, t) in self.inputs() {
            v.push(self.dlq(&t));
            v.push(t);
        }
        v.push(self.scaling_command());
        v.push(self.preemption_command());
        v.push(self.dlq(&self.budget_spend()));
        v.push(self.budget_spend());
        v.push(self.dlq(&self.api_directory()));
        v.push(self.api_directory());
        v
    }
}

/// Everything `prescale run`, `produce`, `tail` and `bench kafka` need to
/// talk to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group of `prescale run` instances.
    pub group_id: String,
    pub topics: Topics,
    pub framing: Framing,
    /// Schema ids written in Confluent framing, and, when set, required on
    /// read, keyed by input kind name (`job_submitted`, `price_tick`, ...).
    pub schema_ids: BTreeMap<String, u32>,
    /// Any librdkafka property, passed through verbatim (TLS, SASL,
    /// `fetch.wait.max.ms`, ...). Applied to every client after prescale's
    /// own defaults, so the user always wins.
    pub properties: BTreeMap<String, String>,
    /// Where `prescale run` keeps its snapshots.
    pub checkpoint_dir: PathBuf,
    /// Snapshot at most this often (wall-clock ms) while input flows.
    pub checkpoint_interval_ms: u64,
    /// Partitions for topics that `--create-topics` makes.
    pub partitions: i32,
    /// How long (ms) an event waits for partitions that look idle before it
    /// is released to the engine (see `merge`). 0 favours latency; live
    /// deployments that need replay-identical ordering across partitions
    /// set it above the producers' skew.
    pub merge_idle_ms: u64,
    /// Messages before its resume offset that a restored partition is read
    /// from (and ignored up to it): a broker may answer a fetch from inside
    /// a record batch with the next batch (tansu 0.6 does), and reading
    /// from before shows the merge the partition's continuity. Past this,
    /// the merge seeks back further itself (see `merge::Push::Rewind`);
    /// that seek once stalled on tansu, so keep this above the producers'
    /// batch size (librdkafka's default batch is 10,000 messages).
    pub reread_messages: u32,
    /// Reader threads that take the input partitions' messages off
    /// librdkafka's queues and decode them, so the loop thread only merges
    /// and hands over (see `io::kafka::pipe`); 0: the loop reads and
    /// decodes itself. Unset: [`auto_decode_threads`] (0 on two cores or
    /// fewer, where the hand-over between threads costs more CPU per
    /// message than it saves; the loop thread is the bound only where
    /// other cores are free).
    pub decode_threads: Option<u32>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "prescale".into(),
            topics: Topics::default(),
            framing: Framing::Plain,
            schema_ids: BTreeMap::new(),
            properties: BTreeMap::new(),
            checkpoint_dir: PathBuf::from("prescale-state"),
            checkpoint_interval_ms: 1_000,
            partitions: 3,
            merge_idle_ms: 0,
            reread_messages: super::merge::REREAD,
            decode_threads: None,
        }
    }
}

/// Configuration errors name the source and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("-X {0}: expected key=value")]
    Property(String),
}

/// Split a `-X key=value` argument, as kcat does.
pub fn parse_property(s: &str) -> Result<(String, String), ConfigError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(ConfigError::Property(s.to_string())),
    }
}

/// Flag values that override file and environment (unset flags leave the
/// lower layers alone).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub framing: Option<Framing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_threads: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Load: defaults < TOML file < `PRESCALE_KAFKA_*` environment < flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<Self, ConfigError> {
        let mut f = Figment::from(Serialized::defaults(KafkaConfig::default()));
        if let Some(p) = file {
            f = f.merge(Toml::file_exact(p));
        }
        // The broker script's own variables share the prefix; they are not
        // service settings.
        let env = env.ignore(&["port", "dir", "storage", "wait_s"]);
        f = f.merge(env).merge(Serialized::defaults(overrides));
        f.extract().map_err(|e| ConfigError::Figment(Box::new(e)))
    }

    /// Reader threads of the pipelined path: `decode_threads`, or
    /// [`auto_decode_threads`] for this machine when unset.
    pub fn decode_threads(&self) -> usize {
        match self.decode_threads {
            Some(n) => n as usize,
            None => auto_decode_threads(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            ),
        }
    }

    /// The `schema_ids` key for an input kind.
    pub fn schema_id(&self, kind: EventKind) -> Option<u32> {
        self.schema_ids.get(kind_name(kind)).copied()
    }
}

/// Reader threads by default on a machine with `cores` (CPUs this process
/// may run on): none on two or fewer, where `prescale bench kafka` measures
/// CPU per message over all threads and a reader adds a hand-over per batch
/// (see docs/benchmarks.md); one on three or four cores; two above, where a
/// reader's per-message work (librdkafka's batch serve, decode, header,
/// destroy) is about the loop's own, so two readers keep ahead of one loop
/// thread, and more would only compete with librdkafka's and the decision
/// thread.
pub fn auto_decode_threads(cores: usize) -> usize {
    match cores {
        0..=2 => 0,
        3..=4 => 1,
        _ => 2,
    }
}

/// Stable snake_case name of an input kind (config keys, metrics labels).
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::JobSubmitted => "job_submitted",
        EventKind::JobCompleted => "job_completed",
        EventKind::PriceTick => "price_tick",
        EventKind::BudgetAllocation => "budget_allocation",
        EventKind::SpotSignal => "spot_signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prescale.toml");
        std::fs::write(
            &path,
            r#"
brokers = "file:1"
group_id = "from-file"
checkpoint_interval_ms = 7
[topics]
prefix = "t."
price_tick = "prices"
[properties]
"security.protocol" = "SASL_SSL"
"fetch.wait.max.ms" = "100"
"#,
        )
        .unwrap();
        // Environment beats the file; flags beat both.
        let env_vars = [
            ("XTEST_GROUP_ID", "from-env"),
            ("XTEST_BROKERS", "env:2"),
            ("XTEST_PORT", "19092"),
        ];
        for (k, v) in env_vars {
            std::env::set_var(k, v);
        }
        let ov = Overrides {
            brokers: Some("flag:3".into()),
            properties: [("fetch.wait.max.ms".to_string(), "10".to_string())].into(),
            ..Default::default()
        };
        let c = KafkaConfig::load_with_env(Some(&path), &ov, Env::prefixed("XTEST_").split("__"))
            .unwrap();
        for (k, _) in env_vars {
            std::env::remove_var(k);
        }
        assert_eq!(c.brokers, "flag:3");
        assert_eq!(c.group_id, "from-env");
        assert_eq!(c.checkpoint_interval_ms, 7);
        assert_eq!(c.topics.price_tick(), "prices");
        assert_eq!(c.topics.job_submission(), "t.job-submission");
        assert_eq!(c.topics.dlq("t.job-submission"), "t.job-submission.dlq");
        assert_eq!(c.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.properties["fetch.wait.max.ms"], "10");
        assert_eq!(c.topics.kind_of("prices"), Some(EventKind::PriceTick));
        assert_eq!(c.topics.kind_of("nope"), None);
    }

    #[test]
    fn decode_threads_come_from_file_env_and_flags_else_the_cores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prescale.toml");
        std::fs::write(&path, "decode_threads = 3\n").unwrap();
        let none = Overrides::default();
        let c = KafkaConfig::load_with_env(Some(&path), &none, Env::prefixed("NOPE_")).unwrap();
        assert_eq!(c.decode_threads(), 3);
        std::env::set_var("XDT_DECODE_THREADS", "0");
        let c = KafkaConfig::load_with_env(Some(&path), &none, Env::prefixed("XDT_")).unwrap();
        std::env::remove_var("XDT_DECODE_THREADS");
        assert_eq!(c.decode_threads, Some(0));
        let flag = Overrides {
            decode_threads: Some(2),
            ..Default::default()
        };
        let c = KafkaConfig::load_with_env(Some(&path), &flag, Env::prefixed("NOPE_")).unwrap();
        assert_eq!(c.decode_threads(), 2);
        let auto = KafkaConfig::default().decode_threads();
        assert_eq!(
            auto,
            auto_decode_threads(std::thread::available_parallelism().unwrap().get())
        );
        let by_cores: Vec<usize> = [1, 2, 3, 4, 8, 64].map(auto_decode_threads).to_vec();
        assert_eq!(by_cores, [0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn bad_file_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "checkpoint_interval_ms = \"soon\"\n").unwrap();
        let e =
            KafkaConfig::load_with_env(Some(&path), &Overrides::default(), Env::prefixed("NOPE_"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("checkpoint_interval_ms"), "{e}");
    }

    #[test]
    fn properties_parse_like_kcat() {
        assert_eq!(
            parse_property("sasl.password=a=b").unwrap(),
            ("sasl.password".to_string(), "a=b".to_string())
        );
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }
}
