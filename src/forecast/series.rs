//! Demand series from job events: concurrent vCPU, memory and GPU demand per
//! compute environment in fixed buckets. A job counts from `submitted_at`
//! (demand exists as soon as it is queued — that is what capacity must meet)
//! until its `JobCompleted.finished_at`; a job with no completion counts until
//! the end of the data. Each bucket holds the time-average over the bucket, so
//! a job covering half a bucket adds half its size.
//!
//! This is a batch helper for training and evaluation; the live service gets
//! the same quantity from the event-time state store.

use crate::events::{Event, Millis};
use std::collections::{BTreeMap, HashMap};

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
    pub fn history(&self) -> super::History<'_> {
        super::History {
            key: &self.key,
            start: self.start,
            bucket_ms: self.bucket_ms,
            values: &self.values,
        }
    }
}

struct Job {
    env: String,
    submit: Millis,
    finish: Option<Millis>,
    size: [f64; 3],
}

/// Build series for every environment and metric that is not all zero. All
/// series share one time axis (`start` = first submission rounded down to a
/// bucket; end = last event time rounded up).
pub fn demand_series(events: &[Event], bucket_ms: i64) -> Vec<DemandSeries> {
    let bucket_ms = bucket_ms.max(1);
    let mut jobs: HashMap<&str, Job> = HashMap::new();
    let mut t_min = Millis::MAX;
    let mut t_max = Millis::MIN;
    for ev in events {
        match ev {
            Event::JobSubmitted(s) => {
                t_min = t_min.min(s.submitted_at);
                t_max = t_max.max(s.submitted_at);
                let j = jobs.entry(s.job_id.as_str()).or_insert(Job {
                    env: String::new(),
                    submit: s.submitted_at,
                    finish: None,
                    size: [0.0; 3],
                });
                j.env = s.compute_environment.clone();
                j.submit = s.submitted_at;
                j.size = [
                    s.vcpus.max(0.0),
                    s.memory_mib.max(0) as f64,
                    s.gpus.max(0) as f64,
                ];
            }
            Event::JobCompleted(c) => {
                t_max = t_max.max(c.finished_at);
                let j = jobs.entry(c.job_id.as_str()).or_insert(Job {
                    env: c.compute_environment.clone(),
                    submit: Millis::MAX,
                    finish: None,
                    size: [0.0; 3],
                });
                j.finish = Some(c.finished_at);
            }
            _ => {}
        }
    }
    if t_min == Millis::MAX || t_max < t_min {
        return Vec::new();
    }
    let start = t_min.div_euclid(bucket_ms) * bucket_ms;
    let end = (t_max.div_euclid(bucket_ms) + 1) * bucket_ms;
    let n = ((end - start) / bucket_ms) as usize;
    // per environment and metric: direct partial-bucket amounts plus a
    // difference array for fully covered buckets (O(1) per job, O(n) total)
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for j in jobs.values() {
        if j.submit == Millis::MAX {
            continue; // completion without submission: size unknown
        }
        let a = j.submit.max(start);
        let b = j.finish.unwrap_or(end).clamp(a, end);
        if b <= a {
            continue;
        }
        acc.entry(j.env.clone()).or_insert_with(|| Acc::new(n)).add(
            a - start,
            b - start,
            bucket_ms,
            &j.size,
        );
    }
    let mut out = Vec::new();
    for (env, a) in acc {
        for (mi, metric) in Metric::ALL.iter().enumerate() {
            let mut run = 0.0;
            let v: Vec<f64> = (0..n)
                .map(|i| {
                    run += a.diff[mi][i];
                    a.part[mi][i] + run
                })
                .collect();
            if v.iter().all(|&x| x == 0.0) {
                continue;
            }
            out.push(DemandSeries {
                key: format!("{env}/{}", metric.as_str()),
                environment: env.clone(),
                metric: *metric,
                start,
                bucket_ms,
                values: v,
            });
        }
    }
    out
}

struct Acc {
    part: [Vec<f64>; 3],
    diff: [Vec<f64>; 3],
}

impl Acc {
    fn new(n: usize) -> Self {
        let z = || vec![0.0; n + 1];
        Self {
            part: [z(), z(), z()],
            diff: [z(), z(), z()],
        }
    }

    /// Add a job covering `[a, b)` (ms from the series start).
    fn add(&mut self, a: i64, b: i64, w: i64, size: &[f64; 3]) {
        let ia = (a / w) as usize;
        let ib = (b / w) as usize; // bucket holding the exclusive end
        for k in 0..3 {
            if ia == ib {
                self.part[k][ia] += size[k] * (b - a) as f64 / w as f64;
                continue;
            }
            self.part[k][ia] += size[k] * ((ia as i64 + 1) * w - a) as f64 / w as f64;
            self.part[k][ib] += size[k] * (b - ib as i64 * w) as f64 / w as f64;
            self.diff[k][ia + 1] += size[k];
            self.diff[k][ib] -= size[k];
        }
    }
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
