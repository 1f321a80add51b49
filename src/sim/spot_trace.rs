//! Measured spot markets: availability / preemption traces in the format of
//! the *Can't Be Late* (NSDI '24) release, `{"metadata": {"gap_seconds": G},
//! "data": [n, ...]}`, where `n` is the number of spot instances available at
//! tick `i` (time `i × G` seconds from the trace's start).
//!
//! Parsing is pure (text in, trace out); the CLI reads the files. Every error
//! names the file and what is wrong with it, so a bad file is never replayed
//! as a silently different market.

use serde::Deserialize;
use thiserror::Error;

/// A spot trace that could not be used.
#[derive(Debug, Error, PartialEq)]
pub enum SpotTraceError {
    #[error("spot trace {file}: not valid JSON of the form {{\"metadata\": {{\"gap_seconds\": G}}, \"data\": [n, ...]}}: {reason}")]
    Json { file: String, reason: String },
    #[error("spot trace {file}: metadata.gap_seconds must be a positive number, got {gap}")]
    Gap { file: String, gap: f64 },
    #[error(
        "spot trace {file}: data[{index}] = {value} is not a non-negative whole count of instances"
    )]
    Count {
        file: String,
        index: usize,
        value: f64,
    },
    #[error("spot trace {file}: data is empty")]
    Empty { file: String },
}

/// One zone's measured spot availability.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotTrace {
    /// Where it came from (file path or a test name), for messages and reports.
    pub name: String,
    /// Seconds between two samples.
    pub gap_s: f64,
    /// Spot instances available at each sample.
    pub available: Vec<u32>,
}

#[derive(Deserialize)]
struct RawMeta {
    gap_seconds: f64,
}

#[derive(Deserialize)]
struct RawTrace {
    metadata: RawMeta,
    data: Vec<f64>,
}

impl SpotTrace {
    /// Parses one trace file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<SpotTrace, SpotTraceError> {
        let raw: RawTrace = serde_json::from_str(text).map_err(|e| SpotTraceError::Json {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
        let gap = raw.metadata.gap_seconds;
        if !(gap.is_finite() && gap > 0.0) {
            return Err(SpotTraceError::Gap {
                file: file.to_string(),
                gap,
            });
        }
        if raw.data.is_empty() {
            return Err(SpotTraceError::Empty {
                file: file.to_string(),
            });
        }
        let mut available = Vec::with_capacity(raw.data.len());
        for (index, &value) in raw.data.iter().enumerate() {
            if !(value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= 1e6) {
                return Err(SpotTraceError::Count {
                    file: file.to_string(),
                    index,
                    value,
                });
            }
            available.push(value as u32);
        }
        Ok(SpotTrace {
            name: file.to_string(),
            gap_s: gap,
            available,
        })
    }

    /// Length of the trace in seconds.
    pub fn span_s(&self) -> f64 {
        self.gap_s * self.available.len() as f64
    }

    /// Available instances at `t_s` seconds from the start (the last sample
    /// at or before it; cyclic past the end, so a short trace can cover a
    /// long run — callers say so when they rely on it).
    pub fn at(&self, t_s: f64) -> u32 {
        let i = (t_s.max(0.0) / self.gap_s).floor() as usize;
        self.available[i % self.available.len()]
    }

    /// Resamples to ticks of `tick_s` seconds starting at `start_s`: a tick
    /// has `need` instances only if every sample overlapping it has (a
    /// conservative reading: a dip anywhere in the tick reclaims the
    /// instance). Cyclic past the end like [`SpotTrace::at`].
    pub fn resample(&self, start_s: f64, tick_s: f64, ticks: usize, need: u32) -> Vec<bool> {
        let n = self.available.len();
        (0..ticks)
            .map(|k| {
                let a = start_s + k as f64 * tick_s;
                let b = a + tick_s;
                let first = (a / self.gap_s).floor() as usize;
                // Samples whose interval [i·gap, (i+1)·gap) overlaps [a, b).
                let last = ((b / self.gap_s).ceil() as usize).max(first + 1);
                (first..last).all(|i| self.available[i % n] >= need)
            })
            .collect()
    }
}

/// What a trace file's name says: `<zone>_<accelerator or cpu>_<count>.json`
/// (e.g. `us-west-2a_v100_1.json`, `us-east-1b_intel_64.json`,
/// `us-central1-a_c3-88.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceName {
    pub zone: String,
    /// The instance type the release measured (see [`instance_type_of`]).
    pub instance_type: Option<&'static str>,
    pub provider: &'static str,
}

/// Instance type measured by the release for a file-name tag (its README):
/// `v100_1` p3.2xlarge, `v100_8` p3.16xlarge, `k80_1` p2.xlarge, `k80_8`
/// p2.16xlarge, `intel_64` r5.16xlarge, `c3-88` GCP c3-highcpu-88.
pub fn instance_type_of(tag: &str) -> Option<&'static str> {
    match tag {
        "v100_1" => Some("p3.2xlarge"),
        "v100_8" => Some("p3.16xlarge"),
        "k80_1" => Some("p2.xlarge"),
        "k80_8" => Some("p2.16xlarge"),
        "intel_64" => Some("r5.16xlarge"),
        "c3-88" => Some("c3-highcpu-88"),
        _ => None,
    }
}

/// Parses a trace file name (the stem, without directories).
pub fn parse_trace_name(file_stem: &str) -> Option<TraceName> {
    let (zone, tag) = file_stem.split_once('_')?;
    let instance_type = instance_type_of(tag);
    let provider = if zone.contains("central") || zone.starts_with("us-east1") {
        "gcp"
    } else {
        "aws"
    };
    Some(TraceName {
        zone: zone.to_string(),
        instance_type,
        provider,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_trace_and_reads_it_cyclically() {
        let t = SpotTrace::parse(
            "a.json",
            r#"{"metadata": {"gap_seconds": 10}, "data": [1, 0, 2]}"#,
        )
        .unwrap();
        assert_eq!(t.available, vec![1, 0, 2]);
        assert_eq!(t.at(0.0), 1);
        assert_eq!(t.at(15.0), 0);
        assert_eq!(t.at(35.0), 1);
        assert_eq!(t.span_s(), 30.0);
    }

    #[test]
    fn malformed_traces_are_clear_errors_naming_the_file() {
        let bad = [
            ("x.json", "{not json", "not valid JSON"),
            (
                "neg.json",
                r#"{"metadata": {"gap_seconds": 10}, "data": [1, -1]}"#,
                "data[1] = -1",
            ),
            (
                "frac.json",
                r#"{"metadata": {"gap_seconds": 10}, "data": [0.5]}"#,
                "data[0] = 0.5",
            ),
            (
                "gap.json",
                r#"{"metadata": {"gap_seconds": 0}, "data": [1]}"#,
                "gap_seconds must be a positive",
            ),
            (
                "neggap.json",
                r#"{"metadata": {"gap_seconds": -3}, "data": [1]}"#,
                "positive",
            ),
            (
                "empty.json",
                r#"{"metadata": {"gap_seconds": 3}, "data": []}"#,
                "data is empty",
            ),
            ("nometa.json", r#"{"data": [1]}"#, "metadata"),
        ];
        for (file, text, what) in bad {
            let e = SpotTrace::parse(file, text).unwrap_err().to_string();
            assert!(e.contains(file), "{e}");
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn resampling_is_conservative() {
        let t = SpotTrace::parse(
            "a",
            r#"{"metadata": {"gap_seconds": 10}, "data": [1,1,0,1,1,1]}"#,
        )
        .unwrap();
        // 20 s ticks: [0,20) ok, [20,40) has the 0, [40,60) ok.
        assert_eq!(t.resample(0.0, 20.0, 3, 1), vec![true, false, true]);
        // 5 s ticks replicate samples.
        assert_eq!(t.resample(10.0, 5.0, 4, 1), vec![true, true, false, false]);
        // Needing 2 instances: never.
        assert!(t.resample(0.0, 10.0, 6, 2).iter().all(|a| !a));
    }

    #[test]
    fn names_give_zone_and_type() {
        let n = parse_trace_name("us-west-2a_v100_1").unwrap();
        assert_eq!(n.zone, "us-west-2a");
        assert_eq!(n.instance_type, Some("p3.2xlarge"));
        assert_eq!(n.provider, "aws");
        let g = parse_trace_name("us-central1-a_c3-88").unwrap();
        assert_eq!(g.provider, "gcp");
        assert_eq!(g.instance_type, Some("c3-highcpu-88"));
        assert_eq!(parse_trace_name("nounderscore"), None);
    }
}
