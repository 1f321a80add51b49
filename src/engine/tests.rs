use super::*;
use crate::events::{InstanceAllocation, Market};
use crate::state::tests_support::{done, job};

const MIN: i64 = 60_000;

/// Test forecaster: repeats the last value at every quantile.
struct Last;
impl Forecaster for Last {
    fn name(&self) -> &str {
        "last"
    }
    fn forecast(&self, h: &History<'_>, horizon: usize, q: &[f64]) -> Forecast {
        let v = h.values.last().copied().unwrap_or(0.0);
        Forecast {
            quantiles: q.to_vec(),
            values: vec![vec![v; q.len()]; horizon],
        }
    }
}

/// Test planner: capacity = ceil(p50 of the first step).
struct Median;
impl CapacityPlanner for Median {
    fn plan(&self, r: &PlanRequest<'_>) -> PlanDecision {
        let v = r.forecast.values[0][1].ceil() as i64;
        PlanDecision {
            min_vcpus: v,
            desired_vcpus: v.max(r.outstanding.vcpus.ceil() as i64),
            max_vcpus: 1000,
            instance_mix: vec![InstanceAllocation {
                instance_type: "m5.large".into(),
                market: Market::OnDemand,
                region: "us-east-1".into(),
                count: (v + 1) as i32 / 2,
            }],
            constraints: Default::default(),
            reason: format!("p50 {v}"),
            usd_per_vcpu_hour: 0.05,
        }
    }
}

fn engine() -> Engine {
    let cfg = EngineConfig {
        state: StateConfig {
            bucket_ms: 10 * MIN,
            allowed_lateness_ms: MIN,
            ..Default::default()
        },
        ..Default::default()
    };
    Engine::new(
        cfg,
        Arc::new(Catalog::default()),
        Arc::new(Last),
        Arc::new(Median),
    )
}

fn events() -> Vec<Event> {
    let mut v = Vec::new();
    for i in 0..30 {
        v.push(job(&format!("j{i}"), i * 7 * MIN, 1.0 + (i % 4) as f64));
        v.push(done(&format!("j{i}"), i * 7 * MIN + 25 * MIN));
    }
    v.sort_by_key(|e| e.time());
    v
}

#[test]
fn ticks_emit_changed_decisions_with_stable_ids() {
    let mut e = engine();
    let mut out = Vec::new();
    for ev in events() {
        e.handle(&ev, &mut out);
    }
    e.finish(&mut out);
    assert!(!out.is_empty());
    assert!(e.counters().ticks > 20);
    // Only changes are emitted: consecutive commands differ.
    let scal: Vec<&ScalingCommand> = out
        .iter()
        .map(|c| match c {
            Command::Scaling(s) => s,
            _ => panic!(),
        })
        .collect();
    assert!(scal
        .windows(2)
        .all(|w| w[0].min_vcpus != w[1].min_vcpus || w[0].desired_vcpus != w[1].desired_vcpus));
    assert!(scal.iter().all(|s| s.issued_at % (10 * MIN) == 0));
    // Same input, same output.
    let mut e2 = engine();
    let mut out2 = Vec::new();
    for ev in events() {
        e2.handle(&ev, &mut out2);
    }
    e2.finish(&mut out2);
    assert_eq!(out, out2);
}

#[test]
fn restore_from_snapshot_continues_identically() {
    let evs = events();
    let mut full = engine();
    let mut out_full = Vec::new();
    for ev in &evs {
        full.handle(ev, &mut out_full);
    }
    let mut a = engine();
    let mut out = Vec::new();
    for ev in &evs[..25] {
        a.handle(ev, &mut out);
    }
    let snap = serde_json::to_vec(a.state()).unwrap();
    let st: EngineState = serde_json::from_slice(&snap).unwrap();
    let mut b = Engine::restore(
        a.config().clone(),
        st,
        Arc::new(Catalog::default()),
        Arc::new(Last),
        Arc::new(Median),
    );
    for ev in &evs[25..] {
        b.handle(ev, &mut out);
    }
    assert_eq!(out, out_full);
}

#[test]
fn over_budget_submission_is_queued_with_a_command() {
    use crate::events::{BudgetAllocation, BudgetScope, PreemptionAction};
    let mut e = engine();
    let mut out = Vec::new();
    e.handle(
        &Event::BudgetAllocation(BudgetAllocation {
            at: 0,
            scope: BudgetScope::Project,
            id: "p".into(),
            usd: 0.01,
            period: None,
        }),
        &mut out,
    );
    // 100 vCPUs for an hour at 0.048 USD/vCPU-h is far above 0.01 USD.
    e.handle(&job("big", MIN, 100.0), &mut out);
    let queued: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            Command::Preemption(p) if p.action == PreemptionAction::Queue => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(queued.len(), 1, "{out:?}");
    assert_eq!(queued[0].job_id, "big");
}

#[test]
fn held_work_is_not_demand_and_resumes_when_budget_frees() {
    use crate::events::{BudgetAllocation, BudgetScope, PreemptionAction};
    let mut e = engine();
    let mut out = Vec::new();
    e.handle(
        &Event::BudgetAllocation(BudgetAllocation {
            at: 0,
            scope: BudgetScope::Project,
            id: "p".into(),
            usd: 1.5,
            period: None,
        }),
        &mut out,
    );
    // a: 10 vCPU-h at $0.048 = $0.48, admitted; b: 25 vCPU-h = $1.20 > the
    // $1.02 left, queued.
    e.handle(&job("a", MIN, 10.0), &mut out);
    e.handle(&job("b", 2 * MIN, 25.0), &mut out);
    let actions = |out: &[Command], id: &str| -> Vec<PreemptionAction> {
        out.iter()
            .filter_map(|c| match c {
                Command::Preemption(p) if p.job_id == id => Some(p.action),
                _ => None,
            })
            .collect()
    };
    assert_eq!(actions(&out, "b"), vec![PreemptionAction::Queue]);
    let ce = |e: &Engine| e.state().demand.environment_summary("ce", 0, 0).vcpus;
    assert_eq!(ce(&e), 10.0, "held work is not demand");
    // a finishes after 29 min (about $0.23 spent): b's $1.20 fits again.
    e.handle(&done("a", 30 * MIN), &mut out);
    e.handle(&job("c", 45 * MIN, 0.0), &mut out);
    assert_eq!(
        actions(&out, "b"),
        vec![PreemptionAction::Queue, PreemptionAction::Resume]
    );
    assert_eq!(ce(&e), 25.0);
    let j = &e.state().ledger.jobs["b"];
    assert!(j.usd_per_hour > 0.0, "resumed work is charged as running");
}
