//! The peers on hand-worked cases.

use super::ec2_predictive::{forecast_hour, predictive_floor_commands, PredictiveScaling};
use super::{Peer, ProvisionRules};
use crate::events::{Market, Millis};
use crate::sim::bound::lower_bound;
use crate::sim::cluster::{Cluster, Mode, RunStats};
use crate::sim::prices::{InstanceType, PriceCurve, SimPrices};
use crate::sim::trace::{SimJob, Workload};
use crate::sim::SimConfig;

const H: Millis = 3_600_000;

/// small: 2 vCPU, 4 GiB, $0.10/h on-demand, $0.03/h spot;
/// big: 8 vCPU, 16 GiB, $0.40 / $0.12. Pools 0..4: small od, big od,
/// small spot, big spot.
fn prices() -> SimPrices {
    let mut p = SimPrices::new();
    let s = p.add_type(InstanceType {
        name: "small".into(),
        vcpus: 2,
        memory_mib: 4096,
        gpus: 0,
    });
    let b = p.add_type(InstanceType {
        name: "big".into(),
        vcpus: 8,
        memory_mib: 16384,
        gpus: 0,
    });
    p.add_pool(s, Market::OnDemand, "r", PriceCurve::constant(0.10));
    p.add_pool(b, Market::OnDemand, "r", PriceCurve::constant(0.40));
    p.add_pool(s, Market::Spot, "r", PriceCurve::constant(0.03));
    p.add_pool(b, Market::Spot, "r", PriceCurve::constant(0.12));
    p
}

fn job(id: &str, submit: Millis, vcpus: i64, runtime_s: i64, elastic: bool) -> SimJob {
    SimJob {
        id: id.into(),
        env: 0,
        submit,
        priority: 0,
        mcpu: vcpus * 1000,
        memory_mib: 512 * vcpus,
        gpus: 0,
        runtime_ms: runtime_s * 1000,
        est_runtime_ms: Some(runtime_s * 1000),
        deadline: None,
        elastic,
        project: "p".into(),
        user: "u".into(),
        cancelled_in_queue: false,
        trace_start: Some(submit),
        trace_finish: Some(submit + runtime_s * 1000),
    }
}

fn workload(jobs: Vec<SimJob>) -> Workload {
    let first = jobs.iter().map(|j| j.submit).min().unwrap_or(0);
    let last = jobs
        .iter()
        .map(|j| j.submit + j.runtime_ms)
        .max()
        .unwrap_or(0);
    Workload {
        jobs,
        envs: vec!["ce".into()],
        first_event: first,
        last_event: last,
        ..Default::default()
    }
}

/// No random interruptions: the cases are worked out by hand.
fn cfg() -> SimConfig {
    SimConfig {
        boot_delay_ms: 120_000,
        idle_timeout_ms: 600_000,
        spot_interruptions_per_hour: 0.0,
        ..Default::default()
    }
}

fn run_peer(
    peer: Peer,
    cfg: &SimConfig,
    p: &SimPrices,
    w: &Workload,
    outages: Vec<(usize, Millis, Millis)>,
) -> RunStats {
    let cmds = peer.commands(w, 0, p, cfg);
    let horizon = w.jobs.iter().map(|j| j.submit).max().unwrap_or(0);
    Cluster::new(
        cfg,
        p,
        w.jobs.iter().collect(),
        Mode::Commanded { commands: &cmds },
        1,
        0,
        horizon,
    )
    .with_rules(peer.rules(cfg))
    .with_spot_outages(outages)
    .run()
}

fn usd(st: &RunStats, m: Market) -> f64 {
    st.cost_by_market.get(&m).copied().unwrap_or(0.0)
}

#[test]
fn batch_spot_and_karpenter_fall_back_to_on_demand_when_spot_launches_fail() {
    let p = prices();
    let cfg = cfg();
    // A 2-vCPU hour at 0 while no spot pool can launch, another at 11 h
    // when spot is back.
    let w = workload(vec![
        job("a", 0, 2, 3600, false),
        job("b", 11 * H, 2, 3600, false),
    ]);
    let outages = vec![(2, 0, 10 * H), (3, 0, 10 * H)];
    for peer in [Peer::BatchSpot, Peer::Karpenter] {
        let st = run_peer(peer, &cfg, &p, &w, outages.clone());
        assert_eq!(st.jobs_completed, 2, "{}", peer.name());
        assert!(st.spot_launch_failures >= 1, "{}", peer.name());
        // Each instance: 120 s boot + 3600 s job + 600 s idle = 4320 s.
        let od = 0.10 * 4320.0 / 3600.0;
        let spot = 0.03 * 4320.0 / 3600.0;
        assert!((usd(&st, Market::OnDemand) - od).abs() < 1e-9, "{st:?}");
        assert!((usd(&st, Market::Spot) - spot).abs() < 1e-9, "{st:?}");
    }
    // Without the outage both hours run on spot.
    let st = run_peer(Peer::BatchSpot, &cfg, &p, &w, Vec::new());
    assert_eq!(st.spot_launch_failures, 0);
    assert_eq!(usd(&st, Market::OnDemand), 0.0);
}

#[test]
fn karpenter_replaces_two_under_used_nodes_by_one() {
    let p = prices();
    let cfg = cfg();
    // Two 6-vCPU rigid jobs (1000 s) and two 2-vCPU elastic ones (10 h):
    // each pair lands on its own big spot node. Once the rigid jobs are
    // done the two nodes each run 2 of 8 vCPUs.
    let w = workload(vec![
        job("a", 0, 6, 1000, false),
        job("b", 0, 2, 36_000, true),
        job("c", 0, 6, 1000, false),
        job("d", 0, 2, 36_000, true),
    ]);
    let st = run_peer(Peer::Karpenter, &cfg, &p, &w, Vec::new());
    assert_eq!(st.jobs_completed, 4);
    assert_eq!(st.instances_launched, 3, "two nodes, then one replacement");
    assert_eq!(st.consolidations, 2);
    // Nodes 1 and 2: launched at 0, rigid jobs end at 1120 s; unchanged
    // from the 1200 s look, so at 1800 s the replacement launches, ready at
    // 1920 s when the elastic jobs move (keeping their progress) and the two
    // old nodes go. The elastic jobs end at 120 + 36000 s; the replacement
    // idles 600 s more.
    let expect = 0.12 * (2.0 * 1920.0 + (36_720.0 - 1800.0)) / 3600.0;
    assert!((usd(&st, Market::Spot) - expect).abs() < 1e-9, "{st:?}");
    // batch_spot has no consolidation: both nodes stay until the end.
    let b = run_peer(Peer::BatchSpot, &cfg, &p, &w, Vec::new());
    assert_eq!(b.consolidations, 0);
    assert!((usd(&b, Market::Spot) - 0.12 * 2.0 * 36_720.0 / 3600.0).abs() < 1e-9);
    // Rigid jobs are never evicted (they would restart from zero).
    let rigid = workload(vec![
        job("a", 0, 6, 1000, false),
        job("b", 0, 2, 36_000, false),
        job("c", 0, 6, 1000, false),
        job("d", 0, 2, 36_000, false),
    ]);
    let r = run_peer(Peer::Karpenter, &cfg, &p, &rigid, Vec::new());
    assert_eq!(r.consolidations, 0);
    assert_eq!(r.instances_launched, 2);
}

#[test]
fn predictive_scaling_is_idle_before_a_day_of_history() {
    let p = prices();
    let cfg = cfg();
    // 4 vCPUs of work every hour for two days.
    let jobs: Vec<SimJob> = (0..48)
        .map(|h| job(&format!("j{h}"), h * H, 4, 3600, false))
        .collect();
    let w = workload(jobs);
    let cmds = predictive_floor_commands(&w, 0, &p, &cfg, &PredictiveScaling::default());
    // Before 24 h of history nothing is pre-launched: only the first
    // command (reactive, spot first) and no minimum.
    for c in &cmds {
        if c.at < 24 * H {
            assert_eq!(c.min_mcpu, 0, "at {} h", c.at as f64 / H as f64);
            assert_eq!(c.desired_mcpu, 0);
        }
    }
    // The first forecast is made at 24 h (every 6 h) and the next hour's
    // capacity is launched 300 s ahead: 4 vCPUs on the cheapest spot pool
    // per vCPU whose type holds the 90th-percentile job (big spot, pool 3).
    let first = cmds.iter().find(|c| c.min_mcpu > 0).expect("a forecast");
    assert_eq!(first.at, 25 * H - 300_000);
    assert_eq!(first.min_mcpu, 4000);
    assert_eq!(first.mix, vec![(3, 1)]);
    // And the simulated group launches nothing before a job needs it.
    let st = run_peer(Peer::Ec2Predictive, &cfg, &p, &w, Vec::new());
    assert_eq!(st.jobs_completed, 48);
}

#[test]
fn forecast_is_the_seasonal_mean_of_the_known_past() {
    let ps = PredictiveScaling::default();
    // 8 vCPUs at hour 10 of each day, nothing else.
    let load: Vec<f64> = (0..24 * 10)
        .map(|h| if h % 24 == 10 { 8.0 } else { 0.0 })
        .collect();
    assert_eq!(forecast_hour(&load, 34, 23, &ps), None, "under 24 h");
    assert_eq!(forecast_hour(&load, 34, 24, &ps), Some(8.0));
    assert_eq!(forecast_hour(&load, 35, 24, &ps), Some(0.0));
    // With a week of history the weekly mean joins half and half.
    let mut l2 = load.clone();
    l2[10 + 24 * 2] = 0.0; // one day without the peak
    let f = forecast_hour(&l2, 10 + 24 * 8, 24 * 8, &ps).unwrap();
    let daily = 8.0 * 7.0 / 8.0;
    let weekly = 8.0;
    assert!((f - (0.5 * daily + 0.5 * weekly)).abs() < 1e-12, "{f}");
}

#[test]
fn lower_bound_is_the_binding_resource_on_the_cheapest_pool() {
    let p = prices();
    // 2 vCPUs for an hour: $0.015 per vCPU-hour on either spot type.
    let w = workload(vec![job("a", 0, 2, 3600, false)]);
    let lb = lower_bound(&w, &p);
    assert!((lb.usd - 0.03).abs() < 1e-12, "{lb:?}");
    assert!((lb.on_demand_usd - 0.10).abs() < 1e-12, "{lb:?}");
    // 1 vCPU with 16 GiB: memory binds (a whole big, or four smalls).
    let mut j = job("m", 0, 1, 3600, false);
    j.memory_mib = 16384;
    let lb = lower_bound(&workload(vec![j]), &p);
    assert!((lb.usd - 0.12).abs() < 1e-12, "{lb:?}");
    assert!((lb.on_demand_usd - 0.40).abs() < 1e-12, "{lb:?}");
}

#[test]
fn rules_differ_only_where_the_peers_do() {
    let cfg = cfg();
    assert_eq!(
        Peer::Karpenter.rules(&cfg),
        ProvisionRules {
            spot_first: true,
            consolidate_after_ms: Some(600_000)
        }
    );
    assert_eq!(Peer::BatchSpot.rules(&cfg).consolidate_after_ms, None);
    assert_eq!(Peer::Ec2Predictive.rules(&cfg).consolidate_after_ms, None);
}
