//! `prescale forecast eval`: rolling-origin evaluation of the forecasters on
//! a trace, after the training cut. Also holds the trace loading shared with
//! `prescale train`.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use prescale::events::Event;
use prescale::forecast::eval::{evaluate, EvalConfig, EvalOutcome, PerOrigin, MODELS};
use prescale::forecast::lstm::{DeviceChoice, Progress};
use prescale::forecast::series::{demand_series, DemandSeries};
use prescale::forecast::structured::job_records;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    /// By content: events file, Alibaba pod CSV (by header), else SWF.
    Auto,
    Swf,
    Events,
    Alibaba,
}

#[derive(Debug, Subcommand)]
pub enum ForecastCmd {
    /// Rolling-origin evaluation of persistence, seasonal naive, ETS, the
    /// LSTM and the structured (jobs + arrivals) model.
    Eval(EvalArgs),
}

#[derive(Debug, Args)]
pub struct ForecastArgs {
    #[command(subcommand)]
    pub cmd: ForecastCmd,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// SWF log (plain or .gz), events file or Alibaba pod CSV.
    #[arg(long)]
    pub trace: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: TraceFormat,
    /// Bucket width (e.g. 5m, 300s, 1h).
    #[arg(long, default_value = "5m")]
    pub bucket: String,
    /// Forecast horizon (e.g. 1h).
    #[arg(long, default_value = "1h")]
    pub horizon: String,
    /// Fraction of the trace before the training cut.
    #[arg(long, default_value_t = 0.7, value_parser = super::values::fraction_open)]
    pub train_frac: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Quantile levels.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9")]
    pub quantiles: Vec<f64>,
    /// Buckets between forecast origins (default: the horizon).
    #[arg(long)]
    pub stride: Option<usize>,
    /// LSTM training epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Which series: comma list of vcpus, memory_mib, gpus.
    #[arg(long, value_delimiter = ',', default_value = "vcpus,memory_mib,gpus")]
    pub metrics: Vec<String>,
    /// cpu, or gpu (needs the `gpu` cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Skip bad records in the trace (counted) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Use only the last N days of the trace (for traces whose activity is
    /// concentrated at the end, like the Alibaba pod snapshot).
    #[arg(long, value_parser = super::values::days)]
    pub last_days: Option<f64>,
    /// Also score a per-series selector over seasonal naive, ETS and the
    /// LSTM (same as adding `selector` to --models).
    #[arg(long)]
    pub selector: bool,
    /// Models to score (persistence, `naive`, is always scored: it is the
    /// yardstick of skill and of the Diebold–Mariano test).
    #[arg(long, value_delimiter = ',', default_value = "naive,seasonal_naive,ets,arima,lstm,structured",
          value_parser = clap::builder::PossibleValuesParser::new(MODELS))]
    pub models: Vec<String>,
    /// Capacity level for the decision metric (under/over-provisioned
    /// vCPU-minutes): the planner's quantile for normal-priority work.
    #[arg(long, default_value_t = 0.5, value_parser = super::values::fraction_open)]
    pub planner_quantile: f64,
    /// Write every forecast as CSV (model, series, origin, step, each
    /// quantile, actual) for significance tests of your own.
    #[arg(long, value_name = "FILE")]
    pub per_origin: Option<PathBuf>,
    /// Do not score the `+cal` (rolling conformal recalibration) variants.
    #[arg(long)]
    pub no_calibrate: bool,
    /// Structured model: sample arrivals only from the N past origins whose
    /// preceding hour of arrivals was closest to this origin's (0: from
    /// every candidate).
    #[arg(long, default_value_t = 0)]
    pub arrival_analogs: usize,
    /// Structured model: survival functions per user and/or per size class
    /// (within the walltime class) where they have enough completions.
    #[arg(long, value_delimiter = ',', default_value = "user,size",
          value_parser = clap::builder::PossibleValuesParser::new(["user", "size", "none"]))]
    pub strata: Vec<String>,
    /// Structured model: refit its survival functions every N days of the
    /// test on the jobs seen by then (0: once, at the cut).
    #[arg(long, default_value_t = 0.0, value_parser = days_or_zero)]
    pub refit_days: f64,
    /// Structured model: fit on the jobs of the last N days before each
    /// fit (0: all).
    #[arg(long, default_value_t = 0.0, value_parser = days_or_zero)]
    pub fit_window_days: f64,
}

/// Days, 0 (off) up to 100 years.
fn days_or_zero(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=36_500.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}`: need a number of days from 0 to 36500")),
    }
}

/// Parse `5m`, `300s`, `1h`, `2d` or plain seconds into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("bad duration unit in {s:?} (ms, s, m, h, d)"),
    };
    if n <= 0 {
        bail!("duration {s:?} must be positive");
    }
    n.checked_mul(mult)
        .filter(|&ms| ms <= prescale::limits::MAX_DURATION_S * 1000)
        .with_context(|| format!("duration {s:?} is longer than 10 years"))
}

/// `--bucket` and `--horizon`: the bucket at least
/// [`prescale::limits::MIN_BUCKET_MS`] (finer buckets only multiply the
/// work), the horizon at most [`prescale::limits::MAX_LSTM_DIM`] buckets.
pub fn parse_bucket_horizon(bucket: &str, horizon: &str) -> Result<(i64, i64)> {
    let b = parse_duration_ms(bucket).context("--bucket")?;
    let h = parse_duration_ms(horizon).context("--horizon")?;
    if b < prescale::limits::MIN_BUCKET_MS {
        bail!(
            "--bucket {bucket}: at least {} ms",
            prescale::limits::MIN_BUCKET_MS
        );
    }
    if h / b > prescale::limits::MAX_LSTM_DIM as i64 {
        bail!(
            "--horizon {horizon}: at most {} buckets of {bucket}",
            prescale::limits::MAX_LSTM_DIM
        );
    }
    Ok((b, h))
}

/// Read a trace into events.
pub fn load_events(path: &Path, format: TraceFormat, skip_bad: bool) -> Result<Vec<Event>> {
    use prescale::import::alibaba::{is_alibaba_csv, read_alibaba, AlibabaOptions};
    use prescale::import::events_file::{is_events_file, read_events};
    let format = match format {
        TraceFormat::Auto if is_events_file(path) => TraceFormat::Events,
        TraceFormat::Auto if is_alibaba_csv(path) => TraceFormat::Alibaba,
        TraceFormat::Auto => TraceFormat::Swf,
        f => f,
    };
    match format {
        TraceFormat::Events => {
            let d = read_events(path, skip_bad)?;
            if !d.bad.is_empty() {
                eprintln!("skipped {} bad records", d.bad.len());
            }
            Ok(d.events)
        }
        TraceFormat::Alibaba => {
            let opts = AlibabaOptions {
                skip_bad,
                ..Default::default()
            };
            let imp = read_alibaba(path, &opts)?;
            if !imp.report.bad.is_empty() {
                eprintln!("skipped {} bad rows", imp.report.bad.len());
            }
            Ok(imp.events)
        }
        TraceFormat::Swf | TraceFormat::Auto => load_swf(path, skip_bad),
    }
}

/// SWF through the shared importer; the compute environment is the queue
/// (RICC has one partition and two queues), job type the size class.
fn load_swf(path: &Path, skip_bad: bool) -> Result<Vec<Event>> {
    use prescale::import::swf::{read_swf, SwfKey, SwfOptions};
    let opts = SwfOptions {
        env_from: SwfKey::Queue,
        job_type_from: SwfKey::Size,
        skip_bad,
        ..SwfOptions::default()
    };
    let imp = read_swf(path, &opts)?;
    if imp.report.skipped_bad_lines > 0 {
        eprintln!("skipped {} bad lines", imp.report.skipped_bad_lines);
    }
    Ok(imp.events)
}

/// Events → demand series of the selected metrics. The series are dense
/// (training needs every bucket), so a span beyond
/// [`prescale::limits::MAX_SPAN_BUCKETS`] is an error naming both ends.
pub fn series_for(
    events: &[Event],
    bucket_ms: i64,
    metrics: &[String],
) -> Result<Vec<DemandSeries>> {
    let first = events.iter().map(Event::time).min();
    let last = events.iter().map(Event::time).max();
    if let (Some(a), Some(b)) = (first, last) {
        if let Some(e) = prescale::limits::span_error(a, b, bucket_ms) {
            bail!("{e}");
        }
    }
    Ok(demand_series(events, bucket_ms)
        .into_iter()
        .filter(|s| metrics.iter().any(|m| m == s.metric.as_str()))
        .collect())
}

/// Keep only the last `days` days of every series (they share one axis).
pub fn trim_last_days(series: &mut [DemandSeries], days: Option<f64>) {
    let Some(days) = days else { return };
    for s in series.iter_mut() {
        let keep = ((days * 86_400_000.0) / s.bucket_ms as f64).ceil() as usize;
        if s.values.len() > keep {
            let drop = s.values.len() - keep;
            s.values.drain(..drop);
            s.start += drop as i64 * s.bucket_ms;
        }
    }
}

/// A progress bar that shows the training loss.
pub fn loss_bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} training [{bar:30}] {pos}/{len} steps {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

pub fn on_progress(pb: &ProgressBar) -> impl FnMut(Progress) + '_ {
    let mut ema = f64::NAN;
    move |p: Progress| {
        ema = if ema.is_nan() {
            p.loss
        } else {
            0.95 * ema + 0.05 * p.loss
        };
        pb.set_position(p.step as u64);
        pb.set_message(format!("epoch {} loss {ema:.4}", p.epoch + 1));
    }
}

pub fn run(args: ForecastArgs) -> Result<()> {
    match args.cmd {
        ForecastCmd::Eval(a) => eval(a),
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    let (bucket_ms, horizon_ms) = parse_bucket_horizon(&a.bucket, &a.horizon)?;
    let horizon = ((horizon_ms + bucket_ms - 1) / bucket_ms).max(1) as usize;
    let device: DeviceChoice = a.device.parse().map_err(anyhow::Error::msg)?;
    let events = load_events(&a.trace, a.format, a.skip_bad)?;
    let mut series = series_for(&events, bucket_ms, &a.metrics)?;
    trim_last_days(&mut series, a.last_days);
    let jobs = job_records(&events);
    drop(events);
    let mut cfg = EvalConfig::new(bucket_ms, horizon);
    cfg.clock = monotonic_s;
    cfg.quantiles = a.quantiles.clone();
    cfg.train_frac = a.train_frac;
    cfg.device = device;
    cfg.models = a.models.clone();
    if a.selector {
        cfg.models.push("selector".into());
    }
    cfg.planner_quantile = a.planner_quantile;
    cfg.calibrate = !a.no_calibrate;
    cfg.structured.arrival_analogs = a.arrival_analogs;
    cfg.structured.by_user = a.strata.iter().any(|s| s == "user");
    cfg.structured.by_size = a.strata.iter().any(|s| s == "size");
    cfg.structured_refit_ms = (a.refit_days * 86_400_000.0) as i64;
    cfg.structured.fit_window_ms = (a.fit_window_days * 86_400_000.0) as i64;
    cfg.lstm.seed = a.seed;
    if let Some(e) = a.epochs {
        cfg.lstm.epochs = e;
    }
    if let Some(s) = a.stride {
        cfg.stride = s;
    }
    eprintln!(
        "{}: {} jobs → {} series of {} buckets",
        a.trace.display(),
        jobs.len(),
        series.len(),
        series.first().map(|s| s.values.len()).unwrap_or(0)
    );
    let trains = cfg.models.iter().any(|m| m == "lstm" || m == "selector");
    let pb = loss_bar(if trains {
        (cfg.lstm.epochs * cfg.lstm.steps_per_epoch) as u64
    } else {
        0
    });
    let out = {
        let mut cb = on_progress(&pb);
        evaluate(&series, Some(&jobs), &cfg, &mut cb)?
    };
    pb.finish_and_clear();
    print_outcome(&out);
    if let Some(p) = &a.per_origin {
        write_per_origin(p, &out.per_origin)?;
        eprintln!("per-origin forecasts written to {}", p.display());
    }
    let json = serde_json::to_string_pretty(&out.report)?;
    if let Some(p) = &a.json {
        create_parent(p)?;
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn create_parent(p: &Path) -> Result<()> {
    if let Some(d) = p.parent() {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    Ok(())
}

fn print_outcome(out: &EvalOutcome) {
    eprintln!(
        "evaluated {} series ({} skipped as constant before the cut: {:?}), {} origins",
        out.evaluated.len(),
        out.skipped.len(),
        out.skipped,
        out.origins,
    );
    if let Some(t) = &out.train {
        eprintln!(
            "LSTM trained in {:.1}s, validation coverage {:.3} raw → {:.3} calibrated",
            t.train_s, t.val_coverage_raw, t.val_coverage_calibrated
        );
    }
    if let Some(c) = out.structured_check {
        eprintln!("structured bookkeeping: max |series − (known + arrivals)| = {c:.2e}");
    }
    let r = &out.report;
    let naive = r.models.get("naive").map_or(f64::NAN, |m| m.mase_pooled);
    println!(
        "{:<16} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>11} {:>11} {:>7} {:>8} {:>7} {:>10}",
        "model",
        "MASE",
        "pooled",
        "/naive",
        "sMAPE%",
        "pinball",
        "cov80",
        "under_vmin",
        "over_vmin",
        "DM",
        "p",
        "fit_s",
        "us/series"
    );
    for (name, m) in &r.models {
        println!(
            "{:<16} {:>8.4} {:>8.4} {:>7.3} {:>7.2} {:>8.4} {:>6.3} {:>11.0} {:>11.0} {:>7.2} {:>8.4} {:>7.2} {:>10.1}",
            name,
            m.mase,
            m.mase_pooled,
            m.mase_pooled / naive,
            m.smape,
            m.pinball,
            m.coverage.get("0.8").copied().unwrap_or(f64::NAN),
            m.under_vcpu_min,
            m.over_vcpu_min,
            m.dm_vs_naive.unwrap_or(f64::NAN),
            m.dm_p.unwrap_or(f64::NAN),
            m.fit_s,
            m.predict_us_per_series
        );
    }
    println!(
        "decision metric at the planner quantile {}; DM > 0: more accurate than persistence",
        r.planner_quantile
    );
    println!("skill vs persistence per horizon step (1 − MAE ratio):");
    for (name, m) in &r.models {
        let s: Vec<String> = m
            .skill_per_step
            .iter()
            .map(|x| format!("{x:+.3}"))
            .collect();
        println!("  {:<16} {}", name, s.join(" "));
    }
}

/// `--per-origin`: one CSV row per (model, series, origin, step).
fn write_per_origin(path: &Path, per: &PerOrigin) -> Result<()> {
    use std::io::Write;
    create_parent(path)?;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let qs: Vec<String> = per.quantiles.iter().map(|q| format!("q{q}")).collect();
    writeln!(w, "model,series,origin_ms,step,{},actual", qs.join(","))?;
    for (name, grid) in &per.models {
        for (oi, row) in grid.iter().enumerate() {
            for (si, f) in row.iter().enumerate() {
                for (k, vals) in f.iter().enumerate() {
                    let v: Vec<String> = vals.iter().map(|x| format!("{x}")).collect();
                    writeln!(
                        w,
                        "{name},{},{},{},{},{}",
                        per.series[si],
                        per.origins[oi],
                        k + 1,
                        v.join(","),
                        per.actual[oi][si][k]
                    )?;
                }
            }
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Seconds since the first call, on the monotonic clock: the evaluation's
/// clock (`EvalConfig::clock`; the core reads none itself).
fn monotonic_s() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}
