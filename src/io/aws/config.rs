//! The mapping file: which AWS resources stand for each prescale compute environment.
//!
//! One TOML file serves both actuators and the Batch producer:
//!
//! ```toml
//! [asg.ce-a]                      # prescale environment `ce-a` → one EC2 Auto Scaling group
//! group = "prescale-ce-a"
//! # vcpus_per_unit = 2            # only for a group without instance weights (see docs/actuators.md)
//!
//! [batch.ce-b]                    # prescale environment `ce-b` → AWS Batch
//! spot_compute_environment = "ce-b-spot"
//! on_demand_compute_environment = "ce-b-od"
//! job_queue = "ce-b"
//!
//! [instance_vcpus]                # vCPUs of types the bundled catalogue lacks (optional)
//! "m7i-flex.large" = 2
//! ```
//!
//! Unknown keys are errors (a misspelt key would otherwise silently fall back to a default), and
//! every error names the file, the key and the line.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One environment's Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsgTarget {
    /// The group's name (`AutoScalingGroupName`).
    pub group: String,
    /// vCPUs one unit of the group's capacity stands for, for a group whose launch template
    /// overrides carry no `WeightedCapacity` (one unit = one instance). Unset: taken from the
    /// group's weights, or from the vCPUs of its single instance type.
    pub vcpus_per_unit: Option<f64>,
}

/// One environment's AWS Batch resources: Batch buys one market per managed compute
/// environment, so a prescale environment that mixes spot and on-demand needs two.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchTarget {
    pub spot_compute_environment: String,
    pub on_demand_compute_environment: String,
    /// The queue whose compute-environment order follows the cheaper market.
    pub job_queue: String,
}

/// The whole mapping file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    #[serde(default)]
    pub asg: BTreeMap<String, AsgTarget>,
    #[serde(default)]
    pub batch: BTreeMap<String, BatchTarget>,
    /// vCPUs per instance type, in addition to (and over) the bundled catalogue.
    #[serde(default)]
    pub instance_vcpus: BTreeMap<String, f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Mapping::parse(&text).map_err(|message| MappingError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse and check a mapping; the error names the key (and line, from the TOML parser).
    pub fn parse(text: &str) -> Result<Mapping, String> {
        let m: Mapping = toml::from_str(text).map_err(|e| e.to_string())?;
        for (env, t) in &m.asg {
            if t.group.trim().is_empty() {
                return Err(format!("asg.{env}.group is empty"));
            }
            if let Some(v) = t.vcpus_per_unit {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("asg.{env}.vcpus_per_unit must be > 0, got {v}"));
                }
            }
        }
        for (env, t) in &m.batch {
            for (key, v) in [
                ("spot_compute_environment", &t.spot_compute_environment),
                (
                    "on_demand_compute_environment",
                    &t.on_demand_compute_environment,
                ),
                ("job_queue", &t.job_queue),
            ] {
                if v.trim().is_empty() {
                    return Err(format!("batch.{env}.{key} is empty"));
                }
            }
        }
        for (ty, v) in &m.instance_vcpus {
            if !(v.is_finite() && *v > 0.0) {
                return Err(format!("instance_vcpus.\"{ty}\" must be > 0, got {v}"));
            }
        }
        Ok(m)
    }

    /// The prescale environment whose Batch job queue is `queue` (a name or an ARN).
    pub fn environment_of_queue(&self, queue: &str) -> Option<&str> {
        let name = resource_name(queue);
        self.batch
            .iter()
            .find(|(_, t)| resource_name(&t.job_queue) == name)
            .map(|(env, _)| env.as_str())
    }
}

/// The name at the end of an ARN (`arn:aws:batch:…:job-queue/NAME` → `NAME`), or the input.
pub fn resource_name(name_or_arn: &str) -> &str {
    if name_or_arn.starts_with("arn:") {
        name_or_arn.rsplit('/').next().unwrap_or(name_or_arn)
    } else {
        name_or_arn
    }
}

/// vCPUs per instance type: the bundled catalogue, overridden by the mapping's table.
#[derive(Debug, Clone)]
pub struct InstanceVcpus {
    extra: BTreeMap<String, f64>,
    catalog: crate::pricing::Catalog,
}

impl InstanceVcpus {
    pub fn new(extra: &BTreeMap<String, f64>) -> Self {
        InstanceVcpus {
            extra: extra.clone(),
            catalog: crate::pricing::Catalog::bundled(),
        }
    }

    pub fn get(&self, instance_type: &str) -> Option<f64> {
        self.extra
            .get(instance_type)
            .copied()
            .or_else(|| self.catalog.spec(instance_type).map(|s| s.vcpus))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_sections() {
        let m = Mapping::parse(
            r#"
[asg.ce-a]
group = "g-a"
[batch.ce-b]
spot_compute_environment = "s"
on_demand_compute_environment = "o"
job_queue = "arn:aws:batch:us-east-1:1:job-queue/q"
[instance_vcpus]
"x1.tiny" = 3
"#,
        )
        .unwrap();
        assert_eq!(m.asg["ce-a"].group, "g-a");
        assert_eq!(m.environment_of_queue("q"), Some("ce-b"));
        assert_eq!(
            InstanceVcpus::new(&m.instance_vcpus).get("x1.tiny"),
            Some(3.0)
        );
        assert_eq!(
            InstanceVcpus::new(&m.instance_vcpus).get("m5.large"),
            Some(2.0)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Mapping::parse("[asg.ce-a]\ngruop = \"x\"\n").unwrap_err();
        assert!(e.contains("gruop"), "{e}");
        let e = Mapping::parse("[batch.ce-a]\njob_queue = \"q\"\n").unwrap_err();
        assert!(e.contains("spot_compute_environment"), "{e}");
        let e = Mapping::parse("[asg.e]\ngroup = \"g\"\nvcpus_per_unit = 0\n").unwrap_err();
        assert!(e.contains("asg.e.vcpus_per_unit"), "{e}");
    }
}
