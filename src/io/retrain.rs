//! Periodic retraining with hot swap, for the running service.
//!
//! [`RetrainSchedule`] decides *when* (pure: wall-clock ms and history length
//! in, yes/no out); [`Retrainer`] does it: it copies the demand history the
//! engine holds, trains the shared LSTM ([`crate::forecast::lstm::train`]) on a blocking
//! thread so the decision loop never waits, writes the checkpoint and a model
//! card into the models directory, and only then swaps the new model into the
//! [`SharedForecaster`] the engine forecasts with. Any failure (too little
//! data, training error, unwritable directory) is logged and counted, and the
//! model in use stays.

use crate::events::Millis;
use crate::forecast::lstm::{self, DeviceChoice, LstmConfig};
use crate::forecast::series::{DemandSeries, Metric};
use crate::forecast::{History, SharedForecaster};
use crate::state::DemandState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Retraining settings (`[retrain]` in the service's TOML file,
/// `PRESCALE_RETRAIN_*` in the environment, `--retrain-*` flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrainConfig {
    /// Seconds between retrainings; 0 turns retraining off, which is the
    /// default: a retrain costs tens of CPU-seconds on the host that makes
    /// decisions, and a swapped model makes a live run decide differently
    /// from a replay of the same input, so operators opt in (a day, 86 400,
    /// suits 5-minute buckets: the model then sees each new daily cycle).
    pub interval_s: u64,
    /// Do not train before every series could offer this many closed
    /// buckets (the LSTM needs window + horizon plus a calibration slice).
    pub min_buckets: usize,
    /// Training length; fewer steps than `prescale train` because the model
    /// starts from scratch on a bounded history and must finish well inside
    /// the interval.
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub seed: u64,
    /// Where each retrained model's `model.json` + `model_card.json` go
    /// (one sub-directory per retraining, named by its wall-clock time).
    pub models_dir: PathBuf,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        RetrainConfig {
            interval_s: 0,
            min_buckets: 96,
            epochs: 2,
            steps_per_epoch: 50,
            seed: 42,
            models_dir: PathBuf::from("models/retrained"),
        }
    }
}

/// When to retrain: every `interval` of wall-clock time, never while a
/// training is running, and not before there is enough history (then it
/// checks again on the next poll rather than waiting a whole interval).
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainSchedule {
    interval_ms: i64,
    min_buckets: usize,
    next_at: Option<Millis>,
}

impl RetrainSchedule {
    /// The first retraining is due one interval after `now_ms` (the service
    /// starts with the model it was given).
    pub fn new(cfg: &RetrainConfig, now_ms: Millis) -> Self {
        let interval_ms = (cfg.interval_s as i64).saturating_mul(1000);
        RetrainSchedule {
            interval_ms,
            min_buckets: cfg.min_buckets,
            next_at: (interval_ms > 0).then(|| now_ms.saturating_add(interval_ms)),
        }
    }

    /// Whether retraining is on at all.
    pub fn enabled(&self) -> bool {
        self.next_at.is_some()
    }

    /// Whether the interval has passed and nothing runs (the cheap half of
    /// [`Self::poll`], checked before counting history).
    pub fn due(&self, now_ms: Millis, busy: bool) -> bool {
        self.next_at.is_some_and(|n| !busy && now_ms >= n)
    }

    /// Should a retraining start now? `busy`: one is still running;
    /// `buckets`: closed buckets of history available. When it answers yes
    /// the next one is scheduled an interval later.
    pub fn poll(&mut self, now_ms: Millis, busy: bool, buckets: usize) -> bool {
        let Some(next) = self.next_at else {
            return false;
        };
        if busy || now_ms < next || buckets < self.min_buckets {
            return false;
        }
        self.next_at = Some(now_ms.saturating_add(self.interval_ms));
        true
    }
}

/// Owned training data: every non-zero resource series of every environment
/// the engine's state holds, keyed `<environment>/<metric>` as `prescale
/// train` keys them.
pub fn series_from_state(state: &DemandState) -> Vec<DemandSeries> {
    let bucket_ms = state.config().bucket_ms;
    let mut out = Vec::new();
    for env in state.environments() {
        for (r, metric) in Metric::ALL.iter().enumerate() {
            let (start, values) = state.environment_history(env, r);
            if values.is_empty() || values.iter().all(|&v| v == 0.0) {
                continue;
            }
            out.push(DemandSeries {
                key: format!("{env}/{}", metric.as_str()),
                environment: env.to_string(),
                metric: *metric,
                start,
                bucket_ms,
                values,
            });
        }
    }
    out
}

/// Runs retrainings for one service process.
pub struct Retrainer {
    cfg: RetrainConfig,
    schedule: RetrainSchedule,
    model: SharedForecaster,
    lstm: LstmConfig,
    busy: Arc<AtomicBool>,
    metrics: &'static crate::telemetry::Metrics,
}

impl Retrainer {
    /// `model` is the forecaster the engine uses; `horizon` and `quantiles`
    /// are the engine's, so a retrained model answers what the engine asks.
    pub fn new(
        cfg: RetrainConfig,
        model: SharedForecaster,
        bucket_ms: i64,
        horizon: usize,
        quantiles: Vec<f64>,
        now_ms: Millis,
        metrics: &'static crate::telemetry::Metrics,
    ) -> Self {
        let lstm = LstmConfig {
            horizon,
            quantiles,
            epochs: cfg.epochs.max(1),
            steps_per_epoch: cfg.steps_per_epoch.max(1),
            seed: cfg.seed,
            ..LstmConfig::for_bucket(bucket_ms)
        };
        Retrainer {
            schedule: RetrainSchedule::new(&cfg, now_ms),
            cfg,
            model,
            lstm,
            busy: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    /// Whether a retraining is running now.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Called from the decision loop after decision ticks: cheap unless a
    /// retraining is due, and then only the history copy happens here; the
    /// training itself runs on a blocking thread.
    pub fn maybe_start(&mut self, state: &DemandState, now_ms: Millis) -> bool {
        if !self.schedule.due(now_ms, self.busy()) {
            return false;
        }
        let buckets = state
            .environments()
            .into_iter()
            .map(|e| state.environment_history(e, crate::state::VCPU).1.len())
            .max()
            .unwrap_or(0);
        if !self.schedule.poll(now_ms, self.busy(), buckets) {
            return false;
        }
        let series = series_from_state(state);
        self.busy.store(true, Ordering::SeqCst);
        let job = Job {
            series,
            lstm: self.lstm.clone(),
            dir: self
                .cfg
                .models_dir
                .join(format!("retrain-{}", chrono::Utc::now().timestamp_millis())),
            model: self.model.clone(),
            busy: self.busy.clone(),
            metrics: self.metrics,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || job.run());
            }
            Err(_) => {
                std::thread::spawn(move || job.run());
            }
        }
        true
    }
}

/// One retraining, run off the decision loop.
struct Job {
    series: Vec<DemandSeries>,
    lstm: LstmConfig,
    dir: PathBuf,
    model: SharedForecaster,
    busy: Arc<AtomicBool>,
    metrics: &'static crate::telemetry::Metrics,
}

impl Job {
    fn run(self) {
        let t0 = std::time::Instant::now();
        match self.train_and_save() {
            Ok((model, rep)) => {
                // Swap only once the checkpoint is on disk, so the model in
                // use can always be inspected and reloaded.
                self.model.swap(Arc::new(model));
                self.metrics.inc_model_swap();
                tracing::info!(
                    dir = %self.dir.display(),
                    series = rep.series,
                    windows = rep.train_windows,
                    loss = rep.final_loss,
                    seconds = t0.elapsed().as_secs_f64(),
                    "retrained forecaster swapped in"
                );
            }
            Err(e) => {
                self.metrics.inc_retrain_failure();
                tracing::warn!(error = %e, "retraining failed; keeping the current model");
            }
        }
        self.busy.store(false, Ordering::SeqCst);
    }

    fn train_and_save(
        &self,
    ) -> Result<(crate::forecast::LstmForecaster, lstm::TrainReport), String> {
        let hist: Vec<History<'_>> = self.series.iter().map(|s| s.history()).collect();
        let started = std::time::Instant::now();
        let (model, mut rep) = lstm::train(&hist, &self.lstm, DeviceChoice::Cpu, &mut |_| {})
            .map_err(|e| e.to_string())?;
        rep.train_s = started.elapsed().as_secs_f64();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        crate::model_file::save(&model, &self.dir.join("model.json")).map_err(|e| e.to_string())?;
        let card = model_card(&self.series, &self.lstm, &rep);
        let text = serde_json::to_string_pretty(&card).map_err(|e| e.to_string())?;
        let card_path = self.dir.join("model_card.json");
        std::fs::write(&card_path, text)
            .map_err(|e| format!("writing {}: {e}", card_path.display()))?;
        Ok((model, rep))
    }
}

/// What training measured, as the model cards of `prescale train` and of
/// periodic retraining both record it (one place, so the keys agree).
pub fn training_metrics(rep: &lstm::TrainReport) -> serde_json::Value {
    serde_json::json!({
        "final_train_pinball_normalised": rep.final_loss,
        "val_interval_coverage_raw": rep.val_coverage_raw,
        "val_interval_coverage_calibrated": rep.val_coverage_calibrated,
        "train_windows": rep.train_windows,
        "val_windows": rep.val_windows,
        "steps": rep.steps,
        "train_s": rep.train_s,
    })
}

/// The model card of a retrained model: what data, which window, which
/// hyper-parameters, what training measured (same keys as `prescale train`).
pub fn model_card(
    series: &[DemandSeries],
    cfg: &LstmConfig,
    rep: &lstm::TrainReport,
) -> serde_json::Value {
    let start = series.iter().map(|s| s.start).min().unwrap_or(0);
    let end = series
        .iter()
        .map(|s| s.start + s.values.len() as i64 * s.bucket_ms)
        .max()
        .unwrap_or(start);
    serde_json::json!({
        "model": "prescale shared LSTM, pinball loss, calibrated quantiles",
        "checkpoint": "model.json",
        "prescale_version": env!("CARGO_PKG_VERSION"),
        "trigger": "periodic retraining in prescale run",
        "trained_at_ms": chrono::Utc::now().timestamp_millis(),
        "data": {
            "source": "demand history held by the running service",
            "series": series.iter().map(|s| s.key.clone()).collect::<Vec<_>>(),
            "bucket_ms": cfg.bucket_ms,
            "buckets": series.iter().map(|s| s.values.len()).max().unwrap_or(0),
            "start_ms": start,
            "end_ms": end,
        },
        "window": {
            "input_buckets": cfg.window,
            "horizon_buckets": cfg.horizon,
            "season_buckets": cfg.season,
        },
        "hyper_parameters": cfg,
        "seed": cfg.seed,
        "device": rep.device,
        "metrics": training_metrics(rep),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(interval_s: u64, min_buckets: usize) -> RetrainConfig {
        RetrainConfig {
            interval_s,
            min_buckets,
            ..Default::default()
        }
    }

    #[test]
    fn off_by_default_never_fires() {
        let mut s = RetrainSchedule::new(&RetrainConfig::default(), 0);
        assert!(!s.enabled());
        for t in [0, 1, i64::MAX / 2] {
            assert!(!s.poll(t, false, 1_000_000));
        }
    }

    #[test]
    fn fires_once_per_interval() {
        let mut s = RetrainSchedule::new(&cfg(60, 10), 1_000);
        assert!(!s.poll(1_000, false, 100), "not at start");
        assert!(!s.poll(60_999, false, 100), "not before one interval");
        assert!(s.poll(61_000, false, 100));
        assert!(!s.poll(61_001, false, 100), "just fired");
        assert!(!s.poll(120_999, false, 100));
        assert!(s.poll(121_000, false, 100));
    }

    #[test]
    fn waits_while_busy_then_fires() {
        let mut s = RetrainSchedule::new(&cfg(60, 10), 0);
        assert!(!s.poll(60_000, true, 100), "a training is still running");
        assert!(!s.poll(90_000, true, 100));
        // as soon as it finished, the overdue retraining starts
        assert!(s.poll(90_001, false, 100));
        // and the next one is an interval after that start
        assert!(!s.poll(150_000, false, 100));
        assert!(s.poll(150_001, false, 100));
    }

    #[test]
    fn waits_for_enough_history_without_skipping_an_interval() {
        let mut s = RetrainSchedule::new(&cfg(60, 96), 0);
        assert!(!s.poll(60_000, false, 95));
        assert!(!s.poll(61_000, false, 95));
        assert!(s.poll(62_000, false, 96), "fires once history suffices");
    }

    #[test]
    fn series_from_state_keys_environment_and_metric() {
        use crate::events::{Event, JobSubmitted};
        use crate::state::StateConfig;
        let mut st = DemandState::new(StateConfig {
            bucket_ms: 1000,
            allowed_lateness_ms: 0,
            ..Default::default()
        });
        let mut ticks = Vec::new();
        for i in 0..20i64 {
            st.apply(
                &Event::JobSubmitted(JobSubmitted {
                    job_id: compact_str::format_compact!("j{i}"),
                    submitted_at: i * 1000,
                    compute_environment: if i % 2 == 0 { "a" } else { "b" }.into(),
                    job_type: "batch".into(),
                    project: "p".into(),
                    user: "u".into(),
                    priority: 0,
                    vcpus: 2.0,
                    memory_mib: 512,
                    gpus: 0,
                    estimated_runtime_s: None,
                    budget_usd: None,
                    deadline: None,
                    elasticity: false,
                }),
                &mut ticks,
            );
        }
        let s = series_from_state(&st);
        let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
        // gpus are all zero: left out, as `prescale train` leaves them out
        assert_eq!(keys, ["a/vcpus", "a/memory_mib", "b/vcpus", "b/memory_mib"]);
        assert!(s
            .iter()
            .all(|x| x.values.len() >= 18 && x.bucket_ms == 1000));
    }

    #[test]
    fn successful_training_writes_checkpoint_and_card_then_swaps() {
        use crate::forecast::{Forecaster, SeasonalNaive};
        let metrics: &'static crate::telemetry::Metrics =
            Box::leak(Box::new(crate::telemetry::Metrics::new()));
        let shared = SharedForecaster::new(Arc::new(SeasonalNaive::default()));
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f64> = (0..160)
            .map(|i| 10.0 + 5.0 * ((i as f64) * 0.3).sin())
            .collect();
        let job = Job {
            series: vec![DemandSeries {
                key: "a/vcpus".into(),
                environment: "a".into(),
                metric: Metric::Vcpus,
                start: 0,
                bucket_ms: 300_000,
                values: values.clone(),
            }],
            lstm: LstmConfig {
                window: 12,
                horizon: 3,
                hidden: 4,
                head_hidden: 4,
                epochs: 1,
                steps_per_epoch: 2,
                batch: 8,
                season: 24,
                ..LstmConfig::default()
            },
            dir: dir.path().join("r"),
            model: shared.clone(),
            busy: Arc::new(AtomicBool::new(true)),
            metrics,
        };
        job.run();
        assert_eq!(shared.current().name(), "lstm");
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("r/model_card.json")).unwrap())
                .unwrap();
        assert_eq!(card["data"]["series"][0], "a/vcpus");
        assert_eq!(card["window"]["horizon_buckets"], 3);
        // the checkpoint on disk is the model in use
        let loaded = crate::model_file::load(&dir.path().join("r/model.json")).unwrap();
        let h = History {
            key: "a",
            start: 0,
            bucket_ms: 300_000,
            values: &values,
        };
        assert_eq!(
            loaded.forecast(&h, 3, &[0.1, 0.5, 0.9]),
            shared.forecast(&h, 3, &[0.1, 0.5, 0.9])
        );
        let text = metrics.render();
        assert!(text.contains("prescale_model_swaps_total 1"), "{text}");
        assert!(text.contains("prescale_retrain_failures_total 0"), "{text}");
    }

    #[test]
    fn failed_training_keeps_the_model_and_counts() {
        use crate::forecast::SeasonalNaive;
        let metrics: &'static crate::telemetry::Metrics =
            Box::leak(Box::new(crate::telemetry::Metrics::new()));
        let shared = SharedForecaster::new(Arc::new(SeasonalNaive::default()));
        let dir = tempfile::tempdir().unwrap();
        let job = Job {
            // far too short for a 48-bucket window: training must fail
            series: vec![DemandSeries {
                key: "a/vcpus".into(),
                environment: "a".into(),
                metric: Metric::Vcpus,
                start: 0,
                bucket_ms: 300_000,
                values: vec![1.0; 10],
            }],
            lstm: LstmConfig::default(),
            dir: dir.path().join("r"),
            model: shared.clone(),
            busy: Arc::new(AtomicBool::new(true)),
            metrics,
        };
        let busy = job.busy.clone();
        job.run();
        assert_eq!(shared.current().name(), "seasonal_naive");
        assert!(!busy.load(Ordering::SeqCst));
        let text = metrics.render();
        assert!(text.contains("prescale_retrain_failures_total 1"), "{text}");
        assert!(text.contains("prescale_model_swaps_total 0"), "{text}");
    }
}
