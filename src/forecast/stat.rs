//! Statistical peer and cold-start fallback: exponential smoothing (ETS) from
//! the `augurs` crate, refitted on a recent window at each call.

use super::{tidy_rows, Forecast, Forecaster, History, SeasonalNaive};
use augurs::ets::AutoETS;
use augurs::{Fit, Predict};

/// Automatic non-seasonal ETS (error/trend chosen by AICc) fitted on the last
/// `window` buckets. Non-seasonal because a daily season of 288 buckets makes
/// seasonal ETS slow and unstable to fit on a short window; the day-of-week
/// pattern is left to the LSTM. Quantiles come from ETS prediction intervals
/// (one symmetric interval per pair of levels). When the fit fails (too
/// little or degenerate data) it falls back to seasonal naive.
#[derive(Debug, Clone)]
pub struct Ets {
    /// Buckets of history the model is fitted on (default 2 days at 5 min).
    pub window: usize,
    pub fallback: SeasonalNaive,
}

impl Default for Ets {
    fn default() -> Self {
        Self {
            window: 576,
            fallback: SeasonalNaive::default(),
        }
    }
}

impl Ets {
    fn try_forecast(&self, y: &[f64], horizon: usize, quantiles: &[f64]) -> Option<Vec<Vec<f64>>> {
        let y = &y[y.len().saturating_sub(self.window)..];
        if y.len() < 16 {
            return None;
        }
        // a constant window has no error variance to fit; ETS would fail or
        // give degenerate intervals: treat as persistence with no spread
        let first = y[0];
        if y.iter().all(|&v| v == first) {
            return Some(vec![vec![first; quantiles.len()]; horizon]);
        }
        let fitted = AutoETS::new(1, "AZN").ok()?.fit(y).ok()?;
        let point = fitted.predict(horizon, None).ok()?.point;
        let mut out = vec![vec![0.0; quantiles.len()]; horizon];
        for (qi, &q) in quantiles.iter().enumerate() {
            if (q - 0.5).abs() < 1e-12 {
                for h in 0..horizon {
                    out[h][qi] = point[h];
                }
                continue;
            }
            let level = (2.0 * q - 1.0).abs();
            let f = fitted.predict(horizon, Some(level)).ok()?;
            let iv = f.intervals?;
            for h in 0..horizon {
                out[h][qi] = if q < 0.5 { iv.lower[h] } else { iv.upper[h] };
            }
        }
        if out.iter().flatten().any(|v| !v.is_finite()) {
            return None;
        }
        Some(out)
    }
}

impl Forecaster for Ets {
    fn name(&self) -> &str {
        "ets"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        match self.try_forecast(history.values, horizon, quantiles) {
            Some(mut values) => {
                tidy_rows(&mut values);
                Forecast {
                    quantiles: quantiles.to_vec(),
                    values,
                }
            }
            None => self.fallback.forecast(history, horizon, quantiles),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ets_follows_a_level_and_orders_quantiles() {
        let v: Vec<f64> = (0..200).map(|i| 50.0 + ((i * 7919) % 13) as f64).collect();
        let h = History {
            key: "ce",
            start: 0,
            bucket_ms: 300_000,
            values: &v,
        };
        let f = Ets::default().forecast(&h, 12, &[0.1, 0.5, 0.9]);
        assert_eq!(f.values.len(), 12);
        for r in &f.values {
            assert!(r[0] <= r[1] && r[1] <= r[2]);
            assert!(r[1] > 40.0 && r[1] < 70.0, "{r:?}");
        }
    }

    #[test]
    fn too_short_falls_back() {
        let v = [1.0, 2.0, 3.0];
        let h = History {
            key: "ce",
            start: 0,
            bucket_ms: 300_000,
            values: &v,
        };
        let f = Ets::default().forecast(&h, 2, &[0.5]);
        assert_eq!(f.values.len(), 2);
    }
}
