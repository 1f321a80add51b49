//! AWS EventBridge spot events into [`SpotSignal`]s: "EC2 Spot Instance
//! Interruption Warning" (the two-minute notice) and "EC2 Instance
//! Rebalance Recommendation", as EventBridge delivers them (the envelope's
//! `detail-type`, `time`, `region` and `detail.instance-id`).
//!
//! Neither event names the instance type or zone, which the learned risk
//! is kept by, so an instance map says them: one instance per line,
//! `instance-id type zone` separated by tabs, commas or spaces (`#`
//! comments), exactly what
//! `aws ec2 describe-instances --query
//! 'Reservations[].Instances[].[InstanceId,InstanceType,Placement.AvailabilityZone]'
//! --output text` prints. Input: a JSON array of events or one event per
//! line (an archive, a queue dump). Events of other detail types are
//! counted and left out; a record of ours that is malformed, or names an
//! instance the map lacks, is an error naming the file, the record and the
//! field (or, with `skip_bad`, skipped and counted).

use crate::events::{avro::validate, Event, SpotSignal, SpotSignalKind};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The `detail-type` of an interruption warning.
pub const INTERRUPTION_WARNING: &str = "EC2 Spot Instance Interruption Warning";
/// The `detail-type` of a rebalance recommendation.
pub const REBALANCE_RECOMMENDATION: &str = "EC2 Instance Rebalance Recommendation";

#[derive(Debug, thiserror::Error)]
pub enum EventBridgeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: record {record}: field `{field}`: {message}")]
    Record {
        file: String,
        record: usize,
        field: &'static str,
        message: String,
    },
    #[error("instance map {file}: line {line}: {message}")]
    Map {
        file: String,
        line: usize,
        message: String,
    },
}

/// Instance id → (type, zone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceMap {
    by_id: BTreeMap<String, (String, String)>,
}

impl InstanceMap {
    /// Parse `instance-id type zone` lines (see the module doc).
    pub fn parse(text: &str, file: &str) -> Result<Self, EventBridgeError> {
        let mut by_id: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| EventBridgeError::Map {
                file: file.to_string(),
                line: i + 1,
                message,
            };
            let parts: Vec<&str> = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .collect();
            let [id, ty, zone] = parts[..] else {
                return Err(err(format!(
                    "expected `instance-id type zone`, got {} fields",
                    parts.len()
                )));
            };
            if !id.starts_with("i-") {
                return Err(err(format!("`{id}` is not an instance id (i-...)")));
            }
            if let Some((t, z)) = by_id.get(id) {
                if (t.as_str(), z.as_str()) != (ty, zone) {
                    return Err(err(format!("{id} mapped twice ({t} {z}, {ty} {zone})")));
                }
            }
            by_id.insert(id.to_string(), (ty.to_string(), zone.to_string()));
        }
        Ok(InstanceMap { by_id })
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventBridgeReport {
    pub records: u64,
    pub interruption_warnings: u64,
    pub rebalance_recommendations: u64,
    /// Events of other detail types, left out.
    pub other_events: u64,
    pub skipped_bad_records: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventBridgeImport {
    /// In time order (stable for equal times).
    pub signals: Vec<SpotSignal>,
    pub report: EventBridgeReport,
}

/// Read EventBridge events from `path` (see the module doc).
pub fn read_eventbridge(
    path: &Path,
    map: &InstanceMap,
    skip_bad: bool,
) -> Result<EventBridgeImport, EventBridgeError> {
    let text = std::fs::read_to_string(path).map_err(|source| EventBridgeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_eventbridge(&text, &path.display().to_string(), map, skip_bad)
}

/// [`read_eventbridge`] of text already read; `file` names it in errors.
pub fn parse_eventbridge(
    text: &str,
    file: &str,
    map: &InstanceMap,
    skip_bad: bool,
) -> Result<EventBridgeImport, EventBridgeError> {
    let bad = |record: usize, field: &'static str, message: String| EventBridgeError::Record {
        file: file.to_string(),
        record,
        field,
        message,
    };
    let records: Vec<Result<Value, String>> = if text.trim_start().starts_with('[') {
        match serde_json::from_str::<Vec<Value>>(text) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => return Err(bad(1, "(json)", format!("not a JSON array of events: {e}"))),
        }
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON: {e}")))
            .collect()
    };
    let mut out = EventBridgeImport::default();
    for (i, rec) in records.into_iter().enumerate() {
        out.report.records += 1;
        let record = i + 1;
        let signal = rec
            .map_err(|m| bad(record, "(json)", m))
            .and_then(|v| signal_of(&v, map).map_err(|(f, m)| bad(record, f, m)));
        match signal {
            Ok(None) => out.report.other_events += 1,
            Ok(Some(s)) => {
                match s.kind {
                    SpotSignalKind::RebalanceRecommendation => {
                        out.report.rebalance_recommendations += 1
                    }
                    _ => out.report.interruption_warnings += 1,
                }
                out.signals.push(s);
            }
            Err(_) if skip_bad => out.report.skipped_bad_records += 1,
            Err(e) => return Err(e),
        }
    }
    out.signals.sort_by_key(|s| s.at);
    Ok(out)
}

/// The signal of one event; None for an event of another detail type.
fn signal_of(v: &Value, map: &InstanceMap) -> Result<Option<SpotSignal>, (&'static str, String)> {
    let text = |field: &'static str, v: Option<&Value>| match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(other) => Err((field, format!("expected a non-empty string, got {other}"))),
        None => Err((field, "missing".to_string())),
    };
    let kind = match text("detail-type", v.get("detail-type"))?.as_str() {
        INTERRUPTION_WARNING => SpotSignalKind::InterruptionWarning,
        REBALANCE_RECOMMENDATION => SpotSignalKind::RebalanceRecommendation,
        _ => return Ok(None),
    };
    if let Some(src) = v.get("source") {
        if src.as_str() != Some("aws.ec2") {
            return Err(("source", format!("expected \"aws.ec2\", got {src}")));
        }
    }
    let time = text("time", v.get("time"))?;
    let at = chrono::DateTime::parse_from_rfc3339(&time)
        .map_err(|e| ("time", format!("`{time}` is not an RFC 3339 time: {e}")))?
        .timestamp_millis();
    let region = text("region", v.get("region"))?;
    let id = text(
        "detail.instance-id",
        v.get("detail").and_then(|d| d.get("instance-id")),
    )?;
    let Some((ty, zone)) = map.by_id.get(&id) else {
        return Err((
            "detail.instance-id",
            format!("{id} is not in the instance map"),
        ));
    };
    if !zone.starts_with(region.as_str()) {
        return Err((
            "region",
            format!("{region}, but the map puts {id} in zone {zone}"),
        ));
    }
    let s = SpotSignal {
        at,
        kind,
        region: region.as_str().into(),
        zone: Some(zone.as_str().into()),
        instance_type: ty.as_str().into(),
        instance_id: Some(id.as_str().into()),
        count: 1,
    };
    let ev = Event::SpotSignal(s);
    validate(&ev).map_err(|e| ("(signal)", e.to_string()))?;
    let Event::SpotSignal(s) = ev else {
        unreachable!("built as a spot signal")
    };
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented shape of the two events (AWS EC2 User Guide, "Spot
    /// Instance interruption notices" and "EC2 instance rebalance
    /// recommendations"), with our own ids.
    const WARNING: &str = r#"{"version": "0", "id": "12345678-1234-1234-1234-123456789012",
 "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
 "account": "123456789012", "time": "2023-04-19T10:15:00Z", "region": "us-east-1",
 "resources": ["arn:aws:ec2:us-east-1b:instance/i-0b662ef9931388ba0"],
 "detail": {"instance-id": "i-0b662ef9931388ba0", "instance-action": "terminate"}}"#;
    const REBALANCE: &str = r#"{"version": "0", "id": "12345678-1234-1234-1234-123456789012",
 "detail-type": "EC2 Instance Rebalance Recommendation", "source": "aws.ec2",
 "account": "123456789012", "time": "2023-04-19T10:10:00Z", "region": "us-east-1",
 "resources": ["arn:aws:ec2:us-east-1b:instance/i-0c1a2b3c4d5e6f708"],
 "detail": {"instance-id": "i-0c1a2b3c4d5e6f708"}}"#;
    const OTHER: &str = r#"{"version": "0", "detail-type": "EC2 Instance State-change Notification",
 "source": "aws.ec2", "time": "2023-04-19T10:17:00Z", "region": "us-east-1",
 "detail": {"instance-id": "i-0b662ef9931388ba0", "state": "terminated"}}"#;
    const MAP: &str = "# from aws ec2 describe-instances\n\
        i-0b662ef9931388ba0\tc5.xlarge\tus-east-1b\n\
        i-0c1a2b3c4d5e6f708,m5.large,us-east-1c\n";

    fn map() -> InstanceMap {
        InstanceMap::parse(MAP, "map.tsv").unwrap()
    }

    fn one_line(s: &str) -> String {
        s.replace('\n', " ")
    }

    #[test]
    fn warnings_and_rebalances_become_signals_in_time_order() {
        // JSON lines, and the same as an array.
        let lines = [WARNING, REBALANCE, OTHER].map(one_line).join("\n");
        let array = format!("[{WARNING}, {REBALANCE}, {OTHER}]");
        for text in [lines, array] {
            let imp = parse_eventbridge(&text, "ev.json", &map(), false).unwrap();
            assert_eq!(
                imp.report,
                EventBridgeReport {
                    records: 3,
                    interruption_warnings: 1,
                    rebalance_recommendations: 1,
                    other_events: 1,
                    skipped_bad_records: 0,
                }
            );
            let [r, w] = &imp.signals[..] else {
                panic!("{:?}", imp.signals)
            };
            assert_eq!(r.kind, SpotSignalKind::RebalanceRecommendation);
            assert_eq!(
                (r.instance_type.as_str(), r.zone.as_deref()),
                ("m5.large", Some("us-east-1c"))
            );
            assert_eq!(w.kind, SpotSignalKind::InterruptionWarning);
            assert_eq!(w.at, 1_681_899_300_000);
            assert_eq!(w.region, "us-east-1");
            assert_eq!(w.zone.as_deref(), Some("us-east-1b"));
            assert_eq!(w.instance_type, "c5.xlarge");
            assert_eq!(w.instance_id.as_deref(), Some("i-0b662ef9931388ba0"));
            assert_eq!(w.count, 1);
        }
    }

    #[test]
    fn malformed_records_are_named_or_skipped() {
        let cases = [
            (
                WARNING.replace("i-0b662ef9931388ba0", "i-0000000000000dead"),
                "detail.instance-id",
            ),
            (WARNING.replace("2023-04-19T10:15:00Z", "yesterday"), "time"),
            (
                WARNING.replace(r#""region": "us-east-1""#, r#""region": 7"#),
                "region",
            ),
            (
                WARNING.replace(r#""region": "us-east-1""#, r#""region": "eu-west-1""#),
                "region",
            ),
            (WARNING.replace("aws.ec2", "my.app"), "source"),
            (
                WARNING.replace("\"instance-id\"", "\"id\""),
                "detail.instance-id",
            ),
            ("{not json".to_string(), "(json)"),
        ];
        for (text, field) in cases {
            let text = format!("{}\n{}", one_line(REBALANCE), one_line(&text));
            let e = parse_eventbridge(&text, "ev.json", &map(), false)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("ev.json: record 2: field `{field}`")),
                "{field}: {e}"
            );
            let imp = parse_eventbridge(&text, "ev.json", &map(), true).unwrap();
            assert_eq!((imp.signals.len(), imp.report.skipped_bad_records), (1, 1));
        }
    }

    #[test]
    fn a_bad_instance_map_is_named() {
        for (text, want) in [
            (
                "i-1 c5.large",
                "line 1: expected `instance-id type zone`, got 2 fields",
            ),
            (
                "\nvol-1 c5.large us-east-1a",
                "line 2: `vol-1` is not an instance id",
            ),
            ("i-1 a z\ni-1 b z", "line 2: i-1 mapped twice"),
        ] {
            let e = InstanceMap::parse(text, "m.tsv").unwrap_err().to_string();
            assert!(e.starts_with(&format!("instance map m.tsv: {want}")), "{e}");
        }
        assert_eq!(map().len(), 2);
    }
}
