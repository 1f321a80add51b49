//! Operational telemetry: Prometheus metrics (always), `tracing` logs (text or
//! JSON, on stderr so stdout stays clean for command output), and
//! OpenTelemetry traces + metrics over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Names of metrics, spans and their fields are documented in
//! `docs/telemetry.md`; keep them stable, dashboards depend on them.

pub mod http;
pub mod metrics;
pub mod otel;
/// The span shape of a decision tick; the engine owns it (creating a span is
/// not I/O), telemetry exports it.
pub use crate::engine::spans;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::{DropReason, Metrics};

/// The process-wide metrics (shorthand for [`Metrics::global`]).
pub fn metrics() -> &'static Metrics {
    Metrics::global()
}

/// Errors setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint...).
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    /// A global `tracing` subscriber was already installed.
    #[error("logging already initialised: {0}")]
    AlreadyInit(String),
    /// Unknown log format or filter.
    #[error("invalid telemetry setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// How log lines look.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = TelemetryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "plain" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(TelemetryError::Invalid {
                field: "log format",
                reason: format!("{other:?} is not text or json"),
            }),
        }
    }
}

/// Telemetry settings (no runtime state; see [`init`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// `service.name` resource attribute of exported spans and metrics.
    pub service_name: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG` syntax), default `info`.
    pub log_filter: String,
    /// OTLP/HTTP base URL; `None` disables OTLP export.
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed over OTLP.
    pub metrics_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            service_name: "prescale".into(),
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            otlp_endpoint: None,
            metrics_interval: Duration::from_secs(30),
        }
    }
}

impl TelemetryConfig {
    /// From the environment: `PRESCALE_LOG_FORMAT` (text|json), `RUST_LOG`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms). A `--log-format` flag should
    /// override `log_format` afterwards.
    pub fn from_env() -> Result<Self, TelemetryError> {
        let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        let d = TelemetryConfig::default();
        Ok(TelemetryConfig {
            service_name: var("OTEL_SERVICE_NAME").unwrap_or(d.service_name),
            log_format: match var("PRESCALE_LOG_FORMAT") {
                Some(s) => s.parse()?,
                None => d.log_format,
            },
            log_filter: var("RUST_LOG").unwrap_or(d.log_filter),
            otlp_endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            metrics_interval: var("OTEL_METRIC_EXPORT_INTERVAL")
                .and_then(|s| s.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(d.metrics_interval),
        })
    }
}

/// Keeps the OTLP pipelines alive; dropping it flushes and shuts them down.
#[derive(Default)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("otlp_traces", &self.tracer_provider.is_some())
            .field("otlp_metrics", &self.meter_provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// Whether spans and metrics are exported over OTLP.
    pub fn otlp_enabled(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Export everything buffered now.
    pub fn flush(&self) {
        if let Some(p) = &self.tracer_provider {
            let _ = p.force_flush();
        }
        if let Some(p) = &self.meter_provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.tracer_provider.take() {
            let _ = p.shutdown();
        }
        if let Some(p) = self.meter_provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// The log-line layer for `format`, writing to `writer` (stderr in [`init`]).
pub fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    }
}

/// Installs the global `tracing` subscriber (logs to stderr, plus the OTLP
/// span layer when configured) and the OTLP metrics bridge over
/// [`Metrics::global`]. Call once, early in `main`; keep the guard alive.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&cfg.log_filter).map_err(|e| TelemetryError::Invalid {
        field: "log filter",
        reason: e.to_string(),
    })?;
    let fmt = log_layer(cfg.log_format, std::io::stderr);
    let mut guard = TelemetryGuard::default();
    let otel_layer = match &cfg.otlp_endpoint {
        Some(endpoint) => {
            let tp = otel::tracer_provider(endpoint, &cfg.service_name)?;
            let tracer = tp.tracer("prescale");
            opentelemetry::global::set_tracer_provider(tp.clone());
            guard.tracer_provider = Some(tp);
            let mp = otel::meter_provider(
                endpoint,
                &cfg.service_name,
                Metrics::global(),
                cfg.metrics_interval,
            )?;
            opentelemetry::global::set_meter_provider(mp.clone());
            guard.meter_provider = Some(mp);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel_layer)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInit(e.to_string()))?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_the_current_span() {
        let buf = Buf::default();
        let b2 = buf.clone();
        let sub =
            tracing_subscriber::registry().with(log_layer(LogFormat::Json, move || b2.clone()));
        tracing::subscriber::with_default(sub, || {
            let tick = spans::tick(42, "ce-1");
            let _e = tick.enter();
            tracing::info!(commands = 3, "tick done");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line = out.lines().next().expect("one log line");
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "tick done");
        assert_eq!(v["fields"]["commands"], 3);
        assert_eq!(v["span"]["name"], "decision_tick");
        assert_eq!(v["span"]["compute_environment"], "ce-1");
    }

    #[test]
    fn log_format_parses_case_insensitively_and_rejects_unknown() {
        assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        let e = "xml".parse::<LogFormat>().unwrap_err().to_string();
        assert!(e.contains("log format") && e.contains("xml"), "{e}");
    }
}
