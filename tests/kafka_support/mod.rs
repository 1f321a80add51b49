//! Shared helpers of the Kafka integration tests: a REAL broker (tansu,
//! started by `scripts/kafka.sh`), per-test topics, input generation and
//! command collection.
//!
//! Broker: when `PRESCALE_KAFKA_BROKERS` is set (CI starts one with
//! `scripts/kafka.sh start`), tests use it; otherwise each test binary starts
//! its own through the script on a free loopback port. The broker-restart
//! test always starts its own file-backed broker, since it stops it.
#![allow(dead_code)]

use prescale::engine::{CapacityPlanner, EngineConfig, PlanDecision, PlanRequest};
use prescale::events::*;
use prescale::forecast::{Forecast, Forecaster, History};
use prescale::io::kafka::client::{caught_up, consumer_config, ensure_topics, partitions_of};
use prescale::io::kafka::codec::{decode_output, headers};
use prescale::io::kafka::config::KafkaConfig;
use prescale::pricing::Catalog;
use prescale::state::StateConfig;
use prescale::wiring::EngineFactory;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub const MIN: i64 = 60_000;
pub const BUCKET_MS: i64 = 10 * MIN;
pub const LATENESS_MS: i64 = MIN;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A broker this process started (stopped on drop) or one given by CI.
pub struct Broker {
    pub brokers: String,
    port: u16,
    dir: Option<tempfile::TempDir>,
    storage: &'static str,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Broker {
    fn script(&self, cmd: &str) {
        let dir = self.dir.as_ref().expect("own broker").path();
        let st = Proc::new("bash")
            .arg(repo().join("scripts/kafka.sh"))
            .arg(cmd)
            .env("PRESCALE_KAFKA_PORT", self.port.to_string())
            .env("PRESCALE_KAFKA_DIR", dir)
            .env("PRESCALE_KAFKA_STORAGE", self.storage)
            .status()
            .expect("run scripts/kafka.sh");
        assert!(st.success(), "scripts/kafka.sh {cmd} failed");
    }

    fn own(storage: &'static str) -> Broker {
        let port = free_port();
        let b = Broker {
            brokers: format!("127.0.0.1:{port}"),
            port,
            dir: Some(tempfile::tempdir().expect("tempdir")),
            storage,
        };
        b.script("start");
        b
    }

    /// The broker for tests that do not stop it.
    pub fn shared() -> &'static Broker {
        static B: OnceLock<Broker> = OnceLock::new();
        B.get_or_init(|| match std::env::var("PRESCALE_KAFKA_BROKERS") {
            Ok(b) if !b.is_empty() => Broker {
                brokers: b,
                port: 0,
                dir: None,
                storage: "memory",
            },
            _ => Broker::own("memory"),
        })
    }

    /// A private broker with file-backed (libsql) storage that survives
    /// `stop` + `start`.
    pub fn file_backed() -> Broker {
        Broker::own("file")
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn start(&self) {
        self.script("start");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.dir.is_some() {
            self.script("stop");
        }
    }
}

/// A configuration with topics private to one test.
pub fn config(broker: &Broker, test: &str, state: &Path) -> KafkaConfig {
    let mut cfg = KafkaConfig {
        brokers: broker.brokers.clone(),
        group_id: format!("{test}-{}", std::process::id()),
        checkpoint_dir: state.to_path_buf(),
        checkpoint_interval_ms: 200,
        // Live tests produce while the service consumes: give partitions
        // that look idle time to deliver, so the merge is deterministic.
        merge_idle_ms: 300,
        // The read path under test, as the CLI reads it: a suite run with
        // `PRESCALE_KAFKA_DECODE_THREADS=2` tests the pipelined path, with
        // `=0` the inline one (unset: the machine's default).
        decode_threads: std::env::var("PRESCALE_KAFKA_DECODE_THREADS")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    cfg.topics.prefix = format!("{test}-{}-{}.", std::process::id(), now_ms());
    // tansu holds a fetch for the full wait: keep it short.
    cfg.properties
        .insert("fetch.wait.max.ms".into(), "10".into());
    // A killed member is waited for at most this long at the next rebalance.
    cfg.properties
        .insert("max.poll.interval.ms".into(), "10000".into());
    cfg
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn create_topics(cfg: &KafkaConfig) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names: Vec<(String, i32)> = cfg.topics.all().into_iter().map(|t| (t, 3)).collect();
    rt.block_on(ensure_topics(cfg, &names))
        .expect("create topics");
}

/// Forecast: history mean, scaled per quantile (float arithmetic that a
/// lossy path would change).
struct Mean;
impl Forecaster for Mean {
    fn name(&self) -> &str {
        "mean"
    }
    fn forecast(&self, h: &History<'_>, horizon: usize, q: &[f64]) -> Forecast {
        let m = h.values.iter().sum::<f64>() / h.values.len().max(1) as f64;
        Forecast {
            quantiles: q.to_vec(),
            values: vec![q.iter().map(|x| m * (0.5 + x) / 3.0).collect(); horizon],
        }
    }
}

/// Plan: p90 of the first step, at least what is queued.
struct Ceil;
impl CapacityPlanner for Ceil {
    fn plan(&self, r: &PlanRequest<'_>) -> PlanDecision {
        let v = r.forecast.values[0].last().copied().unwrap_or(0.0);
        PlanDecision {
            min_vcpus: v.floor() as i64,
            desired_vcpus: (v.ceil() as i64).max(r.outstanding.vcpus.ceil() as i64),
            max_vcpus: 10_000,
            instance_mix: vec![],
            constraints: Default::default(),
            reason: format!("p90 {v:.17}"),
            usd_per_vcpu_hour: 0.0,
        }
    }
}

/// The engine every test runs, both behind Kafka and as the file replay.
pub fn factory() -> EngineFactory {
    EngineFactory {
        config: EngineConfig {
            state: StateConfig {
                bucket_ms: BUCKET_MS,
                allowed_lateness_ms: LATENESS_MS,
                ..Default::default()
            },
            ..Default::default()
        },
        catalog: Arc::new(Catalog::default()),
        forecaster: Arc::new(Mean),
        planner: Arc::new(Ceil),
    }
}

pub const ENVS: [&str; 6] = ["ce-a", "ce-b", "ce-c", "ce-d", "ce-e", "ce-f"];

/// A time-ordered input over `buckets` decision buckets: per bucket a price
/// tick just as the watermark closes the previous bucket (every instance
/// reads prices, so every instance ticks at the same event), then job
/// submissions and completions across the environments.
pub fn events(buckets: i64, jobs_per_bucket: i64) -> Vec<Event> {
    let t0 = 1_700_000_000_000 - 1_700_000_000_000 % BUCKET_MS;
    let mut v = Vec::new();
    let mut running: Vec<(String, String, Millis)> = Vec::new();
    let mut n = 0;
    for b in 0..buckets {
        let start = t0 + b * BUCKET_MS;
        v.push(Event::PriceTick(PriceTick {
            at: start + LATENESS_MS,
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: None,
            instance_type: "m5.large".into(),
            market: Market::Spot,
            usd_per_hour: 0.03 + (b % 7) as f64 * 0.001,
        }));
        let span = BUCKET_MS - LATENESS_MS - 2;
        for j in 0..jobs_per_bucket {
            let at = start + LATENESS_MS + 1 + span * j / jobs_per_bucket;
            // Completions of jobs that ran long enough.
            running.retain(|(id, env, until)| {
                if *until <= at {
                    v.push(Event::JobCompleted(JobCompleted {
                        job_id: id.clone().into(),
                        compute_environment: env.clone().into(),
                        started_at: *until - 5 * MIN,
                        finished_at: at,
                        status: JobStatus::Succeeded,
                        instance_type: Some("m5.large".into()),
                        market: Some(Market::Spot),
                        region: Some("us-east-1".into()),
                        vcpu_seconds: 600.0,
                        max_memory_mib: None,
                    }));
                    false
                } else {
                    true
                }
            });
            let env = ENVS[((n * 7 + b) % ENVS.len() as i64) as usize];
            let id = format!("job-{n}");
            v.push(Event::JobSubmitted(JobSubmitted {
                job_id: id.clone().into(),
                submitted_at: at,
                compute_environment: env.into(),
                job_type: "batch".into(),
                project: compact_str::format_compact!("p{}", n % 3),
                user: "u".into(),
                priority: (n % 4) as i32,
                // Whole and half vCPUs, as real traces have.
                vcpus: 1.0 + (n % 6) as f64 * 0.5,
                memory_mib: 2048,
                gpus: 0,
                estimated_runtime_s: Some(1200),
                budget_usd: None,
                deadline: None,
                elasticity: n % 2 == 0,
            }));
            running.push((id, env.into(), at + (15 + n % 40) * MIN));
            n += 1;
        }
    }
    v
}

pub fn messages(evs: &[Event]) -> Vec<prescale::import::events_file::RecordedMessage> {
    evs.iter()
        .map(|e| prescale::import::events_file::RecordedMessage::from_event(e).unwrap())
        .collect()
}

/// One command read back from a command topic.
#[derive(Debug, Clone)]
pub struct Published {
    pub command: Command,
    pub instance: String,
}

/// Read every command on the command topics (from the beginning until
/// caught up).
pub fn read_commands(cfg: &KafkaConfig) -> Vec<Published> {
    let consumer: BaseConsumer = consumer_config(cfg, None).create().unwrap();
    let topics = [
        (cfg.topics.scaling_command(), true),
        (cfg.topics.preemption_command(), false),
    ];
    let mut tpl = TopicPartitionList::new();
    let mut next: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
    for (t, _) in &topics {
        for p in partitions_of(consumer.client(), t, Duration::from_secs(10)).unwrap() {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
            next.insert((t.clone(), p), None);
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reading commands timed out"
        );
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                next.insert((m.topic().to_string(), m.partition()), Some(m.offset() + 1));
                let scaling = m.topic() == topics[0].0;
                let command = decode_output(cfg, scaling, m.payload().unwrap_or(&[]))
                    .expect("command decodes");
                let instance = m
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == headers::INSTANCE)
                            .and_then(|h| h.value)
                    })
                    .map(|v| String::from_utf8_lossy(v).to_string())
                    .unwrap_or_default();
                out.push(Published { command, instance });
            }
            _ => {
                if started.elapsed() > Duration::from_millis(500)
                    && next
                        .iter()
                        .all(|((t, p), n)| caught_up(consumer.client(), t, *p, *n))
                {
                    return out;
                }
            }
        }
    }
}

/// The set of distinct commands, after checking that a repeated id always
/// repeats the same content (what lets actuators de-duplicate by id).
pub fn distinct(published: &[Published]) -> BTreeMap<String, Command> {
    let mut m: BTreeMap<String, Command> = BTreeMap::new();
    for p in published {
        if let Some(prev) = m.get(p.command.id()) {
            assert_eq!(prev, &p.command, "same id, different content");
        } else {
            m.insert(p.command.id().to_string(), p.command.clone());
        }
    }
    m
}

pub fn by_id(cmds: &[Command]) -> BTreeMap<String, Command> {
    let m: BTreeMap<String, Command> = cmds
        .iter()
        .map(|c| (c.id().to_string(), c.clone()))
        .collect();
    assert_eq!(m.len(), cmds.len(), "the file replay itself repeats an id");
    m
}

/// A service instance running in a thread of the test process.
pub struct Running {
    pub stats: Arc<prescale::io::kafka::service::Stats>,
    pub control: tokio::sync::mpsc::Sender<prescale::io::kafka::service::Control>,
    pub handle: std::thread::JoinHandle<prescale::io::kafka::service::RunReport>,
}

pub fn spawn_service(cfg: &KafkaConfig, instance: &str, idle: Duration) -> Running {
    use prescale::io::kafka::service::{run, RunOptions, Stats};
    let stats = Arc::new(Stats::default());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cfg = cfg.clone();
    let opts = RunOptions {
        instance: instance.to_string(),
        exit_when_idle: Some(idle),
        ..Default::default()
    };
    let st = stats.clone();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let f = factory();
        rt.block_on(run(&cfg, &f, &opts, rx, st))
            .expect("service run")
    });
    Running {
        stats,
        control: tx,
        handle,
    }
}

/// Wait until two instances have settled on a split of the group's nine
/// partitions (3 job-submission, 3 job-completion and 3 budget-spend).
pub fn wait_for_split(a: &Running, b: &Running) {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    loop {
        let (x, y) = (
            a.stats.assigned.load(Ordering::Relaxed),
            b.stats.assigned.load(Ordering::Relaxed),
        );
        if x > 0 && y > 0 && x + y == 9 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "group did not split ({x}, {y})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publish events as `prescale produce` does (keys, sequence headers).
pub fn produce(
    cfg: &KafkaConfig,
    evs: &[Event],
    first_seq: u64,
    pace: prescale::io::kafka::produce::Pace,
) {
    let p = prescale::io::kafka::publish::Publisher::new(cfg).unwrap();
    prescale::io::kafka::produce::publish_messages(cfg, &p, &messages(evs), first_seq, pace)
        .unwrap();
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Compare command sets, printing a readable summary of the differences.
pub fn assert_same(got: &BTreeMap<String, Command>, want: &BTreeMap<String, Command>) {
    if got == want {
        return;
    }
    let short = |c: &Command| match c {
        Command::Scaling(s) => format!(
            "{} t={} min={} desired={} max={}",
            s.compute_environment, s.issued_at, s.min_vcpus, s.desired_vcpus, s.max_vcpus
        ),
        Command::Preemption(p) => format!("{} {} {:?}", p.compute_environment, p.job_id, p.action),
    };
    let missing: Vec<String> = want
        .iter()
        .filter(|(k, _)| !got.contains_key(*k))
        .map(|(_, c)| short(c))
        .collect();
    let extra: Vec<String> = got
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .map(|(_, c)| short(c))
        .collect();
    let differ: Vec<String> = want
        .iter()
        .filter_map(|(k, w)| {
            got.get(k)
                .filter(|g| *g != w)
                .map(|g| format!("got {} want {}", short(g), short(w)))
        })
        .collect();
    panic!(
        "command sets differ: got {}, want {}\nmissing ({}): {:?}\nextra ({}): {:?}\ndifferent ({}): {:?}",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(8)],
        extra.len(),
        &extra[..extra.len().min(8)],
        differ.len(),
        &differ[..differ.len().min(8)]
    );
}

// ---- The real `prescale` binary -------------------------------------------

/// A `prescale` command line (the binary cargo built for this test run, or
/// `PRESCALE_TEST_BIN` when set: a copy kept aside where several checkouts
/// share one target directory and overwrite each other's binary).
pub fn prescale() -> Proc {
    match std::env::var_os("PRESCALE_TEST_BIN") {
        Some(bin) if !bin.is_empty() => Proc::new(bin),
        _ => Proc::new(env!("CARGO_BIN_EXE_prescale")),
    }
}

/// The connection flags of `cfg`, as `prescale run|produce|tail` take them.
pub fn cli_args(cfg: &KafkaConfig) -> Vec<String> {
    let mut v = vec![
        "--brokers".to_string(),
        cfg.brokers.clone(),
        "--topic-prefix".into(),
        cfg.topics.prefix.clone(),
        "--group".into(),
        cfg.group_id.clone(),
        "--checkpoint-dir".into(),
        cfg.checkpoint_dir.display().to_string(),
        "--checkpoint-interval-ms".into(),
        cfg.checkpoint_interval_ms.to_string(),
        "--merge-idle-ms".into(),
        cfg.merge_idle_ms.to_string(),
    ];
    if let Some(n) = cfg.decode_threads {
        v.push("--decode-threads".into());
        v.push(n.to_string());
    }
    for (k, val) in &cfg.properties {
        v.push("-X".into());
        v.push(format!("{k}={val}"));
    }
    v
}

/// Run a `prescale` sub-command to completion; panics with its stderr when
/// it fails. Returns stdout.
pub fn run_ok(cmd: &mut Proc) -> String {
    let out = cmd.output().expect("start prescale");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `prescale backtest` feeds its decision core and what it decides,
/// exported with `--events-out` and `--commands` for a slice of the bundled
/// trace (real jobs, real spot prices tiled onto them).
pub struct BacktestReplay {
    _dir: tempfile::TempDir,
    /// Events file of the engine's exact input.
    pub events: PathBuf,
    pub n_events: usize,
    /// Command id → the JSON line (as `prescale tail` prints it).
    pub commands: BTreeMap<String, String>,
}

/// Computed once per test binary.
pub fn backtest_replay() -> &'static BacktestReplay {
    static R: OnceLock<BacktestReplay> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.avro");
        let commands = dir.path().join("commands.jsonl");
        run_ok(
            prescale()
                .args(["backtest", "--policies", "reactive", "--max-jobs", "600"])
                .arg("--events-out")
                .arg(&events)
                .arg("--commands")
                .arg(&commands),
        );
        let n_events = prescale::import::events_file::read_events(&events, false)
            .expect("read the exported events")
            .events
            .len();
        let lines = std::fs::read_to_string(&commands).expect("read the exported commands");
        let all: Vec<String> = lines.lines().map(str::to_string).collect();
        let by_id = json_lines_by_id(&all);
        assert_eq!(by_id.len(), all.len(), "the backtest repeats a command id");
        BacktestReplay {
            _dir: dir,
            events,
            n_events,
            commands: by_id,
        }
    })
}

/// JSON command lines keyed by `command_id`, after checking that a repeated
/// id always repeats the same content.
pub fn json_lines_by_id(lines: &[String]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON command line");
        let id = v["command_id"].as_str().expect("command_id").to_string();
        if let Some(prev) = m.get(&id) {
            assert_eq!(prev, l, "same id {id}, different content");
        } else {
            m.insert(id, l.clone());
        }
    }
    m
}

/// Every command on the command topics, as `prescale tail` prints them.
pub fn tail_lines(cfg: &KafkaConfig) -> Vec<String> {
    let out = run_ok(
        prescale()
            .arg("tail")
            .args(cli_args(cfg))
            .args(["--from-beginning", "--exit-at-end"]),
    );
    out.lines().map(str::to_string).collect()
}

/// Compare JSON command sets by id, printing a readable summary.
pub fn assert_same_lines(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    if got == want {
        return;
    }
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<(&String, &String)> = want
        .iter()
        .filter_map(|(k, w)| got.get(k).filter(|g| *g != w).map(|g| (g, w)))
        .collect();
    panic!(
        "command sets differ: got {}, want {}\nmissing {}: {:?}\nextra {}: {:?}\ndifferent {}: {:?}",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
        differ.len(),
        &differ[..differ.len().min(2)]
    );
}

/// The report `prescale run` prints as its last stdout line.
pub fn run_report(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no run report in {stdout:?}"));
    serde_json::from_str(line).expect("run report is JSON")
}

/// The first message on the dead-letter topic of `topic` (read from its
/// first `partitions` partitions, from the beginning): its value and its
/// headers by name. Fails the test when none arrives within 20 s.
pub fn first_dead_letter(
    cfg: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> (Vec<u8>, BTreeMap<String, String>) {
    let consumer: BaseConsumer = consumer_config(cfg, None).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition_offset(&cfg.topics.dlq(topic), partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let m = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no dead letter arrived on {}",
            cfg.topics.dlq(topic)
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            break m;
        }
    };
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or(&[]));
                    (h.key.to_string(), value.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    (m.payload().unwrap_or(&[]).to_vec(), headers)
}
