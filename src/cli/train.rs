//! `prescale train`: fit the shared LSTM on a trace and write a checkpoint
//! plus a model card into `models/NAME/`.

use super::forecast::{
    load_events, loss_bar, on_progress, parse_duration_ms, series_for, trim_last_days, TraceFormat,
};
use anyhow::{bail, Context, Result};
use clap::Args;
use prescale::forecast::lstm::{self, DeviceChoice, LstmConfig};
use prescale::forecast::History;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// SWF log (plain or .gz), events file or Alibaba pod CSV.
    #[arg(long)]
    pub trace: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: TraceFormat,
    /// Output directory: `model.json` (checkpoint) and `model_card.json`.
    #[arg(long, default_value = "models/lstm")]
    pub out: PathBuf,
    #[arg(long, default_value = "5m")]
    pub bucket: String,
    #[arg(long, default_value = "1h")]
    pub horizon: String,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Train on this leading fraction of the trace (the rest is the
    /// evaluation tail; `prescale forecast eval` uses the same cut).
    #[arg(long, default_value_t = 1.0)]
    pub train_frac: f64,
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9")]
    pub quantiles: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "vcpus,memory_mib,gpus")]
    pub metrics: Vec<String>,
    #[arg(long)]
    pub hidden: Option<usize>,
    #[arg(long)]
    pub window: Option<usize>,
    /// cpu, or gpu (needs the `gpu` cargo feature: wgpu backend).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub skip_bad: bool,
    /// Use only the last N days of the trace.
    #[arg(long)]
    pub last_days: Option<f64>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let bucket_ms = parse_duration_ms(&a.bucket)?;
    let horizon_ms = parse_duration_ms(&a.horizon)?;
    let horizon = ((horizon_ms + bucket_ms - 1) / bucket_ms).max(1) as usize;
    let device: DeviceChoice = a.device.parse().map_err(anyhow::Error::msg)?;
    let events = load_events(&a.trace, a.format, a.skip_bad)?;
    let mut series = series_for(&events, bucket_ms, &a.metrics);
    trim_last_days(&mut series, a.last_days);
    if series.is_empty() {
        bail!("{}: no demand series in the trace", a.trace.display());
    }
    let n = series.iter().map(|s| s.values.len()).min().unwrap_or(0);
    let cut = ((n as f64) * a.train_frac.clamp(0.05, 1.0)).floor() as usize;
    let mut cfg = LstmConfig {
        horizon,
        quantiles: a.quantiles.clone(),
        seed: a.seed,
        ..LstmConfig::for_bucket(bucket_ms)
    };
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(s) = a.steps_per_epoch {
        cfg.steps_per_epoch = s;
    }
    if let Some(h) = a.hidden {
        cfg.hidden = h;
    }
    if let Some(w) = a.window {
        cfg.window = w;
    }
    let hist: Vec<History<'_>> = series.iter().map(|s| s.history_to(cut)).collect();
    let pb = loss_bar((cfg.epochs * cfg.steps_per_epoch) as u64);
    let (model, rep) = {
        let mut cb = on_progress(&pb);
        lstm::train(&hist, &cfg, device, &mut cb)?
    };
    pb.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ck = a.out.join("model.json");
    model.save(&ck)?;
    let trace_sha = std::fs::read(&a.trace)
        .map(|b| hex::encode(Sha256::digest(b)))
        .unwrap_or_default();
    let start = series[0].start;
    let card = json!({
        "model": "prescale shared LSTM, pinball loss, calibrated quantiles",
        "checkpoint": "model.json",
        "prescale_version": env!("CARGO_PKG_VERSION"),
        "data": {
            "trace": a.trace.display().to_string(),
            "trace_sha256": trace_sha,
            "events": events.len(),
            "series": series.iter().map(|s| s.key.clone()).collect::<Vec<_>>(),
            "bucket_ms": bucket_ms,
            "buckets": n,
            "start_ms": start,
            "end_ms": start + n as i64 * bucket_ms,
        },
        "window": {
            "input_buckets": cfg.window,
            "horizon_buckets": cfg.horizon,
            "season_buckets": cfg.season,
        },
        "train_cut": {
            "fraction": a.train_frac,
            "bucket": cut,
            "at_ms": start + cut as i64 * bucket_ms,
            "calibration_slice_fraction_of_training": cfg.val_frac,
        },
        "hyper_parameters": cfg,
        "seed": a.seed,
        "device": rep.device,
        "metrics": {
            "final_train_pinball_normalised": rep.final_loss,
            "val_interval_coverage_raw": rep.val_coverage_raw,
            "val_interval_coverage_calibrated": rep.val_coverage_calibrated,
            "train_windows": rep.train_windows,
            "val_windows": rep.val_windows,
            "steps": rep.steps,
            "train_s": rep.train_s,
        },
    });
    std::fs::write(
        a.out.join("model_card.json"),
        serde_json::to_string_pretty(&card)?,
    )?;
    println!(
        "trained on {} series ({} windows) in {:.1}s: final loss {:.4}, validation coverage {:.3} → {:.3} calibrated; wrote {}",
        series.len(),
        rep.train_windows,
        rep.train_s,
        rep.final_loss,
        rep.val_coverage_raw,
        rep.val_coverage_calibrated,
        ck.display()
    );
    Ok(())
}
