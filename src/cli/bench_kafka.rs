//! `prescale bench kafka`: on one broker and the same topics, (1) the raw
//! consume rate of a plain rdkafka consumer doing nothing with the messages,
//! (2) prescale's full path (consume → decode → merge → engine state →
//! decisions → publish) over the same messages, and (3) at a steady input
//! rate, the latency from an event's produce time to the decision it feeds
//! and to the command it triggers arriving on the command topic.
//!
//! Figures are printed (and optionally written as JSON); nothing asserts on
//! them, as timings depend on the machine.

use super::run::KafkaArgs;
use anyhow::{bail, Context};
use cpu_time::ProcessTime;
use prescale::engine::EngineConfig;
use prescale::events::file::RecordedMessage;
use prescale::events::*;
use prescale::io::kafka::brain::EngineFactory;
use prescale::io::kafka::client::{consumer_config, ensure_topics, partitions_of};
use prescale::io::kafka::codec::headers;
use prescale::io::kafka::config::KafkaConfig;
use prescale::io::kafka::produce::{publish_messages, Pace};
use prescale::io::kafka::publish::Publisher;
use prescale::io::kafka::service::{self, Control, RunOptions, Stats};
use prescale::state::StateConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BenchKafkaArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Messages in the throughput comparison.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Raw and full-path runs over those messages, interleaved; the medians
    /// are compared (one run of each swings ±20 % on a busy machine).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Input rate (events/s) of the latency measurement.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Duration of the latency measurement.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Compute environments in the synthetic input.
    #[arg(long, default_value_t = 8)]
    pub environments: usize,
    /// Partitions per topic (topics are created fresh for the run).
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// On-demand catalogue CSV; default: the bundled one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Synthetic input: per millisecond of event time one event: job
/// submissions spread over the environments and, in equal number, the
/// completions of jobs submitted 50 jobs earlier (a steady state: the set of
/// running jobs, and so the snapshot, stays the same size however long the
/// run), and a price tick every 100 events.
fn synthetic(n: usize, envs: usize, t0: Millis, step_ms: f64) -> Vec<Event> {
    let mut v = Vec::with_capacity(n);
    let mut i = 0usize;
    let mut job = 0usize;
    while v.len() < n {
        let at = t0 + (i as f64 * step_ms) as i64;
        if i % 100 == 0 {
            v.push(Event::PriceTick(PriceTick {
                at,
                provider: "aws".into(),
                region: "us-east-1".into(),
                zone: None,
                instance_type: ["m5.large", "c5.xlarge", "r5.2xlarge"][i / 100 % 3].into(),
                market: Market::Spot,
                usd_per_hour: 0.03 + (i % 7) as f64 * 0.001,
            }));
        } else if i % 2 == 0 && job > 50 {
            let j = job - 50;
            v.push(Event::JobCompleted(JobCompleted {
                job_id: compact_str::format_compact!("job-{j}"),
                compute_environment: compact_str::format_compact!("ce-{}", j % envs),
                started_at: at - 1000,
                finished_at: at,
                status: JobStatus::Succeeded,
                instance_type: Some("m5.large".into()),
                market: Some(Market::Spot),
                region: Some("us-east-1".into()),
                vcpu_seconds: 2.0,
                max_memory_mib: None,
            }));
        } else {
            v.push(Event::JobSubmitted(JobSubmitted {
                job_id: compact_str::format_compact!("job-{job}"),
                submitted_at: at,
                compute_environment: compact_str::format_compact!("ce-{}", job % envs),
                job_type: "batch".into(),
                project: compact_str::format_compact!("p{}", job % 5),
                user: "u".into(),
                priority: (job % 4) as i32,
                vcpus: 1.0 + (job % 8) as f64,
                memory_mib: 4096,
                gpus: 0,
                estimated_runtime_s: Some(600),
                budget_usd: None,
                deadline: None,
                elasticity: false,
            }));
            job += 1;
        }
        i += 1;
    }
    v
}

/// A scratch directory for one benchmark phase's snapshots, removed when
/// the returned guard is dropped (the bench leaves nothing behind).
fn scratch(tag: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("prescale-bench-{tag}-"))
        .tempdir()
        .context("creating a scratch directory")
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

fn fresh_topics(base: &KafkaConfig, tag: &str, partitions: i32) -> anyhow::Result<KafkaConfig> {
    let mut cfg = base.clone();
    let stamp = chrono::Utc::now().timestamp_millis();
    cfg.topics.prefix = format!(
        "{}bench-{tag}-{}-{stamp}.",
        base.topics.prefix,
        std::process::id()
    );
    cfg.group_id = format!(
        "{}bench-{tag}-{}-{stamp}",
        base.topics.prefix,
        std::process::id()
    );
    let names: Vec<(String, i32)> = cfg
        .topics
        .all()
        .into_iter()
        .map(|t| (t, partitions))
        .collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(ensure_topics(&cfg, &names))
        .context("creating benchmark topics")?;
    Ok(cfg)
}

/// What one pass over the messages measured.
struct Pass {
    /// Messages (raw) or events (full path) per second, from the first
    /// message read to the last one consumed or applied.
    rate: f64,
    /// CPU time of every thread of this process over the same span, per
    /// message (µs): the client's whole cost, whatever the cores. The broker
    /// runs in another process and is not counted.
    cpu_us: f64,
}

/// Wall and process CPU clocks, started together at a pass's first message.
struct Clocks {
    wall: Instant,
    cpu: ProcessTime,
}

impl Clocks {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: ProcessTime::now(),
        }
    }

    /// The pass over `n` messages that started at `start` and ends now
    /// (NaN when no message was read).
    fn pass(start: Option<Self>, n: usize) -> Pass {
        match start {
            Some(c) => Pass {
                rate: n as f64 / c.wall.elapsed().as_secs_f64(),
                cpu_us: c.cpu.elapsed().as_secs_f64() * 1e6 / n as f64,
            },
            None => Pass {
                rate: f64::NAN,
                cpu_us: f64::NAN,
            },
        }
    }
}

/// Consume `n` messages from every input partition with no processing.
fn raw_consume(cfg: &KafkaConfig, n: usize) -> anyhow::Result<Pass> {
    let c: BaseConsumer = consumer_config(cfg, None).create()?;
    let mut tpl = TopicPartitionList::new();
    for (_, t) in cfg.topics.inputs() {
        for p in partitions_of(c.client(), &t, Duration::from_secs(10))? {
            tpl.add_partition_offset(&t, p, Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut got = 0usize;
    let mut bytes = 0usize;
    let mut first = None;
    while got < n {
        if Instant::now() > deadline {
            bail!("raw consumer read only {got} of {n} messages");
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Clocks::start);
            bytes += m.payload_len();
            got += 1;
        }
    }
    let pass = Clocks::pass(first, n);
    std::hint::black_box(bytes);
    Ok(pass)
}

fn spawn(
    cfg: &KafkaConfig,
    factory: &EngineFactory,
    idle: Option<Duration>,
    stats: Arc<Stats>,
) -> (
    tokio::sync::mpsc::Sender<Control>,
    std::thread::JoinHandle<anyhow::Result<service::RunReport>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cfg = cfg.clone();
    let factory = factory.clone();
    let h = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let opts = RunOptions {
            instance: "bench".into(),
            exit_when_idle: idle,
        };
        Ok(rt.block_on(service::run(&cfg, &factory, &opts, rx, stats))?)
    });
    (tx, h)
}

/// What one full-path run measured.
struct FullRun {
    pass: Pass,
    /// Most messages the merge held at once.
    merge_peak: u64,
}

/// The full path over `n` pre-produced messages.
fn full_path(cfg: &KafkaConfig, factory: &EngineFactory, n: usize) -> anyhow::Result<FullRun> {
    let mut cfg = cfg.clone();
    let dir = scratch("tput")?;
    cfg.checkpoint_dir = dir.path().to_path_buf();
    // `checkpoint_interval_ms` as configured (1 s unless set): checkpoints
    // are part of the full path's cost.
    let stats = Arc::new(Stats::default());
    let (_tx, h) = spawn(
        &cfg,
        factory,
        Some(Duration::from_millis(500)),
        stats.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = None;
    loop {
        let e = stats.events.load(Ordering::Relaxed) as usize;
        // The clock starts at the first message *read*, as the raw
        // consumer's does: the merge holds events back until every partition
        // has a head, and starting at the first event applied would leave
        // that read-ahead out of the full path's time.
        if stats.messages.load(Ordering::Relaxed) > 0 {
            first.get_or_insert_with(Clocks::start);
        }
        if e >= n {
            break;
        }
        if h.is_finished() {
            let why = match h.join() {
                Ok(Ok(r)) => format!("the service stopped: {}", serde_json::to_string(&r)?),
                Ok(Err(err)) => format!("the service failed: {err}"),
                Err(_) => "the service thread panicked".into(),
            };
            bail!("full path applied only {e} of {n} events: {why}");
        }
        if Instant::now() > deadline {
            bail!("full path applied only {e} of {n} events in 300 s");
        }
        // Coarse enough not to take CPU from the service on a small
        // machine (±1 ms on a run of a quarter second or more).
        std::thread::sleep(Duration::from_millis(1));
    }
    let pass = Clocks::pass(first, n);
    h.join()
        .map_err(|_| anyhow::anyhow!("service thread panicked"))??;
    Ok(FullRun {
        pass,
        merge_peak: stats.merge_peak.load(Ordering::Relaxed),
    })
}

pub fn run(args: BenchKafkaArgs, core: super::run::DecisionCore) -> anyhow::Result<()> {
    let factory = super::run::engine_factory(args.catalog.as_deref(), None, core)?;
    let mut base = args.kafka.load()?;
    // tansu answers a fetch only when `fetch.wait.max.ms` has run out, even
    // with data waiting (a Kafka broker answers at `fetch.min.bytes`), so
    // the wait is the latency floor of every hop; 1 ms on loopback. `-X`
    // overrides it.
    base.properties
        .entry("fetch.wait.max.ms".into())
        .or_insert_with(|| "1".into());
    // `fetch.queue.backoff.ms` is 5 ms for every consumer of prescale's
    // (`consumer_config`), the raw one here included.
    let n = args.messages;
    println!(
        "bench kafka: broker {}, {} partitions per topic, {} messages, {} environments",
        base.brokers, args.partitions, n, args.environments
    );

    // 1 + 2: same topics, same messages.
    let cfg = fresh_topics(&base, "tput", args.partitions)?;
    let evs = synthetic(n, args.environments, 1_700_000_000_000, 1.0);
    let msgs: Vec<RecordedMessage> = evs
        .iter()
        .map(RecordedMessage::from_event)
        .collect::<Result<_, _>>()?;
    let publisher = Publisher::new(&cfg)?;
    let t = Instant::now();
    publish_messages(&cfg, &publisher, &msgs, 0, Pace::AsFastAsPossible)?;
    publisher.flush(Duration::from_secs(120))?;
    println!(
        "  produced {n} messages in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let (mut raws, mut fulls) = (Vec::new(), Vec::new());
    let (mut raw_cpus, mut full_cpus) = (Vec::new(), Vec::new());
    for i in 0..args.repeat {
        let Pass {
            rate: raw,
            cpu_us: raw_cpu,
        } = raw_consume(&cfg, n)?;
        // A group of its own per run: each starts from the beginning.
        let mut run_cfg = cfg.clone();
        run_cfg.group_id = format!("{}-{i}", cfg.group_id);
        let FullRun {
            pass: Pass {
                rate: full,
                cpu_us: full_cpu,
            },
            merge_peak,
        } = full_path(&run_cfg, &factory, n)?;
        println!(
            "  run {}: raw rdkafka consume {raw:>10.0} msg/s, prescale full path {full:>10.0} msg/s ({:.2}×; merge held at most {merge_peak} messages); CPU per message {raw_cpu:.2} / {full_cpu:.2} µs",
            i + 1,
            full / raw
        );
        raws.push(raw);
        fulls.push(full);
        raw_cpus.push(raw_cpu);
        full_cpus.push(full_cpu);
    }
    // A run that hits a fetch stall reads far slower (seen on tansu for
    // either path), so both the medians and the bests are shown.
    let (raw_best, full_best) = (percentile(&mut raws, 1.0), percentile(&mut fulls, 1.0));
    let raw = percentile(&mut raws, 0.5);
    let full = percentile(&mut fulls, 0.5);
    println!("  raw rdkafka consume (no processing):  median {raw:>10.0} msg/s, best {raw_best:>10.0} msg/s");
    println!(
        "  prescale full path (decode→state→decide→publish): median {full:>10.0} msg/s = {:.2}× raw, best {full_best:>10.0} msg/s = {:.2}× raw's best (target ≥ 0.8×)",
        full / raw,
        full_best / raw_best
    );
    let raw_cpu = percentile(&mut raw_cpus, 0.5);
    let full_cpu = percentile(&mut full_cpus, 0.5);
    println!(
        "  CPU per message, all threads of this process (broker excluded), median: raw {raw_cpu:.2} µs, full path {full_cpu:.2} µs ({:.1}×)",
        full_cpu / raw_cpu
    );

    // 3: latency at a steady rate, event time = wall time, 1 s decision
    // buckets so decisions (and commands) happen every second.
    let cfg = fresh_topics(&base, "lat", args.partitions)?;
    let mut lat_factory = factory.clone();
    lat_factory.config = EngineConfig {
        state: StateConfig {
            bucket_ms: 1_000,
            allowed_lateness_ms: 0,
            ..Default::default()
        },
        ..factory.config.clone()
    };
    let mut lcfg = cfg.clone();
    let dir = scratch("lat")?;
    lcfg.checkpoint_dir = dir.path().to_path_buf();
    let stats = Arc::new(Stats::default());
    stats.record_latency.store(true, Ordering::Relaxed);
    let (tx, h) = spawn(&lcfg, &lat_factory, None, stats.clone());
    let started = Instant::now();
    while stats.assigned.load(Ordering::Relaxed) == 0 {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("service did not join its group");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The floor: a plain consumer of the same input partitions, doing
    // nothing, in the same run: produce → message received.
    let stop = Arc::new(AtomicBool::new(false));
    let raw_cfg = cfg.clone();
    let raw_stop = stop.clone();
    let raw_receiver = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let c: BaseConsumer = consumer_config(&raw_cfg, None).create()?;
        let mut tpl = TopicPartitionList::new();
        for (_, t) in raw_cfg.topics.inputs() {
            for p in partitions_of(c.client(), &t, Duration::from_secs(10))? {
                tpl.add_partition_offset(&t, p, Offset::Beginning)?;
            }
        }
        c.assign(&tpl)?;
        let mut out = Vec::new();
        while !raw_stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let now = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
                if let Some(ts) = m.timestamp().to_millis() {
                    out.push(now - ts as f64);
                }
            }
        }
        Ok(out)
    });
    // Command receiver: produce-of-trigger → command arrival.
    let rcfg = cfg.clone();
    let rstop = stop.clone();
    let receiver = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let c: BaseConsumer = consumer_config(&rcfg, None).create()?;
        let mut tpl = TopicPartitionList::new();
        for t in [
            rcfg.topics.scaling_command(),
            rcfg.topics.preemption_command(),
        ] {
            for p in partitions_of(c.client(), &t, Duration::from_secs(10))? {
                tpl.add_partition_offset(&t, p, Offset::Beginning)?;
            }
        }
        c.assign(&tpl)?;
        let mut out = Vec::new();
        while !rstop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let now = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
                let ts = m
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == headers::TRIGGER_TS)
                            .and_then(|h| h.value)
                    })
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<f64>().ok());
                if let Some(ts) = ts {
                    out.push(now - ts);
                }
            }
        }
        Ok(out)
    });
    let total = (args.rate * args.latency_secs as f64) as usize;
    let t0 = chrono::Utc::now().timestamp_millis();
    let live = synthetic(total, args.environments, t0, 1000.0 / args.rate);
    let lmsgs: Vec<RecordedMessage> = live
        .iter()
        .map(RecordedMessage::from_event)
        .collect::<Result<_, _>>()?;
    let lp = Publisher::new(&cfg)?;
    publish_messages(&cfg, &lp, &lmsgs, 0, Pace::Rate(args.rate))?;
    lp.flush(Duration::from_secs(60))?;
    let settle = Instant::now();
    while (stats.events.load(Ordering::Relaxed) as usize) < total
        && settle.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = tx.blocking_send(Control::Stop);
    h.join()
        .map_err(|_| anyhow::anyhow!("service thread panicked"))??;
    let mut cmd_lat = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let mut raw_lat = raw_receiver
        .join()
        .map_err(|_| anyhow::anyhow!("raw receiver panicked"))??;
    let (r50, r99) = (
        percentile(&mut raw_lat, 0.5),
        percentile(&mut raw_lat, 0.99),
    );
    let mut ev_lat = std::mem::take(&mut *stats.latencies_ms.lock().expect("latency lock"));
    let (e50, e99) = (percentile(&mut ev_lat, 0.5), percentile(&mut ev_lat, 0.99));
    let (c50, c99) = (
        percentile(&mut cmd_lat, 0.5),
        percentile(&mut cmd_lat, 0.99),
    );
    println!(
        "  latency at {:.0} events/s for {} s ({} events):",
        args.rate, args.latency_secs, total
    );
    println!(
        "    produce → raw consumer:      p50 {r50:>6.1} ms  p99 {r99:>6.1} ms  ({} messages; plain rdkafka consumer, no processing: the floor)",
        raw_lat.len()
    );
    println!(
        "    produce → decided:           p50 {e50:>6.1} ms  p99 {e99:>6.1} ms  ({} events)",
        ev_lat.len()
    );
    println!(
        "    produce → command received:  p50 {c50:>6.1} ms  p99 {c99:>6.1} ms  ({} commands; target p99 < 50 ms)",
        cmd_lat.len()
    );
    if let Some(p) = &args.json {
        let j = serde_json::json!({
            "messages": n,
            "repeat": args.repeat,
            "partitions": args.partitions,
            "raw_consume_msgs_per_s": raw,
            "full_path_msgs_per_s": full,
            "full_over_raw": full / raw,
            "raw_best_msgs_per_s": raw_best,
            "full_best_msgs_per_s": full_best,
            "full_best_over_raw_best": full_best / raw_best,
            "raw_cpu_us_per_msg": raw_cpu,
            "full_cpu_us_per_msg": full_cpu,
            "latency": {
                "rate_events_per_s": args.rate,
                "seconds": args.latency_secs,
                "raw_consume_ms": {"p50": r50, "p99": r99, "n": raw_lat.len()},
                "event_to_decision_ms": {"p50": e50, "p99": e99, "n": ev_lat.len()},
                "event_to_command_ms": {"p50": c50, "p99": c99, "n": cmd_lat.len()},
            }
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
