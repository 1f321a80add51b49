//! Background writer: the decision loop hands points to a [`StoreHandle`]
//! (never blocks, never fails), a tokio task batches them to the store.
//!
//! Why a mutex-guarded ring instead of a channel: when the store is down the
//! *oldest* points are the least useful (dashboards and training care about
//! recent data), and a bounded channel can only refuse the newest. The lock
//! is held for a push or a drain of one batch, microseconds either way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use influxdb2::api::write::TimestampPrecision;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::points::{to_line_protocol, Point};
use super::StoreError;
use crate::telemetry::{DropReason, Metrics};

/// What to give up when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the oldest buffered point (default: recent data matters most).
    #[default]
    DropOldest,
    /// Refuse the new point.
    DropNewest,
}

/// Store writer configuration (no runtime state; see [`StoreWriter::spawn`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Base URL of the InfluxDB 2 compatible server, e.g. `http://influxdb:8086`.
    pub url: String,
    /// InfluxDB organisation.
    pub org: String,
    /// Bucket points go to.
    pub bucket: String,
    /// API token (may be empty for servers without auth, e.g. VictoriaMetrics).
    pub token: String,
    /// Points per write request.
    pub batch_size: usize,
    /// Points the buffer holds before it drops.
    pub capacity: usize,
    /// Longest time a point waits before a partial batch is sent.
    pub flush_interval_ms: u64,
    /// Retries of a failed batch before its points are dropped.
    pub max_retries: u32,
    /// First back-off delay; doubles per retry up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    /// Cap of the back-off delay.
    pub backoff_max_ms: u64,
    /// Timeout of one write request.
    pub request_timeout_ms: u64,
    /// What to drop when the buffer is full.
    pub overflow: Overflow,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "http://127.0.0.1:8086".into(),
            org: "prescale".into(),
            bucket: "prescale".into(),
            token: String::new(),
            batch_size: 5000,
            capacity: 200_000,
            flush_interval_ms: 1000,
            max_retries: 5,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            request_timeout_ms: 10_000,
            overflow: Overflow::DropOldest,
        }
    }
}

impl StoreConfig {
    /// Configuration from `PRESCALE_INFLUX_URL` (required; `None` when unset),
    /// `PRESCALE_INFLUX_ORG`, `PRESCALE_INFLUX_BUCKET`, `PRESCALE_INFLUX_TOKEN`
    /// (`INFLUX_TOKEN` also accepted), other fields default.
    pub fn from_env() -> Option<Self> {
        let url = std::env::var("PRESCALE_INFLUX_URL")
            .ok()
            .filter(|s| !s.is_empty())?;
        let d = StoreConfig::default();
        let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        Some(StoreConfig {
            url,
            org: var("PRESCALE_INFLUX_ORG").unwrap_or(d.org.clone()),
            bucket: var("PRESCALE_INFLUX_BUCKET").unwrap_or(d.bucket.clone()),
            token: var("PRESCALE_INFLUX_TOKEN")
                .or_else(|| var("INFLUX_TOKEN"))
                .unwrap_or_default(),
            ..d
        })
    }

    fn validate(&self) -> Result<(), StoreError> {
        let bad = |field, reason: &str| {
            Err(StoreError::Config {
                field,
                reason: reason.into(),
            })
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad("url", "must start with http:// or https://");
        }
        if self.bucket.is_empty() {
            return bad("bucket", "must not be empty");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.capacity < self.batch_size {
            return bad("capacity", "must be at least batch_size");
        }
        Ok(())
    }

    /// Delay before retry number `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .backoff_initial_ms
            .saturating_mul(1u64 << attempt.min(30))
            .min(self.backoff_max_ms);
        Duration::from_millis(ms)
    }
}

struct Shared {
    queue: Mutex<VecDeque<Point>>,
    notify: Notify,
    closed: AtomicBool,
    capacity: usize,
    batch_size: usize,
    overflow: Overflow,
    metrics: &'static Metrics,
    written: AtomicU64,
    dropped_full: AtomicU64,
    dropped_failed: AtomicU64,
    accepted: AtomicU64,
}

impl Shared {
    fn drop_points(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        match reason {
            DropReason::BufferFull => self.dropped_full.fetch_add(n, Ordering::Relaxed),
            DropReason::WriteFailed => self.dropped_failed.fetch_add(n, Ordering::Relaxed),
        };
        self.metrics.add_store_dropped(reason, n);
    }
}

/// Counters of one writer (the same numbers also go to [`Metrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Points handed to [`StoreHandle::write`]/[`StoreHandle::write_all`].
    /// Always `accepted == written + dropped() + buffered` once the writer
    /// is idle.
    pub accepted: u64,
    /// Points the store acknowledged.
    pub written: u64,
    /// Points dropped because the buffer was full.
    pub dropped_buffer_full: u64,
    /// Points dropped after a batch failed all retries (or at shutdown).
    pub dropped_write_failed: u64,
    /// Points still buffered.
    pub buffered: u64,
}

impl StoreStats {
    /// All dropped points.
    pub fn dropped(&self) -> u64 {
        self.dropped_buffer_full + self.dropped_write_failed
    }
}

/// The decision loop's side: cheap to clone, never blocks, never fails.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl StoreHandle {
    /// Queue one point (`None`, e.g. a point whose fields were all NaN, is ignored).
    pub fn write(&self, point: impl Into<Option<Point>>) {
        if let Some(p) = point.into() {
            self.write_all(std::iter::once(p));
        }
    }

    /// Queue many points under one lock.
    pub fn write_all(&self, points: impl IntoIterator<Item = Point>) {
        let s = &*self.shared;
        if s.closed.load(Ordering::Relaxed) {
            let n = points.into_iter().count() as u64;
            s.accepted.fetch_add(n, Ordering::Relaxed);
            s.drop_points(DropReason::WriteFailed, n);
            return;
        }
        let (mut full, mut added) = (0u64, 0u64);
        let len = {
            let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            for p in points {
                if q.len() >= s.capacity {
                    full += 1;
                    match s.overflow {
                        Overflow::DropOldest => {
                            q.pop_front();
                        }
                        Overflow::DropNewest => {
                            added += 1;
                            continue;
                        }
                    }
                }
                q.push_back(p);
                added += 1;
            }
            q.len()
        };
        s.accepted.fetch_add(added, Ordering::Relaxed);
        s.drop_points(DropReason::BufferFull, full);
        s.metrics.set_store_buffered(len as i64);
        if len >= s.batch_size {
            s.notify.notify_one();
        }
    }

    /// This writer's counters.
    pub fn stats(&self) -> StoreStats {
        let s = &*self.shared;
        StoreStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            written: s.written.load(Ordering::Relaxed),
            dropped_buffer_full: s.dropped_full.load(Ordering::Relaxed),
            dropped_write_failed: s.dropped_failed.load(Ordering::Relaxed),
            buffered: s.queue.lock().map(|q| q.len()).unwrap_or(0) as u64,
        }
    }
}

/// The background task; [`StoreWriter::shutdown`] flushes what it can.
pub struct StoreWriter {
    handle: StoreHandle,
    task: JoinHandle<()>,
}

impl StoreWriter {
    /// Starts the writer task on the current tokio runtime. Fails only on an
    /// invalid configuration; an unreachable store is not an error (points
    /// are retried, then dropped and counted).
    pub fn spawn(
        config: StoreConfig,
        metrics: &'static Metrics,
    ) -> Result<(StoreHandle, StoreWriter), StoreError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(
                config.batch_size.min(config.capacity),
            )),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            capacity: config.capacity,
            batch_size: config.batch_size,
            overflow: config.overflow,
            metrics,
            written: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_failed: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let client =
            influxdb2::Client::new(config.url.clone(), config.org.clone(), config.token.clone());
        let handle = StoreHandle {
            shared: shared.clone(),
        };
        let task = tokio::spawn(run(shared, client, config));
        Ok((handle.clone(), StoreWriter { handle, task }))
    }

    /// A handle for another producer.
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Stops accepting points, sends what is buffered (one attempt per batch
    /// once closing, bounded by `timeout`), counts the rest as dropped.
    pub async fn shutdown(self, timeout: Duration) -> StoreStats {
        let s = self.handle.shared.clone();
        s.closed.store(true, Ordering::SeqCst);
        s.notify.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        let rest = {
            let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.len() as u64;
            q.clear();
            n
        };
        s.drop_points(DropReason::WriteFailed, rest);
        s.metrics.set_store_buffered(0);
        self.handle.stats()
    }
}

async fn run(shared: Arc<Shared>, client: influxdb2::Client, config: StoreConfig) {
    let flush_every = Duration::from_millis(config.flush_interval_ms.max(1));
    let mut last_flush = Instant::now();
    let mut body = Vec::with_capacity(config.batch_size * 96);
    loop {
        let closed = shared.closed.load(Ordering::SeqCst);
        let batch: Vec<Point> = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            let due = q.len() >= config.batch_size || closed || last_flush.elapsed() >= flush_every;
            if due {
                let n = q.len().min(config.batch_size);
                q.drain(..n).collect()
            } else {
                Vec::new()
            }
        };
        if batch.is_empty() {
            if closed {
                return;
            }
            let wait = flush_every.saturating_sub(last_flush.elapsed());
            if wait.is_zero() {
                last_flush = Instant::now();
            } else {
                tokio::select! {
                    _ = shared.notify.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            continue;
        }
        shared
            .metrics
            .set_store_buffered(shared.queue.lock().map(|q| q.len()).unwrap_or(0) as i64);
        let n = batch.len() as u64;
        body.clear();
        to_line_protocol(&batch, &mut body);
        drop(batch);
        let mut attempt = 0u32;
        loop {
            match send(&client, &config, body.clone()).await {
                Ok(()) => {
                    shared.written.fetch_add(n, Ordering::Relaxed);
                    shared.metrics.add_store_written(n);
                    break;
                }
                Err(e) => {
                    shared.metrics.inc_store_write_error();
                    let closing = shared.closed.load(Ordering::SeqCst);
                    if attempt >= config.max_retries || closing {
                        tracing::warn!(error = %e, points = n, attempts = attempt + 1, "store write failed; dropping batch");
                        shared.drop_points(DropReason::WriteFailed, n);
                        break;
                    }
                    let delay = config.backoff(attempt);
                    tracing::debug!(error = %e, ?delay, attempt, "store write failed; retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // Shutdown cuts the back-off short.
                        _ = wait_closed(&shared) => {}
                    }
                }
            }
        }
        last_flush = Instant::now();
    }
}

async fn wait_closed(shared: &Shared) {
    while !shared.closed.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(
    client: &influxdb2::Client,
    config: &StoreConfig,
    body: Vec<u8>,
) -> Result<(), StoreError> {
    let fut = client.write_line_protocol_with_precision(
        &config.org,
        &config.bucket,
        body,
        TimestampPrecision::Milliseconds,
    );
    match tokio::time::timeout(Duration::from_millis(config.request_timeout_ms), fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Influx(e.to_string())),
        Err(_) => Err(StoreError::Influx(format!(
            "write timed out after {} ms",
            config.request_timeout_ms
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::points::{demand, Demand};

    fn leak_metrics() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new()))
    }

    fn pt(i: i64) -> Point {
        demand(
            "ce",
            i,
            &Demand {
                vcpus: i as f64,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = StoreConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..Default::default()
        };
        let d: Vec<u64> = (0..6).map(|a| c.backoff(a).as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(c.backoff(200).as_millis(), 1000);
    }

    #[test]
    fn invalid_config_names_the_field() {
        let c = StoreConfig {
            url: "localhost:8086".into(),
            ..Default::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("url"), "{err}");
        let c = StoreConfig {
            batch_size: 10,
            capacity: 5,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("capacity"));
    }

    #[tokio::test]
    async fn full_buffer_drops_oldest_and_counts() {
        let m = leak_metrics();
        // Port 9 (discard) on loopback: connection refused, so batches fail.
        let cfg = StoreConfig {
            url: "http://127.0.0.1:9".into(),
            batch_size: 10,
            capacity: 10,
            flush_interval_ms: 60_000,
            max_retries: 1000,
            backoff_initial_ms: 60_000,
            ..Default::default()
        };
        let (h, w) = StoreWriter::spawn(cfg, m).unwrap();
        // The writer may grab the first full batch; whatever it holds it
        // keeps retrying, the buffer itself must stay bounded.
        for i in 0..100 {
            h.write(pt(i));
        }
        let s = h.stats();
        assert_eq!(s.accepted, 100);
        assert!(s.buffered <= 10, "{s:?}");
        assert!(s.dropped_buffer_full >= 80, "{s:?}");
        let fin = w.shutdown(Duration::from_secs(2)).await;
        assert_eq!(fin.written, 0);
        // Every point is either written or counted as dropped.
        assert_eq!(fin.written + fin.dropped() + fin.buffered, fin.accepted);
        assert_eq!(fin.dropped(), 100, "{fin:?}");
        assert_eq!(m.store_points_dropped_total(), 100);
    }

    #[tokio::test]
    async fn drop_newest_keeps_the_first_points() {
        let m = leak_metrics();
        let cfg = StoreConfig {
            url: "http://127.0.0.1:9".into(),
            batch_size: 5,
            capacity: 5,
            flush_interval_ms: 60_000,
            overflow: Overflow::DropNewest,
            ..Default::default()
        };
        let (h, w) = StoreWriter::spawn(cfg, m).unwrap();
        h.write_all((0..8).map(pt));
        let s = h.stats();
        assert_eq!(s.accepted, 8);
        assert_eq!(s.dropped_buffer_full, 3);
        assert_eq!(s.buffered, 5);
        let fin = w.shutdown(Duration::from_secs(2)).await;
        assert_eq!(fin.dropped(), 8);
    }

    #[tokio::test]
    async fn writes_after_shutdown_are_counted_not_buffered() {
        let m = leak_metrics();
        let cfg = StoreConfig {
            url: "http://127.0.0.1:9".into(),
            batch_size: 5,
            capacity: 5,
            ..Default::default()
        };
        let (h, w) = StoreWriter::spawn(cfg, m).unwrap();
        let _ = w.shutdown(Duration::from_secs(1)).await;
        h.write(pt(1));
        assert_eq!(h.stats().buffered, 0);
        assert_eq!(h.stats().dropped_write_failed, 1);
    }
}
