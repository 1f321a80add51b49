//! `prescale import`: turn public traces and price histories into events files.

use anyhow::Context;
use clap::{Args, Subcommand};
use prescale::events::Event;
use prescale::import::events_file::EventsWriter;
use prescale::import::prices::{read_prices, PriceOptions};
use prescale::import::swf::{read_swf, SwfKey, SwfOptions};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub what: ImportCmd,
}

#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Standard Workload Format log (Parallel Workloads Archive), plain or .gz,
    /// into an events file of job submissions and completions.
    Swf(SwfArgs),
    /// Spot price history (AWS TSV/CSV, plain, .gz or .zst) into an events file of price ticks.
    Prices(PricesArgs),
    /// AWS EventBridge events ("EC2 Spot Instance Interruption Warning",
    /// "EC2 Instance Rebalance Recommendation"; a JSON array or one event
    /// per line) into an events file of spot signals, which the engine
    /// learns each pool's interruption risk from. Other events are counted
    /// and left out.
    Eventbridge(EventBridgeArgs),
}

#[derive(Debug, Args)]
pub struct EventBridgeArgs {
    /// EventBridge events to read.
    pub input: PathBuf,
    /// Instance id → type and zone (the events name neither): lines of
    /// `instance-id type zone`, e.g. the output of `aws ec2
    /// describe-instances --query 'Reservations[].Instances[].[InstanceId,InstanceType,Placement.AvailabilityZone]'
    /// --output text`.
    #[arg(long)]
    pub instances: PathBuf,
    /// Events file to write.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Skip (and count) malformed records, and events of instances the map
    /// lacks, instead of failing on the first.
    #[arg(long)]
    pub skip_bad: bool,
}

#[derive(Debug, Args)]
pub struct SwfArgs {
    /// SWF log to read.
    pub input: PathBuf,
    /// Events file to write (Avro container of recorded topic messages).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Deadline = submit + SLACK × run time + GRACE.
    #[arg(long, default_value_t = 3.0, value_parser = super::values::slack)]
    pub slack: f64,
    /// Seconds added to every deadline (covers instance boot).
    #[arg(long, default_value_t = 900, value_parser = super::values::secs)]
    pub grace_s: i64,
    /// SWF field that names the compute environment.
    #[arg(long, value_enum, default_value_t = SwfKey::Partition)]
    pub env_from: SwfKey,
    /// SWF field that names the job type.
    #[arg(long, value_enum, default_value_t = SwfKey::Queue)]
    pub job_type_from: SwfKey,
    /// Skip (and count) malformed lines instead of failing on the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Import at most this many jobs.
    #[arg(long)]
    pub max_jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PricesArgs {
    /// Price history to read.
    pub input: PathBuf,
    /// Events file to write.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Product description to keep.
    #[arg(long, default_value = "Linux/UNIX")]
    pub product: String,
    /// Skip (and count) malformed lines instead of failing on the first.
    #[arg(long)]
    pub skip_bad: bool,
}

fn write_events(
    path: &std::path::Path,
    events: impl Iterator<Item = Event>,
) -> anyhow::Result<u64> {
    let mut w = EventsWriter::create(path)?;
    let mut n = 0;
    for ev in events {
        w.append(&ev)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        n += 1;
    }
    w.finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(n)
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    match args.what {
        ImportCmd::Swf(a) => {
            let opts = SwfOptions {
                slack: a.slack,
                grace_s: a.grace_s,
                env_from: a.env_from,
                job_type_from: a.job_type_from,
                skip_bad: a.skip_bad,
                max_jobs: a.max_jobs,
                ..Default::default()
            };
            let imp = read_swf(&a.input, &opts)?;
            let n = write_events(&a.out, imp.events.into_iter())?;
            eprintln!("wrote {n} events to {}", a.out.display());
            println!("{}", serde_json::to_string_pretty(&imp.report)?);
        }
        ImportCmd::Prices(a) => {
            let opts = PriceOptions {
                product: a.product,
                skip_bad: a.skip_bad,
                ..Default::default()
            };
            let imp = read_prices(&a.input, &opts)?;
            let n = write_events(&a.out, imp.ticks.into_iter().map(Event::PriceTick))?;
            eprintln!("wrote {n} price ticks to {}", a.out.display());
            println!("{}", serde_json::to_string_pretty(&imp.report)?);
        }
        ImportCmd::Eventbridge(a) => {
            use prescale::import::eventbridge::{read_eventbridge, InstanceMap};
            let text = std::fs::read_to_string(&a.instances)
                .with_context(|| format!("reading {}", a.instances.display()))?;
            let map = InstanceMap::parse(&text, &a.instances.display().to_string())?;
            let imp = read_eventbridge(&a.input, &map, a.skip_bad)?;
            let n = write_events(&a.out, imp.signals.into_iter().map(Event::SpotSignal))?;
            eprintln!("wrote {n} spot signals to {}", a.out.display());
            println!("{}", serde_json::to_string_pretty(&imp.report)?);
        }
    }
    Ok(())
}
