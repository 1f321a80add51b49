//! Snapshots of the engine's state together with the input offsets it
//! reflects.
//!
//! The test broker has no transactions, so recovery cannot rely on Kafka's
//! exactly-once. Instead the service (1) flushes the commands it published,
//! (2) writes one snapshot file holding the engine state *and* the offset
//! after the last event that state has seen, atomically (temp file, fsync,
//! rename), and only then (3) commits the offsets to the consumer group. On
//! restart it restores the snapshot and seeks to its offsets, so no event is
//! lost and none is applied twice; commands decided after the snapshot are
//! decided again with the same deterministic ids, so they are exact
//! duplicates an actuator drops.
//!
//! A snapshot belongs to one *assignment* (the set of input partitions an
//! instance owns): the engine state of an instance owning partitions {0, 1}
//! is not the state of one owning {1}. The file name carries a digest of the
//! assignment; an instance assigned a set it has no snapshot for rebuilds its
//! state by replaying those partitions from the beginning (the input topics
//! are the changelog).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bumped when the file layout changes; older snapshots are ignored (the
/// instance then rebuilds from the input topics).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// The consumer group and assignment this snapshot belongs to.
    pub group: String,
    pub assignment: Vec<(String, i32)>,
    /// Per topic, per partition: the offset of the next message to apply.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The engine's serialised state.
    pub engine: serde_json::Value,
    /// Counters carried across restarts (events applied, DLQ'd, commands).
    pub counters: BTreeMap<String, u64>,
    /// Wall-clock time the snapshot was written (ms), for operators.
    pub written_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// A stable digest naming an assignment (sorted topic-partitions).
pub fn assignment_id(group: &str, assignment: &[(String, i32)]) -> String {
    let mut a = assignment.to_vec();
    a.sort();
    let mut parts: Vec<String> = vec![group.to_string()];
    parts.extend(a.iter().map(|(t, p)| format!("{t}/{p}")));
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    crate::events::command_id(&refs)
}

/// Where snapshots of one assignment live.
pub fn path_for(dir: &Path, group: &str, assignment: &[(String, i32)]) -> PathBuf {
    dir.join(format!(
        "snapshot-{}.json",
        assignment_id(group, assignment)
    ))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write a snapshot atomically: a reader (or a restart after `kill -9` at
/// any instant) sees either the previous complete snapshot or this one.
pub fn write(path: &Path, snap: &Snapshot) -> Result<(), CheckpointError> {
    let bytes = serde_json::to_vec(snap).map_err(|source| CheckpointError::Json {
        path: path.display().to_string(),
        source,
    })?;
    write_bytes(path, &bytes)
}

/// Everything of a [`Snapshot`] but the engine state.
#[derive(Serialize)]
struct Header<'a> {
    version: u32,
    group: &'a str,
    assignment: &'a [(String, i32)],
    offsets: &'a BTreeMap<String, BTreeMap<i32, i64>>,
    counters: &'a BTreeMap<String, u64>,
    written_at_ms: i64,
}

/// [`write()`] with the engine state already serialised as JSON (`engine`
/// must be one JSON value, e.g. from `serde_json::to_vec`): the same file,
/// without building a `serde_json::Value` tree of a large state first, which
/// costs more than the serialisation itself. `snap.engine` is ignored.
pub fn write_with_engine(
    path: &Path,
    snap: &Snapshot,
    engine: &[u8],
) -> Result<(), CheckpointError> {
    let header = Header {
        version: snap.version,
        group: &snap.group,
        assignment: &snap.assignment,
        offsets: &snap.offsets,
        counters: &snap.counters,
        written_at_ms: snap.written_at_ms,
    };
    let mut bytes = serde_json::to_vec(&header).map_err(|source| CheckpointError::Json {
        path: path.display().to_string(),
        source,
    })?;
    // `{...}` → `{...,"engine":<engine>}`
    bytes.pop();
    bytes.reserve(engine.len() + 12);
    bytes.extend_from_slice(b",\"engine\":");
    bytes.extend_from_slice(engine);
    bytes.push(b'}');
    write_bytes(path, &bytes)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Read the snapshot at `path`, if there is one of the current format.
pub fn read(path: &Path) -> Result<Option<Snapshot>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let snap: Snapshot =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json {
            path: path.display().to_string(),
            source,
        })?;
    Ok((snap.version == FORMAT_VERSION).then_some(snap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec![("t".to_string(), 1), ("t".to_string(), 0)];
        let p = path_for(dir.path(), "g", &a);
        assert!(read(&p).unwrap().is_none());
        let mut s = Snapshot {
            version: FORMAT_VERSION,
            group: "g".into(),
            assignment: a.clone(),
            offsets: [("t".to_string(), [(0, 5i64), (1, 9)].into())].into(),
            engine: serde_json::json!({"x": 1.5}),
            counters: [("events".to_string(), 14u64)].into(),
            written_at_ms: 1,
        };
        write(&p, &s).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), s);
        s.offsets.get_mut("t").unwrap().insert(0, 6);
        write(&p, &s).unwrap();
        assert_eq!(read(&p).unwrap().unwrap().offsets["t"][&0], 6);
        assert!(!p.with_extension("json.tmp").exists());
        // Same set in another order names the same file; another set does not.
        let mut b = a.clone();
        b.reverse();
        assert_eq!(path_for(dir.path(), "g", &b), p);
        assert_ne!(path_for(dir.path(), "g", &a[..1]), p);
        assert_ne!(path_for(dir.path(), "h", &a), p);
    }

    #[test]
    fn pre_serialised_engine_state_reads_back_as_the_same_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        let s = Snapshot {
            version: FORMAT_VERSION,
            group: "g".into(),
            assignment: vec![("t".to_string(), 0)],
            offsets: [("t".to_string(), [(0, 5i64)].into())].into(),
            engine: serde_json::json!({"x": [1.5, 0.1, null], "y": {"k": "v"}}),
            counters: [("events".to_string(), 3u64)].into(),
            written_at_ms: 9,
        };
        let engine = serde_json::to_vec(&s.engine).unwrap();
        let blank = Snapshot {
            engine: serde_json::Value::Null,
            ..s.clone()
        };
        write_with_engine(&p, &blank, &engine).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), s);
    }

    #[test]
    fn corrupt_snapshot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snapshot-x.json");
        std::fs::write(&p, b"{not json").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("snapshot-x.json"), "{e}");
    }
}
