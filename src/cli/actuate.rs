//! `prescale actuate <kind>`: apply the command topics to real compute
//! environments. Each kind builds its actuator from its own flags; the
//! consuming, de-duplication, retries, dead letters and reconciliation are
//! `prescale::io::actuate::run`, shared by all.

use super::run::KafkaArgs;
use anyhow::Context;
use prescale::io::actuate::file::{FileActuator, FileConfig};
use prescale::io::actuate::{self, ActuateConfig, Actuator};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(
    long_about = "Consume the scaling- and preemption-command topics in a consumer group of \
the actuator's own and apply each command to the compute environment it names. Every applied command \
id is recorded in a ledger file before its offset is committed, so a restarted actuator never applies \
a command twice nor an older command after a newer one. Commands that cannot be applied (unknown \
environment, invalid size, transient errors past --max-attempts) go to `<topic>.dlq` with the reason. \
Every --reconcile-interval-s the live state is compared with the last command and drift re-applied."
)]
pub struct ActuateArgs {
    #[command(subcommand)]
    pub kind: ActuateKind,
}

#[derive(Debug, clap::Subcommand)]
pub enum ActuateKind {
    // one variant per target; keep alphabetical to ease merges
    /// EC2 Auto Scaling groups: min / desired / max and the mixed instances policy (feature `aws`).
    #[cfg(feature = "aws")]
    Asg(AwsActuateArgs),
    /// AWS Batch: the spot and on-demand compute environments and job queue of each environment;
    /// preemption as TerminateJob (feature `aws`).
    #[cfg(feature = "aws")]
    Batch(AwsActuateArgs),
    /// Keep each environment's desired capacity (and jobs' preemption state) in a JSON file that
    /// other tooling reads.
    File(FileArgs),
    /// Power a Slurm partition's cloud nodes up and down (scontrol POWER_UP /
    /// POWER_DOWN_ASAP) and requeue / hold / release jobs (docs/slurm.md).
    Slurm(SlurmArgs),
}

#[derive(Debug, clap::Args)]
pub struct SlurmArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub slurm: super::actuate_slurm::SlurmActuateArgs,
}

/// Flags every actuator takes.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Ledger of applied commands (default: prescale-actuate-<kind>.ledger in the current directory).
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Seconds between comparisons of the live state with the last applied command.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub reconcile_interval_s: u64,
    /// Attempts per command for retryable errors (throttling, 5xx, timeouts) before it is
    /// dead-lettered; the backoff doubles from 200 ms up to 20 s.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Log every call that would be made and change nothing (no ledger is written).
    #[arg(long)]
    pub dry_run: bool,
    /// Exit once the command topics are read to the end and nothing arrived for this many
    /// seconds (replays, tests). Default: run until SIGINT/SIGTERM.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub exit_when_idle_s: Option<u64>,
}

impl CommonArgs {
    fn config(&self, kind: &str) -> anyhow::Result<ActuateConfig> {
        let mut cfg = ActuateConfig::new(self.kafka.load()?, kind);
        if let Some(g) = &self.kafka.group {
            cfg.group = g.clone();
        }
        if let Some(l) = &self.ledger {
            cfg.ledger = Some(l.clone());
        }
        cfg.reconcile_interval = Duration::from_secs(self.reconcile_interval_s);
        cfg.max_attempts = self.max_attempts;
        cfg.dry_run = self.dry_run;
        cfg.exit_when_idle = self.exit_when_idle_s.map(Duration::from_secs);
        Ok(cfg)
    }
}

/// Flags of `prescale actuate asg` and `prescale actuate batch`.
#[cfg(feature = "aws")]
#[derive(Debug, clap::Args)]
pub struct AwsActuateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub aws: super::actuate_aws::AwsArgs,
}

#[derive(Debug, clap::Args)]
pub struct FileArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The JSON state file to keep (written atomically).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// Environments to manage (comma-separated); default: every environment.
    #[arg(long, value_delimiter = ',')]
    pub environments: Vec<String>,
}

pub fn run(args: ActuateArgs) -> anyhow::Result<()> {
    let _telemetry = prescale::telemetry::init(&prescale::telemetry::TelemetryConfig::from_env()?)?;
    match args.kind {
        #[cfg(feature = "aws")]
        ActuateKind::Asg(a) => {
            let cfg = a.common.config("asg")?;
            let actuator = block_on(a.aws.asg())?;
            drive(cfg, actuator)
        }
        #[cfg(feature = "aws")]
        ActuateKind::Batch(a) => {
            let cfg = a.common.config("batch")?;
            let actuator = block_on(a.aws.batch())?;
            drive(cfg, actuator)
        }
        ActuateKind::File(a) => {
            let cfg = a.common.config("file")?;
            let actuator = FileActuator::new(FileConfig {
                path: a.state,
                environments: a.environments.into_iter().collect(),
            });
            drive(cfg, actuator)
        }
        ActuateKind::Slurm(a) => drive(a.common.config("slurm")?, a.slurm.actuator()),
    }
}

/// Build an actuator that needs async set-up (loading AWS credentials) before `drive` starts
/// its own runtime.
#[cfg(feature = "aws")]
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// Run an actuator until SIGINT/SIGTERM (or idle), then print its summary.
pub fn drive<A: Actuator>(cfg: ActuateConfig, actuator: A) -> anyhow::Result<()> {
    let kind = actuator.kind();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        actuate::run(cfg, actuator, rx).await
    });
    let summary = summary.with_context(|| format!("prescale actuate {kind}"))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
