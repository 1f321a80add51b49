//! Rolling conformal recalibration of quantile forecasts on the most recent
//! errors, so interval coverage holds when the workload shifts after
//! training (a calibration fixed on the training tail does not: see
//! docs/forecasting.md).
//!
//! For each horizon step `k` and level `τ` it keeps the last `window`
//! scores `y − q̂_τ` of forecasts whose actual has been seen, and moves
//! the next forecast's `q̂_τ` by the empirical `τ`-quantile of those scores
//! (conformalised quantile regression, Romano et al. 2019, with a sliding
//! calibration set). Then a share `τ` of recent actuals fell at or below the
//! moved quantile. The median is left as the model made it, so the point
//! forecast — and MASE — stay the model's own; the recalibration is about
//! coverage. Pure: it is fed forecasts and actuals, it reads no clock.

use super::{sorted_quantile, tidy_rows, Forecast, Forecaster, History};
use std::collections::VecDeque;
use std::sync::Arc;

/// Rolling per-step, per-level score windows.
#[derive(Debug, Clone)]
pub struct Recalibrator {
    quantiles: Vec<f64>,
    window: usize,
    min_scores: usize,
    /// `scores[k][q]`: recent `y − q̂` at step `k`, level `q`.
    scores: Vec<Vec<VecDeque<f64>>>,
}

impl Recalibrator {
    /// `window` recent scores per step and level; no adjustment until
    /// `min_scores` have been seen.
    pub fn new(quantiles: &[f64], horizon: usize, window: usize, min_scores: usize) -> Self {
        Self {
            quantiles: quantiles.to_vec(),
            window: window.max(1),
            min_scores: min_scores.max(1),
            scores: vec![vec![VecDeque::new(); quantiles.len()]; horizon],
        }
    }

    /// Record the actual `y` of step `step` (0-based) of a raw (not yet
    /// adjusted) forecast row.
    pub fn observe(&mut self, step: usize, raw_row: &[f64], y: f64) {
        let Some(per_q) = self.scores.get_mut(step) else {
            return;
        };
        for (w, q) in per_q.iter_mut().zip(raw_row) {
            if w.len() == self.window {
                w.pop_front();
            }
            w.push_back(y - q);
        }
    }

    /// The offsets that would be added to each step's levels now.
    pub fn offsets(&self) -> Vec<Vec<f64>> {
        self.scores
            .iter()
            .map(|per_q| {
                per_q
                    .iter()
                    .zip(&self.quantiles)
                    .map(|(w, &tau)| {
                        if w.len() < self.min_scores || (tau - 0.5).abs() < 1e-9 {
                            return 0.0;
                        }
                        let mut s: Vec<f64> = w.iter().copied().collect();
                        s.sort_by(f64::total_cmp);
                        sorted_quantile(&s, tau)
                    })
                    .collect()
            })
            .collect()
    }

    /// Adjust a raw forecast (`values[h][q]`) by the current offsets; rows
    /// stay ascending and non-negative.
    pub fn adjust(&self, values: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let offs = self.offsets();
        let mut out: Vec<Vec<f64>> = values
            .iter()
            .enumerate()
            .map(|(k, row)| match offs.get(k) {
                Some(o) => row.iter().zip(o).map(|(v, d)| v + d).collect(),
                None => row.clone(),
            })
            .collect();
        tidy_rows(&mut out);
        out
    }
}

/// Serve-time recalibration without state: at each call, the wrapped model
/// forecasts again from the last `lookback` origins of the history it is
/// given whose outcomes are all known, a [`Recalibrator`] takes those
/// errors, and the forecast from the full history is adjusted by it. So the
/// service recalibrates on the most recent errors at every tick, with
/// nothing to checkpoint, and a replay decides the same. Costs `lookback +
/// 1` forecasts of the wrapped model (meant for the LSTM: ~150 µs each;
/// the structured model's past inputs are not in a series, so it is
/// recalibrated by a [`Recalibrator`] fed as buckets close instead).
pub struct Calibrated {
    pub inner: Arc<dyn Forecaster>,
    pub lookback: usize,
    pub min_scores: usize,
}

impl Calibrated {
    pub fn new(inner: Arc<dyn Forecaster>) -> Self {
        Self {
            inner,
            lookback: 288,
            min_scores: 20,
        }
    }
}

impl Forecaster for Calibrated {
    fn name(&self) -> &str {
        "calibrated"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        let y = history.values;
        let n = y.len();
        let mut cal = Recalibrator::new(quantiles, horizon, self.lookback, self.min_scores);
        let last = n.saturating_sub(horizon);
        for o in last.saturating_sub(self.lookback.saturating_sub(1)).max(1)..=last {
            if o + horizon > n {
                break;
            }
            let past = History {
                values: &y[..o],
                ..*history
            };
            let f = self.inner.forecast(&past, horizon, quantiles);
            for (k, row) in f.values.iter().enumerate() {
                cal.observe(k, row, y[o + k]);
            }
        }
        let raw = self.inner.forecast(history, horizon, quantiles);
        Forecast {
            quantiles: raw.quantiles.clone(),
            values: cal.adjust(&raw.values),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_an_interval_that_is_too_narrow() {
        // the model says p10 = p90 = 10, actuals alternate 8 and 12
        let q = [0.1, 0.5, 0.9];
        let mut r = Recalibrator::new(&q, 1, 50, 10);
        let raw = vec![vec![10.0, 10.0, 10.0]];
        assert_eq!(r.adjust(&raw), raw, "no adjustment before min_scores");
        for i in 0..40 {
            let y = if i % 2 == 0 { 8.0 } else { 12.0 };
            r.observe(0, &raw[0], y);
        }
        let a = r.adjust(&raw);
        assert!((a[0][0] - 8.0).abs() < 1e-9, "{a:?}");
        assert!((a[0][2] - 12.0).abs() < 1e-9, "{a:?}");
        assert_eq!(a[0][1], 10.0, "the median is the model's");
    }

    #[test]
    fn calibrated_wrapper_widens_persistence_on_noise() {
        // persistence with no spread (a constant-error model) on +-1 noise:
        // the wrapper learns the spread from the history it is given
        struct Flat;
        impl Forecaster for Flat {
            fn name(&self) -> &str {
                "flat"
            }
            fn forecast(&self, h: &History<'_>, horizon: usize, q: &[f64]) -> Forecast {
                let last = h.values.last().copied().unwrap_or(0.0);
                Forecast {
                    quantiles: q.to_vec(),
                    values: vec![vec![last; q.len()]; horizon],
                }
            }
        }
        let v: Vec<f64> = (0..400)
            .map(|i| 10.0 + ((i * 7) % 3) as f64 - 1.0)
            .collect();
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: 300_000,
            values: &v,
        };
        let c = Calibrated::new(Arc::new(Flat));
        let f = c.forecast(&h, 2, &[0.1, 0.5, 0.9]);
        for r in &f.values {
            assert!(r[0] < r[1] && r[1] < r[2], "{r:?}");
        }
        // its own interval now covers most of what comes next
        let covered = (300..398)
            .filter(|&o| {
                let past = History {
                    values: &v[..o],
                    ..h
                };
                let f = c.forecast(&past, 1, &[0.1, 0.9]);
                f.values[0][0] <= v[o] && v[o] <= f.values[0][1]
            })
            .count();
        assert!(covered >= 60, "{covered}");
    }

    #[test]
    fn follows_a_shift_within_the_window() {
        let q = [0.1, 0.9];
        let mut r = Recalibrator::new(&q, 1, 20, 5);
        let raw = [0.0, 1.0];
        for _ in 0..50 {
            r.observe(0, &raw, 0.5);
        }
        // the workload shifts up by 10: after a window, the interval follows
        for _ in 0..20 {
            r.observe(0, &raw, 10.5);
        }
        let a = r.adjust(&[raw.to_vec()]);
        assert!(a[0][0] <= 10.5 && a[0][1] >= 10.5, "{a:?}");
    }
}
