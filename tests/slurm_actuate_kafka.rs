//! `prescale actuate slurm` through Kafka against a REAL single-host Slurm
//! cluster (scripts/slurm.sh) and the real broker (scripts/kafka.sh): the
//! actuator is SIGKILLed mid-stream and restarted with the same ledger and
//! consumer group; every command is applied once, in order, never an older
//! one after a newer one, and the cluster's nodes end where the last command
//! put them.

#[path = "kafka_support/mod.rs"]
mod kafka_support;
mod slurm_support;

use prescale::events::{Command, ScalingCommand};
use slurm_support::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const ENV: &str = "slurm-kill";

fn scaling(i: i64, desired: i64) -> ScalingCommand {
    ScalingCommand {
        command_id: format!("sk-{i:03}"),
        issued_at: 60_000 * (i + 1),
        compute_environment: ENV.into(),
        min_vcpus: 0,
        desired_vcpus: desired,
        max_vcpus: 8,
        instance_mix: vec![],
        constraints: Default::default(),
        forecast: vec![],
        reason: "test".into(),
    }
}

fn publish(cfg: &prescale::io::kafka::KafkaConfig, cmds: &[ScalingCommand]) {
    let p = prescale::io::kafka::publish::Publisher::new(cfg).unwrap();
    for c in cmds {
        let c = Command::Scaling(c.clone());
        p.send(
            &cfg.topics.scaling_command(),
            c.key().as_bytes(),
            &prescale::io::kafka::codec::encode_output(cfg, &c).unwrap(),
            &[],
            None,
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

/// `prescale actuate slurm` with its own group and ledger, JSON logs to `log`.
fn spawn_actuator(
    c: &Cluster,
    cfg: &prescale::io::kafka::KafkaConfig,
    dir: &Path,
    log: &Path,
) -> Child {
    let mut acfg = cfg.clone();
    acfg.group_id = format!("{}-slurm", cfg.group_id);
    kafka_support::prescale()
        .args(["actuate", "slurm"])
        .args(kafka_support::cli_args(&acfg))
        .args(["--environment", &format!("{ENV}=cloud")])
        .arg("--slurm-conf")
        .arg(c.conf())
        .arg("--ledger")
        .arg(dir.join("slurm.ledger"))
        .args(["--reconcile-interval-s", "1"])
        .env("PRESCALE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start prescale actuate slurm")
}

/// An actuator process, SIGKILLed when dropped: a failed assertion must not
/// leave it running against the next test's cluster.
struct Actuator(Child);

impl Drop for Actuator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// JSON log lines of an actuator run, as values.
fn log_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The command ids the actuator started applying, in order (its "scaling"
/// line precedes every plan it executes).
fn applied_ids(log: &Path) -> Vec<String> {
    log_lines(log)
        .iter()
        .filter(|v| v["fields"]["message"] == "scaling")
        .filter_map(|v| v["fields"]["command_id"].as_str().map(str::to_string))
        .collect()
}

/// Ids of the commands a run skipped with `message`.
fn skipped(log: &Path, message: &str) -> Vec<String> {
    log_lines(log)
        .iter()
        .filter(|v| v["fields"]["message"] == message)
        .filter_map(|v| v["fields"]["command_id"].as_str().map(str::to_string))
        .collect()
}

/// Every `scontrol` call the actuator logged (`running \`scontrol …\``).
fn scontrol_calls(log: &Path) -> Vec<String> {
    log_lines(log)
        .iter()
        .filter_map(|v| v["fields"]["message"].as_str().map(str::to_string))
        .filter(|m| m.starts_with("running `scontrol"))
        .collect()
}

/// Cloud nodes powered (up and idle, or booting) and fully off.
fn cloud_power(c: &Cluster, n: u32) -> (Vec<String>, Vec<String>) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 1..=n {
        let node = format!("cloud{i}");
        let s = c.node_state(&node);
        if is_idle_on(&s) {
            on.push(node);
        } else if is_off(&s) && !s.contains("POWERING_DOWN") && !s.contains("POWER_DOWN") {
            off.push(node);
        }
    }
    (on, off)
}

#[test]
fn sigkilled_slurm_actuator_applies_every_command_once_in_order_and_the_nodes_follow_the_last() {
    let c = Cluster::start(ClusterSpec {
        port_offset: 80,
        cloud_nodes: 4,
        ..Default::default()
    });
    let broker = kafka_support::Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_support::config(broker, "slurm-kill", dir.path());
    kafka_support::create_topics(&cfg);

    // 40 commands moving the partition between 0 and 8 vCPUs (4 nodes of 2),
    // ending at 4 vCPUs = 2 nodes; then the last one again (a duplicate) and
    // a command older than it under a new id (stale): neither may be applied.
    let pattern = [2, 6, 4, 8, 0, 4, 2, 8];
    let mut cmds: Vec<ScalingCommand> = (0..40)
        .map(|i| scaling(i, pattern[i as usize % pattern.len()]))
        .collect();
    cmds.last_mut().unwrap().desired_vcpus = 4;
    let fresh: Vec<String> = cmds.iter().map(|c| c.command_id.clone()).collect();
    let issued: BTreeMap<String, i64> = cmds
        .iter()
        .map(|c| (c.command_id.clone(), c.issued_at))
        .collect();
    let mut stale = scaling(5, 8);
    stale.command_id = "sk-stale".into();
    let mut all = cmds.clone();
    all.push(cmds.last().unwrap().clone());
    all.push(stale);
    publish(&cfg, &all);

    // First run: SIGKILLed once it has started on 8 commands.
    let (log1, log2) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut first = Actuator(spawn_actuator(&c, &cfg, dir.path(), &log1));
    let first = &mut first.0;
    let t = Instant::now();
    while applied_ids(&log1).len() < 8 {
        if let Ok(Some(st)) = first.try_wait() {
            panic!(
                "first run exited ({st}):\n{}",
                std::fs::read_to_string(&log1).unwrap_or_default()
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "first run started only {} commands",
            applied_ids(&log1).len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let a = applied_ids(&log1);
    assert!(
        a.len() < fresh.len(),
        "killed mid-stream ({} of {} started)",
        a.len(),
        fresh.len()
    );

    // Restart, same group and ledger: it finishes the stream; the reconcile
    // loop (1 s) holds the partition to the last command while nodes that
    // were powering down become usable again.
    let mut guard = Actuator(spawn_actuator(&c, &cfg, dir.path(), &log2));
    let second = &mut guard.0;
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = second.try_wait() {
            panic!(
                "restarted actuator exited ({st}):\n{}",
                std::fs::read_to_string(&log2).unwrap_or_default()
            );
        }
        let done = applied_ids(&log2).last() == fresh.last()
            && skipped(&log2, "command older than the last applied one skipped")
                .contains(&"sk-stale".to_string());
        let (on, off) = cloud_power(&c, 4);
        if done && on.len() == 2 && off.len() == 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not at the last command after 120 s: powered {on:?}, off {off:?}\n{}",
            c.run("sinfo", &["-N", "-l"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "restarted actuator failed");
    let mut stdout = String::new();
    std::io::Read::read_to_string(second.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let s: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary")).unwrap();

    // Exactly once, in order: the first run started a prefix of the stream,
    // the restart the rest, overlapping at most in the command that was in
    // flight at the kill (applied, not yet in the ledger: re-planned against
    // the live nodes).
    let b = applied_ids(&log2);
    assert_eq!(a[..], fresh[..a.len()], "first run: out of order");
    let resumed_at = fresh.len() - b.len();
    assert!(
        resumed_at == a.len() || resumed_at + 1 == a.len(),
        "restart resumed at {resumed_at}, first run started {}",
        a.len()
    );
    assert_eq!(b[..], fresh[resumed_at..], "restart: out of order");
    let seq: Vec<i64> = a.iter().chain(&b).map(|id| issued[id]).collect();
    assert!(
        seq.windows(2).all(|w| w[0] <= w[1]),
        "an older command after a newer one: {seq:?}"
    );
    // The re-sent last command and the older one under a new id were skipped
    // (the counters also hold messages re-read because their offset commit
    // was lost with the kill; the ledger judges those the same way).
    let dup = skipped(&log2, "duplicate command skipped");
    assert!(dup.contains(fresh.last().unwrap()), "{dup:?}");
    assert!(s["duplicates"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["stale"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert_eq!(s["applied_scaling"], b.len() as u64, "{s}");

    // Only the managed partition's nodes were ever touched.
    for call in scontrol_calls(&log1).iter().chain(&scontrol_calls(&log2)) {
        assert!(call.contains("NodeName=cloud"), "{call}");
    }
    assert_eq!(c.node_state("static1").split('+').next(), Some("IDLE"));
    assert!(
        c.power_log().iter().all(|l| !l.contains("static1")),
        "{:?}",
        c.power_log()
    );
    eprintln!(
        "first run started {} commands, restart {} (resumed at {resumed_at}); summary {s}; {} power events",
        a.len(),
        b.len(),
        c.power_log().len()
    );
}
