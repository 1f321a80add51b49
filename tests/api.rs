//! HTTP API tests against the real `prescale serve` binary on a loopback
//! port: every endpoint, 401 without the token, 400 with a field-named
//! message on bad JSON, 413 on an oversize body, and a bad policy file
//! failing at start with file, key and reason.

use prescale::events::{Event, JobCompleted, JobStatus, JobSubmitted, Market, PriceTick};
use prescale::import::events_file::EventsWriter;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const TOKEN: &str = "test-token-123";
const H: i64 = 3_600_000;
const T0: i64 = 1_700_000_000_000;

/// Kills the server when the test ends, pass or fail.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_events(dir: &Path) -> PathBuf {
    let path = dir.join("events.avro");
    let mut w = EventsWriter::create(&path).unwrap();
    let mut evs = Vec::new();
    // A day of jobs every 10 minutes, each 4 vCPUs for 40 minutes.
    for i in 0..144i64 {
        let at = T0 + i * 600_000;
        let id = format!("j{i}");
        evs.push(Event::JobSubmitted(JobSubmitted {
            job_id: id.clone().into(),
            submitted_at: at,
            compute_environment: "ricc".into(),
            job_type: "batch".into(),
            project: "p1".into(),
            user: "u1".into(),
            priority: 0,
            vcpus: 4.0,
            memory_mib: 4096,
            gpus: 0,
            estimated_runtime_s: Some(3000),
            budget_usd: None,
            deadline: None,
            elasticity: false,
        }));
        evs.push(Event::JobCompleted(JobCompleted {
            job_id: id.into(),
            compute_environment: "ricc".into(),
            started_at: at + 60_000,
            finished_at: at + 60_000 + 2_400_000,
            status: JobStatus::Succeeded,
            instance_type: None,
            market: None,
            region: None,
            vcpu_seconds: 4.0 * 2400.0,
            max_memory_mib: None,
        }));
    }
    for (zone, itype, p) in [
        ("use1-az1", "c5.large", 0.031),
        ("use1-az2", "c5.large", 0.034),
        ("use1-az1", "m5.large", 0.038),
    ] {
        evs.push(Event::PriceTick(PriceTick {
            at: T0 + 20 * H,
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: Some(zone.into()),
            instance_type: itype.into(),
            market: Market::Spot,
            usd_per_hour: p,
        }));
    }
    evs.sort_by_key(|e| e.time());
    for e in &evs {
        w.append(e).unwrap();
    }
    w.finish().unwrap();
    path
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    let events = write_events(dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .arg("serve")
        .arg("--events")
        .arg(&events)
        .args(["--listen", "127.0.0.1:0", "--body-limit", "4096"])
        .args(extra)
        .env("PRESCALE_API_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("prescale binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, base: addr }
}

async fn post(s: &Server, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", s.base))
        .header("content-type", "application/json")
        .body(body.to_string());
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
}

async fn get(s: &Server, path: &str, token: Option<&str>) -> (u16, String) {
    let mut r = reqwest::Client::new().get(format!("{}{path}", s.base));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn endpoints_auth_validation_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    let tok = Some(TOKEN);

    // healthz: open, reports the state built from the file
    let (st, body) = get(&s, "/healthz", None).await;
    assert_eq!(st, 200);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["environments"], json!(["ricc"]));
    assert_eq!(h["price_pools"], json!(3));

    // 401 without or with a wrong token, on every protected route
    for path in [
        "/predict_demand",
        "/get_optimal_instance",
        "/allocate_budget",
    ] {
        assert_eq!(post(&s, path, "{}", None).await.0, 401, "{path}");
        assert_eq!(post(&s, path, "{}", Some("nope")).await.0, 401, "{path}");
    }
    assert_eq!(get(&s, "/metrics", None).await.0, 401);

    // predict_demand for an environment
    let (st, v) = post(
        &s,
        "/predict_demand",
        r#"{"compute_environment":"ricc","horizon_s":3600,"quantiles":[0.1,0.5,0.9]}"#,
        tok,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let q = v["quantiles"].as_array().unwrap();
    assert_eq!(q.len(), 3);
    let vc: Vec<f64> = q.iter().map(|x| x["vcpus"].as_f64().unwrap()).collect();
    assert!(vc[0] <= vc[1] && vc[1] <= vc[2], "{vc:?}");
    assert!(vc[2] > 0.0);
    assert_eq!(v["steps"].as_array().unwrap().len(), 12);

    // predict_demand for one job: runtimes from history (40 min each)
    let job = json!({"job": {
        "job_id": "new", "submitted_at": T0 + 30 * H, "compute_environment": "ricc",
        "job_type": "batch", "project": "p1", "user": "u1", "priority": 0, "vcpus": 8.0,
        "memory_mib": 8192, "gpus": 0, "estimated_runtime_s": null, "budget_usd": null,
        "deadline": null, "elasticity": false}, "quantiles": [0.5, 0.9]});
    let (st, v) = post(&s, "/predict_demand", &job.to_string(), tok).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["runtime_source"], json!("history:144"));
    assert_eq!(v["quantiles"][0]["runtime_s"].as_f64().unwrap(), 2400.0);
    assert_eq!(v["quantiles"][1]["vcpus"].as_f64().unwrap(), 8.0);

    // get_optimal_instance: the cheapest spot pool, with alternatives
    let (st, v) = post(
        &s,
        "/get_optimal_instance",
        r#"{"vcpus":2,"memory_mib":4096,"gpus":0}"#,
        tok,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["instance_type"], json!("c5.large"));
    assert_eq!(v["market"], json!("SPOT"));
    assert_eq!(v["region"], json!("us-east-1"));
    assert!(!v["alternatives"].as_array().unwrap().is_empty());
    let (st, v) = post(
        &s,
        "/get_optimal_instance",
        r#"{"vcpus":2,"memory_mib":4096,"gpus":0,"markets":["ON_DEMAND"],"max_usd_per_hour":1.0}"#,
        tok,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["market"], json!("ON_DEMAND"));

    // allocate_budget: the account after the change
    let (st, v) = post(
        &s,
        "/allocate_budget",
        r#"{"scope":"project","id":"p1","usd":100,"period":"month"}"#,
        tok,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["key"], json!("project:p1"));
    assert_eq!(v["allocated"].as_f64().unwrap(), 100.0);
    assert_eq!(v["remaining"].as_f64().unwrap(), 100.0);

    // 400 with the field named
    for (path, body, field) in [
        ("/get_optimal_instance", r#"{"vcpus":"two"}"#, "vcpus"),
        ("/get_optimal_instance", r#"{"memory_mib":1024}"#, "vcpus"),
        ("/get_optimal_instance", r#"{"vcpus":-1}"#, "vcpus"),
        (
            "/get_optimal_instance",
            r#"{"vcpus":2,"markets":["MOON"]}"#,
            "markets[0]",
        ),
        (
            "/get_optimal_instance",
            r#"{"vcpus":2,"colour":"red"}"#,
            "colour",
        ),
        ("/get_optimal_instance", r#"{"vcpus": 2,"#, "body"),
        (
            "/predict_demand",
            r#"{"compute_environment":"ricc","quantiles":[0.9,0.1]}"#,
            "quantiles",
        ),
        (
            "/predict_demand",
            r#"{"compute_environment":"ricc","horizon_s":"soon"}"#,
            "horizon_s",
        ),
        (
            "/predict_demand",
            r#"{"job":{"job_id":"x"}}"#,
            "job.submitted_at",
        ),
        (
            "/allocate_budget",
            r#"{"scope":"team","id":"x","usd":1}"#,
            "scope",
        ),
        (
            "/allocate_budget",
            r#"{"scope":"user","id":"x","usd":1,"period":"fortnight"}"#,
            "period",
        ),
        ("/allocate_budget", r#"{"scope":"user","id":"x"}"#, "usd"),
    ] {
        let (st, v) = post(&s, path, body, tok).await;
        assert_eq!(st, 400, "{path} {body}: {v}");
        assert_eq!(v["field"], json!(field), "{path} {body}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    // unknown environment: 404 naming the field
    let (st, v) = post(
        &s,
        "/predict_demand",
        r#"{"compute_environment":"nope"}"#,
        tok,
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(v["field"], json!("compute_environment"));

    // 413 on an oversize body (limit 4096 bytes)
    let big = format!(r#"{{"vcpus":2,"regions":["{}"]}}"#, "x".repeat(10_000));
    let (st, v) = post(&s, "/get_optimal_instance", &big, tok).await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["field"], json!("body"));

    // metrics and openapi
    let (st, m) = get(&s, "/metrics", tok).await;
    assert_eq!(st, 200);
    assert!(m.contains("prescale_api_requests"), "{m}");
    assert!(m.contains("route=\"/get_optimal_instance\""), "{m}");
    let (st, o) = get(&s, "/openapi.json", tok).await;
    assert_eq!(st, 200);
    let o: Value = serde_json::from_str(&o).unwrap();
    assert!(o["paths"]["/allocate_budget"]["post"].is_object());
}

#[test]
fn invalid_policy_fails_at_start_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[environments.ricc]\nquantile_by_priority = { high = 1.2, normal = 0.5, low = 0.1 }\n",
    )
    .unwrap();
    let events = write_events(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .arg("serve")
        .arg("--events")
        .arg(&events)
        .arg("--policy")
        .arg(&policy)
        .args(["--listen", "127.0.0.1:0"])
        .env("PRESCALE_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.toml"), "{err}");
    assert!(
        err.contains("environments.ricc.quantile_by_priority.high"),
        "{err}"
    );
    assert!(err.contains("between 0 and 1"), "{err}");
}
