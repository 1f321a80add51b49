//! Slurm's views of jobs → prescale's events. Pure: the ingester feeds it the
//! text `squeue --json` printed and the lines the `jobcomp/script` hook
//! spooled, so every mapping rule is unit-tested without a cluster.
//!
//! Conventions (docs/slurm.md): environment = partition (through a map),
//! vCPUs / memory / GPUs from the job's requested TRES, project = account,
//! user = user, job type / priority / deadline / budget / runtime estimate /
//! elasticity from `key=value` words in the job's `--comment`.

use super::SlurmError;
use crate::events::{JobCompleted, JobStatus, JobSubmitted, Millis, Text};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One job of `squeue --json` (Slurm 22.05, OpenAPI v0.0.38 job view), only
/// the fields prescale reads. Optional numbers are `null` when unset.
#[derive(Debug, Clone, Deserialize)]
pub struct SqueueJob {
    pub job_id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub user_name: String,
    pub partition: String,
    pub job_state: String,
    pub submit_time: i64,
    #[serde(default)]
    pub start_time: i64,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub cpus: Option<i64>,
    #[serde(default)]
    pub node_count: Option<i64>,
    /// Minutes; `null` = the partition's limit.
    #[serde(default)]
    pub time_limit: Option<i64>,
    #[serde(default)]
    pub memory_per_node: Option<i64>,
    #[serde(default)]
    pub memory_per_cpu: Option<i64>,
    /// "cpu=2,mem=1000M,node=1,billing=2,gres/gpu=1"
    #[serde(default)]
    pub tres_req_str: String,
}

#[derive(Debug, Deserialize)]
struct SqueueOutput {
    #[serde(default)]
    jobs: Vec<SqueueJob>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

/// Parse `squeue --json` output; errors the command reported are an error.
pub fn parse_squeue(text: &str) -> Result<Vec<SqueueJob>, SlurmError> {
    let out: SqueueOutput = serde_json::from_str(text).map_err(|e| {
        SlurmError::permanent(format!("squeue --json: not the 22.05 job view: {e}"))
    })?;
    if let Some(e) = out.errors.first() {
        return Err(SlurmError::transient(format!(
            "squeue --json reported: {e}"
        )));
    }
    Ok(out.jobs)
}

/// How Slurm names map onto prescale's: partition → compute environment.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// Partition → environment; a partition absent here keeps its own name.
    pub environments: BTreeMap<String, String>,
    /// Only these partitions are ingested (empty: all).
    pub partitions: Vec<String>,
    /// Prepended to Slurm's job id (distinguishes clusters sharing topics).
    pub job_id_prefix: String,
}

impl Naming {
    pub fn ingests(&self, partition: &str) -> bool {
        self.partitions.is_empty() || self.partitions.iter().any(|p| p == partition)
    }
    pub fn environment(&self, partition: &str) -> Text {
        self.environments
            .get(partition)
            .map_or_else(|| Text::from(partition), |e| Text::from(e.as_str()))
    }
    pub fn job_id(&self, slurm_id: &str) -> Text {
        let mut t = Text::from(self.job_id_prefix.as_str());
        t.push_str(slurm_id);
        t
    }
}

/// What a job's `--comment` may say. Words that are not `key=value` with a
/// known key are ignored (comments are free text); a known key with a bad
/// value is reported as a [`FieldProblem`] and left unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommentFields {
    pub job_type: Option<String>,
    pub priority: Option<i32>,
    pub deadline: Option<Millis>,
    pub budget_usd: Option<f64>,
    pub runtime_s: Option<i64>,
    pub elastic: Option<bool>,
}

/// A value prescale could not read: which field and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

/// `"90"` / `"90s"` / `"15m"` / `"2h"` / `"1d"` → seconds.
fn duration_s(v: &str) -> Option<i64> {
    let (num, mult) = match v.char_indices().last()? {
        (i, 's') => (&v[..i], 1),
        (i, 'm') => (&v[..i], 60),
        (i, 'h') => (&v[..i], 3600),
        (i, 'd') => (&v[..i], 86_400),
        _ => (v, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(|n| n * mult)
}

/// A deadline: RFC 3339 time, Unix seconds, or `+<duration>` after submit.
fn deadline_ms(v: &str, submitted_at: Millis) -> Option<Millis> {
    if let Some(rel) = v.strip_prefix('+') {
        return duration_s(rel).map(|s| submitted_at + s * 1000);
    }
    if let Ok(secs) = v.parse::<i64>() {
        return Some(secs * 1000);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Read the `key=value` conventions of a job's comment. Separators: spaces,
/// commas or semicolons.
pub fn parse_comment(comment: &str, submitted_at: Millis) -> (CommentFields, Vec<FieldProblem>) {
    let mut f = CommentFields::default();
    let mut bad = Vec::new();
    let mut problem = |field: &'static str, v: &str, want: &str| {
        bad.push(FieldProblem {
            field,
            message: format!("`{v}` is not {want}"),
        })
    };
    for word in comment
        .split([' ', ',', ';', '\t'])
        .filter(|w| !w.is_empty())
    {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k.to_ascii_lowercase().as_str() {
            "type" | "job_type" => f.job_type = Some(v.to_string()),
            "priority" => match v.parse() {
                Ok(p) => f.priority = Some(p),
                Err(_) => problem("priority", v, "an integer"),
            },
            "deadline" => match deadline_ms(v, submitted_at) {
                Some(d) => f.deadline = Some(d),
                None => problem("deadline", v, "an RFC 3339 time, Unix seconds or +DURATION"),
            },
            "budget" | "budget_usd" => match v.parse::<f64>() {
                Ok(b) if b.is_finite() && b >= 0.0 => f.budget_usd = Some(b),
                _ => problem("budget", v, "a non-negative number of USD"),
            },
            "runtime" | "estimate" => match duration_s(v) {
                Some(s) => f.runtime_s = Some(s),
                None => problem("runtime", v, "a duration (90, 90s, 15m, 2h, 1d)"),
            },
            "elastic" => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => f.elastic = Some(true),
                "0" | "false" | "no" => f.elastic = Some(false),
                _ => problem("elastic", v, "true or false"),
            },
            _ => {}
        }
    }
    (f, bad)
}

/// Requested TRES: (cpus, memory MiB, gpus) from "cpu=2,mem=1000M,gres/gpu=1".
fn parse_tres(s: &str) -> (Option<f64>, Option<i64>, i32) {
    let (mut cpu, mut mem, mut gpus) = (None, None, 0);
    for kv in s.split(',') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k {
            "cpu" => cpu = v.parse().ok(),
            "mem" => mem = memory_mib(v),
            "gres/gpu" => gpus = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    (cpu, mem, gpus)
}

/// "1000M" / "4G" / "512K" / "1T" (Slurm prints MiB-based units) → MiB.
fn memory_mib(v: &str) -> Option<i64> {
    let (num, mult) = match v.chars().last()? {
        'K' => (&v[..v.len() - 1], 1.0 / 1024.0),
        'M' => (&v[..v.len() - 1], 1.0),
        'G' => (&v[..v.len() - 1], 1024.0),
        'T' => (&v[..v.len() - 1], 1024.0 * 1024.0),
        _ => (v, 1.0),
    };
    num.parse::<f64>().ok().map(|n| (n * mult).round() as i64)
}

/// A submission from one `squeue --json` job.
pub fn submission(job: &SqueueJob, naming: &Naming) -> (JobSubmitted, Vec<FieldProblem>) {
    let submitted_at = job.submit_time * 1000;
    let (c, bad) = parse_comment(&job.comment, submitted_at);
    let (tres_cpu, tres_mem, gpus) = parse_tres(&job.tres_req_str);
    let vcpus = tres_cpu.or(job.cpus.map(|c| c as f64)).unwrap_or(1.0);
    let memory_mib = tres_mem
        .or_else(|| job.memory_per_node.map(|m| m * job.node_count.unwrap_or(1)))
        .or_else(|| job.memory_per_cpu.map(|m| (m as f64 * vcpus) as i64))
        .unwrap_or(0);
    let ev = JobSubmitted {
        job_id: naming.job_id(&job.job_id.to_string()),
        submitted_at,
        compute_environment: naming.environment(&job.partition),
        job_type: Text::from(c.job_type.as_deref().unwrap_or(job.name.as_str())),
        project: Text::from(job.account.as_str()),
        user: Text::from(job.user_name.as_str()),
        priority: c.priority.unwrap_or(0),
        vcpus,
        memory_mib,
        gpus,
        estimated_runtime_s: c.runtime_s.or(job.time_limit.map(|m| m * 60)),
        budget_usd: c.budget_usd,
        deadline: c.deadline,
        elasticity: c.elastic.unwrap_or(false),
    };
    (ev, bad)
}

/// One finished job as the `jobcomp/script` hook saw it: the environment
/// Slurm gives the script (JOBID, JOBSTATE, PARTITION, PROCS, SUBMIT, START,
/// END, ACCOUNT, USERNAME, JOBNAME, …), one JSON object per spool line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct JobCompRecord {
    pub jobid: String,
    pub jobstate: String,
    pub partition: String,
    pub procs: String,
    pub submit: String,
    pub start: String,
    pub end: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub jobname: String,
}

/// The variables of Slurm's jobcomp/script environment that prescale keeps.
pub const JOBCOMP_VARS: [&str; 12] = [
    "JOBID",
    "JOBSTATE",
    "PARTITION",
    "PROCS",
    "SUBMIT",
    "START",
    "END",
    "ACCOUNT",
    "USERNAME",
    "USER",
    "JOBNAME",
    "EXITCODE",
];

impl JobCompRecord {
    /// Parse one spool line; the error names the line's job when it can.
    pub fn parse(line: &str) -> Result<Self, SlurmError> {
        serde_json::from_str(line)
            .map_err(|e| SlurmError::permanent(format!("jobcomp spool line `{line}`: {e}")))
    }

    fn secs(&self, field: &'static str, v: &str) -> Result<i64, SlurmError> {
        v.parse().map_err(|_| {
            SlurmError::permanent(format!(
                "jobcomp record of job {}: field {field}: `{v}` is not Unix seconds",
                self.jobid
            ))
        })
    }

    /// Whether the job is done for good. A requeued job (REQUEUED,
    /// REQUEUE_HOLD…) runs again under the same id, so it is not completed.
    pub fn is_final(&self) -> bool {
        !self.jobstate.starts_with("REQUEUE")
    }

    /// The completion event.
    pub fn completion(&self, naming: &Naming) -> Result<JobCompleted, SlurmError> {
        let start = self.secs("START", &self.start)?;
        let end = self.secs("END", &self.end)?;
        let procs: f64 = self.procs.parse().map_err(|_| {
            SlurmError::permanent(format!(
                "jobcomp record of job {}: field PROCS: `{}` is not a number",
                self.jobid, self.procs
            ))
        })?;
        // A job cancelled while pending never started: START is 0.
        let started = if start > 0 { start } else { end };
        let status = match self.jobstate.as_str() {
            "COMPLETED" => JobStatus::Succeeded,
            "CANCELLED" => JobStatus::Cancelled,
            "PREEMPTED" => JobStatus::Preempted,
            // FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE
            _ => JobStatus::Failed,
        };
        Ok(JobCompleted {
            job_id: naming.job_id(&self.jobid),
            compute_environment: naming.environment(&self.partition),
            started_at: started * 1000,
            finished_at: end * 1000,
            status,
            instance_type: None,
            market: None,
            region: None,
            vcpu_seconds: procs * (end - started).max(0) as f64,
            max_memory_mib: None,
        })
    }

    /// A submission made up from the completion record, for a job that
    /// started and finished between two polls and had already left squeue:
    /// the comment is not in Slurm's jobcomp environment, so the
    /// conventions' fields are unset.
    pub fn submission(&self, naming: &Naming) -> Result<JobSubmitted, SlurmError> {
        let submit = self.secs("SUBMIT", &self.submit)?;
        let user = if self.username.is_empty() {
            &self.user
        } else {
            &self.username
        };
        Ok(JobSubmitted {
            job_id: naming.job_id(&self.jobid),
            submitted_at: submit * 1000,
            compute_environment: naming.environment(&self.partition),
            job_type: Text::from(self.jobname.as_str()),
            project: Text::from(self.account.as_str()),
            user: Text::from(user.as_str()),
            priority: 0,
            vcpus: self.procs.parse().unwrap_or(1.0),
            memory_mib: 0,
            gpus: 0,
            estimated_runtime_s: None,
            budget_usd: None,
            deadline: None,
            elasticity: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_conventions() {
        let (f, bad) = parse_comment(
            "nightly run; priority=5 deadline=+2h,budget=3.5 runtime=15m type=etl elastic=yes x=1",
            1_000_000,
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(f.priority, Some(5));
        assert_eq!(f.deadline, Some(1_000_000 + 7_200_000));
        assert_eq!(f.budget_usd, Some(3.5));
        assert_eq!(f.runtime_s, Some(900));
        assert_eq!(f.job_type.as_deref(), Some("etl"));
        assert_eq!(f.elastic, Some(true));
        let (f, _) = parse_comment("deadline=2026-12-07T00:00:00Z", 0);
        assert_eq!(f.deadline, Some(1_796_601_600_000));
        let (f, bad) = parse_comment("priority=high budget=-1 deadline=soon", 0);
        assert_eq!(f, CommentFields::default());
        let fields: Vec<_> = bad.iter().map(|b| b.field).collect();
        assert_eq!(fields, ["priority", "budget", "deadline"]);
    }

    #[test]
    fn tres_and_memory() {
        assert_eq!(
            parse_tres("cpu=4,mem=2G,node=1,billing=4,gres/gpu=2"),
            (Some(4.0), Some(2048), 2)
        );
        assert_eq!(memory_mib("1000M"), Some(1000));
        assert_eq!(memory_mib("512K"), Some(1));
    }

    fn job(comment: &str) -> SqueueJob {
        serde_json::from_value(serde_json::json!({
            "job_id": 17, "name": "sim", "account": "physics", "user_name": "ana",
            "partition": "cloud", "job_state": "PENDING", "submit_time": 1000,
            "start_time": 0, "comment": comment, "cpus": 2, "node_count": 1,
            "time_limit": 30, "memory_per_node": 1000, "memory_per_cpu": null,
            "tres_req_str": "cpu=2,mem=1000M,node=1,billing=2"
        }))
        .unwrap()
    }

    #[test]
    fn submission_fields() {
        let naming = Naming {
            environments: [("cloud".to_string(), "slurm-cloud".to_string())].into(),
            job_id_prefix: "c1-".into(),
            ..Default::default()
        };
        let (s, bad) = submission(&job("priority=3"), &naming);
        assert!(bad.is_empty());
        assert_eq!(s.job_id, "c1-17");
        assert_eq!(s.compute_environment, "slurm-cloud");
        assert_eq!((s.project.as_str(), s.user.as_str()), ("physics", "ana"));
        assert_eq!((s.vcpus, s.memory_mib, s.gpus), (2.0, 1000, 0));
        assert_eq!(s.estimated_runtime_s, Some(1800));
        assert_eq!((s.priority, s.job_type.as_str()), (3, "sim"));
        assert_eq!(s.submitted_at, 1_000_000);
    }

    #[test]
    fn jobcomp_record() {
        let r = JobCompRecord::parse(
            r#"{"JOBID":"9","JOBSTATE":"TIMEOUT","PARTITION":"cloud","PROCS":"4","SUBMIT":"100","START":"110","END":"170","ACCOUNT":"a","USERNAME":"u"}"#,
        )
        .unwrap();
        let c = r.completion(&Naming::default()).unwrap();
        assert_eq!(c.status, JobStatus::Failed);
        assert_eq!(
            (c.started_at, c.finished_at, c.vcpu_seconds),
            (110_000, 170_000, 240.0)
        );
        assert!(r.is_final());
        let bad = JobCompRecord::parse(
            r#"{"JOBID":"9","JOBSTATE":"COMPLETED","PARTITION":"p","PROCS":"x","SUBMIT":"1","START":"1","END":"2"}"#,
        )
        .unwrap();
        let e = bad.completion(&Naming::default()).unwrap_err().to_string();
        assert!(e.contains("job 9") && e.contains("PROCS"), "{e}");
    }
}
