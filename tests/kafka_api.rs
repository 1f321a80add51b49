//! The HTTP API of `prescale run --api-listen` against a REAL broker: it
//! answers from the live engine (the same answers `prescale serve` gives
//! from a file of the same events, which runs the same engine), with the
//! same token; an environment this instance has no events for is answered
//! 404 naming the instance; `/allocate_budget` goes through the
//! budget-allocation topic into the engine (202, then visible).

mod kafka_support;

use kafka_support::*;
use prescale::events::{BudgetAllocation, BudgetScope, Event};
use prescale::import::events_file::EventsWriter;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "kafka-api-token";

/// A `prescale` server process, stopped (SIGTERM) when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Start `args` and wait for its `listening on http://ADDR` line.
    fn start(args: &[String]) -> Server {
        let mut child = prescale()
            .args(args)
            .env("PRESCALE_API_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prescale starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        // Keep draining stdout (the run report at the end).
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Server { child, base }
    }

    /// SIGTERM (checkpoint, then stop) and wait; the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let st = self.child.wait().unwrap();
        std::mem::forget(self);
        st
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(s: &Server, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = reqwest::Client::new()
            .post(format!("{}{path}", s.base))
            .json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

fn health(s: &Server) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::get(format!("{}/healthz", s.base)).await.unwrap();
        r.json().await.unwrap()
    })
}

/// Wait until `f` holds for the server's health.
fn wait_health(s: &Server, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let h = health(s);
        if f(&h) {
            return h;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "{what}: last health {h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_file(path: &Path, evs: &[Event]) {
    let mut w = EventsWriter::create(path).unwrap();
    for e in evs {
        w.append(e).unwrap();
    }
    w.finish().unwrap();
}

/// The input: `events` plus a project budget, so admissions run.
fn input() -> Vec<Event> {
    let mut evs = events(12, 20);
    let at = evs[0].time();
    evs.insert(
        0,
        Event::BudgetAllocation(BudgetAllocation {
            at,
            scope: BudgetScope::Project,
            id: "p1".into(),
            usd: 2.5,
            period: Some("day".into()),
        }),
    );
    evs
}

#[test]
fn the_live_api_answers_from_the_engine_as_serve_does() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "api", state.path());
    create_topics(&cfg);
    let evs = input();
    let file = state.path().join("events.avro");
    write_file(&file, &evs);
    produce(
        &cfg,
        &evs,
        0,
        prescale::io::kafka::produce::Pace::AsFastAsPossible,
    );

    let model = repo().join("models/lstm/model.json");
    // One catalogue for both (`run` and `serve` default to different ones).
    let catalog = repo().join("data/aws-ondemand-us-east-1.csv");
    let mut run_args: Vec<String> = vec!["run".into()];
    run_args.extend(cli_args(&cfg));
    run_args.extend(["--instance".into(), "api-a".into()]);
    run_args.extend(["--api-listen".into(), "127.0.0.1:0".into()]);
    run_args.extend(["--catalog".into(), catalog.display().to_string()]);
    let live = Server::start(&run_args);
    let serve = Server::start(&[
        "serve".into(),
        "--events".into(),
        file.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--model".into(),
        model.display().to_string(),
        "--catalog".into(),
        catalog.display().to_string(),
    ]);

    // Every event reached the live engine.
    let n = evs.len() as u64;
    let h_live = wait_health(&live, "all events applied", |h| {
        h["events_applied"] == json!(n)
    });
    let h_file = health(&serve);
    for k in ["environments", "price_pools", "budget_accounts"] {
        assert_eq!(
            h_live[k], h_file[k],
            "healthz `{k}`: live {h_live} vs file {h_file}"
        );
    }
    assert_eq!(h_live["environments"].as_array().unwrap().len(), ENVS.len());

    // The token is required, as for `serve`.
    let ask = json!({"compute_environment": "ce-a", "horizon_s": 3600});
    assert_eq!(post(&live, "/predict_demand", &ask, None).0, 401);
    assert_eq!(post(&live, "/predict_demand", &ask, Some("wrong")).0, 401);

    // Same answers as the engine fed from the file.
    for body in [
        ask.clone(),
        json!({"compute_environment": "ce-d", "quantiles": [0.5, 0.9]}),
        json!({"job": {
            "job_id": "q1", "submitted_at": 1_700_000_000_000i64, "compute_environment": "ce-b",
            "job_type": "batch", "project": "p1", "user": "u", "priority": 0, "vcpus": 2.0,
            "memory_mib": 1024, "gpus": 0, "estimated_runtime_s": 600, "budget_usd": null,
            "deadline": null, "elasticity": false}}),
        json!({"vcpus": 2.0, "memory_mib": 4096}),
    ] {
        let path = if body.get("vcpus").is_some() {
            "/get_optimal_instance"
        } else {
            "/predict_demand"
        };
        let (sl, mut l) = post(&live, path, &body, Some(TOKEN));
        let (sf, mut f) = post(&serve, path, &body, Some(TOKEN));
        // The live model is named `shared` (retraining may swap it); the
        // numbers are the same model's.
        for v in [&mut l, &mut f] {
            if let Some(o) = v.as_object_mut() {
                o.remove("forecaster");
            }
        }
        assert_eq!((sl, &l), (sf, &f), "{path} {body}");
    }
    // A job prediction used the completions the engine applied.
    let (_, j) = post(
        &live,
        "/predict_demand",
        &json!({"job": {"job_id": "q2", "submitted_at": 0, "compute_environment": "ce-c",
            "job_type": "batch", "project": "p", "user": "u", "priority": 0, "vcpus": 1.0,
            "memory_mib": 0, "gpus": 0, "estimated_runtime_s": null, "budget_usd": null,
            "deadline": null, "elasticity": false}}),
        Some(TOKEN),
    );
    assert!(
        j["runtime_source"]
            .as_str()
            .unwrap()
            .starts_with("history:"),
        "{j}"
    );

    // An environment this instance has no events for: 404, naming it.
    let (st, e) = post(
        &live,
        "/predict_demand",
        &json!({"compute_environment": "ce-elsewhere"}),
        Some(TOKEN),
    );
    assert_eq!(st, 404, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("api-a") && msg.contains(&cfg.group_id),
        "{msg}"
    );

    // A budget: the same account view as the file's engine, published
    // (202) and then applied by the live engine from the topic.
    let alloc = json!({"scope": "project", "id": "p1", "usd": 7.0, "period": "day"});
    let (sl, l) = post(&live, "/allocate_budget", &alloc, Some(TOKEN));
    let (sf, f) = post(&serve, "/allocate_budget", &alloc, Some(TOKEN));
    assert_eq!((sl, sf), (202, 200), "{l} {f}");
    for k in ["key", "allocated", "committed", "spent", "remaining"] {
        assert_eq!(l[k], f[k], "account `{k}`: live {l} vs file {f}");
    }
    let new = json!({"scope": "user", "id": "api-user", "usd": 1.0});
    assert_eq!(post(&live, "/allocate_budget", &new, Some(TOKEN)).0, 202);
    let accounts = h_live["budget_accounts"].as_u64().unwrap();
    wait_health(&live, "the published allocation applied", |h| {
        h["budget_accounts"].as_u64() == Some(accounts + 1)
    });
    // Refused before anything is published, with the field named.
    let (st, e) = post(
        &live,
        "/allocate_budget",
        &json!({"scope": "project", "id": "p1", "usd": 1.0, "period": "fortnight"}),
        Some(TOKEN),
    );
    assert_eq!((st, e["field"].as_str()), (400, Some("period")), "{e}");

    assert!(live.stop().success(), "prescale run exits cleanly");
    drop(serve);
}

/// `events` over twelve environments (by job number), so that two
/// instances splitting three partitions each hold some.
fn spread_input() -> Vec<Event> {
    let mut evs = events(12, 20);
    let env_of = |id: &str| -> String {
        let n: u64 = id.trim_start_matches("job-").parse().unwrap();
        format!("ce-{:02}", n % 12)
    };
    for ev in &mut evs {
        match ev {
            Event::JobSubmitted(j) => j.compute_environment = env_of(&j.job_id).into(),
            Event::JobCompleted(c) => c.compute_environment = env_of(&c.job_id).into(),
            _ => {}
        }
    }
    evs
}

fn environments(s: &Server) -> Vec<String> {
    health(s)["environments"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Two instances of one group, each serving the API: a request for an
/// environment the other holds is answered 404 naming the holder and its
/// API address (from the API directory topic), which answers it; nobody is
/// named for an environment nobody holds, nor an instance that left.
#[test]
fn an_environment_held_elsewhere_is_answered_with_its_holder() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "apidir", state.path());
    create_topics(&cfg);
    let evs = spread_input();
    produce(
        &cfg,
        &evs,
        0,
        prescale::io::kafka::produce::Pace::AsFastAsPossible,
    );
    let catalog = repo().join("data/aws-ondemand-us-east-1.csv");
    let start = |name: &str| {
        let mut a: Vec<String> = vec!["run".into()];
        a.extend(cli_args(&cfg));
        a.extend(["--instance".into(), name.into()]);
        a.extend(["--api-listen".into(), "127.0.0.1:0".into()]);
        a.extend(["--catalog".into(), catalog.display().to_string()]);
        Server::start(&a)
    };
    let a = start("dir-a");
    let b = start("dir-b");
    // Wait for a split where each holds some of the twelve, none twice.
    let t = Instant::now();
    let (ea, eb) = loop {
        let (ea, eb) = (environments(&a), environments(&b));
        let disjoint = ea.iter().all(|e| !eb.contains(e));
        if !ea.is_empty() && !eb.is_empty() && disjoint && ea.len() + eb.len() == 12 {
            break (ea, eb);
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "no split: a {ea:?} b {eb:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Each names the other for the other's environments (within a few
    // publishing periods), and the holder answers.
    for (asked, holder, name, env) in [(&a, &b, "dir-b", &eb[0]), (&b, &a, "dir-a", &ea[0])] {
        let body = json!({"compute_environment": env, "horizon_s": 3600});
        let t = Instant::now();
        let e = loop {
            let (st, e) = post(asked, "/predict_demand", &body, Some(TOKEN));
            assert_eq!(st, 404, "{e}");
            if e.get("holder").is_some() {
                break e;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "never named: {e}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(e["holder"]["instance"], name, "{e}");
        assert_eq!(e["holder"]["api"], holder.base.as_str(), "{e}");
        assert_eq!(e["field"], "compute_environment", "{e}");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(name) && msg.contains(&holder.base), "{msg}");
        let (st, f) = post(holder, "/predict_demand", &body, Some(TOKEN));
        assert_eq!(st, 200, "{f}");
    }
    // Nobody holds it: no holder.
    let (st, e) = post(
        &a,
        "/predict_demand",
        &json!({"compute_environment": "ce-nowhere"}),
        Some(TOKEN),
    );
    assert_eq!(st, 404, "{e}");
    assert!(e.get("holder").is_none(), "{e}");
    // b leaves: a never names it again (it takes b's environments over, or
    // says nobody holds them).
    assert!(b.stop().success(), "prescale run exits cleanly");
    let body = json!({"compute_environment": &eb[0]});
    let t = Instant::now();
    loop {
        let (st, e) = post(&a, "/predict_demand", &body, Some(TOKEN));
        if st == 200 || (st == 404 && e.get("holder").is_none()) {
            break;
        }
        // Its last record says it left: read within moments, not after
        // the records' 6 s of freshness.
        assert!(t.elapsed() < Duration::from_secs(3), "{st} {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.stop().success());
}
