//! `prescale train`: fit the shared LSTM on a trace and write a checkpoint
//! plus a model card into `models/NAME/`.

use super::forecast::{
    load_events, loss_bar, on_progress, parse_bucket_horizon, series_for, trim_last_days,
    TraceFormat,
};
use anyhow::{bail, Context, Result};
use clap::Args;
use prescale::forecast::lstm::{self, DeviceChoice, LstmConfig};
use prescale::forecast::series::{series_from_points, DemandSeries, Metric, StoredPoints};
use prescale::forecast::History;
use prescale::store::{demand_fields_blocking, StoreConfig, StoreFlavor};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// SWF log (plain or .gz), events file or Alibaba pod CSV.
    #[arg(
        long,
        required_unless_present = "from_store",
        conflicts_with = "from_store"
    )]
    pub trace: Option<PathBuf>,
    /// Train on the observed demand `prescale run` wrote to a prediction
    /// store at this URL instead of a trace (measurement `demand`, see
    /// docs/telemetry.md).
    #[arg(long, value_name = "URL")]
    pub from_store: Option<String>,
    /// Which server `--from-store` is: a real InfluxDB 2 (Flux) or
    /// VictoriaMetrics (its export API).
    #[arg(long, value_enum, default_value = "influxdb2")]
    pub store_flavor: StoreFlavorArg,
    /// InfluxDB organisation (default `PRESCALE_INFLUX_ORG` or `prescale`).
    #[arg(long)]
    pub store_org: Option<String>,
    /// InfluxDB bucket (default `PRESCALE_INFLUX_BUCKET` or `prescale`).
    #[arg(long)]
    pub store_bucket: Option<String>,
    /// InfluxDB token (default `PRESCALE_INFLUX_TOKEN` / `INFLUX_TOKEN`).
    #[arg(long)]
    pub store_token: Option<String>,
    /// First point to read from the store: epoch ms or RFC 3339 (default: all).
    #[arg(long)]
    pub store_start: Option<String>,
    /// Last point to read from the store: epoch ms or RFC 3339 (default: now).
    #[arg(long)]
    pub store_end: Option<String>,
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
    #[arg(long, default_value_t = 1.0, value_parser = super::values::fraction)]
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
    #[arg(long, value_parser = super::values::days)]
    pub last_days: Option<f64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StoreFlavorArg {
    Influxdb2,
    VictoriaMetrics,
}

/// Where the training history came from (for the model card).
enum Source {
    Trace { path: PathBuf, events: usize },
    Store { url: String, bucket: String },
}

/// Epoch ms, or an RFC 3339 time.
fn parse_time_ms(s: &str) -> Result<i64> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|d| d.timestamp_millis())
        .with_context(|| format!("bad time {s:?}: expected epoch ms or RFC 3339"))
}

/// The demand series `prescale run` stored, on the `bucket_ms` grid.
fn store_series(
    a: &TrainArgs,
    url: &str,
    bucket_ms: i64,
) -> Result<(Vec<DemandSeries>, StoreConfig)> {
    let env = StoreConfig::from_env();
    let d = StoreConfig::default();
    let pick = |flag: &Option<String>, env: Option<&String>, def: &str| {
        flag.clone()
            .or_else(|| env.cloned())
            .unwrap_or_else(|| def.to_string())
    };
    let cfg = StoreConfig {
        url: url.to_string(),
        org: pick(&a.store_org, env.as_ref().map(|e| &e.org), &d.org),
        bucket: pick(&a.store_bucket, env.as_ref().map(|e| &e.bucket), &d.bucket),
        token: pick(&a.store_token, env.as_ref().map(|e| &e.token), ""),
        ..d
    };
    let start = a.store_start.as_deref().map(parse_time_ms).transpose()?;
    let end = a.store_end.as_deref().map(parse_time_ms).transpose()?;
    let flavor = match a.store_flavor {
        StoreFlavorArg::Influxdb2 => StoreFlavor::Influxdb2,
        StoreFlavorArg::VictoriaMetrics => StoreFlavor::VictoriaMetrics,
    };
    let metrics: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| a.metrics.iter().any(|x| x == m.as_str()))
        .collect();
    let fields: Vec<&str> = metrics.iter().map(|m| m.as_str()).collect();
    let hist = demand_fields_blocking(
        &cfg,
        flavor,
        &fields,
        start.unwrap_or(0),
        end.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
    )
    .with_context(|| format!("reading demand history from {url}"))?;
    let points: Vec<StoredPoints> = metrics
        .iter()
        .zip(hist)
        .flat_map(|(m, h)| h.into_iter().map(move |(env, p)| (env, *m, p)))
        .collect();
    Ok((series_from_points(&points, bucket_ms), cfg))
}

pub fn run(a: TrainArgs) -> Result<()> {
    let (bucket_ms, horizon_ms) = parse_bucket_horizon(&a.bucket, &a.horizon)?;
    let horizon = ((horizon_ms + bucket_ms - 1) / bucket_ms).max(1) as usize;
    let device: DeviceChoice = a.device.parse().map_err(anyhow::Error::msg)?;
    let (mut series, source) = match (&a.trace, &a.from_store) {
        (Some(trace), _) => {
            let events = load_events(trace, a.format, a.skip_bad)?;
            let series = series_for(&events, bucket_ms, &a.metrics)?;
            let src = Source::Trace {
                path: trace.clone(),
                events: events.len(),
            };
            (series, src)
        }
        (None, Some(url)) => {
            let (series, cfg) = store_series(&a, url, bucket_ms)?;
            let src = Source::Store {
                url: cfg.url,
                bucket: cfg.bucket,
            };
            (series, src)
        }
        (None, None) => bail!("give --trace PATH or --from-store URL"),
    };
    trim_last_days(&mut series, a.last_days);
    if series.is_empty() {
        match &source {
            Source::Trace { path, .. } => {
                bail!("{}: no demand series in the trace", path.display())
            }
            Source::Store { url, bucket } => bail!(
                "{url} (bucket {bucket}): no `demand` points in the time range; \
                 does `prescale run` write there (see docs/telemetry.md)?"
            ),
        }
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
    let started = std::time::Instant::now();
    let (model, mut rep) = {
        let mut cb = on_progress(&pb);
        lstm::train(&hist, &cfg, device, &mut cb)?
    };
    rep.train_s = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ck = a.out.join("model.json");
    prescale::model_file::save(&model, &ck)?;
    let source_json = match &source {
        Source::Trace { path, events } => json!({
            "trace": path.display().to_string(),
            "trace_sha256": std::fs::read(path)
                .map(|b| hex::encode(Sha256::digest(b)))
                .unwrap_or_default(),
            "events": events,
        }),
        Source::Store { url, bucket } => json!({
            "store": url,
            "store_bucket": bucket,
            "measurement": "demand",
        }),
    };
    let start = series[0].start;
    let mut card = json!({
        "model": "prescale shared LSTM, pinball loss, calibrated quantiles",
        "checkpoint": "model.json",
        "prescale_version": env!("CARGO_PKG_VERSION"),
        "data": {
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
        "metrics": prescale::io::retrain::training_metrics(&rep),
    });
    if let (Some(data), Some(src)) = (card["data"].as_object_mut(), source_json.as_object()) {
        data.extend(src.clone());
    }
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
