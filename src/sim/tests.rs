//! Unit tests of the simulator's mechanics and of each policy on tiny,
//! hand-made traces whose outcome can be worked out by hand.

use super::cluster::{gang_parts, gang_shapes, Cluster, FloorCommand, GangShape, Mode, RunStats};
use super::policy::{floor_commands, run_backtest, BacktestInput, CommandSource, PolicyKind};
use super::prices::{InstanceType, PriceCurve, SimPrices};
use super::report::TraceInfo;
use super::trace::{SimJob, Workload};
use super::SimConfig;
use crate::events::{Event, InstanceAllocation, Market, Millis, PreemptionAction, ScalingCommand};
use crate::forecast::Forecaster;
use std::collections::BTreeMap;
use std::sync::Arc;

const H: i64 = 3_600_000;

/// small: 2 vCPU, $0.10/h on-demand, $0.03/h spot; big: 8 vCPU, $0.40 / $0.12.
fn vcpus_of(p: &SimPrices, pool: usize) -> i64 {
    p.types[p.pools[pool].ty].vcpus as i64 * 1000
}

/// From t = 0, keep `n` instances of `pool` up (min = desired) and burst
/// into that pool only.
fn keep(p: &SimPrices, pool: usize, n: i64) -> FloorCommand {
    FloorCommand {
        at: 0,
        mix: vec![(pool, n as u32)],
        min_mcpu: n * vcpus_of(p, pool),
        desired_mcpu: n * vcpus_of(p, pool),
        burst_pools: vec![pool].into(),
        max_mcpu: None,
    }
}

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

fn job(id: &str, submit: i64, vcpus: i64, runtime_s: i64, priority: i32) -> SimJob {
    SimJob {
        id: id.into(),
        env: 0,
        submit,
        priority,
        mcpu: vcpus * 1000,
        memory_mib: 512 * vcpus,
        gpus: 0,
        runtime_ms: runtime_s * 1000,
        est_runtime_ms: Some(runtime_s * 1000),
        deadline: Some(submit + 2 * runtime_s * 1000 + 300_000),
        elastic: false,
        project: "p".into(),
        user: "u".into(),
        cancelled_in_queue: false,
        trace_start: Some(submit),
        trace_finish: Some(submit + runtime_s * 1000),
    }
}

fn run(cfg: &SimConfig, p: &SimPrices, jobs: &[SimJob], mode: Mode<'_>, seed: u64) -> RunStats {
    let horizon = jobs.iter().map(|j| j.submit).max().unwrap_or(0);
    Cluster::new(cfg, p, jobs.iter().collect(), mode, seed, 0, horizon).run()
}

fn cost(st: &RunStats) -> f64 {
    st.cost_by_market.values().sum()
}

#[test]
fn billing_is_per_second_with_a_minimum() {
    let p = prices();
    let cfg = SimConfig {
        boot_delay_ms: 0,
        idle_timeout_ms: 0,
        ..Default::default()
    };
    // 10 s of work on one small instance: billed the 60 s minimum.
    let st = run(&cfg, &p, &[job("a", 0, 2, 10, 0)], Mode::Reactive, 1);
    assert!(
        (cost(&st) - 0.10 * 60.0 / 3600.0).abs() < 1e-12,
        "{}",
        cost(&st)
    );
    // 1000 s: billed per second.
    let st = run(&cfg, &p, &[job("a", 0, 2, 1000, 0)], Mode::Reactive, 1);
    assert!(
        (cost(&st) - 0.10 * 1000.0 / 3600.0).abs() < 1e-12,
        "{}",
        cost(&st)
    );
    assert_eq!(st.jobs_completed, 1);
    assert!((st.busy_mcpu_ms / st.billed_mcpu_ms - 1.0).abs() < 1e-12);
}

#[test]
fn spot_is_billed_along_its_price_curve() {
    let mut p = prices();
    let s = p.type_index("small").unwrap();
    // Spot doubles after one hour.
    p.add_pool(
        s,
        Market::Spot,
        "r",
        PriceCurve::from_points(vec![(0, 0.03), (H, 0.06)]).unwrap(),
    );
    let pool = p.pool("small", Market::Spot, "r").unwrap();
    let cfg = SimConfig {
        boot_delay_ms: 0,
        spot_interruptions_per_hour: 0.0,
        ..Default::default()
    };
    let cmds = [keep(&p, pool, 1)];
    let jobs = [job("a", 0, 2, 7200, 0)];
    let st = Cluster::new(
        &cfg,
        &p,
        jobs.iter().collect(),
        Mode::Commanded { commands: &cmds },
        1,
        0,
        0,
    )
    .run();
    // The floor instance lives until the last job finishes (2 h): 1 h at
    // 0.03 + 1 h at 0.06.
    assert!((cost(&st) - 0.09).abs() < 1e-9, "{}", cost(&st));
    assert_eq!(
        st.cost_by_market.get(&Market::Spot).copied().unwrap_or(0.0),
        cost(&st)
    );
}

#[test]
fn reactive_pays_the_boot_delay_and_scales_in_after_idle_timeout() {
    let p = prices();
    let cfg = SimConfig::default();
    let st = run(&cfg, &p, &[job("a", 0, 2, 600, 0)], Mode::Reactive, 1);
    assert_eq!(st.waits_ms, vec![120_000]);
    // Billed: boot 120 s + run 600 s + idle timeout 600 s on the cheapest fit.
    let want = 0.10 * (120.0 + 600.0 + 600.0) / 3600.0;
    assert!((cost(&st) - want).abs() < 1e-9, "{} vs {want}", cost(&st));
    assert_eq!(st.instances_launched, 1);
}

#[test]
fn reactive_reuses_an_idle_instance_before_its_timeout() {
    let p = prices();
    let cfg = SimConfig::default();
    // Second job arrives 5 min after the first finished: same instance, no boot.
    let jobs = [job("a", 0, 2, 60, 0), job("b", 480_000, 2, 60, 0)];
    let st = run(&cfg, &p, &jobs, Mode::Reactive, 1);
    assert_eq!(st.instances_launched, 1);
    assert_eq!(st.waits_ms, vec![120_000, 0]);
}

#[test]
fn reactive_best_fit_sizes_to_the_queue() {
    let p = prices();
    let cfg = SimConfig::default();
    // Four 2-vCPU jobs at once: one 8-vCPU instance is as cheap per vCPU as
    // four small ones; the tie goes to the smaller type, so 4 small.
    let jobs: Vec<SimJob> = (0..4)
        .map(|i| job(&format!("j{i}"), 0, 2, 600, 0))
        .collect();
    let st = run(&cfg, &p, &jobs, Mode::Reactive, 1);
    assert_eq!(st.instances_launched, 4);
    assert!(st.waits_ms.iter().all(|&w| w == 120_000));
    // A 6-vCPU job only fits the big type.
    let st = run(&cfg, &p, &[job("x", 0, 6, 600, 0)], Mode::Reactive, 1);
    assert_eq!(st.instances_launched, 1);
    let want = 0.40 * (120.0 + 600.0 + 600.0) / 3600.0;
    assert!((cost(&st) - want).abs() < 1e-9);
}

#[test]
fn packing_follows_priority_then_submit_time_and_backfills() {
    let p = prices();
    let cfg = SimConfig::default();
    let pool = p.pool("small", Market::OnDemand, "r").unwrap();
    // One 2-vCPU instance; three 2-vCPU jobs arrive together.
    let jobs = [
        job("low", 0, 2, 100, 1),
        job("high", 0, 2, 100, 5),
        job("mid", 0, 2, 100, 3),
    ];
    let st = run(&cfg, &p, &jobs, Mode::Static { pool, count: 1 }, 1);
    assert_eq!(st.waits_ms, vec![200_000, 0, 100_000]);

    // Backfill: a job too big for the free space does not block a small one.
    let pool_b = p.pool("big", Market::OnDemand, "r").unwrap();
    let jobs = [
        job("run", 0, 6, 1000, 0),
        job("wide", 1000, 4, 100, 9),
        job("narrow", 2000, 2, 100, 0),
    ];
    let st = run(
        &cfg,
        &p,
        &jobs,
        Mode::Static {
            pool: pool_b,
            count: 1,
        },
        1,
    );
    assert_eq!(st.waits_ms, vec![0, 999_000, 0]);
}

#[test]
fn jobs_larger_than_any_type_run_as_a_gang() {
    let p = prices();
    assert_eq!(gang_parts(&p, 20_000, 4096, 0), Some((3, 6667, 1366, 0)));
    let cfg = SimConfig::default();
    let st = run(&cfg, &p, &[job("mpi", 0, 20, 600, 0)], Mode::Reactive, 1);
    assert_eq!(st.instances_launched, 3);
    assert_eq!(st.jobs_completed, 1);
    assert_eq!(st.waits_ms, vec![120_000]);
}

/// A 448-vCPU giant sold on-demand only (`giant_od_per_vcpu`), and a
/// 96-vCPU type at $0.05/vCPU-h on-demand, $0.015 on spot.
fn giant_prices(giant_od_per_vcpu: f64) -> SimPrices {
    let mut p = SimPrices::new();
    let g = p.add_type(InstanceType {
        name: "giant".into(),
        vcpus: 448,
        memory_mib: 448 * 8192,
        gpus: 0,
    });
    let c = p.add_type(InstanceType {
        name: "c96".into(),
        vcpus: 96,
        memory_mib: 96 * 2048,
        gpus: 0,
    });
    p.add_pool(
        g,
        Market::OnDemand,
        "r",
        PriceCurve::constant(448.0 * giant_od_per_vcpu),
    );
    p.add_pool(c, Market::OnDemand, "r", PriceCurve::constant(96.0 * 0.05));
    p.add_pool(c, Market::Spot, "r", PriceCurve::constant(96.0 * 0.015));
    p
}

/// (instance type, market) pairs a run paid for.
fn paid_for(st: &RunStats) -> Vec<(String, Market)> {
    st.cost_by_type.keys().cloned().collect()
}

#[test]
fn wide_jobs_may_run_as_a_gang_of_smaller_types() {
    let p = giant_prices(0.03);
    let shapes = gang_shapes(&p, 300_000, 300 * 512, 0);
    let parts: Vec<u32> = shapes.iter().map(|s| s.parts).collect();
    assert_eq!(parts, vec![1, 4]);
    assert_eq!(
        shapes[1],
        GangShape {
            parts: 4,
            part_mcpu: 75_000,
            part_mem: 38_400,
            part_gpu: 0
        }
    );
    // Jobs no wider than the smallest part size have one split only.
    assert_eq!(gang_shapes(&p, 16_000, 1024, 0).len(), 1);
    let cfg = SimConfig::default();
    let jobs = [job("mpi", 0, 300, 5 * 3600, 0)];
    // On-demand BEST_FIT over split × type: the giant at $0.03/vCPU-h
    // beats four 96-vCPU machines at $0.05 ...
    let st = run(&cfg, &p, &jobs, Mode::Reactive, 1);
    assert_eq!(paid_for(&st), vec![("giant".to_string(), Market::OnDemand)]);
    assert_eq!(st.instances_launched, 1);
    // ... and loses to them at $0.06.
    let dear = giant_prices(0.06);
    let st = run(&cfg, &dear, &jobs, Mode::Reactive, 1);
    assert_eq!(paid_for(&st), vec![("c96".to_string(), Market::OnDemand)]);
    assert_eq!(st.instances_launched, 4);
    assert_eq!(st.jobs_completed, 1);
}

#[test]
fn spot_gang_against_on_demand_giant_flips_with_the_interruption_rate() {
    let p = giant_prices(0.03);
    let all: Vec<usize> = (0..p.pools.len()).collect();
    let burst = [FloorCommand {
        at: 0,
        mix: Vec::new(),
        min_mcpu: 0,
        desired_mcpu: 0,
        burst_pools: all.into(),
        max_mcpu: None,
    }];
    let jobs = [job("mpi", 0, 300, 5 * 3600, 0)];
    let at_rate = |rate: f64| {
        let cfg = SimConfig {
            spot_interruptions_per_hour: rate,
            ..SimConfig::default()
        };
        run(&cfg, &p, &jobs, Mode::Commanded { commands: &burst }, 7)
    };
    // Rare reclaims: 4 × 96 vCPUs on spot ($0.0194/useful vCPU-h after
    // risk) beat the giant ($0.0448).
    let calm = at_rate(0.001);
    assert_eq!(paid_for(&calm)[0], ("c96".to_string(), Market::Spot));
    assert!(!paid_for(&calm).contains(&("giant".to_string(), Market::OnDemand)));
    // At 0.1/h a 4-part gang of 5 h restarts so often (stretch
    // (e^2 − 1)/2 = 3.2) that the on-demand giant is cheaper.
    let stormy = at_rate(0.1);
    assert_eq!(
        paid_for(&stormy),
        vec![("giant".to_string(), Market::OnDemand)]
    );
    assert_eq!(stormy.preemptions, 0);
    assert_eq!(stormy.jobs_completed, 1);
}

fn spot_floor_run(seed: u64, elastic: bool) -> RunStats {
    let p = prices();
    let pool = p.pool("big", Market::Spot, "r").unwrap();
    let cfg = SimConfig {
        spot_interruptions_per_hour: 2.0,
        ..Default::default()
    };
    let cmds = [keep(&p, pool, 2)];
    let mut jobs: Vec<SimJob> = (0..6)
        .map(|i| job(&format!("j{i}"), 600_000 * i, 8, 3600, 0))
        .collect();
    for j in &mut jobs {
        j.elastic = elastic;
    }
    let h = jobs.last().unwrap().submit;
    Cluster::new(
        &cfg,
        &p,
        jobs.iter().collect(),
        Mode::Commanded { commands: &cmds },
        seed,
        0,
        h,
    )
    .run()
}

#[test]
fn spot_interruptions_restart_jobs_deterministically() {
    let a = spot_floor_run(7, false);
    let b = spot_floor_run(7, false);
    assert!(
        a.preemptions > 0,
        "rate 2/h over hours of work must interrupt"
    );
    assert_eq!(a.preemptions, b.preemptions);
    assert_eq!(cost(&a), cost(&b));
    assert_eq!(a.waits_ms, b.waits_ms);
    assert_eq!(a.jobs_completed, 6);
    let c = spot_floor_run(8, false);
    assert!(c.preemptions != a.preemptions || cost(&c) != cost(&a));
}

#[test]
fn elastic_jobs_keep_progress_when_interrupted() {
    // Same seed, same interruptions at launch; elastic work is not redone.
    let rigid = spot_floor_run(7, false);
    let elastic = spot_floor_run(7, true);
    assert!(rigid.preemptions > 0);
    assert!(
        elastic.busy_mcpu_ms < rigid.busy_mcpu_ms,
        "elastic {} rigid {}",
        elastic.busy_mcpu_ms,
        rigid.busy_mcpu_ms
    );
    // Elastic busy time is exactly the work (6 jobs × 8 vCPU × 1 h).
    assert!((elastic.busy_mcpu_ms - 6.0 * 8000.0 * H as f64).abs() < 1.0);
}

#[test]
fn price_spike_above_on_demand_reclaims_spot() {
    let mut p = prices();
    let s = p.type_index("small").unwrap();
    p.add_pool(
        s,
        Market::Spot,
        "r",
        PriceCurve::from_points(vec![(0, 0.03), (1_800_000, 0.5), (1_900_000, 0.03)]).unwrap(),
    );
    let pool = p.pool("small", Market::Spot, "r").unwrap();
    assert_eq!(p.pools[pool].spikes, vec![1_800_000]);
    let cfg = SimConfig {
        spot_interruptions_per_hour: 0.0,
        boot_delay_ms: 0,
        ..Default::default()
    };
    let cmds = [keep(&p, pool, 1)];
    let jobs = [job("a", 0, 2, 3600, 0)];
    let st = Cluster::new(
        &cfg,
        &p,
        jobs.iter().collect(),
        Mode::Commanded { commands: &cmds },
        1,
        0,
        0,
    )
    .run();
    assert_eq!(st.preemptions, 1);
    assert_eq!(st.jobs_completed, 1);
    assert_eq!(st.end, 1_800_000 + 3_600_000);
}

#[test]
fn deadline_misses_are_counted() {
    let p = prices();
    let pool = p.pool("small", Market::OnDemand, "r").unwrap();
    let cfg = SimConfig::default();
    let mut a = job("a", 0, 2, 1000, 0);
    let mut b = job("b", 0, 2, 1000, 0);
    a.deadline = Some(1_000_000);
    b.deadline = Some(1_500_000); // starts at 1000 s, ends at 2000 s: missed
    let st = run(&cfg, &p, &[a, b], Mode::Static { pool, count: 1 }, 1);
    assert_eq!((st.deadline_jobs, st.deadline_missed), (2, 1));
}

/// Commands handed in by the test instead of the engine.
struct Fixed(Vec<ScalingCommand>);

impl CommandSource for Fixed {
    fn commands(&self, _: &[Event], _: Option<Arc<dyn Forecaster>>) -> Vec<ScalingCommand> {
        self.0.clone()
    }
}

fn workload(jobs: Vec<SimJob>) -> Workload {
    let last = jobs.iter().map(|j| j.submit).max().unwrap();
    Workload {
        first_event: 0,
        last_event: last,
        envs: vec!["ce".into()],
        jobs,
        ..Default::default()
    }
}

fn prebook(at: i64, market: Market, count: i32) -> ScalingCommand {
    ScalingCommand {
        command_id: format!("c{at}"),
        issued_at: at,
        compute_environment: "ce".into(),
        min_vcpus: 0,
        desired_vcpus: 8 * count as i64,
        max_vcpus: 0,
        instance_mix: vec![InstanceAllocation {
            instance_type: "big".into(),
            market,
            region: "r".into(),
            count,
        }],
        constraints: BTreeMap::new(),
        forecast: Vec::new(),
        reason: "test".into(),
    }
}

#[test]
fn policies_side_by_side_on_a_tiny_trace() {
    let p = prices();
    // A burst of eight 8-vCPU one-hour jobs every two hours, known ahead.
    let mut jobs = Vec::new();
    for k in 0..4 {
        for i in 0..8 {
            jobs.push(job(&format!("j{k}-{i}"), k * 2 * H + 600_000, 8, 3600, 0));
        }
    }
    let w = workload(jobs);
    let cfg = SimConfig {
        spot_interruptions_per_hour: 0.0,
        ..Default::default()
    };
    // The "forecast": 8 big spot instances from 5 min before each burst.
    let mut cmds = Vec::new();
    for k in 0..4 {
        cmds.push(prebook(k * 2 * H + 300_000, Market::Spot, 8));
        cmds.push(prebook(k * 2 * H + 600_000 + H, Market::Spot, 0));
    }
    let src = Fixed(cmds);
    let policies = PolicyKind::ALL;
    let input = BacktestInput {
        events: &[],
        workload: &w,
        prices: &p,
        cfg: &cfg,
        policies: &policies,
        threads: 4,
        source: &src,
        oracle: None,
        trace: TraceInfo::default(),
        budgets: &[],
    };
    let rep = run_backtest(&input, &|_| {}).unwrap();
    let r = &rep.policies["reactive"];
    let s = &rep.policies["static"];
    let pr = &rep.policies["predictive"];
    // Reactive pays a boot for every burst (instances idle 1 h > timeout).
    assert_eq!(r.queue_wait_p50_s, 120.0);
    assert_eq!(r.instances_launched, 32);
    assert_eq!(r.jobs_completed, 32);
    // Predictive pre-booted the capacity: no wait, and spot is cheaper.
    assert_eq!(pr.queue_wait_p50_s, 0.0);
    assert!(
        pr.cost_usd < 0.5 * r.cost_usd,
        "{} vs {}",
        pr.cost_usd,
        r.cost_usd
    );
    assert!(pr.cost_by_market.contains_key("SPOT"));
    assert!(pr.deadline_miss_rate <= r.deadline_miss_rate);
    // Static: p90 of demand (64 vCPU during bursts, half the time) → a fixed
    // on-demand fleet that is up the whole time: no boots, lower utilisation.
    assert_eq!(s.queue_wait_p50_s, 0.0);
    assert!(s.utilization < r.utilization);
    assert_eq!(
        s.cost_by_market.keys().collect::<Vec<_>>(),
        vec!["ON_DEMAND"]
    );
    // Same input, same report, whether the policies ran side by side or one
    // after the other.
    let sequential = BacktestInput {
        threads: 1,
        ..input
    };
    let again = run_backtest(&sequential, &|_| {}).unwrap();
    assert_eq!(rep.to_json(), again.to_json());
    assert_eq!(
        rep.series["reactive"].capacity_vcpus.len(),
        again.series["reactive"].capacity_vcpus.len()
    );
}

#[test]
fn floor_commands_carry_min_desired_and_follow_markets() {
    let p = prices();
    let w = workload(vec![job("a", 0, 2, 10, 0)]);
    let mut c = prebook(0, Market::Spot, 1);
    c.desired_vcpus = 20;
    let (f, unknown) = floor_commands(&[c], &w, &p);
    assert_eq!(unknown, 0);
    let spot_big = p.pool("big", Market::Spot, "r").unwrap();
    // The mix names 1 × big on spot; the simulator launches from it up to
    // desired (20 vCPU) and keeps min alive.
    assert_eq!(f[0][0].mix, vec![(spot_big, 1)]);
    assert_eq!(f[0][0].desired_mcpu, 20_000);
    assert_eq!(f[0][0].min_mcpu, 0);
    // Top-up from the spot market only.
    assert!(f[0][0]
        .burst_pools
        .iter()
        .all(|&q| p.pools[q].market == Market::Spot));
    // With the policy's markets as a constraint, work no spot type can
    // host may burst to on-demand.
    let mut c = prebook(0, Market::Spot, 1);
    c.constraints
        .insert("markets".into(), "RESERVED,SPOT,ON_DEMAND".into());
    let (f, _) = floor_commands(&[c], &w, &p);
    let od = p.pool("big", Market::OnDemand, "r").unwrap();
    assert!(f[0][0].burst_pools.contains(&od));
}

// --- Budget commands (closed loop) -------------------------------------

/// A commanded cluster with no schedule, started, for applying commands
/// by hand as the closed-loop runner does.
fn live<'a>(cfg: &'a SimConfig, p: &'a SimPrices, jobs: &'a [SimJob]) -> Cluster<'a> {
    let horizon = jobs.iter().map(|j| j.submit).max().unwrap_or(0);
    let mut c = Cluster::new(
        cfg,
        p,
        jobs.iter().collect(),
        Mode::Commanded { commands: &[] },
        1,
        0,
        horizon,
    );
    c.start();
    c
}

fn no_boot() -> SimConfig {
    SimConfig {
        boot_delay_ms: 0,
        spot_interruptions_per_hour: 0.0,
        ..Default::default()
    }
}

#[test]
fn queue_holds_a_job_until_resume() {
    let (cfg, p) = (no_boot(), prices());
    let jobs = [job("a", 0, 2, 1000, 0)];
    let mut c = live(&cfg, &p, &jobs);
    // QUEUE at submission, before the simulator sees the job arrive.
    assert!(c.apply_preemption(0, 0, PreemptionAction::Queue));
    c.advance(500_000);
    assert!(c.take_completions().is_empty());
    assert!(c.apply_preemption(600_000, 0, PreemptionAction::Resume));
    assert!(!c.apply_preemption(600_000, 0, PreemptionAction::Resume));
    c.advance(Millis::MAX);
    let done = c.take_completions();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].first_start, done[0].finished_at),
        (600_000, 1_600_000)
    );
    let st = c.finish();
    assert_eq!(
        (st.budget_held, st.budget_preemptions, st.jobs_completed),
        (1, 0, 1)
    );
    // Charged only while it ran: 1000 s of a whole small on-demand instance.
    let spend: f64 = st
        .spend
        .iter()
        .map(|s| s.cost_within(&p, Millis::MIN, Millis::MAX))
        .sum();
    assert!((spend - 0.10 * 1000.0 / 3600.0).abs() < 1e-12, "{spend}");
}

#[test]
fn queued_without_resume_never_runs() {
    let (cfg, p) = (no_boot(), prices());
    let jobs = [job("a", 0, 2, 1000, 0), job("b", 0, 2, 1000, 0)];
    let mut c = live(&cfg, &p, &jobs);
    c.apply_preemption(0, 1, PreemptionAction::Queue);
    c.advance(Millis::MAX);
    let st = c.finish();
    assert_eq!(st.jobs_completed, 1);
    assert!(st.spend.iter().all(|s| s.job == 0));
    assert_eq!(st.budget_held, 1);
}

#[test]
fn preempt_restarts_rigid_jobs_and_keeps_elastic_progress() {
    let (cfg, p) = (no_boot(), prices());
    for elastic in [false, true] {
        let mut a = job("a", 0, 2, 1000, 0);
        a.elastic = elastic;
        let jobs = [a];
        let mut c = live(&cfg, &p, &jobs);
        c.advance(400_000);
        assert!(c.apply_preemption(400_000, 0, PreemptionAction::Preempt));
        c.advance(900_000);
        assert!(c.take_completions().is_empty(), "held while preempted");
        c.apply_preemption(1_000_000, 0, PreemptionAction::Resume);
        c.advance(Millis::MAX);
        let done = c.take_completions();
        // Rigid: all 1000 s again; elastic: the 600 s left.
        let want = if elastic { 1_600_000 } else { 2_000_000 };
        assert_eq!(done[0].finished_at, want, "elastic {elastic}");
        assert_eq!(done[0].first_start, 0);
        let st = c.finish();
        assert_eq!(st.budget_preemptions, 1);
        assert_eq!(st.preemptions, 0, "spot interruptions are counted apart");
        // The lost 400 s of the rigid run were paid for too.
        let ran: i64 = st.spend.iter().map(|s| s.end - s.start).sum();
        assert_eq!(ran, if elastic { 1_000_000 } else { 1_400_000 });
    }
}

#[test]
fn migrate_moves_elastic_work_to_cheaper_ready_capacity() {
    let (cfg, p) = (no_boot(), prices());
    let spot = p.pool("small", Market::Spot, "r").unwrap();
    let od = p.pool("small", Market::OnDemand, "r").unwrap();
    let mut a = job("a", 0, 2, 1000, 0);
    a.elastic = true;
    let jobs = [a, job("b", 0, 2, 1000, 0)];
    let mut c = live(&cfg, &p, &jobs);
    c.advance(0); // both start on on-demand instances (no mix named)
                  // Nothing cheaper is ready yet: MIGRATE leaves the job where it is.
    assert!(!c.apply_preemption(0, 0, PreemptionAction::Migrate));
    c.apply_floor(
        100_000,
        &FloorCommand {
            at: 100_000,
            mix: vec![(spot, 2)],
            // The two busy on-demand instances count toward desired: ask
            // for two more, from the spot mix.
            min_mcpu: 4 * vcpus_of(&p, spot),
            desired_mcpu: 4 * vcpus_of(&p, spot),
            burst_pools: vec![spot].into(),
            max_mcpu: None,
        },
    );
    c.advance(100_000); // the spot instances are ready
    assert!(c.apply_preemption(100_000, 0, PreemptionAction::Migrate));
    // Rigid jobs would lose their work: they stay.
    assert!(!c.apply_preemption(100_000, 1, PreemptionAction::Migrate));
    c.advance(Millis::MAX);
    let done = c.take_completions();
    let a_done = done.iter().find(|d| d.job == 0).unwrap();
    assert_eq!(a_done.finished_at, 1_000_000, "kept its progress");
    assert_eq!(a_done.pool, Some(spot));
    let st = c.finish();
    assert_eq!(st.migrations, 1);
    let a_pools: Vec<(usize, i64, i64)> = st
        .spend
        .iter()
        .filter(|s| s.job == 0)
        .map(|s| (s.pool, s.start, s.end))
        .collect();
    assert_eq!(a_pools, vec![(od, 0, 100_000), (spot, 100_000, 1_000_000)]);
}

#[test]
fn budget_book_measures_overrun_per_scope_and_window() {
    use super::budget::BudgetBook;
    use super::cluster::SpendSegment;
    use crate::events::{BudgetAllocation, BudgetScope};
    const DAY: i64 = 86_400_000;
    let p = prices();
    let od = p.pool("small", Market::OnDemand, "r").unwrap();
    let mut a = job("a", 0, 2, 1000, 0);
    a.project = "climate".into();
    let b = job("b", 0, 2, 1000, 0); // project p, no budget
    let jobs: Vec<&SimJob> = vec![&a, &b];
    // a: 36 h on a whole small on-demand instance ($0.10/h) from 12:00 day 0
    // ($1.20 on day 0, $2.40 on day 1); b: 10 h.
    let segs = [
        SpendSegment {
            job: 0,
            start: DAY / 2,
            end: 2 * DAY,
            pool: od,
            share: 1.0,
        },
        SpendSegment {
            job: 1,
            start: 0,
            end: 10 * H,
            pool: od,
            share: 0.5,
        },
    ];
    let alloc = |period: Option<&str>, usd: f64| BudgetAllocation {
        at: 0,
        scope: BudgetScope::Project,
        id: "climate".into(),
        usd,
        period: period.map(str::to_string),
    };
    let mut book = BudgetBook::new(&[alloc(Some("day"), 2.0)]);
    book.charge(&jobs, &segs, &p);
    assert!((book.spent_usd() - 3.6).abs() < 1e-9);
    assert!(
        (book.overrun_usd() - 0.4).abs() < 1e-9,
        "{}",
        book.overrun_usd()
    );
    // Day 1 ($2.40 of $2) overran, day 0 ($1.20) did not: the breakdown
    // names the window.
    let by = book.overrun_by_scope();
    assert_eq!(by.len(), 1, "{by:?}");
    assert!(
        (by["project:climate@1970-01-02"] - 0.4).abs() < 1e-9,
        "{by:?}"
    );
    let mut book = BudgetBook::new(&[alloc(None, 5.0)]);
    book.charge(&jobs, &segs, &p);
    assert_eq!(book.overrun_usd(), 0.0);
    assert!(book.overrun_by_scope().is_empty());
    // Both jobs' user (`u`) has a budget: a's $3.60 plus b's half instance
    // for 10 h ($0.50).
    let mut book = BudgetBook::new(&[BudgetAllocation {
        at: 0,
        scope: BudgetScope::User,
        id: "u".into(),
        usd: 0.2,
        period: None,
    }]);
    book.charge(&jobs, &segs, &p);
    assert!((book.overrun_usd() - (3.6 + 0.5 - 0.2)).abs() < 1e-9);
    let by = book.overrun_by_scope();
    assert_eq!(by.keys().collect::<Vec<_>>(), ["user:u"]);
}

#[test]
fn commands_keep_min_preboot_desired_and_scale_the_rest_in() {
    let p = prices();
    let small = p.pool("small", Market::OnDemand, "r").unwrap();
    let cfg = SimConfig {
        boot_delay_ms: 0,
        idle_timeout_ms: 600_000,
        ..Default::default()
    };
    // min 2 vCPU (1 small), desired 6 vCPU (3 small), from t = 0.
    let cmds = [FloorCommand {
        at: 0,
        mix: vec![(small, 1)],
        min_mcpu: 2_000,
        desired_mcpu: 6_000,
        burst_pools: Vec::new().into(),
        max_mcpu: None,
    }];
    // One 2-vCPU job at t = 0 for 1 h; the trace ends at 2 h.
    let jobs = [job("a", 0, 2, 3600, 0)];
    let st = Cluster::new(
        &cfg,
        &p,
        jobs.iter().collect(),
        Mode::Commanded { commands: &cmds },
        1,
        0,
        2 * H,
    )
    .run();
    assert_eq!(st.instances_launched, 3, "desired is pre-booted at once");
    assert_eq!(st.waits_ms, vec![0]);
    // Two idle instances go after the idle timeout (10 min each); the one
    // running the job, then kept by min, lives to the end (2 h).
    let expected = 0.10 * (2.0 + 2.0 * 600.0 / 3600.0);
    assert!(
        (cost(&st) - expected).abs() < 1e-9,
        "{} vs {expected}",
        cost(&st)
    );
}

#[test]
fn max_is_exceeded_by_at_most_one_instance() {
    let p = prices();
    let cfg = SimConfig {
        boot_delay_ms: 0,
        ..Default::default()
    };
    // max 1 vCPU, a 2-vCPU job: Batch may launch one instance past max.
    let cmds = [FloorCommand {
        at: 0,
        mix: Vec::new(),
        min_mcpu: 0,
        desired_mcpu: 0,
        burst_pools: Vec::new().into(),
        max_mcpu: Some(1_000),
    }];
    let jobs = [job("a", 0, 2, 600, 0), job("b", 0, 2, 600, 0)];
    let st = Cluster::new(
        &cfg,
        &p,
        jobs.iter().collect(),
        Mode::Commanded { commands: &cmds },
        1,
        0,
        0,
    )
    .run();
    assert_eq!(st.jobs_completed, 2);
    // One instance at a time: the second job waits for the first.
    assert_eq!(st.waits_ms, vec![0, 600_000]);
}

/// The oracle's quiet run ends exactly where its forecast first sees a
/// job: checked origin by origin against the forecasts themselves.
#[test]
fn oracle_quiet_run_ends_where_demand_enters_the_horizon() {
    use super::OracleForecaster;
    use crate::forecast::History;
    let w = Workload {
        jobs: vec![
            job("a", 3_600_000, 4, 600, 0),
            job("b", 20_000_000, 2, 60, 0),
        ],
        envs: vec!["e".into()],
        first_event: 0,
        last_event: 21_000_000,
        without_runtime: 0,
        orphan_completions: 0,
        duplicate_submissions: 0,
    };
    let o = OracleForecaster::from_workload(&w);
    let (b, horizon, q) = (300_000i64, 12, [0.1, 0.5, 0.9]);
    let zeros = vec![0.0; 80];
    for n in [0usize, 1, 5, 14, 40, 47, 48, 60, 79] {
        let h = History {
            key: "e",
            start: 0,
            bucket_ms: b,
            values: &zeros[..n],
        };
        let run = o.quiet_ahead(&h, horizon, &q).unwrap_or(0);
        let mut want = 0u64;
        loop {
            let hk = History {
                start: want as i64 * b,
                ..h
            };
            let f = o.forecast(&hk, horizon, &q);
            if f.values.iter().flatten().any(|&v| v != 0.0) || want > 200 {
                break;
            }
            want += 1;
        }
        assert_eq!(
            run,
            if want > 200 { u64::MAX } else { want },
            "origin bucket {n}"
        );
    }
    assert_eq!(
        o.quiet_ahead(
            &History {
                key: "other",
                start: 0,
                bucket_ms: b,
                values: &zeros
            },
            horizon,
            &q
        ),
        None
    );
}
