//! Statistical peer: automatic non-seasonal ARIMA, after Hyndman &
//! Khandakar (2008, R `forecast::auto.arima`), written here because the
//! `augurs` family has no ARIMA. Refitted on a recent window at each call,
//! like [`super::Ets`].
//!
//! - **Differencing** `d ∈ {0, 1, 2}`: repeated KPSS level-stationarity
//!   tests at 5 % (statistic against 0.463, Newey–West bandwidth
//!   `⌊3√n/13⌋`), as `ndiffs` does.
//! - **Orders** `p, q ∈ {0, 1, 2}`: every pair (auto.arima's stepwise
//!   search visits a subset of these nine), fitted by conditional sum of
//!   squares with a mean when `d = 0` (auto.arima's default is exact ML;
//!   CSS is its documented fast alternative, `method = "CSS"`), chosen by
//!   AICc. Non-stationary or non-invertible parameters are rejected.
//! - **Intervals**: normal, with variance `σ² Σ ψ_j²` from the ψ-weights of
//!   the fitted ARIMA including its differencing.
//!
//! Non-seasonal for the same reason as ETS (a 288-bucket daily season on a
//! two-day window). Falls back to persistence when no model fits.

use super::{tidy_rows, Forecast, Forecaster, History, Naive};

/// Auto ARIMA fitted on the last `window` buckets.
#[derive(Debug, Clone)]
pub struct AutoArima {
    pub window: usize,
    pub max_p: usize,
    pub max_q: usize,
    pub fallback: Naive,
}

impl Default for AutoArima {
    fn default() -> Self {
        Self {
            window: 576,
            max_p: 2,
            max_q: 2,
            fallback: Naive::default(),
        }
    }
}

/// A fitted ARMA on the (differenced) series.
#[derive(Debug, Clone, PartialEq)]
struct Fit {
    phi: Vec<f64>,
    theta: Vec<f64>,
    mean: f64,
    sigma2: f64,
    aicc: f64,
}

/// KPSS level-stationarity statistic.
pub fn kpss(y: &[f64]) -> f64 {
    let n = y.len();
    if n < 3 {
        return 0.0;
    }
    let nf = n as f64;
    let mean = y.iter().sum::<f64>() / nf;
    let e: Vec<f64> = y.iter().map(|v| v - mean).collect();
    let mut s = 0.0;
    let mut eta = 0.0;
    for v in &e {
        s += v;
        eta += s * s;
    }
    let l = ((3.0 * nf.sqrt() / 13.0).floor() as usize).min(n - 1);
    let mut lrv = e.iter().map(|v| v * v).sum::<f64>() / nf;
    for k in 1..=l {
        let g = (k..n).map(|t| e[t] * e[t - k]).sum::<f64>() / nf;
        lrv += 2.0 * (1.0 - k as f64 / (l as f64 + 1.0)) * g;
    }
    if lrv <= 0.0 {
        return 0.0;
    }
    eta / (nf * nf * lrv)
}

/// Differences needed (0..=2) by repeated KPSS tests at 5 %.
pub fn ndiffs(y: &[f64]) -> usize {
    let mut x = y.to_vec();
    let mut d = 0;
    while d < 2 && x.len() > 10 && kpss(&x) > 0.463 {
        x = diff(&x);
        d += 1;
    }
    d
}

fn diff(y: &[f64]) -> Vec<f64> {
    y.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Stationary (for AR) / invertible (for MA, pass `-θ`) for orders ≤ 2.
fn inside(c: &[f64]) -> bool {
    match c {
        [] => true,
        [a] => a.abs() < 1.0,
        [a, b] => a + b < 1.0 && b - a < 1.0 && b.abs() < 1.0,
        _ => false,
    }
}

/// Conditional sum of squares of an ARMA(p, q) with mean; `None` outside
/// the stationary / invertible region.
fn css(w: &[f64], phi: &[f64], theta: &[f64], mean: f64) -> Option<(f64, usize)> {
    let neg: Vec<f64> = theta.iter().map(|t| -t).collect();
    if !inside(phi) || !inside(&neg) {
        return None;
    }
    let p = phi.len();
    let mut e = vec![0.0; w.len()];
    let mut sse = 0.0;
    for t in p..w.len() {
        let mut pred = mean;
        for (i, f) in phi.iter().enumerate() {
            pred += f * (w[t - 1 - i] - mean);
        }
        for (j, th) in theta.iter().enumerate() {
            if t > j {
                pred += th * e[t - 1 - j];
            }
        }
        e[t] = w[t] - pred;
        sse += e[t] * e[t];
    }
    Some((sse, w.len() - p))
}

/// Nelder–Mead minimisation (standard coefficients), `iters` iterations.
fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, x0: &[f64], step: f64, iters: usize) -> Vec<f64> {
    let n = x0.len();
    if n == 0 {
        return Vec::new();
    }
    let mut pts: Vec<Vec<f64>> = vec![x0.to_vec()];
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += if x[i].abs() > 1e-9 {
            step * x[i].abs().max(0.1)
        } else {
            step
        };
        pts.push(x);
    }
    let mut vals: Vec<f64> = pts.iter().map(|x| f(x)).collect();
    for _ in 0..iters {
        let mut idx: Vec<usize> = (0..=n).collect();
        idx.sort_by(|&a, &b| vals[a].total_cmp(&vals[b]));
        pts = idx.iter().map(|&i| pts[i].clone()).collect();
        vals = idx.iter().map(|&i| vals[i]).collect();
        if (vals[n] - vals[0]).abs() <= 1e-10 * (1.0 + vals[0].abs()) {
            break;
        }
        let c: Vec<f64> = (0..n)
            .map(|j| pts[..n].iter().map(|p| p[j]).sum::<f64>() / n as f64)
            .collect();
        let at = |a: f64| -> Vec<f64> { (0..n).map(|j| c[j] + a * (pts[n][j] - c[j])).collect() };
        let xr = at(-1.0);
        let fr = f(&xr);
        if fr < vals[0] {
            let xe = at(-2.0);
            let fe = f(&xe);
            (pts[n], vals[n]) = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < vals[n - 1] {
            (pts[n], vals[n]) = (xr, fr);
        } else {
            let xc = if fr < vals[n] { at(-0.5) } else { at(0.5) };
            let fc = f(&xc);
            if fc < vals[n].min(fr) {
                (pts[n], vals[n]) = (xc, fc);
            } else {
                for i in 1..=n {
                    pts[i] = (0..n)
                        .map(|j| pts[0][j] + 0.5 * (pts[i][j] - pts[0][j]))
                        .collect();
                    vals[i] = f(&pts[i]);
                }
            }
        }
    }
    let best = (0..=n)
        .min_by(|&a, &b| vals[a].total_cmp(&vals[b]))
        .unwrap_or(0);
    pts[best].clone()
}

/// Fit ARMA(p, q) (with a mean when `with_mean`) by CSS.
fn fit_arma(w: &[f64], p: usize, q: usize, with_mean: bool) -> Option<Fit> {
    let m0 = if with_mean {
        w.iter().sum::<f64>() / w.len() as f64
    } else {
        0.0
    };
    let sd = {
        let v = w.iter().map(|x| (x - m0).powi(2)).sum::<f64>() / w.len() as f64;
        v.sqrt().max(1e-9)
    };
    let k = p + q + usize::from(with_mean);
    let unpack = |x: &[f64]| -> (Vec<f64>, Vec<f64>, f64) {
        let mean = if with_mean { m0 + x[p + q] * sd } else { 0.0 };
        (x[..p].to_vec(), x[p..p + q].to_vec(), mean)
    };
    let obj = |x: &[f64]| -> f64 {
        let (phi, theta, mean) = unpack(x);
        match css(w, &phi, &theta, mean) {
            Some((s, _)) => s,
            None => f64::INFINITY,
        }
    };
    let x = nelder_mead(&obj, &vec![0.0; k], 0.1, 300 * (k + 1));
    let (phi, theta, mean) = unpack(&x);
    let (sse, n) = css(w, &phi, &theta, mean)?;
    if n <= k + 2 || !sse.is_finite() {
        return None;
    }
    let nf = n as f64;
    let sigma2 = (sse / nf).max(1e-12);
    let kk = (k + 1) as f64;
    let aic = nf * sigma2.ln() + 2.0 * kk;
    let aicc = aic + 2.0 * kk * (kk + 1.0) / (nf - kk - 1.0);
    Some(Fit {
        phi,
        theta,
        mean,
        sigma2,
        aicc,
    })
}

/// ψ-weights of the ARIMA (AR polynomial times `(1 − B)^d`) up to `h`.
fn psi_weights(phi: &[f64], theta: &[f64], d: usize, h: usize) -> Vec<f64> {
    // full AR polynomial 1 − Σ φ_i B^i times (1 − B)^d; then
    // y_t = Σ a_i y_{t−i} + e_t + Σ θ_j e_{t−j}
    let mut ar = vec![1.0];
    ar.extend(phi.iter().map(|f| -f));
    for _ in 0..d {
        let mut next = vec![0.0; ar.len() + 1];
        for (i, c) in ar.iter().enumerate() {
            next[i] += c;
            next[i + 1] -= c;
        }
        ar = next;
    }
    let a: Vec<f64> = ar[1..].iter().map(|c| -c).collect();
    let mut psi = vec![1.0];
    for j in 1..h {
        let mut v = theta.get(j - 1).copied().unwrap_or(0.0);
        for (i, ai) in a.iter().enumerate() {
            if j > i {
                v += ai * psi[j - 1 - i];
            }
        }
        psi.push(v);
    }
    psi
}

/// Inverse standard normal CDF (Acklam's rational approximation, relative
/// error < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let a = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    let b = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    let c = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    let d = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    };
    if p < 0.024_25 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.024_25 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    }
}

impl AutoArima {
    /// Point path and ψ-weights of the chosen model, or `None`.
    fn fit_forecast(&self, y: &[f64], horizon: usize) -> Option<(Vec<f64>, Vec<f64>, f64)> {
        let y = &y[y.len().saturating_sub(self.window)..];
        if y.len() < 20 {
            return None;
        }
        let d = ndiffs(y);
        let mut w = y.to_vec();
        for _ in 0..d {
            w = diff(&w);
        }
        if w.iter().all(|&v| v == w[0]) {
            return None;
        }
        let best = (0..=self.max_p)
            .flat_map(|p| (0..=self.max_q).map(move |q| (p, q)))
            .filter_map(|(p, q)| fit_arma(&w, p, q, d == 0))
            .min_by(|a, b| a.aicc.total_cmp(&b.aicc))?;
        // residuals of the chosen model, then the recursion ahead
        let p = best.phi.len();
        let mut e = vec![0.0; w.len()];
        for t in p..w.len() {
            let mut pred = best.mean;
            for (i, f) in best.phi.iter().enumerate() {
                pred += f * (w[t - 1 - i] - best.mean);
            }
            for (j, th) in best.theta.iter().enumerate() {
                if t > j {
                    pred += th * e[t - 1 - j];
                }
            }
            e[t] = w[t] - pred;
        }
        let mut wf = w.clone();
        let mut ef = e;
        for _ in 0..horizon {
            let t = wf.len();
            let mut pred = best.mean;
            for (i, f) in best.phi.iter().enumerate() {
                pred += f * (wf[t - 1 - i] - best.mean);
            }
            for (j, th) in best.theta.iter().enumerate() {
                pred += th * ef[t - 1 - j];
            }
            wf.push(pred);
            ef.push(0.0);
        }
        // undo the differencing: integrate the forecasts d times
        let mut path: Vec<f64> = wf[w.len()..].to_vec();
        let mut levels = vec![y.to_vec()];
        for _ in 1..d {
            let last = levels.last().map(|l| diff(l)).unwrap_or_default();
            levels.push(last);
        }
        for lvl in levels.iter().take(d).rev() {
            let mut acc = *lvl.last()?;
            for v in path.iter_mut() {
                acc += *v;
                *v = acc;
            }
        }
        let psi = psi_weights(&best.phi, &best.theta, d, horizon);
        Some((path, psi, best.sigma2))
    }
}

impl Forecaster for AutoArima {
    fn name(&self) -> &str {
        "arima"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        let Some((path, psi, s2)) = self.fit_forecast(history.values, horizon) else {
            return self.fallback.forecast(history, horizon, quantiles);
        };
        let z: Vec<f64> = quantiles.iter().map(|&q| normal_quantile(q)).collect();
        let mut cum = 0.0;
        let mut values: Vec<Vec<f64>> = path
            .iter()
            .zip(&psi)
            .map(|(m, p)| {
                cum += p * p;
                let sd = (s2 * cum).sqrt();
                z.iter().map(|zq| m + zq * sd).collect()
            })
            .collect();
        if values.iter().flatten().any(|v| !v.is_finite()) {
            return self.fallback.forecast(history, horizon, quantiles);
        }
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

    /// Deterministic pseudo-normal noise.
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        use rand::SeedableRng;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                use rand::Rng;
                (0..12).map(|_| r.random::<f64>()).sum::<f64>() - 6.0
            })
            .collect()
    }

    #[test]
    fn recovers_an_ar1() {
        let e = noise(500, 1);
        let mut y = vec![0.0];
        for t in 1..500 {
            y.push(0.7 * y[t - 1] + e[t]);
        }
        let y: Vec<f64> = y.iter().map(|v| v + 100.0).collect();
        assert_eq!(ndiffs(&y), 0);
        let f = fit_arma(&y, 1, 0, true).unwrap();
        assert!((f.phi[0] - 0.7).abs() < 0.08, "{f:?}");
        assert!((f.mean - 100.0).abs() < 1.0, "{f:?}");
        assert!((f.sigma2 - 1.0).abs() < 0.2, "{f:?}");
    }

    #[test]
    fn random_walk_is_differenced_and_intervals_widen() {
        let e = noise(400, 2);
        let y: Vec<f64> = e
            .iter()
            .scan(50.0, |s, x| {
                *s += x;
                Some(*s)
            })
            .collect();
        assert!(ndiffs(&y) >= 1);
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: 300_000,
            values: &y,
        };
        let f = AutoArima::default().forecast(&h, 6, &[0.1, 0.5, 0.9]);
        let w0 = f.values[0][2] - f.values[0][0];
        let w5 = f.values[5][2] - f.values[5][0];
        assert!(w5 > w0 * 1.5, "{f:?}");
        assert!((f.values[0][1] - y[399]).abs() < 3.0, "{f:?}");
    }

    #[test]
    fn psi_of_a_random_walk_are_ones_and_normal_quantiles() {
        assert_eq!(psi_weights(&[], &[], 1, 4), vec![1.0; 4]);
        // AR(1) φ: ψ_j = φ^j
        let p = psi_weights(&[0.5], &[], 0, 3);
        assert!((p[2] - 0.25).abs() < 1e-12);
        assert!((normal_quantile(0.9) - 1.281_551_6).abs() < 1e-6);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.01) + 2.326_347_9).abs() < 1e-6);
    }
}
