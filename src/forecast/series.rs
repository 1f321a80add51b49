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

/// Stored points of one environment and metric: `(environment, metric,
/// [(epoch ms, value)])`.
pub type StoredPoints = (String, Metric, Vec<(Millis, f64)>);

/// Series from stored points (`prescale train --from-store`):
/// `(environment, metric, [(epoch ms, value)])` put on one bucket grid of
/// `bucket_ms` that starts at the earliest point's bucket. A bucket holds
/// the mean of the points inside it (stored points of the same width map one
/// to one; finer ones are averaged, which is the time average for equal
/// spacing); buckets with no point are 0, as [`demand_series`] pads. Series
/// that are all zero are left out.
pub fn series_from_points(points: &[StoredPoints], bucket_ms: i64) -> Vec<DemandSeries> {
    let bucket_ms = bucket_ms.max(1);
    let times = points.iter().flat_map(|(_, _, p)| p.iter().map(|x| x.0));
    let (Some(first), Some(last)) = (times.clone().min(), times.max()) else {
        return Vec::new();
    };
    let start = first.div_euclid(bucket_ms) * bucket_ms;
    let n = ((last.div_euclid(bucket_ms) * bucket_ms - start) / bucket_ms + 1) as usize;
    let mut out = Vec::new();
    for (env, metric, pts) in points {
        let mut sum = vec![0.0; n];
        let mut count = vec![0u32; n];
        for (t, v) in pts {
            if !v.is_finite() {
                continue;
            }
            let i = ((t.div_euclid(bucket_ms) * bucket_ms - start) / bucket_ms) as usize;
            sum[i] += v;
            count[i] += 1;
        }
        let values: Vec<f64> = sum
            .iter()
            .zip(&count)
            .map(|(s, c)| if *c > 0 { s / *c as f64 } else { 0.0 })
            .collect();
        if values.iter().all(|&v| v == 0.0) {
            continue;
        }
        out.push(DemandSeries {
            key: format!("{env}/{}", metric.as_str()),
            environment: env.clone(),
            metric: *metric,
            start,
            bucket_ms,
            values,
        });
    }
    out.sort_by(|a, b| {
        a.environment
            .cmp(&b.environment)
            .then(a.metric.cmp(&b.metric))
    });
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
    fn stored_points_go_on_one_grid() {
        let pts = vec![
            // environment b starts later and has a gap
            ("b".to_string(), Metric::Vcpus, vec![(20, 2.0), (40, 4.0)]),
            // a: two points per bucket of 10 are averaged
            (
                "a".to_string(),
                Metric::Vcpus,
                vec![(0, 1.0), (5, 3.0), (10, 5.0), (30, 1.0)],
            ),
            ("a".to_string(), Metric::Gpus, vec![(0, 0.0), (10, 0.0)]),
            ("a".to_string(), Metric::MemoryMib, vec![(12, 8.0)]),
        ];
        let s = series_from_points(&pts, 10);
        let keys: Vec<&str> = s.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["a/vcpus", "a/memory_mib", "b/vcpus"]);
        assert!(s.iter().all(|x| x.start == 0 && x.values.len() == 5));
        assert_eq!(s[0].values, vec![2.0, 5.0, 0.0, 1.0, 0.0]);
        assert_eq!(s[1].values, vec![0.0, 8.0, 0.0, 0.0, 0.0]);
        assert_eq!(s[2].values, vec![0.0, 0.0, 2.0, 0.0, 4.0]);
        assert!(series_from_points(&[], 10).is_empty());
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
