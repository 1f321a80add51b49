use super::*;
use crate::events::{JobStatus, JobSubmitted};

const MIN: i64 = 60_000;

fn cfg() -> StateConfig {
    StateConfig {
        bucket_ms: 10 * MIN,
        allowed_lateness_ms: MIN,
        history_buckets: 100,
        dedup_window_ms: 3_600_000,
    }
}

pub(crate) fn job(id: &str, at: Millis, vcpus: f64) -> Event {
    Event::JobSubmitted(JobSubmitted {
        job_id: id.into(),
        submitted_at: at,
        compute_environment: "ce".into(),
        job_type: "t".into(),
        project: "p".into(),
        user: "u".into(),
        priority: 0,
        vcpus,
        memory_mib: 1024,
        gpus: 0,
        estimated_runtime_s: None,
        budget_usd: None,
        deadline: None,
        elasticity: false,
    })
}

pub(crate) fn done(id: &str, at: Millis) -> Event {
    Event::JobCompleted(JobCompleted {
        job_id: id.into(),
        compute_environment: "ce".into(),
        started_at: at,
        finished_at: at,
        status: JobStatus::Succeeded,
        instance_type: None,
        market: None,
        region: None,
        vcpu_seconds: 0.0,
        max_memory_mib: None,
    })
}

fn run(events: &[Event]) -> (DemandState, Vec<Millis>) {
    let mut st = DemandState::new(cfg());
    let mut ticks = Vec::new();
    for e in events {
        st.apply(e, &mut ticks);
    }
    (st, ticks)
}

#[test]
fn time_weighted_concurrent_demand() {
    // 4 vCPUs from minute 0 to 15: bucket [0,10) = 4, bucket [10,20) = 2 on average.
    let (mut st, mut ticks) = run(&[
        job("a", 0, 4.0),
        done("a", 15 * MIN),
        job("b", 31 * MIN, 1.0),
    ]);
    assert_eq!(ticks, vec![10 * MIN, 20 * MIN, 30 * MIN]);
    st.flush(&mut ticks);
    let v: Vec<f64> = st.series()[0].values.iter().map(|r| r[VCPU]).collect();
    assert_eq!(v, vec![4.0, 2.0, 0.0, 0.9]);
    assert_eq!(st.series()[0].submissions, vec![1, 0, 0, 1]);
    assert_eq!(st.outstanding_in("ce")[VCPU], 1.0);
}

#[test]
fn late_within_lateness_lands_in_its_bucket() {
    // Watermark trails by 1 min: the event at 9:30 arriving after one at 10:00 still counts in [0,10).
    let (mut st, mut ticks) = run(&[job("a", 10 * MIN, 1.0), job("b", 9 * MIN + 30_000, 2.0)]);
    st.flush(&mut ticks);
    assert_eq!(st.counters().late, 0);
    let v = st.series()[0].values[0][VCPU];
    assert!((v - 0.1).abs() < 1e-9, "{v}");
}

#[test]
fn too_late_is_counted_and_not_lost() {
    let (mut st, mut ticks) = run(&[
        job("a", 0, 1.0),
        job("b", 25 * MIN, 1.0),
        job("c", 5 * MIN, 2.0),
    ]);
    assert_eq!(st.counters().late, 1);
    st.flush(&mut ticks);
    // c is applied from the start of the oldest open bucket [20,30): level 4 at the end.
    assert_eq!(st.outstanding_in("ce")[VCPU], 4.0);
    let last = st.series()[0].values.last().unwrap()[VCPU];
    assert!((last - 3.5).abs() < 1e-9, "{last}");
}

#[test]
fn duplicates_are_counted_and_ignored() {
    let (st, _) = run(&[
        job("a", 0, 1.0),
        job("a", 0, 1.0),
        done("a", MIN),
        done("a", MIN),
        job("a", 2 * MIN, 1.0),
    ]);
    let c = st.counters();
    assert_eq!(c.submissions, 1);
    assert_eq!(c.duplicate_submissions, 1);
    // Submitted again at another time: a contradiction, refused all the same.
    assert_eq!(c.conflicting_submissions, 1);
    assert_eq!(c.duplicate_completions, 1);
    assert_eq!(st.outstanding_in("ce")[VCPU], 0.0);
}

#[test]
fn a_duplicate_naming_another_environment_creates_no_series() {
    let mut dup = job("a", MIN, 1.0);
    if let Event::JobSubmitted(j) = &mut dup {
        j.compute_environment = "other".into();
    }
    let (st, _) = run(&[job("a", 0, 1.0), dup]);
    assert_eq!(st.counters().conflicting_submissions, 1);
    assert_eq!(st.environments(), vec!["ce"]);
    assert_eq!(st.series().len(), 1);
}

#[test]
fn completion_before_submission_is_held() {
    let (st, _) = run(&[done("a", 5 * MIN), job("a", 4 * MIN, 2.0)]);
    assert_eq!(st.counters().early_completions, 1);
    assert_eq!(st.outstanding_in("ce")[VCPU], 0.0);
}

#[test]
fn snapshot_round_trip_gives_same_future() {
    let evs: Vec<Event> = (0..50)
        .flat_map(|i| {
            [
                job(&format!("j{i}"), i * 3 * MIN, 1.0 + i as f64),
                done(&format!("j{i}"), i * 3 * MIN + 20 * MIN),
            ]
        })
        .collect::<Vec<_>>();
    let mut sorted = evs.clone();
    sorted.sort_by_key(|e| e.time());
    let (a_full, _) = run(&sorted);
    let (mut half, mut ticks) = run(&sorted[..40]);
    let json = serde_json::to_string(&half).unwrap();
    let mut restored: DemandState = serde_json::from_str(&json).unwrap();
    for e in &sorted[40..] {
        half.apply(e, &mut ticks);
        restored.apply(e, &mut ticks);
    }
    assert_eq!(
        serde_json::to_string(&half).unwrap(),
        serde_json::to_string(&restored).unwrap()
    );
    assert_eq!(
        serde_json::to_string(&a_full).unwrap(),
        serde_json::to_string(&half).unwrap()
    );
}

#[test]
fn environment_totals_align_job_types() {
    let mut evs = vec![job("a", 0, 1.0)];
    if let Event::JobSubmitted(j) = &mut evs[0] {
        j.job_type = "x".into();
    }
    evs.push(job("b", 25 * MIN, 2.0));
    let s = demand_series(&evs, &cfg());
    let env = environment_vcpu_series(&s, cfg().bucket_ms);
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].2, vec![1.0, 1.0, 1.0 + 2.0 * 0.5]);
}

#[test]
fn budget_held_jobs_leave_the_demand_until_resumed() {
    let mut st = DemandState::new(cfg());
    let mut ticks = Vec::new();
    st.apply(&job("a", 0, 4.0), &mut ticks);
    st.apply(&job("b", 0, 2.0), &mut ticks);
    // b is held at submission: never demand.
    assert!(st.set_held("b", true, 0));
    assert!(!st.set_held("b", true, 0), "already held");
    assert!(!st.set_held("nope", true, 0));
    assert_eq!(st.outstanding_in("ce")[VCPU], 4.0);
    // Resumed at minute 15 (closed buckets are not rewritten: the change
    // lands in the oldest open one), done at minute 25.
    st.apply(&job("c", 12 * MIN, 0.0), &mut ticks);
    assert!(st.set_held("b", false, 5 * MIN));
    st.apply(&done("b", 25 * MIN), &mut ticks);
    // Held again and completed while held: no double subtraction.
    st.apply(&job("d", 26 * MIN, 1.0), &mut ticks);
    st.set_held("d", true, 26 * MIN);
    st.apply(&done("d", 27 * MIN), &mut ticks);
    st.flush(&mut ticks);
    let v: Vec<f64> = st.series()[0].values.iter().map(|r| r[VCPU]).collect();
    assert_eq!(v, vec![4.0, 6.0, 4.0 + 2.0 * 0.5]);
    assert_eq!(st.counters().late, 0);
    assert_eq!(st.outstanding_in("ce")[VCPU], 4.0);
}

/// The summary a scan over the outstanding jobs gives (what the running
/// totals replaced).
fn scanned_summary(st: &DemandState, env: &str, now: Millis, lead_ms: i64) -> EnvSummary {
    let mut s = EnvSummary::default();
    let mut milli = 0i64;
    for o in st.outstanding_jobs() {
        let j = &o.job;
        if j.compute_environment != env || o.held {
            continue;
        }
        s.jobs += 1;
        milli += (j.vcpus * 1000.0).round() as i64;
        s.memory_mib += j.memory_mib as f64;
        s.gpus += j.gpus as f64;
        s.top_priority = Some(s.top_priority.map_or(j.priority, |p| p.max(j.priority)));
        if let Some(d) = j.deadline {
            if d - now <= lead_ms + j.estimated_runtime_s.unwrap_or(0) * 1000 {
                s.deadline_pressure = true;
            }
        }
    }
    s.vcpus = milli as f64 / 1000.0;
    s
}

#[test]
fn running_totals_match_a_scan_through_holds_completions_and_restore() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut st = DemandState::new(cfg());
    let mut ticks = Vec::new();
    let envs = ["a", "b", "c"];
    for i in 0..600i64 {
        let t = i * MIN / 2;
        match rng.random_range(0..4) {
            0 | 1 => {
                let Event::JobSubmitted(mut j) = job(&format!("j{i}"), t, 0.0) else {
                    unreachable!()
                };
                j.compute_environment = envs[rng.random_range(0..3)].into();
                j.vcpus = rng.random_range(0..64) as f64 * 0.25;
                j.memory_mib = rng.random_range(0..100_000);
                j.gpus = rng.random_range(0..3);
                j.priority = rng.random_range(-5..5);
                j.estimated_runtime_s = rng.random_bool(0.7).then(|| rng.random_range(0..7200));
                j.deadline = rng
                    .random_bool(0.6)
                    .then(|| t + rng.random_range(0..4 * 3_600_000));
                st.apply(&Event::JobSubmitted(j), &mut ticks);
            }
            2 => {
                let id = format!("j{}", rng.random_range(0..=i));
                if let Some(o) = st.outstanding_job(&id) {
                    let mut c = done(&id, t);
                    if let Event::JobCompleted(c) = &mut c {
                        c.compute_environment = o.job.compute_environment.clone();
                    }
                    st.apply(&c, &mut ticks);
                }
            }
            _ => {
                let id = format!("j{}", rng.random_range(0..=i));
                st.set_held(&id, rng.random_bool(0.5), t);
            }
        }
        if i % 50 == 49 {
            let json = serde_json::to_string(&st).unwrap();
            st = serde_json::from_str(&json).unwrap();
        }
        for env in envs {
            for lead in [0, 600_000, 3_600_000] {
                assert_eq!(
                    st.environment_summary(env, t, lead),
                    scanned_summary(&st, env, t, lead),
                    "step {i}, env {env}, lead {lead}"
                );
            }
        }
    }
}

#[test]
fn checkpoint_maps_serialise_in_key_order() {
    let keys = [
        "b",
        "a",
        "",
        "a\u{0}",
        "job-0000000000000001-b",
        "job-0000000000000001-a",
        "job-0000000000000001",
        "job-00000000000000010",
        "ü",
        "z-very-long-id-beyond-sixteen-bytes",
    ];
    let m: super::HashMap<super::JobId, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (super::JobId::from(*k), i))
        .collect();
    let mut out = Vec::new();
    super::map_as_vec::serialize(&m, &mut serde_json::Serializer::new(&mut out)).unwrap();
    let got: Vec<(String, usize)> = serde_json::from_slice(&out).unwrap();
    let mut want: Vec<(String, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), i))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn one_job_table_checkpoints_as_outstanding_and_completed_lists() {
    let mut st = DemandState::new(cfg());
    let mut ticks = Vec::new();
    st.apply(&job("a", MIN, 1.0), &mut ticks);
    st.apply(&job("b", MIN, 2.0), &mut ticks);
    st.apply(&done("a", 2 * MIN), &mut ticks);
    let v = serde_json::to_value(&st).unwrap();
    assert_eq!(v["outstanding"].as_array().unwrap().len(), 1);
    assert_eq!(v["outstanding"][0][0], "b");
    let completed = v["completed"].as_array().unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0][0], "a");
    assert_eq!(completed[0][1][0], 2 * MIN);
    let mut back: DemandState = serde_json::from_value(v).unwrap();
    assert_eq!(
        back.apply(&job("a", MIN, 1.0), &mut ticks),
        Applied::Duplicate
    );
    assert_eq!(
        back.apply(&done("a", 2 * MIN), &mut ticks),
        Applied::Duplicate
    );
    // The restored fingerprints still tell a contradicting copy.
    assert_eq!(
        back.apply(&job("a", MIN, 3.0), &mut ticks),
        Applied::Conflict("content")
    );
    assert_eq!(
        back.apply(&done("a", 3 * MIN), &mut ticks),
        Applied::Conflict("finished_at")
    );
    assert_eq!(
        back.apply(&done("b", 3 * MIN), &mut ticks),
        Applied::Accepted
    );
    assert_eq!(
        back.apply(&done("b", 3 * MIN), &mut ticks),
        Applied::Duplicate
    );
    assert!(back.outstanding_job("b").is_none());
}

#[test]
fn a_checkpoint_of_completed_times_alone_still_reads_and_counts_copies_as_duplicates() {
    let mut st = DemandState::new(cfg());
    let mut ticks = Vec::new();
    st.apply(&job("a", MIN, 1.0), &mut ticks);
    st.apply(&done("a", 2 * MIN), &mut ticks);
    let mut v = serde_json::to_value(&st).unwrap();
    // The layout before fingerprints: `[id, finished_at]`.
    v["completed"] = serde_json::json!([["a", 2 * MIN]]);
    let mut back: DemandState = serde_json::from_value(v).unwrap();
    assert_eq!(
        back.apply(&job("a", MIN, 7.0), &mut ticks),
        Applied::Duplicate
    );
    assert_eq!(
        back.apply(&done("a", 2 * MIN), &mut ticks),
        Applied::Duplicate
    );
}

/// At-least-once input: every record delivered twice (right after itself,
/// and again much later) gives the same series as once; the copies are
/// counted and nothing else changes.
#[test]
fn copies_of_records_change_nothing() {
    let mut once = Vec::new();
    for i in 0..40 {
        once.push(job(&format!("j{i}"), i * 3 * MIN, 1.0 + (i % 3) as f64));
        if i >= 4 {
            let k = i - 4;
            once.push(done(&format!("j{k}"), i * 3 * MIN + 1));
        }
    }
    let mut twice = Vec::new();
    for (i, e) in once.iter().enumerate() {
        twice.push(e.clone());
        twice.push(e.clone());
        if i >= 9 {
            // A copy of a record from well before, after its bucket closed.
            twice.push(once[i - 9].clone());
        }
    }
    let (a, ta) = run(&once);
    let (b, tb) = run(&twice);
    assert_eq!(ta, tb);
    assert_eq!(a.series(), b.series());
    let c = b.counters();
    assert_eq!(c.submissions, a.counters().submissions);
    assert_eq!(c.completions, a.counters().completions);
    assert_eq!(
        c.duplicate_submissions + c.duplicate_completions,
        (twice.len() - once.len()) as u64
    );
    assert_eq!(c.late, 0, "a copy is not a late event");
    assert_eq!(c.conflicting_submissions + c.conflicting_completions, 0);
}

/// A record with a known job id and other content is refused, naming the
/// field, and changes nothing (not even the watermark).
#[test]
fn a_contradicting_copy_is_refused_naming_the_field() {
    let mut st = DemandState::new(cfg());
    let mut ticks = Vec::new();
    st.apply(&job("a", MIN, 2.0), &mut ticks);
    let before = serde_json::to_value(&st).unwrap();
    assert_eq!(
        st.apply(&job("a", MIN, 4.0), &mut ticks),
        Applied::Conflict("vcpus")
    );
    assert_eq!(
        st.apply(&job("a", 90 * MIN, 2.0), &mut ticks),
        Applied::Conflict("submitted_at")
    );
    assert!(ticks.is_empty(), "a refused record closed a bucket");
    let mut after = serde_json::to_value(&st).unwrap();
    after["counters"] = before["counters"].clone();
    assert_eq!(before, after);
    assert_eq!(st.counters().conflicting_submissions, 2);

    // A completion before its submission is held whole: compared field by field.
    let Event::JobCompleted(mut c) = done("b", 5 * MIN) else {
        unreachable!()
    };
    st.apply(&Event::JobCompleted(c.clone()), &mut ticks);
    c.vcpu_seconds = 9.0;
    assert_eq!(
        st.apply(&Event::JobCompleted(c.clone()), &mut ticks),
        Applied::Conflict("vcpu_seconds")
    );
    // Completed: fingerprints.
    st.apply(&done("a", 6 * MIN), &mut ticks);
    let Event::JobCompleted(mut c) = done("a", 6 * MIN) else {
        unreachable!()
    };
    c.status = JobStatus::Failed;
    assert_eq!(
        st.apply(&Event::JobCompleted(c), &mut ticks),
        Applied::Conflict("content")
    );
    assert_eq!(st.counters().conflicting_completions, 2);
}

#[test]
fn a_checkpoint_whose_parts_disagree_is_refused_not_restored() {
    let mut st = DemandState::new(cfg());
    let mut ticks = Vec::new();
    st.apply(&job("a", MIN, 1.0), &mut ticks);
    let good = serde_json::to_value(&st).unwrap();
    assert!(serde_json::from_value::<DemandState>(good.clone()).is_ok());

    let mut v = good.clone();
    v["outstanding"][0][1]["series"] = serde_json::json!(7);
    let e = serde_json::from_value::<DemandState>(v).unwrap_err();
    assert!(
        e.to_string()
            .contains("outstanding job a names series 7 of 1"),
        "{e}"
    );

    let mut v = good.clone();
    v["level"] = serde_json::json!([]);
    let e = serde_json::from_value::<DemandState>(v).unwrap_err();
    assert!(e.to_string().contains("0 levels for 1 series"), "{e}");

    let mut v = good;
    let bucket = v["open"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    v["open"][&bucket] = serde_json::json!({"3": v["open"][&bucket]["0"].clone()});
    let e = serde_json::from_value::<DemandState>(v).unwrap_err();
    assert!(e.to_string().contains("names series 3 of 1"), "{e}");
}
