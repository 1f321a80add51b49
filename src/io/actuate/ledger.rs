//! The actuator's memory of what it applied, per environment.
//!
//! Kafka delivers commands at least once and a restarted actuator resumes
//! from its last committed offset, so the same command can arrive twice, and
//! a command re-issued by a restarted prescale instance can arrive after a
//! newer one. The ledger answers "apply, duplicate or stale?" for each
//! command and is written (atomically, checksummed) after every applied
//! command and before its offset is committed: whatever the moment of a
//! crash, a command is never applied twice and never after a newer one.

use crate::events::{Millis, PreemptionCommand, ScalingCommand};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How many preemption command ids an environment remembers. Preemptions
/// are per job and may share a tick, so their order is checked by issue
/// time and their duplicates by id within this window.
const RECENT_PREEMPTIONS: usize = 4096;

/// What to do with an incoming command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Already applied (same command id).
    Duplicate,
    /// Older than what was applied last for its environment.
    Stale {
        last_issued_at: Millis,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("actuator ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "actuator ledger {path}: {reason}; refusing to start (move it away to start \
         from the committed Kafka offsets, accepting that the last command may be re-applied)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct EnvEntry {
    scaling: Option<ScalingCommand>,
    preemption_issued_at: Option<Millis>,
    preemptions: VecDeque<String>,
}

/// Applied commands per environment, persisted in one file (`None`: memory
/// only, as in a dry run).
#[derive(Debug, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    environments: BTreeMap<String, EnvEntry>,
}

impl Ledger {
    /// A ledger that is never written (dry runs, tests).
    pub fn in_memory() -> Self {
        Ledger::default()
    }

    /// Open the ledger at `path`; a missing file is an empty ledger. The file
    /// is the body's SHA-256 in hex on the first line, then the JSON body.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Ledger {
                    path: Some(path.to_owned()),
                    environments: BTreeMap::new(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        let corrupt = |reason: String| LedgerError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let (sum, body) = text
            .split_once('\n')
            .ok_or_else(|| corrupt("no checksum line".into()))?;
        if hex::encode(Sha256::digest(body.as_bytes())) != sum.trim() {
            return Err(corrupt("checksum does not match its body".into()));
        }
        let environments = serde_json::from_str(body).map_err(|e| corrupt(format!("body: {e}")))?;
        Ok(Ledger {
            path: Some(path.to_owned()),
            environments,
        })
    }

    /// Write the ledger atomically (temporary file, fsync, rename).
    pub fn save(&self) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_string(&self.environments).expect("ledger serializes");
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{sum}").map_err(io)?;
        f.write_all(body.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn judge_scaling(&self, cmd: &ScalingCommand) -> Verdict {
        let Some(last) = self
            .environments
            .get(&cmd.compute_environment)
            .and_then(|e| e.scaling.as_ref())
        else {
            return Verdict::Apply;
        };
        if last.command_id == cmd.command_id {
            Verdict::Duplicate
        } else if cmd.issued_at <= last.issued_at {
            // One command per environment and tick: another command of the
            // same tick is a re-decision that lost the race, not news.
            Verdict::Stale {
                last_issued_at: last.issued_at,
            }
        } else {
            Verdict::Apply
        }
    }

    pub fn judge_preemption(&self, cmd: &PreemptionCommand) -> Verdict {
        let Some(e) = self.environments.get(&cmd.compute_environment) else {
            return Verdict::Apply;
        };
        if e.preemptions.iter().any(|id| *id == cmd.command_id) {
            return Verdict::Duplicate;
        }
        match e.preemption_issued_at {
            Some(last) if cmd.issued_at < last => Verdict::Stale {
                last_issued_at: last,
            },
            _ => Verdict::Apply,
        }
    }

    pub fn record_scaling(&mut self, cmd: &ScalingCommand) {
        let e = self
            .environments
            .entry(cmd.compute_environment.clone())
            .or_default();
        e.scaling = Some(cmd.clone());
    }

    pub fn record_preemption(&mut self, cmd: &PreemptionCommand) {
        let e = self
            .environments
            .entry(cmd.compute_environment.clone())
            .or_default();
        e.preemption_issued_at = Some(
            e.preemption_issued_at
                .unwrap_or(cmd.issued_at)
                .max(cmd.issued_at),
        );
        if e.preemptions.len() == RECENT_PREEMPTIONS {
            e.preemptions.pop_front();
        }
        e.preemptions.push_back(cmd.command_id.clone());
    }

    /// The last applied scaling command of every environment (what the
    /// reconcile loop holds the targets to).
    pub fn last_scaling(&self) -> Vec<ScalingCommand> {
        self.environments
            .values()
            .filter_map(|e| e.scaling.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::PreemptionAction;

    fn scaling(id: &str, at: Millis) -> ScalingCommand {
        ScalingCommand {
            command_id: id.into(),
            issued_at: at,
            compute_environment: "env-a".into(),
            min_vcpus: 0,
            desired_vcpus: 8,
            max_vcpus: 64,
            instance_mix: vec![],
            constraints: Default::default(),
            forecast: vec![],
            reason: "test".into(),
        }
    }

    fn preemption(id: &str, at: Millis) -> PreemptionCommand {
        PreemptionCommand {
            command_id: id.into(),
            issued_at: at,
            job_id: "j1".into(),
            compute_environment: "env-a".into(),
            action: PreemptionAction::Queue,
            reason: "budget".into(),
        }
    }

    #[test]
    fn duplicates_and_older_commands_are_not_applied() {
        let mut l = Ledger::in_memory();
        assert_eq!(l.judge_scaling(&scaling("a", 10)), Verdict::Apply);
        l.record_scaling(&scaling("a", 10));
        assert_eq!(l.judge_scaling(&scaling("a", 10)), Verdict::Duplicate);
        assert_eq!(
            l.judge_scaling(&scaling("z", 5)),
            Verdict::Stale { last_issued_at: 10 }
        );
        assert_eq!(l.judge_scaling(&scaling("b", 20)), Verdict::Apply);

        l.record_preemption(&preemption("p1", 10));
        assert_eq!(
            l.judge_preemption(&preemption("p1", 10)),
            Verdict::Duplicate
        );
        assert_eq!(l.judge_preemption(&preemption("p2", 10)), Verdict::Apply);
        assert_eq!(
            l.judge_preemption(&preemption("p0", 9)),
            Verdict::Stale { last_issued_at: 10 }
        );
    }

    #[test]
    fn survives_a_restart_and_refuses_an_edited_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut l = Ledger::open(&path).unwrap();
        l.record_scaling(&scaling("a", 10));
        l.save().unwrap();
        let again = Ledger::open(&path).unwrap();
        assert_eq!(again.judge_scaling(&scaling("a", 10)), Verdict::Duplicate);
        assert_eq!(again.last_scaling(), vec![scaling("a", 10)]);

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"issued_at\":10", "\"issued_at\":1")).unwrap();
        let e = Ledger::open(&path).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }
}
