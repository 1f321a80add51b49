//! `prescale ingest slurm`: a Slurm cluster's job life as prescale's input
//! events. It polls `squeue --json` and tails the
//! spool that Slurm's `jobcomp/script` hook appends to (docs/slurm.md).

use super::ingest::parse_pair;
use super::run::KafkaArgs;
use anyhow::Context;
use prescale::io::kafka::client::ensure_topics;
use prescale::io::slurm::ingest::{
    append_jobcomp_from_env, IngestConfig, Ingester, Sink, TimeScale,
};
use prescale::io::slurm::jobs::Naming;
use prescale::io::slurm::sink::{FileSink, KafkaSink};
use prescale::io::slurm::SlurmCommands;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct SlurmIngestArgs {
    /// The jobcomp spool: JSON lines appended by Slurm's JobCompLoc hook
    /// (scripts/slurm.sh writes one; or point JobCompLoc at a script that
    /// runs `prescale ingest slurm --jobcomp --spool FILE`).
    #[arg(long, env = "PRESCALE_SLURM_SPOOL")]
    pub spool: PathBuf,
    /// Hook mode: append the finished job described by Slurm's jobcomp
    /// environment (JOBID, JOBSTATE, PARTITION, PROCS, SUBMIT, START, END…)
    /// to the spool and exit.
    #[arg(long)]
    pub jobcomp: bool,
    /// The ingester's state: published job ids and spool offset (restarts
    /// publish nothing twice and miss nothing).
    #[arg(long, default_value = "prescale-ingest-slurm.state.json")]
    pub state: PathBuf,
    /// Partition → compute environment (repeat); unmapped partitions keep
    /// their name.
    #[arg(long = "environment", value_name = "PARTITION=ENV", value_parser = parse_pair)]
    pub environments: Vec<(String, String)>,
    /// Ingest only these partitions (repeat; default all).
    #[arg(long = "partition", value_name = "PARTITION")]
    pub partitions: Vec<String>,
    /// Prepended to Slurm job ids (clusters sharing topics).
    #[arg(long, default_value = "")]
    pub job_id_prefix: String,
    /// How often squeue is polled and the spool read.
    #[arg(long, default_value_t = 2000)]
    pub poll_interval_ms: u64,
    /// How long completed job ids are remembered (more than Slurm's
    /// MinJobAge).
    #[arg(long, default_value_t = 86_400)]
    pub remember_s: u64,
    /// Write an events file (written when the ingester stops) instead of
    /// publishing to the input topics.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Trace replays on a time-compressed cluster: stretch every time and
    /// duration Slurm reports by this factor around --time-origin-ms, so
    /// prescale sees the trace's own time scale (scripts/slurm-experiment.py).
    #[arg(long, default_value_t = 1.0, requires = "time_origin_ms")]
    pub time_scale: f64,
    /// Origin of --time-scale (Unix ms; the replay's start).
    #[arg(long)]
    pub time_origin_ms: Option<i64>,
    /// SLURM_CONF for squeue (default: inherited).
    #[arg(long)]
    pub slurm_conf: Option<PathBuf>,
    /// Poll once and exit.
    #[arg(long)]
    pub once: bool,
    /// Create the input topics first (brokers such as tansu do not auto-create).
    #[arg(long)]
    pub create_topics: bool,
    /// Directory of squeue / scontrol (default: PATH). Slurm's commands
    /// read SLURM_CONF.
    #[arg(long)]
    pub slurm_bin_dir: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

pub fn run(a: SlurmIngestArgs) -> anyhow::Result<()> {
    if a.jobcomp {
        return append_jobcomp_from_env(&a.spool)
            .with_context(|| format!("appending to {}", a.spool.display()));
    }
    let _telemetry = prescale::telemetry::init(&prescale::telemetry::TelemetryConfig::from_env()?)?;
    let cfg = IngestConfig {
        naming: Naming {
            environments: a.environments.iter().cloned().collect::<BTreeMap<_, _>>(),
            partitions: a.partitions.clone(),
            job_id_prefix: a.job_id_prefix.clone(),
        },
        spool: a.spool.clone(),
        state_file: a.state.clone(),
        poll_interval: Duration::from_millis(a.poll_interval_ms.max(50)),
        commands: SlurmCommands {
            bin_dir: a.slurm_bin_dir.clone(),
            slurm_conf: a.slurm_conf.clone(),
            ..Default::default()
        },
        remember: Duration::from_secs(a.remember_s),
        time_scale: TimeScale {
            factor: a.time_scale,
            origin_ms: a.time_origin_ms.unwrap_or(0),
        },
    };
    if !(a.time_scale.is_finite() && a.time_scale > 0.0) {
        anyhow::bail!(
            "--time-scale must be a positive number, got {}",
            a.time_scale
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match &a.output {
        Some(path) => {
            let mut sink = FileSink::create(path)?;
            let summary = rt.block_on(drive(cfg, &mut sink, a.once))?;
            sink.finish()?;
            eprintln!("{}", serde_json::to_string(&summary)?);
        }
        None => {
            let kcfg = a.kafka.load()?;
            if a.create_topics {
                let names: Vec<(String, i32)> = kcfg
                    .topics
                    .all()
                    .into_iter()
                    .map(|t| (t, kcfg.partitions))
                    .collect();
                rt.block_on(ensure_topics(&kcfg, &names))?;
            }
            let mut sink = KafkaSink::new(&kcfg)?;
            let summary = rt.block_on(drive(cfg, &mut sink, a.once))?;
            eprintln!("{}", serde_json::to_string(&summary)?);
        }
    }
    Ok(())
}

/// Run the ingester until SIGINT / SIGTERM (or one poll with `once`).
async fn drive<S: Sink>(
    cfg: IngestConfig,
    sink: &mut S,
    once: bool,
) -> anyhow::Result<prescale::io::slurm::ingest::IngestSummary> {
    let mut ing = Ingester::open(cfg, sink)?;
    if once {
        ing.tick().await?;
        return Ok(ing.summary);
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    Ok(ing.run(rx).await?)
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
