//! What the service holds: a forecaster that can be swapped while decisions
//! keep running (periodic retraining), and loading with a safe fallback.

use super::{Ets, Forecast, ForecastError, Forecaster, History, Known, LstmForecaster};
use std::sync::{Arc, RwLock};

/// A hot-swappable forecaster. Readers clone the inner `Arc` under a read
/// lock held for a few nanoseconds, so a swap never waits for a forecast and
/// a forecast in flight finishes on the model it started with.
///
/// Service wiring: build the engine with `Arc::new(shared.clone())` as its
/// `Arc<dyn Forecaster>`; on the retraining interval call
/// [`crate::forecast::lstm::train`] on a blocking thread with the recent
/// series and `shared.swap(Arc::new(model))`.
#[derive(Clone)]
pub struct SharedForecaster {
    inner: Arc<RwLock<Arc<dyn Forecaster>>>,
}

impl SharedForecaster {
    pub fn new(model: Arc<dyn Forecaster>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(model)),
        }
    }

    /// The model in use now.
    pub fn current(&self) -> Arc<dyn Forecaster> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replace the model; returns the previous one.
    pub fn swap(&self, model: Arc<dyn Forecaster>) -> Arc<dyn Forecaster> {
        let mut g = match self.inner.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::replace(&mut *g, model)
    }
}

impl std::fmt::Debug for SharedForecaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedForecaster({})", self.current().name())
    }
}

impl Forecaster for SharedForecaster {
    fn name(&self) -> &str {
        // the name of a swappable model is not stable; say what it is
        "shared"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        self.current().forecast(history, horizon, quantiles)
    }

    fn forecast_batch(
        &self,
        hs: &[History<'_>],
        horizon: usize,
        quantiles: &[f64],
    ) -> Vec<Forecast> {
        self.current().forecast_batch(hs, horizon, quantiles)
    }

    fn forecast_known(
        &self,
        history: &History<'_>,
        known: Option<&Known<'_>>,
        horizon: usize,
        quantiles: &[f64],
    ) -> Forecast {
        self.current()
            .forecast_known(history, known, horizon, quantiles)
    }
}

/// Either the LSTM or, when its checkpoint could not be used, the statistical
/// model. Keeps the load error so the service can log and expose it.
#[derive(Debug)]
pub enum FallbackForecaster {
    Lstm(Box<LstmForecaster>),
    Statistical { model: Ets, error: Option<String> },
}

impl Forecaster for FallbackForecaster {
    fn name(&self) -> &str {
        match self {
            Self::Lstm(m) => m.name(),
            Self::Statistical { model, .. } => model.name(),
        }
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        match self {
            Self::Lstm(m) => m.forecast(history, horizon, quantiles),
            Self::Statistical { model, .. } => model.forecast(history, horizon, quantiles),
        }
    }

    fn forecast_batch(
        &self,
        hs: &[History<'_>],
        horizon: usize,
        quantiles: &[f64],
    ) -> Vec<Forecast> {
        match self {
            Self::Lstm(m) => m.forecast_batch(hs, horizon, quantiles),
            Self::Statistical { model, .. } => model.forecast_batch(hs, horizon, quantiles),
        }
    }

    fn quiet_ahead(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Option<u64> {
        match self {
            Self::Lstm(m) => m.quiet_ahead(history, horizon, quantiles),
            Self::Statistical { model, .. } => model.quiet_ahead(history, horizon, quantiles),
        }
    }
}

impl FallbackForecaster {
    /// The loaded LSTM, or on any problem loading it (missing, corrupt,
    /// mismatched) the statistical model and the typed error instead of a
    /// failure. Reading the checkpoint is the caller's (`model_file`).
    pub fn from_loaded(
        loaded: Result<LstmForecaster, ForecastError>,
    ) -> (Self, Option<ForecastError>) {
        match loaded {
            Ok(m) => (Self::Lstm(Box::new(m)), None),
            Err(e) => (
                Self::Statistical {
                    model: Ets::default(),
                    error: Some(e.to_string()),
                },
                Some(e),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::SeasonalNaive;

    #[test]
    fn swap_changes_the_model_in_use() {
        let s = SharedForecaster::new(Arc::new(SeasonalNaive::default()));
        assert_eq!(s.current().name(), "seasonal_naive");
        let old = s.swap(Arc::new(Ets::default()));
        assert_eq!(old.name(), "seasonal_naive");
        assert_eq!(s.current().name(), "ets");
    }

    #[test]
    fn a_load_error_falls_back_to_statistical_and_keeps_the_reason() {
        let err = ForecastError::Corrupt {
            path: "m.json".into(),
            reason: "truncated".into(),
        };
        let (f, back) = FallbackForecaster::from_loaded(Err(err));
        assert!(matches!(back, Some(ForecastError::Corrupt { .. })));
        assert_eq!(f.name(), "ets");
        let v: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: 300_000,
            values: &v,
        };
        assert_eq!(f.forecast(&h, 12, &[0.1, 0.5, 0.9]).values.len(), 12);
    }
}
