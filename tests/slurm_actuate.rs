//! The Slurm actuator against a REAL cluster (scripts/slurm.sh): cloud
//! nodes powered up ahead of demand, idle ones powered down, busy ones
//! left alone, a node that fails to boot reported and worked around.

mod slurm_support;

use prescale::events::{PreemptionAction, PreemptionCommand, ScalingCommand};
use prescale::io::slurm::actuate::{SlurmActuator, SlurmActuatorConfig};
use slurm_support::*;
use std::time::{Duration, Instant};

fn actuator(c: &Cluster) -> SlurmActuator {
    SlurmActuator::new(SlurmActuatorConfig {
        partitions: [("cloud-env".to_string(), "cloud".to_string())].into(),
        commands: prescale::io::slurm::SlurmCommands {
            slurm_conf: Some(c.conf()),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn scaling(id: &str, min: i64, desired: i64, max: i64) -> ScalingCommand {
    ScalingCommand {
        command_id: id.into(),
        issued_at: 0,
        compute_environment: "cloud-env".into(),
        min_vcpus: min,
        desired_vcpus: desired,
        max_vcpus: max,
        instance_mix: vec![],
        constraints: Default::default(),
        forecast: vec![],
        reason: "test".into(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start_time(c: &Cluster, job: u64) -> Option<i64> {
    let out = c.run("squeue", &["-h", "-j", &job.to_string(), "-o", "%T %S"]);
    let mut it = out.split_whitespace();
    (it.next()? == "RUNNING").then_some(())?;
    let t = chrono::NaiveDateTime::parse_from_str(it.next()?, "%Y-%m-%dT%H:%M:%S").ok()?;
    Some(t.and_local_timezone(chrono::Local).single()?.timestamp())
}

/// Raise → nodes boot before any job; a job submitted afterwards starts at
/// once (a cold node would keep it CONFIGURING for up to 30 s). Lower →
/// the idle node powers down, the busy one keeps running its job. The
/// actuator never goes above max nor touches the static partition.
#[test]
fn raise_powers_up_ahead_lower_spares_busy_nodes() {
    let c = Cluster::start(ClusterSpec {
        port_offset: 20,
        ..Default::default()
    });
    let rt = rt();
    let mut a = actuator(&c);
    rt.block_on(a.check()).expect("partition found");

    // Dry-run: logs, changes nothing.
    rt.block_on(a.apply_scaling(&scaling("dry", 0, 4, 0), true))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.power_log().is_empty(), "dry-run resumed a node");

    // Raise to 4 vCPUs = 2 nodes of 2; max 4 so never a third.
    rt.block_on(a.apply_scaling(&scaling("up-1", 0, 6, 4), false))
        .unwrap();
    c.wait_for("cloud1 and cloud2 up", Duration::from_secs(20), || {
        is_idle_on(&c.node_state("cloud1")) && is_idle_on(&c.node_state("cloud2"))
    });
    assert!(is_off(&c.node_state("cloud3")), "max exceeded");
    assert_eq!(c.node_state("static1").split('+').next(), Some("IDLE"));
    // The same command again (reconcile) changes nothing.
    assert!(!rt
        .block_on(a.reconcile(&scaling("up-1", 0, 6, 4), false))
        .unwrap());

    let submitted = chrono::Utc::now().timestamp();
    let resumes_before = resumes(&c);
    let job = c.sbatch(&["-p", "cloud", "-c", "2", "--wrap", "sleep 120"]);
    let t = Instant::now();
    let mut started = None;
    while started.is_none() && t.elapsed() < Duration::from_secs(40) {
        started = start_time(&c, job);
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = started.expect("job started");
    // Not a timing bound (a loaded machine delays Slurm's scheduler too):
    // the job ran on a node prescale had powered, so no node was resumed
    // for it, and it did not wait anywhere near a boot plus Slurm's
    // CONFIGURING check.
    assert_eq!(
        resumes(&c),
        resumes_before,
        "a node was resumed for a job that had pre-powered nodes (waited {} s)",
        started - submitted
    );
    assert!(
        started - submitted <= 10,
        "job waited {} s",
        started - submitted
    );
    let busy = c.field("job", &job.to_string(), "NodeList");
    let idle = if busy == "cloud1" { "cloud2" } else { "cloud1" };

    // Lower to 0: the idle node goes, the busy one stays with its job.
    rt.block_on(a.apply_scaling(&scaling("down-1", 0, 0, 4), false))
        .unwrap();
    c.wait_for("idle node powered down", Duration::from_secs(30), || {
        is_off(&c.node_state(idle))
    });
    assert!(
        !c.node_state(&busy).contains("POWER"),
        "busy node {busy} was powered down: {}",
        c.node_state(&busy)
    );
    assert_eq!(c.job_state(job), "RUNNING");
    // min keeps capacity: min 2 with the busy node up asks nothing more.
    assert!(!rt
        .block_on(a.reconcile(&scaling("down-1", 2, 0, 4), false))
        .unwrap());

    // Preemption: requeue the running job, then hold and release it.
    let pc = |id: &str, action| PreemptionCommand {
        command_id: id.into(),
        issued_at: 0,
        job_id: job.to_string(),
        compute_environment: "cloud-env".into(),
        action,
        reason: "test".into(),
    };
    rt.block_on(a.apply_preemption(&pc("p1", PreemptionAction::Preempt), false))
        .unwrap();
    c.wait_for("job requeued", Duration::from_secs(30), || {
        c.job_state(job) == "PENDING"
    });
    rt.block_on(a.apply_preemption(&pc("p2", PreemptionAction::Queue), false))
        .unwrap();
    let reason = c.field("job", &job.to_string(), "Reason");
    assert!(reason.contains("Held"), "held job's reason: {reason}");
    rt.block_on(a.apply_preemption(&pc("p3", PreemptionAction::Resume), false))
        .unwrap();
    let reason = c.field("job", &job.to_string(), "Reason");
    assert!(!reason.contains("Held"), "released job's reason: {reason}");
    // An unknown environment is a permanent error (dead-letter).
    let mut other = scaling("x", 0, 2, 0);
    other.compute_environment = "nope".into();
    let e = rt.block_on(a.apply_scaling(&other, false)).unwrap_err();
    assert!(!e.transient && e.message.contains("nope"), "{e}");
    c.run("scancel", &[&job.to_string()]);
}

/// A node whose "VM" never boots is marked DOWN by Slurm after
/// ResumeTimeout; the actuator reports it and powers up another instead.
#[test]
fn node_failing_to_boot_is_reported_and_does_not_block() {
    let c = Cluster::start(ClusterSpec {
        port_offset: 40,
        cloud_nodes: 3,
        resume_timeout_s: 5,
        ..Default::default()
    });
    std::fs::write(c.path().join("fail-boot"), "cloud1\n").unwrap();
    let rt = rt();
    let mut a = actuator(&c);
    let cmd = scaling("up-fail", 0, 2, 0);
    rt.block_on(a.apply_scaling(&cmd, false)).unwrap();
    // Meanwhile nothing is blocked: the booting node counts, no new action.
    assert!(!rt.block_on(a.reconcile(&cmd, false)).unwrap());
    c.wait_for("cloud1 marked DOWN", Duration::from_secs(30), || {
        c.node_state("cloud1").starts_with("DOWN")
    });
    assert!(
        rt.block_on(a.reconcile(&cmd, false)).unwrap(),
        "reconcile replaces the failed node"
    );
    assert_eq!(a.stats.failed_nodes_reported, 1);
    c.wait_for("cloud2 up instead", Duration::from_secs(20), || {
        is_idle_on(&c.node_state("cloud2"))
    });
    assert!(c.node_state("cloud1").starts_with("DOWN"));
    assert!(
        c.power_log()
            .iter()
            .any(|l| l.ends_with("boot-fail cloud1")),
        "{:?}",
        c.power_log()
    );
}

/// Resumes the cluster's power scripts have logged so far.
fn resumes(c: &Cluster) -> usize {
    std::fs::read_to_string(c.path().join("power.log"))
        .map(|t| t.lines().filter(|l| l.contains(" resume ")).count())
        .unwrap_or(0)
}
