//! `prescale bench store`: what reporting costs the decision loop. Replays the
//! bundled sample (job events and tiled spot prices, as the backtest) through
//! the service's brain four ways, interleaved, best of `--repeat`:
//! the bare engine; the observed engine without a store (metrics only); the
//! observed engine writing to a store that is down (a closed loopback port:
//! every batch fails, is retried with back-off, and its points are dropped
//! and counted); and, with `--store-url`, writing to a live store.
//! Issue 6 asks that a down store costs the loop less than 5 %. Prints
//! figures; asserts nothing.

use super::inputs::prepare;
use anyhow::Context;
use clap::Args;
use prescale::events::Command;
use prescale::io::kafka::observe::ObservingFactory;
use prescale::io::kafka::service::BrainFactory;
use prescale::io::retrain::RetrainConfig;
use prescale::store::{StoreConfig, StoreWriter};
use prescale::wiring::{decision_core, engine_factory};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct BenchStoreArgs {
    /// Timed repetitions of each variant (interleaved; the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Also measure writing to this live store (InfluxDB 2 write API).
    #[arg(long)]
    pub store_url: Option<String>,
    /// Also write the figures as JSON to this file (for CI to keep).
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

pub fn run(a: BenchStoreArgs) -> anyhow::Result<()> {
    let base = prepare(None, None, None, false, None, false)?;
    let events = base.events;
    let factory = engine_factory(None, None, decision_core)?;
    let metrics = prescale::telemetry::metrics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        drop(l);
        format!("http://127.0.0.1:{p}")
    };
    let mut variants: Vec<(&str, Option<String>, bool)> = vec![
        ("engine only", None, false),
        ("observed, no store", None, true),
        ("observed, store down", Some(dead), true),
    ];
    if let Some(u) = &a.store_url {
        variants.push(("observed, store up", Some(u.clone()), true));
    }
    println!(
        "bench store: bundled sample, {} events, one loop thread (store writer on the runtime)",
        events.len()
    );
    let mut best = vec![f64::INFINITY; variants.len()];
    let mut info = vec![String::new(); variants.len()];
    for _ in 0..a.repeat.max(1) {
        for (i, (_, url, observed)) in variants.iter().enumerate() {
            let (secs, line) = rt.block_on(async {
                let writer = match url {
                    Some(u) => Some(StoreWriter::spawn(
                        StoreConfig {
                            url: u.clone(),
                            ..Default::default()
                        },
                        metrics,
                    )?),
                    None => None,
                };
                let handle = writer.as_ref().map(|w| w.0.clone());
                let brains: Box<dyn BrainFactory> = if *observed {
                    Box::new(ObservingFactory::new(
                        factory.clone(),
                        handle,
                        &RetrainConfig::default(),
                        metrics,
                    ))
                } else {
                    Box::new(factory.clone())
                };
                let mut brain = brains.create(None).map_err(anyhow::Error::msg)?;
                let mut out: Vec<Command> = Vec::new();
                let mut commands = 0usize;
                // The brain takes its events; copied before the clock starts.
                let owned = events.clone();
                let t = Instant::now();
                for ev in owned {
                    brain.handle(ev, &mut out);
                    commands += out.len();
                    out.clear();
                }
                brain.finish(&mut out);
                commands += out.len();
                let secs = t.elapsed().as_secs_f64();
                let line = match writer {
                    Some((_, w)) => {
                        let s = w.shutdown(Duration::from_secs(5)).await;
                        format!(
                            "{commands} commands; store: {} points accepted, {} written, {} dropped",
                            s.accepted,
                            s.written,
                            s.dropped()
                        )
                    }
                    None => format!("{commands} commands"),
                };
                anyhow::Ok((secs, line))
            })?;
            if secs < best[i] {
                best[i] = secs;
                info[i] = line;
            }
        }
    }
    let n = events.len() as f64;
    let mut rows = Vec::new();
    for (i, (name, _, _)) in variants.iter().enumerate() {
        rows.push(serde_json::json!({
            "variant": name,
            "events_per_s": n / best[i],
            "best_s": best[i],
            "vs_engine_only": best[0] / best[i],
            "detail": info[i],
        }));
        let vs = if i == 0 {
            String::new()
        } else {
            format!(
                ", {:+.1} % vs engine only, {:+.1} % vs no store",
                (best[0] / best[i] - 1.0) * 100.0,
                (best[1.min(i)] / best[i] - 1.0) * 100.0
            )
        };
        println!(
            "  {name:<22}{:>10.0} events/s  ({:.3} s{vs}) — {}",
            n / best[i],
            best[i],
            info[i]
        );
    }
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "bench": "store",
            "events": events.len(),
            "repeat": a.repeat.max(1),
            "variants": rows,
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
