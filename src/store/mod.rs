//! The prediction data store: observed demand, forecasts (each quantile),
//! prices, decisions and spend per compute environment, written as InfluxDB
//! line protocol through the `influxdb2` crate, and read back for training
//! and dashboards.
//!
//! * [`points`] turns prescale's values into points (names in
//!   `docs/telemetry.md`); it is pure.
//! * [`writer`] is the adapter: a bounded buffer between the decision loop
//!   and a background tokio task that batches, retries with exponential
//!   back-off and drops (counting) rather than ever blocking the loop.
//! * [`reader`] reads series back, behind the [`reader::StoreReader`] trait:
//!   InfluxDB 2 (Flux) for users' servers, VictoriaMetrics' export API for the
//!   test server (VictoriaMetrics accepts the InfluxDB v2 write API but not
//!   Flux).

pub mod points;
pub mod reader;
pub mod writer;

pub use points::measurement;
pub use reader::{
    demand_fields_blocking, demand_history_blocking, read_demand_field, read_demand_history,
    DemandHistory, InfluxReader, Series, SeriesQuery, StoreFlavor, StoreReader,
    VictoriaMetricsReader,
};
pub use writer::{Overflow, StoreConfig, StoreHandle, StoreStats, StoreWriter};

/// Errors of the store adapters.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The HTTP request failed (connection refused, timeout, TLS...).
    #[error("time-series store request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("time-series store at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// The `influxdb2` client failed (write or Flux query).
    #[error("InfluxDB request failed: {0}")]
    Influx(String),
    /// A response could not be parsed.
    #[error("cannot parse time-series store response line {line}: {reason}")]
    Parse { line: usize, reason: String },
    /// Invalid configuration (bad URL, empty bucket...).
    #[error("invalid store configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
}
