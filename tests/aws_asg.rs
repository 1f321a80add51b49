//! `prescale actuate asg` against a REAL moto server (scripts/moto.sh): the actuator's calls go
//! through the AWS SDK and HTTP; what moto then describes is what the tests check.

mod aws_support;

use aws_support::*;
use prescale::events::{InstanceAllocation, Market, ScalingCommand};
use prescale::io::aws::asg::AsgActuator;
use prescale::io::aws::config::Mapping;
use prescale::io::aws::{Actuator, Retry};

fn cmd(
    env: &str,
    id: &str,
    at: i64,
    sizes: (i64, i64, i64),
    mix: &[(&str, Market, i32)],
) -> ScalingCommand {
    ScalingCommand {
        command_id: id.into(),
        issued_at: at,
        compute_environment: env.into(),
        min_vcpus: sizes.0,
        desired_vcpus: sizes.1,
        max_vcpus: sizes.2,
        instance_mix: mix
            .iter()
            .map(|(t, m, n)| InstanceAllocation {
                instance_type: t.to_string(),
                market: *m,
                region: "us-east-1".into(),
                count: *n,
            })
            .collect(),
        constraints: Default::default(),
        forecast: vec![],
        reason: "test".into(),
    }
}

fn mapping(env: &str, group: &str) -> Mapping {
    Mapping::parse(&format!("[asg.{env}]\ngroup = \"{group}\"\n")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_sizes_mix_and_tags_dry_run_changes_nothing_reconcile_reverts_a_hand_change() {
    let m = Moto::shared();
    let g = unique("asg-apply");
    create_group(m, &g).await;
    let mut a = AsgActuator::new(&m.sdk().await, &mapping("ce-x", &g));
    a.check().await.expect("the group exists");
    assert!(a.manages("ce-x") && !a.manages("ce-y"));

    // 6 x m5.large spot (12 vCPUs) + 2 x m5.xlarge on demand (8 vCPUs).
    let mix = [
        ("m5.large", Market::Spot, 6),
        ("m5.xlarge", Market::OnDemand, 2),
    ];
    let c1 = cmd("ce-x", "c1", 1_000, (4, 20, 64), &mix);
    a.apply_scaling(&c1, false).await.unwrap();
    let s = describe_group(m, &g).await;
    assert_eq!((s.min, s.desired, s.max), (4, 20, 64), "{s:?}");
    assert_eq!(
        s.overrides,
        vec![
            ("m5.large".to_string(), "2".to_string()),
            ("m5.xlarge".to_string(), "4".to_string())
        ]
    );
    // OD base = min(8, 4) = 4; above it 4 of 16 units on demand = 25 %.
    assert_eq!((s.on_demand_base, s.on_demand_pct), (Some(4), Some(25)));
    assert_eq!(s.last_command.as_deref(), Some("c1"));

    // --dry-run: the same calls logged, nothing changed.
    let c2 = cmd("ce-x", "c2", 2_000, (0, 2, 8), &[]);
    a.apply_scaling(&c2, true).await.unwrap();
    assert_eq!(describe_group(m, &g).await, s);

    // A hand change is drift; reconcile puts the last command back, then finds none.
    let asg = aws_sdk_autoscaling::Client::new(&m.sdk().await);
    asg.update_auto_scaling_group()
        .auto_scaling_group_name(&g)
        .min_size(0)
        .desired_capacity(1)
        .max_size(3)
        .send()
        .await
        .unwrap();
    assert!(a.reconcile(&c1, false).await.unwrap(), "drift found");
    let back = describe_group(m, &g).await;
    assert_eq!((back.min, back.desired, back.max), (4, 20, 64));
    assert!(!a.reconcile(&c1, false).await.unwrap(), "no drift left");

    // A command without a mix keeps the group's mix and, with max 0, its maximum.
    let c3 = cmd("ce-x", "c3", 3_000, (2, 6, 0), &[]);
    a.apply_scaling(&c3, false).await.unwrap();
    let s3 = describe_group(m, &g).await;
    assert_eq!((s3.min, s3.desired, s3.max), (2, 6, 64));
    assert_eq!(s3.overrides, s.overrides);
    assert_eq!(
        tagged_commands(m, &g).await,
        vec!["c1", "c1", "c3"],
        "reconcile re-tags c1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_group_unknown_environment_and_bad_sizes_are_permanent_errors_naming_them() {
    let m = Moto::shared();
    let missing = unique("asg-missing");
    let mut a = AsgActuator::new(&m.sdk().await, &mapping("ce-m", &missing));
    let e = a.check().await.unwrap_err();
    assert!(
        e.message.contains(&missing) && e.message.contains("ce-m"),
        "{}",
        e.message
    );
    assert_eq!(e.retry, Retry::Permanent);

    let g = unique("asg-errs");
    create_group(m, &g).await;
    let mut a = AsgActuator::new(&m.sdk().await, &mapping("ce-e", &g));
    let e = a
        .apply_scaling(&cmd("ce-other", "u1", 1, (0, 1, 2), &[]), false)
        .await
        .unwrap_err();
    assert_eq!(e.retry, Retry::Permanent);
    assert!(
        e.message.contains("ce-other") && e.message.contains("u1"),
        "{}",
        e.message
    );
    let e = a
        .apply_scaling(&cmd("ce-e", "u2", 1, (0, -1, 2), &[]), false)
        .await
        .unwrap_err();
    assert_eq!(e.retry, Retry::Permanent, "{}", e.message);
    let e = a
        .apply_scaling(
            &cmd(
                "ce-e",
                "u3",
                1,
                (0, 1, 2),
                &[("zz.nothing", Market::Spot, 1)],
            ),
            false,
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("zz.nothing"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_by_the_sdk_and_reported_transient_when_it_persists() {
    let m = Moto::shared();
    let g = unique("asg-throttle");
    create_group(m, &g).await;
    // Two of every three requests answered `Throttling` (the 2nd and 3rd): with 3 attempts
    // per call every call gets through.
    let proxy = ThrottlingProxy::start(&m.endpoint, 2, 3).await;
    let mut a = AsgActuator::new(&m.sdk_at(&proxy.endpoint).await, &mapping("ce-t", &g));
    let c = cmd("ce-t", "t1", 1, (1, 5, 9), &[("m5.large", Market::Spot, 3)]);
    a.apply_scaling(&c, false)
        .await
        .expect("retried through throttling");
    let s = describe_group(m, &g).await;
    assert_eq!((s.min, s.desired, s.max), (1, 5, 9));
    let throttled = proxy.throttled.load(std::sync::atomic::Ordering::Relaxed);
    assert!(throttled >= 4, "throttled {throttled}");

    // Every request throttled: the SDK gives up and the error says retry later.
    let wall = ThrottlingProxy::start(&m.endpoint, 1, 1).await;
    let mut a = AsgActuator::new(&m.sdk_at(&wall.endpoint).await, &mapping("ce-t", &g));
    let e = a
        .apply_scaling(&cmd("ce-t", "t2", 2, (0, 1, 9), &[]), false)
        .await
        .unwrap_err();
    assert_eq!(e.retry, Retry::Transient, "{}", e.message);
    assert!(e.message.contains("Throttling"), "{}", e.message);
}

// ---- Through Kafka: `prescale produce` + `prescale run` + `prescale actuate asg` -------------

#[path = "kafka_support/mod.rs"]
mod kafka_support;

use prescale::events::Command;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `prescale actuate asg` with its own consumer group and ledger.
fn actuate_cmd(
    cfg: &prescale::io::kafka::KafkaConfig,
    dir: &std::path::Path,
    mapping: &std::path::Path,
    endpoint: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut cfg = cfg.clone();
    cfg.group_id = format!("{}-asg", cfg.group_id);
    let mut c = kafka_support::prescale();
    c.args(["actuate", "asg"])
        .args(kafka_support::cli_args(&cfg))
        .arg("--mapping")
        .arg(mapping)
        .args(["--endpoint-url", endpoint])
        .arg("--ledger")
        .arg(dir.join("asg.ledger"))
        .args(extra);
    for (flag, default) in [("--reconcile-interval-s", "3600")] {
        if !extra.contains(&flag) {
            c.args([flag, default]);
        }
    }
    c
}

#[test]
fn trace_through_produce_run_and_actuate_leaves_each_group_at_its_last_command_after_every_tick() {
    let m = Moto::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = kafka_support::Broker::shared();
    let bt = kafka_support::backtest_replay();
    let _ = &bt.commands;
    let dir = tempfile::tempdir().unwrap();
    // The environments of the trace (from the backtest's own commands).
    let env_names: std::collections::BTreeSet<String> = bt
        .commands
        .values()
        .filter_map(
            |l| match serde_json::from_str::<Command>(l).expect("a command") {
                Command::Scaling(s) => Some(s.compute_environment),
                _ => None,
            },
        )
        .collect();
    assert!(!env_names.is_empty());
    let groups: Vec<(String, String)> = env_names
        .iter()
        .map(|e| (e.clone(), unique("e2e")))
        .collect();
    for (_, g) in &groups {
        rt.block_on(create_group(m, g));
    }
    // The trace asks for thousands of vCPUs; a unit of 64 vCPUs keeps moto's fake fleet small.
    let mapping = asg_mapping(dir.path(), &groups, Some(64));
    let cfg = kafka_support::config(broker, "aws-e2e", dir.path());
    let args = kafka_support::cli_args(&cfg);
    kafka_support::run_ok(
        kafka_support::prescale()
            .arg("produce")
            .arg(&bt.events)
            .args(&args)
            .arg("--create-topics"),
    );
    kafka_support::run_ok(kafka_support::prescale().arg("run").args(&args).args([
        "--instance",
        "solo",
        "--exit-when-idle-ms",
        "1000",
    ]));
    // What the actuator will apply per environment: the commands in topic order, each one newer
    // than the last applied (another command of the same tick is a stale re-decision).
    let mut envs: BTreeMap<String, Vec<ScalingCommand>> = BTreeMap::new();
    for p in kafka_support::read_commands(&cfg) {
        if let Command::Scaling(c) = p.command {
            let v = envs.entry(c.compute_environment.clone()).or_default();
            if v.last().is_none_or(|l| c.issued_at > l.issued_at) {
                v.push(c);
            }
        }
    }
    let lasts: Vec<(String, String)> = groups
        .iter()
        .map(|(e, g)| (g.clone(), envs[e].last().unwrap().command_id.clone()))
        .collect();
    let s = run_until(
        &mut actuate_cmd(&cfg, dir.path(), &mapping, &m.endpoint, &[]),
        Duration::from_secs(240),
        || {
            lasts.iter().all(|(g, id)| {
                rt.block_on(describe_group(m, g)).last_command.as_deref() == Some(id.as_str())
            })
        },
    );
    let total: usize = envs.values().map(Vec::len).sum();
    assert_eq!(s["applied_scaling"].as_u64(), Some(total as u64), "{s}");
    assert_eq!(envs.len(), groups.len());
    assert_eq!(s["dead_lettered"], 0, "{s}");

    let catalog = prescale::pricing::Catalog::bundled();
    for (env, g) in &groups {
        let cmds = &envs[env];
        // Every tick: one update per command, in order, each with that command's sizes.
        let updates = rt.block_on(group_updates(m, g));
        let want: Vec<(i32, i32, i32)> = {
            let mut max = 0; // the fixture group's MaxSize
            cmds.iter()
                .map(|c| {
                    let s = expected_units(c, max, 64);
                    max = s.2;
                    s
                })
                .collect()
        };
        assert_eq!(updates, want, "{env}: update calls vs commands");
        let ids: Vec<String> = cmds.iter().map(|c| c.command_id.clone()).collect();
        assert_eq!(rt.block_on(tagged_commands(m, g)), ids, "{env}");
        // The end state, as DescribeAutoScalingGroups reports it.
        let last = cmds.last().unwrap();
        let st = rt.block_on(describe_group(m, g));
        assert_eq!((st.min, st.desired, st.max), *want.last().unwrap(), "{env}");
        assert_eq!(st.last_command.as_deref(), Some(last.command_id.as_str()));
        if let Some(with_mix) = cmds.iter().rev().find(|c| !c.instance_mix.is_empty()) {
            let mut types: Vec<(String, String)> = Vec::new();
            for a in &with_mix.instance_mix {
                if !types.iter().any(|(t, _)| *t == a.instance_type) {
                    let v = catalog
                        .spec(&a.instance_type)
                        .expect("catalogued type")
                        .vcpus;
                    types.push((
                        a.instance_type.clone(),
                        ((v / 64.0).round() as i64).clamp(1, 999).to_string(),
                    ));
                }
            }
            assert_eq!(st.overrides, types, "{env}: overrides of the last mix");
            assert!(
                st.on_demand_pct.is_some() && st.on_demand_base.is_some(),
                "{st:?}"
            );
        }
    }
}

fn sized(env: &str, i: i64) -> ScalingCommand {
    cmd(
        env,
        &format!("{env}-k{i:03}"),
        1_000 * (i + 1),
        (i % 5, 4 + 2 * i, 200),
        &[("m5.large", Market::Spot, (2 + i % 3) as i32)],
    )
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

/// The first message of `topic` (from the beginning), with its headers.
fn first_message(
    cfg: &prescale::io::kafka::KafkaConfig,
    topic: &str,
) -> Option<(Vec<u8>, BTreeMap<String, String>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(cfg, None)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
            let headers = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or(&[])).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Some((msg.payload().unwrap_or(&[]).to_vec(), headers));
        }
    }
    None
}

#[test]
fn sigkilled_actuator_restarts_to_the_same_state_never_applying_an_older_command_and_dead_letters_the_unknown(
) {
    let m = Moto::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = kafka_support::Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_support::config(broker, "aws-kill", dir.path());
    kafka_support::create_topics(&cfg);
    let groups = vec![
        ("k-a".to_string(), unique("kill")),
        ("k-b".to_string(), unique("kill")),
    ];
    for (_, g) in &groups {
        rt.block_on(create_group(m, g));
    }
    let mapping = asg_mapping(dir.path(), &groups, None);
    let mut all = Vec::new();
    for i in 0..40 {
        all.push(sized("k-a", i));
        all.push(sized("k-b", i));
    }
    let mut unknown = sized("k-nowhere", 0);
    unknown.command_id = "unmapped-1".into();
    all.insert(10, unknown);
    publish(&cfg, &all);

    // First run: killed (SIGKILL) once it has applied a dozen commands to k-a. The restart
    // assigns itself the partitions from the group's committed offsets (no rebalance wait).
    let member: [&str; 0] = [];
    let first_log = std::fs::File::create(dir.path().join("first.log")).unwrap();
    let mut first = actuate_cmd(&cfg, dir.path(), &mapping, &m.endpoint, &member)
        .stdout(Stdio::null())
        .stderr(first_log)
        .spawn()
        .unwrap();
    // Progress is read from the actuator's own ledger file, not from moto: the endpoint serves
    // only the actuator while it runs (polling moto's whole request recording every 50 ms made
    // the server stall on this two-core machine, #22).
    let ledger = dir.path().join("asg.ledger");
    let applied = |env: &str| -> i64 {
        ledger_last(&ledger)
            .get(env)
            .and_then(|id| id.rsplit('k').next()?.parse().ok())
            .map_or(0, |i: i64| i + 1)
    };
    let started = Instant::now();
    while applied("k-a") < 12 {
        if let Ok(Some(st)) = first.try_wait() {
            panic!(
                "first run exited ({st}) after {} k-a commands",
                applied("k-a")
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "first run applied only {} k-a commands",
            applied("k-a")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before = applied("k-a");
    assert!(before < 40, "killed mid-stream ({before} of 40 applied)");

    // Restart with the same ledger and group: it finishes the stream.
    let lasts: Vec<(String, String)> = groups
        .iter()
        .map(|(_, g)| g.clone())
        .zip(["k-a-k039", "k-b-k039"].map(String::from))
        .collect();
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("librdkafka"))
        .take(5)
    {
        eprintln!("first run: {l}");
    }
    let s = run_until(
        &mut actuate_cmd(&cfg, dir.path(), &mapping, &m.endpoint, &member),
        // A bound, not a timing target: moto answers a few calls per command
        // slowly on a loaded two-core machine.
        Duration::from_secs(400),
        || {
            let l = ledger_last(&ledger);
            groups
                .iter()
                .zip(&lasts)
                .all(|((env, _), (_, id))| l.get(env) == Some(id))
        },
    );
    assert!(s["applied_scaling"].as_u64().unwrap() > 0, "{s}");
    // What AWS describes, once the restarted actuator has stopped.
    for (g, id) in &lasts {
        assert_eq!(
            rt.block_on(describe_group(m, g)).last_command.as_deref(),
            Some(id.as_str()),
            "{g}"
        );
    }

    let issued: BTreeMap<String, i64> = all
        .iter()
        .map(|c| (c.command_id.clone(), c.issued_at))
        .collect();
    for (env, g) in &groups {
        let last = all.iter().rfind(|c| c.compute_environment == *env).unwrap();
        let st = rt.block_on(describe_group(m, g));
        assert_eq!(
            (st.min, st.desired, st.max),
            expected_sizes(last, 0),
            "{env}: same end state as a run without the kill"
        );
        assert_eq!(st.last_command.as_deref(), Some(last.command_id.as_str()));
        // Every update call moto recorded, in order: never an older command after a newer one.
        let seq: Vec<i64> = rt
            .block_on(tagged_commands(m, g))
            .iter()
            .map(|id| issued[id])
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] <= w[1]),
            "{env}: applied out of order: {seq:?}"
        );
        assert_eq!(
            seq.len() as i64,
            40 + seq.windows(2).filter(|w| w[0] == w[1]).count() as i64,
            "{env}: every command applied, repeats only of the one in flight at the kill"
        );
    }

    // The unmapped environment's command is in the dead-letter topic with the reason.
    let dlq = cfg.topics.dlq(&cfg.topics.scaling_command());
    let (payload, headers) = first_message(&cfg, &dlq).expect("a dead letter");
    let cmd = prescale::io::kafka::codec::decode_output(&cfg, true, &payload).unwrap();
    assert_eq!(cmd.id(), "unmapped-1");
    let why = headers
        .get(prescale::io::kafka::codec::headers::DLQ_ERROR)
        .cloned()
        .unwrap_or_default();
    assert!(why.contains("k-nowhere"), "{headers:?}");
}

#[test]
fn throttled_calls_delay_but_do_not_lose_commands_and_a_hand_change_is_reverted_by_reconcile() {
    let m = Moto::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = kafka_support::Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_support::config(broker, "aws-thr", dir.path());
    kafka_support::create_topics(&cfg);
    let g = unique("thr");
    rt.block_on(create_group(m, &g));
    let mapping = asg_mapping(dir.path(), &[("t-a".to_string(), g.clone())], None);
    let cmds: Vec<ScalingCommand> = (0..8).map(|i| sized("t-a", i)).collect();
    publish(&cfg, &cmds);
    // One call in four answered `Throttling`; the SDK makes one attempt per call, so the
    // runtime's own backoff does the retrying.
    let proxy = rt.block_on(ThrottlingProxy::start(&m.endpoint, 1, 4));
    let last_id = cmds.last().unwrap().command_id.clone();
    let s = run_until(
        &mut actuate_cmd(
            &cfg,
            dir.path(),
            &mapping,
            &proxy.endpoint,
            &["--sdk-max-attempts", "1", "--max-attempts", "20"],
        ),
        Duration::from_secs(120),
        || rt.block_on(describe_group(m, &g)).last_command.as_deref() == Some(last_id.as_str()),
    );
    assert_eq!(s["applied_scaling"], 8, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert!(s["retries"].as_u64().unwrap() > 0, "{s}");
    assert!(proxy.throttled.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let last = cmds.last().unwrap();
    let st = rt.block_on(describe_group(m, &g));
    assert_eq!((st.min, st.desired, st.max), expected_sizes(last, 0));
    drop(proxy);

    // A hand change, then an actuator with a 1 s reconcile interval: put back.
    let asg = rt.block_on(async { aws_sdk_autoscaling::Client::new(&m.sdk().await) });
    rt.block_on(
        asg.update_auto_scaling_group()
            .auto_scaling_group_name(&g)
            .min_size(0)
            .desired_capacity(1)
            .max_size(2)
            .send(),
    )
    .unwrap();
    let want = expected_sizes(last, 0);
    let s = run_until(
        &mut actuate_cmd(
            &cfg,
            dir.path(),
            &mapping,
            &m.endpoint,
            &["--reconcile-interval-s", "1"],
        ),
        Duration::from_secs(60),
        || {
            let st = rt.block_on(describe_group(m, &g));
            (st.min, st.desired, st.max) == want
        },
    );
    assert!(s["drift_reapplied"].as_u64().unwrap() >= 1, "{s}");
    let st = rt.block_on(describe_group(m, &g));
    assert_eq!(
        (st.min, st.desired, st.max),
        expected_sizes(last, 0),
        "reverted"
    );
}
