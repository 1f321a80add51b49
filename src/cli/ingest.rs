//! `prescale ingest <scheduler>`: turn a live scheduler's job life into
//! prescale's input events (the Kafka input topics or an events file). One
//! file per scheduler; this one only dispatches.

#[cfg(feature = "aws")]
use super::ingest_batch;
use super::ingest_slurm;

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    #[command(subcommand)]
    pub source: IngestSource,
}

#[derive(Debug, clap::Subcommand)]
pub enum IngestSource {
    /// AWS Batch job events (EventBridge "Batch Job State Change", SQS, or polling ListJobs;
    /// feature `aws`).
    #[cfg(feature = "aws")]
    Batch(ingest_batch::BatchArgs),
    /// A Slurm cluster (22.05+): submissions from `squeue --json`,
    /// completions from the jobcomp/script spool.
    Slurm(ingest_slurm::SlurmIngestArgs),
}

/// `KEY=VALUE` for clap.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    match args.source {
        #[cfg(feature = "aws")]
        IngestSource::Batch(a) => ingest_batch::run(a),
        IngestSource::Slurm(a) => ingest_slurm::run(a),
    }
}
