//! The Kafka service against a real broker (tansu via scripts/kafka.sh):
//! one brain with the file replay, dead letters, scale-out, crash recovery
//! and broker restarts.

mod kafka_support;

use kafka_support::*;
use prescale::io::kafka::codec::headers;
use prescale::io::kafka::produce::Pace;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// `produce` then `run` gives exactly the commands of the file replay:
/// same ids, same content, nothing more.
#[test]
fn kafka_replay_equals_file_replay() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "replay", state.path());
    create_topics(&cfg);
    let evs = events(40, 25);
    let want = by_id(&factory().replay(&evs));
    assert!(
        want.len() > 50,
        "input must make decisions ({})",
        want.len()
    );

    produce(&cfg, &evs, 0, Pace::AsFastAsPossible);
    let svc = spawn_service(&cfg, "solo", Duration::from_millis(1000));
    let report = svc.handle.join().unwrap();
    assert!(report.finished);
    assert_eq!(report.events, evs.len() as u64);
    assert_eq!(report.dead_letters, 0);

    let published = read_commands(&cfg);
    assert_eq!(
        published.len(),
        want.len(),
        "one run publishes each command once"
    );
    let got = distinct(&published);
    assert_same(&got, &want);
}

/// A malformed message goes to `<topic>.dlq` with headers naming the error
/// and its origin; the stream goes on and the commands are unchanged.
#[test]
fn malformed_message_goes_to_dlq_and_run_continues() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "dlq", state.path());
    create_topics(&cfg);
    let evs = events(12, 20);
    let want = by_id(&factory().replay(&evs));

    let half = evs.len() / 2;
    produce(&cfg, &evs[..half], 0, Pace::AsFastAsPossible);
    // Garbage on the job-submission topic, keyed like a real job.
    let topic = cfg.topics.job_submission();
    let p = prescale::io::kafka::publish::Publisher::new(&cfg).unwrap();
    p.send(&topic, b"ce-a", b"\x02\xff\xffnot avro at all", &[], None)
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    produce(&cfg, &evs[half..], half as u64, Pace::AsFastAsPossible);

    let svc = spawn_service(&cfg, "dlq", Duration::from_millis(1000));
    let report = svc.handle.join().unwrap();
    assert_eq!(report.dead_letters, 1);
    assert_eq!(report.events, evs.len() as u64);
    assert_same(&distinct(&read_commands(&cfg)), &want);

    // The dead letter: same bytes, headers naming error and origin.
    let (payload, h) = first_dead_letter(&cfg, &topic, 1);
    assert_eq!(payload, b"\x02\xff\xffnot avro at all");
    // The record and the field: a 1-byte job id of 0xff is not UTF-8.
    assert!(
        h[headers::DLQ_ERROR].contains("JobSubmitted: field `job_id`: not UTF-8"),
        "{h:?}"
    );
    assert_eq!(h[headers::DLQ_TOPIC], topic);
    assert!(h[headers::DLQ_PARTITION].parse::<i32>().is_ok(), "{h:?}");
    assert!(h[headers::DLQ_OFFSET].parse::<i64>().is_ok(), "{h:?}");
}

/// Two instances in one group split the environments and together publish
/// the same set of commands as one instance.
#[test]
fn two_instances_publish_the_same_set_as_one() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "scale", state.path());
    create_topics(&cfg);
    let evs = events(30, 24);
    let want = by_id(&factory().replay(&evs));

    let a = spawn_service(&cfg, "a", Duration::from_millis(2500));
    let b = spawn_service(&cfg, "b", Duration::from_millis(2500));
    wait_for_split(&a, &b);
    produce(&cfg, &evs, 0, Pace::AsFastAsPossible);
    let ra = a.handle.join().unwrap();
    let rb = b.handle.join().unwrap();
    let published = read_commands(&cfg);
    let instances: std::collections::BTreeSet<&str> =
        published.iter().map(|p| p.instance.as_str()).collect();
    assert!(
        instances.contains("a") && instances.contains("b"),
        "both instances decided: {instances:?} {ra:?} {rb:?}"
    );
    assert_same(&distinct(&published), &want);
}

/// The CLI path with real processes: `prescale produce` of the events the
/// backtest feeds its decision core, then `prescale run`, publishes exactly
/// the commands `prescale backtest --commands` decides (same ids, same
/// content, each once), as `prescale tail` prints them.
#[test]
fn cli_produce_then_run_equals_backtest() {
    let broker = Broker::shared();
    let bt = backtest_replay();
    assert!(bt.commands.len() > 50, "input must make decisions");
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "cli", state.path());
    let args = cli_args(&cfg);
    run_ok(
        prescale()
            .arg("produce")
            .arg(&bt.events)
            .args(&args)
            .arg("--create-topics"),
    );
    let out = run_ok(prescale().arg("run").args(&args).args([
        "--instance",
        "solo",
        "--exit-when-idle-ms",
        "1000",
    ]));
    let report = run_report(&out);
    assert_eq!(report["finished"], true, "{report}");
    assert_eq!(report["events"], bt.n_events as u64, "{report}");
    let lines = tail_lines(&cfg);
    assert_eq!(
        lines.len(),
        bt.commands.len(),
        "one run publishes each command once"
    );
    assert_same_lines(&json_lines_by_id(&lines), &bt.commands);
}

/// A `prescale run` process killed with SIGKILL mid-stream and restarted:
/// the complete set of the backtest's commands, duplicates only under the
/// same ids (with the same content), every event applied exactly once.
#[test]
fn sigkilled_run_restarts_and_completes_the_commands() {
    let broker = Broker::shared();
    let bt = backtest_replay();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "crash", state.path());
    let args = cli_args(&cfg);
    create_topics(&cfg);
    // Static membership: the restarted process takes the killed member's
    // place at once instead of waiting for its session to expire.
    let run_cmd = || {
        let mut c = prescale();
        c.arg("run").args(&args).args([
            "--instance",
            "crashy",
            "--exit-when-idle-ms",
            "1500",
            "-X",
            "group.instance.id=crashy",
        ]);
        // The test watches the log for the group join.
        c.env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut first = run_cmd().spawn().unwrap();
    // Wait until it owns its partitions (its log says so), then feed the
    // input live (~3 s) while it runs.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = first.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // Without terminal colour codes. A fresh group may first be
            // given fewer partitions (topic metadata still arriving) and
            // rebalance to all of them: wait for the whole set.
            let mut plain = String::new();
            let mut esc = false;
            for ch in line.chars() {
                match (esc, ch) {
                    (false, '\u{1b}') => esc = true,
                    (true, 'm') => esc = false,
                    (false, c) => plain.push(c),
                    _ => {}
                }
            }
            if plain.contains("assigned partitions=9") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the first process joined its group");
    let mut producer = prescale()
        .arg("produce")
        .arg(&bt.events)
        .args(&args)
        .args(["--rate", &(bt.n_events as f64 / 3.0).to_string()])
        // Record batches of hundreds of messages, so the restart resumes
        // inside one: tansu then answers the fetch from the next batch,
        // which the service must notice and read again from before.
        .args(["-X", "linger.ms=300"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once a snapshot shows it mid-stream.
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let applied: i64 = std::fs::read_dir(state.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| is_snapshot(&e.path()))
            .filter_map(|e| prescale::checkpoint::read(&e.path()).ok().flatten())
            .filter(|s| s.assignment.len() == 9)
            .map(|s| s.offsets.values().flat_map(|m| m.values()).sum::<i64>())
            .max()
            .unwrap_or(0);
        if applied > 0 {
            assert!(
                applied < bt.n_events as i64 * 8 / 10,
                "first snapshot came too late to kill mid-stream ({applied})"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no snapshot from the first process"
        );
    }
    first.kill().unwrap(); // SIGKILL on Unix
    let status = first.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by SIGKILL"
    );
    let before = json_lines_by_id(&tail_lines(&cfg)).len();
    assert!(
        before < bt.commands.len(),
        "killed mid-stream ({before} of {})",
        bt.commands.len()
    );
    assert!(
        producer.wait().unwrap().success(),
        "prescale produce failed"
    );

    let second = run_cmd().spawn().unwrap().wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let report = run_report(&String::from_utf8_lossy(&second.stdout));
    assert_eq!(
        report["restored_from_snapshot"],
        true,
        "{report}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(report["finished"], true, "{report}");

    // Complete, and every repeated id repeats its content exactly.
    let lines = tail_lines(&cfg);
    let got = json_lines_by_id(&lines);
    assert_same_lines(&got, &bt.commands);
    // Every event applied once: the final snapshot's engine counter and
    // offsets cover exactly the input.
    let snaps: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .filter(|e| is_snapshot(&e.path()))
        .filter_map(|e| prescale::checkpoint::read(&e.path()).ok().flatten())
        .collect();
    let whole: Vec<_> = snaps.iter().filter(|s| s.assignment.len() == 9).collect();
    assert_eq!(whole.len(), 1, "one snapshot of the whole assignment");
    let snap = whole[0];
    assert_eq!(
        snap.engine["counters"]["events"],
        bt.n_events as u64,
        "{report}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let offsets: i64 = snap.offsets.values().flat_map(|m| m.values()).sum();
    assert_eq!(
        offsets, bt.n_events as i64,
        "offsets cover exactly the input"
    );
}

/// A file-backed broker stopped for 10 s and restarted: nothing lost.
#[test]
fn broker_restart_loses_nothing() {
    let broker = Broker::file_backed();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config(&broker, "restart", state.path());
    cfg.properties
        .insert("reconnect.backoff.max.ms".into(), "500".into());
    create_topics(&cfg);
    let evs = events(20, 20);
    let want = by_id(&factory().replay(&evs));

    let half = evs.len() / 2;
    produce(&cfg, &evs[..half], 0, Pace::AsFastAsPossible);
    // Idle threshold longer than the outage: the instance must ride it out.
    let svc = spawn_service(&cfg, "r", Duration::from_secs(25));
    let started = Instant::now();
    while svc.stats.events.load(Ordering::Relaxed) < half as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "first half not consumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.stop();
    std::thread::sleep(Duration::from_secs(10));
    broker.start();
    produce(&cfg, &evs[half..], half as u64, Pace::AsFastAsPossible);
    let report = svc.handle.join().unwrap();
    assert_eq!(report.events, evs.len() as u64);
    let got = distinct(&read_commands(&cfg));
    assert_eq!(got.len(), want.len());
    assert_same(&got, &want);
}

/// Rebalances hand state over: an instance that gives up its partitions
/// checkpoints their state first, and when it is given the same set again
/// it restores that snapshot instead of replaying; the commands stay the
/// complete set, duplicates only under the same ids.
#[test]
fn rebalance_checkpoints_revoked_state_and_restores_it() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config(broker, "handover", state.path());
    // No periodic snapshots: only revocations and stops write them.
    cfg.checkpoint_interval_ms = 600_000;
    create_topics(&cfg);
    let evs = events(24, 20);
    let want = by_id(&factory().replay(&evs));
    let half = evs.len() / 2;
    produce(&cfg, &evs[..half], 0, Pace::AsFastAsPossible);

    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !ok() {
            assert!(started.elapsed() < Duration::from_secs(40), "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A alone applies the first half; its idle limit outlasts the test's
    // orchestration, so it only finishes at the end.
    let a = spawn_service(&cfg, "a", Duration::from_secs(8));
    wait("a applied the first half", &|| {
        a.stats.events.load(Ordering::Relaxed) >= half as u64
    });
    // B joins: A's whole-set state is checkpointed as it is revoked.
    let b = spawn_service(&cfg, "b", Duration::from_secs(60));
    wait("the group split", &|| {
        let (x, y) = (
            a.stats.assigned.load(Ordering::Relaxed),
            b.stats.assigned.load(Ordering::Relaxed),
        );
        x > 0 && y > 0 && x + y == 9
    });
    let whole: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .filter(|e| is_snapshot(&e.path()))
        .filter_map(|e| prescale::checkpoint::read(&e.path()).ok().flatten())
        .filter(|s| s.assignment.len() == 9)
        .collect();
    let files: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        whole.len(),
        1,
        "the revoked assignment was checkpointed ({files:?}, a: {:?}, b: {:?})",
        a.stats,
        b.stats
    );
    // B leaves: A is given the whole set again and restores its snapshot.
    b.control
        .blocking_send(prescale::io::kafka::service::Control::Stop)
        .unwrap();
    let rb = b.handle.join().unwrap();
    produce(&cfg, &evs[half..], half as u64, Pace::AsFastAsPossible);
    let ra = a.handle.join().unwrap();
    assert!(ra.finished, "{ra:?}");
    assert!(ra.restored_from_snapshot, "{ra:?} {rb:?}");
    assert!(ra.rebalances >= 3, "{ra:?}");
    assert_same(&distinct(&read_commands(&cfg)), &want);
}

/// A snapshot file proper: not the `.json.tmp` a writer renames into place
/// (reading that one races the writer: it may be complete and never renamed
/// when the process is killed).
fn is_snapshot(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e == "json")
}

/// `prescale bench kafka` runs end to end against the broker and writes
/// the figures it prints: both rates, CPU per message (in all and for the
/// loop's thread), and each latency hop split into warm-up and steady
/// state. No timing is asserted, only that everything was measured.
/// Needs the `bench` feature (`prescale bench` is only a pointer to it
/// without).
#[cfg(feature = "bench")]
#[test]
fn bench_kafka_measures_every_figure() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "bench", state.path());
    let json = state.path().join("bench.json");
    let out = run_ok(
        prescale()
            .args(["bench", "kafka"])
            .args(cli_args(&cfg))
            .args([
                "--messages",
                "3000",
                "--repeat",
                "1",
                "--rate",
                "2000",
                "--warmup-secs",
                "1",
                "--latency-secs",
                "2",
                "--json",
                json.to_str().unwrap(),
            ]),
    );
    assert!(out.contains("prescale full path"), "{out}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in [
        "raw_consume_msgs_per_s",
        "full_path_msgs_per_s",
        "raw_cpu_us_per_msg",
        "full_cpu_us_per_msg",
    ] {
        assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {j}");
    }
    if cfg!(target_os = "linux") {
        let loop_us = &j["full_cpu_us_per_msg_by_thread"]["prescale-loop"];
        assert!(loop_us.as_f64().is_some_and(|v| v > 0.0), "{j}");
    }
    let lat = &j["latency"];
    // 3 s at 2,000 events/s: every event decided, each counted once.
    let decided = &lat["event_to_decision_ms"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    assert_eq!(n(&decided["n"]) + n(&decided["warmup_n"]), 6000, "{lat}");
    assert!(
        n(&decided["n"]) > 0 && decided["p99"].as_f64().is_some(),
        "{lat}"
    );
    let cmd = &lat["event_to_command_ms"];
    assert!(n(&cmd["n"]) + n(&cmd["warmup_n"]) > 0, "no command: {lat}");
}
