//! The deployment files are checked without a Docker engine: the compose
//! file and Grafana provisioning parse, everything they reference exists,
//! the dashboard queries only measurements and fields prescale writes, and
//! the docs name only services that exist (and document every one).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prescale::events::topics;
use prescale::store::points::{measurement, FIELDS};
use prescale::telemetry::metrics::FAMILIES;
use serde_norway::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose_dir() -> PathBuf {
    root().join("compose")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn compose() -> Value {
    let text = read(&compose_dir().join("docker-compose.yml"));
    let mut v: Value = serde_norway::from_str(&text).expect("docker-compose.yml parses as YAML");
    v.apply_merge().expect("YAML merge keys resolve");
    v
}

fn services(c: &Value) -> Vec<(String, Value)> {
    c["services"]
        .as_mapping()
        .expect("services mapping")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn env_of(svc: &Value) -> Vec<(String, String)> {
    match &svc["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    other => panic!("unexpected env value {other:?}"),
                };
                (k.as_str().unwrap().to_owned(), v)
            })
            .collect(),
        Value::Null => vec![],
        other => panic!("environment must be a mapping: {other:?}"),
    }
}

fn env_get(svc: &Value, key: &str) -> Option<String> {
    env_of(svc)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Images we reference: official, versioned images (checked by name and a
/// pinned tag; the test machine cannot pull them).
const KNOWN_IMAGES: &[&str] = &["apache/kafka", "influxdb", "grafana/grafana"];

#[test]
fn compose_has_the_stack_and_references_only_existing_things() {
    let c = compose();
    let svcs = services(&c);
    let names: BTreeSet<String> = svcs.iter().map(|(n, _)| n.clone()).collect();
    for want in ["kafka", "kafka-init", "influxdb", "grafana", "prescale"] {
        assert!(
            names.contains(want),
            "service {want} missing; have {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.contains("zookeeper")),
        "KRaft: no ZooKeeper"
    );
    let volumes: BTreeSet<String> = c["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    for (name, svc) in &svcs {
        // Image pinned to a version, or a build whose context and Dockerfile exist.
        match (&svc["image"], &svc["build"]) {
            (_, Value::Mapping(b)) => {
                let ctx =
                    compose_dir().join(b.get("context").and_then(Value::as_str).unwrap_or("."));
                assert!(
                    ctx.is_dir(),
                    "{name}: build context {} missing",
                    ctx.display()
                );
                let df = ctx.join(
                    b.get("dockerfile")
                        .and_then(Value::as_str)
                        .unwrap_or("Dockerfile"),
                );
                assert!(df.is_file(), "{name}: {} missing", df.display());
            }
            (Value::String(img), _) => {
                let (repo, tag) = img
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("{name}: image {img} has no tag"));
                assert!(
                    KNOWN_IMAGES.contains(&repo),
                    "{name}: unexpected image {repo}"
                );
                assert!(
                    tag != "latest" && tag.chars().next().unwrap().is_ascii_digit(),
                    "{name}: pin a version, not {tag}"
                );
            }
            _ => panic!("{name}: neither image nor build"),
        }
        // Bind mounts exist; named volumes are declared.
        if let Some(vs) = svc["volumes"].as_sequence() {
            for v in vs {
                let spec = v.as_str().expect("short volume syntax");
                let src = spec.split(':').next().unwrap();
                if src.starts_with('.') || src.starts_with('/') {
                    let p = compose_dir().join(src);
                    assert!(p.exists(), "{name}: mounted {} does not exist", p.display());
                } else {
                    assert!(volumes.contains(src), "{name}: volume {src} not declared");
                }
            }
        }
        // depends_on names real services.
        if let Some(m) = svc["depends_on"].as_mapping() {
            for k in m.keys() {
                let k = k.as_str().unwrap();
                assert!(names.contains(k), "{name} depends on unknown service {k}");
            }
        }
    }
}

#[test]
fn kafka_is_kraft_and_topics_cover_prescales_topics() {
    let c = compose();
    let kafka = &c["services"]["kafka"];
    let roles = env_get(kafka, "KAFKA_PROCESS_ROLES").expect("KRaft roles");
    assert!(
        roles.contains("broker") && roles.contains("controller"),
        "{roles}"
    );
    assert!(env_get(kafka, "KAFKA_CONTROLLER_QUORUM_VOTERS").is_some());
    let script = read(&compose_dir().join("kafka/create-topics.sh"));
    for t in [
        topics::JOB_SUBMISSION,
        topics::JOB_COMPLETION,
        topics::PRICE_TICK,
        topics::BUDGET_ALLOCATION,
        topics::SCALING_COMMAND,
        topics::PREEMPTION_COMMAND,
    ] {
        assert!(
            script
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .any(|w| w == t),
            "create-topics.sh misses {t}"
        );
    }
    let prescale = &c["services"]["prescale"];
    let brokers = env_get(prescale, "PRESCALE_KAFKA_BROKERS").unwrap();
    assert_eq!(
        brokers, "kafka:9092",
        "prescale talks to the internal listener"
    );
    let adv = env_get(kafka, "KAFKA_ADVERTISED_LISTENERS").unwrap();
    assert!(adv.contains("kafka:9092"), "{adv}");
}

#[test]
fn influxdb_is_initialised_and_prescale_and_grafana_use_the_same_org_bucket_token() {
    let c = compose();
    let influx = &c["services"]["influxdb"];
    assert_eq!(
        env_get(influx, "DOCKER_INFLUXDB_INIT_MODE").as_deref(),
        Some("setup")
    );
    let org = env_get(influx, "DOCKER_INFLUXDB_INIT_ORG").unwrap();
    let bucket = env_get(influx, "DOCKER_INFLUXDB_INIT_BUCKET").unwrap();
    let token = env_get(influx, "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN").unwrap();
    for k in [
        "DOCKER_INFLUXDB_INIT_USERNAME",
        "DOCKER_INFLUXDB_INIT_PASSWORD",
    ] {
        assert!(env_get(influx, k).is_some_and(|v| !v.is_empty()), "{k}");
    }
    let p = &c["services"]["prescale"];
    assert_eq!(env_get(p, "PRESCALE_INFLUX_ORG").unwrap(), org);
    assert_eq!(env_get(p, "PRESCALE_INFLUX_BUCKET").unwrap(), bucket);
    assert_eq!(env_get(p, "PRESCALE_INFLUX_TOKEN").unwrap(), token);
    assert_eq!(
        env_get(p, "PRESCALE_INFLUX_URL").unwrap(),
        "http://influxdb:8086"
    );
    let g = &c["services"]["grafana"];
    assert_eq!(env_get(g, "INFLUX_ORG").unwrap(), org);
    assert_eq!(env_get(g, "INFLUX_BUCKET").unwrap(), bucket);
    assert_eq!(env_get(g, "INFLUX_TOKEN").unwrap(), token);
}

fn datasource_uid() -> String {
    let ds: Value = serde_norway::from_str(&read(
        &compose_dir().join("grafana/provisioning/datasources/influxdb.yml"),
    ))
    .unwrap();
    let d = &ds["datasources"][0];
    assert_eq!(d["type"].as_str(), Some("influxdb"));
    assert_eq!(d["jsonData"]["version"].as_str(), Some("Flux"));
    assert_eq!(
        d["url"].as_str(),
        Some("http://influxdb:8086"),
        "points at the compose service"
    );
    assert!(d["secureJsonData"]["token"]
        .as_str()
        .unwrap()
        .contains("INFLUX_TOKEN"));
    d["uid"].as_str().unwrap().to_owned()
}

/// `r._measurement == "x"` / `r._field == "y"` literals in a Flux query.
fn literals(q: &str, key: &str) -> Vec<String> {
    let pat = format!("{key} == \"");
    q.match_indices(&pat)
        .map(|(i, _)| {
            let rest = &q[i + pat.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

#[test]
fn dashboard_is_provisioned_and_queries_only_what_prescale_writes() {
    let uid = datasource_uid();
    let prov: Value = serde_norway::from_str(&read(
        &compose_dir().join("grafana/provisioning/dashboards/prescale.yml"),
    ))
    .unwrap();
    let path = prov["providers"][0]["options"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    // The provider path is where compose mounts compose/grafana/dashboards.
    let c = compose();
    let mounts: Vec<String> = c["services"]["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:") && m.contains(&path)),
        "{mounts:?} vs {path}"
    );

    let text = read(&compose_dir().join("grafana/dashboards/prescale.json"));
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    assert!(d["uid"].is_string() && d["title"].is_string());
    let panels = d["panels"].as_array().unwrap();
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for want in [
        "demand vs forecast",
        "capacity",
        "spend vs budget",
        "decisions",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel for {want}: {titles:?}"
        );
    }
    let mut measured = BTreeSet::new();
    for p in panels {
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some(uid.as_str()),
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"].as_str(), Some(uid.as_str()));
            let q = t["query"].as_str().unwrap();
            assert!(q.contains("from(bucket: \"${bucket}\")"), "{q}");
            let ms = literals(q, "r._measurement");
            assert!(!ms.is_empty(), "query names no measurement: {q}");
            for m in &ms {
                let fields = FIELDS
                    .iter()
                    .find(|(name, _)| name == m)
                    .unwrap_or_else(|| panic!("dashboard queries unknown measurement {m}"))
                    .1;
                for f in literals(q, "r._field") {
                    assert!(fields.contains(&f.as_str()), "{m} has no field {f}");
                }
                measured.insert(m.clone());
            }
        }
    }
    for m in [
        measurement::DEMAND,
        measurement::FORECAST,
        measurement::DECISION,
        measurement::SPEND,
        measurement::BUDGET,
    ] {
        assert!(measured.contains(m), "dashboard never shows {m}");
    }
    // Template variables used in queries are defined.
    let vars: BTreeSet<String> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    for v in ["bucket", "env", "horizon"] {
        assert!(vars.contains(v), "variable {v} missing");
    }
}

#[test]
fn deploy_docs_name_only_existing_services_and_document_all() {
    let doc = read(&root().join("docs/deploy.md"));
    let names: BTreeSet<String> = services(&compose()).into_iter().map(|(n, _)| n).collect();
    // Rows of the services table: "| `name` | ...".
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        documented, names,
        "docs/deploy.md services table vs compose services"
    );
    // Services named in `docker compose ... <cmd> <service>` commands exist.
    let joined = doc.replace("\\\n", " ");
    for line in joined.lines().filter(|l| l.contains("docker compose")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if ["run", "logs", "exec", "restart", "stop", "start"].contains(w) {
                if let Some(svc) = words[i + 1..]
                    .iter()
                    .find(|x| !x.starts_with('-') && !x.starts_with('"') && !x.contains(':'))
                {
                    let svc = svc.trim_matches(|c: char| c == '`' || c == ',' || c == '.');
                    assert!(
                        names.contains(svc),
                        "docs name unknown service {svc} in: {line}"
                    );
                }
            }
        }
    }
    assert!(doc.contains("docker compose -f compose/docker-compose.yml up"));
    assert!(doc.contains("prescale produce"));
}

#[test]
fn dockerfile_is_multi_stage_and_copies_existing_paths() {
    let df = read(&root().join("Dockerfile"));
    let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    for f in &froms {
        let img = f.split_whitespace().nth(1).unwrap();
        assert!(img.contains(':') && !img.ends_with(":latest"), "pin {img}");
    }
    for l in df
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
    assert!(df.contains("cargo build --release --locked --bin prescale"));
    assert!(df.contains("ENTRYPOINT [\"prescale\"]"));
}

#[test]
fn telemetry_docs_name_every_measurement_field_and_metric() {
    let doc = read(&root().join("docs/telemetry.md"));
    for (m, fields) in FIELDS {
        assert!(
            doc.contains(&format!("`{m}`")),
            "docs/telemetry.md misses measurement {m}"
        );
        for f in *fields {
            assert!(
                doc.contains(&format!("`{f}`")),
                "docs/telemetry.md misses field {m}.{f}"
            );
        }
    }
    for m in measurement::ALL {
        assert!(FIELDS.iter().any(|(n, _)| *n == m), "FIELDS misses {m}");
    }
    for (name, _) in FAMILIES {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/telemetry.md misses metric {name}"
        );
    }
    for s in prescale::telemetry::spans::ALL {
        assert!(doc.contains(s), "docs/telemetry.md misses span {s}");
    }
}
