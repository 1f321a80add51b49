//! EC2 Auto Scaling predictive scaling, as AWS documents it
//! (<https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-predictive-scaling.html>):
//!
//! - the **load metric** is the group's demand in vCPUs (jobs queued or
//!   running), averaged per hour; the forecast uses up to 14 days of it and
//!   is made only once 24 hours exist;
//! - a new forecast of the next 48 hours is made every 6 hours; each hour's
//!   forecast capacity (load ÷ target utilisation) becomes the group's
//!   minimum at the start of the hour, the instances launched
//!   `SchedulingBufferTime` (default 300 s) earlier;
//! - **target tracking** covers what the forecast misses: in the simulator
//!   the same reactive top-up as every autoscaled policy (queued work that
//!   does not fit gets instances), scale-in after the idle timeout down to
//!   the forecast minimum;
//! - the **mixed instances policy** lists every type of the price data,
//!   `OnDemandPercentageAboveBaseCapacity` 0 with `price-capacity-optimized`
//!   spot: forecast capacity is launched as the cheapest spot pool per vCPU
//!   whose type holds the group's 90th-percentile job, and the top-up
//!   launches spot first, on-demand when no spot pool can serve a job.
//!
//! AWS does not publish its forecasting model; it says the forecast
//! follows daily and weekly patterns. The forecast here is the seasonal
//! mean that fits those words: the mean of the same hour on each earlier
//! day of the history, blended half and half with the same hour of the
//! earlier weeks once a week of history exists.

use super::super::cluster::FloorCommand;
use super::super::prices::SimPrices;
use super::super::report::percentile;
use super::super::trace::Workload;
use super::super::SimConfig;
use super::spot_and_on_demand_pools;
use crate::events::{Market, Millis};

const HOUR: Millis = 3_600_000;

/// The documented settings of a predictive scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictiveScaling {
    /// History needed before the first forecast.
    pub min_history_ms: Millis,
    /// History the forecast looks at, at most.
    pub max_history_ms: Millis,
    /// How often a new forecast is made.
    pub refresh_ms: Millis,
    /// How far each forecast reaches.
    pub horizon_ms: Millis,
    /// `SchedulingBufferTime`: launches this long before the hour.
    pub buffer_ms: Millis,
    /// Target utilisation of the load metric (1.0: capacity = load).
    pub target_utilization: f64,
}

impl Default for PredictiveScaling {
    fn default() -> Self {
        PredictiveScaling {
            min_history_ms: 24 * HOUR,
            max_history_ms: 14 * 24 * HOUR,
            refresh_ms: 6 * HOUR,
            horizon_ms: 48 * HOUR,
            buffer_ms: 300_000,
            target_utilization: 1.0,
        }
    }
}

/// The hourly forecast of `load` (hour `i` = `load[i]`) for hour `h`, made
/// at hour `made` (only hours before it are known). None when fewer than
/// `min_history` hours exist.
pub fn forecast_hour(load: &[f64], h: usize, made: usize, ps: &PredictiveScaling) -> Option<f64> {
    let min_h = (ps.min_history_ms / HOUR) as usize;
    let max_h = (ps.max_history_ms / HOUR) as usize;
    if made < min_h || h < made {
        return None;
    }
    let first = made.saturating_sub(max_h);
    let mean_at = |step: usize| {
        let (mut sum, mut n) = (0.0, 0);
        let mut k = 1;
        while let Some(x) = h.checked_sub(k * step) {
            if x < first {
                break;
            }
            if x < made {
                sum += load.get(x).copied().unwrap_or(0.0);
                n += 1;
            }
            k += 1;
        }
        (n > 0).then(|| sum / n as f64)
    };
    let daily = mean_at(24)?;
    Some(match mean_at(168) {
        Some(weekly) if made - first >= 168 => 0.5 * daily + 0.5 * weekly,
        _ => daily,
    })
}

/// The group's capacity commands for environment `env`: one at the start
/// (reactive only, spot first), then one per hour from the first forecast on.
pub fn predictive_floor_commands(
    workload: &Workload,
    env: usize,
    prices: &SimPrices,
    cfg: &SimConfig,
    ps: &PredictiveScaling,
) -> Vec<FloorCommand> {
    let h0 = workload.first_event - workload.first_event.rem_euclid(HOUR);
    let n = ((workload.last_event - h0) / HOUR + 2).max(1) as usize;
    let load = workload.demand_series(Some(env), h0, HOUR, n);
    let burst: std::sync::Arc<[usize]> = spot_and_on_demand_pools(prices).into();
    let max_mcpu = cfg.max_vcpus.map(|v| v * 1000);
    let fits = floor_types(workload, env, prices);
    let mut cheapest = CheapestPerVcpu::new(prices, &fits);
    let mut out = vec![FloorCommand {
        at: workload.first_event,
        mix: Vec::new(),
        min_mcpu: 0,
        desired_mcpu: 0,
        burst_pools: burst.clone(),
        max_mcpu,
    }];
    let refresh_h = (ps.refresh_ms / HOUR).max(1) as usize;
    for h in 1..n {
        let at = h0 + h as i64 * HOUR - ps.buffer_ms;
        // The latest forecast made by the launch time (every 6 h).
        let made_at = ((at - h0) / HOUR).max(0) as usize;
        let made = made_at / refresh_h * refresh_h;
        if h - made > (ps.horizon_ms / HOUR) as usize {
            continue;
        }
        let Some(f) = forecast_hour(&load, h, made, ps) else {
            continue;
        };
        let vcpus = (f / ps.target_utilization.max(1e-9)).ceil().max(0.0) as i64;
        let mix = cheapest.at(at).map(|p| vec![(p, 1)]).unwrap_or_default();
        out.push(FloorCommand {
            at,
            mix,
            min_mcpu: vcpus * 1000,
            desired_mcpu: vcpus * 1000,
            burst_pools: burst.clone(),
            max_mcpu,
        });
    }
    out
}

/// Pools whose type holds the environment's 90th-percentile job (one part
/// of it for gangs wider than every type), spot pools when there are any.
fn floor_types(workload: &Workload, env: usize, prices: &SimPrices) -> Vec<usize> {
    let mut mcpu: Vec<f64> = Vec::new();
    let mut mem: Vec<f64> = Vec::new();
    for j in workload.jobs.iter().filter(|j| j.env == env) {
        mcpu.push(j.mcpu as f64);
        mem.push(j.memory_mib as f64);
    }
    let biggest = prices
        .types
        .iter()
        .map(|t| t.vcpus as i64 * 1000)
        .max()
        .unwrap_or(0);
    let want = (percentile(&mut mcpu, 0.9) as i64).max(1);
    let need = want.min(biggest);
    // A part of a wider gang needs its share of the memory.
    let need_mem = percentile(&mut mem, 0.9) * need as f64 / want as f64;
    let ok = |p: usize| {
        let t = &prices.types[prices.pools[p].ty];
        t.vcpus as i64 * 1000 >= need && t.memory_mib as f64 >= need_mem && t.gpus == 0
    };
    let spot: Vec<usize> = (0..prices.pools.len())
        .filter(|&p| prices.pools[p].market == Market::Spot && ok(p))
        .collect();
    if !spot.is_empty() {
        return spot;
    }
    (0..prices.pools.len())
        .filter(|&p| prices.pools[p].market == Market::OnDemand && ok(p))
        .collect()
}

/// The cheapest of some pools per vCPU at rising times (one per hour over
/// the trace): each pool's curve is walked, not searched per hour.
struct CheapestPerVcpu<'a> {
    prices: &'a SimPrices,
    pools: &'a [usize],
    walk: Vec<usize>,
}

impl<'a> CheapestPerVcpu<'a> {
    fn new(prices: &'a SimPrices, pools: &'a [usize]) -> Self {
        let walk = vec![0; pools.len()];
        CheapestPerVcpu {
            prices,
            pools,
            walk,
        }
    }

    /// At `t`, no earlier than the previous call's time; ties go to the
    /// lower pool.
    fn at(&mut self, t: Millis) -> Option<usize> {
        let prices = self.prices;
        self.pools
            .iter()
            .zip(&mut self.walk)
            .map(|(&p, w)| {
                let usd = prices.pools[p].curve.at_walking(t, w);
                (
                    usd / prices.types[prices.pools[p].ty].vcpus.max(1) as f64,
                    p,
                )
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, p)| p)
    }
}
