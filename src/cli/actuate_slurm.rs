//! `prescale actuate slurm`: the flags of the Slurm actuator and its
//! construction (the runtime around it is `cli::actuate`).

use super::ingest::parse_pair;
use prescale::io::slurm::actuate::{SlurmActuator, SlurmActuatorConfig};
use prescale::io::slurm::SlurmCommands;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct SlurmActuateArgs {
    /// Compute environment → Slurm partition whose power-saving nodes
    /// prescale manages (repeat). Nodes of other partitions are never
    /// touched; commands for other environments are dead-lettered. Set
    /// SuspendTime=INFINITE on these partitions (docs/slurm.md).
    #[arg(long = "environment", value_name = "ENV=PARTITION", value_parser = parse_pair, required = true)]
    pub environments: Vec<(String, String)>,
    /// Prefix the ingester put before Slurm job ids (`--job-id-prefix` of
    /// `prescale ingest slurm`), stripped from preemption commands' job ids.
    #[arg(long, default_value = "")]
    pub job_id_prefix: String,
    /// SLURM_CONF for sinfo / scontrol (default: inherited).
    #[arg(long)]
    pub slurm_conf: Option<PathBuf>,
    /// Directory of sinfo / scontrol (default: PATH).
    #[arg(long)]
    pub slurm_bin_dir: Option<PathBuf>,
    /// Timeout of one Slurm command (seconds; a timeout is retried).
    #[arg(long, default_value_t = 30)]
    pub slurm_timeout_s: u64,
    /// Power an idle node down only after it has been idle this long
    /// (seconds; 0: as soon as the forecast no longer needs it). Set it to
    /// the partition's usual SuspendTime so prescale only ever adds
    /// capacity ahead of demand and never takes down a node Slurm's own
    /// power saving would still keep.
    #[arg(long, default_value_t = 0)]
    pub idle_grace_s: u64,
}

impl SlurmActuateArgs {
    pub fn actuator(&self) -> SlurmActuator {
        SlurmActuator::new(SlurmActuatorConfig {
            partitions: self.environments.iter().cloned().collect(),
            job_id_prefix: self.job_id_prefix.clone(),
            commands: SlurmCommands {
                bin_dir: self.slurm_bin_dir.clone(),
                slurm_conf: self.slurm_conf.clone(),
                timeout: Duration::from_secs(self.slurm_timeout_s.max(1)),
            },
            idle_grace: Duration::from_secs(self.idle_grace_s),
        })
    }
}
