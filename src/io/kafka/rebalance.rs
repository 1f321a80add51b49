//! Assignment and rebalance: the group consumer's context, whose
//! librdkafka callbacks (run inside a poll, on the loop's thread) assign
//! the partitions at the offsets their snapshot reflects and tell the loop
//! what happened as a typed [`Rebalance`] message on a channel; the loop
//! takes it after the poll and hands the state over (see
//! `service::Loop::rebalance`).
//!
//! Also here: the broadcast (price) consumer's context, the consumers'
//! configuration, and [`GroupDone`], whether the group as a whole has
//! consumed its job topics.

use super::client::{consumer_config, partitions_of};
use super::merge::Tp;
use super::pipe::Fence;
use super::KafkaConfig;
use super::KafkaError;
use crate::checkpoint::{self, Snapshot};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the group consumer's rebalance callback tells the loop.
#[derive(Debug)]
pub(super) enum Rebalance {
    /// These partitions are now this instance's, already assigned at the
    /// offsets `snapshot` reflects (or from the beginning without one).
    Assigned {
        assignment: Vec<Tp>,
        snapshot: Option<Snapshot>,
    },
    /// Every partition was taken away (eager rebalancing).
    Revoked,
}

impl Rebalance {
    /// The partitions this instance owns once it is applied.
    pub(super) fn assignment(&self) -> &[Tp] {
        match self {
            Rebalance::Assigned { assignment, .. } => assignment,
            Rebalance::Revoked => &[],
        }
    }
}

/// The loop's end of the rebalance channel.
pub(super) struct Rebalances(mpsc::UnboundedReceiver<Rebalance>);

impl Rebalances {
    /// The rebalance to apply, if any happened since the last look: the
    /// latest one, as the consumer holds it now (a revoke followed by an
    /// assignment within one poll leaves only the assignment to apply; the
    /// hand-over checkpoint of the state given up happens either way).
    pub(super) fn latest(&mut self) -> Option<Rebalance> {
        let mut last = None;
        while let Ok(r) = self.0.try_recv() {
            last = Some(r);
        }
        last
    }
}

/// Context of the group consumer.
pub(super) struct GroupCtx {
    dir: PathBuf,
    group: String,
    /// The internal budget-spend topic: always read from its beginning
    /// (latest-wins records, see [`super::spend`]).
    spend_topic: String,
    /// `KafkaConfig::reread_messages`.
    reread: u32,
    tx: mpsc::UnboundedSender<Rebalance>,
    /// Snapshots refused at restore (checksum or JSON), see
    /// [`checkpoint::read_with_fallback`].
    refused_snapshots: AtomicU64,
    /// Passed before every `assign` and `unassign`: reader threads of the
    /// pipelined path stop reading the old assignment's queues first (an
    /// assign forwards them to the consumer's own queue; see
    /// [`super::pipe`]).
    fence: Arc<Fence>,
}

impl GroupCtx {
    /// The context, and the channel its callbacks send on.
    pub(super) fn new(cfg: &KafkaConfig) -> (Self, Rebalances) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = GroupCtx {
            dir: cfg.checkpoint_dir.clone(),
            group: cfg.group_id.clone(),
            spend_topic: cfg.topics.budget_spend(),
            reread: cfg.reread_messages,
            tx,
            refused_snapshots: AtomicU64::new(0),
            fence: Arc::default(),
        };
        (ctx, Rebalances(rx))
    }

    /// The fence reader threads of this consumer's partitions read under.
    pub(super) fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Snapshots refused at restore so far.
    pub(super) fn refused_snapshots(&self) -> u64 {
        self.refused_snapshots.load(Ordering::Relaxed)
    }

    /// The newest usable snapshot of `assignment`, logging and counting
    /// the ones refused (see [`checkpoint::read_with_fallback`]).
    fn restore_point(&self, assignment: &[Tp]) -> Option<Snapshot> {
        let path = checkpoint::path_for(&self.dir, &self.group, assignment);
        // A snapshot that fails its checksum is refused: the one before it
        // is restored instead, or the partitions replayed.
        let found = checkpoint::read_with_fallback(&path);
        for e in &found.refused {
            tracing::warn!(error = %e, "refused a snapshot");
        }
        if !found.refused.is_empty() {
            let how = if found.snapshot.is_some() {
                "restoring the snapshot before it"
            } else {
                "replaying the partitions from the beginning"
            };
            tracing::warn!("{how}");
        }
        self.refused_snapshots
            .fetch_add(found.refused.len() as u64, Ordering::Relaxed);
        found.snapshot
    }

    fn assign<K: Consumer<Self>>(&self, consumer: &K, tpl: &mut TopicPartitionList) -> Rebalance {
        let assignment: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let snapshot = self.restore_point(&assignment);
        // Seek every partition to what the restored state reflects (from a
        // little before it, see `reread_from`), or to the beginning when
        // there is no state.
        for (t, p) in &assignment {
            let off = snapshot
                .as_ref()
                .filter(|_| *t != self.spend_topic)
                .and_then(|s| s.offsets.get(t))
                .and_then(|m| m.get(p))
                .map(|&o| reread_from(o, self.reread))
                .unwrap_or(Offset::Beginning);
            let _ = tpl.set_partition_offset(t, *p, off);
        }
        self.fence.pass();
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(error = %e, "assign failed");
        }
        let owned: Vec<String> = assignment.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        tracing::info!(
            partitions = assignment.len(),
            restored = snapshot.is_some(),
            owned = owned.join(","),
            "assigned"
        );
        Rebalance::Assigned {
            assignment,
            snapshot,
        }
    }
}

impl GroupCtx {
    /// Take `orphans` (job partitions nobody consumes, see [`Orphans`]) on
    /// top of `own`, with the budget-spend partitions of the same numbers
    /// (the range assignor gives them together): assigned here as a
    /// rebalance would, restored from a snapshot of exactly the new set if
    /// one exists (a shared `checkpoint_dir`) or replayed from the
    /// beginning, and announced to the loop as a [`Rebalance::Assigned`].
    /// The group coordinator is not asked: its next rebalance replaces this.
    pub(super) fn adopt(
        &self,
        consumer: &StreamConsumer<Self>,
        own: &[Tp],
        orphans: &[Tp],
    ) -> Result<(), KafkaError> {
        let spend = partitions_of(consumer.client(), &self.spend_topic, Duration::from_secs(5))?;
        let mut set: std::collections::BTreeSet<Tp> = own.iter().cloned().collect();
        for (t, p) in orphans {
            set.insert((t.clone(), *p));
            if spend.contains(p) {
                set.insert((self.spend_topic.clone(), *p));
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &set {
            tpl.add_partition(t, *p);
        }
        let names: Vec<String> = orphans.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        tracing::warn!(
            partitions = names.join(","),
            "adopting partitions whose group offsets stood still short of their end: their member \
             is gone and the group coordinator did not hand them over"
        );
        let msg = self.assign(consumer, &mut tpl);
        let _ = self.tx.send(msg);
        Ok(())
    }
}

impl ClientContext for GroupCtx {
    fn error(&self, error: RdError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for GroupCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let msg = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            _ => {
                self.fence.pass();
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
                tracing::info!("partitions revoked");
                Rebalance::Revoked
            }
        };
        // The loop gone means the service is stopping: nothing to hand over.
        let _ = self.tx.send(msg);
    }
}

/// Context of the price consumer (manual assignment, no group).
pub(super) struct PriceCtx;

impl ClientContext for PriceCtx {
    fn error(&self, error: RdError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for PriceCtx {}

/// librdkafka reports reaching the end of a partition (which the loop asks
/// for, to know when it is caught up) as an error; it is not one.
fn log_client_error(error: &RdError, reason: &str) {
    if !is_partition_eof(error) {
        tracing::error!(error = %error, reason, "kafka client error");
    }
}

/// The end of a partition, as a poll result or as a client-wide error
/// (split partition queues report it so).
pub(super) fn is_partition_eof(error: &RdError) -> bool {
    use rdkafka::types::RDKafkaErrorCode;
    matches!(
        error,
        RdError::PartitionEOF(_) | RdError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// Where to start reading a partition that resumes at `offset`: up to
/// `reread` messages before it (`KafkaConfig::reread_messages`), which the
/// merger ignores. A broker may answer a fetch from inside a record batch
/// with the following batch (tansu 0.6 does), which would skip the rest of
/// the batch; starting from before shows the merger the partition's
/// continuity (see [`super::merge`]).
pub(super) fn reread_from(offset: i64, reread: u32) -> Offset {
    Offset::Offset(offset.saturating_sub(i64::from(reread)).max(0))
}

/// librdkafka's prefetch per partition, unless `-X queued.min.messages`
/// says otherwise. Each input partition has a queue of its own (see
/// [`super::split`]), so this bounds how far a partition the merge is not
/// waiting for runs ahead; the default (100 000) would let a dozen
/// partitions hold over a million messages.
const PREFETCH_PER_PARTITION: &str = "10000";

/// The service's consumers: [`consumer_config`] with
/// [`PREFETCH_PER_PARTITION`].
pub(super) fn service_consumer_config(
    cfg: &KafkaConfig,
    group: Option<&str>,
) -> rdkafka::ClientConfig {
    let mut c = consumer_config(cfg, group);
    if !cfg.properties.contains_key("queued.min.messages") {
        c.set("queued.min.messages", PREFETCH_PER_PARTITION);
    }
    c
}

/// Whether the whole group is done with its job topics, asked before an
/// idle instance reports itself finished: the partitions it does not own
/// must have been consumed by their owners too (their committed offsets, which
/// owners commit after each snapshot, at the end of each partition). An
/// instance whose peer died holding partitions that nobody took over would
/// otherwise report a finished run with that input never read.
#[derive(Default)]
pub(super) struct GroupDone {
    last: Option<Instant>,
    warned: Option<Instant>,
}

/// How often [`GroupDone`] asks the broker.
const GROUP_DONE_EVERY: Duration = Duration::from_secs(1);

impl GroupDone {
    pub(super) fn check(
        &mut self,
        group: &StreamConsumer<GroupCtx>,
        own: &[Tp],
        topics: &[String],
    ) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < GROUP_DONE_EVERY) {
            return false;
        }
        self.last = Some(Instant::now());
        match unconsumed(group, own, topics) {
            Ok(left) if left.is_empty() => true,
            Ok(left) => {
                if self
                    .warned
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    tracing::warn!(
                        partitions = ?left,
                        "idle, but the group has not consumed these partitions: not finished"
                    );
                    self.warned = Some(Instant::now());
                }
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the group's offsets; not finished yet");
                false
            }
        }
    }
}

/// Partitions of `topics` this instance does not own whose group offset is
/// short of their end, as `topic/partition committed/end`.
fn unconsumed(
    group: &StreamConsumer<GroupCtx>,
    own: &[Tp],
    topics: &[String],
) -> Result<Vec<String>, KafkaError> {
    Ok(behind(group, own, topics)?
        .into_iter()
        .map(|((t, p), at, high)| format!("{t}/{p} {at}/{high}"))
        .collect())
}

/// Partitions of `topics` this instance does not own whose group offset is
/// short of their end: (partition, committed offset, end).
fn behind(
    group: &StreamConsumer<GroupCtx>,
    own: &[Tp],
    topics: &[String],
) -> Result<Vec<(Tp, i64, i64)>, KafkaError> {
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in partitions_of(group.client(), t, timeout)? {
            if !own.iter().any(|(ot, op)| ot == t && *op == p) {
                tpl.add_partition(t, p);
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = group.committed_offsets(tpl, timeout)?;
    let mut left = Vec::new();
    for e in committed.elements() {
        let (low, high) = group.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        if at < high {
            left.push(((e.topic().to_string(), e.partition()), at, high));
        }
    }
    Ok(left)
}

/// Job partitions that nobody consumes. A live owner commits its offsets
/// after every snapshot (every `checkpoint_interval_ms` while it has new
/// input), so a partition whose group offset stands still short of its end
/// for [`Orphans::after`] has no live owner: its member died and the group
/// coordinator did not give it to anyone (tansu 0.6.0 keeps a SIGKILLed
/// member's share unassigned, see docs/service.md, "A lost instance"). A
/// Kafka coordinator hands such partitions over within the session timeout,
/// and their new owner commits, so nothing is adopted there.
pub(super) struct Orphans {
    /// How long an offset must stand still: three session timeouts, plus
    /// up to 10 s by instance name so that survivors do not all adopt the
    /// same partitions at once (the first to adopt commits, and the others
    /// then see the offset move).
    after: Duration,
    last: Option<Instant>,
    /// Per partition behind its end: its group offset, and since when.
    still: std::collections::HashMap<Tp, (i64, Instant)>,
}

/// How often [`Orphans`] asks the broker.
const ORPHANS_EVERY: Duration = Duration::from_secs(5);

impl Orphans {
    pub(super) fn new(instance: &str) -> Self {
        // FNV-1a: short names (`a`, `b`) still land far apart.
        let jitter = instance.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Self {
            after: Duration::from_secs(30) + Duration::from_millis(jitter % 10_000),
            last: None,
            still: Default::default(),
        }
    }

    /// Forget what was seen (a new assignment changes what is owned).
    pub(super) fn reset(&mut self) {
        self.still.clear();
    }

    /// The partitions of `topics` (the job topics) not in `own` whose group
    /// offset has stood still short of their end for `after`.
    pub(super) fn check(
        &mut self,
        group: &StreamConsumer<GroupCtx>,
        own: &[Tp],
        topics: &[String],
    ) -> Vec<Tp> {
        if self.last.is_some_and(|t| t.elapsed() < ORPHANS_EVERY) {
            return Vec::new();
        }
        let now = Instant::now();
        self.last = Some(now);
        let left = match behind(group, own, topics) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the group's offsets");
                return Vec::new();
            }
        };
        self.still
            .retain(|tp, _| left.iter().any(|(l, _, _)| l == tp));
        let mut out = Vec::new();
        for (tp, at, _) in left {
            let seen = self.still.entry(tp.clone()).or_insert((at, now));
            if seen.0 != at {
                *seen = (at, now);
            } else if now.duration_since(seen.1) >= self.after {
                out.push(tp);
            }
        }
        out
    }
}
