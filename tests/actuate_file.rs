//! The actuator runtime against the real broker, through `prescale actuate
//! file`: duplicates and older commands are skipped, commands nobody can
//! apply are dead-lettered with the reason, a restart from scratch applies
//! nothing again, and a hand edit is put back by the reconcile loop.

mod kafka_support;

use kafka_support::*;
use prescale::events::*;
use prescale::io::actuate::file::StateFile;
use prescale::io::kafka::codec::encode_output;
use prescale::io::kafka::publish::Publisher;
use std::path::Path;
use std::time::Duration;

fn scaling(id: &str, env: &str, at: i64, desired: i64, max: i64) -> Command {
    Command::Scaling(ScalingCommand {
        command_id: id.into(),
        issued_at: at,
        compute_environment: env.into(),
        min_vcpus: 0,
        desired_vcpus: desired,
        max_vcpus: max,
        instance_mix: vec![InstanceAllocation {
            instance_type: "m5.large".into(),
            market: Market::Spot,
            region: "us-east-1".into(),
            count: 2,
        }],
        constraints: Default::default(),
        forecast: vec![],
        reason: "test".into(),
    })
}

fn preemption(id: &str, at: i64) -> Command {
    Command::Preemption(PreemptionCommand {
        command_id: id.into(),
        issued_at: at,
        job_id: "job-1".into(),
        compute_environment: "env-a".into(),
        action: PreemptionAction::Queue,
        reason: "budget".into(),
    })
}

fn publish(cfg: &prescale::io::kafka::KafkaConfig, cmds: &[Command], garbage: bool) {
    let p = Publisher::new(cfg).unwrap();
    for c in cmds {
        let topic = match c {
            Command::Scaling(_) => cfg.topics.scaling_command(),
            Command::Preemption(_) => cfg.topics.preemption_command(),
        };
        p.send(
            &topic,
            c.key().as_bytes(),
            &encode_output(cfg, c).unwrap(),
            &[],
            None,
        )
        .unwrap();
    }
    if garbage {
        let t = cfg.topics.scaling_command();
        p.send(&t, b"env-a", b"\x02\xffnot a command", &[], None)
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn actuate(
    cfg: &prescale::io::kafka::KafkaConfig,
    dir: &Path,
    group: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut cfg = cfg.clone();
    cfg.group_id = group.to_string();
    let mut cmd = prescale();
    cmd.args(["actuate", "file"])
        .args(cli_args(&cfg))
        .arg("--state")
        .arg(dir.join("state.json"))
        .arg("--ledger")
        .arg(dir.join("ledger"))
        .args(["--environments", "env-a,env-b", "--exit-when-idle-s", "2"])
        .args(extra);
    let out = run_ok(&mut cmd);
    serde_json::from_str(out.lines().last().expect("a summary line")).expect("summary JSON")
}

fn state(dir: &Path) -> StateFile {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

#[test]
fn commands_are_applied_once_in_order_and_bad_ones_dead_lettered() {
    let broker = Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(broker, "actfile", dir.path());
    create_topics(&cfg);
    // Keys are environments, so each environment's commands stay in order.
    publish(
        &cfg,
        &[
            scaling("a1", "env-a", 1_000, 4, 64),
            scaling("b1", "env-b", 1_000, 8, 64),
            scaling("a2", "env-a", 2_000, 16, 64),
            scaling("a1", "env-a", 1_000, 4, 64),   // duplicate
            scaling("a0", "env-a", 500, 2, 64),     // older than a2
            scaling("x1", "env-x", 2_000, 2, 64),   // not mapped
            scaling("bad", "env-b", 3_000, 99, 64), // desired above max
            preemption("p1", 2_000),
            preemption("p1", 2_000), // duplicate
        ],
        true,
    );
    let s = actuate(&cfg, dir.path(), &format!("{}-1", cfg.group_id), &[]);
    assert_eq!(s["applied_scaling"], 3, "{s}");
    assert_eq!(s["applied_preemption"], 1, "{s}");
    assert_eq!(s["duplicates"], 1, "{s}");
    assert_eq!(s["stale"], 2, "{s}");
    assert_eq!(s["dead_lettered"], 3, "{s}");
    let st = state(dir.path());
    assert_eq!(st.environments["env-a"].command_id, "a2");
    assert_eq!(st.environments["env-a"].desired_vcpus, 16);
    assert_eq!(st.environments["env-b"].command_id, "b1");
    assert!(!st.environments.contains_key("env-x"));
    assert_eq!(st.jobs["job-1"].action, PreemptionAction::Queue);

    // A new group re-reads everything: the ledger applies nothing again.
    let again = actuate(&cfg, dir.path(), &format!("{}-2", cfg.group_id), &[]);
    assert_eq!(again["applied_scaling"], 0, "{again}");
    assert_eq!(again["applied_preemption"], 0, "{again}");
    assert_eq!(state(dir.path()), st);

    // A hand edit is put back by the reconcile loop.
    let mut edited = st.clone();
    edited.environments.get_mut("env-a").unwrap().desired_vcpus = 1;
    std::fs::write(
        dir.path().join("state.json"),
        serde_json::to_vec(&edited).unwrap(),
    )
    .unwrap();
    let fixed = actuate(
        &cfg,
        dir.path(),
        &format!("{}-1", cfg.group_id),
        &["--reconcile-interval-s", "1"],
    );
    assert!(fixed["drift_reapplied"].as_u64().unwrap() >= 1, "{fixed}");
    assert_eq!(state(dir.path()), st);
}

#[test]
fn dry_run_changes_nothing() {
    let broker = Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(broker, "actdry", dir.path());
    create_topics(&cfg);
    publish(&cfg, &[scaling("a1", "env-a", 1_000, 4, 64)], false);
    let s = actuate(&cfg, dir.path(), &cfg.group_id, &["--dry-run"]);
    assert_eq!(s["applied_scaling"], 1, "{s}");
    assert!(!dir.path().join("state.json").exists());
    assert!(!dir.path().join("ledger").exists());
}

/// A restart whose committed offset lies inside a record batch (commands
/// published together are one batch): tansu answers a fetch from there
/// with the *next* batch, or nothing when it was the last, so an actuator
/// resuming exactly at the committed offset stalled for good (#22, the
/// "moto stall" of the SIGKILL test). Read from before it, the actuator
/// applies exactly the commands from the committed offset on.
#[test]
fn a_restart_inside_a_record_batch_applies_the_rest_of_the_batch() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let broker = Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(broker, "actbatch", dir.path());
    create_topics(&cfg);
    let cmds: Vec<Command> = (0..40)
        .map(|i| scaling(&format!("a{i:02}"), "env-a", 1_000 * (i + 1), 4 + i, 64))
        .collect();
    publish(&cfg, &cmds, false);
    // The group's committed offset: 13 on env-a's partition, as a run
    // killed after its 13th command leaves it.
    let group = format!("{}-mid", cfg.group_id);
    let mut gcfg = cfg.clone();
    gcfg.group_id = group.clone();
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(&gcfg, Some(&group))
        .create()
        .unwrap();
    let topic = cfg.topics.scaling_command();
    let marks: Vec<(i64, i64)> = (0..3)
        .map(|p| {
            consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap()
        })
        .collect();
    // The only partition with messages (tansu's ListOffsets answers one past the last
    // batch's base offset, so a partition holding one batch of 40 reads (0, 1)).
    let part = marks
        .iter()
        .position(|&(lo, hi)| hi > lo)
        .unwrap_or_else(|| panic!("env-a's partition holds the commands: {marks:?}"))
        as i32;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, part, rdkafka::Offset::Offset(13))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();

    let mut acfg = cfg.clone();
    acfg.group_id = group;
    let mut child = prescale()
        .args(["actuate", "file"])
        .args(cli_args(&acfg))
        .arg("--state")
        .arg(dir.path().join("state.json"))
        .arg("--ledger")
        .arg(dir.path().join("ledger"))
        .args(["--environments", "env-a", "--exit-when-idle-s", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the restarted actuator did not get past offset 13 within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // Offsets 13..39: applied; below 13: passed over, not even judged.
    assert_eq!(s["applied_scaling"], 27, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(s["stale"], 0, "{s}");
    let st = state(dir.path());
    assert_eq!(st.environments["env-a"].command_id, "a39");
}
