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

/// Diebold–Mariano test of equal accuracy, with the Harvey–Leybourne–
/// Newbold small-sample correction. `d[t]` is the loss differential at
/// origin `t` (baseline loss minus model loss, so a positive statistic
/// means the model is more accurate); `lag` autocovariances enter the
/// long-run variance (`h − 1` for `h`-step forecasts whose windows
/// overlap). Returns `(statistic, two-sided p-value)` from the normal
/// distribution, or `None` with fewer than 3 differentials or no variance.
pub fn diebold_mariano(d: &[f64], lag: usize) -> Option<(f64, f64)> {
    let n = d.len();
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let mean = d.iter().sum::<f64>() / nf;
    let gamma = |k: usize| -> f64 {
        (k..n)
            .map(|t| (d[t] - mean) * (d[t - k] - mean))
            .sum::<f64>()
            / nf
    };
    let lag = lag.min(n - 1);
    let mut lrv = gamma(0);
    for k in 1..=lag {
        lrv += 2.0 * gamma(k);
    }
    if lrv <= 0.0 || !lrv.is_finite() {
        return None;
    }
    let h = (lag + 1) as f64;
    let hln = ((nf + 1.0 - 2.0 * h + h * (h - 1.0) / nf) / nf)
        .max(0.0)
        .sqrt();
    let stat = hln * mean / (lrv / nf).sqrt();
    Some((stat, 2.0 * (1.0 - normal_cdf(stat.abs()))))
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 erf, error < 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
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
    fn diebold_mariano_by_hand() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
        // d = 1,2,3,4,5 lag 0: mean 3, gamma0 = 2, var of mean 2/5,
        // HLN factor sqrt((5+1-2+0)/5) = sqrt(0.8) → 3/sqrt(0.4)*sqrt(0.8)
        let (s, p) = diebold_mariano(&[1.0, 2.0, 3.0, 4.0, 5.0], 0).unwrap();
        assert!(
            (s - 3.0 / 0.4f64.sqrt() * 0.8f64.sqrt()).abs() < 1e-9,
            "{s}"
        );
        assert!(p < 1e-4);
        // symmetric differentials: no evidence either way
        let (s, p) = diebold_mariano(&[1.0, -1.0, 1.0, -1.0, 1.0, -1.0], 0).unwrap();
        assert!(s.abs() < 1e-12 && (p - 1.0).abs() < 1e-6);
        assert!(diebold_mariano(&[1.0, 1.0, 1.0], 0).is_none());
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
