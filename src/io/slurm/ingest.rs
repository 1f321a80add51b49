//! `prescale ingest slurm`: a Slurm cluster's jobs → input events.
//!
//! Each tick reads the new lines of the jobcomp spool (one per finished
//! job, appended by Slurm's `jobcomp/script` hook, so no completion is
//! missed however long the ingester was away) and polls `squeue --json`
//! (submissions). A job is submitted once and completed once: the ids
//! already published and the spool offset live in a state file, saved
//! atomically after each batch is durable on the sink.
//!
//! Crash safety without Kafka transactions: before publishing a batch the
//! ingester saves the batch's keys and a sink mark (Kafka: the topics' high
//! watermarks). A restart that finds such a pending batch reads the topics
//! from the mark and counts as published exactly the keys it finds there
//! (each message carries its key in the `prescale-slurm-key` header); the
//! rest are published again. So `kill -9` at any point loses nothing and
//! publishes nothing twice.

use super::jobs::{parse_squeue, submission, JobCompRecord, Naming, SqueueJob};
use super::{SlurmCommands, SlurmError};
use crate::events::Event;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Header carrying the ingest key ("s/<job>" or "c/<job>") of each message.
pub const KEY_HEADER: &str = "prescale-slurm-key";

/// What `prescale ingest slurm` reads and where it keeps its state.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub naming: Naming,
    /// The jobcomp spool (JSON lines written by the hook).
    pub spool: PathBuf,
    /// The ingester's state (published ids, spool offset, pending batch).
    pub state_file: PathBuf,
    pub poll_interval: Duration,
    pub commands: SlurmCommands,
    /// How long a completed job's id is remembered (must exceed Slurm's
    /// MinJobAge, during which squeue still lists the finished job).
    pub remember: Duration,
    /// Replays of compressed traces: every time Slurm reports is stretched
    /// by this factor around `origin_ms` (1.0: as is).
    pub time_scale: TimeScale,
}

/// `t' = origin + (t − origin) × factor` for times, `d × factor` for
/// durations: a cluster replaying a trace `factor` times faster than it
/// happened reports events on the trace's own time scale, so the engine's
/// buckets, lead time and cooldowns mean what they mean in the backtest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale {
    pub factor: f64,
    pub origin_ms: i64,
}

impl Default for TimeScale {
    fn default() -> Self {
        TimeScale {
            factor: 1.0,
            origin_ms: 0,
        }
    }
}

impl TimeScale {
    fn at(&self, t: i64) -> i64 {
        self.origin_ms + ((t - self.origin_ms) as f64 * self.factor).round() as i64
    }

    /// Stretch one event's times and durations.
    pub fn apply(&self, ev: &mut Event) {
        if self.factor == 1.0 {
            return;
        }
        match ev {
            Event::JobSubmitted(s) => {
                s.submitted_at = self.at(s.submitted_at);
                s.deadline = s.deadline.map(|d| self.at(d));
                s.estimated_runtime_s = s
                    .estimated_runtime_s
                    .map(|r| (r as f64 * self.factor).round() as i64);
            }
            Event::JobCompleted(c) => {
                c.started_at = self.at(c.started_at);
                c.finished_at = self.at(c.finished_at);
                c.vcpu_seconds *= self.factor;
            }
            _ => {}
        }
    }
}

/// Where events go: the input topics or an events file.
pub trait Sink {
    /// Publish `events` (key, event) durably; `first_seq` numbers them.
    fn publish(&mut self, events: &[(String, Event)], first_seq: u64) -> Result<(), SlurmError>;
    /// A position from which [`Sink::published_since`] can look.
    fn mark(&mut self) -> Result<serde_json::Value, SlurmError>;
    /// Keys published after `mark` (recovery of a batch cut short).
    fn published_since(&mut self, mark: &serde_json::Value)
        -> Result<BTreeSet<String>, SlurmError>;
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pending {
    keys: Vec<String>,
    mark: serde_json::Value,
}

/// The persisted state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// Submitted, not yet completed: job id → submit time (ms).
    submitted: BTreeMap<String, i64>,
    /// Completed: job id → finish time (ms), pruned after `remember`.
    completed: BTreeMap<String, i64>,
    spool_offset: u64,
    seq: u64,
    pending: Option<Pending>,
}

/// Counters of one ingester's life, reported when it stops.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestSummary {
    pub polls: u64,
    pub submissions: u64,
    pub completions: u64,
    /// Submissions made up from a completion (job gone from squeue).
    pub synthesized_submissions: u64,
    /// Spool lines or comment fields that could not be read (logged).
    pub bad_records: u64,
    pub recovered_batches: u64,
    pub transient_errors: u64,
}

/// The ingester: config, state and sink.
pub struct Ingester<S: Sink> {
    cfg: IngestConfig,
    state: State,
    sink: S,
    pub summary: IngestSummary,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl<S: Sink> Ingester<S> {
    /// Load the state file (a missing file is a fresh start).
    pub fn open(cfg: IngestConfig, sink: S) -> Result<Self, SlurmError> {
        let state = match std::fs::read(&cfg.state_file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| SlurmError::permanent(format!("{}: {e}", cfg.state_file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(SlurmError::permanent(format!(
                    "{}: {e}",
                    cfg.state_file.display()
                )))
            }
        };
        Ok(Ingester {
            cfg,
            state,
            sink,
            summary: IngestSummary::default(),
        })
    }

    fn save(&self) -> Result<(), SlurmError> {
        let path = &self.cfg.state_file;
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| SlurmError::permanent(format!("{}: {e}", path.display()));
        let bytes = serde_json::to_vec(&self.state).expect("state serializes");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Mark keys as published in the state.
    fn apply(&mut self, keys: impl IntoIterator<Item = String>) {
        let now = now_ms();
        for k in keys {
            if let Some(job) = k.strip_prefix("s/") {
                if !self.state.completed.contains_key(job) {
                    self.state.submitted.insert(job.to_string(), now);
                }
            } else if let Some(job) = k.strip_prefix("c/") {
                self.state.submitted.remove(job);
                self.state.completed.insert(job.to_string(), now);
            }
        }
    }

    /// Finish a batch that a previous run left pending.
    fn recover(&mut self) -> Result<(), SlurmError> {
        let Some(p) = self.state.pending.clone() else {
            return Ok(());
        };
        let found = self.sink.published_since(&p.mark)?;
        let done: Vec<String> = p
            .keys
            .iter()
            .filter(|k| found.contains(*k))
            .cloned()
            .collect();
        tracing::warn!(
            batch = p.keys.len(),
            already_published = done.len(),
            "recovering a batch a previous run did not finish; the rest is published again"
        );
        self.apply(done);
        self.state.pending = None;
        self.summary.recovered_batches += 1;
        self.save()
    }

    /// New complete lines of the spool from the saved offset, and the
    /// offset after them.
    fn read_spool(&mut self) -> Result<(Vec<JobCompRecord>, u64), SlurmError> {
        let path = &self.cfg.spool;
        let io = |e: std::io::Error| SlurmError::transient(format!("{}: {e}", path.display()));
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((vec![], self.state.spool_offset))
            }
            Err(e) => return Err(io(e)),
        };
        let len = f.metadata().map_err(io)?.len();
        if len < self.state.spool_offset {
            tracing::warn!(spool = %path.display(), "spool is shorter than the saved offset (rotated?): reading it from the start");
            self.state.spool_offset = 0;
        }
        f.seek(SeekFrom::Start(self.state.spool_offset))
            .map_err(io)?;
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(io)?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        let mut out = Vec::new();
        for (i, line) in text[..complete].lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match JobCompRecord::parse(line) {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.summary.bad_records += 1;
                    tracing::error!(spool = %path.display(), line = i + 1, error = %e, "skipping a jobcomp record that cannot be read");
                }
            }
        }
        Ok((out, self.state.spool_offset + complete as u64))
    }

    /// The events of one poll: submissions of jobs not yet seen, then
    /// completions of finished jobs not yet completed.
    fn batch(&mut self, jobs: &[SqueueJob], done: &[JobCompRecord]) -> Vec<(String, Event)> {
        let naming = &self.cfg.naming;
        let by_id: HashMap<String, &SqueueJob> =
            jobs.iter().map(|j| (j.job_id.to_string(), j)).collect();
        let mut out = Vec::new();
        let mut submitted_now = BTreeSet::new();
        let submit = |out: &mut Vec<(String, Event)>, j: &SqueueJob, s: &mut IngestSummary| {
            let (ev, bad) = submission(j, naming);
            for b in bad {
                s.bad_records += 1;
                tracing::warn!(
                    job = j.job_id,
                    field = b.field,
                    "comment field ignored: {}",
                    b.message
                );
            }
            s.submissions += 1;
            out.push((format!("s/{}", ev.job_id), Event::JobSubmitted(ev)));
        };
        for j in jobs.iter().filter(|j| naming.ingests(&j.partition)) {
            let id = naming.job_id(&j.job_id.to_string()).to_string();
            if self.state.submitted.contains_key(&id) || self.state.completed.contains_key(&id) {
                continue;
            }
            submit(&mut out, j, &mut self.summary);
            submitted_now.insert(id);
        }
        for r in done
            .iter()
            .filter(|r| r.is_final() && naming.ingests(&r.partition))
        {
            let id = naming.job_id(&r.jobid).to_string();
            if self.state.completed.contains_key(&id)
                || out.iter().any(|(k, _)| k == &format!("c/{id}"))
            {
                continue;
            }
            if !self.state.submitted.contains_key(&id) && !submitted_now.contains(&id) {
                match by_id.get(&r.jobid) {
                    Some(j) => submit(&mut out, j, &mut self.summary),
                    None => match r.submission(naming) {
                        Ok(s) => {
                            self.summary.submissions += 1;
                            self.summary.synthesized_submissions += 1;
                            out.push((format!("s/{id}"), Event::JobSubmitted(s)));
                        }
                        Err(e) => {
                            self.summary.bad_records += 1;
                            tracing::error!(error = %e, "skipping a jobcomp record");
                            continue;
                        }
                    },
                }
                submitted_now.insert(id.clone());
            }
            match r.completion(naming) {
                Ok(c) => {
                    self.summary.completions += 1;
                    out.push((format!("c/{id}"), Event::JobCompleted(c)));
                }
                Err(e) => {
                    self.summary.bad_records += 1;
                    tracing::error!(error = %e, "skipping a jobcomp record");
                }
            }
        }
        out
    }

    /// One poll: recover, read the spool, poll squeue, publish, save.
    pub async fn tick(&mut self) -> Result<usize, SlurmError> {
        self.recover()?;
        let (done, offset) = self.read_spool()?;
        let text = self
            .cfg
            .commands
            .run("squeue", &["--all", "--json"])
            .await?;
        let jobs = parse_squeue(&text)?;
        self.summary.polls += 1;
        let mut events = self.batch(&jobs, &done);
        for (_, ev) in &mut events {
            self.cfg.time_scale.apply(ev);
        }
        let n = events.len();
        if n > 0 {
            let keys: Vec<String> = events.iter().map(|(k, _)| k.clone()).collect();
            self.state.pending = Some(Pending {
                keys: keys.clone(),
                mark: self.sink.mark()?,
            });
            self.save()?;
            self.sink.publish(&events, self.state.seq)?;
            self.state.seq += n as u64;
            self.apply(keys);
            self.state.pending = None;
        }
        let changed = n > 0 || offset != self.state.spool_offset;
        self.state.spool_offset = offset;
        let horizon = now_ms() - self.cfg.remember.as_millis() as i64;
        let before = self.state.completed.len();
        self.state.completed.retain(|_, t| *t >= horizon);
        if changed || before != self.state.completed.len() {
            self.save()?;
        }
        Ok(n)
    }

    /// The adapter loop: a tick timer and a shutdown channel. Transient
    /// errors (slurmctld away, broker away) are logged and retried at the
    /// next tick; permanent ones stop the loop.
    pub async fn run(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<IngestSummary, SlurmError> {
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => match tokio::select! {
                    r = self.tick() => r,
                    _ = shutdown.changed() => break,
                } {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "published"),
                    Err(e) if e.transient => {
                        self.summary.transient_errors += 1;
                        tracing::warn!(error = %e, "poll failed; retrying at the next tick");
                    }
                    Err(e) => return Err(e),
                },
                _ = shutdown.changed() => break,
            }
        }
        Ok(self.summary)
    }
}

/// `prescale ingest slurm --jobcomp`: append the finished job Slurm
/// describes in this process's environment to the spool, as one line in
/// one write (O_APPEND), so concurrent hooks never interleave.
pub fn append_jobcomp_from_env(spool: &Path) -> Result<(), SlurmError> {
    use std::io::Write;
    let mut obj = serde_json::Map::new();
    for k in super::jobs::JOBCOMP_VARS {
        if let Ok(v) = std::env::var(k) {
            obj.insert(k.to_string(), serde_json::Value::String(v));
        }
    }
    // Validate before writing: a record the ingester cannot read is an
    // error here, where Slurm logs it, not later.
    let line = serde_json::to_string(&obj).expect("json");
    JobCompRecord::parse(&line)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool)
        .map_err(|e| SlurmError::permanent(format!("{}: {e}", spool.display())))?;
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| SlurmError::permanent(format!("{}: {e}", spool.display())))
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn publish(&mut self, events: &[(String, Event)], first_seq: u64) -> Result<(), SlurmError> {
        (**self).publish(events, first_seq)
    }
    fn mark(&mut self) -> Result<serde_json::Value, SlurmError> {
        (**self).mark()
    }
    fn published_since(
        &mut self,
        mark: &serde_json::Value,
    ) -> Result<BTreeSet<String>, SlurmError> {
        (**self).published_since(mark)
    }
}
