//! Per-series model choice by recent error.

use super::{Forecast, Forecaster, History};
use std::sync::Arc;

/// Picks, for each call, the candidate whose p50 had the lowest absolute
/// error over the last `lookback` horizon-long windows of this very series
/// (a small rolling-origin backtest on the history it is given). Stateless,
/// so it needs no bookkeeping per environment and is deterministic; the cost
/// is `lookback + 1` forecasts per candidate.
pub struct Selector {
    pub candidates: Vec<Arc<dyn Forecaster>>,
    pub lookback: usize,
}

impl Selector {
    pub fn new(candidates: Vec<Arc<dyn Forecaster>>) -> Self {
        Self {
            candidates,
            lookback: 3,
        }
    }

    /// Index of the candidate with the lowest recent p50 error (0 when there
    /// is too little history to judge).
    pub fn choose(&self, history: &History<'_>, horizon: usize) -> usize {
        let n = history.values.len();
        let mut best = (f64::INFINITY, 0);
        for (ci, c) in self.candidates.iter().enumerate() {
            let mut err = 0.0;
            let mut used = 0;
            for j in 1..=self.lookback {
                let Some(o) = n.checked_sub(j * horizon) else {
                    break;
                };
                if o == 0 {
                    break;
                }
                let past = History {
                    values: &history.values[..o],
                    start: history.start,
                    ..*history
                };
                let f = c.forecast(&past, horizon, &[0.5]);
                for (k, row) in f.values.iter().enumerate() {
                    err += (history.values[o + k] - row[0]).abs();
                }
                used += 1;
            }
            if used > 0 && err < best.0 {
                best = (err, ci);
            }
        }
        best.1
    }
}

impl Forecaster for Selector {
    fn name(&self) -> &str {
        "selector"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        match self.candidates.get(self.choose(history, horizon)) {
            Some(c) => c.forecast(history, horizon, quantiles),
            None => Forecast {
                quantiles: quantiles.to_vec(),
                values: vec![vec![0.0; quantiles.len()]; horizon],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::SeasonalNaive;

    /// Always forecasts a constant.
    struct Const(f64);
    impl Forecaster for Const {
        fn name(&self) -> &str {
            "const"
        }
        fn forecast(&self, _: &History<'_>, horizon: usize, q: &[f64]) -> Forecast {
            Forecast {
                quantiles: q.to_vec(),
                values: vec![vec![self.0; q.len()]; horizon],
            }
        }
    }

    #[test]
    fn picks_the_model_with_lower_recent_error() {
        let v = vec![10.0; 100];
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: 300_000,
            values: &v,
        };
        let s = Selector::new(vec![Arc::new(Const(0.0)), Arc::new(Const(9.0))]);
        assert_eq!(s.choose(&h, 4), 1);
        assert_eq!(s.forecast(&h, 4, &[0.5]).values[0][0], 9.0);
        let s = Selector::new(vec![
            Arc::new(Const(9.0)),
            Arc::new(SeasonalNaive::with_season(1)),
        ]);
        assert_eq!(s.choose(&h, 4), 1);
    }
}
