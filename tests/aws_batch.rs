//! `prescale actuate batch` against a REAL moto server (scripts/moto.sh, with its documented
//! patch that keeps UpdateComputeEnvironment's vCPU fields so they can be read back).

mod aws_support;

use aws_support::*;
use prescale::events::{
    InstanceAllocation, Market, PreemptionAction, PreemptionCommand, ScalingCommand,
};
use prescale::io::aws::batch::BatchActuator;
use prescale::io::aws::config::{BatchTarget, Mapping};
use prescale::io::aws::{Actuator, Retry};

fn cmd(env: &str, id: &str, sizes: (i64, i64, i64), mix: &[(&str, Market, i32)]) -> ScalingCommand {
    ScalingCommand {
        command_id: id.into(),
        issued_at: 1,
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

pub fn mapping(env: &str, t: &BatchTarget) -> Mapping {
    Mapping::parse(&format!(
        "[batch.{env}]\nspot_compute_environment = \"{}\"\non_demand_compute_environment = \"{}\"\njob_queue = \"{}\"\n",
        t.spot_compute_environment, t.on_demand_compute_environment, t.job_queue
    ))
    .unwrap()
}

async fn queue_order(m: &Moto, q: &str) -> Vec<String> {
    let b = aws_sdk_batch::Client::new(&m.sdk().await);
    let r = b.describe_job_queues().job_queues(q).send().await.unwrap();
    let mut o: Vec<(i32, String)> = r.job_queues()[0]
        .compute_environment_order()
        .iter()
        .map(|o| {
            let arn = o.compute_environment().unwrap_or("");
            (
                o.order().unwrap_or(0),
                arn.rsplit('/').next().unwrap().to_string(),
            )
        })
        .collect();
    o.sort();
    o.into_iter().map(|(_, n)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_by_market_orders_the_queue_and_reconciles() {
    let m = Moto::shared();
    let p = unique("b");
    let t = create_batch(m, &p).await;
    let mut a = BatchActuator::new(&m.sdk().await, &mapping("ce-b", &t));
    a.check().await.expect("resources exist");

    // 75 % spot: 12 vCPUs spot, 4 on demand.
    let mix = [
        ("m5.large", Market::Spot, 6),
        ("m5.xlarge", Market::OnDemand, 1),
    ];
    a.apply_scaling(&cmd("ce-b", "b1", (4, 16, 40), &mix), false)
        .await
        .unwrap();
    assert_eq!(
        describe_ce(m, &t.spot_compute_environment).await,
        (3, 12, 30)
    );
    assert_eq!(
        describe_ce(m, &t.on_demand_compute_environment).await,
        (1, 4, 10)
    );
    assert_eq!(
        queue_order(m, &t.job_queue).await,
        vec![
            t.spot_compute_environment.clone(),
            t.on_demand_compute_environment.clone()
        ]
    );

    // On demand becomes the larger share: the queue order flips.
    let mix2 = [
        ("m5.large", Market::Spot, 1),
        ("m5.xlarge", Market::OnDemand, 2),
    ];
    let c2 = cmd("ce-b", "b2", (0, 10, 20), &mix2);
    a.apply_scaling(&c2, false).await.unwrap();
    assert_eq!(describe_ce(m, &t.spot_compute_environment).await, (0, 2, 4));
    assert_eq!(
        describe_ce(m, &t.on_demand_compute_environment).await,
        (0, 8, 16)
    );
    assert_eq!(
        queue_order(m, &t.job_queue).await[0],
        t.on_demand_compute_environment
    );

    // Hand change of the on-demand CE's maximum: reconcile restores it.
    let b = aws_sdk_batch::Client::new(&m.sdk().await);
    b.update_compute_environment()
        .compute_environment(&t.on_demand_compute_environment)
        .compute_resources(
            aws_sdk_batch::types::ComputeResourceUpdate::builder()
                .minv_cpus(0)
                .desiredv_cpus(8)
                .maxv_cpus(99)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(a.reconcile(&c2, false).await.unwrap());
    assert_eq!(
        describe_ce(m, &t.on_demand_compute_environment).await,
        (0, 8, 16)
    );
    assert!(!a.reconcile(&c2, false).await.unwrap());

    // Dry run changes nothing.
    a.apply_scaling(&cmd("ce-b", "b3", (0, 1, 1), &[]), true)
        .await
        .unwrap();
    assert_eq!(
        describe_ce(m, &t.on_demand_compute_environment).await,
        (0, 8, 16)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempt_terminates_with_the_command_id_and_resume_resubmits() {
    let m = Moto::shared();
    let p = unique("bj");
    let t = create_batch(m, &p).await;
    let b = aws_sdk_batch::Client::new(&m.sdk().await);
    b.register_job_definition()
        .job_definition_name(format!("{p}-def"))
        .r#type(aws_sdk_batch::types::JobDefinitionType::Container)
        .container_properties(
            aws_sdk_batch::types::ContainerProperties::builder()
                .image("busybox")
                .resource_requirements(
                    aws_sdk_batch::types::ResourceRequirement::builder()
                        .r#type(aws_sdk_batch::types::ResourceType::Vcpu)
                        .value("1")
                        .build(),
                )
                .resource_requirements(
                    aws_sdk_batch::types::ResourceRequirement::builder()
                        .r#type(aws_sdk_batch::types::ResourceType::Memory)
                        .value("512")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let job = b
        .submit_job()
        .job_name("render")
        .job_queue(&t.job_queue)
        .job_definition(format!("{p}-def"))
        .tags("prescale:project", "films")
        .send()
        .await
        .unwrap();
    let job_id = job.job_id().unwrap().to_string();
    let mut a = BatchActuator::new(&m.sdk().await, &mapping("ce-j", &t));
    let pre = |action, id: &str| PreemptionCommand {
        command_id: id.into(),
        issued_at: 1,
        job_id: job_id.clone(),
        compute_environment: "ce-j".into(),
        action,
        reason: "spot price spike".into(),
    };
    a.apply_preemption(&pre(PreemptionAction::Preempt, "p-1"), false)
        .await
        .unwrap();
    let d = b.describe_jobs().jobs(&job_id).send().await.unwrap();
    let reason = d.jobs()[0].status_reason().unwrap_or("").to_string();
    assert!(
        reason.contains("p-1") && reason.contains("Preempt"),
        "{reason}"
    );

    a.apply_preemption(&pre(PreemptionAction::Resume, "r-1"), false)
        .await
        .unwrap();
    let listed = b
        .list_jobs()
        .job_queue(&t.job_queue)
        .job_status(aws_sdk_batch::types::JobStatus::Succeeded)
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = listed
        .job_summary_list()
        .iter()
        .filter_map(|j| j.job_id())
        .collect();
    assert_eq!(ids.len(), 2, "original and resubmitted: {ids:?}");
    let copy = ids.iter().find(|i| **i != job_id).unwrap();
    let d = b.describe_jobs().jobs(*copy).send().await.unwrap();
    let tags = d.jobs()[0].tags().cloned().unwrap_or_default();
    assert_eq!(tags.get("prescale:resumed-from"), Some(&job_id));
    assert_eq!(
        tags.get("prescale:project").map(String::as_str),
        Some("films")
    );

    let e = a
        .apply_preemption(
            &PreemptionCommand {
                compute_environment: "nowhere".into(),
                ..pre(PreemptionAction::Preempt, "x")
            },
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.retry, Retry::Permanent);
}

// ---- Through Kafka: `prescale actuate batch` consuming the command topic -----------------------

#[path = "kafka_support/mod.rs"]
mod kafka_support;

#[test]
fn actuate_batch_from_the_command_topic_leaves_each_environment_at_its_last_command() {
    use prescale::events::Command;
    let m = Moto::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = kafka_support::Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_support::config(broker, "aws-batch", dir.path());
    kafka_support::create_topics(&cfg);
    let envs = ["bb-a", "bb-b"];
    let mut text = String::new();
    let mut targets = Vec::new();
    for env in envs {
        let t = rt.block_on(create_batch(m, &unique(env)));
        text.push_str(&format!(
            "[batch.{env}]\nspot_compute_environment = \"{}\"\non_demand_compute_environment = \"{}\"\njob_queue = \"{}\"\n\n",
            t.spot_compute_environment, t.on_demand_compute_environment, t.job_queue
        ));
        targets.push(t);
    }
    let mapping = dir.path().join("aws.toml");
    std::fs::write(&mapping, text).unwrap();
    let mut cmds = Vec::new();
    for i in 0..12i64 {
        for env in envs {
            let spot = if i % 4 == 1 { 1 } else { 6 }; // the last command (i = 11) is 75 % spot
            let mut c = cmd(
                env,
                &format!("{env}-{i}"),
                (0, 8 + 2 * i, 64 + i),
                &[
                    ("m5.large", Market::Spot, spot),
                    ("m5.xlarge", Market::OnDemand, 1),
                ],
            );
            c.issued_at = 1_000 * (i + 1);
            cmds.push(c);
        }
    }
    let p = prescale::io::kafka::publish::Publisher::new(&cfg).unwrap();
    for c in &cmds {
        let c = Command::Scaling(c.clone());
        let payload = prescale::io::kafka::codec::encode_output(&cfg, &c).unwrap();
        p.send(
            &cfg.topics.scaling_command(),
            c.key().as_bytes(),
            &payload,
            &[],
            None,
        )
        .unwrap();
    }
    p.flush(std::time::Duration::from_secs(10)).unwrap();
    let mut acfg = cfg.clone();
    acfg.group_id = format!("{}-batch", cfg.group_id);
    let spot_ces: Vec<String> = targets
        .iter()
        .map(|t| t.spot_compute_environment.clone())
        .collect();
    let s = run_until(
        kafka_support::prescale()
            .args(["actuate", "batch"])
            .args(kafka_support::cli_args(&acfg))
            .arg("--mapping")
            .arg(&mapping)
            .args(["--endpoint-url", &m.endpoint])
            .arg("--ledger")
            .arg(dir.path().join("batch.ledger")),
        std::time::Duration::from_secs(120),
        // Only the last command of each environment sets its spot CE's desired to
        // round(0.75 x 30) = 23.
        || {
            spot_ces
                .iter()
                .all(|ce| rt.block_on(describe_ce(m, ce)).1 == 23)
        },
    );
    assert_eq!(s["applied_scaling"], 24, "{s}");
    for (env, t) in envs.iter().zip(&targets) {
        let last = cmds
            .iter()
            .rfind(|c| c.compute_environment == *env)
            .unwrap();
        // 12 spot vCPUs (6 x m5.large) and 4 on demand (1 x m5.xlarge): 75 % spot.
        let split = |x: i64| {
            let s = (x as f64 * 0.75).round() as i32;
            (s, x as i32 - s)
        };
        let (sd, od) = split(last.desired_vcpus);
        let (sm, om) = split(last.max_vcpus);
        assert_eq!(
            rt.block_on(describe_ce(m, &t.spot_compute_environment)),
            (0, sd, sm),
            "{env} spot"
        );
        assert_eq!(
            rt.block_on(describe_ce(m, &t.on_demand_compute_environment)),
            (0, od, om),
            "{env} on demand"
        );
        assert_eq!(
            rt.block_on(queue_order(m, &t.job_queue))[0],
            t.spot_compute_environment,
            "{env}: spot first"
        );
    }
}

/// (spot vCPUs, all vCPUs, spot share) of a command's instance mix.
fn spot_share(c: &ScalingCommand, catalog: &prescale::pricing::Catalog) -> (f64, f64, f64) {
    let (mut spot, mut total) = (0.0, 0.0);
    for a in &c.instance_mix {
        let v = catalog.spec(&a.instance_type).expect("catalogued").vcpus * f64::from(a.count);
        total += v;
        if a.market == Market::Spot {
            spot += v;
        }
    }
    let f = if total > 0.0 { spot / total } else { 0.0 };
    (spot, total, f)
}

/// The `prescale:last-command-id` tag of a compute environment.
async fn ce_last_command(m: &Moto, name: &str) -> Option<String> {
    let b = aws_sdk_batch::Client::new(&m.sdk().await);
    let r = b
        .describe_compute_environments()
        .compute_environments(name)
        .send()
        .await
        .expect("DescribeComputeEnvironments");
    r.compute_environments()
        .first()
        .and_then(|c| c.tags())
        .and_then(|t| t.get("prescale:last-command-id").cloned())
}

/// The real path: a trace slice through `prescale produce` → `prescale run` → the command topic
/// → `prescale actuate batch` → moto's Batch compute environments, as a user deploys it.
#[test]
fn trace_through_produce_run_and_actuate_batch_leaves_each_environment_at_its_last_command() {
    use prescale::events::Command;
    use std::collections::BTreeMap;
    let m = Moto::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = kafka_support::Broker::shared();
    let bt = kafka_support::backtest_replay();
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_support::config(broker, "aws-batch-e2e", dir.path());
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
    // What the actuator will apply per environment: the commands in topic order, each newer
    // than the last applied one.
    let mut envs: BTreeMap<String, Vec<ScalingCommand>> = BTreeMap::new();
    for p in kafka_support::read_commands(&cfg) {
        if let Command::Scaling(c) = p.command {
            let v = envs.entry(c.compute_environment.clone()).or_default();
            if v.last().is_none_or(|l| c.issued_at > l.issued_at) {
                v.push(c);
            }
        }
    }
    assert!(
        !envs.is_empty(),
        "prescale run published no scaling command"
    );
    let mut text = String::new();
    let mut targets = BTreeMap::new();
    for env in envs.keys() {
        let t = rt.block_on(create_batch(m, &unique("e2e")));
        text.push_str(&format!(
            "[batch.\"{env}\"]\nspot_compute_environment = \"{}\"\non_demand_compute_environment = \"{}\"\njob_queue = \"{}\"\n\n",
            t.spot_compute_environment, t.on_demand_compute_environment, t.job_queue
        ));
        targets.insert(env.clone(), t);
    }
    let mapping = dir.path().join("aws.toml");
    std::fs::write(&mapping, text).unwrap();
    let mut acfg = cfg.clone();
    acfg.group_id = format!("{}-batch", cfg.group_id);
    let ledger = dir.path().join("batch.ledger");
    let lasts: BTreeMap<String, String> = envs
        .iter()
        .map(|(e, v)| (e.clone(), v.last().unwrap().command_id.clone()))
        .collect();
    // Progress from the actuator's ledger (the endpoint serves only the actuator meanwhile).
    let s = run_until(
        kafka_support::prescale()
            .args(["actuate", "batch"])
            .args(kafka_support::cli_args(&acfg))
            .arg("--mapping")
            .arg(&mapping)
            .args(["--endpoint-url", &m.endpoint])
            .arg("--ledger")
            .arg(&ledger)
            .args(["--reconcile-interval-s", "3600"]),
        std::time::Duration::from_secs(300),
        || ledger_last(&ledger) == lasts,
    );
    let total: usize = envs.values().map(Vec::len).sum();
    assert_eq!(s["applied_scaling"].as_u64(), Some(total as u64), "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");

    let catalog = prescale::pricing::Catalog::bundled();
    for (env, cmds) in &envs {
        let t = &targets[env];
        let last = cmds.last().unwrap();
        for ce in [
            &t.spot_compute_environment,
            &t.on_demand_compute_environment,
        ] {
            assert_eq!(
                rt.block_on(ce_last_command(m, ce)).as_deref(),
                Some(last.command_id.as_str()),
                "{env}: {ce} tagged with the last command"
            );
        }
        let (smin, sdes, smax) = rt.block_on(describe_ce(m, &t.spot_compute_environment));
        let (omin, odes, omax) = rt.block_on(describe_ce(m, &t.on_demand_compute_environment));
        // The two CEs add up to the command exactly; the spot one gets the mix's spot share.
        let desired = last.desired_vcpus.max(last.min_vcpus);
        assert_eq!(i64::from(smin + omin), last.min_vcpus, "{env}: min");
        assert_eq!(i64::from(sdes + odes), desired, "{env}: desired");
        // Maxima: a command with a ceiling splits it; one without (max 0) keeps each CE's
        // own, as earlier commands left it (64 in the fixture), raised to its desired.
        let (mut want_smax, mut want_omax) = (64i64, 64i64);
        for c in cmds {
            let f = spot_share(c, &catalog).2;
            let part = |x: i64| {
                let s = (x as f64 * f).round() as i64;
                (s, x - s)
            };
            let d = c.desired_vcpus.max(c.min_vcpus);
            if c.max_vcpus > 0 {
                (want_smax, want_omax) = part(c.max_vcpus.max(d));
            }
            let ((sd, od), (sm, om)) = (part(d), part(c.min_vcpus));
            want_smax = want_smax.max(sd).max(sm);
            want_omax = want_omax.max(od).max(om);
        }
        assert_eq!(
            (i64::from(smax), i64::from(omax)),
            (want_smax, want_omax),
            "{env}: max"
        );
        let (spot, total, f) = spot_share(last, &catalog);
        assert_eq!(
            i64::from(sdes),
            (desired as f64 * f).round() as i64,
            "{env}: spot share {f:.3} of {desired}"
        );
        if total > 0.0 {
            let first = rt.block_on(queue_order(m, &t.job_queue))[0].clone();
            let want = if spot >= total - spot {
                &t.spot_compute_environment
            } else {
                &t.on_demand_compute_environment
            };
            assert_eq!(&first, want, "{env}: the cheaper market's CE first");
        }
    }
    eprintln!(
        "{} environments, {total} scaling commands applied through produce + run + actuate batch",
        envs.len()
    );
}
