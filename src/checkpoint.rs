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
//! Every snapshot carries a SHA-256 of its whole body (as the model
//! checkpoints do, see `forecast::lstm`), so a file that is still valid
//! JSON but not what was written (an offset edited, a bit flipped, a block
//! of another file) is refused rather than restored: restoring it would
//! apply events twice or skip them, silently. The file is the body with the
//! digest as its first member, `{"sha256":"<hex>",<rest of the body>`, so it
//! stays one JSON document; the digest is over the body without that member
//! (`{<rest of the body>`). The snapshot written before the current one is
//! kept beside it (`.json.prev`): a refused snapshot falls back to it, and
//! when that is refused too the instance replays its partitions from the
//! beginning (see [`read_with_fallback`]).
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
/// (2: checksummed; version 1 files carry no digest and are replayed over.)
pub const FORMAT_VERSION: u32 = 2;

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
    /// The body is not what was written (or was written without a digest).
    #[error("checkpoint {path}: refused: {reason}")]
    Checksum { path: String, reason: String },
}

/// The digest member a snapshot file starts with (see the module doc).
const DIGEST_START: &[u8] = br#"{"sha256":""#;
/// Hex digits of a SHA-256.
const DIGEST_HEX: usize = 64;

/// SHA-256 of the body `{` + `rest` (the file without its digest member).
fn body_digest(rest: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"{");
    h.update(rest);
    hex::encode(h.finalize())
}

/// The file for a JSON object `body`: its digest put in as the first member.
fn with_digest(body: &[u8]) -> Vec<u8> {
    // `{}` has no member to put the digest before.
    let rest = body
        .get(1..)
        .filter(|r| r.len() > 1)
        .unwrap_or(&b"\"_\":0}"[..]);
    let digest = body_digest(rest);
    let mut out = Vec::with_capacity(body.len() + DIGEST_START.len() + DIGEST_HEX + 2);
    out.extend_from_slice(DIGEST_START);
    out.extend_from_slice(digest.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(rest);
    out
}

/// Check a file's digest against its body.
fn verify(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let refused = |reason: String| CheckpointError::Checksum {
        path: path.display().to_string(),
        reason,
    };
    let head = DIGEST_START.len() + DIGEST_HEX + 2;
    let Some(digest) = bytes
        .strip_prefix(DIGEST_START)
        .and_then(|b| b.get(..DIGEST_HEX))
        .filter(|_| bytes.get(head - 2..head) == Some(&b"\","[..]))
    else {
        return Err(refused("no sha256 digest at its start".into()));
    };
    let want = std::str::from_utf8(digest).unwrap_or_default();
    let got = body_digest(&bytes[head..]);
    if got != want {
        return Err(refused(format!(
            "sha256 of the body is {got}, the file says {want} (edited or corrupt)"
        )));
    }
    Ok(())
}

/// Where the snapshot written before the one at `path` is kept.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".prev");
    PathBuf::from(p)
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
    write_bytes(path, &with_digest(&bytes))
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
    write_bytes(path, &with_digest(&bytes))
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
    // Keep the one before: a snapshot refused at restore falls back to it.
    // A kill between the two renames leaves only it, which is read then.
    let prev = previous_path(path);
    match std::fs::rename(path, &prev) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&prev)(e)),
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

/// Read the snapshot at `path`, if there is one of the current format whose
/// digest matches its body (an error when it does not).
pub fn read(path: &Path) -> Result<Option<Snapshot>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    // An older format is not an error: it is replayed over.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    if serde_json::from_slice::<Version>(&bytes).is_ok_and(|v| v.version != FORMAT_VERSION) {
        return Ok(None);
    }
    verify(path, &bytes)?;
    let snap: Snapshot =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json {
            path: path.display().to_string(),
            source,
        })?;
    Ok((snap.version == FORMAT_VERSION).then_some(snap))
}

/// What [`read_with_fallback`] found.
#[derive(Debug, Default)]
pub struct Restored {
    /// The newest snapshot that passed its checks (`None`: replay).
    pub snapshot: Option<Snapshot>,
    /// Whether it is the previous one (the newest was refused).
    pub previous: bool,
    /// The files refused on the way, and why.
    pub refused: Vec<CheckpointError>,
}

/// The snapshot at `path`, or when it is refused (digest, JSON) or absent
/// the one written before it ([`previous_path`]), or none.
pub fn read_with_fallback(path: &Path) -> Restored {
    let mut r = Restored::default();
    for (previous, p) in [(false, path.to_path_buf()), (true, previous_path(path))] {
        match read(&p) {
            Ok(Some(s)) => {
                r.snapshot = Some(s);
                r.previous = previous;
                return r;
            }
            Ok(None) => {}
            Err(e) => r.refused.push(e),
        }
    }
    r
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

    fn snapshot(offset: i64) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            group: "g".into(),
            assignment: vec![("t".to_string(), 0)],
            offsets: [("t".to_string(), [(0, offset)].into())].into(),
            engine: serde_json::json!({"events": offset}),
            counters: [("events".to_string(), 3u64)].into(),
            written_at_ms: 9,
        }
    }

    /// One offset moved back, the file still valid JSON: refused, and the
    /// snapshot before it is restored instead.
    #[test]
    fn an_edited_snapshot_is_refused_and_the_previous_one_restored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snapshot-x.json");
        write(&p, &snapshot(40)).unwrap();
        write(&p, &snapshot(63)).unwrap();
        assert_eq!(read(&previous_path(&p)).unwrap().unwrap(), snapshot(40));
        let r = read_with_fallback(&p);
        assert_eq!(r.snapshot, Some(snapshot(63)));
        assert!(!r.previous && r.refused.is_empty());

        let text = std::fs::read_to_string(&p).unwrap();
        let edited = text.replacen(
            "\"offsets\":{\"t\":{\"0\":63}}",
            "\"offsets\":{\"t\":{\"0\":60}}",
            1,
        );
        assert_ne!(edited, text, "the edit applies");
        assert!(serde_json::from_str::<serde_json::Value>(&edited).is_ok());
        std::fs::write(&p, edited).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("snapshot-x.json") && e.contains("sha256"), "{e}");
        let r = read_with_fallback(&p);
        assert_eq!(r.snapshot, Some(snapshot(40)));
        assert!(r.previous);
        assert_eq!(r.refused.len(), 1);

        // Both refused: nothing to restore (the caller replays).
        std::fs::write(previous_path(&p), b"{\"sha256\":\"00\"}").unwrap();
        let r = read_with_fallback(&p);
        assert!(r.snapshot.is_none());
        assert_eq!(r.refused.len(), 2);
    }

    /// A snapshot without a digest (written by hand, or cut short) is
    /// refused; one of the previous format is replayed over.
    #[test]
    fn a_snapshot_without_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(&p, serde_json::to_vec(&snapshot(5)).unwrap()).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("no sha256"));
        let mut old = snapshot(5);
        old.version = 1;
        std::fs::write(&p, serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(read(&p).unwrap().is_none());
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
