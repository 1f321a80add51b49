//! OpenTelemetry over OTLP/HTTP (protobuf): traces from `tracing` spans and
//! the Prometheus registry bridged as OTel metrics.
//!
//! The bridge reads [`Metrics::render`] at each export instead of recording
//! every increment twice: one source of truth, no cost on hot paths, and a
//! metric added to the registry later is exported without code here.

use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use super::metrics::{parse_samples, Metrics, FAMILIES};
use super::TelemetryError;

/// `<base>/v1/<signal>` unless the signal-specific variable
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._METRICS_ENDPOINT`) is set, as
/// the OTLP exporter specification says.
pub fn signal_url(base: &str, signal: &str) -> String {
    let var = format!(
        "OTEL_EXPORTER_OTLP_{}_ENDPOINT",
        signal.to_ascii_uppercase()
    );
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => format!("{}/v1/{}", base.trim_end_matches('/'), signal),
    }
}

fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .build()
}

/// A tracer provider exporting batches of spans to `endpoint` (the OTLP base
/// URL, e.g. `http://collector:4318`).
pub fn tracer_provider(
    endpoint: &str,
    service_name: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(signal_url(endpoint, "traces"))
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service_name))
        .build())
}

/// A meter provider exporting `metrics` to `endpoint` every `interval`.
pub fn meter_provider(
    endpoint: &str,
    service_name: &str,
    metrics: &'static Metrics,
    interval: Duration,
) -> Result<SdkMeterProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(signal_url(endpoint, "metrics"))
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource(service_name))
        .build();
    bridge(&provider, metrics);
    Ok(provider)
}

/// Registers one observable instrument per Prometheus family found in
/// `metrics` (counters as OTel counters, gauges as gauges, histograms as
/// `<name>_sum` / `<name>_count` counters).
fn bridge(provider: &SdkMeterProvider, metrics: &'static Metrics) {
    let meter = provider.meter("prescale");
    // Known families, plus any another module registered that already has a value.
    let mut all: Vec<(String, String)> = FAMILIES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    for f in families(&metrics.render()) {
        if !all.contains(&f) {
            all.push(f);
        }
    }
    for (name, kind) in all {
        match kind.as_str() {
            "counter" => {
                let sample = format!("{name}_total");
                let _ = meter
                    .f64_observable_counter(name.clone())
                    .with_callback(move |o| {
                        for (v, attrs) in values(metrics, &sample) {
                            o.observe(v, &attrs);
                        }
                    })
                    .build();
            }
            "gauge" => {
                let sample = name.clone();
                let _ = meter
                    .f64_observable_gauge(name.clone())
                    .with_callback(move |o| {
                        for (v, attrs) in values(metrics, &sample) {
                            o.observe(v, &attrs);
                        }
                    })
                    .build();
            }
            "histogram" => {
                for suffix in ["sum", "count"] {
                    let sample = format!("{name}_{suffix}");
                    let _ = meter
                        .f64_observable_counter(sample.clone())
                        .with_callback(move |o| {
                            for (v, attrs) in values(metrics, &sample) {
                                o.observe(v, &attrs);
                            }
                        })
                        .build();
                }
            }
            _ => {}
        }
    }
}

/// `(family name, type)` from the `# TYPE` lines of an exposition.
pub fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

fn values(metrics: &Metrics, sample: &str) -> Vec<(f64, Vec<KeyValue>)> {
    parse_samples(&metrics.render())
        .into_iter()
        .filter(|s| s.name == sample)
        .map(|s| {
            let attrs = s
                .labels
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect();
            (s.value, attrs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_lists_every_registered_metric_with_its_type() {
        let m = Metrics::new();
        m.set_consumer_lag("t", 0, 1);
        m.inc_events_in("t", 1);
        let f = families(&m.render());
        assert!(
            f.contains(&("prescale_events_in".into(), "counter".into())),
            "{f:?}"
        );
        assert!(
            f.contains(&("prescale_consumer_lag".into(), "gauge".into())),
            "{f:?}"
        );
        assert!(
            f.contains(&("prescale_tick_duration_seconds".into(), "histogram".into())),
            "{f:?}"
        );
    }

    #[test]
    fn signal_url_appends_the_signal_path() {
        // The signal-specific variables are not set in tests.
        assert_eq!(
            signal_url("http://127.0.0.1:4318/", "traces"),
            "http://127.0.0.1:4318/v1/traces"
        );
    }
}
