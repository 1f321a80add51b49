//! Demand forecasting. Every model implements [`Forecaster`], so the planner,
//! the engine and the backtest can use any of them.

use crate::events::Millis;

/// The recent history of one demand series (e.g. concurrent vCPU demand of a
/// compute environment), oldest bucket first.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// Series identity, e.g. the compute environment name.
    pub key: &'a str,
    /// Start time of `values[0]`.
    pub start: Millis,
    /// Bucket width in milliseconds.
    pub bucket_ms: i64,
    /// One value per bucket.
    pub values: &'a [f64],
}

impl History<'_> {
    /// Start time of the first bucket after the history (the forecast origin).
    pub fn end(&self) -> Millis {
        self.start + self.bucket_ms * self.values.len() as i64
    }
}

/// A multi-horizon quantile forecast: `values[h][q]` is the `quantiles[q]`
/// quantile of the bucket `h + 1` steps after the history ends. Quantiles are
/// ascending and values never cross.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub quantiles: Vec<f64>,
    pub values: Vec<Vec<f64>>,
}

/// What the state knows at a forecast origin beyond the series: the jobs
/// outstanding now, and the realised arrival paths of past origins. Models
/// that use it forecast the known work from the jobs themselves and only
/// the arrivals as unknown ([`structured::Structured`]).
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Jobs outstanding at the origin ([`History::end`]), sizes in the
    /// series' unit.
    pub jobs: &'a [structured::ActiveJob],
    /// `arrivals[i][k]`: demand in the `k`-th bucket after origin
    /// `arrivals_start + i·bucket` of the jobs submitted at or after that
    /// origin; only rows whose buckets have all closed.
    pub arrivals: &'a [Vec<f64>],
    /// `drains[i][k]`: for the same origins, how much of the demand
    /// outstanding at the origin had completed by bucket `k` (the level at
    /// the origin minus the old jobs' demand in that bucket); empty when
    /// unknown. Lets a model learn how arrivals answer completions.
    pub drains: &'a [Vec<f64>],
    pub arrivals_start: Millis,
}

pub trait Forecaster: Send + Sync {
    fn name(&self) -> &str;
    /// Forecast `horizon` buckets ahead at the given ascending quantile levels.
    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast;
    /// [`Forecaster::forecast`] of several histories in one call, in their
    /// order: the engine asks once per tick for every environment it
    /// forecasts, so a model whose cost is per call (a network's weights
    /// walked once per step for all of them, a device launch) pays it once.
    /// Each answer must be what `forecast` gives that history alone.
    fn forecast_batch(
        &self,
        histories: &[History<'_>],
        horizon: usize,
        quantiles: &[f64],
    ) -> Vec<Forecast> {
        histories
            .iter()
            .map(|h| self.forecast(h, horizon, quantiles))
            .collect()
    }

    /// Forecast with what the state knows besides the series (when the
    /// caller has it). Models that use only the series ignore it.
    fn forecast_known(
        &self,
        history: &History<'_>,
        known: Option<&Known<'_>>,
        horizon: usize,
        quantiles: &[f64],
    ) -> Forecast {
        let _ = known;
        self.forecast(history, horizon, quantiles)
    }

    /// How many origins, from `history`'s end on and one bucket apart,
    /// would get a *quiet* forecast were only zeros appended to the
    /// history: one that depends on nothing but the origin's time within
    /// the week (and `horizon` and `quantiles`), so a forecast made at one
    /// quiet origin is the forecast of every quiet origin at the same time
    /// of the week. `Some(0)` or `None`: the forecast at `history`'s end is
    /// not quiet. `u64::MAX`: quiet for ever. Cost grows with events, not
    /// with time spans: after a burst of work the history holds it for days,
    /// and the engine answers the ticks in between from one forecast per
    /// time of the week instead of forecasting each (see
    /// `engine::quiet`). Default: never quiet (a model that reads the whole
    /// history, or a swappable one whose answers may change).
    fn quiet_ahead(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Option<u64> {
        let _ = (history, horizon, quantiles);
        None
    }
}

/// One week in milliseconds: the period of the calendar features a quiet
/// forecast depends on (see [`Forecaster::quiet_ahead`]).
pub const WEEK_MS: i64 = 7 * DAY_MS;

pub mod arima;
pub mod conformal;
pub mod eval;
pub mod lstm;
pub mod metrics;
pub mod naive;
pub mod select;
pub mod series;
pub mod shared;
pub mod stat;
pub mod structured;

pub use arima::AutoArima;
pub use lstm::{LstmConfig, LstmForecaster, TrainReport};
pub use naive::{Naive, SeasonalNaive};
pub use select::Selector;
pub use shared::{FallbackForecaster, SharedForecaster};
pub use stat::Ets;
pub use structured::Structured;

/// One day in milliseconds: the default season of the statistical models,
/// because batch demand follows the working day.
pub const DAY_MS: i64 = 86_400_000;

/// Errors of the forecasting layer. Checkpoint problems are typed so callers
/// can fall back to the statistical model instead of crashing.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("checkpoint {path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: not a prescale LSTM checkpoint: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("checkpoint {path}: mismatched: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("training: {0}")]
    Training(String),
    #[error("no series to train on: {0}")]
    NoData(String),
    #[error("device {0} is not available in this build (enable the `gpu` cargo feature)")]
    DeviceUnavailable(String),
    #[error("invalid quantiles {0:?}: need ascending levels strictly between 0 and 1")]
    BadQuantiles(Vec<f64>),
}

/// Season length in buckets for a bucket width (one day), at least 1.
pub fn season_buckets(bucket_ms: i64) -> usize {
    if bucket_ms <= 0 {
        return 1;
    }
    ((DAY_MS / bucket_ms).max(1)) as usize
}

/// Validate quantile levels: ascending, strictly inside (0, 1).
pub fn check_quantiles(q: &[f64]) -> Result<(), ForecastError> {
    let ok = !q.is_empty()
        && q.iter().all(|&x| x > 0.0 && x < 1.0 && x.is_finite())
        && q.windows(2).all(|w| w[0] < w[1]);
    if ok {
        Ok(())
    } else {
        Err(ForecastError::BadQuantiles(q.to_vec()))
    }
}

/// Empirical quantile (linear interpolation) of an already sorted slice.
pub(crate) fn sorted_quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let w = pos - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}

/// Make every horizon row ascending and non-negative (demand cannot be
/// negative; clamping at zero keeps the order).
pub(crate) fn tidy_rows(values: &mut [Vec<f64>]) {
    for row in values.iter_mut() {
        for v in row.iter_mut() {
            if !v.is_finite() || *v < 0.0 {
                *v = 0.0;
            }
        }
        row.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    }
}
