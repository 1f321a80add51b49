//! The peer baselines: what a cost-aware team would run instead of
//! prescale, each built from its public documentation and given the same
//! simulator mechanics (boot delay, billing, spot risk model, prices,
//! packing, gang splits) as prescale's own policies. Only the decisions
//! differ. Rules and sources are in docs/planner.md ("Peer baselines").
//!
//! - `batch_spot`: AWS Batch, a SPOT managed compute environment
//!   (`SPOT_PRICE_CAPACITY_OPTIMIZED`) first in the job queue and an
//!   on-demand one (`BEST_FIT_PROGRESSIVE`) after it; capacity follows the
//!   RUNNABLE jobs, idle instances are scaled in.
//! - `karpenter`: node provisioning for pending work, spot first with
//!   on-demand fallback when spot cannot launch, plus consolidation
//!   (empty and under-used nodes deleted or replaced by cheaper ones after
//!   `consolidateAfter`; see the `consolidation` file).
//! - `ec2_predictive`: an EC2 Auto Scaling group with predictive scaling
//!   (hourly forecast of the load from up to 14 days of history, acting
//!   after 24 h, capacity launched `SchedulingBufferTime` ahead) and target
//!   tracking for the rest, instances from a mixed-instances policy (spot,
//!   price-capacity-optimized, on-demand when spot cannot serve).

pub mod ec2_predictive;

use super::cluster::FloorCommand;
use super::prices::SimPrices;
use super::trace::Workload;
use super::SimConfig;
use crate::events::{Market, Millis};

pub use ec2_predictive::{predictive_floor_commands, PredictiveScaling};

/// How a cluster chooses and gives back capacity beyond its mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProvisionRules {
    /// Launch spot whenever some spot pool fits and can launch; on-demand
    /// only as the fallback (Batch's queue order spot CE → on-demand CE;
    /// Karpenter's spot-first offering order with its ICE fallback).
    pub spot_first: bool,
    /// Karpenter consolidation of under-used nodes after this long without
    /// a change (`consolidateAfter`); None: no consolidation.
    pub consolidate_after_ms: Option<Millis>,
}

/// The peer policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    BatchSpot,
    Karpenter,
    Ec2Predictive,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::BatchSpot, Peer::Karpenter, Peer::Ec2Predictive];

    pub fn name(self) -> &'static str {
        match self {
            Peer::BatchSpot => "batch_spot",
            Peer::Karpenter => "karpenter",
            Peer::Ec2Predictive => "ec2_predictive",
        }
    }

    /// The rules its clusters run with. Karpenter's `consolidateAfter` is the
    /// simulator's idle timeout (the same scale-in delay every autoscaled
    /// policy gets, so empty nodes go at the same time).
    pub fn rules(self, cfg: &SimConfig) -> ProvisionRules {
        ProvisionRules {
            spot_first: true,
            consolidate_after_ms: (self == Peer::Karpenter).then_some(cfg.idle_timeout_ms),
        }
    }

    /// The capacity commands of environment `env` (applied like Batch's
    /// `UpdateComputeEnvironment` / an ASG's minimum, see `sim::cluster`).
    pub fn commands(
        self,
        workload: &Workload,
        env: usize,
        prices: &SimPrices,
        cfg: &SimConfig,
    ) -> Vec<FloorCommand> {
        match self {
            Peer::BatchSpot | Peer::Karpenter => {
                vec![elastic_only(workload.first_event, prices, cfg)]
            }
            Peer::Ec2Predictive => {
                predictive_floor_commands(workload, env, prices, cfg, &PredictiveScaling::default())
            }
        }
    }
}

/// Every spot and on-demand pool of the price data (the instance types a
/// user lists: all of them, the most choice the peers can have).
pub fn spot_and_on_demand_pools(prices: &SimPrices) -> Vec<usize> {
    (0..prices.pools.len())
        .filter(|&p| matches!(prices.pools[p].market, Market::Spot | Market::OnDemand))
        .collect()
}

/// A purely reactive environment (`minvCpus` 0) that may launch from every
/// spot and on-demand pool.
fn elastic_only(at: Millis, prices: &SimPrices, cfg: &SimConfig) -> FloorCommand {
    FloorCommand {
        at,
        mix: Vec::new(),
        min_mcpu: 0,
        desired_mcpu: 0,
        burst_pools: spot_and_on_demand_pools(prices).into(),
        max_mcpu: cfg.max_vcpus.map(|v| v * 1000),
    }
}

#[cfg(test)]
mod tests;
