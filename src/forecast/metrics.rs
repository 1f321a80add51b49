//! Forecast accuracy metrics: pinball (quantile) loss, MASE (Hyndman &
//! Koehler 2006, scaled by the in-sample seasonal-naive MAE), sMAPE and
//! interval coverage.

/// Pinball loss of quantile forecast `q` at level `tau` for observation `y`.
pub fn pinball(y: f64, q: f64, tau: f64) -> f64 {
    let d = y - q;
    (tau * d).max((tau - 1.0) * d)
}

/// In-sample MAE of the seasonal naive forecast with season `m` (the MASE
/// denominator). Falls back to lag 1 when the sample is shorter than one
/// season plus one. `None` when there is nothing to difference.
pub fn seasonal_naive_mae(train: &[f64], m: usize) -> Option<f64> {
    let m = if train.len() > m { m.max(1) } else { 1 };
    if train.len() <= m {
        return None;
    }
    let n = train.len() - m;
    let s: f64 = (m..train.len())
        .map(|t| (train[t] - train[t - m]).abs())
        .sum();
    Some(s / n as f64)
}

/// Symmetric MAPE term in percent (0..200); 0 when both are 0.
pub fn smape_term(y: f64, f: f64) -> f64 {
    let den = y.abs() + f.abs();
    if den == 0.0 {
        0.0
    } else {
        200.0 * (y - f).abs() / den
    }
}

/// Central interval pairs among the quantile levels: (lower index, upper
/// index, nominal coverage), e.g. p10/p90 → 0.8.
pub fn interval_pairs(quantiles: &[f64]) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    for (i, &lo) in quantiles.iter().enumerate() {
        if lo >= 0.5 {
            continue;
        }
        if let Some(j) = quantiles
            .iter()
            .position(|&hi| (hi - (1.0 - lo)).abs() < 1e-9)
        {
            out.push((i, j, ((1.0 - 2.0 * lo) * 1e6).round() / 1e6));
        }
    }
    out
}

/// Format a coverage level as the JSON key (`0.8`).
pub fn level_key(level: f64) -> String {
    let s = format!("{level:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinball_is_asymmetric() {
        // under-forecast at p90 costs 0.9 per unit, over-forecast 0.1 per unit
        assert!((pinball(10.0, 8.0, 0.9) - 1.8).abs() < 1e-12);
        assert!((pinball(10.0, 12.0, 0.9) - 0.2).abs() < 1e-12);
        assert!((pinball(10.0, 8.0, 0.5) - 1.0).abs() < 1e-12);
        assert_eq!(pinball(3.0, 3.0, 0.1), 0.0);
    }

    #[test]
    fn mase_scale_is_seasonal_naive_mae() {
        // season 2: 1,2,1,2,1,4 → diffs |1-1|,|2-2|,|1-1|,|4-2| → mean 0.5
        let s = seasonal_naive_mae(&[1.0, 2.0, 1.0, 2.0, 1.0, 4.0], 2).unwrap();
        assert!((s - 0.5).abs() < 1e-12);
        // shorter than a season: lag-1 naive
        let s = seasonal_naive_mae(&[1.0, 3.0], 5).unwrap();
        assert!((s - 2.0).abs() < 1e-12);
        assert!(seasonal_naive_mae(&[1.0], 5).is_none());
    }

    #[test]
    fn smape_and_pairs() {
        assert_eq!(smape_term(0.0, 0.0), 0.0);
        assert!((smape_term(1.0, 3.0) - 100.0).abs() < 1e-12);
        let p = interval_pairs(&[0.1, 0.5, 0.9]);
        assert_eq!(p, vec![(0, 2, 0.8)]);
        assert_eq!(level_key(0.8), "0.8");
        assert_eq!(level_key(0.9), "0.9");
    }
}
