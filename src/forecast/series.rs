//! Demand series from job events: concurrent vCPU, memory and GPU demand per
//! compute environment in fixed buckets. A job counts from `submitted_at`
//! (demand exists as soon as it is queued — that is what capacity must meet)
//! until its `JobCompleted.finished_at`; a job with no completion counts until
//! the end of the data. Each bucket holds the time-average over the bucket, so
//! a job covering half a bucket adds half its size. The arithmetic is the
//! state store's (`crate::state`), so training sees exactly what the live
//! service will forecast from.

use crate::events::{Event, Millis};
use crate::state::{self, StateConfig};
use std::collections::BTreeMap;

/// Which resource a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Vcpus,
    MemoryMib,
    Gpus,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Vcpus, Metric::MemoryMib, Metric::Gpus];
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Vcpus => "vcpus",
            Metric::MemoryMib => "memory_mib",
            Metric::Gpus => "gpus",
        }
    }
}

/// One bucketed demand series.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandSeries {
    /// `"<environment>/<metric>"`.
    pub key: String,
    pub environment: String,
    pub metric: Metric,
    pub start: Millis,
    pub bucket_ms: i64,
    pub values: Vec<f64>,
}

impl DemandSeries {
    /// The first `end` buckets (data before a training cut).
    pub fn history_to(&self, end: usize) -> super::History<'_> {
        super::History {
            key: &self.key,
            start: self.start,
            bucket_ms: self.bucket_ms,
            values: &self.values[..end],
        }
    }

    pub fn history(&self) -> super::History<'_> {
        super::History {
            key: &self.key,
            start: self.start,
            bucket_ms: self.bucket_ms,
            values: &self.values,
        }
    }
}

/// Build per-environment series (summed over job types) for every metric
/// that is not all zero, from the shared event-time state
/// ([`crate::state::demand_series`]), on one common time axis (earlier
/// environments' starts pad later ones with zeros).
pub fn demand_series(events: &[Event], bucket_ms: i64) -> Vec<DemandSeries> {
    let cfg = StateConfig {
        bucket_ms: bucket_ms.max(1),
        history_buckets: 1 << 40,
        ..StateConfig::default()
    };
    let raw = state::demand_series(events, &cfg);
    if raw.is_empty() {
        return Vec::new();
    }
    let bucket_ms = cfg.bucket_ms;
    let start = raw.iter().map(|s| s.start).min().unwrap_or(0);
    let end = raw
        .iter()
        .map(|s| s.start + s.values.len() as i64 * bucket_ms)
        .max()
        .unwrap_or(start);
    let n = ((end - start) / bucket_ms) as usize;
    let mut by_env: BTreeMap<&str, [Vec<f64>; 3]> = BTreeMap::new();
    for s in &raw {
        let acc = by_env
            .entry(&s.compute_environment)
            .or_insert_with(|| [vec![0.0; n], vec![0.0; n], vec![0.0; n]]);
        let off = ((s.start - start) / bucket_ms) as usize;
        for (i, v) in s.values.iter().enumerate() {
            if off + i < n {
                for (a, x) in acc.iter_mut().zip(v) {
                    a[off + i] += x;
                }
            }
        }
    }
    let mut out = Vec::new();
    for (env, arrs) in by_env {
        for (k, metric) in Metric::ALL.iter().enumerate() {
            if arrs[k].iter().all(|&x| x == 0.0) {
                continue;
            }
            out.push(DemandSeries {
                key: format!("{env}/{}", metric.as_str()),
                environment: env.to_string(),
                metric: *metric,
                start,
                bucket_ms,
                values: arrs[k].clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{JobCompleted, JobStatus, JobSubmitted};

    pub(crate) fn sub(id: &str, env: &str, at: Millis, vcpus: f64) -> Event {
        Event::JobSubmitted(JobSubmitted {
            job_id: id.into(),
            submitted_at: at,
            compute_environment: env.into(),
            job_type: "batch".into(),
            project: "p".into(),
            user: "u".into(),
            priority: 0,
            vcpus,
            memory_mib: 0,
            gpus: 0,
            estimated_runtime_s: None,
            budget_usd: None,
            deadline: None,
            elasticity: false,
        })
    }

    pub(crate) fn done(id: &str, env: &str, at: Millis) -> Event {
        Event::JobCompleted(JobCompleted {
            job_id: id.into(),
            compute_environment: env.into(),
            started_at: at,
            finished_at: at,
            status: JobStatus::Succeeded,
            instance_type: None,
            market: None,
            region: None,
            vcpu_seconds: 0.0,
            max_memory_mib: None,
        })
    }

    #[test]
    fn time_averaged_concurrency() {
        // bucket 10: job a 4 vcpu on [0, 25), job b 2 vcpu on [15, 40)
        let ev = vec![
            sub("a", "q", 0, 4.0),
            sub("b", "q", 15, 2.0),
            done("a", "q", 25),
            done("b", "q", 40),
        ];
        let s = demand_series(&ev, 10);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].key, "q/vcpus");
        assert_eq!(s[0].values, vec![4.0, 4.0 + 1.0, 2.0 + 2.0, 2.0, 0.0]);
    }

    #[test]
    fn unfinished_jobs_run_to_the_end() {
        let ev = vec![sub("a", "q", 0, 1.0), sub("b", "r", 30, 3.0)];
        let s = demand_series(&ev, 10);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].values, vec![1.0, 1.0, 1.0, 1.0]);
        assert_eq!(s[1].values, vec![0.0, 0.0, 0.0, 3.0]);
    }
}
