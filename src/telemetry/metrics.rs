//! Prometheus metrics shared by every part of prescale.
//!
//! One registry is the single source of truth: the Kafka service, the HTTP
//! API, the decision engine's adapters and the store writer all increment the
//! same [`Metrics`] (usually through [`Metrics::global`]), `/metrics` renders it
//! with [`Metrics::render`], and when OTLP is configured the same values are
//! bridged to OpenTelemetry (see [`crate::telemetry::otel`]), so the two views
//! never disagree.
//!
//! Hot loops should not build label sets per message: take a handle once
//! ([`Metrics::events_in`] returns a cheap clonable [`Counter`]) and call
//! `inc()` on it.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A float counter (USD, seconds).
pub type FloatCounter = Counter<f64, AtomicU64>;
/// A float gauge (USD amounts that go up and down).
pub type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    compute_environment: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvLabels {
    compute_environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    scope: String,
    id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// Escapes a label value for the text exposition. prometheus-client writes
/// label values verbatim, and environment names, topics and ids come from
/// input data: an unescaped `"`, `\\` or newline would corrupt `/metrics`.
fn lv(s: &str) -> String {
    if !s.contains(['"', '\\', '\n']) {
        return s.to_owned();
    }
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn error_histogram() -> Histogram {
    // Absolute forecast error in vCPUs: 0.5 .. ~16k, doubling.
    Histogram::new(exponential_buckets(0.5, 2.0, 16))
}

fn latency_histogram() -> Histogram {
    // Seconds: 50 µs .. ~3 s, quadrupling-ish.
    Histogram::new(exponential_buckets(0.00005, 3.0, 11))
}

/// Why the store writer gave up on points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The bounded buffer between the decision loop and the writer was full.
    BufferFull,
    /// A batch failed all its retries (store down or rejecting writes).
    WriteFailed,
}

impl DropReason {
    /// Label value used in `prescale_store_points_dropped_total{reason=...}`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BufferFull => "buffer_full",
            DropReason::WriteFailed => "write_failed",
        }
    }
}

/// All of prescale's operational counters, gauges and histograms.
///
/// Metric names (all prefixed `prescale_`) are listed in `docs/telemetry.md`.
pub struct Metrics {
    registry: Mutex<Registry>,
    events_in: Family<TopicLabels, Counter>,
    events_late: Family<TopicLabels, Counter>,
    events_duplicate: Family<TopicLabels, Counter>,
    dlq: Family<TopicLabels, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    decisions: Family<DecisionLabels, Counter>,
    ticks: Counter,
    tick_duration: Histogram,
    forecast_abs_error: Family<EnvLabels, Histogram, fn() -> Histogram>,
    spend_usd: Family<EnvLabels, FloatCounter>,
    budget_allocated_usd: Family<BudgetLabels, FloatGauge>,
    budget_spent_usd: Family<BudgetLabels, FloatGauge>,
    store_points_written: Counter,
    store_points_dropped: Family<ReasonLabels, Counter>,
    store_write_errors: Counter,
    store_buffered: Gauge,
    model_swaps: Counter,
    retrain_failures: Counter,
    api_requests: Family<ApiLabels, Counter>,
    api_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    api_dropped: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    /// A fresh, independent set of metrics (tests; embedding). Production code
    /// uses [`Metrics::global`] so every component shares one `/metrics`.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            events_in: Family::default(),
            events_late: Family::default(),
            events_duplicate: Family::default(),
            dlq: Family::default(),
            consumer_lag: Family::default(),
            decisions: Family::default(),
            ticks: Counter::default(),
            tick_duration: latency_histogram(),
            forecast_abs_error: Family::new_with_constructor(error_histogram as fn() -> Histogram),
            spend_usd: Family::default(),
            budget_allocated_usd: Family::default(),
            budget_spent_usd: Family::default(),
            store_points_written: Counter::default(),
            store_points_dropped: Family::default(),
            store_write_errors: Counter::default(),
            store_buffered: Gauge::default(),
            model_swaps: Counter::default(),
            retrain_failures: Counter::default(),
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            api_dropped: Family::default(),
        };
        r.register(
            "prescale_events_in",
            "Input events consumed, by topic",
            m.events_in.clone(),
        );
        r.register(
            "prescale_events_late",
            "Events later than the allowed lateness (not applied), by topic",
            m.events_late.clone(),
        );
        r.register(
            "prescale_events_duplicate",
            "Duplicate events ignored, by topic",
            m.events_duplicate.clone(),
        );
        r.register(
            "prescale_dlq",
            "Messages sent to the dead-letter topic/file, by source topic",
            m.dlq.clone(),
        );
        r.register(
            "prescale_consumer_lag",
            "Messages between the committed position and the high watermark",
            m.consumer_lag.clone(),
        );
        r.register(
            "prescale_decisions",
            "Commands issued, by compute environment and kind (scaling, queue, preempt, migrate, resume)",
            m.decisions.clone(),
        );
        r.register("prescale_ticks", "Decision ticks run", m.ticks.clone());
        r.register(
            "prescale_tick_duration_seconds",
            "Wall time of one decision tick (forecast, plan, budget, publish)",
            m.tick_duration.clone(),
        );
        r.register(
            "prescale_forecast_abs_error_vcpus",
            "Absolute error of the p50 forecast against observed demand, vCPUs",
            m.forecast_abs_error.clone(),
        );
        r.register(
            "prescale_spend_usd",
            "Spend accrued (instance-seconds x price), USD",
            m.spend_usd.clone(),
        );
        r.register(
            "prescale_budget_allocated_usd",
            "Budget allocated in the current period, USD",
            m.budget_allocated_usd.clone(),
        );
        r.register(
            "prescale_budget_spent_usd",
            "Budget spent in the current period, USD",
            m.budget_spent_usd.clone(),
        );
        r.register(
            "prescale_store_points_written",
            "Points accepted by the time-series store",
            m.store_points_written.clone(),
        );
        r.register(
            "prescale_store_points_dropped",
            "Points given up on (buffer full or batch failed all retries)",
            m.store_points_dropped.clone(),
        );
        r.register(
            "prescale_store_write_errors",
            "Failed write attempts to the time-series store (each retry counts)",
            m.store_write_errors.clone(),
        );
        r.register(
            "prescale_store_buffered_points",
            "Points waiting in the store writer's buffer",
            m.store_buffered.clone(),
        );
        r.register(
            "prescale_model_swaps",
            "Retrained forecasters swapped into the running service",
            m.model_swaps.clone(),
        );
        r.register(
            "prescale_retrain_failures",
            "Retrainings that failed (the model in use was kept)",
            m.retrain_failures.clone(),
        );
        r.register(
            "prescale_api_requests",
            "HTTP API requests, by route, method and status",
            m.api_requests.clone(),
        );
        r.register(
            "prescale_api_request_duration_seconds",
            "HTTP API request latency, by route",
            m.api_duration.clone(),
        );
        r.register(
            "prescale_api_connections_dropped",
            "HTTP connections the API dropped, by reason (header_timeout, \
             request_timeout, connection_limit)",
            m.api_dropped.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = r;
        m
    }

    /// The process-wide metrics every component shares (created on first use).
    pub fn global() -> &'static Metrics {
        GLOBAL.get_or_init(Metrics::new)
    }

    /// Prometheus text exposition (OpenMetrics text, ends with `# EOF`), the
    /// body of `GET /metrics`. Content type: [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }

    /// Register extra metrics owned by another module into the same registry,
    /// e.g. `Metrics::global().register_with(|r| r.register("prescale_x", "..", c.clone()))`.
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut reg);
    }

    /// Handle on the input-event counter of `topic`; keep it in hot loops.
    pub fn events_in(&self, topic: &str) -> Counter {
        self.events_in
            .get_or_create_owned(&TopicLabels { topic: lv(topic) })
    }

    /// Count `n` input events consumed from `topic`.
    pub fn inc_events_in(&self, topic: &str, n: u64) {
        self.events_in(topic).inc_by(n);
    }

    /// Count events dropped as later than the allowed lateness.
    pub fn inc_events_late(&self, topic: &str, n: u64) {
        self.events_late
            .get_or_create(&TopicLabels { topic: lv(topic) })
            .inc_by(n);
    }

    /// Count duplicate events ignored.
    pub fn inc_events_duplicate(&self, topic: &str, n: u64) {
        self.events_duplicate
            .get_or_create(&TopicLabels { topic: lv(topic) })
            .inc_by(n);
    }

    /// Count one message sent to the dead-letter topic for source `topic`.
    pub fn inc_dlq(&self, topic: &str) {
        self.dlq
            .get_or_create(&TopicLabels { topic: lv(topic) })
            .inc();
    }

    /// Set the consumer lag (high watermark minus position) of a partition.
    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabels {
                topic: lv(topic),
                partition,
            })
            .set(lag);
    }

    /// Count one command issued. `kind` is `scaling` for a ScalingCommand or
    /// the lower-case preemption action (`queue`, `preempt`, `migrate`, `resume`).
    pub fn inc_decision(&self, compute_environment: &str, kind: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                compute_environment: lv(compute_environment),
                kind: lv(kind),
            })
            .inc();
    }

    /// Record one decision tick and how long it took (wall seconds).
    pub fn observe_tick(&self, seconds: f64) {
        self.ticks.inc();
        self.tick_duration.observe(seconds);
    }

    /// Record |p50 forecast − observed| for a bucket once it is observed.
    pub fn observe_forecast_error(&self, compute_environment: &str, abs_error_vcpus: f64) {
        if abs_error_vcpus.is_finite() {
            self.forecast_abs_error
                .get_or_create(&EnvLabels {
                    compute_environment: lv(compute_environment),
                })
                .observe(abs_error_vcpus.abs());
        }
    }

    /// Add spend accrued by a compute environment (USD, ≥ 0).
    pub fn add_spend_usd(&self, compute_environment: &str, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            self.spend_usd
                .get_or_create(&EnvLabels {
                    compute_environment: lv(compute_environment),
                })
                .inc_by(usd);
        }
    }

    /// Show an environment's spend counter (at 0 until it accrues).
    pub fn touch_spend(&self, compute_environment: &str) {
        let _ = self.spend_usd.get_or_create(&EnvLabels {
            compute_environment: lv(compute_environment),
        });
    }

    /// Set a budget ledger's allocation and spend for the current period.
    pub fn set_budget(&self, scope: &str, id: &str, allocated_usd: f64, spent_usd: f64) {
        let l = BudgetLabels {
            scope: lv(scope),
            id: lv(id),
        };
        self.budget_allocated_usd
            .get_or_create(&l)
            .set(allocated_usd);
        self.budget_spent_usd.get_or_create(&l).set(spent_usd);
    }

    /// Count points the store accepted.
    pub fn add_store_written(&self, n: u64) {
        self.store_points_written.inc_by(n);
    }

    /// Count points the store writer gave up on.
    pub fn add_store_dropped(&self, reason: DropReason, n: u64) {
        self.store_points_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc_by(n);
    }

    /// Count one failed write attempt.
    pub fn inc_store_write_error(&self) {
        self.store_write_errors.inc();
    }

    /// Set how many points wait in the store writer's buffer.
    pub fn set_store_buffered(&self, n: i64) {
        self.store_buffered.set(n);
    }

    /// Show both store drop reasons from the start (at 0), so a dashboard
    /// or alert sees the series before the first drop.
    pub fn touch_store_dropped(&self) {
        for r in [DropReason::BufferFull, DropReason::WriteFailed] {
            self.add_store_dropped(r, 0);
        }
    }

    /// Count one retrained model swapped in.
    pub fn inc_model_swap(&self) {
        self.model_swaps.inc();
    }

    /// Count one failed retraining.
    pub fn inc_retrain_failure(&self) {
        self.retrain_failures.inc();
    }

    /// Count one HTTP API request and its latency.
    pub fn observe_api_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.api_requests
            .get_or_create(&ApiLabels {
                route: lv(route),
                method: lv(method),
                status,
            })
            .inc();
        self.api_duration
            .get_or_create(&RouteLabels { route: lv(route) })
            .observe(seconds);
    }

    /// Count one HTTP connection or request the API dropped (a slow or
    /// stalled client, or one over the connection limit).
    pub fn inc_api_dropped(&self, reason: &str) {
        self.api_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// HTTP connections dropped for `reason` so far (tests).
    pub fn api_dropped(&self, reason: &str) -> u64 {
        self.api_dropped
            .get(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Total points dropped for any reason (tests, reports).
    pub fn store_points_dropped_total(&self) -> u64 {
        [DropReason::BufferFull, DropReason::WriteFailed]
            .iter()
            .map(|r| {
                self.store_points_dropped
                    .get(&ReasonLabels {
                        reason: r.as_str().to_owned(),
                    })
                    .map(|c| c.get())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Total points written (tests, reports).
    pub fn store_points_written_total(&self) -> u64 {
        self.store_points_written.get()
    }
}

/// Every family [`Metrics::new`] registers, as `(name, type)`. Samples add
/// `_total` (counters) or `_bucket`/`_sum`/`_count` (histograms). Families
/// with labels appear in `/metrics` once they have a first value.
pub const FAMILIES: &[(&str, &str)] = &[
    ("prescale_events_in", "counter"),
    ("prescale_events_late", "counter"),
    ("prescale_events_duplicate", "counter"),
    ("prescale_dlq", "counter"),
    ("prescale_consumer_lag", "gauge"),
    ("prescale_decisions", "counter"),
    ("prescale_ticks", "counter"),
    ("prescale_tick_duration_seconds", "histogram"),
    ("prescale_forecast_abs_error_vcpus", "histogram"),
    ("prescale_spend_usd", "counter"),
    ("prescale_budget_allocated_usd", "gauge"),
    ("prescale_budget_spent_usd", "gauge"),
    ("prescale_store_points_written", "counter"),
    ("prescale_store_points_dropped", "counter"),
    ("prescale_store_write_errors", "counter"),
    ("prescale_store_buffered_points", "gauge"),
    ("prescale_model_swaps", "counter"),
    ("prescale_retrain_failures", "counter"),
    ("prescale_api_requests", "counter"),
    ("prescale_api_request_duration_seconds", "histogram"),
    ("prescale_api_connections_dropped", "counter"),
];

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One sample parsed back from the text exposition: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Full sample name, e.g. `prescale_events_in_total`.
    pub name: String,
    /// Label pairs in exposition order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Parse the samples out of a text exposition (comments skipped). Used by the
/// OTLP bridge and by tests that check `/metrics` output; unparsable lines are
/// skipped because the exposition is produced by us.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => continue,
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let (name, labels) = match head.find('{') {
            Some(i) if head.ends_with('}') => {
                (&head[..i], parse_labels(&head[i + 1..head.len() - 1]))
            }
            _ => (head, Vec::new()),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            chars.next();
            if c != ',' && c != ' ' {
                key.push(c);
            }
        }
        if chars.next().is_none() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.push((key, val));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && label.is_none_or(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn render_exposes_every_family_with_values() {
        let m = Metrics::new();
        m.inc_events_in("job-submission", 3);
        m.events_in("job-submission").inc();
        m.inc_dlq("price-tick");
        m.set_consumer_lag("job-submission", 2, 17);
        m.inc_decision("ce-a", "scaling");
        m.observe_tick(0.002);
        m.observe_forecast_error("ce-a", 4.0);
        m.add_spend_usd("ce-a", 1.25);
        m.add_spend_usd("ce-a", 0.25);
        m.set_budget("project", "p1", 100.0, 12.5);
        m.add_store_written(10);
        m.add_store_dropped(DropReason::BufferFull, 2);
        m.add_store_dropped(DropReason::WriteFailed, 5);
        m.observe_api_request("/predict_demand", "POST", 200, 0.01);
        m.inc_api_dropped("header_timeout");
        m.inc_events_late("job-submission", 1);
        m.inc_events_duplicate("job-submission", 1);
        m.inc_store_write_error();
        m.set_store_buffered(3);
        let text = m.render();
        let mut listed: Vec<(String, String)> = FAMILIES
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut seen = crate::telemetry::otel::families(&text);
        listed.sort();
        seen.sort();
        assert_eq!(
            listed, seen,
            "FAMILIES must list exactly what is registered"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let s = parse_samples(&text);
        assert_eq!(
            value(
                &s,
                "prescale_events_in_total",
                Some(("topic", "job-submission"))
            ),
            Some(4.0)
        );
        assert_eq!(
            value(&s, "prescale_dlq_total", Some(("topic", "price-tick"))),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "prescale_consumer_lag", Some(("partition", "2"))),
            Some(17.0)
        );
        assert_eq!(
            value(&s, "prescale_decisions_total", Some(("kind", "scaling"))),
            Some(1.0)
        );
        assert_eq!(value(&s, "prescale_ticks_total", None), Some(1.0));
        assert_eq!(
            value(&s, "prescale_forecast_abs_error_vcpus_count", None),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                "prescale_spend_usd_total",
                Some(("compute_environment", "ce-a"))
            ),
            Some(1.5)
        );
        assert_eq!(
            value(&s, "prescale_budget_allocated_usd", Some(("id", "p1"))),
            Some(100.0)
        );
        assert_eq!(
            value(&s, "prescale_budget_spent_usd", Some(("id", "p1"))),
            Some(12.5)
        );
        assert_eq!(
            value(&s, "prescale_store_points_written_total", None),
            Some(10.0)
        );
        assert_eq!(
            value(
                &s,
                "prescale_store_points_dropped_total",
                Some(("reason", "buffer_full"))
            ),
            Some(2.0)
        );
        assert_eq!(m.store_points_dropped_total(), 7);
        assert_eq!(
            value(&s, "prescale_api_requests_total", Some(("status", "200"))),
            Some(1.0)
        );
    }

    #[test]
    fn non_finite_inputs_are_ignored_not_panicking() {
        let m = Metrics::new();
        m.add_spend_usd("x", f64::NAN);
        m.add_spend_usd("x", -3.0);
        m.observe_forecast_error("x", f64::INFINITY);
        let s = parse_samples(&m.render());
        assert_eq!(value(&s, "prescale_spend_usd_total", None), None);
    }

    #[test]
    fn label_values_with_quotes_round_trip() {
        let m = Metrics::new();
        m.inc_decision("we\"ird,env", "scaling");
        let s = parse_samples(&m.render());
        assert_eq!(
            value(
                &s,
                "prescale_decisions_total",
                Some(("compute_environment", "we\"ird,env"))
            ),
            Some(1.0)
        );
    }

    #[test]
    fn extra_metrics_can_be_registered() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        m.register_with(|r| r.register("prescale_checkpoints", "Checkpoints written", c.clone()));
        c.inc();
        assert!(m.render().contains("prescale_checkpoints_total 1"));
    }
}
