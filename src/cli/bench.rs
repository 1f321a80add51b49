//! `prescale bench replay`: replay throughput of the decision loop and of the
//! simulator on the bundled sample scaled up. Prints figures; asserts nothing.
//!
//! The sample is scaled by repeating its jobs `--scale` times back to back
//! (ids suffixed, times shifted by the sample's span), with the spot prices
//! re-tiled onto the longer span. Each stage runs on one thread:
//! - `decode`: Avro decode of every recorded message (what arrives from Kafka);
//! - `decode+state`: plus the event-time demand state (windows, watermark);
//! - `full loop`: decode → state → engine decisions (forecast + plan on each
//!   tick), i.e. the service's whole per-event path without the broker;
//! - `dense`: the full loop with `--dense-scale` copies of the jobs on the
//!   sample's own span, so the ticks amortise and the per-event cost shows;
//! - `simulator`: the discrete-event cluster replaying the jobs (reactive,
//!   and predictive with the commands of the full loop).

use super::inputs::{prepare, Prepared};
use anyhow::Context;
use clap::{Args, Subcommand};
use prescale::events::avro::{decode_event, encode_event, EventKind};
use prescale::events::{Command, Event};
use prescale::pricing::Catalog;
use prescale::pricing::{tile_onto, TileOptions};
use prescale::sim::inputs::sim_prices;
use prescale::sim::policy::floor_commands;
use prescale::sim::{Cluster, Mode, SimConfig, SimPrices, Workload};
use prescale::state::{DemandState, StateConfig};
use prescale::wiring::make_engine;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCmd,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Events/s of the full decision loop and of the simulator.
    Replay(ReplayArgs),
    /// Kafka: raw rdkafka consume rate vs prescale's full path, and produce→command latency.
    Kafka(Box<super::bench_kafka::BenchKafkaArgs>),
    /// What reporting (metrics, prediction store; store up or down) costs the decision loop.
    Store(super::bench_store::BenchStoreArgs),
    /// Deadline benchmark on measured spot traces (Can't Be Late, NSDI '24): cost and misses per policy.
    Spot(Box<super::bench_spot::BenchSpotArgs>),
    /// Sparse traces (a year-long gap, 100 jobs over ten years): ticks, plans and wall time per stage.
    Sparse(super::bench_sparse::SparseArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Repeat the bundled sample this many times, back to back (a longer
    /// trace at the sample's load: the decode, state, full-loop and simulator
    /// stages).
    #[arg(long, default_value_t = 20)]
    pub scale: usize,
    /// Jobs multiplied this many times on the sample's own span for the
    /// `dense` stage (a busier deployment at the same decision ticks: the
    /// loop's per-event throughput, what the 1 M events/s per core target is
    /// about).
    #[arg(long, default_value_t = 300)]
    pub dense_scale: usize,
    /// Timed repetitions of each stage (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Stages to run (default: all). Handy to profile one stage alone.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub stages: Vec<Stage>,
    /// Also write the figures as JSON to this file (for CI to keep).
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

/// The figures `bench replay` prints, kept for `--json`: one entry per
/// stage, `{"stage", "events_per_s", "seconds", ...}`.
#[derive(Default)]
struct Figures(Vec<serde_json::Value>);

impl Figures {
    fn stage(&mut self, stage: &str, events_per_s: f64, seconds: f64, extra: serde_json::Value) {
        let mut v =
            serde_json::json!({"stage": stage, "events_per_s": events_per_s, "seconds": seconds});
        if let (Some(o), serde_json::Value::Object(x)) = (v.as_object_mut(), extra) {
            o.extend(x);
        }
        self.0.push(v);
    }

    fn write(self, path: &std::path::Path, events: usize, scale: usize) -> anyhow::Result<()> {
        let j = serde_json::json!({"bench": "replay", "events": events, "scale": scale, "stages": self.0});
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// One timed stage of `bench replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    Decode,
    State,
    Full,
    Dense,
    Sim,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.what {
        BenchCmd::Replay(r) => replay(r),
        BenchCmd::Kafka(k) => super::bench_kafka::run(*k, prescale::wiring::decision_core),
        BenchCmd::Store(s) => super::bench_store::run(s),
        BenchCmd::Spot(s) => super::bench_spot::run(*s),
        BenchCmd::Sparse(s) => super::bench_sparse::run(s),
    }
}

fn shift(ev: &Event, k: usize, dt: i64) -> Event {
    let off = k as i64 * dt;
    match ev {
        Event::JobSubmitted(s) => {
            let mut s = s.clone();
            s.job_id = compact_str::format_compact!("{}-{k}", s.job_id);
            s.submitted_at += off;
            s.deadline = s.deadline.map(|d| d + off);
            Event::JobSubmitted(s)
        }
        Event::JobCompleted(c) => {
            let mut c = c.clone();
            c.job_id = compact_str::format_compact!("{}-{k}", c.job_id);
            c.started_at += off;
            c.finished_at += off;
            Event::JobCompleted(c)
        }
        other => other.clone(),
    }
}

/// Each event as the Avro message its default topic carries.
fn encode_all(
    events: &[Event],
) -> Result<Vec<(EventKind, Vec<u8>)>, prescale::events::avro::CodecError> {
    events
        .iter()
        .map(|e| Ok((EventKind::from_default_topic(e.topic())?, encode_event(e)?)))
        .collect()
}

fn best<T>(repeat: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.expect("at least one run"))
}

/// The simulator stage of `bench replay`: the scaled sample under reactive
/// scaling and under the engine's commands, in simulated events per second.
fn bench_sim(
    all: &[Event],
    prices: &SimPrices,
    cmds: Vec<Command>,
    repeat: usize,
    n: f64,
    figs: &mut Figures,
) {
    let workload = Workload::from_events(all);
    let cfg = SimConfig::default();
    let start = workload.first_event - workload.first_event.rem_euclid(cfg.bucket_ms);
    let scaling: Vec<_> = cmds
        .into_iter()
        .filter_map(|c| match c {
            Command::Scaling(s) => Some(s),
            _ => None,
        })
        .collect();
    let (floors, _) = floor_commands(&scaling, &workload, prices);
    for (name, commanded) in [("reactive", false), ("predictive", true)] {
        let (t_sim, sim_events) = best(repeat, || {
            let mut total = 0u64;
            for (env, env_floors) in floors.iter().enumerate() {
                let jobs = workload.jobs.iter().filter(|j| j.env == env).collect();
                let mode = if commanded {
                    Mode::Commanded {
                        commands: env_floors,
                    }
                } else {
                    Mode::Reactive
                };
                let st =
                    Cluster::new(&cfg, prices, jobs, mode, 1, start, workload.last_event).run();
                total += st.sim_events;
            }
            total
        });
        println!(
            "  simulator {name:<10}{:>10.0} sim events/s ({:.3} s, {sim_events} sim events, {:.0} trace events/s)",
            sim_events as f64 / t_sim,
            t_sim,
            n / t_sim
        );
        let extra = serde_json::json!({"sim_events": sim_events, "sim_events_per_s": sim_events as f64 / t_sim});
        figs.stage(&format!("simulator {name}"), n / t_sim, t_sim, extra);
    }
}

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let base = prepare(None, None, None, false, None, false)?;
    let jobs: Vec<&Event> = base
        .events
        .iter()
        .filter(|e| !matches!(e, Event::PriceTick(_)))
        .collect();
    let first = jobs.first().map(|e| e.time()).unwrap_or(0);
    let last = jobs.last().map(|e| e.time()).unwrap_or(0);
    let span = (last - first) + 3_600_000;
    let mut events: Vec<Event> = Vec::with_capacity(jobs.len() * a.scale);
    for k in 0..a.scale.max(1) {
        events.extend(jobs.iter().map(|e| shift(e, k, span)));
    }
    events.sort_by_key(|e| e.time());
    let end = events.last().map(|e| e.time()).unwrap_or(0);
    let ticks = tile_onto(
        &base.raw_ticks,
        first,
        end,
        &base.catalog,
        &TileOptions {
            regions: Vec::new(),
            catalog_types_only: true,
        },
    );
    let prices = sim_prices(&base.catalog, &ticks);
    let mut all: Vec<Event> = ticks.into_iter().map(Event::PriceTick).collect();
    all.extend(events);
    all.sort_by_key(|e| e.time());
    let msgs = encode_all(&all).context("encoding the scaled sample")?;
    let n = msgs.len() as f64;
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    println!(
        "bench replay: bundled sample x{} = {} events ({} jobs, {:.1} MB Avro), span {:.1} days, one thread",
        a.scale,
        msgs.len(),
        all.iter().filter(|e| matches!(e, Event::JobSubmitted(_))).count(),
        bytes as f64 / 1e6,
        (end - first) as f64 / 86_400_000.0
    );

    let on = |s: Stage| a.stages.is_empty() || a.stages.contains(&s);
    let mut figs = Figures::default();
    bench_decode_and_state(&msgs, a.repeat, &on, &mut figs);
    let mut cmds = None;
    if on(Stage::Full) {
        let (t_full, r) = best(a.repeat, || full_loop(&base.catalog, &msgs));
        println!(
            "  full loop           {:>10.0} events/s  ({}) — decode → state → engine",
            n / t_full,
            r.summary(t_full)
        );
        figs.stage("full", n / t_full, t_full, r.json());
        cmds = Some(r.out);
    }

    if on(Stage::Dense) {
        bench_dense(&base, &jobs, &a, &mut figs)?;
    }
    if on(Stage::Sim) {
        let cmds = cmds.unwrap_or_else(|| full_loop(&base.catalog, &msgs).out);
        bench_sim(&all, &prices, cmds, a.repeat, n, &mut figs);
    }
    match &a.json {
        Some(p) => figs.write(p, msgs.len(), a.scale),
        None => Ok(()),
    }
}

/// The `decode` and `decode+state` stages of `bench replay`.
fn bench_decode_and_state(
    msgs: &[(EventKind, Vec<u8>)],
    repeat: usize,
    on: &dyn Fn(Stage) -> bool,
    figs: &mut Figures,
) {
    let n = msgs.len() as f64;
    if on(Stage::Decode) {
        let (t_dec, ok) = best(repeat, || {
            let mut ok = 0u64;
            for (k, b) in msgs {
                if decode_event(*k, b).is_ok() {
                    ok += 1;
                }
            }
            ok
        });
        println!(
            "  decode              {:>10.0} events/s  ({:.3} s, {ok} ok)",
            n / t_dec,
            t_dec
        );
        figs.stage("decode", n / t_dec, t_dec, serde_json::json!({"ok": ok}));
    }
    if on(Stage::State) {
        let (t_state, ticks_seen) = best(repeat, || {
            let mut st = DemandState::new(StateConfig::default());
            let mut ticks = Vec::new();
            let mut nt = 0usize;
            for (k, b) in msgs {
                if let Ok(ev) = decode_event(*k, b) {
                    st.apply(&ev, &mut ticks);
                    nt += ticks.len();
                    ticks.clear();
                }
            }
            nt
        });
        println!(
            "  decode+state        {:>10.0} events/s  ({:.3} s, {ticks_seen} ticks)",
            n / t_state,
            t_state
        );
        let extra = serde_json::json!({"ticks": ticks_seen});
        figs.stage("decode+state", n / t_state, t_state, extra);
    }
}

/// What one pass of the whole decision loop did.
struct LoopRun {
    out: Vec<Command>,
    ticks: u64,
    /// Plans whose offers were built in full.
    built: u64,
    /// Plans made.
    plans: u64,
    /// Decisions reused instead of planned (idle and busy).
    reused: u64,
}

impl LoopRun {
    /// The run's time and counts, for the figure's line.
    fn summary(&self, secs: f64) -> String {
        format!(
            "{secs:.3} s, {} ticks, {:.1} µs/tick, {} commands, offers built for {} of {} plans, {} decisions reused",
            self.ticks,
            secs * 1e6 / self.ticks.max(1) as f64,
            self.out.len(),
            self.built,
            self.plans,
            self.reused
        )
    }

    /// The counts for `--json`.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"ticks": self.ticks, "commands": self.out.len(), "plans": self.plans, "offers_built": self.built, "decisions_reused": self.reused})
    }
}

/// The whole decision loop over encoded events: decode → state → engine.
fn full_loop(catalog: &Arc<Catalog>, msgs: &[(EventKind, Vec<u8>)]) -> LoopRun {
    let mut engine = make_engine(catalog.clone(), None, &Default::default());
    let mut out: Vec<Command> = Vec::new();
    for (k, b) in msgs {
        if let Ok(ev) = decode_event(*k, b) {
            engine.handle(&ev, &mut out);
        }
    }
    engine.finish(&mut out);
    let (built, patched) = engine.offers_built_and_reused();
    LoopRun {
        out,
        ticks: engine.counters().ticks,
        built,
        plans: built + patched,
        reused: engine.plans_reused() + engine.busy_plans_reused(),
    }
}

/// The `dense` stage of `bench replay`: the sample's jobs copied onto its
/// own span.
fn bench_dense(
    base: &Prepared,
    jobs: &[&Event],
    a: &ReplayArgs,
    figs: &mut Figures,
) -> anyhow::Result<()> {
    // Dense layout: the same copies overlaid on the sample's own span
    // (ids suffixed, times shifted by k seconds), i.e. a busier
    // deployment with the same decision ticks. Shows the per-event cost
    // once ticks amortise.
    let mut dense: Vec<Event> = base
        .events
        .iter()
        .filter(|e| matches!(e, Event::PriceTick(_)))
        .cloned()
        .collect();
    for k in 0..a.dense_scale.max(1) {
        dense.extend(jobs.iter().map(|e| shift(e, k, 1000)));
    }
    dense.sort_by_key(|e| e.time());
    let dmsgs = encode_all(&dense).context("encoding the dense sample")?;
    let (t_dense, r) = best(a.repeat, || full_loop(&base.catalog, &dmsgs));
    println!(
        "  full loop (dense)   {:>10.0} events/s  ({}, {} events) — {}x jobs on the sample's own span",
        dmsgs.len() as f64 / t_dense,
        r.summary(t_dense),
        dmsgs.len(),
        a.dense_scale
    );
    let mut extra = r.json();
    extra["events"] = dmsgs.len().into();
    figs.stage("dense", dmsgs.len() as f64 / t_dense, t_dense, extra);
    println!(
            "  whole loop per core, event-bound (dense x{}): {:.2} M events/s (target >= 1 M); tick-bound layouts are limited by the µs per tick instead",
            a.dense_scale,
            dmsgs.len() as f64 / t_dense / 1e6
        );
    Ok(())
}
