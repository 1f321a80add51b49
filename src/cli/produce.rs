//! `prescale produce`: publish a trace, a price history or an events file to
//! the input topics, so public traces and schedulers' exports can feed a live
//! run. Jobs are keyed by compute environment (one owner per environment),
//! prices by instance type, budgets by scope id.

use super::run::KafkaArgs;
use anyhow::{bail, Context};
use prescale::import::events_file::{is_events_file, read_messages, RecordedMessage};
use prescale::io::kafka::client::ensure_topics;
use prescale::io::kafka::produce::{publish_messages, Pace};
use prescale::io::kafka::publish::Publisher;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// An events file (recorded topics), an SWF trace (.swf, .swf.gz), or a
    /// spot-price history (CSV/TSV, plain or compressed).
    pub input: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Messages per second (paced evenly).
    #[arg(long, conflicts_with = "as_fast_as_possible", value_parser = super::values::positive_rate)]
    pub rate: Option<f64>,
    /// Publish without pacing (the default when --rate is absent).
    #[arg(long)]
    pub as_fast_as_possible: bool,
    /// Publish only the first N messages.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Create the topics first (brokers such as tansu do not auto-create).
    #[arg(long)]
    pub create_topics: bool,
    /// Skip records of an SWF trace or price file that cannot be parsed
    /// (counted and reported) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
}

/// Load the input as the messages a recorded topic would hold.
pub fn load_messages(path: &Path, skip_bad: bool) -> anyhow::Result<Vec<RecordedMessage>> {
    if is_events_file(path) {
        return Ok(read_messages(path)?);
    }
    let events = events_from_source(path, skip_bad)?;
    events
        .iter()
        .map(|e| RecordedMessage::from_event(e).map_err(anyhow::Error::from))
        .collect()
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    // Logs (RUST_LOG, default info): failed deliveries and their re-sends
    // during a broker outage are reported as they happen.
    let _telemetry = prescale::telemetry::init(&prescale::telemetry::TelemetryConfig::from_env()?)?;
    let cfg = args.kafka.load()?;
    let mut msgs = load_messages(&args.input, args.skip_bad)
        .with_context(|| format!("reading {}", args.input.display()))?;
    if let Some(n) = args.limit {
        msgs.truncate(n);
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number of messages per second, got {r}");
        }
    }
    if args.create_topics {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let names: Vec<(String, i32)> = cfg
            .topics
            .all()
            .into_iter()
            .map(|t| (t, cfg.partitions))
            .collect();
        rt.block_on(ensure_topics(&cfg, &names))?;
    }
    let publisher = Publisher::new(&cfg)?;
    let started = Instant::now();
    let total = msgs.len();
    let pace = match args.rate {
        Some(r) => Pace::Rate(r),
        None => Pace::AsFastAsPossible,
    };
    publish_messages(&cfg, &publisher, &msgs, 0, pace)?;
    publisher.flush(Duration::from_secs(120))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {total} messages from {} in {secs:.2}s ({:.0} msg/s)",
        args.input.display(),
        total as f64 / secs.max(1e-9)
    );
    let failed = publisher.counter.failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!(
            "{failed} failed delivery attempts were sent again in order; {} messages were written out of their partition's order",
            publisher.counter.reordered()
        );
    }
    Ok(())
}

/// SWF traces and price histories go through the same importers as
/// `prescale import` (default options), so a produced trace is what the
/// backtest reads. A file is a trace when its name says `.swf`
/// (`.swf.gz`), otherwise a price history.
fn events_from_source(path: &Path, skip_bad: bool) -> anyhow::Result<Vec<prescale::events::Event>> {
    use prescale::events::Event;
    use prescale::import::prices::{read_prices, PriceOptions};
    use prescale::import::swf::{read_swf, SwfOptions};
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".swf") || name.contains(".swf.") {
        let imp = read_swf(
            path,
            &SwfOptions {
                skip_bad,
                ..Default::default()
            },
        )?;
        eprintln!(
            "{}: {} events ({:?})",
            path.display(),
            imp.events.len(),
            imp.report
        );
        Ok(imp.events)
    } else {
        let imp = read_prices(
            path,
            &PriceOptions {
                skip_bad,
                ..Default::default()
            },
        )?;
        eprintln!(
            "{}: {} price ticks ({:?})",
            path.display(),
            imp.ticks.len(),
            imp.report
        );
        Ok(imp.ticks.into_iter().map(Event::PriceTick).collect())
    }
}
