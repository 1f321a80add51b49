//! Rolling-origin evaluation on data after the training cut.
//!
//! All series share one time axis; the cut is `train_frac` of it. Models see
//! only data before the cut when they are fitted (the LSTM trains on it; the
//! statistical models refit on the recent window at each origin, which is
//! how they are used in the service). From the cut on, every `stride`
//! buckets is a forecast origin: each model forecasts `horizon` buckets from
//! the history up to the origin and is scored on the actual values.
//!
//! Metrics per model: MASE (mean over series of test MAE of the p50 divided
//! by the in-sample seasonal-naive MAE of that series before the cut —
//! Hyndman & Koehler), sMAPE in percent (mean over points), pinball loss
//! (mean over levels and points, scaled per series by the same MASE
//! denominator so series in vCPU and MiB are comparable), coverage of each
//! central interval, fit time and forecast latency per series.

use super::lstm::{self, DeviceChoice, LstmConfig, LstmForecaster, Progress, TrainReport};
use super::metrics::{interval_pairs, level_key, pinball, seasonal_naive_mae, smape_term};
use super::series::DemandSeries;
use super::{season_buckets, Ets, ForecastError, Forecaster, History, SeasonalNaive, Selector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub horizon: usize,
    pub quantiles: Vec<f64>,
    pub train_frac: f64,
    /// Buckets between origins (default: the horizon, so test windows tile).
    pub stride: usize,
    pub lstm: LstmConfig,
    pub device: DeviceChoice,
    /// Also score a `selector` over the three models (per series by recent
    /// error); costs about four times the others' forecasts.
    pub selector: bool,
}

impl EvalConfig {
    pub fn new(bucket_ms: i64, horizon: usize) -> Self {
        let lstm = LstmConfig {
            horizon,
            ..LstmConfig::for_bucket(bucket_ms)
        };
        Self {
            horizon,
            quantiles: lstm.quantiles.clone(),
            train_frac: 0.7,
            stride: horizon.max(1),
            lstm,
            device: DeviceChoice::Cpu,
            selector: false,
        }
    }
}

/// Scores of one model (the JSON shape of `prescale forecast eval`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelScore {
    pub mase: f64,
    pub smape: f64,
    pub pinball: f64,
    pub coverage: BTreeMap<String, f64>,
    pub fit_s: f64,
    pub predict_us_per_series: f64,
}

/// The evaluation result: `{"series": n, "models": {...}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub series: usize,
    pub models: BTreeMap<String, ModelScore>,
}

/// Everything the evaluation produced, including the trained LSTM.
pub struct EvalOutcome {
    pub report: EvalReport,
    pub lstm: LstmForecaster,
    pub train: TrainReport,
    /// Keys of the evaluated series and of those skipped (constant before
    /// the cut, so MASE is undefined).
    pub evaluated: Vec<String>,
    pub skipped: Vec<String>,
    pub origins: usize,
}

#[derive(Default)]
struct Acc {
    abs: f64,
    n: usize,
    pin: f64,
}

/// Run the evaluation. `progress` receives LSTM training progress.
pub fn evaluate(
    all: &[DemandSeries],
    cfg: &EvalConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<EvalOutcome, ForecastError> {
    super::check_quantiles(&cfg.quantiles)?;
    let Some(first) = all.first() else {
        return Err(ForecastError::NoData(
            "the trace yields no demand series".into(),
        ));
    };
    let bucket_ms = first.bucket_ms;
    let m = season_buckets(bucket_ms);
    let n = all.iter().map(|s| s.values.len()).min().unwrap_or(0);
    let cut = ((n as f64) * cfg.train_frac.clamp(0.05, 0.95)).floor() as usize;
    let mut series = Vec::new();
    let mut scales = Vec::new();
    let mut skipped = Vec::new();
    for s in all {
        match seasonal_naive_mae(&s.values[..cut], m) {
            Some(sc) if sc > 0.0 => {
                series.push(s);
                scales.push(sc);
            }
            _ => skipped.push(s.key.clone()),
        }
    }
    if series.is_empty() || cut + cfg.horizon > n {
        return Err(ForecastError::NoData(format!(
            "{} series, {n} buckets, cut at {cut}: nothing to evaluate after the cut",
            series.len()
        )));
    }
    // train the LSTM strictly on data before the cut
    let lcfg = LstmConfig {
        horizon: cfg.horizon,
        quantiles: cfg.quantiles.clone(),
        bucket_ms,
        ..cfg.lstm.clone()
    };
    let train_h: Vec<History<'_>> = series.iter().map(|s| s.history_to(cut)).collect();
    let t0 = Instant::now();
    let (lstm_model, train_rep) = lstm::train(&train_h, &lcfg, cfg.device, progress)?;
    let lstm_fit = t0.elapsed().as_secs_f64();

    let snaive = SeasonalNaive::default();
    let ets = Ets::default();
    let selector = Selector::new(vec![
        Arc::new(snaive.clone()),
        Arc::new(ets.clone()),
        Arc::new(lstm_model.clone()),
    ]);
    let mut models: Vec<(&str, &dyn Forecaster, f64)> = vec![
        ("seasonal_naive", &snaive, 0.0),
        ("ets", &ets, 0.0),
        ("lstm", &lstm_model, lstm_fit),
    ];
    if cfg.selector {
        models.push(("selector", &selector, lstm_fit));
    }
    // history handed to each forecast: enough for every model's needs
    // (a week of seasonal errors / seasonal features, plus the window)
    let max_hist = 8 * m + lcfg.window;
    let pairs = interval_pairs(&cfg.quantiles);
    let mut report = EvalReport {
        series: series.len(),
        models: BTreeMap::new(),
    };
    let origins: Vec<usize> = (cut..=n - cfg.horizon).step_by(cfg.stride.max(1)).collect();
    for (name, model, fit_s) in models {
        let mut acc: Vec<Acc> = (0..series.len()).map(|_| Acc::default()).collect();
        let mut smape = (0.0, 0usize);
        let mut cover = vec![(0usize, 0usize); pairs.len()];
        let mut elapsed = 0.0;
        let mut calls = 0usize;
        for &t in &origins {
            for (si, s) in series.iter().enumerate() {
                let from = t.saturating_sub(max_hist);
                let h = History {
                    key: &s.key,
                    start: s.start + from as i64 * bucket_ms,
                    bucket_ms,
                    values: &s.values[from..t],
                };
                let c0 = Instant::now();
                let f = model.forecast(&h, cfg.horizon, &cfg.quantiles);
                elapsed += c0.elapsed().as_secs_f64();
                calls += 1;
                let med = median_index(&cfg.quantiles);
                for (k, row) in f.values.iter().enumerate() {
                    let y = s.values[t + k];
                    let p50 = interp_median(&cfg.quantiles, row, med);
                    acc[si].abs += (y - p50).abs();
                    acc[si].n += 1;
                    acc[si].pin += cfg
                        .quantiles
                        .iter()
                        .zip(row)
                        .map(|(&q, &v)| pinball(y, v, q))
                        .sum::<f64>()
                        / cfg.quantiles.len() as f64;
                    smape.0 += smape_term(y, p50);
                    smape.1 += 1;
                    for (pi, &(lo, hi, _)) in pairs.iter().enumerate() {
                        cover[pi].1 += 1;
                        if row[lo] <= y && y <= row[hi] {
                            cover[pi].0 += 1;
                        }
                    }
                }
            }
        }
        let ns = series.len() as f64;
        let mase = acc
            .iter()
            .zip(&scales)
            .map(|(a, sc)| a.abs / a.n.max(1) as f64 / sc)
            .sum::<f64>()
            / ns;
        let pin = acc
            .iter()
            .zip(&scales)
            .map(|(a, sc)| a.pin / a.n.max(1) as f64 / sc)
            .sum::<f64>()
            / ns;
        let coverage = pairs
            .iter()
            .zip(&cover)
            .map(|(&(_, _, lvl), &(i, t))| (level_key(lvl), i as f64 / t.max(1) as f64))
            .collect();
        report.models.insert(
            name.to_string(),
            ModelScore {
                mase,
                smape: smape.0 / smape.1.max(1) as f64,
                pinball: pin,
                coverage,
                fit_s,
                predict_us_per_series: elapsed * 1e6 / calls.max(1) as f64,
            },
        );
    }
    Ok(EvalOutcome {
        report,
        lstm: lstm_model,
        train: train_rep,
        evaluated: series.iter().map(|s| s.key.clone()).collect(),
        skipped,
        origins: origins.len(),
    })
}

/// Index of the 0.5 level, or `None` (then the median is interpolated).
fn median_index(q: &[f64]) -> Option<usize> {
    q.iter().position(|&x| (x - 0.5).abs() < 1e-9)
}

fn interp_median(q: &[f64], row: &[f64], med: Option<usize>) -> f64 {
    if let Some(i) = med {
        return row[i];
    }
    let j = q.iter().position(|&x| x > 0.5).unwrap_or(q.len() - 1);
    if j == 0 {
        return row[0];
    }
    let w = (0.5 - q[j - 1]) / (q[j] - q[j - 1]);
    row[j - 1] * (1.0 - w) + row[j] * w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::series::Metric;

    #[test]
    fn evaluates_three_models_on_a_synthetic_trace() {
        // hourly buckets, 24-bucket season, 20 days, small net
        let bucket = 3_600_000;
        let values = crate::forecast::lstm::tests::synthetic(24 * 20, bucket, 3);
        let s = DemandSeries {
            key: "ce/vcpus".into(),
            environment: "ce".into(),
            metric: Metric::Vcpus,
            start: 0,
            bucket_ms: bucket,
            values,
        };
        let mut cfg = EvalConfig::new(bucket, 4);
        cfg.lstm = LstmConfig {
            window: 12,
            hidden: 8,
            head_hidden: 8,
            epochs: 1,
            steps_per_epoch: 5,
            batch: 8,
            ..cfg.lstm.clone()
        };
        let out = evaluate(&[s], &cfg, &mut |_| {}).unwrap();
        assert_eq!(out.report.series, 1);
        for name in ["seasonal_naive", "ets", "lstm"] {
            let m = &out.report.models[name];
            assert!(m.mase.is_finite() && m.mase > 0.0, "{name}: {m:?}");
            assert!(m.coverage["0.8"] >= 0.0 && m.coverage["0.8"] <= 1.0);
        }
        // a seasonal series with a random-walk level: seasonal naive's MASE
        // on the test part is near 1 by construction
        let sn = out.report.models["seasonal_naive"].mase;
        assert!(sn > 0.3 && sn < 3.0, "{sn}");
    }
}
