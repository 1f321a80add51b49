//! Checkpointing: every command decided before a snapshot is published and
//! flushed, the snapshot (engine state with the offsets it reflects) is
//! written atomically, and only then are the offsets committed (for lag
//! monitoring; snapshots are what a restart resumes from). The periodic
//! checkpoint is encoded and written on a thread of its own.

use super::handoff::{Active, Offsets};
use super::outbox::Outbox;
use super::rebalance::GroupCtx;
use super::stats::Stats;
use super::{KafkaConfig, KafkaError};
use crate::checkpoint::{self, Snapshot};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Where a checkpoint's state is encoded and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// On the loop, done when `save` returns (stop, rebalance, on request).
    Now,
    /// On a thread of its own (the periodic checkpoint): the engine only
    /// copies its state; [`finish_pending`] commits once it is on disk.
    Background,
}

/// Checkpoint: flush commands, snapshot atomically, then commit offsets.
/// Waits for a checkpoint still being written in the background first, so
/// snapshots land in order.
pub(super) fn save(
    cfg: &KafkaConfig,
    group: &StreamConsumer<GroupCtx>,
    outbox: &mut Outbox<'_>,
    a: &mut Active,
    how: Write,
) -> Result<(), KafkaError> {
    let stats = outbox.sink.stats;
    finish_pending(group, a, stats, true)?;
    let write = begin_save(cfg, outbox, a)?;
    match how {
        Write::Now => {
            let offsets = write()?;
            saved(group, a, stats, &offsets);
        }
        Write::Background => {
            let h = std::thread::Builder::new()
                .name("prescale-checkpoint".into())
                .spawn(write)
                .map_err(|e| KafkaError::Thread(format!("starting the checkpoint writer: {e}")))?;
            a.pending = Some(h);
        }
    }
    Ok(())
}

/// Collect a background checkpoint: wait for it (`wait`) or only take it
/// if it is done; then commit the offsets it saved.
pub(super) fn finish_pending(
    group: &StreamConsumer<GroupCtx>,
    a: &mut Active,
    stats: &Stats,
    wait: bool,
) -> Result<(), KafkaError> {
    let Some(h) = a.pending.take() else {
        return Ok(());
    };
    if !wait && !h.is_finished() {
        a.pending = Some(h);
        return Ok(());
    }
    let offsets = h
        .join()
        .map_err(|_| KafkaError::Thread("the checkpoint writer panicked".into()))??;
    saved(group, a, stats, &offsets);
    Ok(())
}

/// Capture what the snapshot holds, then publish and flush every command
/// decided before it; the returned closure encodes and writes it and yields
/// the offsets it saved.
fn begin_save(
    cfg: &KafkaConfig,
    outbox: &mut Outbox<'_>,
    a: &mut Active,
) -> Result<impl FnOnce() -> Result<Offsets, KafkaError> + Send + 'static, KafkaError> {
    // The capture follows every event the merge has released; once it
    // returns, their decisions are all on the decisions channel.
    let engine = a.worker.call(|b| b.capture())??;
    outbox.publish_ready()?;
    outbox.sink.publisher.flush(Duration::from_secs(60))?;
    let stats = outbox.sink.stats;
    let offsets = a.merger.offsets();
    let counters = [
        ("events", &stats.events),
        ("dead_letters", &stats.dead_letters),
        ("commands", &stats.commands),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
    .collect();
    let snap = Snapshot {
        version: checkpoint::FORMAT_VERSION,
        group: cfg.group_id.clone(),
        assignment: a.assignment.clone(),
        offsets: offsets.clone(),
        engine: serde_json::Value::Null,
        counters,
        written_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let path = checkpoint::path_for(&cfg.checkpoint_dir, &cfg.group_id, &a.assignment);
    a.dirty = false;
    Ok(move || {
        let engine = engine()?;
        checkpoint::write_with_engine(&path, &snap, &engine)?;
        Ok(offsets)
    })
}

/// A snapshot is on disk: commit its offsets (for lag monitoring) and count it.
fn saved(group: &StreamConsumer<GroupCtx>, a: &Active, stats: &Stats, offsets: &Offsets) {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &a.assignment {
        if let Some(o) = offsets.get(t).and_then(|m| m.get(p)) {
            if let Err(e) = tpl.add_partition_offset(t, *p, Offset::Offset(*o)) {
                tracing::warn!(error = %e, "offset commit skipped");
            }
        }
    }
    if tpl.count() > 0 {
        // Informational for lag monitoring: positions come from snapshots.
        if let Err(e) = group.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed (snapshot is authoritative)");
        }
    }
    stats.checkpoints.fetch_add(1, Ordering::Relaxed);
}
