//! Quiet forecasts, made once per time of the week. Cost grows with events,
//! not with time spans: after a burst of work the forecaster's history holds
//! it for days, and most ticks in between show the forecaster only zeros
//! where it reads. Such a forecast depends on nothing but the origin's time
//! within the week (see [`Forecaster::quiet_ahead`]), so the engine keeps
//! one per time of the week and answers every quiet tick from it instead of
//! copying the history and forecasting again. Exact: the answer is the
//! forecast the forecaster gives at that tick. Derived data, not
//! checkpointed (a restored engine forecasts its first quiet ticks again).
//!
//! [`Forecaster::quiet_ahead`]: crate::forecast::Forecaster::quiet_ahead

use crate::events::Millis;
use crate::forecast::{Forecast, WEEK_MS};
use std::collections::HashMap;
use std::sync::Arc;

/// Bound on the forecasts kept: a week of one-minute buckets.
const MAX_KEPT: usize = 7 * 24 * 60;

#[derive(Default)]
pub(super) struct QuietForecasts {
    /// Per environment, the first origin whose forecast may not be quiet:
    /// valid while the environment's buckets close to zeros, so any job
    /// event forgets them ([`QuietForecasts::forget_runs`]).
    until: HashMap<String, Millis>,
    /// Quiet forecasts by the origin's time within the week. Shared by the
    /// environments: a quiet forecast reads nothing of its series.
    by_time: HashMap<Millis, Arc<Forecast>>,
    /// Ticks answered from `by_time`.
    reused: u64,
}

impl QuietForecasts {
    /// The forecast of `env` at `origin`, if it is quiet and one was made
    /// at the same time of the week.
    pub(super) fn get(&mut self, env: &str, origin: Millis) -> Option<Arc<Forecast>> {
        if origin >= *self.until.get(env)? {
            return None;
        }
        let f = self.by_time.get(&origin.rem_euclid(WEEK_MS))?.clone();
        self.reused += 1;
        Some(f)
    }

    /// Keep `forecast`, made at `origin` for `env`, whose next `run`
    /// origins `bucket_ms` apart are quiet (from `origin` itself on).
    pub(super) fn learn(
        &mut self,
        env: &str,
        origin: Millis,
        run: u64,
        bucket_ms: i64,
        forecast: &Arc<Forecast>,
    ) {
        if run == 0 {
            return;
        }
        let until = i64::try_from(run)
            .ok()
            .and_then(|r| r.checked_mul(bucket_ms))
            .and_then(|d| origin.checked_add(d))
            .unwrap_or(Millis::MAX);
        match self.until.get_mut(env) {
            Some(u) => *u = until,
            None => {
                self.until.insert(env.to_string(), until);
            }
        }
        let key = origin.rem_euclid(WEEK_MS);
        if self.by_time.len() < MAX_KEPT || self.by_time.contains_key(&key) {
            self.by_time.insert(key, forecast.clone());
        }
    }

    /// A job event may put values other than zero in the coming buckets.
    pub(super) fn forget_runs(&mut self) {
        self.until.clear();
    }

    /// Another forecaster answers from now on.
    pub(super) fn clear(&mut self) {
        self.until.clear();
        self.by_time.clear();
    }

    pub(super) fn reused(&self) -> u64 {
        self.reused
    }
}
