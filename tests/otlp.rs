//! OpenTelemetry export over real OTLP/HTTP (protobuf) to a small receiver
//! listening on a loopback port inside the test: it accepts `POST
//! /v1/traces` and `/v1/metrics`, decodes the protobuf with the official
//! OTLP message definitions, and the tests check what arrived.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumValue;
use prescale::telemetry::{self, otel, spans, DropReason, Metrics, TelemetryConfig};
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Minimal HTTP/1.1 server: records (path, body) of every request, answers 200.
fn start_receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let got2 = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let got = got2.clone();
            std::thread::spawn(move || serve(conn, got));
        }
    });
    (url, got)
}

fn serve(conn: TcpStream, got: Received) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let (mut len, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len, 0);
            r.read_exact(&mut body).unwrap();
        }
        got.lock().unwrap().push((path, body));
        let _ = w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        );
    }
}

fn wait_for(got: &Received, path: &str, pred: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bodies: Vec<Vec<u8>> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect();
        if bodies.iter().any(|b| pred(b)) {
            return bodies;
        }
        assert!(
            Instant::now() < deadline,
            "nothing matching arrived on {path}; got paths {:?}",
            got.lock()
                .unwrap()
                .iter()
                .map(|(p, _)| p.clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

const T0: i64 = 1_700_000_100_000; // on a 5-minute boundary

/// Drive the real engine (statistical forecaster, cost-aware planner, one
/// budget) over two 5-minute buckets of jobs, so a bucket closes and a tick
/// decides, then publish its commands as the Kafka service does: under the
/// tick's span. Returns the commands the last tick produced.
fn emit_tick() -> usize {
    use prescale::engine::{Engine, EngineConfig};
    use prescale::events::{BudgetAllocation, BudgetScope, Command, Event, JobSubmitted};
    use prescale::forecast::SeasonalNaive;
    use prescale::planner::CostAwarePlanner;
    use prescale::pricing::Catalog;
    let mut engine = Engine::new(
        EngineConfig::default(),
        std::sync::Arc::new(Catalog::bundled()),
        std::sync::Arc::new(SeasonalNaive::default()),
        std::sync::Arc::new(CostAwarePlanner::default()),
    );
    let mut out: Vec<Command> = Vec::new();
    engine.handle(
        &Event::BudgetAllocation(BudgetAllocation {
            at: T0 - 600_000,
            scope: BudgetScope::Project,
            id: "p1".into(),
            usd: 1000.0,
            period: None,
        }),
        &mut out,
    );
    let mut last = 0;
    for i in 0..10i64 {
        let at = T0 - 300_000 + i * 60_000;
        let n0 = out.len();
        engine.handle(
            &Event::JobSubmitted(JobSubmitted {
                job_id: compact_str::format_compact!("j{i}"),
                submitted_at: at,
                compute_environment: "ce-otlp".into(),
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
            }),
            &mut out,
        );
        if out.len() > n0 {
            last = out.len() - n0;
            let tick = engine.tick_span().clone();
            let _t = tick.enter();
            spans::publish(last).in_scope(|| {});
        }
    }
    assert!(last > 0, "a bucket closed and the tick decided");
    last
}

struct SpanRow {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attrs: Vec<KeyValue>,
}

fn spans_named(bodies: &[Vec<u8>], service: &str) -> Vec<SpanRow> {
    let mut out = Vec::new();
    for b in bodies {
        let req =
            ExportTraceServiceRequest::decode(b.as_slice()).expect("valid OTLP trace protobuf");
        for rs in req.resource_spans {
            let res = rs.resource.unwrap_or_default();
            match attr(&res.attributes, "service.name") {
                Some(AnyValue::StringValue(s)) if s == service => {}
                _ => continue,
            }
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(SpanRow {
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        attrs: s.attributes,
                    });
                }
            }
        }
    }
    out
}

fn check_tick_structure(rows: &[SpanRow], commands: usize) {
    let tick = rows
        .iter()
        .filter(|s| s.name == spans::TICK)
        .max_by_key(|s| match attr(&s.attrs, "tick_at") {
            Some(AnyValue::IntValue(t)) => *t,
            _ => 0,
        })
        .expect("decision_tick span exported");
    assert!(tick.parent.is_empty(), "tick is a root span");
    // The bucket [T0 - 5 min, T0) closes at T0: the tick is at T0.
    assert!(matches!(
        attr(&tick.attrs, "tick_at"),
        Some(AnyValue::IntValue(T0))
    ));
    assert!(
        matches!(attr(&tick.attrs, "commands"), Some(AnyValue::IntValue(n)) if *n == commands as i64),
        "{:?}",
        tick.attrs
    );
    for child in [spans::FORECAST, spans::PLAN, spans::BUDGET, spans::PUBLISH] {
        let c = rows
            .iter()
            .find(|s| s.name == child && s.parent == tick.span_id)
            .unwrap_or_else(|| panic!("{child} span under decision_tick"));
        assert_eq!(c.trace_id, tick.trace_id, "{child} in the tick's trace");
    }
}

#[test]
fn tick_spans_are_exported_over_otlp_http() {
    let (url, got) = start_receiver();
    let provider = otel::tracer_provider(&url, "prescale-otlp-test").unwrap();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("prescale"));
    let subscriber = tracing_subscriber::registry().with(layer);
    let commands = tracing::subscriber::with_default(subscriber, emit_tick);
    provider.force_flush().unwrap();
    let bodies = wait_for(&got, "/v1/traces", |b| {
        ExportTraceServiceRequest::decode(b)
            .map(|r| !r.resource_spans.is_empty())
            .unwrap_or(false)
    });
    let rows = spans_named(&bodies, "prescale-otlp-test");
    check_tick_structure(&rows, commands);
    provider.shutdown().unwrap();
}

#[test]
fn prometheus_metrics_are_bridged_to_otlp() {
    let (url, got) = start_receiver();
    let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    metrics.add_store_dropped(DropReason::BufferFull, 42);
    metrics.inc_events_in("job-submission", 7);
    metrics.set_consumer_lag("job-submission", 1, 5);
    metrics.observe_tick(0.01);
    let provider =
        otel::meter_provider(&url, "prescale-otlp-test", metrics, Duration::from_secs(60)).unwrap();
    provider.force_flush().unwrap();
    let bodies = wait_for(&got, "/v1/metrics", |b| {
        ExportMetricsServiceRequest::decode(b).is_ok()
    });
    let mut found = std::collections::BTreeMap::new();
    for b in &bodies {
        let req = ExportMetricsServiceRequest::decode(b.as_slice()).unwrap();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let points = match m.data {
                        Some(Data::Sum(s)) => s.data_points,
                        Some(Data::Gauge(g)) => g.data_points,
                        _ => continue,
                    };
                    for p in points {
                        let label = p
                            .attributes
                            .iter()
                            .map(|kv| {
                                format!(
                                    "{}={:?}",
                                    kv.key,
                                    kv.value.as_ref().and_then(|v| v.value.clone())
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(",");
                        let v = match p.value {
                            Some(NumValue::AsDouble(d)) => d,
                            Some(NumValue::AsInt(i)) => i as f64,
                            None => f64::NAN,
                        };
                        found.insert(format!("{}{{{label}}}", m.name), v);
                    }
                }
            }
        }
    }
    let get = |prefix: &str| {
        found
            .iter()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
    };
    assert_eq!(
        get("prescale_store_points_dropped{reason=Some(StringValue(\"buffer_full\"))"),
        Some(42.0),
        "{found:?}"
    );
    assert_eq!(
        get("prescale_events_in{topic=Some(StringValue(\"job-submission\"))"),
        Some(7.0),
        "{found:?}"
    );
    assert_eq!(get("prescale_consumer_lag{"), Some(5.0), "{found:?}");
    assert_eq!(
        get("prescale_tick_duration_seconds_count{"),
        Some(1.0),
        "{found:?}"
    );
    provider.shutdown().unwrap();
}

/// The real start-up path: `telemetry::init` with an OTLP endpoint installs
/// the global subscriber; tick spans arrive at the receiver. (The only test
/// in this binary that installs a global subscriber.)
#[test]
fn init_with_endpoint_exports_spans() {
    let (url, got) = start_receiver();
    let cfg = TelemetryConfig {
        service_name: "prescale-init-test".into(),
        otlp_endpoint: Some(url),
        ..Default::default()
    };
    let guard = telemetry::init(&cfg).unwrap();
    assert!(guard.otlp_enabled());
    let commands = emit_tick();
    guard.flush();
    let bodies = wait_for(&got, "/v1/traces", |b| {
        ExportTraceServiceRequest::decode(b)
            .map(|r| !r.resource_spans.is_empty())
            .unwrap_or(false)
    });
    check_tick_structure(&spans_named(&bodies, "prescale-init-test"), commands);
    // A second init is refused with a clear error rather than panicking.
    let again = telemetry::init(&TelemetryConfig::default())
        .unwrap_err()
        .to_string();
    assert!(again.contains("already"), "{again}");
    drop(guard);
}
