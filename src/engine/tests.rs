use super::*;
use crate::events::{InstanceAllocation, Market};
use crate::state::tests_support::{done, job, price};

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
    use crate::events::PreemptionAction;
    let mut e = engine();
    let mut out = Vec::new();
    e.handle(&project_budget(0.01), &mut out);
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
    use crate::events::PreemptionAction;
    let mut e = engine();
    let mut out = Vec::new();
    e.handle(&project_budget(1.5), &mut out);
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

/// Test planner: [`Median`], recording the budget headroom each
/// environment's plan is asked with.
#[derive(Default)]
struct Recording(std::sync::Mutex<Vec<(String, Millis, Option<f64>)>>);
impl CapacityPlanner for Recording {
    fn plan(&self, r: &PlanRequest<'_>) -> PlanDecision {
        self.0.lock().unwrap().push((
            r.compute_environment.to_string(),
            r.now,
            r.budget_headroom_usd_per_h,
        ));
        Median.plan(r)
    }
}

impl Recording {
    /// The headroom of the last plan of `env` at or before `t`.
    fn at(&self, env: &str, t: Millis) -> Option<Option<f64>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(e, at, _)| e == env && *at <= t)
            .map(|x| x.2)
    }
}

/// A budget of `usd` for project `p`, allocated at time 0.
fn project_budget(usd: f64) -> Event {
    use crate::events::{BudgetAllocation, BudgetScope};
    Event::BudgetAllocation(BudgetAllocation {
        at: 0,
        scope: BudgetScope::Project,
        id: "p".into(),
        usd,
        period: None,
    })
}

fn budgeted_engine(usd: f64) -> (Engine, Arc<Recording>) {
    let rec = Arc::new(Recording::default());
    let mut e = Engine::new(
        engine().config().clone(),
        Arc::new(Catalog::default()),
        Arc::new(Last),
        rec.clone(),
    );
    e.handle(&project_budget(usd), &mut Vec::new());
    (e, rec)
}

/// A submission of project `project` (user `user`) in environment `env`.
fn job_of(id: &str, at: Millis, vcpus: f64, env: &str, project: &str, user: &str) -> Event {
    let Event::JobSubmitted(mut j) = job(id, at, vcpus) else {
        unreachable!("job() makes a submission")
    };
    j.compute_environment = env.into();
    j.project = project.into();
    j.user = user.into();
    Event::JobSubmitted(j)
}

#[test]
fn budgets_cap_an_environment_only_while_all_its_live_work_is_budgeted() {
    let (mut e, rec) = budgeted_engine(1.5);
    let mut out = Vec::new();
    // Only project p's (admitted) work is live: p's headroom caps `ce`.
    e.handle(&job("a", MIN, 10.0), &mut out);
    e.handle(&job("z", 15 * MIN, 0.0), &mut out);
    let capped = rec.at("ce", 10 * MIN).expect("a plan of ce");
    assert!(capped.is_some_and(|h| h < 1.5), "{capped:?}");
    // Work of project q, which has no budget, shares the environment: p's
    // headroom no longer caps it.
    e.handle(&job_of("q", 16 * MIN, 50.0, "ce", "q", "v"), &mut out);
    e.handle(&job("y", 25 * MIN, 0.0), &mut out);
    assert_eq!(rec.at("ce", 20 * MIN), Some(None));
}

#[test]
fn held_work_caps_no_environment() {
    use crate::events::PreemptionAction;
    let (mut e, rec) = budgeted_engine(0.01);
    let mut out = Vec::new();
    // 100 vCPU-h at $0.048 is far above $0.01: held.
    e.handle(&job("big", MIN, 100.0), &mut out);
    assert!(out.iter().any(|c| matches!(c,
        Command::Preemption(p) if p.job_id == "big" && p.action == PreemptionAction::Queue)));
    // Time moves on through another environment's work.
    e.handle(&job_of("o", 25 * MIN, 1.0, "other", "q", "v"), &mut out);
    assert!(e
        .state()
        .demand
        .outstanding_job("big")
        .is_some_and(|o| o.held));
    assert_eq!(rec.at("ce", 20 * MIN), Some(None));
}

/// A job that finished on dear capacity raises what running work of its
/// environment is charged: the ledger does not know where running work is,
/// and a budget charged below what its work really costs is overrun before
/// the work completes.
#[test]
fn a_dear_completion_raises_the_rate_of_running_work() {
    use crate::events::{JobCompleted, JobStatus};
    let csv = "region,instance_type,family,category,generation,vcpu,memory_mib,gpu_count,\
               gpu_name,gpu_memory_mib,arch,ondemand_usd_per_hour\n\
               us-east-1,u7i-12tb.224xlarge,u7i-12tb,u,7,896,12582912,,,,amd64,125.58182\n";
    let catalog = Catalog::parse(csv.as_bytes(), "test").unwrap();
    let mut e = Engine::new(
        engine().config().clone(),
        Arc::new(catalog),
        Arc::new(Last),
        Arc::new(Median),
    );
    let mut out = Vec::new();
    e.handle(&project_budget(1000.0), &mut out);
    e.handle(&job("a", MIN, 10.0), &mut out);
    e.handle(&job("b", MIN, 1.0), &mut out);
    let rate = |e: &Engine, id: &str| e.state().ledger.jobs[id].usd_per_hour;
    assert!(rate(&e, "a") < 0.06 * 10.0, "{}", rate(&e, "a"));
    // b ran 19 minutes on 1 vCPU of an on-demand u7i-12tb.224xlarge:
    // $125.58182 / 896 = $0.14016 per vCPU-hour.
    e.handle(
        &Event::JobCompleted(JobCompleted {
            job_id: "b".into(),
            compute_environment: "ce".into(),
            started_at: MIN,
            finished_at: 20 * MIN,
            status: JobStatus::Succeeded,
            instance_type: Some("u7i-12tb.224xlarge".into()),
            market: Some(Market::OnDemand),
            region: Some("us-east-1".into()),
            vcpu_seconds: 19.0 * 60.0,
            max_memory_mib: None,
        }),
        &mut out,
    );
    let paid = 125.58182 / 896.0;
    assert!(
        (rate(&e, "a") - 10.0 * paid).abs() < 1e-9,
        "{}",
        rate(&e, "a")
    );
    // New work is charged at it too, for a day.
    e.handle(&job("c", 30 * MIN, 2.0), &mut out);
    assert!(
        (rate(&e, "c") - 2.0 * paid).abs() < 1e-9,
        "{}",
        rate(&e, "c")
    );
    e.handle(&job("d", 30 * MIN + 86_400_000, 2.0), &mut out);
    assert!(rate(&e, "d") < 0.06 * 2.0, "{}", rate(&e, "d"));
}

/// At-least-once input: every job event, price tick and budget record
/// delivered again (right after itself, and again much later) decides
/// exactly what the input decides once, and every copy is counted.
#[test]
fn copies_of_input_records_decide_nothing_new() {
    let mut once = vec![project_budget(500.0)];
    for (i, ev) in events().into_iter().enumerate() {
        if i % 5 == 0 {
            once.push(price(ev.time(), 0.02 + (i % 3) as f64 * 0.01));
        }
        once.push(ev);
    }
    let mut twice = Vec::new();
    for (i, ev) in once.iter().enumerate() {
        twice.push(ev.clone());
        twice.push(ev.clone());
        if i >= 12 {
            twice.push(once[i - 12].clone());
        }
    }
    let decide = |evs: &[Event]| {
        let (mut e, _) = budgeted_engine(500.0);
        let mut out = Vec::new();
        let handled: Vec<Handled> = evs.iter().map(|ev| e.handle(ev, &mut out)).collect();
        e.finish(&mut out);
        (out, handled, e.counters().clone())
    };
    let (want, _, _) = decide(&once);
    let (got, handled, counters) = decide(&twice);
    assert!(want.len() > 5, "the input decides something");
    assert_eq!(got, want);
    assert_eq!(counters.conflicts, 0);
    // The first budget record is a copy of the one `budgeted_engine` applied.
    assert_eq!(counters.duplicates, (twice.len() - once.len()) as u64 + 1);
    assert!(!handled.iter().any(|h| matches!(h, Handled::Conflict(_))));
}

/// A record contradicting one applied before is refused with a reason
/// naming the record and field, and the decisions are those without it.
#[test]
fn contradicting_records_are_refused_and_change_nothing() {
    let base = events();
    let mut with = Vec::new();
    let mut refused = Vec::new();
    for (i, ev) in base.iter().enumerate() {
        with.push(ev.clone());
        if i % 9 == 4 {
            if let Event::JobSubmitted(j) = ev {
                let mut bad = j.clone();
                bad.vcpus += 8.0;
                with.push(Event::JobSubmitted(bad));
                refused.push(j.job_id.to_string());
            }
        }
    }
    assert!(refused.len() >= 2);
    let mut allocation = project_budget(500.0);
    with.insert(0, allocation.clone());
    if let Event::BudgetAllocation(a) = &mut allocation {
        a.usd = 900.0;
    }
    with.insert(1, allocation);
    let decide = |evs: &[Event]| {
        let (mut e, _) = budgeted_engine(500.0);
        let mut out = Vec::new();
        let reasons: Vec<String> = evs
            .iter()
            .filter_map(|ev| match e.handle(ev, &mut out) {
                Handled::Conflict(r) => Some(r),
                _ => None,
            })
            .collect();
        e.finish(&mut out);
        (out, reasons)
    };
    let (want, none) = decide(&base);
    assert!(none.is_empty());
    let (got, reasons) = decide(&with);
    assert_eq!(got, want);
    assert_eq!(reasons.len(), refused.len() + 1, "{reasons:?}");
    assert!(
        reasons[0].contains("BudgetAllocation project:p@0: field `usd`"),
        "{reasons:?}"
    );
    for (r, id) in reasons[1..].iter().zip(&refused) {
        assert!(
            r.contains(&format!("JobSubmitted {id}: field `vcpus`")),
            "{r}"
        );
    }
}

#[test]
fn tick_reports_say_what_each_tick_did_and_change_nothing() {
    let evs = events();
    let mut plain = engine();
    let mut want = Vec::new();
    for ev in &evs {
        plain.handle(ev, &mut want);
    }
    plain.finish(&mut want);

    let mut e = engine();
    let (mut out, mut reports) = (Vec::new(), Vec::new());
    for ev in &evs {
        e.handle_reporting(ev, &mut out, Some(&mut reports));
    }
    e.finish_reporting(&mut out, Some(&mut reports));
    assert_eq!(out, want, "reporting changes no decision");
    assert_eq!(reports.len() as u64, e.counters().ticks);
    let mut next = 0;
    for r in &reports {
        // The ticks' commands tile the output in order (no budgets here:
        // no command outside a tick).
        assert_eq!(r.commands.start, next);
        next = r.commands.end;
        assert_eq!(r.budget_actions, 0);
        assert!(r.budgets.is_empty());
        assert_eq!(r.forecasts.len(), r.plans.len());
        for (f, p) in r.forecasts.iter().zip(&r.plans) {
            assert_eq!(f.compute_environment, p.compute_environment);
            assert_eq!(
                f.origin, r.at,
                "a tick forecasts from the end of its history"
            );
            assert_eq!(f.model, "last");
            if let Some(i) = p.command {
                assert!(r.commands.contains(&i));
                let Command::Scaling(s) = &out[i] else {
                    panic!("plan {p:?} points at {:?}", out[i]);
                };
                assert_eq!(s.compute_environment, p.compute_environment);
                assert_eq!(s.desired_vcpus, p.desired_vcpus);
                assert_eq!(s.issued_at, r.at);
                assert_eq!(s.forecast[1].vcpus, f.forecast.values[0][1]);
            }
        }
        let published = r.plans.iter().filter(|p| p.command.is_some()).count();
        assert_eq!(published, r.commands.len());
    }
    assert_eq!(next, out.len());
    assert!(reports
        .iter()
        .any(|r| r.plans.iter().any(|p| p.command.is_none())));
}

#[test]
fn tick_reports_carry_budget_actions_and_accounts() {
    let mut e = engine();
    let (mut out, mut reports) = (Vec::new(), Vec::new());
    e.handle_reporting(&project_budget(0.5), &mut out, Some(&mut reports));
    for ev in events() {
        e.handle_reporting(&ev, &mut out, Some(&mut reports));
    }
    e.finish_reporting(&mut out, Some(&mut reports));
    assert!(reports.iter().any(|r| r.budget_actions > 0));
    for r in &reports {
        assert_eq!(r.budgets.len(), 1);
        assert_eq!(r.budgets[0].id, "p");
        for c in &out[r.commands.start..r.commands.start + r.budget_actions] {
            assert!(matches!(c, Command::Preemption(_)), "{c:?}");
        }
    }
    let last = &reports.last().unwrap().budgets[0];
    let acc = e.state().ledger.accounts.values().next().unwrap();
    assert_eq!((last.allocated, last.spent), (acc.allocated, acc.spent));
}

#[test]
fn a_repeated_decision_is_told_from_its_signature_without_writing_it() {
    let alloc = |t: &str, n| InstanceAllocation {
        instance_type: t.into(),
        market: Market::Spot,
        region: "us-east-1".into(),
        count: n,
    };
    let decision = |mix: Vec<InstanceAllocation>| PlanDecision {
        min_vcpus: 0,
        desired_vcpus: 8,
        max_vcpus: 16,
        instance_mix: mix,
        constraints: BTreeMap::new(),
        reason: String::new(),
        usd_per_vcpu_hour: 0.01,
    };
    let two = decision(vec![alloc("m5.large", 2), alloc("c5.xlarge", 1)]);
    let sig = |d: &PlanDecision| (d.min_vcpus, d.desired_vcpus, d.max_vcpus, mix_signature(d));
    assert!(same_decision(&sig(&two), &two));
    // A mix that is a prefix of the signed one, or extends it, or differs
    // in a count, or the same mix at other vCPUs: changed.
    let one = decision(vec![alloc("m5.large", 2)]);
    assert!(!same_decision(&sig(&two), &one));
    assert!(!same_decision(&sig(&one), &two));
    let other = decision(vec![alloc("m5.large", 2), alloc("c5.xlarge", 3)]);
    assert!(!same_decision(&sig(&two), &other));
    let more = PlanDecision {
        desired_vcpus: 9,
        ..two.clone()
    };
    assert!(!same_decision(&sig(&two), &more));
    let empty = decision(Vec::new());
    assert!(same_decision(&sig(&empty), &empty));
    assert!(!same_decision(&sig(&empty), &one));
}
