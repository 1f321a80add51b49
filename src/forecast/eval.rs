//! Rolling-origin evaluation on data after the training cut, built so that
//! it cannot flatter: persistence is a peer, MASE is pooled by scale,
//! every forecast can be written out and tested for significance.
//!
//! All series share one time axis; the cut is `train_frac` of it. Models see
//! only data before the cut when they are fitted (the LSTM trains on it, the
//! structured model fits its survival functions on it; the statistical
//! models refit on the recent window at each origin, which is how they are
//! used in the service). From the cut on, every `stride` buckets is a
//! forecast origin: each model forecasts `horizon` buckets from the history
//! up to the origin and is scored on the actual values.
//!
//! Metrics per model (see docs/forecasting.md for the definitions): MASE per
//! series and pooled (total MAE over total scale, so a near-idle queue
//! weighs by its scale, not as much as the main one), mean MASE over series,
//! sMAPE, pinball per level, coverage per central interval, skill per
//! horizon step against persistence, the under- and over-provisioned
//! vCPU-minutes with capacity at the planner's quantile, and a
//! Diebold–Mariano test against persistence.

use super::conformal::Recalibrator;
use super::lstm::{self, DeviceChoice, LstmConfig, LstmForecaster, Progress, TrainReport};
use super::metrics::{
    diebold_mariano, interval_pairs, level_key, pinball, seasonal_naive_mae, smape_term,
};
use super::series::{DemandSeries, Metric};
use super::structured::{arrival_paths, ActiveJob, JobRecord, Structured, StructuredConfig};
use super::{season_buckets, Ets, ForecastError, Forecaster, History, Known, Naive, SeasonalNaive};
use super::{AutoArima, Selector, DAY_MS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Models `evaluate` knows, in report order.
pub const MODELS: [&str; 7] = [
    "naive",
    "seasonal_naive",
    "ets",
    "arima",
    "lstm",
    "structured",
    "selector",
];

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
    /// Which models (names from [`MODELS`]); `naive` is always added, as the
    /// yardstick of skill and of the Diebold–Mariano test. `selector`
    /// costs about four times the others' forecasts.
    pub models: Vec<String>,
    /// The quantile capacity is set to for the decision metric (the
    /// planner's level for normal-priority work by default).
    pub planner_quantile: f64,
    /// Also score `<model>+cal`: the model under rolling conformal
    /// recalibration ([`Recalibrator`]) for the LSTM and structured models.
    pub calibrate: bool,
    /// Recent scores per step and level the recalibration keeps.
    pub calibration_window: usize,
    pub structured: StructuredConfig,
    /// Refit the structured model's survival functions this often during
    /// the test, on the jobs seen by then (0: once, at the cut) — as a
    /// service refits daily.
    pub structured_refit_ms: i64,
    /// Seconds on a monotonic clock, for the report's fitting and
    /// forecasting times. The core reads no clock, so the caller passes
    /// one; the default reads 0 (no times).
    pub clock: fn() -> f64,
}

/// The default [`EvalConfig::clock`]: no clock, every time reads 0.
fn no_clock() -> f64 {
    0.0
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
            models: [
                "naive",
                "seasonal_naive",
                "ets",
                "arima",
                "lstm",
                "structured",
            ]
            .map(String::from)
            .to_vec(),
            planner_quantile: 0.5,
            calibrate: true,
            calibration_window: 100,
            clock: no_clock,
            structured: StructuredConfig::default(),
            structured_refit_ms: 0,
        }
    }

    fn wants(&self, name: &str) -> bool {
        name == "naive" || self.models.iter().any(|m| m == name)
    }
}

/// Scores of one model (the JSON shape of `prescale forecast eval`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelScore {
    /// Mean over series of MASE.
    pub mase: f64,
    /// Total MAE over total scale: MASE weighted by each series' scale.
    #[serde(default)]
    pub mase_pooled: f64,
    #[serde(default)]
    pub mase_per_series: BTreeMap<String, f64>,
    pub smape: f64,
    /// Mean over levels of `pinball_per_quantile`.
    pub pinball: f64,
    /// Mean over series of the scaled pinball loss at each level.
    #[serde(default)]
    pub pinball_per_quantile: BTreeMap<String, f64>,
    pub coverage: BTreeMap<String, f64>,
    /// Per horizon step: 1 − MAE / persistence's MAE (pooled over series
    /// as `mase_pooled` weighs them).
    #[serde(default)]
    pub skill_per_step: Vec<f64>,
    /// vCPU series: Σ max(actual − capacity, 0) and Σ max(capacity −
    /// actual, 0) over the test points, in vCPU-minutes, with capacity at
    /// the planner's quantile.
    #[serde(default)]
    pub under_vcpu_min: f64,
    #[serde(default)]
    pub over_vcpu_min: f64,
    /// Diebold–Mariano statistic against persistence on the per-origin
    /// absolute error (positive: this model is more accurate) and its
    /// two-sided p-value.
    #[serde(default)]
    pub dm_vs_naive: Option<f64>,
    #[serde(default)]
    pub dm_p: Option<f64>,
    pub fit_s: f64,
    pub predict_us_per_series: f64,
}

/// The evaluation result: `{"series": n, "models": {...}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub series: usize,
    #[serde(default)]
    pub origins: usize,
    #[serde(default)]
    pub planner_quantile: f64,
    pub models: BTreeMap<String, ModelScore>,
}

/// Every forecast of the evaluation, for `--per-origin`.
#[derive(Debug, Clone, Default)]
pub struct PerOrigin {
    pub quantiles: Vec<f64>,
    pub series: Vec<String>,
    /// Origin times (ms).
    pub origins: Vec<i64>,
    /// `actual[o][s][k]`.
    pub actual: Vec<Vec<Vec<f64>>>,
    /// Per model: `values[o][s][k][q]`.
    pub models: Vec<(String, Grid)>,
}

/// `[origin][series][step][level]`.
pub type Grid = Vec<Vec<Vec<Vec<f64>>>>;

/// Everything the evaluation produced, including the trained LSTM.
pub struct EvalOutcome {
    pub report: EvalReport,
    pub lstm: Option<LstmForecaster>,
    pub train: Option<TrainReport>,
    /// Keys of the evaluated series and of those skipped (constant before
    /// the cut, so MASE is undefined).
    pub evaluated: Vec<String>,
    pub skipped: Vec<String>,
    pub origins: usize,
    /// Largest |series − (known jobs' realised part + arrivals)| at the
    /// origins: the structured model's bookkeeping matches the series when
    /// this is ~0.
    pub structured_check: Option<f64>,
    pub per_origin: PerOrigin,
}

/// The series under test and the time axis.
struct Setup<'a> {
    series: Vec<&'a DemandSeries>,
    scales: Vec<f64>,
    skipped: Vec<String>,
    n: usize,
    cut: usize,
    bucket_ms: i64,
    origins: Vec<usize>,
}

fn setup<'a>(all: &'a [DemandSeries], cfg: &EvalConfig) -> Result<Setup<'a>, ForecastError> {
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
    let (mut series, mut scales, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
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
    let origins = (cut..=n - cfg.horizon).step_by(cfg.stride.max(1)).collect();
    Ok(Setup {
        series,
        scales,
        skipped,
        n,
        cut,
        bucket_ms,
        origins,
    })
}

/// Run the evaluation. `jobs` (from [`super::structured::job_records`])
/// enable the structured model; `progress` receives LSTM training progress.
pub fn evaluate(
    all: &[DemandSeries],
    jobs: Option<&[JobRecord]>,
    cfg: &EvalConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<EvalOutcome, ForecastError> {
    let su = setup(all, cfg)?;
    let bucket_ms = su.bucket_ms;
    let lcfg = LstmConfig {
        horizon: cfg.horizon,
        quantiles: cfg.quantiles.clone(),
        bucket_ms,
        ..cfg.lstm.clone()
    };
    let (mut lstm_model, mut train_rep, mut lstm_fit) = (None, None, 0.0);
    if cfg.wants("lstm") || cfg.wants("selector") {
        // trained strictly on data before the cut
        let train_h: Vec<History<'_>> = su.series.iter().map(|s| s.history_to(su.cut)).collect();
        let t0 = (cfg.clock)();
        let (m, mut r) = lstm::train(&train_h, &lcfg, cfg.device, progress)?;
        lstm_fit = (cfg.clock)() - t0;
        r.train_s = lstm_fit;
        lstm_model = Some(m);
        train_rep = Some(r);
    }
    let start = su.series[0].start;
    let cut_ms = start + su.cut as i64 * bucket_ms;
    let knowns = jobs
        .filter(|_| cfg.wants("structured"))
        .map(|j| KnownSeries::build(j, &su, cfg.horizon));
    let structured = match (jobs, &knowns) {
        (Some(j), Some(_)) => Some(structured_model(j, cut_ms, cfg)),
        _ => None,
    };

    let mut models: Vec<(&str, Arc<dyn Forecaster>, f64)> = Vec::new();
    models.push(("naive", Arc::new(Naive::default()), 0.0));
    let snaive = SeasonalNaive::default();
    let ets = Ets::default();
    if cfg.wants("seasonal_naive") {
        models.push(("seasonal_naive", Arc::new(snaive.clone()), 0.0));
    }
    if cfg.wants("ets") {
        models.push(("ets", Arc::new(ets.clone()), 0.0));
    }
    if cfg.wants("arima") {
        models.push(("arima", Arc::new(AutoArima::default()), 0.0));
    }
    if let (true, Some(m)) = (cfg.wants("lstm"), &lstm_model) {
        models.push(("lstm", Arc::new(m.clone()), lstm_fit));
    }
    if let Some((m, fit_s)) = structured {
        models.push(("structured", m, fit_s));
    }
    if let (true, Some(m)) = (cfg.wants("selector"), &lstm_model) {
        let sel = Selector::new(vec![Arc::new(snaive), Arc::new(ets), Arc::new(m.clone())]);
        models.push(("selector", Arc::new(sel), lstm_fit));
    }
    let mut per = empty_per_origin(&su, cfg);
    let mut timing = BTreeMap::new();
    for (name, model, fit_s) in &models {
        let (grid, us) = run_model(model.as_ref(), &su, knowns.as_ref(), cfg, lcfg.window);
        timing.insert(name.to_string(), (*fit_s, us));
        if cfg.calibrate && (*name == "lstm" || *name == "structured") {
            let cal = recalibrate(&grid, &su, cfg);
            let cname = format!("{name}+cal");
            timing.insert(cname.clone(), (*fit_s, us));
            per.models.push((name.to_string(), grid));
            per.models.push((cname, cal));
        } else {
            per.models.push((name.to_string(), grid));
        }
    }
    let report = score_all(&per, &su, cfg, &timing);
    Ok(EvalOutcome {
        report,
        lstm: lstm_model,
        train: train_rep,
        evaluated: per.series.clone(),
        skipped: su.skipped,
        origins: su.origins.len(),
        structured_check: knowns.as_ref().map(|k| k.check),
        per_origin: per,
    })
}

/// The structured model fitted at the cut (or refitting during the test,
/// when configured) and its fitting time.
fn structured_model(
    jobs: &[JobRecord],
    cut_ms: i64,
    cfg: &EvalConfig,
) -> (Arc<dyn Forecaster>, f64) {
    let t0 = (cfg.clock)();
    let m = Structured::fit(jobs, cut_ms, cfg.structured.clone());
    let fit_s = (cfg.clock)() - t0;
    if cfg.structured_refit_ms > 0 {
        let r = Refitting {
            jobs: Arc::new(jobs.to_vec()),
            cfg: cfg.structured.clone(),
            every_ms: cfg.structured_refit_ms,
            current: std::sync::Mutex::new(None),
        };
        return (Arc::new(r), fit_s);
    }
    (Arc::new(m), fit_s)
}

/// The origins, series and actuals of the evaluation, with no forecasts yet.
fn empty_per_origin(su: &Setup<'_>, cfg: &EvalConfig) -> PerOrigin {
    let start = su.series[0].start;
    PerOrigin {
        quantiles: cfg.quantiles.clone(),
        series: su.series.iter().map(|s| s.key.clone()).collect(),
        origins: su
            .origins
            .iter()
            .map(|&t| start + t as i64 * su.bucket_ms)
            .collect(),
        actual: su
            .origins
            .iter()
            .map(|&t| {
                su.series
                    .iter()
                    .map(|s| s.values[t..t + cfg.horizon].to_vec())
                    .collect()
            })
            .collect(),
        models: Vec::new(),
    }
}

/// The structured model refitted every `every_ms` of the test on the jobs
/// submitted before the refit time (censored there): what a service that
/// refits daily would use. Evaluation only (it caches the fit behind a
/// lock); origins arrive in time order, so each period is fitted once.
struct Refitting {
    jobs: Arc<Vec<JobRecord>>,
    cfg: StructuredConfig,
    every_ms: i64,
    current: std::sync::Mutex<Option<(i64, Arc<Structured>)>>,
}

impl Forecaster for Refitting {
    fn name(&self) -> &str {
        "structured"
    }

    fn forecast(
        &self,
        history: &History<'_>,
        horizon: usize,
        quantiles: &[f64],
    ) -> super::Forecast {
        self.forecast_known(history, None, horizon, quantiles)
    }

    fn forecast_known(
        &self,
        history: &History<'_>,
        known: Option<&Known<'_>>,
        horizon: usize,
        quantiles: &[f64],
    ) -> super::Forecast {
        let period = history.end().div_euclid(self.every_ms);
        let model = {
            let mut g = match self.current.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            match g.as_ref() {
                Some((p, m)) if *p == period => m.clone(),
                _ => {
                    let cut = period * self.every_ms;
                    let m = Arc::new(Structured::fit(&self.jobs, cut, self.cfg.clone()));
                    *g = Some((period, m.clone()));
                    m
                }
            }
        };
        model.forecast_known(history, known, horizon, quantiles)
    }
}

/// Forecasts of one model at every origin for every series; returns the
/// grid and the mean wall time of one call (µs).
fn run_model(
    model: &dyn Forecaster,
    su: &Setup<'_>,
    knowns: Option<&KnownSeries>,
    cfg: &EvalConfig,
    window: usize,
) -> (Grid, f64) {
    // history handed to each forecast: enough for every model's needs
    // (a week of seasonal errors / seasonal features, plus the window)
    let max_hist = 8 * season_buckets(su.bucket_ms) + window;
    let mut elapsed = 0.0;
    let mut calls = 0usize;
    let mut grid = Vec::with_capacity(su.origins.len());
    for (oi, &t) in su.origins.iter().enumerate() {
        let mut row = Vec::with_capacity(su.series.len());
        for (si, s) in su.series.iter().enumerate() {
            let from = t.saturating_sub(max_hist);
            let h = History {
                key: &s.key,
                start: s.start + from as i64 * su.bucket_ms,
                bucket_ms: su.bucket_ms,
                values: &s.values[from..t],
            };
            let known = knowns.map(|k| k.known(si, oi, t, cfg.horizon));
            let c0 = (cfg.clock)();
            let f = model.forecast_known(&h, known.as_ref(), cfg.horizon, &cfg.quantiles);
            elapsed += (cfg.clock)() - c0;
            calls += 1;
            row.push(f.values);
        }
        grid.push(row);
    }
    (grid, elapsed * 1e6 / calls.max(1) as f64)
}

/// The same forecasts under rolling conformal recalibration, fed in origin
/// order with each actual once its bucket has closed — what the service
/// sees tick by tick.
fn recalibrate(raw: &Grid, su: &Setup<'_>, cfg: &EvalConfig) -> Grid {
    let h = cfg.horizon;
    let mut out = raw.clone();
    for si in 0..su.series.len() {
        let mut cal = Recalibrator::new(&cfg.quantiles, h, cfg.calibration_window, 20);
        let mut pending: Vec<(usize, usize)> = Vec::new();
        for (oi, &t) in su.origins.iter().enumerate() {
            pending.retain(|&(po, k)| {
                let closed = su.origins[po] + k < t;
                if closed {
                    let y = su.series[si].values[su.origins[po] + k];
                    cal.observe(k, &raw[po][si][k], y);
                }
                !closed
            });
            out[oi][si] = cal.adjust(&raw[oi][si]);
            pending.extend((0..h).map(|k| (oi, k)));
        }
    }
    out
}

/// Per series: its jobs (start, end, size, request) and arrival paths.
struct KnownSeries {
    drains: Vec<Vec<Vec<f64>>>,
    arrivals: Vec<Vec<Vec<f64>>>,
    /// Outstanding jobs per series at each origin.
    active: Vec<Vec<Vec<ActiveJob>>>,
    start: i64,
    bucket_ms: i64,
    check: f64,
}

impl KnownSeries {
    fn build(all: &[JobRecord], su: &Setup<'_>, horizon: usize) -> Self {
        let start = su.series[0].start;
        let end = start + su.n as i64 * su.bucket_ms;
        let mut arrivals = Vec::new();
        let mut drains = Vec::new();
        let mut active = Vec::new();
        let mut check: f64 = 0.0;
        for s in &su.series {
            let mi = Metric::ALL.iter().position(|&m| m == s.metric).unwrap_or(0);
            // sorted by submission (job_records sorts)
            let js: Vec<(i64, i64, f64, &JobRecord)> = all
                .iter()
                .filter(|j| j.environment == s.environment)
                .map(|j| {
                    let f = j.finished_at.unwrap_or(end).min(end);
                    (j.submitted_at, f, j.size[mi], j)
                })
                .collect();
            let triples: Vec<(i64, i64, f64)> = js.iter().map(|&(u, f, v, _)| (u, f, v)).collect();
            let a = arrival_paths(&triples, start, su.bucket_ms, su.n, horizon);
            drains.push(drain_paths(&triples, &a, &s.values, start, su.bucket_ms));
            let mut per_origin = Vec::with_capacity(su.origins.len());
            // sweep: origins ascend, so the outstanding set is kept, not
            // rebuilt from every job at every origin
            let (mut next, mut open) = (0usize, Vec::<(i64, i64, f64, &JobRecord)>::new());
            for &t in &su.origins {
                let o = start + t as i64 * su.bucket_ms;
                while next < js.len() && js[next].0 < o {
                    open.push(js[next]);
                    next += 1;
                }
                open.retain(|&(_, f, _, _)| f > o);
                // bookkeeping check on the first bucket after the origin
                let b1 = o + su.bucket_ms;
                let known: f64 = open
                    .iter()
                    .map(|&(_, f, v, _)| v * (f.min(b1) - o) as f64 / su.bucket_ms as f64)
                    .sum();
                check = check.max((known + a[t][0] - s.values[t]).abs());
                per_origin.push(
                    open.iter()
                        .map(|&(u, _, v, j)| ActiveJob {
                            submitted_at: u,
                            size: v,
                            requested_s: j.requested_s,
                            vcpus: j.size[0],
                            user: j.user,
                        })
                        .collect(),
                );
            }
            arrivals.push(a);
            active.push(per_origin);
        }
        Self {
            drains,
            arrivals,
            active,
            start,
            bucket_ms: su.bucket_ms,
            check,
        }
    }

    /// The view at origin bucket `t` (origin index `oi`): outstanding
    /// jobs, and the arrival paths whose buckets have all closed, from a
    /// little over the structured model's look-back.
    fn known(&self, si: usize, oi: usize, t: usize, horizon: usize) -> Known<'_> {
        let look = (15 * DAY_MS / self.bucket_ms) as usize;
        let hi = (t + 1).saturating_sub(horizon);
        let lo = hi.saturating_sub(look);
        Known {
            jobs: &self.active[si][oi],
            arrivals: &self.arrivals[si][lo..hi],
            drains: &self.drains[si][lo..hi],
            arrivals_start: self.start + lo as i64 * self.bucket_ms,
        }
    }
}

/// Per origin bucket `s`: the demand outstanding at the origin (its
/// level, from the jobs) minus the old jobs' demand in bucket `s + k`
/// (series minus arrivals): how much had completed by then.
fn drain_paths(
    jobs: &[(i64, i64, f64)],
    arrivals: &[Vec<f64>],
    values: &[f64],
    start: i64,
    bucket_ms: i64,
) -> Vec<Vec<f64>> {
    let n = values.len();
    // level at each bucket boundary b (time start + b·Δ): jobs with
    // u < boundary < f, by a difference array over boundaries
    let mut diff = vec![0.0; n + 2];
    for &(u, f, v) in jobs {
        let first = ((u - start).div_euclid(bucket_ms) + 1).max(0);
        let last = (f - start - 1).div_euclid(bucket_ms).min(n as i64);
        if first <= last {
            diff[first as usize] += v;
            diff[last as usize + 1] -= v;
        }
    }
    let mut level = 0.0;
    let levels: Vec<f64> = diff[..n]
        .iter()
        .map(|d| {
            level += d;
            level
        })
        .collect();
    arrivals
        .iter()
        .enumerate()
        .map(|(s, a)| {
            a.iter()
                .enumerate()
                .map(|(k, ak)| match values.get(s + k) {
                    Some(y) => (levels[s] - (y - ak)).max(0.0),
                    None => 0.0,
                })
                .collect()
        })
        .collect()
}

/// Error sums of one model on one series.
#[derive(Default, Clone)]
struct Acc {
    abs: f64,
    n: usize,
    pin: Vec<f64>,
}

/// Score every model from the forecasts.
fn score_all(
    per: &PerOrigin,
    su: &Setup<'_>,
    cfg: &EvalConfig,
    timing: &BTreeMap<String, (f64, f64)>,
) -> EvalReport {
    let naive = per
        .models
        .iter()
        .find(|(n, _)| n == "naive")
        .map(|(_, g)| g);
    let naive_step = naive.map(|g| step_errors(g, per));
    let naive_loss = naive.map(|g| origin_losses(g, per));
    let lag = cfg.horizon.div_ceil(cfg.stride.max(1)).saturating_sub(1);
    let mut report = EvalReport {
        series: su.series.len(),
        origins: su.origins.len(),
        planner_quantile: cfg.planner_quantile,
        models: BTreeMap::new(),
    };
    for (name, grid) in &per.models {
        let mut m = score_model(grid, per, su, cfg);
        if let (Some(ns), Some(nl)) = (&naive_step, &naive_loss) {
            let mine = step_errors(grid, per);
            m.skill_per_step = mine
                .iter()
                .zip(ns)
                .map(|(a, b)| if *b > 0.0 { 1.0 - a / b } else { 0.0 })
                .collect();
            let d: Vec<f64> = origin_losses(grid, per)
                .iter()
                .zip(nl)
                .map(|(a, b)| b - a)
                .collect();
            if let Some((stat, p)) = diebold_mariano(&d, lag) {
                m.dm_vs_naive = Some(stat);
                m.dm_p = Some(p);
            }
        }
        let (fit_s, us) = timing.get(name).copied().unwrap_or_default();
        m.fit_s = fit_s;
        m.predict_us_per_series = us;
        report.models.insert(name.clone(), m);
    }
    report
}

/// Accuracy, calibration and decision metrics of one model.
fn score_model(grid: &Grid, per: &PerOrigin, su: &Setup<'_>, cfg: &EvalConfig) -> ModelScore {
    let q = &cfg.quantiles;
    let pairs = interval_pairs(q);
    let mut acc = vec![
        Acc {
            pin: vec![0.0; q.len()],
            ..Acc::default()
        };
        su.series.len()
    ];
    let (mut smape, mut npts) = (0.0, 0usize);
    let mut cover = vec![0usize; pairs.len()];
    let (mut under, mut over) = (0.0, 0.0);
    let minutes = su.bucket_ms as f64 / 60_000.0;
    for (oi, row) in grid.iter().enumerate() {
        for (si, f) in row.iter().enumerate() {
            let vcpus = su.series[si].metric == Metric::Vcpus;
            for (k, vals) in f.iter().enumerate() {
                let y = per.actual[oi][si][k];
                let p50 = level_value(q, vals, 0.5);
                let a = &mut acc[si];
                a.abs += (y - p50).abs();
                a.n += 1;
                for (pi, (&tau, &v)) in q.iter().zip(vals).enumerate() {
                    a.pin[pi] += pinball(y, v, tau);
                }
                smape += smape_term(y, p50);
                npts += 1;
                for (pi, &(lo, hi, _)) in pairs.iter().enumerate() {
                    if vals[lo] <= y && y <= vals[hi] {
                        cover[pi] += 1;
                    }
                }
                if vcpus {
                    let c = level_value(q, vals, cfg.planner_quantile);
                    under += (y - c).max(0.0) * minutes;
                    over += (c - y).max(0.0) * minutes;
                }
            }
        }
    }
    let ns = su.series.len() as f64;
    let mase_s: Vec<f64> = acc
        .iter()
        .zip(&su.scales)
        .map(|(a, sc)| a.abs / a.n.max(1) as f64 / sc)
        .collect();
    let pooled =
        acc.iter().map(|a| a.abs / a.n.max(1) as f64).sum::<f64>() / su.scales.iter().sum::<f64>();
    let pin_q: Vec<f64> = (0..q.len())
        .map(|pi| {
            acc.iter()
                .zip(&su.scales)
                .map(|(a, sc)| a.pin[pi] / a.n.max(1) as f64 / sc)
                .sum::<f64>()
                / ns
        })
        .collect();
    ModelScore {
        mase: mase_s.iter().sum::<f64>() / ns,
        mase_pooled: pooled,
        mase_per_series: per.series.iter().cloned().zip(mase_s).collect(),
        smape: smape / npts.max(1) as f64,
        pinball: pin_q.iter().sum::<f64>() / q.len().max(1) as f64,
        pinball_per_quantile: q.iter().map(|&l| level_key(l)).zip(pin_q).collect(),
        coverage: pairs
            .iter()
            .zip(&cover)
            .map(|(&(_, _, lvl), &c)| (level_key(lvl), c as f64 / npts.max(1) as f64))
            .collect(),
        under_vcpu_min: under,
        over_vcpu_min: over,
        ..ModelScore::default()
    }
}

/// Absolute p50 error summed per horizon step over origins and series:
/// the weighting of the pooled MASE (each series' scaled error times its
/// scale), so an idle queue with a tiny scale does not dominate.
fn step_errors(grid: &Grid, per: &PerOrigin) -> Vec<f64> {
    let h = per
        .actual
        .first()
        .and_then(|r| r.first())
        .map_or(0, Vec::len);
    let mut out = vec![0.0; h];
    for (oi, row) in grid.iter().enumerate() {
        for (si, f) in row.iter().enumerate() {
            for (k, vals) in f.iter().enumerate() {
                let e = per.actual[oi][si][k] - level_value(&per.quantiles, vals, 0.5);
                out[k] += e.abs();
            }
        }
    }
    out
}

/// Absolute p50 error per origin, summed over series and steps (weighted
/// as the pooled MASE).
fn origin_losses(grid: &Grid, per: &PerOrigin) -> Vec<f64> {
    grid.iter()
        .enumerate()
        .map(|(oi, row)| {
            row.iter()
                .enumerate()
                .map(|(si, f)| {
                    f.iter()
                        .enumerate()
                        .map(|(k, vals)| {
                            let e = per.actual[oi][si][k] - level_value(&per.quantiles, vals, 0.5);
                            e.abs()
                        })
                        .sum::<f64>()
                })
                .sum()
        })
        .collect()
}

/// The value at level `q`, interpolated linearly between the forecast's
/// levels and held flat beyond them (as the planner reads a forecast).
pub fn level_value(levels: &[f64], values: &[f64], q: f64) -> f64 {
    let n = levels.len().min(values.len());
    if n == 0 {
        return 0.0;
    }
    if q <= levels[0] {
        return values[0];
    }
    for i in 1..n {
        if q <= levels[i] {
            let (l0, l1) = (levels[i - 1], levels[i]);
            let w = if l1 > l0 { (q - l0) / (l1 - l0) } else { 1.0 };
            return values[i - 1] + w * (values[i] - values[i - 1]);
        }
    }
    values[n - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::series::{demand_series, Metric};
    use crate::forecast::structured::job_records;

    #[test]
    fn evaluates_models_on_a_synthetic_trace() {
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
        let out = evaluate(&[s], None, &cfg, &mut |_| {}).unwrap();
        assert_eq!(out.report.series, 1);
        for name in ["naive", "seasonal_naive", "ets", "lstm", "lstm+cal"] {
            let m = &out.report.models[name];
            assert!(m.mase.is_finite() && m.mase > 0.0, "{name}: {m:?}");
            assert!(m.coverage["0.8"] >= 0.0 && m.coverage["0.8"] <= 1.0);
            assert_eq!(m.skill_per_step.len(), 4);
            // one series: pooled = mean
            assert!((m.mase - m.mase_pooled).abs() < 1e-12);
        }
        let naive = &out.report.models["naive"];
        assert!(naive.skill_per_step.iter().all(|&s| s == 0.0));
        assert!(naive.dm_vs_naive.is_none(), "no variance against itself");
        // a seasonal series with a random-walk level: seasonal naive's MASE
        // on the test part is near 1 by construction
        let sn = out.report.models["seasonal_naive"].mase;
        assert!(sn > 0.3 && sn < 3.0, "{sn}");
        assert!(out.report.models["seasonal_naive"].dm_vs_naive.is_some());
    }

    #[test]
    fn structured_bookkeeping_matches_the_series() {
        // two environments, jobs of 5 to 200 minutes, one never completes
        use crate::events::{Event, JobCompleted, JobStatus, JobSubmitted};
        let sub = |id: &str, env: &str, at: i64, vcpus: f64| {
            Event::JobSubmitted(JobSubmitted {
                job_id: id.into(),
                submitted_at: at,
                compute_environment: env.into(),
                job_type: "batch".into(),
                project: "p".into(),
                user: "u".into(),
                priority: 0,
                vcpus,
                memory_mib: 0,
                gpus: 0,
                estimated_runtime_s: Some(3_600),
                budget_usd: None,
                deadline: None,
                elasticity: false,
            })
        };
        let done = |id: &str, env: &str, at: i64| {
            Event::JobCompleted(JobCompleted {
                job_id: id.into(),
                compute_environment: env.into(),
                started_at: at,
                finished_at: at,
                status: JobStatus::Succeeded,
                instance_type: None,
                market: None,
                region: None,
                vcpu_seconds: 0.0,
                max_memory_mib: None,
            })
        };
        let mut ev = Vec::new();
        let min = 60_000;
        for i in 0..600i64 {
            let env = if i % 3 == 0 { "a" } else { "b" };
            let at = i * 7 * min + (i % 5) * 13_000;
            ev.push(sub(&format!("j{i}"), env, at, 1.0 + (i % 4) as f64));
            if i != 17 {
                ev.push(done(&format!("j{i}"), env, at + (5 + (i * 37) % 200) * min));
            }
        }
        ev.sort_by_key(|e| e.time());
        let series: Vec<DemandSeries> = demand_series(&ev, 5 * min)
            .into_iter()
            .filter(|s| s.metric == Metric::Vcpus)
            .collect();
        let jobs = job_records(&ev);
        let mut cfg = EvalConfig::new(5 * min, 12);
        cfg.models = vec!["structured".into()];
        let out = evaluate(&series, Some(&jobs), &cfg, &mut |_| {}).unwrap();
        let check = out.structured_check.unwrap();
        assert!(check < 1e-6, "{check}");
        let s = &out.report.models["structured"];
        assert!(s.mase.is_finite() && s.coverage["0.8"] > 0.3, "{s:?}");
        assert!(out.report.models.contains_key("structured+cal"));
        // every model's per-origin grid has one row per origin
        for (_, g) in &out.per_origin.models {
            assert_eq!(g.len(), out.origins);
        }
    }
}
