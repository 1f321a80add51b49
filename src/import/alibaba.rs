//! Alibaba GPU cluster trace (ATC'23, `openb_pod_list_default.csv`) → events.
//!
//! Columns: `name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,
//! pod_phase,creation_time,deletion_time,scheduled_time` (times in seconds
//! from the start of the trace). Mapping (documented in `docs/forecasting.md`):
//! - `creation_time` → `JobSubmitted.submitted_at`, `deletion_time` →
//!   `JobCompleted.finished_at`, `scheduled_time` → `started_at`; times are
//!   offset by `epoch_ms` (the trace has no absolute date);
//! - vCPU = `cpu_milli / 1000`, memory = `memory_mib`, GPUs = `num_gpu`;
//! - compute environment = `gpu_spec` when set, else `gpu` for GPU pods and
//!   `cpu` for CPU-only pods; job type = `qos`; priority LS 3 > Guaranteed 2 >
//!   Burstable 1 > BE 0;
//! - phase: Succeeded → SUCCEEDED, Failed → FAILED, Running (still running
//!   when the trace was cut; its deletion time is the end of the trace) →
//!   SUCCEEDED, Pending (never scheduled) → CANCELLED.
//!
//! A row with a missing or unparsable field is an error naming the line and
//! field, or, with `skip_bad`, counted in the report and left out.

use crate::events::{Event, JobCompleted, JobStatus, JobSubmitted, Millis};
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct AlibabaOptions {
    /// Added to every time (ms since the epoch of trace second 0).
    pub epoch_ms: Millis,
    pub skip_bad: bool,
}

#[derive(Debug, Clone, Default)]
pub struct AlibabaReport {
    pub rows: usize,
    pub jobs: usize,
    /// Skipped rows: (line number, reason).
    pub bad: Vec<(usize, String)>,
}

#[derive(Debug)]
pub struct AlibabaImport {
    pub events: Vec<Event>,
    pub report: AlibabaReport,
}

#[derive(Debug, thiserror::Error)]
pub enum AlibabaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: field {field}: {reason}")]
    Field {
        path: String,
        line: usize,
        field: &'static str,
        reason: String,
    },
    #[error("{path}: line {line}: {source}")]
    Csv {
        path: String,
        line: usize,
        #[source]
        source: csv::Error,
    },
    #[error("{path}: header lacks column {0}", path = .1)]
    Header(&'static str, String),
}

const COLS: [&str; 10] = [
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
];

/// Does this path look like the Alibaba pod list (by header)?
pub fn is_alibaba_csv(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.starts_with("name,cpu_milli,")))
        .unwrap_or(false)
}

pub fn read_alibaba(path: &Path, opts: &AlibabaOptions) -> Result<AlibabaImport, AlibabaError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| AlibabaError::Io {
        path: p.clone(),
        source,
    })?;
    parse(file, &p, opts)
}

fn parse<R: std::io::Read>(
    r: R,
    p: &str,
    opts: &AlibabaOptions,
) -> Result<AlibabaImport, AlibabaError> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(r);
    let headers = rdr
        .headers()
        .map_err(|source| AlibabaError::Csv {
            path: p.into(),
            line: 1,
            source,
        })?
        .clone();
    let mut idx = [0usize; 10];
    for (k, c) in COLS.iter().enumerate() {
        idx[k] = headers
            .iter()
            .position(|h| h.trim() == *c)
            .ok_or_else(|| AlibabaError::Header(c, p.into()))?;
    }
    let mut out = AlibabaImport {
        events: Vec::new(),
        report: AlibabaReport::default(),
    };
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        out.report.rows += 1;
        let row = match rec {
            Ok(r) => r,
            Err(source) if !opts.skip_bad => {
                return Err(AlibabaError::Csv {
                    path: p.into(),
                    line,
                    source,
                })
            }
            Err(e) => {
                out.report.bad.push((line, e.to_string()));
                continue;
            }
        };
        match row_events(&row, &idx, opts.epoch_ms) {
            Ok((s, c)) => {
                out.events.push(s);
                out.events.push(c);
                out.report.jobs += 1;
            }
            Err((field, reason)) if !opts.skip_bad => {
                return Err(AlibabaError::Field {
                    path: p.into(),
                    line,
                    field,
                    reason,
                })
            }
            Err((field, reason)) => out.report.bad.push((line, format!("{field}: {reason}"))),
        }
    }
    out.events.sort_by_key(|e| e.time());
    Ok(out)
}

type FieldErr = (&'static str, String);

fn num(row: &csv::StringRecord, idx: &[usize; 10], k: usize) -> Result<f64, FieldErr> {
    let raw = row.get(idx[k]).unwrap_or("").trim();
    let v: f64 = raw
        .parse()
        .map_err(|_| (COLS[k], format!("not a number: {raw:?}")))?;
    if !v.is_finite() || v < 0.0 {
        return Err((
            COLS[k],
            format!("must be a non-negative number, got {raw:?}"),
        ));
    }
    Ok(v)
}

fn row_events(
    row: &csv::StringRecord,
    idx: &[usize; 10],
    epoch_ms: Millis,
) -> Result<(Event, Event), FieldErr> {
    let name = row.get(idx[0]).unwrap_or("").trim();
    if name.is_empty() {
        return Err(("name", "empty".into()));
    }
    let cpu = num(row, idx, 1)? / 1000.0;
    let mem = num(row, idx, 2)?;
    let gpus = num(row, idx, 3)?;
    let spec = row.get(idx[4]).unwrap_or("").trim();
    let qos = row.get(idx[5]).unwrap_or("").trim();
    let phase = row.get(idx[6]).unwrap_or("").trim();
    let created = num(row, idx, 7)?;
    let deleted = num(row, idx, 8)?;
    // empty for pods never scheduled (Pending): they never started
    let scheduled = match row.get(idx[9]).map(str::trim) {
        None | Some("") => None,
        Some(_) => Some(num(row, idx, 9)?),
    };
    if deleted < created {
        return Err((
            "deletion_time",
            format!("{deleted} is before creation_time {created}"),
        ));
    }
    let env = if !spec.is_empty() && spec != "nan" {
        spec.to_string()
    } else if gpus > 0.0 {
        "gpu".to_string()
    } else {
        "cpu".to_string()
    };
    let priority = match qos {
        "LS" => 3,
        "Guaranteed" => 2,
        "Burstable" => 1,
        _ => 0,
    };
    let status = match phase {
        "Failed" => JobStatus::Failed,
        "Pending" => JobStatus::Cancelled,
        "Succeeded" | "Running" => JobStatus::Succeeded,
        other => return Err(("pod_phase", format!("unknown phase {other:?}"))),
    };
    let ms = |s: f64| epoch_ms + (s * 1000.0).round() as i64;
    let start = match scheduled {
        Some(t) => t.clamp(created, deleted),
        None => deleted,
    };
    let sub = Event::JobSubmitted(JobSubmitted {
        job_id: name.into(),
        submitted_at: ms(created),
        compute_environment: env.as_str().into(),
        job_type: if qos.is_empty() {
            "unknown".into()
        } else {
            qos.into()
        },
        project: "alibaba".into(),
        user: "alibaba".into(),
        priority,
        vcpus: cpu,
        memory_mib: mem.round() as i64,
        gpus: gpus.round() as i32,
        estimated_runtime_s: None,
        budget_usd: None,
        deadline: None,
        elasticity: false,
    });
    let done = Event::JobCompleted(JobCompleted {
        job_id: name.into(),
        compute_environment: env.into(),
        started_at: ms(start),
        finished_at: ms(deleted),
        status,
        instance_type: None,
        market: None,
        region: None,
        vcpu_seconds: cpu * (deleted - start).max(0.0),
        max_memory_mib: None,
    });
    Ok((sub, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n";

    #[test]
    fn maps_rows_to_events() {
        let text = format!(
            "{HEAD}p0,12000,16384,1,1000,,LS,Running,0,100,0\np1,4000,1024,0,0,,BE,Failed,10,20,12\np2,1000,10,0,0,,BE,Pending,5,30,\n"
        );
        let out = parse(text.as_bytes(), "t.csv", &AlibabaOptions::default()).unwrap();
        assert_eq!(out.report.jobs, 3);
        assert_eq!(out.events.len(), 6);
        let Event::JobSubmitted(s) = &out.events[0] else {
            panic!()
        };
        assert_eq!(
            (s.vcpus, s.gpus, s.compute_environment.as_str()),
            (12.0, 1, "gpu")
        );
        let cpu_env = out
            .events
            .iter()
            .any(|e| matches!(e, Event::JobSubmitted(s) if s.compute_environment == "cpu"));
        assert!(cpu_env);
    }

    #[test]
    fn bad_field_names_line_and_field() {
        let text = format!("{HEAD}p0,abc,16384,1,1000,,LS,Running,0,100,0\n");
        let err = parse(text.as_bytes(), "t.csv", &AlibabaOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2") && msg.contains("cpu_milli"), "{msg}");
        let opts = AlibabaOptions {
            skip_bad: true,
            ..Default::default()
        };
        let out = parse(text.as_bytes(), "t.csv", &opts).unwrap();
        assert_eq!(out.report.bad.len(), 1);
        assert!(out.events.is_empty());
    }
}
