//! Decision-loop throughput with the prediction store (a) absent, (b) down
//! (nothing listening: every batch fails, the buffer overflows and drops), and
//! (c) up (the VictoriaMetrics at `PRESCALE_TSDB_URL`, if it answers).
//!
//! The loop is prescale's path for an event minus Kafka: Avro decode of a
//! JobSubmitted, per-environment bucketed demand, and at each bucket
//! boundary a 12-step p10/p50/p90 forecast per environment, then the points
//! (demand + 36 forecast points + a decision per environment) handed to the
//! store. Prints events/s per mode (median of interleaved rounds) and the
//! relative drop. Target (issue 6): store down costs < 5 %.
//!
//! `cargo bench --bench store_overhead` (`-- --events N --rounds R`).

use std::time::{Duration, Instant};

use prescale::events::avro::{decode_event, encode_event, EventKind};
use prescale::events::{Event, JobSubmitted, Millis};
use prescale::forecast::Forecast;
use prescale::store::points::{self, Demand};
use prescale::store::{StoreConfig, StoreHandle, StoreWriter};
use prescale::telemetry::Metrics;

const ENVS: usize = 3;
const BUCKET_MS: i64 = 300_000;
const EVENTS_PER_BUCKET: usize = 1000;

fn events() -> Vec<(String, Vec<u8>)> {
    (0..ENVS * 50)
        .map(|i| {
            let ev = Event::JobSubmitted(JobSubmitted {
                job_id: compact_str::format_compact!("job-{i}"),
                submitted_at: 1_700_000_000_000 + i as i64,
                compute_environment: compact_str::format_compact!("ce-{}", i % ENVS),
                job_type: "batch".into(),
                project: "p".into(),
                user: "u".into(),
                priority: 1,
                vcpus: 1.0 + (i % 16) as f64,
                memory_mib: 2048,
                gpus: 0,
                estimated_runtime_s: Some(600),
                budget_usd: None,
                deadline: None,
                elasticity: false,
            });
            (format!("ce-{}", i % ENVS), encode_event(&ev).unwrap())
        })
        .collect()
}

/// Runs the loop over `n` events; returns events/s.
fn run_loop(n: usize, msgs: &[(String, Vec<u8>)], store: Option<&StoreHandle>) -> f64 {
    let mut bucket_vcpus = [0.0f64; ENVS];
    let mut history: Vec<Vec<f64>> = vec![vec![0.0; 288]; ENVS];
    let mut now: Millis = 1_700_000_000_000;
    let quantiles = [0.1, 0.5, 0.9];
    let t0 = Instant::now();
    for i in 0..n {
        let (_, bytes) = &msgs[i % msgs.len()];
        let ev = decode_event(EventKind::JobSubmitted, bytes).expect("decode");
        if let Event::JobSubmitted(j) = ev {
            let e = j
                .compute_environment
                .as_bytes()
                .last()
                .map(|b| (b - b'0') as usize % ENVS)
                .unwrap_or(0);
            bucket_vcpus[e] += j.vcpus;
        }
        if (i + 1) % EVENTS_PER_BUCKET == 0 {
            // Tick: close the bucket, forecast, publish points.
            for e in 0..ENVS {
                history[e].rotate_left(1);
                *history[e].last_mut().unwrap() = bucket_vcpus[e];
                let h = &history[e];
                let spread = h.iter().rev().take(12).fold(0.0f64, |m, v| m.max(*v)) * 0.1;
                let values: Vec<Vec<f64>> = (0..12)
                    .map(|k| {
                        let p50 = h[h.len() - 12 + k];
                        vec![p50 - spread, p50, p50 + spread]
                    })
                    .collect();
                let f = Forecast {
                    quantiles: quantiles.to_vec(),
                    values,
                };
                if let Some(s) = store {
                    let env = format!("ce-{e}");
                    s.write(points::demand(
                        &env,
                        now,
                        &Demand {
                            vcpus: bucket_vcpus[e],
                            ..Default::default()
                        },
                    ));
                    s.write_all(points::forecast(
                        &env,
                        "bench",
                        now + BUCKET_MS,
                        BUCKET_MS,
                        &f,
                    ));
                    s.write(points::spend(&env, now, i as f64 * 0.001, 1.0));
                } else {
                    std::hint::black_box(&f);
                }
                bucket_vcpus[e] = 0.0;
            }
            now += BUCKET_MS;
        }
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, d: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let n = arg("--events", 1_000_000);
    let rounds = arg("--rounds", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let msgs = events();

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{p}")
    };
    let metrics_down: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let (down, down_writer) = StoreWriter::spawn(
        StoreConfig {
            url: dead,
            capacity: 50_000,
            ..Default::default()
        },
        metrics_down,
    )
    .unwrap();

    let tsdb =
        std::env::var("PRESCALE_TSDB_URL").unwrap_or_else(|_| "http://127.0.0.1:8428".into());
    let up_ok = rt.block_on(async {
        reqwest::get(format!("{tsdb}/health"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    });
    let metrics_up: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let up = if up_ok {
        Some(
            StoreWriter::spawn(
                StoreConfig {
                    url: tsdb.clone(),
                    ..Default::default()
                },
                metrics_up,
            )
            .unwrap(),
        )
    } else {
        None
    };

    // Warm-up.
    run_loop(n / 10, &msgs, None);
    let (mut none, mut dn, mut u) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        none.push(run_loop(n, &msgs, None));
        dn.push(run_loop(n, &msgs, Some(&down)));
        if let Some((h, _)) = &up {
            u.push(run_loop(n, &msgs, Some(h)));
        }
    }
    let points_per_event = (ENVS * (1 + 36 + 1)) as f64 / EVENTS_PER_BUCKET as f64;
    let (none, dn) = (median(none), median(dn));
    println!("store_overhead: {n} events x {rounds} rounds, {points_per_event:.3} store points per event");
    println!("  no store        {:>12.0} events/s", none);
    println!(
        "  store down      {:>12.0} events/s  ({:+.2} % vs no store)",
        dn,
        (dn / none - 1.0) * 100.0
    );
    let s = down.stats();
    println!(
        "                  accepted {} points, dropped {} (buffer full {}, write failed {}), written {}",
        s.accepted,
        s.dropped(),
        s.dropped_buffer_full,
        s.dropped_write_failed,
        s.written
    );
    if let Some((h, w)) = up {
        let um = median(u);
        println!(
            "  store up (VM)   {:>12.0} events/s  ({:+.2} % vs no store)",
            um,
            (um / none - 1.0) * 100.0
        );
        let fin = rt.block_on(w.shutdown(Duration::from_secs(60)));
        println!(
            "                  accepted {} points, written {}, dropped {}",
            fin.accepted,
            fin.written,
            fin.dropped()
        );
        drop(h);
    } else {
        println!(
            "  store up        skipped: nothing answers at {tsdb}/health (scripts/tsdb.sh start)"
        );
    }
    let _ = rt.block_on(down_writer.shutdown(Duration::from_secs(1)));
}
