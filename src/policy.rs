//! User-defined scaling and spending policy, one block per compute
//! environment, loaded from a declarative TOML file.
//!
//! A `[defaults]` table applies to every environment; an
//! `[environments.<name>]` table overrides it key by key (shallow merge), so
//! a file only states what differs. Every key is checked at load time: an
//! unknown key, a wrong type or an out-of-range value fails with the file,
//! the full key path and the reason, so a bad policy stops the service at
//! start instead of silently mis-scaling a fleet. See `examples/policy.toml`.

use crate::events::Market;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A TOML settings file (policy, budgets) failed to load. `key` is the
/// dotted path of the offending key (empty for syntax errors, whose reason
/// carries line and column).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{file}: key `{key}`: {reason}")]
pub struct FileError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// A policy file failed to load.
pub type PolicyError = FileError;

/// Parse TOML text into its top-level table; `origin` names it in errors.
pub(crate) fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, FileError> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let (line, col) = line_col(text, s.start);
                format!(" (line {line}, column {col})")
            })
            .unwrap_or_default();
        FileError {
            file: origin.to_string(),
            key: String::new(),
            reason: format!("invalid TOML{at}: {}", e.message()),
        }
    })
}

/// Forecast quantile to provision for, by the priority class of the work
/// pending in the environment. Higher priority buys more safety margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantileByPriority {
    pub high: f64,
    pub normal: f64,
    pub low: f64,
}

impl Default for QuantileByPriority {
    fn default() -> Self {
        QuantileByPriority {
            high: 0.9,
            normal: 0.5,
            low: 0.3,
        }
    }
}

/// What to do with a submission that would overrun a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OverBudget {
    /// Hold the job until budget frees up (then RESUME it).
    #[default]
    Queue,
    /// Reject the job outright.
    Refuse,
}

/// Capacity bought ahead (reserved instances / savings plans): already paid,
/// so the planner uses it before anything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedInstances {
    #[serde(default = "default_provider")]
    pub provider: String,
    pub region: String,
    pub instance_type: String,
    pub count: i32,
}

fn default_provider() -> String {
    "aws".to_string()
}

/// The policy of one compute environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvPolicy {
    pub quantile_by_priority: QuantileByPriority,
    /// Jobs with `priority >= high_priority_min` are "high".
    pub high_priority_min: i32,
    /// Jobs with `priority <= low_priority_max` are "low"; the rest "normal".
    pub low_priority_max: i32,
    /// Provisioning lead time: the planner covers the forecast over this
    /// window because capacity ordered now is only usable after it.
    pub lead_time_s: i64,
    /// Floor and ceiling on the environment's vCPUs.
    pub min_vcpus: i64,
    pub max_vcpus: Option<i64>,
    /// Cap on the fleet's list-price spend rate (reserved counts as 0).
    pub max_usd_per_hour: Option<f64>,
    /// Cap on one job's expected cost; published as a constraint.
    pub max_usd_per_job: Option<f64>,
    pub markets: Vec<Market>,
    /// Allowed regions / providers; empty means any.
    pub regions: Vec<String>,
    pub providers: Vec<String>,
    /// Do not lower `desired_vcpus` within this long of the last raise, so
    /// a dip in the forecast does not churn instances that boot slowly.
    pub scale_in_cooldown_s: i64,
    /// May bursts beyond `max_vcpus` go to a serverless backend (published
    /// as a constraint for the actuator; the planner does not buy it).
    pub serverless_burst: bool,
    pub over_budget: OverBudget,
    pub reserved: Vec<ReservedInstances>,
    /// Spot interruption rate per instance-hour assumed for a pool with no
    /// better information (scaled by the pool's price ratio, see planner).
    pub spot_interruption_rate_per_h: f64,
    /// Time to get a job going again after an interruption.
    pub restart_overhead_s: i64,
    /// Typical work lost-and-redone unit: jobs run this long between
    /// restarts when nothing else is known (fleet planning).
    pub typical_job_s: i64,
    /// No spot pool may hold more than this share of the spot vCPUs (when the
    /// fleet is bigger than one instance), so one reclaim does not take all.
    pub max_spot_pool_share: f64,
    /// Prices older than this are stale: not trusted for spot, and reported.
    pub max_price_age_s: i64,
    /// Instance types the planner may use (empty means any with a price).
    pub instance_types: Vec<String>,
    /// Smallest instance (vCPUs) the fleet may use: keeps fleets to a
    /// manageable number of machines and fits wide jobs (0 = any).
    pub min_instance_vcpus: f64,
    /// CPU architectures the workloads run on (`amd64`, `arm64`); empty = any.
    pub architectures: Vec<String>,
    /// Leave out burstable (CPU-credit) instance types.
    pub exclude_burstable: bool,
}

impl Default for EnvPolicy {
    fn default() -> Self {
        EnvPolicy {
            quantile_by_priority: QuantileByPriority::default(),
            high_priority_min: 1,
            low_priority_max: -1,
            lead_time_s: 300,
            min_vcpus: 0,
            max_vcpus: None,
            max_usd_per_hour: None,
            max_usd_per_job: None,
            markets: vec![Market::Reserved, Market::Spot, Market::OnDemand],
            regions: Vec::new(),
            providers: Vec::new(),
            scale_in_cooldown_s: 600,
            serverless_burst: false,
            over_budget: OverBudget::Queue,
            reserved: Vec::new(),
            spot_interruption_rate_per_h: crate::pricing::DEFAULT_SPOT_INTERRUPTIONS_PER_HOUR,
            restart_overhead_s: 120,
            typical_job_s: 3600,
            max_spot_pool_share: 0.5,
            max_price_age_s: 6 * 3600,
            instance_types: Vec::new(),
            min_instance_vcpus: 0.0,
            architectures: vec!["amd64".to_string()],
            exclude_burstable: true,
        }
    }
}

/// Priority class of a job under a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorityClass {
    Low,
    Normal,
    High,
}

impl PriorityClass {
    pub fn as_str(self) -> &'static str {
        match self {
            PriorityClass::Low => "low",
            PriorityClass::Normal => "normal",
            PriorityClass::High => "high",
        }
    }
}

impl EnvPolicy {
    pub fn class_of(&self, priority: i32) -> PriorityClass {
        if priority >= self.high_priority_min {
            PriorityClass::High
        } else if priority <= self.low_priority_max {
            PriorityClass::Low
        } else {
            PriorityClass::Normal
        }
    }

    pub fn quantile_for(&self, class: PriorityClass) -> f64 {
        match class {
            PriorityClass::High => self.quantile_by_priority.high,
            PriorityClass::Normal => self.quantile_by_priority.normal,
            PriorityClass::Low => self.quantile_by_priority.low,
        }
    }

    pub fn allows_market(&self, m: Market) -> bool {
        self.markets.contains(&m)
    }

    pub fn allows_region(&self, r: &str) -> bool {
        self.regions.is_empty() || self.regions.iter().any(|x| x == r)
    }

    pub fn allows_provider(&self, p: &str) -> bool {
        self.providers.is_empty() || self.providers.iter().any(|x| x.eq_ignore_ascii_case(p))
    }

    /// Semantic checks serde cannot express. Returns (key, reason).
    fn validate(&self) -> Result<(), (String, String)> {
        let q = &self.quantile_by_priority;
        for (k, v) in [("high", q.high), ("normal", q.normal), ("low", q.low)] {
            if !(v > 0.0 && v < 1.0) {
                return Err((
                    format!("quantile_by_priority.{k}"),
                    format!("quantile must be strictly between 0 and 1, got {v}"),
                ));
            }
        }
        if !(q.low <= q.normal && q.normal <= q.high) {
            return Err((
                "quantile_by_priority".into(),
                format!(
                    "quantiles must not decrease with priority (low {} <= normal {} <= high {})",
                    q.low, q.normal, q.high
                ),
            ));
        }
        if self.low_priority_max >= self.high_priority_min {
            return Err((
                "low_priority_max".into(),
                format!(
                    "must be below high_priority_min ({})",
                    self.high_priority_min
                ),
            ));
        }
        let non_neg_i = [
            ("lead_time_s", self.lead_time_s),
            ("min_vcpus", self.min_vcpus),
            ("scale_in_cooldown_s", self.scale_in_cooldown_s),
            ("restart_overhead_s", self.restart_overhead_s),
        ];
        for (k, v) in non_neg_i {
            if v < 0 {
                return Err((k.into(), format!("must be >= 0, got {v}")));
            }
        }
        for (k, v) in [
            ("typical_job_s", self.typical_job_s),
            ("max_price_age_s", self.max_price_age_s),
        ] {
            if v <= 0 {
                return Err((k.into(), format!("must be > 0, got {v}")));
            }
        }
        if let Some(m) = self.max_vcpus {
            if m < self.min_vcpus {
                return Err((
                    "max_vcpus".into(),
                    format!("{m} is below min_vcpus ({})", self.min_vcpus),
                ));
            }
        }
        for (k, v) in [
            ("max_usd_per_hour", self.max_usd_per_hour),
            ("max_usd_per_job", self.max_usd_per_job),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err((k.into(), format!("must be a positive amount, got {v}")));
                }
            }
        }
        if !(self.min_instance_vcpus.is_finite() && self.min_instance_vcpus >= 0.0) {
            return Err((
                "min_instance_vcpus".into(),
                format!("must be >= 0, got {}", self.min_instance_vcpus),
            ));
        }
        if self.markets.is_empty() {
            return Err((
                "markets".into(),
                "at least one market must be allowed".into(),
            ));
        }
        if !(self.spot_interruption_rate_per_h.is_finite()
            && self.spot_interruption_rate_per_h >= 0.0)
        {
            return Err((
                "spot_interruption_rate_per_h".into(),
                format!("must be >= 0, got {}", self.spot_interruption_rate_per_h),
            ));
        }
        if !(self.max_spot_pool_share > 0.0 && self.max_spot_pool_share <= 1.0) {
            return Err((
                "max_spot_pool_share".into(),
                format!("must be in (0, 1], got {}", self.max_spot_pool_share),
            ));
        }
        for (i, r) in self.reserved.iter().enumerate() {
            if r.count < 0 {
                return Err((
                    format!("reserved[{i}].count"),
                    format!("must be >= 0, got {}", r.count),
                ));
            }
            if r.instance_type.is_empty() {
                return Err((
                    format!("reserved[{i}].instance_type"),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A whole policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PolicyFile {
    /// Where it was loaded from (for messages); empty when built in code.
    #[serde(skip)]
    pub origin: String,
    pub defaults: EnvPolicy,
    pub environments: BTreeMap<String, EnvPolicy>,
}

impl PolicyFile {
    /// Provisioning quantiles outside `lo..=hi` (the levels the engine
    /// forecasts), each with the key that sets it: the planner reads the
    /// forecast at the nearest level, so such a quantile provisions like
    /// that level. An environment's value is named only where it differs
    /// from the defaults'.
    pub fn quantiles_outside(&self, lo: f64, hi: f64) -> Vec<(String, f64)> {
        let levels = |p: &EnvPolicy| {
            let q = &p.quantile_by_priority;
            [("high", q.high), ("normal", q.normal), ("low", q.low)]
        };
        let defaults = levels(&self.defaults);
        let mut out: Vec<(String, f64)> = defaults
            .iter()
            .filter(|(_, v)| *v < lo || *v > hi)
            .map(|(k, v)| (format!("defaults.quantile_by_priority.{k}"), *v))
            .collect();
        for (env, p) in &self.environments {
            for ((k, v), (_, d)) in levels(p).into_iter().zip(defaults) {
                if (v < lo || v > hi) && v != d {
                    out.push((format!("environments.{env}.quantile_by_priority.{k}"), v));
                }
            }
        }
        out
    }

    /// Parses and validates policy TOML; `origin` names the source in errors.
    /// (`PolicyFile::load`, in `import::settings`, reads it from a file.)
    pub fn from_toml_str(text: &str, origin: &str) -> Result<PolicyFile, PolicyError> {
        Self::from_table(&crate::policy::parse_toml(text, origin)?, origin)
    }

    fn from_table(root: &toml::Table, origin: &str) -> Result<PolicyFile, PolicyError> {
        let err = |key: &str, reason: String| PolicyError {
            file: origin.to_string(),
            key: key.to_string(),
            reason,
        };
        for k in root.keys() {
            if k != "defaults" && k != "environments" {
                return Err(err(
                    k,
                    "unknown top-level key (expected `defaults` or `environments`)".into(),
                ));
            }
        }
        let defaults_tbl = match root.get("defaults") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t.clone(),
            Some(_) => return Err(err("defaults", "must be a table".into())),
        };
        let defaults = parse_env(&defaults_tbl, "defaults").map_err(|(k, r)| err(&k, r))?;
        let mut environments = BTreeMap::new();
        match root.get("environments") {
            None => {}
            Some(toml::Value::Table(envs)) => {
                for (name, v) in envs {
                    let prefix = format!("environments.{name}");
                    let toml::Value::Table(t) = v else {
                        return Err(err(&prefix, "must be a table".into()));
                    };
                    let mut merged = defaults_tbl.clone();
                    for (k, v) in t {
                        merged.insert(k.clone(), v.clone());
                    }
                    let p = parse_env(&merged, &prefix).map_err(|(k, r)| err(&k, r))?;
                    environments.insert(name.clone(), p);
                }
            }
            Some(_) => return Err(err("environments", "must be a table".into())),
        }
        Ok(PolicyFile {
            origin: origin.to_string(),
            defaults,
            environments,
        })
    }

    /// The policy of an environment (its own block, else the defaults).
    pub fn for_env(&self, env: &str) -> &EnvPolicy {
        self.environments.get(env).unwrap_or(&self.defaults)
    }
}

fn parse_env(tbl: &toml::Table, prefix: &str) -> Result<EnvPolicy, (String, String)> {
    let value = toml::Value::Table(tbl.clone());
    let p: EnvPolicy = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.trim().to_string();
        // serde reports an unknown field at the parent path; name the field.
        let field = backticked_after(&inner, "unknown field `")
            .or_else(|| backticked_after(&inner, "missing field `"));
        let key = match field {
            Some(f) if path == "." => f,
            Some(f) if path != f && !path.ends_with(&format!(".{f}")) => format!("{path}.{f}"),
            _ => path,
        };
        (join_key(prefix, &key), inner)
    })?;
    p.validate().map_err(|(k, r)| (join_key(prefix, &k), r))?;
    Ok(p)
}

fn join_key(prefix: &str, key: &str) -> String {
    if key.is_empty() || key == "." {
        prefix.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The text between `marker` and the next backtick, if present.
pub(crate) fn backticked_after(s: &str, marker: &str) -> Option<String> {
    let start = s.find(marker)? + marker.len();
    let end = s[start..].find('`')? + start;
    Some(s[start..end].to_string())
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GOOD: &str = r#"
[defaults]
quantile_by_priority = { high = 0.95, normal = 0.6, low = 0.3 }
max_usd_per_hour = 200.0
markets = ["SPOT", "ON_DEMAND", "RESERVED"]

[environments.gpu]
regions = ["us-east-1"]
max_usd_per_job = 50.0
serverless_burst = true
reserved = [{ region = "us-east-1", instance_type = "g5.xlarge", count = 2 }]
"#;

    #[test]
    fn loads_and_merges_defaults() {
        let p = PolicyFile::from_toml_str(GOOD, "good.toml").unwrap();
        let gpu = p.for_env("gpu");
        assert_eq!(gpu.quantile_by_priority.high, 0.95);
        assert_eq!(gpu.max_usd_per_hour, Some(200.0));
        assert_eq!(gpu.max_usd_per_job, Some(50.0));
        assert_eq!(gpu.regions, vec!["us-east-1".to_string()]);
        assert_eq!(gpu.reserved[0].provider, "aws");
        assert!(gpu.serverless_burst);
        let other = p.for_env("cpu");
        assert!(!other.serverless_burst);
        assert_eq!(other.quantile_for(PriorityClass::Normal), 0.6);
        assert_eq!(other.class_of(5), PriorityClass::High);
        assert_eq!(other.class_of(0), PriorityClass::Normal);
        assert_eq!(other.class_of(-3), PriorityClass::Low);
    }

    #[test]
    fn example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml");
        let p = PolicyFile::load(&path).unwrap();
        assert!(!p.environments.is_empty());
    }

    fn bad(text: &str) -> PolicyError {
        PolicyFile::from_toml_str(text, "bad.toml").unwrap_err()
    }

    #[test]
    fn unknown_key_is_named() {
        let e = bad("[environments.a]\nmax_usd_per_hr = 3.0\n");
        assert_eq!(e.file, "bad.toml");
        assert_eq!(e.key, "environments.a.max_usd_per_hr");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = bad(
            "[defaults]\nquantile_by_priority = { high = \"lots\", normal = 0.5, low = 0.1 }\n",
        );
        assert_eq!(e.key, "defaults.quantile_by_priority.high");
        assert!(e.reason.contains("invalid type"), "{e}");
    }

    /// A quantile above the forecast's highest level is named once, where
    /// it is set; one inherited from the defaults is not named again.
    #[test]
    fn quantiles_beyond_the_forecast_levels_are_named() {
        let p = PolicyFile::from_toml_str(
            "[defaults]\nquantile_by_priority = { high = 0.95, normal = 0.5, low = 0.3 }\n\
             [environments.a]\nlead_time_s = 60\n\
             [environments.b]\nquantile_by_priority = { high = 0.97, normal = 0.5, low = 0.05 }\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            p.quantiles_outside(0.1, 0.9),
            vec![
                ("defaults.quantile_by_priority.high".to_string(), 0.95),
                ("environments.b.quantile_by_priority.high".to_string(), 0.97),
                ("environments.b.quantile_by_priority.low".to_string(), 0.05),
            ]
        );
        assert!(PolicyFile::default().quantiles_outside(0.1, 0.9).is_empty());
    }

    #[test]
    fn out_of_range_quantile_is_named() {
        let e = bad(
            "[environments.x]\nquantile_by_priority = { high = 1.5, normal = 0.5, low = 0.1 }\n",
        );
        assert_eq!(e.key, "environments.x.quantile_by_priority.high");
        assert!(e.reason.contains("between 0 and 1"), "{e}");
    }

    #[test]
    fn bad_market_and_reserved_are_named() {
        let e = bad("[defaults]\nmarkets = [\"SPOTTY\"]\n");
        assert_eq!(e.key, "defaults.markets[0]");
        let e = bad("[environments.x]\nreserved = [{ region = \"r\", instance_type = \"m5.large\", count = -1 }]\n");
        assert_eq!(e.key, "environments.x.reserved[0].count");
        let e = bad("[environments.x]\nreserved = [{ region = \"r\" }]\n");
        assert!(e.key.starts_with("environments.x.reserved[0]"), "{e}");
        assert!(e.reason.contains("missing field"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = bad("[defaults]\nmin_vcpus = \n");
        assert!(e.reason.contains("line 2"), "{e}");
        let e = bad("[defaults]\nmin_vcpus = 10\nmax_vcpus = 5\n");
        assert_eq!(e.key, "defaults.max_vcpus");
        let e = bad("[default]\n");
        assert_eq!(e.key, "default");
    }
}
