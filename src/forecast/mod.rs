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

pub trait Forecaster: Send + Sync {
    fn name(&self) -> &str;
    /// Forecast `horizon` buckets ahead at the given ascending quantile levels.
    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast;
}
