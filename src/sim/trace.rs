//! The workload the simulator replays, joined from input events.
//!
//! A job's *actual* runtime comes from its recorded `JobCompleted`
//! (`finished_at - started_at`): the simulator may know the trace, the engine
//! may not. Jobs without a completion fall back to `estimated_runtime_s`.

use crate::events::{Event, JobStatus, Millis};
use std::collections::{BTreeMap, HashMap};

/// One job as the simulator runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimJob {
    pub id: String,
    /// Index into [`Workload::envs`].
    pub env: usize,
    pub submit: Millis,
    pub priority: i32,
    /// Milli-vCPUs (integer arithmetic keeps packing exact and deterministic).
    pub mcpu: i64,
    pub memory_mib: i64,
    pub gpus: i32,
    pub runtime_ms: Millis,
    /// The submitter's runtime estimate (SWF requested time), which a
    /// scheduler may use; the actual runtime stays hidden from decisions.
    pub est_runtime_ms: Option<Millis>,
    pub deadline: Option<Millis>,
    pub elastic: bool,
    /// Budget scopes the job is charged to (with `job:<id>`).
    pub project: String,
    pub user: String,
    /// Cancelled before it ever ran (a zero-length cancelled record): it
    /// never needs capacity and is left out of waits and deadlines.
    pub cancelled_in_queue: bool,
    /// Recorded start/finish in the trace (for the demand series).
    pub trace_start: Option<Millis>,
    pub trace_finish: Option<Millis>,
}

/// The jobs of a trace plus a few facts for the report.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Sorted by (submit, id).
    pub jobs: Vec<SimJob>,
    pub envs: Vec<String>,
    pub first_event: Millis,
    pub last_event: Millis,
    /// Submissions with no completion and no estimate (run 0 s).
    pub without_runtime: u64,
    /// Completions whose job was never submitted in the trace.
    pub orphan_completions: u64,
    /// Repeated submissions of an id already seen (the first one is kept).
    pub duplicate_submissions: u64,
}

impl Workload {
    /// Join submissions with their completions.
    pub fn from_events(events: &[Event]) -> Self {
        let mut done: HashMap<&str, (Millis, Millis, JobStatus)> = HashMap::new();
        let mut first = Millis::MAX;
        let mut last = Millis::MIN;
        for ev in events {
            first = first.min(ev.time());
            last = last.max(ev.time());
            if let Event::JobCompleted(c) = ev {
                done.insert(c.job_id.as_str(), (c.started_at, c.finished_at, c.status));
            }
        }
        let mut env_ix: BTreeMap<String, usize> = BTreeMap::new();
        for ev in events {
            if let Event::JobSubmitted(s) = ev {
                env_ix.entry(s.compute_environment.to_string()).or_insert(0);
            }
        }
        for (i, v) in env_ix.values_mut().enumerate() {
            *v = i;
        }
        let mut w = Workload {
            envs: env_ix.keys().cloned().collect(),
            first_event: if first == Millis::MAX { 0 } else { first },
            last_event: if last == Millis::MIN { 0 } else { last },
            ..Default::default()
        };
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for ev in events {
            let Event::JobSubmitted(s) = ev else { continue };
            if seen.insert(s.job_id.as_str(), ()).is_some() {
                w.duplicate_submissions += 1;
                continue;
            }
            let rec = done.get(s.job_id.as_str()).copied();
            let (runtime_ms, cancelled, ts, tf) = match rec {
                Some((st, fin, status)) => {
                    let rt = (fin - st).max(0);
                    (
                        rt,
                        status == JobStatus::Cancelled && rt == 0,
                        Some(st),
                        Some(fin),
                    )
                }
                None => match s.estimated_runtime_s {
                    Some(e) => (e.max(0) * 1000, false, None, None),
                    None => {
                        w.without_runtime += 1;
                        (0, false, None, None)
                    }
                },
            };
            w.jobs.push(SimJob {
                id: s.job_id.to_string(),
                env: env_ix[s.compute_environment.as_str()],
                submit: s.submitted_at,
                priority: s.priority,
                mcpu: (s.vcpus * 1000.0).round().max(1.0) as i64,
                memory_mib: s.memory_mib.max(0),
                gpus: s.gpus.max(0),
                runtime_ms,
                est_runtime_ms: s.estimated_runtime_s.map(|e| e.max(0) * 1000),
                deadline: s.deadline,
                elastic: s.elasticity,
                project: s.project.to_string(),
                user: s.user.to_string(),
                cancelled_in_queue: cancelled,
                trace_start: ts,
                trace_finish: tf,
            });
        }
        w.orphan_completions = done.keys().filter(|k| !seen.contains_key(*k)).count() as u64;
        w.jobs
            .sort_by(|a, b| a.submit.cmp(&b.submit).then_with(|| a.id.cmp(&b.id)));
        w
    }

    /// Concurrent vCPU demand per bucket as the trace recorded it: the
    /// time-weighted mean of vCPUs of jobs that were queued or running
    /// (submitted, not yet finished). This is what a perfect forecaster would
    /// predict and what the plot shows as demand.
    pub fn demand_series(
        &self,
        env: Option<usize>,
        start: Millis,
        bucket_ms: i64,
        n: usize,
    ) -> Vec<f64> {
        let mut deltas: Vec<(Millis, i64)> = Vec::new();
        for j in &self.jobs {
            if env.is_some_and(|e| e != j.env) || j.cancelled_in_queue {
                continue;
            }
            let end = j.trace_finish.unwrap_or(j.submit + j.runtime_ms);
            if end > j.submit {
                deltas.push((j.submit, j.mcpu));
                deltas.push((end, -j.mcpu));
            }
        }
        bucket_means(&mut deltas, start, bucket_ms, n)
    }
}

/// Time-weighted mean per bucket of a step function given as `(time, delta)`
/// changes (milli-units in, units out).
pub fn bucket_means(
    deltas: &mut [(Millis, i64)],
    start: Millis,
    bucket_ms: i64,
    n: usize,
) -> Vec<f64> {
    deltas.sort_unstable();
    let mut out = vec![0.0; n];
    let mut level: i64 = 0;
    let mut t = start;
    let mut i = 0;
    // Level before the window.
    while i < deltas.len() && deltas[i].0 <= start {
        level += deltas[i].1;
        i += 1;
    }
    for (b, slot) in out.iter_mut().enumerate() {
        let b_end = start + (b as i64 + 1) * bucket_ms;
        let mut acc: f64 = 0.0;
        while i < deltas.len() && deltas[i].0 < b_end {
            acc += level as f64 * (deltas[i].0 - t) as f64;
            t = deltas[i].0;
            level += deltas[i].1;
            i += 1;
        }
        acc += level as f64 * (b_end - t) as f64;
        t = b_end;
        *slot = acc / bucket_ms as f64 / 1000.0;
    }
    out
}

/// Re-time recorded completions as an elastic cloud would have produced
/// them: `started_at = submitted_at`, `finished_at = submitted_at + runtime`.
///
/// Why: a trace from a saturated on-premises cluster (RICC waited days at
/// times) records *its* queueing in the completion times. Fed as-is, the
/// engine would count that backlog as demand and the simulated cloud (where
/// jobs start within a boot delay) would be provisioned for a queue it never
/// has. Runtimes are unchanged. Returns how many completions were re-timed.
pub fn retime_without_queueing(events: &mut [Event]) -> u64 {
    let mut submitted: HashMap<String, Millis> = HashMap::new();
    for ev in events.iter() {
        if let Event::JobSubmitted(s) = ev {
            submitted
                .entry(s.job_id.to_string())
                .or_insert(s.submitted_at);
        }
    }
    let mut n = 0;
    for ev in events.iter_mut() {
        if let Event::JobCompleted(c) = ev {
            if let Some(&sub) = submitted.get(c.job_id.as_str()) {
                let rt = (c.finished_at - c.started_at).max(0);
                if c.started_at != sub {
                    n += 1;
                }
                c.started_at = sub;
                c.finished_at = sub + rt;
            }
        }
    }
    events.sort_by_key(|e| e.time());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_means_weights_by_time() {
        // 2 vCPU from 0.5 to 1.5 buckets.
        let mut d = vec![(50, 2000), (150, -2000)];
        let m = bucket_means(&mut d, 0, 100, 3);
        assert_eq!(m, vec![1.0, 1.0, 0.0]);
    }
}
