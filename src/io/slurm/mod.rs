//! The Slurm adapter: a Slurm cluster's job life in, capacity changes out.
//!
//! - [`jobs`]: `squeue --json` jobs and `jobcomp/script` records → job
//!   events, with the `--comment` conventions (pure).
//! - [`ingest`]: `prescale ingest slurm`, polling squeue and tailing the
//!   jobcomp spool, idempotent across restarts.
//! - [`nodes`]: `sinfo --json` nodes and the power plan for one scaling
//!   command (pure).
//! - [`actuate`]: `prescale actuate slurm`, the plan applied with
//!   `scontrol` (power up / down cloud nodes; requeue / hold / release jobs).
//!
//! Slurm is reached only through its own commands (`squeue`, `sinfo`,
//! `scontrol`), which read `SLURM_CONF` and talk to slurmctld with the
//! cluster's munge credentials: slurmrestd cannot change node power states
//! in 22.05 and refuses to run as root.

pub mod actuate;
pub mod ingest;
pub mod jobs;
pub mod nodes;
pub mod sink;

use std::path::PathBuf;
use std::time::Duration;

/// An error of the Slurm adapter, saying whether trying again may help
/// (slurmctld not answering, a timeout) or not (a bad record, an unknown
/// partition or job).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SlurmError {
    pub transient: bool,
    pub message: String,
}

impl SlurmError {
    pub fn transient(message: impl Into<String>) -> Self {
        SlurmError {
            transient: true,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        SlurmError {
            transient: false,
            message: message.into(),
        }
    }
}

/// How Slurm's commands are run: from `bin_dir` (default: `PATH`), each
/// with a timeout, so a hung slurmctld turns into a transient error.
#[derive(Debug, Clone)]
pub struct SlurmCommands {
    pub bin_dir: Option<PathBuf>,
    /// Given to the commands as SLURM_CONF (default: inherited).
    pub slurm_conf: Option<PathBuf>,
    pub timeout: Duration,
}

impl Default for SlurmCommands {
    fn default() -> Self {
        SlurmCommands {
            bin_dir: None,
            slurm_conf: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Messages of Slurm commands that mean "try again later".
fn looks_transient(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "unable to contact slurm controller",
        "timed out",
        "connection refused",
        "try again",
        "resource temporarily unavailable",
        "slurm backup controller in standby",
        "zero bytes were transmitted",
    ]
    .iter()
    .any(|m| s.contains(m))
}

impl SlurmCommands {
    /// Run `program args…`; Ok(stdout) on success, else an error carrying
    /// the command line and Slurm's message.
    pub async fn run(&self, program: &str, args: &[&str]) -> Result<String, SlurmError> {
        let exe = match &self.bin_dir {
            Some(d) => d.join(program),
            None => PathBuf::from(program),
        };
        let line = format!("{program} {}", args.join(" "));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(args).kill_on_drop(true);
        if let Some(c) = &self.slurm_conf {
            cmd.env("SLURM_CONF", c);
        }
        let out = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => {
                return Err(SlurmError::transient(format!(
                    "`{line}` did not finish within {:?}",
                    self.timeout
                )))
            }
            Ok(Err(e)) => {
                return Err(SlurmError::permanent(format!(
                    "`{line}`: cannot run {}: {e}",
                    exe.display()
                )))
            }
            Ok(Ok(o)) => o,
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let msg = format!("`{line}` failed ({}): {err}", out.status);
        Err(if looks_transient(&err) {
            SlurmError::transient(msg)
        } else {
            SlurmError::permanent(msg)
        })
    }
}
