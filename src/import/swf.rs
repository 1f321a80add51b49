//! Standard Workload Format (Parallel Workloads Archive) importer.
//!
//! SWF has 18 whitespace-separated fields per job and `;` header comments.
//! A trace lacks most of what prescale's events carry, so the missing parts are
//! derived by documented, configurable rules (see [`SwfOptions`]):
//! - deadline = submit + `slack` × run time + `grace_s`;
//! - compute environment and job type from the queue / partition / group;
//! - project from the group id, user from the user id;
//! - memory = used (else requested) memory per processor × processors.
//!
//! Record handling follows the SWF definition: status 1 completed, 0 failed,
//! 5 cancelled (a cancelled job that never ran becomes a zero-length
//! CANCELLED completion), 2 a partial execution of a checkpointed job (its
//! last partial line, status 3/4, carries the outcome). Records that cannot
//! be simulated (unknown run time, no processors) are counted and reported,
//! never silently dropped.

use super::open_maybe_compressed;
use crate::events::{Event, JobCompleted, JobStatus, JobSubmitted, Millis};
use crate::limits::{
    quote, MAX_DURATION_S, MAX_JOB_MEMORY_MIB, MAX_JOB_VCPUS, MAX_TIME_MS, MIN_TIME_MS,
};
use serde::Serialize;
use std::io::BufRead;
use std::path::Path;

/// SWF field names, 1-based as in the format's definition.
const FIELDS: [&str; 18] = [
    "job_number",
    "submit_time",
    "wait_time",
    "run_time",
    "allocated_processors",
    "average_cpu_time",
    "used_memory",
    "requested_processors",
    "requested_time",
    "requested_memory",
    "status",
    "user_id",
    "group_id",
    "executable",
    "queue",
    "partition",
    "preceding_job",
    "think_time",
];

/// Which SWF field names a compute environment or job type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwfKey {
    Queue,
    Partition,
    Group,
    Executable,
    /// Size class of the job by processors (small ≤ 8, medium ≤ 128, large).
    Size,
}

/// Derivation rules for what SWF lacks.
#[derive(Debug, Clone, Serialize)]
pub struct SwfOptions {
    /// deadline = submit + slack × run time + grace.
    pub slack: f64,
    pub grace_s: i64,
    /// Field naming the compute environment (partition falls back to queue when unknown).
    pub env_from: SwfKey,
    pub job_type_from: SwfKey,
    /// Priority given to every job (SWF has none).
    pub priority: i32,
    /// Jobs may shrink/grow while running (SWF rigid jobs: false).
    pub elastic: bool,
    /// Skip malformed lines (counted) instead of failing.
    pub skip_bad: bool,
    /// Keep at most this many jobs (after the first `skip_jobs`).
    pub max_jobs: Option<usize>,
    pub skip_jobs: usize,
}

impl Default for SwfOptions {
    fn default() -> Self {
        SwfOptions {
            slack: 3.0,
            grace_s: 900,
            env_from: SwfKey::Partition,
            job_type_from: SwfKey::Queue,
            priority: 0,
            elastic: false,
            skip_bad: false,
            max_jobs: None,
            skip_jobs: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwfError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: field {field_no} `{field}`: {message}")]
    Field {
        path: String,
        line: u64,
        field_no: usize,
        field: &'static str,
        message: String,
    },
    #[error("{path}:{line}: header `UnixStartTime`: {message}")]
    Header {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path}:{line}: expected 18 fields, found {found}")]
    Shape {
        path: String,
        line: u64,
        found: usize,
    },
}

/// What the importer did with each record.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SwfReport {
    pub lines: u64,
    pub jobs: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub cancelled_before_start: u64,
    pub partial_lines: u64,
    pub skipped_unknown_runtime: u64,
    pub skipped_no_processors: u64,
    pub skipped_bad_lines: u64,
    /// Of `skipped_bad_lines`, those that repeated an earlier job's number
    /// (each counted once: the second record is bad, the first is kept).
    pub skipped_duplicate_ids: u64,
    /// First few bad-line errors, for the user.
    pub bad_line_examples: Vec<String>,
    pub unix_start_time: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SwfImport {
    /// Submissions and completions, sorted by event time (stable).
    pub events: Vec<Event>,
    pub report: SwfReport,
}

/// Read an SWF log (plain or gzip) into events.
pub fn read_swf(path: &Path, opts: &SwfOptions) -> Result<SwfImport, SwfError> {
    let p = path.display().to_string();
    let reader = open_maybe_compressed(path).map_err(|source| SwfError::Io {
        path: p.clone(),
        source,
    })?;
    parse_swf(reader, &p, opts)
}

/// Parse SWF text from any reader; `name` is used in error messages.
pub fn parse_swf(
    reader: impl BufRead,
    name: &str,
    opts: &SwfOptions,
) -> Result<SwfImport, SwfError> {
    let mut report = SwfReport::default();
    let mut unix_start: i64 = 0;
    let mut events = Vec::new();
    let mut seen_jobs = 0usize;
    let mut ids = std::collections::HashSet::new();
    // A bad record fails the import, or with `skip_bad` is counted and kept
    // as an example.
    let bad = |e: SwfError, report: &mut SwfReport| {
        if !opts.skip_bad {
            return Err(e);
        }
        report.skipped_bad_lines += 1;
        if report.bad_line_examples.len() < 5 {
            report.bad_line_examples.push(e.to_string());
        }
        Ok(())
    };
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|source| SwfError::Io {
            path: name.to_string(),
            source,
        })?;
        report.lines += 1;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(h) = t.strip_prefix(';') {
            if let Some((k, v)) = h.split_once(':') {
                if k.trim() == "UnixStartTime" {
                    match v.trim().parse::<i64>() {
                        Ok(s) if crate::limits::time_ok(s.saturating_mul(1000)) => {
                            unix_start = s;
                            report.unix_start_time = Some(s);
                        }
                        Ok(_) => {
                            let message = format!(
                                "{} is outside 1970..2200 (epoch seconds)",
                                quote(v.trim())
                            );
                            bad(
                                SwfError::Header {
                                    path: name.to_string(),
                                    line: line_no,
                                    message,
                                },
                                &mut report,
                            )?;
                        }
                        Err(_) => {}
                    }
                }
            }
            continue;
        }
        let rec = match parse_line(t, name, line_no)
            .and_then(|r| check_ranges(&r, unix_start, name, line_no).map(|_| r))
        {
            Ok(r) => r,
            Err(e) => {
                bad(e, &mut report)?;
                continue;
            }
        };
        if rec[10] == 2 {
            // A partial execution; the job's outcome is on its last partial line.
            report.partial_lines += 1;
            continue;
        }
        if !ids.insert(rec[0]) {
            let e = SwfError::Field {
                path: name.to_string(),
                line: line_no,
                field_no: 1,
                field: FIELDS[0],
                message: format!("job {} appears again (ids must be unique)", rec[0]),
            };
            bad(e, &mut report)?;
            report.skipped_duplicate_ids += 1;
            continue;
        }
        seen_jobs += 1;
        if seen_jobs <= opts.skip_jobs {
            continue;
        }
        if let Some(max) = opts.max_jobs {
            if report.jobs as usize >= max {
                break;
            }
        }
        report.jobs += 1;
        to_events(&rec, unix_start, opts, &mut report, &mut events);
    }
    events.sort_by_key(|e| e.time());
    Ok(SwfImport { events, report })
}

fn parse_line(t: &str, name: &str, line: u64) -> Result<[i64; 18], SwfError> {
    let mut rec = [0i64; 18];
    let mut n = 0;
    for (j, tok) in t.split_whitespace().enumerate() {
        if j >= 18 {
            n = j + 1;
            continue;
        }
        // Some logs write fractional seconds or memory; round them (only
        // what an i64 holds: `as` would saturate 1e300 to the limit).
        let v = tok
            .parse::<i64>()
            .or_else(|_| {
                tok.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && f.abs() < 9.0e18)
                    .map(|f| f.round() as i64)
                    .ok_or(())
            })
            .map_err(|_| SwfError::Field {
                path: name.to_string(),
                line,
                field_no: j + 1,
                field: FIELDS[j],
                message: format!("`{}` is not a number", quote(tok)),
            })?;
        rec[j] = v;
        n = j + 1;
    }
    if n != 18 {
        return Err(SwfError::Shape {
            path: name.to_string(),
            line,
            found: n,
        });
    }
    if rec[1] < 0 {
        return Err(SwfError::Field {
            path: name.to_string(),
            line,
            field_no: 2,
            field: FIELDS[1],
            message: format!("submit time {} is negative", rec[1]),
        });
    }
    Ok(rec)
}

/// The documented ranges of [`crate::limits`] for the fields prescale
/// derives events from, so the arithmetic below cannot overflow and every
/// time lands inside the accepted window (finish after submission follows:
/// wait and run are never negative when used).
fn check_ranges(rec: &[i64; 18], unix_start: i64, name: &str, line: u64) -> Result<(), SwfError> {
    let err = |j: usize, message: String| SwfError::Field {
        path: name.to_string(),
        line,
        field_no: j + 1,
        field: FIELDS[j],
        message,
    };
    for j in [2, 3, 8] {
        if rec[j] > MAX_DURATION_S {
            return Err(err(
                j,
                format!(
                    "{} s is longer than the limit of {MAX_DURATION_S} s",
                    rec[j]
                ),
            ));
        }
    }
    for j in [4, 7] {
        if rec[j] > MAX_JOB_VCPUS {
            return Err(err(
                j,
                format!(
                    "{} processors is above the limit of {MAX_JOB_VCPUS}",
                    rec[j]
                ),
            ));
        }
    }
    let procs = if rec[4] > 0 { rec[4] } else { rec[7] };
    for j in [6, 9] {
        let mib = rec[j].max(0) as i128 * procs.max(0) as i128 / 1024;
        if mib > MAX_JOB_MEMORY_MIB as i128 {
            return Err(err(
                j,
                format!(
                    "{} KB per processor x {procs} is above the limit of {MAX_JOB_MEMORY_MIB} MiB",
                    rec[j]
                ),
            ));
        }
    }
    let submit = (unix_start as i128 + rec[1] as i128) * 1000;
    let end = submit + (rec[2].max(0) as i128 + rec[3].max(0) as i128) * 1000;
    if submit < MIN_TIME_MS as i128 || end > MAX_TIME_MS as i128 {
        return Err(err(
            1,
            format!(
                "submit time {} (+ UnixStartTime {unix_start}) puts the job outside 1970..2200",
                rec[1]
            ),
        ));
    }
    Ok(())
}

fn key_of(rec: &[i64; 18], k: SwfKey, procs: i64) -> String {
    match k {
        SwfKey::Queue => format!("queue-{}", rec[14]),
        SwfKey::Partition if rec[15] >= 0 => format!("partition-{}", rec[15]),
        SwfKey::Partition => format!("queue-{}", rec[14]),
        SwfKey::Group => format!("group-{}", rec[12]),
        SwfKey::Executable => format!("exe-{}", rec[13]),
        SwfKey::Size => match procs {
            ..=8 => "small".to_string(),
            9..=128 => "medium".to_string(),
            _ => "large".to_string(),
        },
    }
}

fn to_events(
    rec: &[i64; 18],
    unix_start: i64,
    opts: &SwfOptions,
    report: &mut SwfReport,
    out: &mut Vec<Event>,
) {
    let job_id = format!("swf-{}", rec[0]);
    let submit: Millis = (unix_start + rec[1]) * 1000;
    let wait = rec[2].max(0);
    let run = rec[3];
    let procs = if rec[4] > 0 { rec[4] } else { rec[7] };
    let status = rec[10];
    if procs <= 0 {
        report.skipped_no_processors += 1;
        return;
    }
    let cancelled = status == 5;
    if run < 0 && !cancelled {
        report.skipped_unknown_runtime += 1;
        return;
    }
    let mem_kb_per_proc = if rec[6] > 0 { rec[6] } else { rec[9].max(0) };
    let memory_mib = mem_kb_per_proc * procs / 1024;
    let runtime_s = run.max(0);
    let deadline_basis = if runtime_s > 0 {
        runtime_s
    } else {
        rec[8].max(0)
    };
    // Saturating: the ranges above bound the basis, but slack and grace are
    // the caller's (the CLI bounds them too).
    let deadline = submit.saturating_add(
        ((opts.slack * deadline_basis as f64) as i64)
            .saturating_add(opts.grace_s)
            .saturating_mul(1000),
    );
    out.push(Event::JobSubmitted(JobSubmitted {
        job_id: job_id.as_str().into(),
        submitted_at: submit,
        compute_environment: key_of(rec, opts.env_from, procs).into(),
        job_type: key_of(rec, opts.job_type_from, procs).into(),
        project: compact_str::format_compact!("group-{}", rec[12]),
        user: compact_str::format_compact!("user-{}", rec[11]),
        priority: opts.priority,
        vcpus: procs as f64,
        memory_mib,
        gpus: 0,
        estimated_runtime_s: (rec[8] > 0).then_some(rec[8]),
        budget_usd: None,
        deadline: Some(deadline),
        elasticity: opts.elastic,
    }));
    let started = submit + wait * 1000;
    let (status, finished) = match status {
        5 if run <= 0 => {
            report.cancelled += 1;
            report.cancelled_before_start += 1;
            (JobStatus::Cancelled, started)
        }
        5 => {
            report.cancelled += 1;
            (JobStatus::Cancelled, started + runtime_s * 1000)
        }
        0 | 4 => {
            report.failed += 1;
            (JobStatus::Failed, started + runtime_s * 1000)
        }
        _ => {
            report.completed += 1;
            (JobStatus::Succeeded, started + runtime_s * 1000)
        }
    };
    out.push(Event::JobCompleted(JobCompleted {
        job_id: job_id.into(),
        compute_environment: key_of(rec, opts.env_from, procs).into(),
        started_at: started,
        finished_at: finished,
        status,
        instance_type: None,
        market: None,
        region: None,
        vcpu_seconds: (procs * runtime_s) as f64,
        max_memory_mib: (memory_mib > 0).then_some(memory_mib),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "; UnixStartTime: 1000\n\
; Queue: 1\n\
    1        0      5    100   8     -1    1024   8  200 1024  1   1   1  -1  1 -1 -1 -1\n\
    2       10      0     -1   4     -1    -1    4   60 -1  5   2   2  -1  1 -1 -1 -1\n\
    3       20      0     50   4     -1    -1    4   60 -1  0   2   2  -1  2 -1 -1 -1\n\
    4       30      0     -1   4     -1    -1    4   60 -1  1   2   2  -1  2 -1 -1 -1\n\
    5       40      0     10   0     -1    -1   -1   60 -1  1   2   2  -1  2 -1 -1 -1\n";

    #[test]
    fn parses_and_derives() {
        let imp = parse_swf(SAMPLE.as_bytes(), "t.swf", &SwfOptions::default()).unwrap();
        let r = &imp.report;
        assert_eq!(r.unix_start_time, Some(1000));
        assert_eq!(r.jobs, 5);
        assert_eq!(r.completed, 1);
        assert_eq!(r.failed, 1);
        assert_eq!(r.cancelled_before_start, 1);
        assert_eq!(r.skipped_unknown_runtime, 1);
        assert_eq!(r.skipped_no_processors, 1);
        let Event::JobSubmitted(j) = &imp.events[0] else {
            panic!()
        };
        assert_eq!(j.submitted_at, 1_000_000);
        assert_eq!(j.compute_environment, "queue-1");
        assert_eq!(j.project, "group-1");
        assert_eq!(j.memory_mib, 8);
        // deadline = submit + 3 × 100 s + 900 s
        assert_eq!(j.deadline, Some(1_000_000 + 1_200_000));
        let done = imp
            .events
            .iter()
            .find_map(|e| match e {
                Event::JobCompleted(c) if c.job_id == "swf-1" => Some(c.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(done.started_at, 1_005_000);
        assert_eq!(done.finished_at, 1_105_000);
        assert!(imp.events.windows(2).all(|w| w[0].time() <= w[1].time()));
    }

    #[test]
    fn bad_line_names_line_and_field() {
        let text = format!("{SAMPLE}    6  x  0 1 1 -1 -1 1 1 -1 1 1 1 -1 1 -1 -1 -1\n");
        let e = parse_swf(text.as_bytes(), "t.swf", &SwfOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("t.swf:8") && msg.contains("submit_time"),
            "{msg}"
        );
        let opts = SwfOptions {
            skip_bad: true,
            ..Default::default()
        };
        let imp = parse_swf(text.as_bytes(), "t.swf", &opts).unwrap();
        assert_eq!(imp.report.skipped_bad_lines, 1);
        let short = "1 2 3\n";
        let e = parse_swf(short.as_bytes(), "t.swf", &SwfOptions::default()).unwrap_err();
        assert!(e.to_string().contains("expected 18 fields"));
    }
}
