//! The instance catalogue: vCPU, memory and GPUs per instance type, and the
//! on-demand price per region. The bundled one is the us-east-1 subset of the
//! Karpenter-generated AWS price list (see `data/README.md`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub name: String,
    pub family: String,
    pub vcpus: f64,
    pub memory_mib: i64,
    pub gpus: i32,
    pub arch: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Row {
        path: String,
        line: u64,
        message: String,
    },
}

/// Instance shapes and on-demand prices.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    specs: BTreeMap<String, InstanceSpec>,
    /// (region, instance type) → on-demand USD/h.
    ondemand: BTreeMap<String, BTreeMap<String, f64>>,
    /// Rows without a shape (counted, not used).
    pub rows_without_specs: u64,
}

/// Most vCPUs one instance type may list (the largest EC2 type has 896).
const MAX_INSTANCE_VCPUS: f64 = 100_000.0;
/// Most GPUs one instance type may list (the largest EC2 type has 16).
const MAX_INSTANCE_GPUS: i32 = 1024;

const BUNDLED: &str = include_str!("../../data/catalog-us-east-1.csv");

impl Catalog {
    /// The catalogue compiled into the binary.
    pub fn bundled() -> Catalog {
        Catalog::parse(BUNDLED.as_bytes(), "bundled catalogue").expect("bundled catalogue parses")
    }

    /// Parse the Karpenter-derived CSV (`Catalog::load`, in
    /// `import::settings`, reads it from a file):
    /// `region,instance_type,family,category,generation,vcpu,memory_mib,gpu_count,gpu_name,gpu_memory_mib,arch,ondemand_usd_per_hour`.
    pub fn parse(r: impl std::io::Read, name: &str) -> Result<Catalog, CatalogError> {
        let mut rdr = csv::Reader::from_reader(r);
        let headers = rdr
            .headers()
            .map_err(|e| CatalogError::Row {
                path: name.into(),
                line: 1,
                message: e.to_string(),
            })?
            .clone();
        let col = |n: &str| {
            headers
                .iter()
                .position(|h| h == n)
                .ok_or_else(|| CatalogError::Row {
                    path: name.into(),
                    line: 1,
                    message: format!("missing column `{n}`"),
                })
        };
        let (ci_region, ci_type, ci_family, ci_vcpu, ci_mem, ci_gpu, ci_arch, ci_price) = (
            col("region")?,
            col("instance_type")?,
            col("family")?,
            col("vcpu")?,
            col("memory_mib")?,
            col("gpu_count")?,
            col("arch")?,
            col("ondemand_usd_per_hour")?,
        );
        let mut cat = Catalog::default();
        for (i, rec) in rdr.records().enumerate() {
            let line = i as u64 + 2;
            let rec = rec.map_err(|e| CatalogError::Row {
                path: name.into(),
                line,
                message: e.to_string(),
            })?;
            let bad = |field: &str, v: &str| CatalogError::Row {
                path: name.into(),
                line,
                message: format!(
                    "field `{field}`: `{}` is not a number in range",
                    crate::limits::quote(v)
                ),
            };
            // Physically sensible ranges: a negative, zero or NaN price or
            // size would silently change every cost and packing decision.
            let num = |field: &str, v: &str, max: f64| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0 && *x <= max)
                    .ok_or_else(|| bad(field, v))
            };
            let itype = rec[ci_type].to_string();
            let region = rec[ci_region].to_string();
            let price_s = &rec[ci_price];
            if !price_s.is_empty() {
                let price = num(
                    "ondemand_usd_per_hour",
                    price_s,
                    crate::limits::MAX_PRICE_USD_PER_HOUR,
                )?;
                cat.ondemand
                    .entry(region)
                    .or_default()
                    .insert(itype.clone(), price);
            }
            let (v, m) = (&rec[ci_vcpu], &rec[ci_mem]);
            if v.is_empty() || m.is_empty() {
                cat.rows_without_specs += 1;
                continue;
            }
            let g = &rec[ci_gpu];
            num("vcpu", v, MAX_INSTANCE_VCPUS)?;
            num("memory_mib", m, crate::limits::MAX_JOB_MEMORY_MIB as f64)?;
            let spec = InstanceSpec {
                name: itype.clone(),
                family: rec[ci_family].to_string(),
                vcpus: v.parse().map_err(|_| bad("vcpu", v))?,
                memory_mib: m.parse().map_err(|_| bad("memory_mib", m))?,
                gpus: if g.is_empty() {
                    0
                } else {
                    g.parse()
                        .ok()
                        .filter(|n: &i32| (0..=MAX_INSTANCE_GPUS).contains(n))
                        .ok_or_else(|| bad("gpu_count", g))?
                },
                arch: rec[ci_arch].to_string(),
            };
            cat.specs.insert(itype, spec);
        }
        Ok(cat)
    }

    pub fn spec(&self, instance_type: &str) -> Option<&InstanceSpec> {
        self.specs.get(instance_type)
    }

    pub fn specs(&self) -> impl Iterator<Item = &InstanceSpec> {
        self.specs.values()
    }

    pub fn ondemand_price(&self, region: &str, instance_type: &str) -> Option<f64> {
        self.ondemand.get(region)?.get(instance_type).copied()
    }

    /// On-demand prices of one region by instance type (for callers that
    /// look up many types in the same region).
    pub fn ondemand_prices_in(&self, region: &str) -> Option<&BTreeMap<String, f64>> {
        self.ondemand.get(region)
    }

    /// Regions with on-demand prices.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.ondemand.keys().map(String::as_str)
    }

    /// (region, type, price) for every on-demand price whose type has a shape.
    pub fn ondemand_offers(&self) -> impl Iterator<Item = (&str, &InstanceSpec, f64)> {
        self.ondemand.iter().flat_map(move |(r, m)| {
            m.iter()
                .filter_map(move |(t, p)| self.specs.get(t).map(|s| (r.as_str(), s, *p)))
        })
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_has_common_types() {
        let c = Catalog::bundled();
        let m5 = c.spec("m5.large").unwrap();
        assert_eq!(m5.vcpus, 2.0);
        assert_eq!(m5.memory_mib, 8192);
        assert!(c.ondemand_price("us-east-1", "m5.large").unwrap() > 0.05);
        assert!(c.specs().any(|s| s.gpus > 0));
    }

    #[test]
    fn bad_number_names_line_and_field() {
        let t = "region,instance_type,family,category,generation,vcpu,memory_mib,gpu_count,gpu_name,gpu_memory_mib,arch,ondemand_usd_per_hour\n\
us-east-1,x.large,x,x,1,two,4096,,,,amd64,0.1\n";
        let e = Catalog::parse(t.as_bytes(), "c.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("vcpu"), "{e}");
    }
}
