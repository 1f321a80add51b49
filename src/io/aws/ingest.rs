//! AWS Batch job events → prescale input events (`prescale ingest batch`).
//!
//! Two ways in, one mapping: EventBridge "Batch Job State Change" events (JSON, one per line
//! from a file or stdin, or the bodies of an SQS queue that an EventBridge rule targets), or
//! polling `ListJobs` / `DescribeJobs` per job queue. Both become a [`BatchJob`], which
//! [`Ingest::observe`] turns into at most one `JobSubmitted` and one `JobCompleted` per job,
//! however often the same state is delivered: a [`SeenSet`] remembers each (job, transition)
//! emitted, persisted so a restarted producer does not emit them again.
//!
//! Job attributes prescale needs and Batch does not have are read from job tags (see
//! [`tag`] and docs/actuators.md); resources come from `resourceRequirements`.

use super::config::{resource_name, Mapping};
use crate::events::{Event, JobCompleted, JobStatus, JobSubmitted, Millis};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Job tags prescale reads (all optional).
pub mod tag {
    /// The prescale environment; default: the mapping file's environment of the job queue,
    /// else the job queue's name.
    pub const COMPUTE_ENVIRONMENT: &str = "prescale:compute-environment";
    /// Default `default`.
    pub const PROJECT: &str = "prescale:project";
    /// Default `unknown`.
    pub const USER: &str = "prescale:user";
    /// Default: the job definition's name.
    pub const JOB_TYPE: &str = "prescale:job-type";
    /// Integer, higher is more important; default the job's scheduling priority, else 0.
    pub const PRIORITY: &str = "prescale:priority";
    /// RFC 3339 time or milliseconds since the epoch.
    pub const DEADLINE: &str = "prescale:deadline";
    /// US dollars.
    pub const BUDGET_USD: &str = "prescale:budget-usd";
    /// Seconds; default: the job's attempt timeout, if any.
    pub const ESTIMATED_RUNTIME_S: &str = "prescale:estimated-runtime-s";
    /// `true` when the job may be resized or shrunk before preemption.
    pub const ELASTIC: &str = "prescale:elastic";
}

/// The job states prescale distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING: the job is demand.
    Active,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn parse(status: &str) -> Option<Phase> {
        match status {
            "SUBMITTED" | "PENDING" | "RUNNABLE" | "STARTING" | "RUNNING" => Some(Phase::Active),
            "SUCCEEDED" => Some(Phase::Succeeded),
            "FAILED" => Some(Phase::Failed),
            _ => None,
        }
    }
}

/// What prescale reads of one AWS Batch job (from an event's `detail` or `DescribeJobs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchJob {
    pub job_id: String,
    pub job_queue: String,
    pub job_definition: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub created_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub stopped_at: Option<Millis>,
    pub vcpus: f64,
    pub memory_mib: i64,
    pub gpus: i32,
    pub scheduling_priority: Option<i32>,
    pub attempt_timeout_s: Option<i64>,
    pub region: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// A record that cannot be turned into events; the message names the record and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{record}: {message}")]
pub struct BadRecord {
    pub record: String,
    pub message: String,
}

fn bad(record: &str, message: impl Into<String>) -> BadRecord {
    BadRecord {
        record: record.to_string(),
        message: message.into(),
    }
}

/// Sum `resourceRequirements` entries (`[{"type": "VCPU", "value": "2"}, …]`) into the job.
fn add_requirements(job: &mut BatchJob, reqs: &[Value], record: &str) -> Result<(), BadRecord> {
    for r in reqs {
        let ty = r.get("type").and_then(Value::as_str).unwrap_or("");
        let v = r.get("value").and_then(Value::as_str).unwrap_or("");
        let num: f64 = v.parse().map_err(|_| {
            bad(
                record,
                format!("resourceRequirements {ty}: value `{v}` is not a number"),
            )
        })?;
        match ty {
            "VCPU" => job.vcpus += num,
            "MEMORY" => job.memory_mib += num as i64,
            "GPU" => job.gpus += num as i32,
            _ => {}
        }
    }
    Ok(())
}

/// Parse one EventBridge event (a line of a file, or an SQS message body). `Ok(None)` for an
/// event of another kind (EventBridge rules often route several to one queue).
pub fn parse_event(line: &str, record: &str) -> Result<Option<BatchJob>, BadRecord> {
    let v: Value = serde_json::from_str(line).map_err(|e| bad(record, format!("not JSON: {e}")))?;
    if v.get("detail-type").and_then(Value::as_str) != Some("Batch Job State Change") {
        return Ok(None);
    }
    let d = v
        .get("detail")
        .ok_or_else(|| bad(record, "field `detail` is missing"))?;
    let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    let need = |k: &str| s(k).ok_or_else(|| bad(record, format!("field `detail.{k}` is missing")));
    let mut job = BatchJob {
        job_id: need("jobId")?,
        job_queue: need("jobQueue")?,
        job_definition: s("jobDefinition").unwrap_or_default(),
        status: need("status")?,
        status_reason: s("statusReason"),
        created_at: d.get("createdAt").and_then(Value::as_i64),
        started_at: d.get("startedAt").and_then(Value::as_i64),
        stopped_at: d.get("stoppedAt").and_then(Value::as_i64),
        scheduling_priority: d
            .get("schedulingPriority")
            .and_then(Value::as_i64)
            .map(|p| p as i32),
        attempt_timeout_s: d
            .pointer("/timeout/attemptDurationSeconds")
            .and_then(Value::as_i64),
        region: v.get("region").and_then(Value::as_str).map(str::to_string),
        tags: d
            .get("tags")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    // Single-container jobs carry `container`; ECS-properties jobs one or more containers.
    let mut containers: Vec<&Value> = d.get("container").into_iter().collect();
    if let Some(tasks) = d
        .pointer("/ecsProperties/taskProperties")
        .and_then(Value::as_array)
    {
        for t in tasks {
            if let Some(cs) = t.get("containers").and_then(Value::as_array) {
                containers.extend(cs.iter());
            }
        }
    }
    for c in containers {
        match c.get("resourceRequirements").and_then(Value::as_array) {
            Some(reqs) if !reqs.is_empty() => add_requirements(&mut job, reqs, record)?,
            // Older job definitions give vcpus / memory directly.
            _ => {
                job.vcpus += c.get("vcpus").and_then(Value::as_f64).unwrap_or(0.0);
                job.memory_mib += c.get("memory").and_then(Value::as_i64).unwrap_or(0);
            }
        }
    }
    Ok(Some(job))
}

/// Read a job from `DescribeJobs`.
pub fn from_detail(j: &aws_sdk_batch::types::JobDetail, region: Option<&str>) -> BatchJob {
    let mut job = BatchJob {
        job_id: j.job_id().unwrap_or_default().to_string(),
        job_queue: j.job_queue().unwrap_or_default().to_string(),
        job_definition: j.job_definition().unwrap_or_default().to_string(),
        status: j
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        status_reason: j.status_reason().map(str::to_string),
        created_at: j.created_at(),
        started_at: j.started_at(),
        stopped_at: j.stopped_at(),
        scheduling_priority: j.scheduling_priority(),
        attempt_timeout_s: j
            .timeout()
            .and_then(|t| t.attempt_duration_seconds())
            .map(i64::from),
        region: region.map(str::to_string),
        tags: j
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(c) = j.container() {
        let reqs = c.resource_requirements();
        if reqs.is_empty() {
            job.vcpus = f64::from(c.vcpus().unwrap_or(0));
            job.memory_mib = i64::from(c.memory().unwrap_or(0));
        }
        for r in reqs {
            let num: f64 = r.value().unwrap_or("0").parse().unwrap_or(0.0);
            match r.r#type().map(|t| t.as_str()) {
                Some("VCPU") => job.vcpus += num,
                Some("MEMORY") => job.memory_mib += num as i64,
                Some("GPU") => job.gpus += num as i32,
                _ => {}
            }
        }
    }
    job
}

fn tag_parse<T: std::str::FromStr>(job: &BatchJob, key: &str) -> Result<Option<T>, BadRecord> {
    match job.tags.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            bad(
                &format!("job {}", job.job_id),
                format!("tag `{key}`: cannot read `{v}`"),
            )
        }),
    }
}

fn deadline(job: &BatchJob) -> Result<Option<Millis>, BadRecord> {
    let Some(v) = job.tags.get(tag::DEADLINE) else {
        return Ok(None);
    };
    if let Ok(ms) = v.trim().parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v.trim())
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            bad(
                &format!("job {}", job.job_id),
                format!(
                    "tag `{}`: `{v}` is neither RFC 3339 nor milliseconds",
                    tag::DEADLINE
                ),
            )
        })
}

/// The events of one job in one state, regardless of what was emitted before.
pub fn events_of(job: &BatchJob, mapping: &Mapping) -> Result<Vec<(Transition, Event)>, BadRecord> {
    let record = format!("job {}", job.job_id);
    let phase = Phase::parse(&job.status).ok_or_else(|| {
        bad(
            &record,
            format!("field `status`: unknown state `{}`", job.status),
        )
    })?;
    let created = job
        .created_at
        .ok_or_else(|| bad(&record, "field `createdAt` is missing"))?;
    let env = job
        .tags
        .get(tag::COMPUTE_ENVIRONMENT)
        .cloned()
        .or_else(|| {
            mapping
                .environment_of_queue(&job.job_queue)
                .map(str::to_string)
        })
        .unwrap_or_else(|| resource_name(&job.job_queue).to_string());
    let definition = resource_name(&job.job_definition);
    let job_type = job.tags.get(tag::JOB_TYPE).cloned().unwrap_or_else(|| {
        definition
            .split(':')
            .next()
            .unwrap_or(definition)
            .to_string()
    });
    let submitted = JobSubmitted {
        job_id: job.job_id.as_str().into(),
        submitted_at: created,
        compute_environment: env.as_str().into(),
        job_type: job_type.as_str().into(),
        project: job
            .tags
            .get(tag::PROJECT)
            .map_or("default", String::as_str)
            .into(),
        user: job
            .tags
            .get(tag::USER)
            .map_or("unknown", String::as_str)
            .into(),
        priority: tag_parse(job, tag::PRIORITY)?
            .or(job.scheduling_priority)
            .unwrap_or(0),
        vcpus: job.vcpus,
        memory_mib: job.memory_mib,
        gpus: job.gpus,
        estimated_runtime_s: tag_parse(job, tag::ESTIMATED_RUNTIME_S)?.or(job.attempt_timeout_s),
        budget_usd: tag_parse(job, tag::BUDGET_USD)?,
        deadline: deadline(job)?,
        elasticity: tag_parse::<bool>(job, tag::ELASTIC)?.unwrap_or(false),
    };
    let mut out = vec![(Transition::Submitted, Event::JobSubmitted(submitted))];
    if phase != Phase::Active {
        let finished = job
            .stopped_at
            .ok_or_else(|| bad(&record, "field `stoppedAt` is missing for a finished job"))?;
        // A job that never started (failed while RUNNABLE) ran for no time.
        let started = job.started_at.unwrap_or(finished).min(finished);
        let preempted = job.status_reason.as_deref().is_some_and(|r| {
            r.starts_with("prescale Preempt") || r.starts_with("prescale Migrate")
        });
        out.push((
            Transition::Completed,
            Event::JobCompleted(JobCompleted {
                job_id: job.job_id.as_str().into(),
                compute_environment: env.as_str().into(),
                started_at: started,
                finished_at: finished,
                status: match phase {
                    Phase::Succeeded => JobStatus::Succeeded,
                    _ if preempted => JobStatus::Preempted,
                    _ => JobStatus::Failed,
                },
                instance_type: None,
                market: None,
                region: job.region.as_deref().map(Into::into),
                vcpu_seconds: job.vcpus * (finished - started) as f64 / 1000.0,
                max_memory_mib: None,
            }),
        ));
    }
    Ok(out)
}

/// The two transitions prescale emits per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    Submitted,
    Completed,
}

impl Transition {
    fn key(self, job_id: &str) -> String {
        match self {
            Transition::Submitted => format!("S {job_id}"),
            Transition::Completed => format!("C {job_id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("seen-set {path}: {source}")]
pub struct SeenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The (job, transition) pairs already emitted, appended to a file (one per line) so a
/// restarted producer skips them. In memory only when no file is given.
pub struct SeenSet {
    seen: HashSet<String>,
    file: Option<(PathBuf, std::fs::File)>,
    pending: Vec<String>,
}

impl SeenSet {
    pub fn in_memory() -> SeenSet {
        SeenSet {
            seen: HashSet::new(),
            file: None,
            pending: Vec::new(),
        }
    }

    pub fn open(path: &Path) -> Result<SeenSet, SeenError> {
        let err = |source| SeenError {
            path: path.to_path_buf(),
            source,
        };
        let seen = match std::fs::read_to_string(path) {
            Ok(t) => t
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(err(e)),
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(SeenSet {
            seen,
            file: Some((path.to_path_buf(), f)),
            pending: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Mark as emitted (in memory now; on disk at the next [`SeenSet::commit`]). False when it
    /// already was.
    fn insert(&mut self, key: String) -> bool {
        if self.seen.contains(&key) {
            return false;
        }
        self.seen.insert(key.clone());
        self.pending.push(key);
        true
    }

    fn contains(&self, key: &str) -> bool {
        self.seen.contains(key)
    }

    /// Persist what was marked since the last commit. Call after the events are delivered
    /// (flushed to Kafka or the file): a crash in between repeats them, never loses them.
    pub fn commit(&mut self) -> Result<(), SeenError> {
        if let Some((path, f)) = &mut self.file {
            let mut buf = String::new();
            for k in &self.pending {
                buf.push_str(k);
                buf.push('\n');
            }
            f.write_all(buf.as_bytes())
                .and_then(|_| f.sync_data())
                .map_err(|source| SeenError {
                    path: path.clone(),
                    source,
                })?;
        }
        self.pending.clear();
        Ok(())
    }
}

/// Counters of one ingest run (printed as JSON at the end).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct IngestStats {
    pub records: u64,
    pub ignored: u64,
    pub bad: u64,
    pub submitted: u64,
    pub completed: u64,
    pub duplicates: u64,
}

/// The mapping from jobs to new events.
pub struct Ingest {
    mapping: Mapping,
    pub seen: SeenSet,
    pub stats: IngestStats,
}

impl Ingest {
    pub fn new(mapping: Mapping, seen: SeenSet) -> Ingest {
        Ingest {
            mapping,
            seen,
            stats: IngestStats::default(),
        }
    }

    /// Whether both transitions of this job were already emitted (polling skips describing it).
    pub fn finished(&self, job_id: &str) -> bool {
        self.seen.contains(&Transition::Completed.key(job_id))
    }

    /// Whether this job's submission was already emitted.
    pub fn submitted(&self, job_id: &str) -> bool {
        self.seen.contains(&Transition::Submitted.key(job_id))
    }

    /// The events this job's state adds: none when its transitions were all emitted before.
    pub fn observe(&mut self, job: &BatchJob) -> Result<Vec<Event>, BadRecord> {
        self.stats.records += 1;
        let evs = events_of(job, &self.mapping).inspect_err(|_| self.stats.bad += 1)?;
        let mut out = Vec::new();
        for (t, ev) in evs {
            if self.seen.insert(t.key(&job.job_id)) {
                match t {
                    Transition::Submitted => self.stats.submitted += 1,
                    Transition::Completed => self.stats.completed += 1,
                }
                out.push(ev);
            } else {
                self.stats.duplicates += 1;
            }
        }
        Ok(out)
    }

    /// One EventBridge line (or SQS body): parse, then [`Ingest::observe`].
    pub fn observe_line(&mut self, line: &str, record: &str) -> Result<Vec<Event>, BadRecord> {
        match parse_event(line, record) {
            Ok(Some(job)) => self.observe(&job),
            Ok(None) => {
                self.stats.ignored += 1;
                Ok(vec![])
            }
            Err(e) => {
                self.stats.records += 1;
                self.stats.bad += 1;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNABLE: &str = r#"{"version":"0","id":"c8f9c4b5-76e5-d76a-f980-7011e206042b","detail-type":"Batch Job State Change","source":"aws.batch","account":"123456789012","time":"2025-11-30T17:56:03Z","region":"us-east-1","resources":["arn:aws:batch:us-east-1:123456789012:job/4c7599ae-0a82-49aa-ba5a-4727fcce14a8"],"detail":{"jobName":"event-test","jobId":"4c7599ae-0a82-49aa-ba5a-4727fcce14a8","jobQueue":"arn:aws:batch:us-east-1:123456789012:job-queue/HighPriority","status":"RUNNABLE","attempts":[],"createdAt":1764525340401,"retryStrategy":{"attempts":1},"dependsOn":[],"jobDefinition":"arn:aws:batch:us-east-1:123456789012:job-definition/render:3","parameters":{},"container":{"image":"busybox","command":["echo"],"resourceRequirements":[{"type":"VCPU","value":"2"},{"type":"MEMORY","value":"2048"},{"type":"GPU","value":"1"}]},"tags":{"prescale:project":"films","prescale:deadline":"2025-12-01T00:00:00Z","prescale:elastic":"true"}}}"#;

    #[test]
    fn runnable_event_maps_to_one_submission_once() {
        let mut ing = Ingest::new(Mapping::default(), SeenSet::in_memory());
        let evs = ing.observe_line(RUNNABLE, "line 1").unwrap();
        let [Event::JobSubmitted(s)] = evs.as_slice() else {
            panic!("{evs:?}")
        };
        assert_eq!(s.compute_environment, "HighPriority");
        assert_eq!((s.vcpus, s.memory_mib, s.gpus), (2.0, 2048, 1));
        assert_eq!(s.job_type, "render");
        assert_eq!(s.project, "films");
        assert_eq!(s.deadline, Some(1_764_547_200_000));
        assert!(s.elasticity);
        assert!(ing.observe_line(RUNNABLE, "line 2").unwrap().is_empty());
        assert_eq!(ing.stats.duplicates, 1);
    }

    #[test]
    fn bad_tag_names_job_and_tag() {
        let line = RUNNABLE.replace(
            "\"prescale:elastic\":\"true\"",
            "\"prescale:priority\":\"high\"",
        );
        let mut ing = Ingest::new(Mapping::default(), SeenSet::in_memory());
        let e = ing.observe_line(&line, "line 1").unwrap_err().to_string();
        assert!(
            e.contains("4c7599ae") && e.contains("prescale:priority"),
            "{e}"
        );
        assert_eq!(ing.stats.bad, 1);
    }
}
