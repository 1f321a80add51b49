//! `prescale ingest slurm` against a REAL Slurm cluster (scripts/slurm.sh)
//! and a REAL broker (scripts/kafka.sh): sbatch'd jobs reach the input
//! topics as the right events, completions included, each exactly once
//! across graceful restarts, `kill -9` and a crash between publishing and
//! saving the state.

#[path = "kafka_support/mod.rs"]
mod kafka_support;
mod slurm_support;

use kafka_support::{config, create_topics, Broker};
use prescale::events::avro::EventKind;
use prescale::events::{Event, JobCompleted, JobStatus, JobSubmitted};
use prescale::io::kafka::client::{consumer_config, partitions_of};
use prescale::io::kafka::codec::decode_input;
use prescale::io::kafka::KafkaConfig;
use prescale::io::slurm::ingest::{IngestConfig, Ingester, Sink};
use prescale::io::slurm::jobs::Naming;
use prescale::io::slurm::sink::KafkaSink;
use prescale::io::slurm::{SlurmCommands, SlurmError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use slurm_support::*;
use std::collections::BTreeMap;
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

/// Every event on the two job topics, from the beginning.
fn read_jobs(cfg: &KafkaConfig) -> Vec<Event> {
    let consumer: BaseConsumer = consumer_config(cfg, None).create().unwrap();
    let topics = [
        (cfg.topics.job_submission(), EventKind::JobSubmitted),
        (cfg.topics.job_completion(), EventKind::JobCompleted),
    ];
    let mut tpl = TopicPartitionList::new();
    for (t, _) in &topics {
        for p in partitions_of(consumer.client(), t, Duration::from_secs(10)).unwrap() {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    let mut out = Vec::new();
    consumer.assign(&tpl).unwrap();
    // Until the topics stay quiet for a while (tansu's watermarks are not
    // message counts, so they cannot tell when everything was read).
    let t = Instant::now();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_millis(1500) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "reading the job topics timed out"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let kind = topics.iter().find(|(t, _)| t == m.topic()).unwrap().1;
            out.push(decode_input(cfg, kind, m.payload().unwrap()).expect("event decodes"));
            last = Instant::now();
        }
    }
    out
}

fn split(
    evs: &[Event],
) -> (
    BTreeMap<String, Vec<JobSubmitted>>,
    BTreeMap<String, Vec<JobCompleted>>,
) {
    let (mut s, mut c) = (BTreeMap::new(), BTreeMap::new());
    for e in evs {
        match e {
            Event::JobSubmitted(j) => s
                .entry(j.job_id.to_string())
                .or_insert_with(Vec::new)
                .push(j.clone()),
            Event::JobCompleted(j) => c
                .entry(j.job_id.to_string())
                .or_insert_with(Vec::new)
                .push(j.clone()),
            _ => panic!("unexpected event {e:?}"),
        }
    }
    (s, c)
}

struct Ingest<'a> {
    cluster: &'a Cluster,
    cfg: &'a KafkaConfig,
    state: std::path::PathBuf,
}

impl Ingest<'_> {
    fn spawn(&self) -> Child {
        self.cluster
            .cmd(&prescale_bin())
            .args(["ingest", "slurm", "--poll-interval-ms", "300"])
            .arg("--spool")
            .arg(self.cluster.spool())
            .arg("--state")
            .arg(&self.state)
            .args([
                "--environment",
                "static=slurm-static",
                "--partition",
                "static",
            ])
            .args(["--brokers", &self.cfg.brokers])
            .args(["--topic-prefix", &self.cfg.topics.prefix])
            .args(["-X", "fetch.wait.max.ms=10"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start prescale ingest slurm")
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn sigterm(child: &mut Child) {
    let st = Proc::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "ingester ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sbatch_jobs_reach_the_topics_once_across_restarts_and_kill_9() {
    let cluster = Cluster::start(ClusterSpec::default());
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "slurm-ingest", state.path());
    create_topics(&cfg);
    let ing = Ingest {
        cluster: &cluster,
        cfg: &cfg,
        state: state.path().join("ingest.json"),
    };
    let mut child = ing.spawn();

    let a = cluster.sbatch(&[
        "-p",
        "static",
        "-c",
        "1",
        "--mem=100",
        "-t",
        "5",
        "-A",
        "physics",
        "-J",
        "sim",
        "--comment",
        "nightly priority=3 deadline=+2h budget=1.5 type=etl",
        "--wrap",
        "sleep 1",
    ]);
    let held = cluster.sbatch(&["-p", "static", "-H", "-c", "2", "--wrap", "sleep 1"]);
    let c = cluster.sbatch(&["-p", "static", "-c", "1", "--wrap", "sleep 6"]);
    // Not ingested: another partition.
    cluster.sbatch(&["-p", "cloud", "-H", "--wrap", "sleep 1"]);
    wait_until(
        "job A's completion on the topic",
        Duration::from_secs(40),
        || split(&read_jobs(&cfg)).1.contains_key(&a.to_string()),
    );

    // kill -9, more jobs while it is away, restart.
    child.kill().unwrap();
    child.wait().unwrap();
    let d = cluster.sbatch(&["-p", "static", "-c", "2", "--wrap", "sleep 1"]);
    cluster.run("scancel", &[&held.to_string()]);
    let mut child = ing.spawn();
    let want = [a, held, c, d].map(|j| j.to_string());
    wait_until("all four completions", Duration::from_secs(60), || {
        let (_, done) = split(&read_jobs(&cfg));
        want.iter().all(|j| done.contains_key(j))
    });
    // Graceful restart: nothing new.
    sigterm(&mut child);
    let mut child = ing.spawn();
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&mut child);

    let (subs, dones) = split(&read_jobs(&cfg));
    assert_eq!(
        subs.keys().collect::<Vec<_>>(),
        dones.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        subs.len(),
        4,
        "only the static partition's four jobs: {subs:?}"
    );
    for j in &want {
        assert_eq!(
            subs[j].len(),
            1,
            "job {j} submitted {} times",
            subs[j].len()
        );
        assert_eq!(
            dones[j].len(),
            1,
            "job {j} completed {} times",
            dones[j].len()
        );
    }
    // Job A field by field against what Slurm says.
    let sa = &subs[&a.to_string()][0];
    let submit = cluster.field("job", &a.to_string(), "SubmitTime");
    let submit_ms = chrono::NaiveDateTime::parse_from_str(&submit, "%Y-%m-%dT%H:%M:%S")
        .unwrap()
        .and_local_timezone(chrono::Local)
        .unwrap()
        .timestamp_millis();
    assert_eq!(sa.submitted_at, submit_ms);
    assert_eq!(sa.compute_environment, "slurm-static");
    assert_eq!((sa.project.as_str(), sa.user.as_str()), ("physics", "root"));
    assert_eq!((sa.job_type.as_str(), sa.priority), ("etl", 3));
    assert_eq!((sa.vcpus, sa.memory_mib, sa.gpus), (1.0, 100, 0));
    assert_eq!(sa.estimated_runtime_s, Some(300));
    assert_eq!(sa.deadline, Some(submit_ms + 7_200_000));
    assert_eq!(sa.budget_usd, Some(1.5));
    let ca = &dones[&a.to_string()][0];
    assert_eq!(ca.status, JobStatus::Succeeded);
    assert_eq!(ca.compute_environment, "slurm-static");
    let secs = (ca.finished_at - ca.started_at) / 1000;
    assert!((1..=3).contains(&secs), "ran {secs} s");
    assert_eq!(ca.vcpu_seconds, secs as f64);
    assert!(ca.started_at >= sa.submitted_at);
    let ch = &dones[&held.to_string()][0];
    assert_eq!(ch.status, JobStatus::Cancelled);
    assert_eq!((ch.vcpu_seconds, ch.started_at), (0.0, ch.finished_at));
    assert_eq!(subs[&d.to_string()][0].vcpus, 2.0);
}

/// Publishes, then "crashes" before the ingester can save its state.
struct CrashAfterPublish(KafkaSink);

impl Sink for CrashAfterPublish {
    fn publish(&mut self, ev: &[(String, Event)], seq: u64) -> Result<(), SlurmError> {
        self.0.publish(ev, seq)?;
        Err(SlurmError::permanent("simulated crash after publishing"))
    }
    fn mark(&mut self) -> Result<serde_json::Value, SlurmError> {
        self.0.mark()
    }
    fn published_since(
        &mut self,
        m: &serde_json::Value,
    ) -> Result<std::collections::BTreeSet<String>, SlurmError> {
        self.0.published_since(m)
    }
}

#[test]
fn crash_between_publish_and_save_publishes_nothing_twice() {
    let cluster = Cluster::start(ClusterSpec {
        port_offset: 60,
        cloud_nodes: 1,
        ..Default::default()
    });
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "slurm-crash", state.path());
    create_topics(&cfg);
    let jobs: Vec<u64> = (0..3)
        .map(|_| cluster.sbatch(&["-p", "static", "-c", "1", "--wrap", "true"]))
        .collect();
    wait_until("three completions spooled", Duration::from_secs(30), || {
        std::fs::read_to_string(cluster.spool())
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
    });
    let icfg = IngestConfig {
        naming: Naming::default(),
        spool: cluster.spool(),
        state_file: state.path().join("ingest.json"),
        poll_interval: Duration::from_millis(300),
        commands: SlurmCommands {
            slurm_conf: Some(cluster.conf()),
            ..Default::default()
        },
        remember: Duration::from_secs(3600),
        time_scale: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut crashing = Ingester::open(
        icfg.clone(),
        CrashAfterPublish(KafkaSink::new(&cfg).unwrap()),
    )
    .unwrap();
    let e = rt.block_on(crashing.tick()).unwrap_err();
    assert!(e.message.contains("simulated"), "{e}");
    drop(crashing);
    assert_eq!(read_jobs(&cfg).len(), 6, "the batch reached the broker");
    // A job finishing while the ingester is down, then a restart.
    let late = cluster.sbatch(&["-p", "static", "-c", "1", "--wrap", "true"]);
    wait_until("fourth completion spooled", Duration::from_secs(30), || {
        std::fs::read_to_string(cluster.spool())
            .unwrap_or_default()
            .lines()
            .count()
            >= 4
    });
    let mut ing = Ingester::open(icfg, KafkaSink::new(&cfg).unwrap()).unwrap();
    let n = rt.block_on(ing.tick()).unwrap();
    assert_eq!(n, 2, "only the late job's two events are new");
    assert_eq!(ing.summary.recovered_batches, 1);
    let (subs, dones) = split(&read_jobs(&cfg));
    for j in jobs.iter().chain([&late]) {
        assert_eq!(subs[&j.to_string()].len(), 1);
        assert_eq!(dones[&j.to_string()].len(), 1);
    }
}

/// The hook mode appends what Slurm's jobcomp environment says.
#[test]
fn jobcomp_hook_appends_a_readable_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    for id in ["41", "42"] {
        let st = Proc::new(prescale_bin())
            .args(["ingest", "slurm", "--jobcomp", "--spool"])
            .arg(&spool)
            .envs([
                ("JOBID", id),
                ("JOBSTATE", "FAILED"),
                ("PARTITION", "cloud"),
                ("PROCS", "4"),
                ("SUBMIT", "100"),
                ("START", "110"),
                ("END", "130"),
                ("ACCOUNT", "acct"),
                ("USERNAME", "ana"),
                ("JOBNAME", "x"),
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let text = std::fs::read_to_string(&spool).unwrap();
    let recs: Vec<_> = text
        .lines()
        .map(|l| prescale::io::slurm::jobs::JobCompRecord::parse(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    let c = recs[1].completion(&Naming::default()).unwrap();
    assert_eq!(
        (c.job_id.as_str(), c.status, c.vcpu_seconds),
        ("42", JobStatus::Failed, 80.0)
    );
    // A record missing a required variable is refused, not spooled.
    let st = Proc::new(prescale_bin())
        .args(["ingest", "slurm", "--jobcomp", "--spool"])
        .arg(&spool)
        .env("JOBID", "43")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    assert_eq!(std::fs::read_to_string(&spool).unwrap().lines().count(), 2);
}
