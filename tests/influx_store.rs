//! The prediction store against a REAL time-series server: VictoriaMetrics
//! started by `scripts/tsdb.sh` (it speaks the InfluxDB v2 write API, so the
//! `influxdb2` client writes to it unchanged). `PRESCALE_TSDB_URL` points at
//! it (default http://127.0.0.1:8428). Run: `scripts/tsdb.sh run cargo test --test influx_store`.

use std::collections::BTreeMap;
use std::time::Duration;

use prescale::events::{
    Command, InstanceAllocation, Market, PriceTick, QuantileValue, ScalingCommand,
};
use prescale::forecast::Forecast;
use prescale::store::points::{self, Demand};
use prescale::store::{
    demand_history_blocking, read_demand_history, SeriesQuery, StoreConfig, StoreFlavor,
    StoreReader, StoreWriter, VictoriaMetricsReader,
};
use prescale::telemetry::metrics::parse_samples;
use prescale::telemetry::Metrics;

fn tsdb_url() -> String {
    std::env::var("PRESCALE_TSDB_URL").unwrap_or_else(|_| "http://127.0.0.1:8428".into())
}

async fn require_server(url: &str) {
    let ok = reqwest::get(format!("{url}/health"))
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    assert!(ok, "no time-series server answers at {url}/health; start it with `scripts/tsdb.sh start` (or run `scripts/tsdb.sh run cargo test --test influx_store`)");
}

fn leak_metrics() -> &'static Metrics {
    Box::leak(Box::new(Metrics::new()))
}

/// A run-unique prefix so repeated runs against one server never collide.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it-{name}-{}-{nanos}", std::process::id())
}

const BUCKET_MS: i64 = 300_000;
const START: i64 = 1_700_000_000_000 - 1_700_000_000_000 % BUCKET_MS;

/// A small replay: per environment, a day of 5-minute demand with a daily
/// shape, and at every hour a 12-step p10/p50/p90 seasonal-naive-style
/// forecast. Values have few decimals so the store's float encoding is exact.
struct Replay {
    demand: BTreeMap<String, Vec<(i64, f64)>>,
    forecasts: Vec<(String, i64, Forecast)>,
}

fn replay(envs: &[String]) -> Replay {
    let mut demand = BTreeMap::new();
    let mut forecasts = Vec::new();
    for (e, env) in envs.iter().enumerate() {
        let series: Vec<(i64, f64)> = (0..288)
            .map(|i| {
                let hour = (i / 12) as f64;
                let v = 40.0
                    + 30.0 * ((hour - 6.0) / 24.0 * std::f64::consts::TAU).sin()
                    + (e * 7 + i % 5) as f64;
                (START + i as i64 * BUCKET_MS, (v * 4.0).round() / 4.0)
            })
            .collect();
        for tick in (12..288).step_by(12) {
            let origin = START + tick as i64 * BUCKET_MS;
            let values = (0..12)
                .map(|h| {
                    let p50 = series[tick - 12 + h].1;
                    vec![p50 - 5.0, p50, p50 + 5.0]
                })
                .collect();
            forecasts.push((
                env.clone(),
                origin,
                Forecast {
                    quantiles: vec![0.1, 0.5, 0.9],
                    values,
                },
            ));
        }
        demand.insert(env.clone(), series);
    }
    Replay { demand, forecasts }
}

async fn read_until(
    reader: &VictoriaMetricsReader,
    q: &SeriesQuery,
    want_points: usize,
) -> Vec<prescale::store::Series> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = reader.force_flush().await;
        let got = reader.read(q).await.expect("export query");
        let n: usize = got.iter().map(|s| s.points.len()).sum();
        if n >= want_points || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_forecasts_and_demand_read_back_identical() {
    let url = tsdb_url();
    require_server(&url).await;
    let metrics = leak_metrics();
    let envs: Vec<String> = (0..3).map(|i| unique(&format!("ce{i}"))).collect();
    let r = replay(&envs);
    let cfg = StoreConfig {
        url: url.clone(),
        batch_size: 500,
        ..Default::default()
    };
    let (store, writer) = StoreWriter::spawn(cfg, metrics).unwrap();
    let mut expected = 0u64;
    for (env, series) in &r.demand {
        for (t, v) in series {
            store.write(points::demand(
                env,
                *t,
                &Demand {
                    vcpus: *v,
                    memory_mib: v * 2048.0,
                    gpus: 0.0,
                    submissions: 1.0,
                },
            ));
            expected += 1;
        }
    }
    for (env, origin, f) in &r.forecasts {
        let p = points::forecast(env, "seasonal_naive", *origin, BUCKET_MS, f);
        expected += p.len() as u64;
        store.write_all(p);
    }
    let stats = writer.shutdown(Duration::from_secs(30)).await;
    assert_eq!(stats.written, expected, "{stats:?}");
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    assert_eq!(metrics.store_points_written_total(), expected);

    let reader = VictoriaMetricsReader::new(&url);
    let end = START + 400 * BUCKET_MS;

    // Demand: exactly the written points, per environment.
    let q =
        SeriesQuery::new("demand", "vcpus", START, end).with_tag("compute_environment", &envs[0]);
    let got = read_until(&reader, &q, 288).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].points, r.demand[&envs[0]]);

    // Forecasts: each quantile and horizon step is its own series.
    for (qi, qt) in ["0.1", "0.5", "0.9"].iter().enumerate() {
        let q = SeriesQuery::new("forecast", "vcpus", START, end)
            .with_tag("compute_environment", &envs[1])
            .with_tag("quantile", qt)
            .with_tag("horizon_s", "300");
        let got = read_until(&reader, &q, 23).await;
        let want: Vec<(i64, f64)> = r
            .forecasts
            .iter()
            .filter(|(e, _, _)| e == &envs[1])
            .map(|(_, origin, f)| (*origin, f.values[0][qi]))
            .collect();
        assert_eq!(got.len(), 1, "quantile {qt}: {got:?}");
        assert_eq!(got[0].labels["model"], "seasonal_naive");
        assert_eq!(got[0].points, want, "quantile {qt}");
    }
    // All horizons of one quantile: 23 ticks x 12 steps.
    let q = SeriesQuery::new("forecast", "vcpus", START, end)
        .with_tag("compute_environment", &envs[2])
        .with_tag("quantile", "0.9");
    let got = read_until(&reader, &q, 23 * 12).await;
    assert_eq!(got.len(), 12, "one series per horizon");
    assert_eq!(got.iter().map(|s| s.points.len()).sum::<usize>(), 23 * 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_history_comes_back_per_environment() {
    let url = tsdb_url();
    require_server(&url).await;
    let metrics = leak_metrics();
    let envs: Vec<String> = (0..2).map(|i| unique(&format!("hist{i}"))).collect();
    let r = replay(&envs);
    // A window of its own (in the past: the server refuses future points,
    // and scripts/tsdb.sh sets a long retention) so other tests' points
    // don't mix in.
    let shift = -(365 * 86_400_000i64 + (std::process::id() as i64 % 300) * 86_400_000);
    let (store, writer) = StoreWriter::spawn(
        StoreConfig {
            url: url.clone(),
            ..Default::default()
        },
        metrics,
    )
    .unwrap();
    for (env, series) in &r.demand {
        for (t, v) in series {
            store.write(points::demand(
                env,
                t + shift,
                &Demand {
                    vcpus: *v,
                    ..Default::default()
                },
            ));
        }
    }
    let stats = writer.shutdown(Duration::from_secs(30)).await;
    assert_eq!(stats.written, 2 * 288);
    let reader = VictoriaMetricsReader::new(&url);
    let q = SeriesQuery::new(
        "demand",
        "vcpus",
        START + shift,
        START + shift + 288 * BUCKET_MS,
    );
    let _ = read_until(
        &reader,
        &q.clone().with_tag("compute_environment", &envs[1]),
        288,
    )
    .await;
    let hist = read_demand_history(&reader, START + shift, START + shift + 288 * BUCKET_MS)
        .await
        .unwrap();
    let mine: Vec<_> = hist.into_iter().filter(|(e, _)| envs.contains(e)).collect();
    // The CLI's blocking entry point returns the same history.
    let blocking = {
        let cfg = StoreConfig {
            url: url.clone(),
            ..Default::default()
        };
        let (s, e) = (START + shift, START + shift + 288 * BUCKET_MS);
        std::thread::spawn(move || {
            demand_history_blocking(&cfg, StoreFlavor::VictoriaMetrics, s, e)
        })
        .join()
        .unwrap()
        .unwrap()
    };
    let blocking: Vec<_> = blocking
        .into_iter()
        .filter(|(e, _)| envs.contains(e))
        .collect();
    assert_eq!(blocking, mine);
    assert_eq!(mine.len(), 2);
    for (env, pts) in mine {
        let want: Vec<(i64, f64)> = r.demand[&env]
            .iter()
            .map(|(t, v)| (t + shift, *v))
            .collect();
        assert_eq!(pts, want, "{env}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_and_decisions_are_stored_with_their_tags() {
    let url = tsdb_url();
    require_server(&url).await;
    let metrics = leak_metrics();
    let env = unique("dec");
    let itype = unique("m5");
    let (store, writer) = StoreWriter::spawn(
        StoreConfig {
            url: url.clone(),
            ..Default::default()
        },
        metrics,
    )
    .unwrap();
    store.write(points::price(&PriceTick {
        at: START,
        provider: "aws".into(),
        region: "us-east-1".into(),
        zone: Some("us-east-1a".into()),
        instance_type: itype.as_str().into(),
        market: Market::Spot,
        usd_per_hour: 0.0385,
    }));
    let cmd = Command::Scaling(ScalingCommand {
        command_id: "c".into(),
        issued_at: START,
        compute_environment: env.clone(),
        min_vcpus: 4,
        desired_vcpus: 32,
        max_vcpus: 64,
        instance_mix: vec![InstanceAllocation {
            instance_type: "m5.xlarge".into(),
            market: Market::Spot,
            region: "us-east-1".into(),
            count: 8,
        }],
        constraints: Default::default(),
        forecast: vec![QuantileValue {
            quantile: 0.9,
            vcpus: 30.5,
        }],
        reason: "forecast".into(),
    });
    store.write_all(points::commands(&[cmd]));
    store.write(points::spend(&env, START, 12.5, 1.25));
    let stats = writer.shutdown(Duration::from_secs(30)).await;
    assert_eq!(stats.written, 3);
    let reader = VictoriaMetricsReader::new(&url);
    let got = read_until(
        &reader,
        &SeriesQuery::new("price", "usd_per_hour", START, START).with_tag("instance_type", &itype),
        1,
    )
    .await;
    assert_eq!(got[0].points, vec![(START, 0.0385)]);
    assert_eq!(got[0].labels["market"], "SPOT");
    assert_eq!(got[0].labels["zone"], "us-east-1a");
    let got = read_until(
        &reader,
        &SeriesQuery::new("decision", "desired_vcpus", START, START)
            .with_tag("compute_environment", &env),
        1,
    )
    .await;
    assert_eq!(got[0].points, vec![(START, 32.0)]);
    let got = read_until(
        &reader,
        &SeriesQuery::new("decision", "forecast_p90", START, START)
            .with_tag("compute_environment", &env),
        1,
    )
    .await;
    assert_eq!(got[0].points, vec![(START, 30.5)]);
    let got = read_until(
        &reader,
        &SeriesQuery::new("spend", "usd_total", START, START).with_tag("compute_environment", &env),
        1,
    )
    .await;
    assert_eq!(got[0].points, vec![(START, 12.5)]);
}

/// A loopback port with nothing listening: the store is down.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_drops_and_counts_while_producer_never_blocks() {
    let metrics = leak_metrics();
    let cfg = StoreConfig {
        url: dead_url(),
        batch_size: 1000,
        capacity: 5000,
        max_retries: 3,
        backoff_initial_ms: 50,
        ..Default::default()
    };
    let (store, writer) = StoreWriter::spawn(cfg, metrics).unwrap();
    let env = "ce-down";
    // The producer is a plain thread (like the decision loop); if `write`
    // could block on the dead store this would never finish. The outer
    // timeout is only a liveness guard, not a performance assertion.
    let producer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..200_000i64 {
                store.write(points::demand(
                    env,
                    START + i,
                    &Demand {
                        vcpus: 1.0,
                        ..Default::default()
                    },
                ));
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .expect("producer blocked on a dead store")
        .unwrap();
    let during = store.stats();
    assert_eq!(during.accepted, 200_000);
    assert!(during.buffered <= 5000, "buffer stays bounded: {during:?}");
    // At most one batch is in flight in the writer; everything else was
    // either dropped (buffer full, or a batch that failed its retries) or is
    // still buffered.
    assert!(
        during.dropped() + during.buffered >= 200_000 - 1000,
        "{during:?}"
    );
    assert!(during.dropped_buffer_full > 0, "{during:?}");
    assert_eq!(during.written, 0);

    let fin = writer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(fin.written, 0);
    assert_eq!(
        fin.dropped(),
        200_000,
        "every point is accounted for: {fin:?}"
    );
    // ...and the counter is exposed in the Prometheus exposition.
    let samples = parse_samples(&metrics.render());
    let dropped: f64 = samples
        .iter()
        .filter(|s| s.name == "prescale_store_points_dropped_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(dropped, 200_000.0);
    let errors = samples
        .iter()
        .find(|s| s.name == "prescale_store_write_errors_total")
        .map(|s| s.value);
    assert!(
        errors.unwrap_or(0.0) >= 1.0,
        "failed attempts are counted: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_retries_until_the_store_comes_back() {
    let url = tsdb_url();
    require_server(&url).await;
    // A loopback relay that refuses connections at first, then forwards to
    // the real server: the store is down, then up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}", listener.local_addr().unwrap());
    let target = url.trim_start_matches("http://").to_owned();
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up2 = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                drop(inbound); // connection reset: store down
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let metrics = leak_metrics();
    let env = unique("retry");
    let cfg = StoreConfig {
        url: relay_url,
        batch_size: 100,
        flush_interval_ms: 50,
        max_retries: 20,
        backoff_initial_ms: 50,
        backoff_max_ms: 200,
        ..Default::default()
    };
    let (store, writer) = StoreWriter::spawn(cfg, metrics).unwrap();
    for i in 0..100 {
        store.write(points::demand(
            &env,
            START + i * BUCKET_MS,
            &Demand {
                vcpus: i as f64,
                ..Default::default()
            },
        ));
    }
    // Wait until at least one attempt failed, then bring the store up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while parse_samples(&metrics.render())
        .iter()
        .all(|s| s.name != "prescale_store_write_errors_total" || s.value < 1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempt observed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stats().written < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not written after the store came back: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fin = writer.shutdown(Duration::from_secs(5)).await;
    assert_eq!((fin.written, fin.dropped()), (100, 0));
    let reader = VictoriaMetricsReader::new(&url);
    let got = read_until(
        &reader,
        &SeriesQuery::new("demand", "vcpus", START, START + 100 * BUCKET_MS)
            .with_tag("compute_environment", &env),
        100,
    )
    .await;
    assert_eq!(got[0].points.len(), 100);
}
