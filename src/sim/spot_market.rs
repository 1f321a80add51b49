//! Trace-driven spot markets for the backtest: measured availability
//! ([`super::spot_trace::SpotTrace`]) replayed as the capacity of simulated
//! spot pools, instead of the constant interruption rate.
//!
//! Which trace feeds which pool:
//! - by file name, `<zone>_<tag>.json`: the tag gives the instance type
//!   ([`super::spot_trace::instance_type_of`]) and the zone its region (the
//!   zone without its last letter: `us-west-2a` → `us-west-2`); several
//!   zones of one region add up (the region's pool is as available as its
//!   zones together);
//! - or by a mapping file (TOML) that assigns a trace to a pool class:
//!   ```toml
//!   [[trace]]
//!   file = "us-west-2a_v100_1.json"  # relative to the mapping file
//!   pool = "c5.xlarge/us-east-1"      # "type/region", "type" or "*" (any spot pool)
//!   scale = 50                        # instances per unit of the trace (default 1)
//!   ```
//!
//! Capacity of a pool at a time: the trace's count × `scale`, except that a
//! count at the trace's maximum means "no shortage" (a 1-node trace says
//! only *whether* the market has capacity, not how much). The simulator
//! reclaims instances (with the two-minute notice) while capacity is below
//! its running spot count, and refuses new launches into a pool at capacity.
//! Traces are aligned with the start of the simulated series and read
//! cyclically past their end.

use super::spot_trace::{instance_type_of, SpotTrace, SpotTraceError};
use serde::Deserialize;
use std::collections::BTreeMap;
use thiserror::Error;

/// What a spot-market set-up can get wrong.
#[derive(Debug, Error, PartialEq)]
pub enum SpotMarketError {
    #[error(transparent)]
    Trace(#[from] SpotTraceError),
    #[error("spot trace mapping {file}: {reason}")]
    Mapping { file: String, reason: String },
    #[error("spot trace {file}: the file name is not <zone>_<tag>.json with a known tag (v100_1, v100_8, k80_1, k80_8, intel_64, c3-88); assign it to a pool with a mapping file")]
    Unmapped { file: String },
}

/// What a traced pool did in a backtest.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SpotPoolStats {
    /// Spot instances reclaimed because capacity fell below the running count.
    pub interruptions: u64,
    /// Launches refused because the pool was at capacity.
    pub failed_launches: u64,
}

/// One zone's trace feeding a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneFeed {
    pub trace: SpotTrace,
    /// Instances per unit of the trace.
    pub scale: u64,
    max: u32,
}

impl ZoneFeed {
    pub fn new(trace: SpotTrace, scale: u64) -> Self {
        let max = trace.available.iter().copied().max().unwrap_or(0);
        ZoneFeed {
            trace,
            scale: scale.max(1),
            max,
        }
    }

    /// Capacity `offset_ms` into the replay; `None`: no shortage.
    pub fn capacity(&self, offset_ms: i64) -> Option<u64> {
        let n = self.trace.at(offset_ms as f64 / 1000.0);
        if n >= self.max && n > 0 {
            None
        } else {
            Some(u64::from(n) * self.scale)
        }
    }
}

/// The capacity of one simulated pool: the sum of its zones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolFeed {
    pub zones: Vec<ZoneFeed>,
}

impl PoolFeed {
    /// Capacity `offset_ms` into the replay; `None`: no shortage.
    pub fn capacity(&self, offset_ms: i64) -> Option<u64> {
        let mut sum = 0u64;
        for z in &self.zones {
            sum += z.capacity(offset_ms)?;
        }
        Some(sum)
    }

    /// The first time after `offset_ms` at which any zone's sample changes
    /// (the next tick boundary of the finest trace).
    pub fn next_change(&self, offset_ms: i64) -> i64 {
        self.zones
            .iter()
            .map(|z| {
                let gap = (z.trace.gap_s * 1000.0).max(1.0);
                ((offset_ms as f64 / gap).floor() + 1.0) * gap
            })
            .fold(f64::INFINITY, f64::min)
            .min(i64::MAX as f64) as i64
    }
}

/// Every traced pool, by key: `type/region`, `type` or `*`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpotMarkets {
    pub pools: BTreeMap<String, PoolFeed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    trace: Vec<MappingEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingEntry {
    file: String,
    pool: String,
    #[serde(default = "one")]
    scale: u64,
}

fn one() -> u64 {
    1
}

/// A trace file's region from its zone (`us-west-2a` → `us-west-2`,
/// `us-central1-a` → `us-central1`).
pub fn region_of_zone(zone: &str) -> String {
    let z = zone.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    z.trim_end_matches('-').to_string()
}

impl SpotMarkets {
    /// Traced pools from trace files (`(path, text)`), each mapped by its
    /// file name.
    pub fn from_named_files(files: &[(String, String)]) -> Result<SpotMarkets, SpotMarketError> {
        let mut out = SpotMarkets::default();
        for (path, text) in files {
            let trace = SpotTrace::parse(path, text)?;
            let stem = std::path::Path::new(path)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("");
            let (zone, tag) = stem
                .split_once('_')
                .ok_or_else(|| SpotMarketError::Unmapped { file: path.clone() })?;
            let ty = instance_type_of(tag)
                .ok_or_else(|| SpotMarketError::Unmapped { file: path.clone() })?;
            let key = format!("{ty}/{}", region_of_zone(zone));
            out.pools
                .entry(key)
                .or_default()
                .zones
                .push(ZoneFeed::new(trace, 1));
        }
        Ok(out)
    }

    /// Traced pools from a mapping file's text; `read` returns a listed
    /// trace file's `(path, text)` (the caller resolves relative paths).
    pub fn from_mapping(
        mapping_name: &str,
        mapping: &str,
        mut read: impl FnMut(&str) -> Result<(String, String), String>,
    ) -> Result<SpotMarkets, SpotMarketError> {
        let m: MappingFile = toml::from_str(mapping).map_err(|e| SpotMarketError::Mapping {
            file: mapping_name.to_string(),
            reason: e.to_string(),
        })?;
        let mut out = SpotMarkets::default();
        for e in m.trace {
            if e.pool.trim().is_empty() {
                return Err(SpotMarketError::Mapping {
                    file: mapping_name.to_string(),
                    reason: format!("trace {}: empty pool", e.file),
                });
            }
            let (path, text) = read(&e.file).map_err(|reason| SpotMarketError::Mapping {
                file: mapping_name.to_string(),
                reason: format!("trace {}: {reason}", e.file),
            })?;
            let trace = SpotTrace::parse(&path, &text)?;
            out.pools
                .entry(e.pool.clone())
                .or_default()
                .zones
                .push(ZoneFeed::new(trace, e.scale));
        }
        Ok(out)
    }

    /// The feed of a spot pool (`type/region`, then `type`, then `*`).
    pub fn for_pool(&self, instance_type: &str, region: &str) -> Option<&PoolFeed> {
        if self.pools.is_empty() {
            return None;
        }
        self.pools
            .get(&format!("{instance_type}/{region}"))
            .or_else(|| self.pools.get(instance_type))
            .or_else(|| self.pools.get("*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(name: &str, gap: u32, data: &str) -> (String, String) {
        (
            name.to_string(),
            format!(r#"{{"metadata": {{"gap_seconds": {gap}}}, "data": [{data}]}}"#),
        )
    }

    #[test]
    fn file_names_map_zones_onto_region_pools() {
        let m = SpotMarkets::from_named_files(&[
            trace("d/us-west-2a_v100_1.json", 60, "1,0,0"),
            trace("d/us-west-2b_v100_1.json", 60, "1,1,0"),
        ])
        .unwrap();
        let p = m.for_pool("p3.2xlarge", "us-west-2").unwrap();
        assert_eq!(p.zones.len(), 2);
        assert_eq!(p.capacity(0), None); // both up: no shortage
        assert_eq!(p.capacity(60_000), None); // one zone up still unlimited
        assert_eq!(p.capacity(120_000), Some(0));
        assert_eq!(p.next_change(61_000), 120_000);
        assert!(m.for_pool("p3.2xlarge", "us-east-1").is_none());
        assert_eq!(region_of_zone("us-central1-a"), "us-central1");
        let e = SpotMarkets::from_named_files(&[trace("x/foo.json", 60, "1")]).unwrap_err();
        assert!(e.to_string().contains("x/foo.json"), "{e}");
    }

    #[test]
    fn a_mapping_assigns_traces_to_pool_classes_with_a_scale() {
        let map = "[[trace]]\nfile = \"a.json\"\npool = \"*\"\nscale = 10\n";
        let m = SpotMarkets::from_mapping("map.toml", map, |f| {
            Ok((f.to_string(), trace(f, 300, "4,2,0").1))
        })
        .unwrap();
        let p = m.for_pool("c5.xlarge", "us-east-1").unwrap();
        assert_eq!(p.capacity(0), None);
        assert_eq!(p.capacity(300_000), Some(20));
        assert_eq!(p.capacity(600_000), Some(0));
        assert_eq!(p.capacity(900_000), None); // cyclic
        let bad =
            SpotMarkets::from_mapping(
                "map.toml",
                "[[trace]]\nfile = 3\n",
                |_| Err("unused".into()),
            )
            .unwrap_err();
        assert!(bad.to_string().contains("map.toml"), "{bad}");
        let missing = SpotMarkets::from_mapping(
            "map.toml",
            "[[trace]]\nfile = \"nope.json\"\npool = \"*\"\n",
            |_| Err("no such file".into()),
        )
        .unwrap_err();
        assert!(missing.to_string().contains("nope.json"), "{missing}");
        let neg =
            SpotMarkets::from_mapping("m", "[[trace]]\nfile = \"n.json\"\npool = \"*\"\n", |f| {
                Ok((f.to_string(), trace(f, 300, "1,-2").1))
            })
            .unwrap_err();
        assert!(
            neg.to_string().contains("n.json") && neg.to_string().contains("-2"),
            "{neg}"
        );
    }

    /// A floor of two spot instances on a pool whose trace has capacity,
    /// then none for an hour, then capacity again: both are reclaimed two
    /// minutes after the drop, replacements are refused while it lasts,
    /// and the floor is restored when capacity returns.
    #[test]
    fn a_traced_pool_reclaims_with_notice_and_refuses_launches() {
        use crate::events::Market;
        use crate::sim::cluster::{Cluster, FloorCommand, Mode};
        use crate::sim::prices::{InstanceType, PriceCurve, SimPrices};
        use crate::sim::trace::SimJob;
        use crate::sim::SimConfig;
        const H: i64 = 3_600_000;
        let mut p = SimPrices::new();
        let ty = p.add_type(InstanceType {
            name: "small".into(),
            vcpus: 2,
            memory_mib: 4096,
            gpus: 0,
        });
        p.add_pool(ty, Market::OnDemand, "r", PriceCurve::constant(0.10));
        let spot = p.add_pool(ty, Market::Spot, "r", PriceCurve::constant(0.03));
        let map = "[[trace]]\nfile = \"t.json\"\npool = \"small/r\"\n";
        let markets = SpotMarkets::from_mapping("m.toml", map, |f| {
            Ok((f.to_string(), trace(f, 3600, "1,0,1,1,1,1").1))
        })
        .unwrap();
        let cfg = SimConfig {
            boot_delay_ms: 0,
            spot_interruptions_per_hour: 0.0,
            spot_markets: Some(std::sync::Arc::new(markets)),
            ..Default::default()
        };
        let job = SimJob {
            id: "j".into(),
            env: 0,
            submit: 0,
            priority: 0,
            mcpu: 2000,
            memory_mib: 1024,
            gpus: 0,
            runtime_ms: 4 * H,
            est_runtime_ms: Some(4 * H),
            deadline: None,
            elastic: true,
            project: "p".into(),
            user: "u".into(),
            cancelled_in_queue: false,
            trace_start: Some(0),
            trace_finish: Some(4 * H),
        };
        let floor = [FloorCommand {
            at: 0,
            mix: vec![(spot, 2)],
            min_mcpu: 4000,
            desired_mcpu: 4000,
            burst_pools: vec![spot].into(),
            max_mcpu: None,
        }];
        let st = Cluster::new(
            &cfg,
            &p,
            vec![&job],
            Mode::Commanded { commands: &floor },
            1,
            0,
            5 * H,
        )
        .run();
        let pool = &st.spot_pools["small/r"];
        assert_eq!(pool.interruptions, 2, "{st:?}");
        assert!(pool.failed_launches >= 1, "{st:?}");
        assert_eq!(st.preemptions, 1);
        assert_eq!(st.jobs_completed, 1);
        // 2 + 2 spot launches (the floor restored at 2 h), no rate-model
        // reclaims; the job, elastic, finished on spot after the gap or on
        // the on-demand burst.
        assert!(st.instances_launched >= 4, "{st:?}");
        // Without the trace the same run has no reclaims at rate 0.
        let plain = SimConfig {
            spot_markets: None,
            ..cfg.clone()
        };
        let st = Cluster::new(
            &plain,
            &p,
            vec![&job],
            Mode::Commanded { commands: &floor },
            1,
            0,
            5 * H,
        )
        .run();
        assert!(st.spot_pools.is_empty());
        assert_eq!(st.preemptions, 0);
    }
}
