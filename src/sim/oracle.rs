//! A forecaster that knows the future: it answers with the demand the trace
//! actually recorded after the forecast origin, at every quantile. Plugged
//! into the same engine as `predictive`, it shows how much of the gap to the
//! ideal is the forecaster's fault (a lower-bound reference, not a product).

use super::trace::Workload;
use crate::events::Millis;
use crate::forecast::{Forecast, Forecaster, History};
use std::collections::BTreeMap;

/// True demand per compute environment as a step function.
#[derive(Debug, Clone, Default)]
pub struct OracleForecaster {
    /// env → (change times, level after each change in milli-vCPUs).
    steps: BTreeMap<String, (Vec<Millis>, Vec<i64>)>,
}

impl OracleForecaster {
    /// Demand = vCPUs of jobs submitted and not yet finished in the trace,
    /// the definition the event-time state uses for its series.
    pub fn from_workload(w: &Workload) -> Self {
        let mut per_env: Vec<Vec<(Millis, i64)>> = vec![Vec::new(); w.envs.len()];
        for j in &w.jobs {
            if j.cancelled_in_queue {
                continue;
            }
            let end = j.trace_finish.unwrap_or(j.submit + j.runtime_ms);
            if end > j.submit {
                per_env[j.env].push((j.submit, j.mcpu));
                per_env[j.env].push((end, -j.mcpu));
            }
        }
        let mut steps = BTreeMap::new();
        for (env, mut d) in per_env.into_iter().enumerate() {
            d.sort_unstable();
            let mut times = Vec::with_capacity(d.len());
            let mut levels = Vec::with_capacity(d.len());
            let mut level = 0i64;
            for (t, dv) in d {
                level += dv;
                if times.last() == Some(&t) {
                    *levels.last_mut().expect("non-empty") = level;
                } else {
                    times.push(t);
                    levels.push(level);
                }
            }
            steps.insert(w.envs[env].clone(), (times, levels));
        }
        OracleForecaster { steps }
    }

    /// Find the environment a series key belongs to: the key itself, or its
    /// prefix before a `/` or `|` (series keyed by environment and job type).
    fn lookup(&self, key: &str) -> Option<&(Vec<Millis>, Vec<i64>)> {
        self.steps
            .get(key)
            .or_else(|| key.split(['/', '|']).next().and_then(|k| self.steps.get(k)))
    }

    /// Time-weighted mean level over `[a, b)`, in vCPUs.
    fn mean(steps: &(Vec<Millis>, Vec<i64>), a: Millis, b: Millis) -> f64 {
        let (times, levels) = steps;
        let mut i = times.partition_point(|&t| t <= a);
        let mut level = if i == 0 { 0 } else { levels[i - 1] };
        let mut t = a;
        let mut acc = 0.0;
        while i < times.len() && times[i] < b {
            acc += level as f64 * (times[i] - t) as f64;
            t = times[i];
            level = levels[i];
            i += 1;
        }
        acc += level as f64 * (b - t) as f64;
        acc / (b - a) as f64 / 1000.0
    }
}

impl Forecaster for OracleForecaster {
    fn name(&self) -> &str {
        "oracle"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        let origin = history.end();
        let values = (0..horizon)
            .map(|h| {
                let a = origin + h as i64 * history.bucket_ms;
                let v = match self.lookup(history.key) {
                    Some(s) => Self::mean(s, a, a + history.bucket_ms),
                    // Unknown series: persistence (the last observed value).
                    None => history.values.last().copied().unwrap_or(0.0),
                };
                vec![v; quantiles.len()]
            })
            .collect();
        Forecast {
            quantiles: quantiles.to_vec(),
            values,
        }
    }

    /// Quiet (all zeros, whatever the time) while no demand of the
    /// environment falls within the horizon: up to the next time its level
    /// rises, less the horizon.
    fn quiet_ahead(&self, history: &History<'_>, horizon: usize, _q: &[f64]) -> Option<u64> {
        let (times, levels) = self.lookup(history.key)?;
        let origin = history.end();
        let b = history.bucket_ms.max(1);
        let i = times.partition_point(|&t| t <= origin);
        if i > 0 && levels[i - 1] != 0 {
            return None;
        }
        // Levels are sums of job sizes, never negative: the next change
        // after a zero level is a rise.
        let Some(&rise) = times.get(i) else {
            return Some(u64::MAX);
        };
        // origin + k·b + horizon·b <= rise for k = 0..run
        let room = rise - origin - horizon as i64 * b;
        Some(if room < 0 { 0 } else { (room / b + 1) as u64 })
    }
}
