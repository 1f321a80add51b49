//! Issue #21: hostile input cannot hang, exhaust memory, panic or silently
//! bend the numbers.
//!
//! - `corpus_*`: the cases the issue found, checked in under `tests/corpus/`
//!   (file names say what is expected: `ok-`, `skip-`, `err-`);
//! - `issue_*`: the cases too big or binary for the corpus;
//! - `generated_hostile_inputs`: proptest strategies generate hostile inputs
//!   for every reader (SWF and price importers, Avro events decoder,
//!   catalogue, budget and policy TOML, the HTTP API's request decoding) and
//!   classify each outcome as ok / clean error / counted skip / panic / hang
//!   / silent wrong (an accepted result that breaks a documented invariant).
//!   It runs `HOSTILE_CASES` cases per input kind (300 by default, a few
//!   seconds in all; `HOSTILE_CASES=10000 cargo test --release --test hostile
//!   generated -- --nocapture` prints the table of the issue's acceptance)
//!   and fails on any panic, hang or silent wrong result.

use prescale::api::{self, AppState, ServeLimits, ServiceState};
use prescale::budget::{BudgetFile, Period};
use prescale::engine::{CapacityPlanner, Engine, EngineConfig, PlanDecision, PlanRequest};
use prescale::events::avro::{decode_event, encode_event, EventKind};
use prescale::events::{
    BudgetAllocation, BudgetScope, Command, Event, JobCompleted, JobStatus, JobSubmitted, Market,
    PriceTick, SpotSignal, SpotSignalKind,
};
use prescale::forecast::{Ets, Forecast, Forecaster, History};
use prescale::import::prices::{parse_prices, PriceOptions};
use prescale::import::swf::{parse_swf, SwfOptions};
use prescale::limits::{self, time_ok};
use prescale::model_file::load_or_fallback;
use prescale::planner::CostAwarePlanner;
use prescale::policy::PolicyFile;
use prescale::pricing::Catalog;
use prescale::state::{DemandState, StateConfig};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T0: i64 = 1_700_000_000_000;

fn corpus(dir: &str) -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no corpus in {}", d.display());
    v
}

fn expect_of(p: &Path) -> &str {
    let n = p.file_name().unwrap().to_str().unwrap();
    n.split('-').next().unwrap()
}

/// An error message names the file and stays short (long values are cut).
fn assert_clean(msg: &str, p: &Path) {
    let name = p.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "{msg} does not name {name}");
    assert!(msg.len() < 600, "error too long ({} bytes)", msg.len());
}

#[test]
fn corpus_swf() {
    for p in corpus("swf") {
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.display().to_string();
        let strict = parse_swf(text.as_bytes(), &name, &SwfOptions::default());
        let lenient = parse_swf(
            text.as_bytes(),
            &name,
            &SwfOptions {
                skip_bad: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        match expect_of(&p) {
            "ok" => {
                let imp = strict.unwrap_or_else(|e| panic!("{name}: {e}"));
                check_swf_events(&imp.events).unwrap();
            }
            "skip" => {
                let e = strict
                    .err()
                    .unwrap_or_else(|| panic!("{name} was accepted"));
                assert_clean(&e.to_string(), &p);
                assert!(lenient.report.skipped_bad_lines >= 1, "{name}");
                check_swf_events(&lenient.events).unwrap();
            }
            x => panic!("{name}: unknown expectation {x}"),
        }
    }
}

#[test]
fn corpus_prices() {
    for p in corpus("prices") {
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.display().to_string();
        let strict = parse_prices(text.as_bytes(), &name, &PriceOptions::default());
        let lenient = parse_prices(
            text.as_bytes(),
            &name,
            &PriceOptions {
                skip_bad: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(expect_of(&p), "skip", "{name}");
        let e = strict
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        assert_clean(&e.to_string(), &p);
        assert_eq!(lenient.report.skipped_bad_lines, 1, "{name}");
        assert_eq!(lenient.ticks.len(), 1, "{name}");
        check_ticks(&lenient.ticks).unwrap();
    }
}

#[test]
fn corpus_catalogue_budgets_policy() {
    for p in corpus("catalog") {
        let r = Catalog::load(&p);
        match expect_of(&p) {
            "ok" => {
                check_catalog(&r.unwrap()).unwrap();
            }
            _ => assert_clean(&r.expect_err("refused").to_string(), &p),
        }
    }
    for p in corpus("budgets") {
        let r = BudgetFile::load(&p);
        match expect_of(&p) {
            "ok" => check_budgets(&r.unwrap()).unwrap(),
            _ => assert_clean(&r.expect_err("refused").to_string(), &p),
        }
    }
    for p in corpus("policy") {
        let r = PolicyFile::load(&p);
        match expect_of(&p) {
            "ok" => drop(r.unwrap()),
            _ => assert_clean(&r.expect_err("refused").to_string(), &p),
        }
    }
}

/// A 10 MB line is cut in the error (and in the skipped examples).
#[test]
fn issue_long_line_is_cut_in_errors() {
    let long = "7".repeat(10_000_000);
    let swf = format!("1 {long}x 0 1 1 -1 -1 1 1 -1 1 1 1 -1 1 -1 -1 -1\n");
    let e = parse_swf(swf.as_bytes(), "big.swf", &SwfOptions::default()).unwrap_err();
    assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
    let lenient = parse_swf(
        swf.as_bytes(),
        "big.swf",
        &SwfOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(lenient
        .report
        .bad_line_examples
        .iter()
        .all(|x| x.len() < 400));
    let prices = format!(
        "timestamp,instance_type,zone,price\n2022-01-01T00:00:00Z,m5.large,us-east-1a,{long}x\n"
    );
    let e = parse_prices(prices.as_bytes(), "big.csv", &PriceOptions::default()).unwrap_err();
    assert!(e.to_string().len() < 400);
}

fn job(id: &str, at: i64, vcpus: f64) -> Event {
    Event::JobSubmitted(JobSubmitted {
        job_id: id.into(),
        submitted_at: at,
        compute_environment: "ce".into(),
        job_type: "batch".into(),
        project: "p".into(),
        user: "u".into(),
        priority: 0,
        vcpus,
        memory_mib: 1024,
        gpus: 0,
        estimated_runtime_s: Some(600),
        budget_usd: None,
        deadline: None,
        elasticity: false,
    })
}

fn done(id: &str, at: i64) -> Event {
    Event::JobCompleted(JobCompleted {
        job_id: id.into(),
        compute_environment: "ce".into(),
        started_at: at,
        finished_at: at + 600_000,
        status: JobStatus::Succeeded,
        instance_type: None,
        market: None,
        region: None,
        vcpu_seconds: 2400.0,
        max_memory_mib: None,
    })
}

/// Decision ticks the state emits for these events (what the engine then
/// forecasts and plans at, one by one).
fn ticks_for(events: &[Event]) -> usize {
    let mut st = DemandState::new(StateConfig::default());
    let mut ticks = Vec::new();
    let mut n = 0;
    for e in events {
        st.apply(e, &mut ticks);
        n += ticks.len();
        ticks.clear();
    }
    st.flush(&mut ticks);
    n + ticks.len()
}

/// Cost grows with events, not with time spans: a year-long gap, ten years
/// of 100 jobs, and an event at time 0 before jobs of 2023 tick about as
/// often as a trace without gaps (at most two history windows per quiet
/// stretch), never once per 5-minute bucket of the span.
#[test]
fn issue_gaps_cost_events_not_time() {
    let window = StateConfig::default().history_buckets;
    let year = 365 * 86_400_000i64;
    let gap = [
        job("a", T0, 4.0),
        done("a", T0 + 60_000),
        job("b", T0 + year, 4.0),
        done("b", T0 + year + 60_000),
    ];
    let n = ticks_for(&gap);
    assert!(n < 2 * window + 10, "{n} ticks for a year gap");
    // ten years, 100 jobs
    let mut ten = Vec::new();
    for i in 0..100i64 {
        let at = T0 + i * (10 * year / 100);
        ten.push(job(&format!("j{i}"), at, 2.0));
        ten.push(done(&format!("j{i}"), at + 60_000));
    }
    let n = ticks_for(&ten);
    let per_bucket = (10 * year / StateConfig::default().bucket_ms) as usize;
    assert!(n < 100 * (window + 50), "{n} ticks for 10 years");
    assert!(n * 2 < per_bucket, "{n} ticks vs {per_bucket} buckets");
    // an event at time 0, then jobs in 2023
    let mut zero = vec![Event::PriceTick(PriceTick {
        at: 0,
        provider: "aws".into(),
        region: "us-east-1".into(),
        zone: None,
        instance_type: "m5.large".into(),
        market: Market::Spot,
        usd_per_hour: 0.05,
    })];
    zero.extend(gap);
    assert!(ticks_for(&zero) < 4 * window);
}

/// The shipped planner without its idle promise: every tick plans.
struct NoPromise(CostAwarePlanner);
impl CapacityPlanner for NoPromise {
    fn plan(&self, r: &PlanRequest<'_>) -> PlanDecision {
        self.0.plan(r)
    }
}

fn spot(at: i64, usd: f64, market: Market) -> Event {
    Event::PriceTick(PriceTick {
        at,
        provider: "aws".into(),
        region: "us-east-1".into(),
        zone: None,
        instance_type: "m5.large".into(),
        market,
        usd_per_hour: usd,
    })
}

/// Bursts days and weeks apart with spot prices moving every 7 minutes
/// throughout, and optionally an on-demand price from `on_demand_at` on.
fn bursts_with_prices(on_demand_at: Option<i64>) -> Vec<Event> {
    const DAY: i64 = 86_400_000;
    let mut v = Vec::new();
    for (i, at) in [0, 9 * DAY, 9 * DAY + 2_400_000, 30 * DAY]
        .into_iter()
        .enumerate()
    {
        v.push(job(&format!("j{i}"), T0 + at, 4.0));
        v.push(done(&format!("j{i}"), T0 + at + 900_000));
    }
    let mut t = 0;
    while t < 45 * DAY {
        let usd = 0.03 + 0.01 * ((t / 420_000) % 5) as f64;
        v.push(spot(T0 + t, usd, Market::Spot));
        t += 420_000;
    }
    if let Some(at) = on_demand_at {
        v.push(spot(T0 + at, 0.2, Market::OnDemand));
    }
    v.sort_by_key(|e| e.time());
    v
}

/// `events` through the shipped engine (LSTM, bundled catalogue) with
/// `planner`: the commands, the tick reports (debug text), the engine's
/// state (JSON) and the engine.
fn decide_all(
    planner: Arc<dyn CapacityPlanner>,
    events: &[Event],
) -> (Vec<Command>, String, String, Engine) {
    decide_with(planner, shipped_model(), events)
}

fn shipped_model() -> Arc<dyn Forecaster> {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lstm/model.json");
    let (fc, err) = load_or_fallback(&model, 300_000, 12);
    assert!(err.is_none(), "{err:?}");
    Arc::new(fc)
}

/// [`decide_all`] with another forecaster.
fn decide_with(
    planner: Arc<dyn CapacityPlanner>,
    fc: Arc<dyn Forecaster>,
    events: &[Event],
) -> (Vec<Command>, String, String, Engine) {
    let mut e = Engine::new(
        EngineConfig::default(),
        Arc::new(Catalog::bundled()),
        fc,
        planner,
    );
    let (mut out, mut reports) = (Vec::new(), Vec::new());
    // Reports of 400,000 ticks would take gigabytes: only short runs keep them.
    let keep = events.len() < 100_000;
    for ev in events {
        e.handle_reporting(ev, &mut out, keep.then_some(&mut reports));
    }
    e.finish_reporting(&mut out, keep.then_some(&mut reports));
    let state = serde_json::to_string(e.state()).unwrap();
    (out, format!("{reports:?}"), state, e)
}

/// Cost grows with events, not with time spans, in the engine too: after
/// a burst the forecaster sees it for a week of ticks, and the ticks that
/// forecast nothing reuse the last idle plan instead of planning (counted,
/// not timed). Exact: every command, tick report and the whole engine
/// state are the same as when every tick plans; a `min_vcpus` floor or an
/// on-demand price in the book withdraws the promise.
#[test]
fn idle_ticks_reuse_the_plan_and_decide_the_same() {
    let planner =
        |p: &PolicyFile| -> Arc<dyn CapacityPlanner> { Arc::new(CostAwarePlanner::new(p.clone())) };
    let every = |p: &PolicyFile| -> Arc<dyn CapacityPlanner> {
        Arc::new(NoPromise(CostAwarePlanner::new(p.clone())))
    };
    let default = PolicyFile::default();
    let events = bursts_with_prices(None);
    let (c1, r1, s1, fast) = decide_all(planner(&default), &events);
    let (c2, r2, s2, slow) = decide_all(every(&default), &events);
    assert_eq!(c1, c2);
    assert_eq!(r1, r2);
    assert_eq!(s1, s2);
    assert_eq!(fast.counters(), slow.counters());
    assert!(c1.len() > 4, "{} commands", c1.len());
    assert_eq!(slow.plans_reused(), 0);
    let ticks = fast.counters().ticks;
    let planned = ticks - fast.plans_reused();
    assert!(ticks > 3 * 2016, "{ticks} ticks");
    assert!(planned * 10 < ticks, "{planned} of {ticks} ticks planned");

    let mut floor = PolicyFile::default();
    floor.defaults.min_vcpus = 2;
    let (c1, r1, s1, e1) = decide_all(planner(&floor), &events);
    let (c2, r2, s2, _) = decide_all(every(&floor), &events);
    assert_eq!((c1, r1, s1), (c2, r2, s2));
    assert_eq!(e1.plans_reused(), 0);

    let events = bursts_with_prices(Some(20 * 86_400_000));
    let (c1, r1, s1, e1) = decide_all(planner(&default), &events);
    let (c2, r2, s2, _) = decide_all(every(&default), &events);
    assert_eq!((c1, r1, s1), (c2, r2, s2));
    assert!(e1.plans_reused() > 0 && e1.plans_reused() < fast.plans_reused());
}

/// A forecaster that never says its forecast is quiet: every tick forecasts.
struct NeverQuiet(Arc<dyn Forecaster>);
impl Forecaster for NeverQuiet {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn forecast(&self, h: &History<'_>, horizon: usize, q: &[f64]) -> Forecast {
        self.0.forecast(h, horizon, q)
    }
}

/// Quiet ticks (the forecaster reads only zeros) are answered from one
/// forecast per time of the week. Exact: every command, tick report and
/// the whole engine state are the same as when every tick forecasts; and
/// after the first week most ticks of the bursts' history windows reuse.
#[test]
fn quiet_ticks_reuse_the_forecast_and_decide_the_same() {
    let planner =
        || -> Arc<dyn CapacityPlanner> { Arc::new(CostAwarePlanner::new(PolicyFile::default())) };
    // Price ticks with gaps (one tick closing several buckets at once,
    // whose earlier ticks forecast from the end of the closed history),
    // not repeating weekly.
    let mut events = bursts_with_prices(None);
    events.retain(|e| !matches!(e, Event::PriceTick(p) if matches!((p.at / 420_000) % 13, 3..=5)));
    let (c1, r1, s1, fast) = decide_with(planner(), shipped_model(), &events);
    let slow_fc = Arc::new(NeverQuiet(shipped_model()));
    let (c2, r2, s2, slow) = decide_with(planner(), slow_fc, &events);
    assert_eq!(c1, c2);
    assert_eq!(r1, r2);
    assert_eq!(s1, s2);
    assert_eq!(fast.counters(), slow.counters());
    assert_eq!(slow.forecasts_reused(), 0);
    let ticks = fast.counters().ticks;
    let reused = fast.forecasts_reused();
    assert!(
        reused * 2 > ticks,
        "{reused} of {ticks} ticks reused a quiet forecast"
    );
}

/// Ten years of 100 jobs through the shipped engine: the ticks it plans
/// are a few dozen per job (those whose forecast still sees the job at the
/// provisioning quantile), not a history window's 4,032 each, nor one per
/// bucket of the span.
#[test]
fn ten_sparse_years_plan_per_event_not_per_bucket() {
    let year = 365 * 86_400_000i64;
    let mut ten = Vec::new();
    for i in 0..100i64 {
        let at = T0 + i * (10 * year / 100);
        ten.push(job(&format!("j{i}"), at, 4.0));
        ten.push(done(&format!("j{i}"), at));
        // Spot prices every 30 minutes for 15 days after each job, as the
        // backtest feeds them (it folds those of longer idle stretches):
        // they move the watermark, so each tick is decided when it closes.
        for k in 0..15 * 48 {
            ten.push(spot(at + k * 1_800_000, 0.03, Market::Spot));
        }
    }
    ten.sort_by_key(|e| e.time());
    let (_, _, _, e) = decide_all(Arc::new(CostAwarePlanner::new(PolicyFile::default())), &ten);
    let ticks = e.counters().ticks;
    let planned = ticks - e.plans_reused();
    assert!(ticks <= 100 * 4100, "{ticks} ticks");
    assert!(
        planned <= 100 * PLANNED_PER_BURST,
        "{planned} of {ticks} ticks planned"
    );
}

/// Ticks planned per isolated 10-minute job at most (see
/// `ten_sparse_years_plan_per_event_not_per_bucket`).
const PLANNED_PER_BURST: u64 = 100;

/// Valid behaviour does not change: a trace without quiet stretches ticks
/// once per bucket, as before.
#[test]
fn dense_trace_ticks_every_bucket() {
    let mut evs = Vec::new();
    for i in 0..600i64 {
        let at = T0 + i * 300_000;
        evs.push(job(&format!("j{i}"), at, 1.0));
        evs.push(done(&format!("j{i}"), at + 1000));
    }
    let n = ticks_for(&evs);
    assert!((599..=602).contains(&n), "{n}");
}

fn tick(at: i64, usd: f64) -> Event {
    spot(at, usd, Market::Spot)
}

/// Records with absurd times or sizes are refused by the decoder every
/// reader shares (events files, Kafka), naming the field.
#[test]
fn issue_absurd_events_are_refused_by_field() {
    let cases: Vec<(Event, &str)> = vec![
        (tick(-10_000_000_000_000_000, 0.1), "at"),
        (tick(i64::MAX, 0.1), "at"),
        (tick(T0, 1e300), "usd_per_hour"),
        (job("x", T0, 1.5e15), "vcpus"),
        (job("x", -1, 1.0), "submitted_at"),
        (done("x", i64::MAX - 1_000_000), "started_at"),
        (
            Event::BudgetAllocation(BudgetAllocation {
                at: T0,
                scope: BudgetScope::Project,
                id: "p".into(),
                usd: -5.0,
                period: None,
            }),
            "usd",
        ),
        (
            Event::BudgetAllocation(BudgetAllocation {
                at: T0,
                scope: BudgetScope::Project,
                id: "p".into(),
                usd: 5.0,
                period: Some("fortnight".into()),
            }),
            "period",
        ),
    ];
    for (ev, field) in cases {
        let kind = EventKind::from_default_topic(ev.topic()).unwrap();
        let bytes = encode_event(&ev).unwrap();
        let e = decode_event(kind, &bytes).unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")), "{e} (want {field})");
    }
    // and a good one still decodes
    let ev = tick(T0, 0.1);
    let bytes = encode_event(&ev).unwrap();
    assert_eq!(decode_event(EventKind::PriceTick, &bytes).unwrap(), ev);
}

// ---------------------------------------------------------------------------
// Invariants an accepted result must keep (else: "silent wrong").

fn check_swf_events(evs: &[Event]) -> Result<(), String> {
    let mut submitted = std::collections::HashMap::new();
    for e in evs {
        match e {
            Event::JobSubmitted(j) => {
                if !time_ok(j.submitted_at) {
                    return Err(format!("submit {} outside the window", j.submitted_at));
                }
                if !(j.vcpus > 0.0 && j.vcpus <= limits::MAX_JOB_VCPUS as f64) {
                    return Err(format!("vcpus {}", j.vcpus));
                }
                if !(0..=limits::MAX_JOB_MEMORY_MIB).contains(&j.memory_mib) {
                    return Err(format!("memory {}", j.memory_mib));
                }
                if j.deadline.is_some_and(|d| d < j.submitted_at) {
                    return Err("deadline before submission".into());
                }
                if submitted.insert(j.job_id.clone(), j.submitted_at).is_some() {
                    return Err(format!("job {} twice", j.job_id));
                }
            }
            Event::JobCompleted(c) => {
                let Some(&s) = submitted.get(&c.job_id) else {
                    return Err(format!("completion of unknown {}", c.job_id));
                };
                if !(s <= c.started_at && c.started_at <= c.finished_at && time_ok(c.finished_at)) {
                    return Err(format!(
                        "times {s} {} {} out of order",
                        c.started_at, c.finished_at
                    ));
                }
                if !(c.vcpu_seconds.is_finite() && c.vcpu_seconds >= 0.0) {
                    return Err(format!("vcpu_seconds {}", c.vcpu_seconds));
                }
            }
            _ => return Err("not a job event".into()),
        }
    }
    Ok(())
}

fn check_ticks(ticks: &[PriceTick]) -> Result<(), String> {
    for t in ticks {
        if !time_ok(t.at) {
            return Err(format!("tick at {}", t.at));
        }
        if !(t.usd_per_hour > 0.0 && t.usd_per_hour <= limits::MAX_PRICE_USD_PER_HOUR) {
            return Err(format!("price {}", t.usd_per_hour));
        }
        if t.instance_type.is_empty() || t.region.is_empty() {
            return Err("empty name".into());
        }
    }
    Ok(())
}

fn check_catalog(c: &Catalog) -> Result<(), String> {
    for (_, spec, price) in c.ondemand_offers() {
        if !(price.is_finite() && price > 0.0) {
            return Err(format!("price {price}"));
        }
        if !(spec.vcpus.is_finite() && spec.vcpus > 0.0 && spec.memory_mib > 0 && spec.gpus >= 0) {
            return Err(format!("shape {spec:?}"));
        }
    }
    Ok(())
}

fn check_budgets(b: &BudgetFile) -> Result<(), String> {
    for a in &b.allocations {
        if !(a.usd.is_finite() && (0.0..=limits::MAX_BUDGET_USD).contains(&a.usd)) {
            return Err(format!("usd {}", a.usd));
        }
        if Period::parse(a.period.as_deref()).is_none() {
            return Err(format!("period {:?}", a.period));
        }
    }
    Ok(())
}

fn check_event(e: &Event) -> Result<(), String> {
    let fin = |x: f64| x.is_finite();
    match e {
        Event::JobSubmitted(j) => {
            if !(time_ok(j.submitted_at) && j.deadline.is_none_or(time_ok)) {
                return Err("time outside the window".into());
            }
            if !(fin(j.vcpus) && (0.0..=limits::MAX_JOB_VCPUS as f64).contains(&j.vcpus)) {
                return Err(format!("vcpus {}", j.vcpus));
            }
            if !(0..=limits::MAX_JOB_MEMORY_MIB).contains(&j.memory_mib) || j.gpus < 0 {
                return Err("size".into());
            }
            if j.budget_usd.is_some_and(|b| !fin(b) || b < 0.0) {
                return Err("budget".into());
            }
        }
        Event::JobCompleted(c) => {
            if !(time_ok(c.started_at) && c.started_at <= c.finished_at && time_ok(c.finished_at)) {
                return Err("times".into());
            }
            if !(fin(c.vcpu_seconds) && c.vcpu_seconds >= 0.0) {
                return Err("vcpu_seconds".into());
            }
        }
        Event::PriceTick(t) => {
            if !(time_ok(t.at)
                && fin(t.usd_per_hour)
                && (0.0..=limits::MAX_PRICE_USD_PER_HOUR).contains(&t.usd_per_hour))
            {
                return Err(format!("tick {} {}", t.at, t.usd_per_hour));
            }
        }
        Event::BudgetAllocation(a) => {
            if !(time_ok(a.at)
                && fin(a.usd)
                && a.usd >= 0.0
                && Period::parse(a.period.as_deref()).is_some())
            {
                return Err("allocation".into());
            }
        }
        Event::SpotSignal(s) => {
            let blank = |v: &str| v.trim().is_empty();
            if !(time_ok(s.at)
                && (1..=limits::MAX_SPOT_SIGNAL_COUNT).contains(&s.count)
                && !blank(&s.region)
                && !blank(&s.instance_type)
                && !s.zone.as_deref().is_some_and(blank))
            {
                return Err(format!("spot signal {} {}", s.at, s.count));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators.

/// A number as a hostile user types it: mostly plausible, often absurd.
fn token() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (-5i64..200_000).prop_map(|v| v.to_string()),
        2 => prop::sample::select(vec![
            "-1", "0", "1", "NaN", "nan", "inf", "-inf", "1e300", "-1e300", "-1e19", "1e19",
            "1.5e15", "9223372036854775807", "-9223372036854775808",
            "9223372036854775808", "18446744073709551616", "0.5", "1e-300", "-0",
            "4611686018427387904", "100000000000000", "x", "0x10", "1_000", "+5",
        ])
        .prop_map(str::to_string),
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<f64>().prop_map(|v| v.to_string()),
        1 => "[a-z0-9.+-]{0,12}",
    ]
    .boxed()
}

fn swf_text() -> impl Strategy<Value = String> {
    let record =
        (1u32..40, prop::collection::vec(token(), 0..21), 0u8..10).prop_map(|(id, mut f, mode)| {
            if mode < 7 {
                // a well-formed line with a few hostile fields
                let base = [
                    id.to_string(),
                    "1000".into(),
                    "5".into(),
                    "100".into(),
                    "4".into(),
                    "-1".into(),
                    "1024".into(),
                    "4".into(),
                    "200".into(),
                    "-1".into(),
                    "1".into(),
                    "1".into(),
                    "1".into(),
                    "-1".into(),
                    "1".into(),
                    "-1".into(),
                    "-1".into(),
                    "-1".into(),
                ];
                let mut line: Vec<String> = base.to_vec();
                for (k, v) in f.drain(..).enumerate().take(3) {
                    let at = (k * 7 + id as usize) % 18;
                    line[at] = v;
                }
                line.join(" ")
            } else {
                f.join(" ")
            }
        });
    let header = prop_oneof![
        Just(String::new()),
        token().prop_map(|t| format!("; UnixStartTime: {t}\n")),
    ];
    (header, prop::collection::vec(record, 1..12))
        .prop_map(|(h, recs)| format!("{h}{}\n", recs.join("\n")))
}

fn price_text() -> impl Strategy<Value = String> {
    let time = prop_oneof![
        3 => Just("2022-05-31T18:20:41+00:00".to_string()),
        1 => Just("1969-01-01T00:00:00Z".to_string()),
        1 => Just("9999-12-31T23:59:59Z".to_string()),
        2 => token(),
    ];
    let row = (time, token(), "[a-z0-9.]{0,10}", 0u8..4).prop_map(|(t, p, ty, z)| {
        let zone = ["us-east-1a", "use1-az4", "", "x"][z as usize];
        format!("{zone}\t{ty}\tLinux/UNIX\t{p}\t{t}")
    });
    prop::collection::vec(row, 1..10).prop_map(|r| format!("{}\n", r.join("\n")))
}

fn catalog_text() -> impl Strategy<Value = String> {
    let row = (token(), token(), token(), token(), 0u8..3).prop_map(|(v, m, g, p, t)| {
        format!(
            "us-east-1,t{t}.large,t{t},t,3,{v},{m},{g},,,amd64,{p}",
            g = if t == 2 { String::new() } else { g }
        )
    });
    prop::collection::vec(row, 1..6).prop_map(|r| {
        format!(
            "region,instance_type,family,category,generation,vcpu,memory_mib,gpu_count,gpu_name,gpu_memory_mib,arch,ondemand_usd_per_hour\n{}\n",
            r.join("\n")
        )
    })
}

fn toml_value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => token(),
        1 => prop::sample::select(vec![
            "nan", "inf", "-inf", "+inf", "1e309", "\"10\"", "true", "[]", "{}", "\"day\"",
            "\"fortnight\"", "\"\"",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

fn budget_text() -> impl Strategy<Value = String> {
    let entry = (
        0u8..3,
        "[a-z]{1,6}",
        toml_value(),
        prop::option::of(toml_value()),
    )
        .prop_map(|(s, id, usd, period)| {
            let scope = ["project", "user", "job"][s as usize];
            let p = period
                .map(|p| format!("period = {p}\n"))
                .unwrap_or_default();
            format!("[{scope}.{id}]\nusd = {usd}\n{p}")
        });
    prop::collection::vec(entry, 1..5).prop_map(|e| e.join("\n"))
}

const POLICY_KEYS: &[&str] = &[
    "high_priority_min",
    "low_priority_max",
    "lead_time_s",
    "min_vcpus",
    "max_vcpus",
    "max_usd_per_hour",
    "max_usd_per_job",
    "scale_in_cooldown_s",
    "spot_interruption_rate_per_h",
    "restart_overhead_s",
    "typical_job_s",
    "max_spot_pool_share",
    "max_price_age_s",
    "min_instance_vcpus",
];

fn policy_text() -> impl Strategy<Value = String> {
    let kv =
        (prop::sample::select(POLICY_KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}"));
    let q = (toml_value(), toml_value(), toml_value()).prop_map(|(h, n, l)| {
        format!("quantile_by_priority = {{ high = {h}, normal = {n}, low = {l} }}")
    });
    (
        prop::collection::vec(kv, 0..4),
        prop::option::of(q),
        any::<bool>(),
    )
        .prop_map(|(kvs, q, env)| {
            let mut body = kvs.join("\n");
            if let Some(q) = q {
                body.push('\n');
                body.push_str(&q);
            }
            let table = if env {
                "[environments.ricc]"
            } else {
                "[defaults]"
            };
            format!("{table}\n{body}\n")
        })
}

fn hostile_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        4 => 0.0..64.0f64,
        1 => prop::sample::select(vec![
            f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, 1e300, 1.5e15, -0.0, 1e-300,
        ]),
        1 => any::<f64>(),
    ]
    .boxed()
}

fn hostile_time() -> BoxedStrategy<i64> {
    prop_oneof![
        4 => T0..T0 + 86_400_000,
        1 => prop::sample::select(vec![
            0, -1, i64::MIN, i64::MAX, -10_000_000_000_000_000, limits::MAX_TIME_MS + 1, 1,
        ]),
        1 => any::<i64>(),
    ]
    .boxed()
}

fn hostile_event() -> impl Strategy<Value = Event> {
    let sub = (
        "[a-z0-9]{0,8}",
        hostile_time(),
        hostile_f64(),
        prop_oneof![4 => 0i64..1 << 20, 1 => any::<i64>()],
        prop_oneof![4 => 0i32..8, 1 => any::<i32>()],
        prop::option::of(hostile_time()),
        prop::option::of(hostile_f64()),
        prop::option::of(prop_oneof![4 => 0i64..100_000, 1 => any::<i64>()]),
    )
        .prop_map(|(id, at, vcpus, mem, gpus, deadline, budget, rt)| {
            Event::JobSubmitted(JobSubmitted {
                job_id: id.into(),
                submitted_at: at,
                compute_environment: "ce".into(),
                job_type: "t".into(),
                project: "p".into(),
                user: "u".into(),
                priority: 0,
                vcpus,
                memory_mib: mem,
                gpus,
                estimated_runtime_s: rt,
                budget_usd: budget,
                deadline,
                elasticity: false,
            })
        });
    let com = (
        "[a-z0-9]{0,8}",
        hostile_time(),
        hostile_time(),
        hostile_f64(),
    )
        .prop_map(|(id, s, f, v)| {
            Event::JobCompleted(JobCompleted {
                job_id: id.into(),
                compute_environment: "ce".into(),
                started_at: s,
                finished_at: f,
                status: JobStatus::Succeeded,
                instance_type: None,
                market: None,
                region: None,
                vcpu_seconds: v,
                max_memory_mib: None,
            })
        });
    let tick = (hostile_time(), hostile_f64(), "[a-z0-9.]{0,10}").prop_map(|(at, p, ty)| {
        Event::PriceTick(PriceTick {
            at,
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: None,
            instance_type: ty.into(),
            market: Market::Spot,
            usd_per_hour: p,
        })
    });
    let alloc = (
        hostile_time(),
        hostile_f64(),
        prop::option::of(prop::sample::select(vec![
            "day",
            "week",
            "fortnight",
            "",
            "MONTH",
        ])),
    )
        .prop_map(|(at, usd, period)| {
            Event::BudgetAllocation(BudgetAllocation {
                at,
                scope: BudgetScope::Project,
                id: "p".into(),
                usd,
                period: period.map(str::to_string),
            })
        });
    let signal = (
        hostile_time(),
        any::<i32>(),
        0usize..3,
        "[a-z0-9.-]{0,10}",
        prop::option::of("[a-z0-9 -]{0,4}"),
    )
        .prop_map(|(at, count, kind, ty, zone)| {
            Event::SpotSignal(SpotSignal {
                at,
                kind: [
                    SpotSignalKind::InterruptionWarning,
                    SpotSignalKind::RebalanceRecommendation,
                    SpotSignalKind::CapacityUnavailable,
                ][kind],
                region: "us-east-1".into(),
                zone: zone.map(Into::into),
                instance_type: ty.into(),
                instance_id: None,
                count,
            })
        });
    prop_oneof![sub, com, tick, alloc, signal]
}

/// An event as bytes: encoded and then sometimes mutated (flipped, cut or
/// extended bytes), as a corrupt Kafka message or file record would be.
fn event_bytes() -> impl Strategy<Value = (EventKind, Vec<u8>)> {
    (
        hostile_event(),
        0u8..4,
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    )
        .prop_map(|(ev, mode, edits)| {
            let kind = EventKind::from_default_topic(ev.topic()).unwrap();
            let mut b = encode_event(&ev).unwrap_or_default();
            match mode {
                0 if !b.is_empty() => {
                    for (at, x) in edits {
                        let i = at % b.len();
                        b[i] ^= x;
                    }
                }
                1 => {
                    let cut = edits.first().map_or(0, |e| e.0 % (b.len() + 1));
                    b.truncate(cut);
                }
                2 => b.extend(edits.iter().map(|e| e.1)),
                _ => {}
            }
            (kind, b)
        })
}

fn api_request() -> impl Strategy<Value = (String, Vec<u8>)> {
    let num = prop_oneof![
        3 => (0.0..100.0f64).prop_map(|v| v.to_string()),
        2 => prop::sample::select(vec![
            "-1", "0", "1e308", "-1e308", "1e999", "\"NaN\"", "null", "true", "[]", "{}",
            "9223372036854775807", "-9223372036854775809", "0.5", "\"x\"",
        ])
        .prop_map(str::to_string),
    ];
    let field = (
        prop::sample::select(vec![
            "compute_environment",
            "horizon_s",
            "quantiles",
            "job",
            "vcpus",
            "memory_mib",
            "gpus",
            "max_usd_per_hour",
            "duration_s",
            "deadline",
            "markets",
            "scope",
            "id",
            "usd",
            "period",
        ]),
        num,
        0u8..5,
    )
        .prop_map(|(k, v, shape)| {
            let v = match shape {
                0 => format!("[{v}, 0.5]"),
                1 => format!("\"{}\"", v.replace('"', "")),
                2 => format!(
                    "{{\"job_id\":\"j\",\"submitted_at\":1700000000000,\"compute_environment\":\"ricc\",\"job_type\":\"b\",\"project\":\"p\",\"user\":\"u\",\"priority\":0,\"vcpus\":{v},\"memory_mib\":1024,\"gpus\":0,\"estimated_runtime_s\":600,\"budget_usd\":null,\"deadline\":null,\"elasticity\":false}}"
                ),
                _ => v,
            };
            format!("\"{k}\": {v}")
        });
    let body = prop_oneof![
        6 => prop::collection::vec(field, 0..5).prop_map(|f| format!("{{{}}}", f.join(",")).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(b"{\"compute_environment\": \"ricc\", \"horizon_s\": 3600}".to_vec()),
    ];
    let route = prop::sample::select(vec![
        "/predict_demand",
        "/get_optimal_instance",
        "/allocate_budget",
        "/nowhere",
    ]);
    (route, body).prop_map(|(r, b)| (r.to_string(), b))
}

// ---------------------------------------------------------------------------
// The harness.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    CleanError,
    Skip,
    Panic,
    Hang,
    Wrong,
}

#[derive(Default)]
struct Tally {
    counts: [u64; 6],
    examples: Vec<String>,
}

/// Longer than this per case is counted as a hang (every reader here does
/// its case in microseconds to milliseconds).
const HANG: Duration = Duration::from_secs(2);

fn classify(what: &str, f: impl FnOnce() -> (Outcome, String)) -> (Outcome, String) {
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(f));
    let (o, why) = r.unwrap_or_else(|_| (Outcome::Panic, format!("{what}: panicked")));
    if t0.elapsed() > HANG {
        return (Outcome::Hang, format!("{what}: took {:?}", t0.elapsed()));
    }
    (o, why)
}

fn run_kind<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    cases: usize,
    seed_tag: u8,
    mut check: impl FnMut(&T) -> (Outcome, String),
) -> Tally {
    let mut seed = [0u8; 32];
    seed[0] = seed_tag;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let mut t = Tally::default();
    for _ in 0..cases {
        let v = strategy.new_tree(&mut runner).unwrap().current();
        let (o, why) = classify("case", || check(&v));
        t.counts[o as usize] += 1;
        if matches!(o, Outcome::Panic | Outcome::Hang | Outcome::Wrong) && t.examples.len() < 3 {
            let input = format!("{v:?}");
            t.examples
                .push(format!("{why} on {}", limits::quote(&input)));
        }
    }
    t
}

fn text_outcome<R, E: std::fmt::Display>(
    strict: Result<R, E>,
    lenient: Option<Result<(R, u64), E>>,
    check: impl Fn(&R) -> Result<(), String>,
) -> (Outcome, String) {
    match strict {
        Ok(r) => match check(&r) {
            Ok(()) => (Outcome::Ok, String::new()),
            Err(e) => (Outcome::Wrong, e),
        },
        Err(e) => {
            if e.to_string().len() > 1000 {
                return (Outcome::Wrong, "error message not cut".into());
            }
            match lenient {
                None => (Outcome::CleanError, String::new()),
                Some(Ok((r, skipped))) => match check(&r) {
                    Ok(()) if skipped > 0 => (Outcome::Skip, String::new()),
                    Ok(()) => (Outcome::Wrong, "failed strict, skipped nothing".into()),
                    Err(e) => (Outcome::Wrong, e),
                },
                // a file-level error (bad header) fails both ways
                Some(Err(_)) => (Outcome::CleanError, String::new()),
            }
        }
    }
}

fn api_server(rt: &tokio::runtime::Runtime) -> std::net::SocketAddr {
    let catalog = Arc::new(Catalog::bundled());
    let mut st = ServiceState::new(catalog, PolicyFile::default(), StateConfig::default());
    for i in 0..48i64 {
        let _ = st.apply(&job(&format!("j{i}"), T0 + i * 300_000, 4.0));
    }
    let _ = st.apply(&tick(T0, 0.05));
    let app = Arc::new(AppState::new(
        st,
        Arc::new(Ets::default()),
        Some("tok".into()),
    ));
    let router = api::router(app, api::DEFAULT_BODY_LIMIT);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServeLimits {
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_connections: 64,
    };
    rt.spawn(api::serve_with_limits(listener, router, limits));
    addr
}

/// One raw HTTP/1.1 request; the status code, or the outcome when none came.
fn http(addr: std::net::SocketAddr, route: &str, body: &[u8]) -> Result<u16, Outcome> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|_| Outcome::Panic)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|_| Outcome::Panic)?;
    s.write_all(body).map_err(|_| Outcome::Panic)?;
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(Outcome::Hang),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(Outcome::Hang),
        Err(_) => return Err(Outcome::Panic),
    }
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(Outcome::Panic)
}

fn cases() -> usize {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn generated_hostile_inputs() {
    let n = cases();
    let mut table: Vec<(&str, Tally)> = Vec::new();
    table.push((
        "SWF log",
        run_kind(swf_text(), n, 1, |text| {
            let strict = parse_swf(text.as_bytes(), "g.swf", &SwfOptions::default());
            let lenient = parse_swf(
                text.as_bytes(),
                "g.swf",
                &SwfOptions {
                    skip_bad: true,
                    ..Default::default()
                },
            )
            .map(|i| {
                let s = i.report.skipped_bad_lines;
                (i, s)
            });
            text_outcome(strict, Some(lenient), |i| check_swf_events(&i.events))
        }),
    ));
    table.push((
        "price history",
        run_kind(price_text(), n, 2, |text| {
            let strict = parse_prices(text.as_bytes(), "g.tsv", &PriceOptions::default());
            let lenient = parse_prices(
                text.as_bytes(),
                "g.tsv",
                &PriceOptions {
                    skip_bad: true,
                    ..Default::default()
                },
            )
            .map(|i| {
                let s = i.report.skipped_bad_lines;
                (i, s)
            });
            text_outcome(strict, Some(lenient), |i| check_ticks(&i.ticks))
        }),
    ));
    table.push((
        "events (Avro)",
        run_kind(event_bytes(), n, 3, |(kind, bytes)| {
            match decode_event(*kind, bytes) {
                Ok(ev) => match check_event(&ev) {
                    Ok(()) => (Outcome::Ok, String::new()),
                    Err(e) => (Outcome::Wrong, e),
                },
                Err(e) if e.to_string().len() < 1000 => (Outcome::CleanError, String::new()),
                Err(_) => (Outcome::Wrong, "error message not cut".into()),
            }
        }),
    ));
    table.push((
        "catalogue CSV",
        run_kind(catalog_text(), n, 4, |text| {
            text_outcome(
                Catalog::parse(text.as_bytes(), "g.csv"),
                None,
                check_catalog,
            )
        }),
    ));
    table.push((
        "budgets TOML",
        run_kind(budget_text(), n, 5, |text| {
            text_outcome(
                BudgetFile::from_toml_str(text, "g.toml"),
                None,
                check_budgets,
            )
        }),
    ));
    table.push((
        "policy TOML",
        run_kind(policy_text(), n, 6, |text| {
            // Accepted policies must not hold a non-finite number or a
            // quantile outside (0, 1).
            let hostile = ["nan", "inf", "1e309"].iter().any(|h| {
                text.contains(&format!("= {h}"))
                    || text.contains(&format!("= -{h}"))
                    || text.contains(&format!("= +{h}"))
            });
            text_outcome(PolicyFile::from_toml_str(text, "g.toml"), None, |_| {
                if hostile {
                    Err("accepted a non-finite number".into())
                } else {
                    Ok(())
                }
            })
        }),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = api_server(&rt);
    table.push((
        "API requests",
        run_kind(api_request(), n, 7, |(route, body)| {
            match http(addr, route, body) {
                Ok(200..=299) => (Outcome::Ok, String::new()),
                Ok(400..=499) => (Outcome::CleanError, String::new()),
                Ok(c) => (Outcome::Wrong, format!("status {c}")),
                Err(o) => (o, format!("no response ({o:?})")),
            }
        }),
    ));
    println!("| input kind | cases | ok | clean error | skip | panic | hang | silent wrong |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut bad = Vec::new();
    for (kind, t) in &table {
        let c = &t.counts;
        println!(
            "| {kind} | {} | {} | {} | {} | {} | {} | {} |",
            c.iter().sum::<u64>(),
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5]
        );
        for e in &t.examples {
            bad.push(format!("{kind}: {e}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Slow and stalled clients are dropped, counted and logged; the server
/// keeps answering others.
#[test]
fn api_drops_slow_and_stalled_clients() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = api_server(&rt);
    let m = prescale::telemetry::metrics();
    let (h0, r0) = (
        m.api_dropped("header_timeout"),
        m.api_dropped("request_timeout"),
    );
    // headers that never finish
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /predict_demand HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // a body promised and never sent
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled
        .write_all(b"POST /allocate_budget HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    for s in [&slow, &stalled] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let t0 = Instant::now();
    let mut buf = Vec::new();
    // closed by the server within the header timeout (EOF or reset)
    let _ = slow.read_to_end(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    buf.clear();
    let _ = stalled.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The server counts a drop as its connection task ends, which may be a
    // moment after the client sees the close.
    let counted = Instant::now();
    while (m.api_dropped("header_timeout") <= h0 || m.api_dropped("request_timeout") <= r0)
        && counted.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m.api_dropped("header_timeout") > h0);
    assert!(m.api_dropped("request_timeout") > r0);
    // and a normal request still works
    let code = http(addr, "/predict_demand", b"{\"compute_environment\":\"ce\"}").unwrap();
    assert_eq!(code, 200);
}

/// Hostile numeric flags are refused by clap, naming the flag, before any
/// work starts (each once hung, or bent the report).
#[test]
fn issue_hostile_flags_are_refused() {
    let bin = env!("CARGO_BIN_EXE_prescale");
    let cases: &[&[&str]] = &[
        &["backtest", "--idle-timeout-s", "0"],
        &["backtest", "--spot-rate", "inf"],
        &["backtest", "--spot-rate=-1"],
        &["backtest", "--spot-rate", "NaN"],
        &["backtest", "--max-vcpus=-1"],
        &["backtest", "--static-vcpus", "0"],
        &["backtest", "--boot-delay-s=-5"],
        &[
            "forecast",
            "eval",
            "--trace",
            "x.swf",
            "--train-frac",
            "1.5",
        ],
        &["train", "--trace", "x.swf", "--train-frac", "0"],
        &["train", "--trace", "x.swf", "--last-days", "inf"],
        &["import", "swf", "x.swf", "-o", "y.avro", "--slack", "NaN"],
        &["serve", "--no-auth", "--header-timeout-s", "0"],
        &["serve", "--no-auth", "--max-connections", "0"],
    ];
    for args in cases {
        let out = std::process::Command::new(bin)
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted: {err}");
        let flag = args
            .iter()
            .find(|a| a.starts_with("--") && *a != &"--trace" && *a != &"--no-auth")
            .unwrap();
        let flag = flag.split('=').next().unwrap();
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    // --bucket 1ms is refused by name too (after parsing, exit code 1)
    let out = std::process::Command::new(bin)
        .args(["train", "--trace", "none.swf", "--bucket", "1ms"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--bucket"), "{err}");
}

/// The backtest refuses a job larger than the catalogue can assemble (it
/// once looped over 1e15 gang sizes) and, with --skip-bad, counts it.
#[test]
fn issue_backtest_refuses_unplaceable_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let swf = dir.path().join("t.swf");
    let mut text = String::from("; UnixStartTime: 1262304000\n");
    for i in 0..20 {
        text.push_str(&format!(
            "{} {} 0 600 4 -1 -1 4 1200 -1 1 1 1 -1 1 -1 -1 -1\n",
            i + 1,
            i * 600
        ));
    }
    // 9 million vCPUs: inside the importer's limit, beyond 4096 machines
    text.push_str("99 700 0 600 9000000 -1 -1 9000000 1200 -1 1 1 1 -1 1 -1 -1 -1\n");
    std::fs::write(&swf, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_prescale");
    let run = |extra: &[&str]| {
        std::process::Command::new(bin)
            .args(["backtest", "--policies", "reactive", "--trace"])
            .arg(&swf)
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("swf-99"), "{err}");
    let json = dir.path().join("r.json");
    let out = run(&["--skip-bad", "--json", json.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["trace"]["skipped_records"], 1);
    assert_eq!(
        v["trace"]["import_notes"]["skipped_larger_than_catalogue"],
        1
    );
}
