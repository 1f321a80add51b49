//! Reading series back from the store, for `prescale train` and tests.
//!
//! Two servers speak different query languages, so reads sit behind
//! [`StoreReader`]: [`InfluxReader`] runs Flux on a real InfluxDB 2;
//! [`VictoriaMetricsReader`] uses VictoriaMetrics' `/api/v1/export` (the test
//! server; it accepts InfluxDB writes but not Flux). Both return the same
//! [`Series`] for the same written points.

use std::collections::BTreeMap;
use std::future::Future;

use influxdb2_structmap::value::Value;

use super::points::{measurement, tag};
use super::StoreError;
use crate::events::Millis;

/// Which points to read: one field of one measurement in `[start, end]`
/// (epoch ms, inclusive), optionally restricted to exact tag values.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesQuery {
    pub measurement: String,
    pub field: String,
    pub start: Millis,
    pub end: Millis,
    pub tags: Vec<(String, String)>,
}

impl SeriesQuery {
    /// Query one field of a measurement over a time range.
    pub fn new(measurement: &str, field: &str, start: Millis, end: Millis) -> Self {
        SeriesQuery {
            measurement: measurement.into(),
            field: field.into(),
            start,
            end,
            tags: Vec::new(),
        }
    }

    /// Restrict to points whose tag `k` equals `v`.
    pub fn with_tag(mut self, k: &str, v: &str) -> Self {
        self.tags.push((k.into(), v.into()));
        self
    }
}

/// One series: its tags and time-ordered points.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Tag name → value (no measurement/field names).
    pub labels: BTreeMap<String, String>,
    /// `(epoch ms, value)`, ascending time.
    pub points: Vec<(Millis, f64)>,
}

/// Demand per compute environment: `(environment, [(epoch ms, vCPUs)])`,
/// sorted by environment, points ascending.
pub type DemandHistory = Vec<(String, Vec<(Millis, f64)>)>;

/// Reads series from a time-series store.
pub trait StoreReader {
    /// All series matching `q`, points sorted by time.
    fn read(&self, q: &SeriesQuery)
        -> impl Future<Output = Result<Vec<Series>, StoreError>> + Send;
}

/// Observed vCPU demand per compute environment in `[start, end]`, as
/// `(environment, points)` sorted by environment — the training history
/// `prescale train --from-store` uses.
pub async fn read_demand_history<R: StoreReader + Sync>(
    reader: &R,
    start: Millis,
    end: Millis,
) -> Result<DemandHistory, StoreError> {
    read_demand_field(reader, "vcpus", start, end).await
}

/// One field of the observed `demand` measurement (`vcpus`, `memory_mib`,
/// `gpus`, `submissions`) per compute environment in `[start, end]`, shaped
/// as [`read_demand_history`].
pub async fn read_demand_field<R: StoreReader + Sync>(
    reader: &R,
    field: &str,
    start: Millis,
    end: Millis,
) -> Result<DemandHistory, StoreError> {
    let series = reader
        .read(&SeriesQuery::new(measurement::DEMAND, field, start, end))
        .await?;
    let mut by_env: BTreeMap<String, Vec<(Millis, f64)>> = BTreeMap::new();
    for s in series {
        let env = s
            .labels
            .get(tag::COMPUTE_ENVIRONMENT)
            .cloned()
            .unwrap_or_default();
        by_env.entry(env).or_default().extend(s.points);
    }
    Ok(by_env
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|p| p.0);
            v.dedup_by_key(|p| p.0);
            (k, v)
        })
        .collect())
}

/// Which server `prescale train --from-store` reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFlavor {
    /// A real InfluxDB 2 (Flux query API).
    #[default]
    Influxdb2,
    /// VictoriaMetrics (`/api/v1/export`), e.g. the test server.
    VictoriaMetrics,
}

/// Blocking form of [`read_demand_history`] for the CLI: reads the store
/// described by `cfg` (URL, org, token, bucket) on a private current-thread
/// runtime. Call it from synchronous code only (not inside a tokio runtime).
pub fn demand_history_blocking(
    cfg: &super::StoreConfig,
    flavor: StoreFlavor,
    start: Millis,
    end: Millis,
) -> Result<DemandHistory, StoreError> {
    let mut v = demand_fields_blocking(cfg, flavor, &["vcpus"], start, end)?;
    Ok(v.pop().unwrap_or_default())
}

/// Blocking read of several `demand` fields (one [`DemandHistory`] per
/// field, in the order asked), on one private current-thread runtime. Call
/// it from synchronous code only (not inside a tokio runtime).
pub fn demand_fields_blocking(
    cfg: &super::StoreConfig,
    flavor: StoreFlavor,
    fields: &[&str],
    start: Millis,
    end: Millis,
) -> Result<Vec<DemandHistory>, StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Config {
            field: "runtime",
            reason: e.to_string(),
        })?;
    rt.block_on(async {
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            out.push(match flavor {
                StoreFlavor::Influxdb2 => {
                    let r = InfluxReader::new(&cfg.url, &cfg.org, &cfg.token, &cfg.bucket);
                    read_demand_field(&r, f, start, end).await?
                }
                StoreFlavor::VictoriaMetrics => {
                    let r = VictoriaMetricsReader::new(&cfg.url);
                    read_demand_field(&r, f, start, end).await?
                }
            });
        }
        Ok(out)
    })
}

fn sort_series(mut out: Vec<Series>) -> Vec<Series> {
    for s in &mut out {
        s.points.sort_by_key(|p| p.0);
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// Reads from VictoriaMetrics' `/api/v1/export` (JSON lines; field `f` of
/// measurement `m` is metric `m_f`, tags are labels).
#[derive(Debug, Clone)]
pub struct VictoriaMetricsReader {
    base: String,
    http: reqwest::Client,
}

impl VictoriaMetricsReader {
    /// `base` like `http://127.0.0.1:8428`.
    pub fn new(base: &str) -> Self {
        VictoriaMetricsReader {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The PromQL series selector for `q`.
    pub fn selector(q: &SeriesQuery) -> String {
        let mut s = format!(
            "{{__name__=\"{}\"",
            esc(&format!("{}_{}", q.measurement, q.field))
        );
        for (k, v) in &q.tags {
            s.push_str(&format!(",{k}=\"{}\"", esc(v)));
        }
        s.push('}');
        s
    }

    /// Asks the server to make recently written points searchable now
    /// (`/internal/force_flush`); without it they appear within ~1 s.
    pub async fn force_flush(&self) -> Result<(), StoreError> {
        let url = format!("{}/internal/force_flush", self.base);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| StoreError::Request {
                url: url.clone(),
                source,
            })?;
        if !r.status().is_success() {
            return Err(StoreError::Status {
                url,
                status: r.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(())
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Epoch ms as the seconds-with-fraction VictoriaMetrics expects.
fn vm_time(ms: Millis) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

#[derive(serde::Deserialize)]
struct ExportLine {
    metric: BTreeMap<String, String>,
    values: Vec<serde_json::Value>,
    timestamps: Vec<i64>,
}

/// Parses `/api/v1/export` output.
pub fn parse_vm_export(body: &str) -> Result<Vec<Series>, StoreError> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: ExportLine = serde_json::from_str(line).map_err(|e| StoreError::Parse {
            line: i + 1,
            reason: e.to_string(),
        })?;
        if l.values.len() != l.timestamps.len() {
            return Err(StoreError::Parse {
                line: i + 1,
                reason: format!(
                    "{} values but {} timestamps",
                    l.values.len(),
                    l.timestamps.len()
                ),
            });
        }
        let mut labels = l.metric;
        labels.remove("__name__");
        let mut points = Vec::with_capacity(l.values.len());
        for (v, t) in l.values.iter().zip(&l.timestamps) {
            // VictoriaMetrics writes numbers, or strings for NaN/Inf.
            let v = match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            match v {
                Some(v) => points.push((*t, v)),
                None => {
                    return Err(StoreError::Parse {
                        line: i + 1,
                        reason: "non-numeric value".into(),
                    })
                }
            }
        }
        out.push(Series { labels, points });
    }
    Ok(sort_series(out))
}

impl StoreReader for VictoriaMetricsReader {
    async fn read(&self, q: &SeriesQuery) -> Result<Vec<Series>, StoreError> {
        let url = format!("{}/api/v1/export", self.base);
        let r = self
            .http
            .get(&url)
            .query(&[
                ("match[]", Self::selector(q)),
                ("start", vm_time(q.start)),
                ("end", vm_time(q.end)),
            ])
            .send()
            .await
            .map_err(|source| StoreError::Request {
                url: url.clone(),
                source,
            })?;
        let status = r.status();
        let body = r.text().await.map_err(|source| StoreError::Request {
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(StoreError::Status {
                url,
                status: status.as_u16(),
                body,
            });
        }
        // Inclusive range in ms even if the server rounds.
        let mut series = parse_vm_export(&body)?;
        for s in &mut series {
            s.points.retain(|(t, _)| *t >= q.start && *t <= q.end);
        }
        series.retain(|s| !s.points.is_empty());
        Ok(series)
    }
}

/// Reads from a real InfluxDB 2 with Flux, through the `influxdb2` client.
#[derive(Debug, Clone)]
pub struct InfluxReader {
    client: influxdb2::Client,
    bucket: String,
}

impl InfluxReader {
    /// Reader for `bucket` of `org` at `url`, authenticated by `token`.
    pub fn new(url: &str, org: &str, token: &str, bucket: &str) -> Self {
        InfluxReader {
            client: influxdb2::Client::new(url, org, token),
            bucket: bucket.into(),
        }
    }

    /// The Flux query for `q`.
    pub fn flux(bucket: &str, q: &SeriesQuery) -> String {
        let t = |ms: Millis| {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
        };
        let s = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        let mut filter = format!(
            "r._measurement == \"{}\" and r._field == \"{}\"",
            s(&q.measurement),
            s(&q.field)
        );
        for (k, v) in &q.tags {
            filter.push_str(&format!(" and r[\"{}\"] == \"{}\"", s(k), s(v)));
        }
        // Flux ranges are half-open; add 1 ms so `end` is inclusive like
        // the VictoriaMetrics reader.
        format!(
            "from(bucket: \"{}\")\n  |> range(start: {}, stop: {})\n  |> filter(fn: (r) => {})",
            s(bucket),
            t(q.start),
            t(q.end.saturating_add(1)),
            filter
        )
    }
}

/// Groups Flux records (one per point, tag columns included) into series.
pub fn flux_records_to_series(records: &[influxdb2::api::query::FluxRecord]) -> Vec<Series> {
    let mut by: BTreeMap<BTreeMap<String, String>, Vec<(Millis, f64)>> = BTreeMap::new();
    for r in records {
        let mut labels = BTreeMap::new();
        let (mut t, mut v) = (None, None);
        for (k, val) in &r.values {
            match (k.as_str(), val) {
                ("_time", Value::TimeRFC(d)) => t = Some(d.timestamp_millis()),
                ("_value", Value::Double(x)) => v = Some(x.0),
                ("_value", Value::Long(x)) => v = Some(*x as f64),
                ("_value", Value::UnsignedLong(x)) => v = Some(*x as f64),
                ("result" | "table", _) => {}
                (k, _) if k.starts_with('_') => {}
                (k, Value::String(s)) => {
                    labels.insert(k.to_owned(), s.clone());
                }
                _ => {}
            }
        }
        if let (Some(t), Some(v)) = (t, v) {
            by.entry(labels).or_default().push((t, v));
        }
    }
    sort_series(
        by.into_iter()
            .map(|(labels, points)| Series { labels, points })
            .collect(),
    )
}

impl StoreReader for InfluxReader {
    async fn read(&self, q: &SeriesQuery) -> Result<Vec<Series>, StoreError> {
        let query = influxdb2::models::Query::new(Self::flux(&self.bucket, q));
        let records = self
            .client
            .query_raw(Some(query))
            .await
            .map_err(|e| StoreError::Influx(e.to_string()))?;
        Ok(flux_records_to_series(&records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_export_lines_parse_into_sorted_series() {
        let body = concat!(
            r#"{"metric":{"__name__":"demand_vcpus","compute_environment":"b"},"values":[2,1],"timestamps":[2000,1000]}"#,
            "\n",
            r#"{"metric":{"__name__":"demand_vcpus","compute_environment":"a"},"values":[5.5],"timestamps":[1000]}"#,
            "\n"
        );
        let s = parse_vm_export(body).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["compute_environment"], "a");
        assert_eq!(s[1].points, vec![(1000, 1.0), (2000, 2.0)]);
        assert!(!s[0].labels.contains_key("__name__"));
    }

    #[test]
    fn vm_export_errors_name_the_line() {
        let err = parse_vm_export("\n{\"metric\":{}}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn selector_and_flux_escape_values() {
        let q = SeriesQuery::new("forecast", "vcpus", 0, 1000)
            .with_tag("quantile", "0.9")
            .with_tag("model", "a\"b");
        assert_eq!(
            VictoriaMetricsReader::selector(&q),
            r#"{__name__="forecast_vcpus",quantile="0.9",model="a\"b"}"#
        );
        let f = InfluxReader::flux("prescale", &q);
        assert!(
            f.contains("range(start: 1970-01-01T00:00:00.000Z, stop: 1970-01-01T00:00:01.001Z)"),
            "{f}"
        );
        assert!(f.contains(r#"r["model"] == "a\"b""#), "{f}");
        assert!(
            f.contains(r#"r._measurement == "forecast" and r._field == "vcpus""#),
            "{f}"
        );
    }

    #[test]
    fn flux_records_group_by_tags() {
        use influxdb2::api::query::FluxRecord;
        let rec = |env: &str, ms: i64, v: f64| {
            let mut values = BTreeMap::new();
            values.insert("result".to_string(), Value::String("_result".into()));
            values.insert("_measurement".to_string(), Value::String("demand".into()));
            values.insert("compute_environment".to_string(), Value::String(env.into()));
            values.insert(
                "_time".to_string(),
                Value::TimeRFC(
                    chrono::DateTime::from_timestamp_millis(ms)
                        .unwrap()
                        .fixed_offset(),
                ),
            );
            values.insert("_value".to_string(), Value::Double(v.into()));
            FluxRecord { table: 0, values }
        };
        let s = flux_records_to_series(&[
            rec("a", 2000, 2.0),
            rec("a", 1000, 1.0),
            rec("b", 1000, 3.0),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].points, vec![(1000, 1.0), (2000, 2.0)]);
        assert_eq!(s[1].labels.len(), 1);
    }
}
