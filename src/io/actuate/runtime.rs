//! The Kafka side of every actuator: one `tokio::select!` loop over command
//! messages, the reconcile timer and the shutdown channel.
//!
//! Per message: decode (bad → `<topic>.dlq` with the reason) → not mapped →
//! dead letter → duplicate or stale by the [`Ledger`] → skip (counted) →
//! apply, retrying transient errors with exponential backoff up to
//! `max_attempts` (then dead letter, so one stuck command never blocks the
//! ones behind it) → ledger saved → offset committed.

use super::{ActuateError, Actuator, Ledger, Verdict};
use crate::events::{Command, PreemptionCommand, ScalingCommand};
use crate::io::kafka::client::{consumer_config, ensure_topics, partitions_of};
use crate::io::kafka::codec::{decode_output, headers};
use crate::io::kafka::publish::Publisher;
use crate::io::kafka::KafkaConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{interval, sleep, sleep_until, Instant, MissedTickBehavior};

/// Settings of the runtime, shared by every kind of actuator.
#[derive(Debug, Clone)]
pub struct ActuateConfig {
    pub kafka: KafkaConfig,
    /// Consumer group (its own, apart from `prescale run`'s).
    pub group: String,
    /// Ledger file; `None` keeps it in memory (dry runs).
    pub ledger: Option<PathBuf>,
    pub reconcile_interval: Duration,
    /// Attempts per command for transient errors before it is dead-lettered.
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub dry_run: bool,
    /// Exit once every assigned partition is read to its end and nothing
    /// arrived for this long (replays and tests); `None`: run until stopped.
    pub exit_when_idle: Option<Duration>,
}

impl ActuateConfig {
    pub fn new(kafka: KafkaConfig, kind: &str) -> Self {
        ActuateConfig {
            kafka,
            group: format!("prescale-actuate-{kind}"),
            ledger: Some(PathBuf::from(format!("prescale-actuate-{kind}.ledger"))),
            reconcile_interval: Duration::from_secs(60),
            max_attempts: 8,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(20),
            dry_run: false,
            exit_when_idle: None,
        }
    }
}

/// What a run did, printed as JSON when it ends.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RunSummary {
    pub applied_scaling: u64,
    pub applied_preemption: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub dead_lettered: u64,
    pub retries: u64,
    pub drift_reapplied: u64,
    pub reconcile_errors: u64,
}

/// Why the loop ended early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Actuator(#[from] ActuateError),
    #[error(transparent)]
    Ledger(#[from] super::LedgerError),
    #[error(transparent)]
    Kafka(#[from] crate::io::kafka::KafkaError),
    #[error("kafka: {0}")]
    Client(#[from] RdError),
}

impl RunError {
    /// Whether restarting the actuator as it is could help (a broker that
    /// went away) or the operator must change something first.
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Actuator(e) => e.is_transient(),
            RunError::Ledger(_) => false,
            RunError::Kafka(_) | RunError::Client(_) => true,
        }
    }
}

/// Per partition read from before its committed offset: that offset, below
/// which messages were handled by an earlier run and are passed over.
type ResumeOffsets = BTreeMap<(String, i32), i64>;

struct Loop<A> {
    cfg: ActuateConfig,
    actuator: A,
    ledger: Ledger,
    consumer: StreamConsumer,
    dlq: Publisher,
    scaling_topic: String,
    /// Messages below these offsets were handled by an earlier run.
    resume: ResumeOffsets,
    summary: RunSummary,
}

/// Consume the command topics and apply them through `actuator` until
/// `shutdown` turns true (or, with `exit_when_idle`, the topics are drained).
pub async fn run<A: Actuator>(
    cfg: ActuateConfig,
    mut actuator: A,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunSummary, RunError> {
    actuator.check().await?;
    let ledger = match &cfg.ledger {
        Some(p) if !cfg.dry_run => Ledger::open(p)?,
        _ => Ledger::in_memory(),
    };
    let topics = &cfg.kafka.topics;
    let (scaling_topic, preemption_topic) = (topics.scaling_command(), topics.preemption_command());
    let dlqs = [topics.dlq(&scaling_topic), topics.dlq(&preemption_topic)];
    ensure_topics(&cfg.kafka, &dlqs.map(|t| (t, 1))).await?;
    let consumer: StreamConsumer = consumer_config(&cfg.kafka, Some(&cfg.group)).create()?;
    let reread = i64::from(cfg.kafka.reread_messages);
    let (start, resume) = start_positions(&consumer, &[&scaling_topic, &preemption_topic], reread)?;
    consumer.assign(&start)?;
    tracing::info!(kind = actuator.kind(), group = %cfg.group, dry_run = cfg.dry_run, "actuator started");
    let mut l = Loop {
        dlq: Publisher::new(&cfg.kafka)?,
        cfg,
        actuator,
        ledger,
        consumer,
        scaling_topic,
        resume,
        summary: RunSummary::default(),
    };
    l.run(&mut shutdown).await?;
    l.dlq.flush(Duration::from_secs(10))?;
    tracing::info!(summary = ?l.summary, "actuator stopped");
    Ok(l.summary)
}

/// Every partition of the command topics, from a little before the group's
/// committed offsets (the oldest retained message where none is committed),
/// and those committed offsets, below which messages are passed over.
///
/// Why from before: a broker may answer a fetch from inside a record batch
/// with the *following* batch (tansu 0.6 does; Kafka returns the containing
/// batch). Resuming exactly at a committed offset in the middle of a batch
/// then skips the rest of that batch, or, when it is the partition's last,
/// stalls the partition for good: a restarted actuator applied nothing
/// (#22). Starting `reread` messages earlier (`KafkaConfig::reread_messages`,
/// above a producer's batch) lands on or before the batch that holds the
/// committed offset, as `prescale run` does (docs/service.md).
///
/// The actuator assigns itself all partitions instead of joining the group
/// as a member: one actuator owns one target (two would race on it), and a
/// restart after a crash must not wait for the broker to expire the dead
/// member — tansu never does (docs/service.md, "A lost instance"). The group
/// id still holds the committed offsets; the ledger makes re-reading safe.
fn start_positions(
    consumer: &StreamConsumer,
    topics: &[&str],
    reread: i64,
) -> Result<(TopicPartitionList, ResumeOffsets), RunError> {
    let timeout = Duration::from_secs(10);
    let mut all = TopicPartitionList::new();
    for t in topics {
        for p in partitions_of(consumer.client(), t, timeout)? {
            all.add_partition(t, p);
        }
    }
    let committed = consumer.committed_offsets(all, timeout)?;
    let mut start = TopicPartitionList::new();
    let mut resume = BTreeMap::new();
    for e in committed.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let at = match e.offset() {
            Offset::Offset(o) if o > 0 => {
                let (low, _) = consumer.fetch_watermarks(topic, partition, timeout)?;
                resume.insert((topic.to_string(), partition), o);
                Offset::Offset(o.saturating_sub(reread).max(low).min(o))
            }
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        start.add_partition_offset(topic, partition, at)?;
    }
    Ok((start, resume))
}

impl<A: Actuator> Loop<A> {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), RunError> {
        let mut reconcile = interval(self.cfg.reconcile_interval);
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        reconcile.tick().await; // the first tick is immediate; reconcile after one interval
        let idle = self.cfg.exit_when_idle;
        let mut last_activity = Instant::now();
        loop {
            // Measured from the last message, not from the last wake-up (the
            // reconcile timer wakes the loop too).
            let idle_check = sleep_until(last_activity + idle.unwrap_or(Duration::from_secs(3600)));
            tokio::select! {
                msg = self.consumer.recv() => {
                    last_activity = Instant::now();
                    match msg {
                        Ok(m) => {
                            let m = m.detach();
                            self.handle(&m).await?
                        }
                        // The end of a partition: the idle check asks the broker.
                        Err(RdError::PartitionEOF(_)) => {}
                        Err(e) => tracing::warn!(error = %e, "consumer error (librdkafka retries)"),
                    }
                }
                _ = reconcile.tick() => self.reconcile().await,
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return Ok(()); }
                }
                _ = idle_check, if idle.is_some() => {
                    if self.drained()? {
                        return Ok(());
                    }
                    last_activity = Instant::now();
                }
            }
        }
    }

    /// Whether every assigned partition has reached the end of what the
    /// broker holds: the position (or, before the first message of this
    /// run, the committed offset) equals the high watermark.
    fn drained(&self) -> Result<bool, RunError> {
        let assignment = self.consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(false);
        }
        let timeout = Duration::from_secs(5);
        let positions = self.consumer.position()?;
        let committed = self.consumer.committed(timeout)?;
        for e in assignment.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            let at = |l: &TopicPartitionList| {
                l.find_partition(topic, partition)
                    .and_then(|x| x.offset().to_raw())
                    .unwrap_or(-1)
            };
            let done = at(&positions).max(at(&committed));
            let (low, high) = self.consumer.fetch_watermarks(topic, partition, timeout)?;
            if high > low && done < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether `m` lies before where this run resumes its partition (read
    /// again only to get past a broker's batch boundary; see
    /// [`start_positions`]). The first message at or past that point ends
    /// the re-read; one past it means the broker skipped messages, which
    /// is logged (a command may have been lost upstream of the actuator).
    fn before_resume(&mut self, m: &OwnedMessage) -> bool {
        let key = (m.topic().to_string(), m.partition());
        let Some(&at) = self.resume.get(&key) else {
            return false;
        };
        if m.offset() < at {
            return true;
        }
        if m.offset() > at {
            tracing::warn!(
                topic = m.topic(),
                partition = m.partition(),
                expected = at,
                got = m.offset(),
                "the broker skipped messages after the resume offset"
            );
        }
        self.resume.remove(&key);
        false
    }

    async fn handle(&mut self, m: &OwnedMessage) -> Result<(), RunError> {
        if self.before_resume(m) {
            return Ok(());
        }
        let scaling = m.topic() == self.scaling_topic;
        let decoded = decode_output(&self.cfg.kafka, scaling, m.payload().unwrap_or(&[]));
        match decoded {
            Err(e) => self.dead_letter(m, "-", &format!("undecodable command: {e}"))?,
            Ok(cmd) => self.dispatch(m, &cmd).await?,
        }
        // The ledger is saved (inside `dispatch`) before the offset moves.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }

    async fn dispatch(&mut self, m: &OwnedMessage, cmd: &Command) -> Result<(), RunError> {
        let (env, verdict) = match cmd {
            Command::Scaling(c) => (&c.compute_environment, self.ledger.judge_scaling(c)),
            Command::Preemption(c) => (&c.compute_environment, self.ledger.judge_preemption(c)),
        };
        if !self.actuator.manages(env) {
            let why = format!("compute environment {env:?} is not in this actuator's mapping");
            return self.dead_letter(m, cmd.id(), &why);
        }
        match verdict {
            Verdict::Duplicate => {
                self.summary.duplicates += 1;
                tracing::info!(command_id = cmd.id(), environment = %env, "duplicate command skipped");
                return Ok(());
            }
            Verdict::Stale { last_issued_at } => {
                self.summary.stale += 1;
                tracing::info!(command_id = cmd.id(), environment = %env, last_issued_at,
                    "command older than the last applied one skipped");
                return Ok(());
            }
            Verdict::Apply => {}
        }
        match self.apply_with_retries(cmd).await {
            Ok(()) => {
                match cmd {
                    Command::Scaling(c) => {
                        self.ledger.record_scaling(c);
                        self.summary.applied_scaling += 1;
                    }
                    Command::Preemption(c) => {
                        self.ledger.record_preemption(c);
                        self.summary.applied_preemption += 1;
                    }
                }
                self.ledger.save()?;
                Ok(())
            }
            Err(e) => self.dead_letter(m, cmd.id(), &e.to_string()),
        }
    }

    async fn apply_with_retries(&mut self, cmd: &Command) -> Result<(), ActuateError> {
        let mut delay = self.cfg.backoff_min;
        let mut attempt = 1;
        loop {
            let res = match cmd {
                Command::Scaling(c) => self.apply_scaling(c).await,
                Command::Preemption(c) => self.apply_preemption(c).await,
            };
            match res {
                Err(e) if e.is_transient() && attempt < self.cfg.max_attempts => {
                    tracing::warn!(command_id = cmd.id(), attempt, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "transient error; retrying");
                    self.summary.retries += 1;
                    sleep(delay).await;
                    delay = (delay * 2).min(self.cfg.backoff_max);
                    attempt += 1;
                }
                Err(e) if e.is_transient() => {
                    return Err(ActuateError::permanent(format!(
                        "gave up after {attempt} attempts: {e}"
                    )))
                }
                other => return other,
            }
        }
    }

    async fn apply_scaling(&mut self, c: &ScalingCommand) -> Result<(), ActuateError> {
        if c.min_vcpus < 0
            || c.desired_vcpus < c.min_vcpus
            || (c.max_vcpus > 0 && c.desired_vcpus > c.max_vcpus)
        {
            return Err(ActuateError::permanent(format!(
                "invalid size: min {} desired {} max {} vCPUs",
                c.min_vcpus, c.desired_vcpus, c.max_vcpus
            )));
        }
        self.actuator.apply_scaling(c, self.cfg.dry_run).await
    }

    async fn apply_preemption(&mut self, c: &PreemptionCommand) -> Result<(), ActuateError> {
        self.actuator.apply_preemption(c, self.cfg.dry_run).await
    }

    /// Hold every environment to its last applied command. Errors are
    /// counted and logged; the next interval tries again.
    async fn reconcile(&mut self) {
        for last in self.ledger.last_scaling() {
            match self.actuator.reconcile(&last, self.cfg.dry_run).await {
                Ok(true) => {
                    self.summary.drift_reapplied += 1;
                    tracing::warn!(command_id = %last.command_id, environment = %last.compute_environment,
                        "drift found and the last command re-applied");
                }
                Ok(false) => {}
                Err(e) => {
                    self.summary.reconcile_errors += 1;
                    tracing::warn!(environment = %last.compute_environment, error = %e, "reconcile failed");
                }
            }
        }
    }

    /// Send a command that cannot be applied to `<topic>.dlq`, unchanged,
    /// with the reason and where it came from in headers.
    fn dead_letter(&mut self, m: &OwnedMessage, id: &str, why: &str) -> Result<(), RunError> {
        self.summary.dead_lettered += 1;
        tracing::warn!(
            command_id = id,
            topic = m.topic(),
            offset = m.offset(),
            reason = why,
            "command dead-lettered"
        );
        let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
        self.dlq.send(
            &self.cfg.kafka.topics.dlq(m.topic()),
            m.key().unwrap_or(&[]),
            m.payload().unwrap_or(&[]),
            &[
                (headers::DLQ_ERROR, why.as_bytes()),
                (headers::DLQ_TOPIC, m.topic().as_bytes()),
                (headers::DLQ_PARTITION, partition.as_bytes()),
                (headers::DLQ_OFFSET, offset.as_bytes()),
                (headers::COMMAND_ID, id.as_bytes()),
            ],
            None,
        )?;
        // Delivered before the caller commits the offset past it: a kill
        // right after must not lose the dead letter (it is not re-judged
        // after a restart). Dead letters are rare; the wait is cheap.
        self.dlq.flush(Duration::from_secs(30))?;
        Ok(())
    }
}
