//! Seasonal naive: tomorrow looks like today. The honest baseline for
//! batch demand, which follows the working day, and the MASE yardstick.

use super::{season_buckets, sorted_quantile, tidy_rows, Forecast, Forecaster, History};

/// Seasonal naive forecaster. The point forecast for `h` steps ahead is the
/// value one season earlier (`y[T + h - m]`, repeated for `h > m`); with less
/// than one season of history it falls back to the last value. Quantiles add
/// the empirical quantiles of its own in-sample errors over the last
/// `error_window` buckets (seasonal differences, or lag-`h` differences in the
/// fallback), so its intervals are as honest as the model.
#[derive(Debug, Clone)]
pub struct SeasonalNaive {
    /// Season in buckets; `None` = one day of buckets of the history's width.
    pub season: Option<usize>,
    /// How many recent buckets of in-sample errors form the error
    /// distribution (default one week of 5-minute buckets).
    pub error_window: usize,
}

impl Default for SeasonalNaive {
    fn default() -> Self {
        Self {
            season: None,
            error_window: 7 * 288,
        }
    }
}

impl SeasonalNaive {
    pub fn with_season(season: usize) -> Self {
        Self {
            season: Some(season.max(1)),
            ..Self::default()
        }
    }

    fn season_for(&self, h: &History<'_>) -> usize {
        self.season.unwrap_or_else(|| season_buckets(h.bucket_ms))
    }

    /// Sorted in-sample errors `y[t] - y[t - lag]` over the error window.
    fn errors(values: &[f64], lag: usize, window: usize) -> Vec<f64> {
        let n = values.len();
        if n <= lag {
            return vec![0.0];
        }
        let from = n.saturating_sub(window).max(lag);
        let mut e: Vec<f64> = (from..n).map(|t| values[t] - values[t - lag]).collect();
        if e.is_empty() {
            e.push(0.0);
        }
        e.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        e
    }
}

impl Forecaster for SeasonalNaive {
    fn name(&self) -> &str {
        "seasonal_naive"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        let y = history.values;
        let n = y.len();
        let m = self.season_for(history);
        let mut values = Vec::with_capacity(horizon);
        if n == 0 {
            values.resize(horizon, vec![0.0; quantiles.len()]);
            return Forecast {
                quantiles: quantiles.to_vec(),
                values,
            };
        }
        if n >= m {
            // every step h <= m uses an error of lag m; beyond one season the
            // same seasonal value repeats, which is still a lag-m difference
            // of the repeated pattern, so one distribution serves all h.
            let e = Self::errors(y, m, self.error_window);
            let offs: Vec<f64> = quantiles.iter().map(|&q| sorted_quantile(&e, q)).collect();
            for h in 1..=horizon {
                let back = m - ((h - 1) % m);
                let point = y[n - back];
                values.push(offs.iter().map(|o| point + o).collect());
            }
        } else {
            let last = y[n - 1];
            for h in 1..=horizon {
                let e = Self::errors(y, h.min(n.saturating_sub(1)).max(1), self.error_window);
                values.push(
                    quantiles
                        .iter()
                        .map(|&q| last + sorted_quantile(&e, q))
                        .collect(),
                );
            }
        }
        tidy_rows(&mut values);
        Forecast {
            quantiles: quantiles.to_vec(),
            values,
        }
    }
}

/// Persistence (Hyndman's NAIVE): every step ahead is the last value. The
/// hardest baseline one hour ahead, because most of the demand then is jobs
/// already running. Quantiles add, per step `h`, the empirical quantiles of
/// the lag-`h` differences `y[t] - y[t - h]` over the last `error_window`
/// buckets — the spread of its own errors at that lead, so its intervals
/// widen with the horizon as a random walk's do, with no normality assumed.
/// The differences are centred on their median so the p50 is exactly the
/// last value.
#[derive(Debug, Clone)]
pub struct Naive {
    /// Recent buckets whose lag-`h` differences form the error distribution
    /// (default one week of 5-minute buckets).
    pub error_window: usize,
}

impl Default for Naive {
    fn default() -> Self {
        Self {
            error_window: 7 * 288,
        }
    }
}

impl Forecaster for Naive {
    fn name(&self) -> &str {
        "naive"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        let y = history.values;
        let Some(&last) = y.last() else {
            return Forecast {
                quantiles: quantiles.to_vec(),
                values: vec![vec![0.0; quantiles.len()]; horizon],
            };
        };
        let mut values: Vec<Vec<f64>> = (1..=horizon)
            .map(|h| {
                let e = SeasonalNaive::errors(y, h, self.error_window);
                // centred on the errors' median, so the p50 is the last
                // value exactly (the persistence point forecast)
                let mid = sorted_quantile(&e, 0.5);
                quantiles
                    .iter()
                    .map(|&q| last + sorted_quantile(&e, q) - mid)
                    .collect()
            })
            .collect();
        tidy_rows(&mut values);
        Forecast {
            quantiles: quantiles.to_vec(),
            values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(v: &[f64]) -> History<'_> {
        History {
            key: "ce",
            start: 0,
            bucket_ms: 300_000,
            values: v,
        }
    }

    #[test]
    fn naive_is_the_last_value_with_lag_h_spread() {
        // steps cycle +1, -1, -1: lag-1 errors are +1 (1/3) and -1 (2/3),
        // median -1, so p5 = last and p95 = last + 2; lag-3 errors are all
        // -1: no spread at step 3
        let v: Vec<f64> = (0..200)
            .scan(500.0, |s, i| {
                *s += if (i * 7) % 3 == 0 { 1.0 } else { -1.0 };
                Some(*s)
            })
            .collect();
        let f = Naive::default().forecast(&hist(&v), 3, &[0.05, 0.5, 0.95]);
        let last = *v.last().unwrap();
        for r in &f.values {
            assert!(r[0] <= r[1] && r[1] <= r[2]);
        }
        assert!((f.values[0][2] - f.values[0][0] - 2.0).abs() < 1e-9);
        assert_eq!(f.values[0][0], last);
        assert_eq!(f.values[2][0], f.values[2][2]);
        assert!(f.values.iter().all(|r| r[1] == last));
        let f = Naive::default().forecast(&hist(&[]), 2, &[0.5]);
        assert_eq!(f.values, vec![vec![0.0], vec![0.0]]);
    }

    #[test]
    fn repeats_last_season() {
        let v = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        let f = SeasonalNaive::with_season(3).forecast(&hist(&v), 4, &[0.5]);
        let p: Vec<f64> = f.values.iter().map(|r| r[0]).collect();
        assert_eq!(p, vec![1.0, 2.0, 3.0, 1.0]);
    }

    #[test]
    fn short_history_falls_back_to_last_value() {
        let v = [4.0, 5.0];
        let f = SeasonalNaive::with_season(288).forecast(&hist(&v), 3, &[0.5]);
        assert!(f.values.iter().all(|r| (r[0] - 5.0).abs() < 1.5));
        let f = SeasonalNaive::with_season(288).forecast(&hist(&[]), 2, &[0.1, 0.9]);
        assert_eq!(f.values, vec![vec![0.0, 0.0], vec![0.0, 0.0]]);
    }

    #[test]
    fn quantiles_come_from_seasonal_errors() {
        // season 2 with errors +-1 alternating → p10 < p50 < p90 around the point
        let v: Vec<f64> = (0..40)
            .map(|i| 10.0 + (i / 2 % 2) as f64 * 2.0 - 1.0)
            .collect();
        let f = SeasonalNaive::with_season(2).forecast(&hist(&v), 2, &[0.1, 0.5, 0.9]);
        for r in &f.values {
            assert!(r[0] < r[2], "{r:?}");
            assert!(r[0] <= r[1] && r[1] <= r[2]);
        }
    }
}
