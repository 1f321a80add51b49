//! `prescale actuate asg` against a REAL moto server (scripts/moto.sh): the actuator's calls go
//! through the AWS SDK and HTTP; what moto then describes is what the tests check.

mod aws_support;

use aws_support::*;
use prescale::events::{InstanceAllocation, Market, ScalingCommand};
use prescale::io::aws::asg::AsgActuator;
use prescale::io::aws::config::Mapping;
use prescale::io::aws::{Actuator, Retry};

fn cmd(env: &str, id: &str, at: i64, sizes: (i64, i64, i64), mix: &[(&str, Market, i32)]) -> ScalingCommand {
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
    let mix = [("m5.large", Market::Spot, 6), ("m5.xlarge", Market::OnDemand, 2)];
    let c1 = cmd("ce-x", "c1", 1_000, (4, 20, 64), &mix);
    a.apply_scaling(&c1, false).await.unwrap();
    let s = describe_group(m, &g).await;
    assert_eq!((s.min, s.desired, s.max), (4, 20, 64), "{s:?}");
    assert_eq!(
        s.overrides,
        vec![("m5.large".to_string(), "2".to_string()), ("m5.xlarge".to_string(), "4".to_string())]
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
    assert_eq!(tagged_commands(m, &g).await, vec!["c1", "c1", "c3"], "reconcile re-tags c1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_group_unknown_environment_and_bad_sizes_are_permanent_errors_naming_them() {
    let m = Moto::shared();
    let missing = unique("asg-missing");
    let mut a = AsgActuator::new(&m.sdk().await, &mapping("ce-m", &missing));
    let e = a.check().await.unwrap_err();
    assert!(e.message.contains(&missing) && e.message.contains("ce-m"), "{}", e.message);
    assert_eq!(e.retry, Retry::Permanent);

    let g = unique("asg-errs");
    create_group(m, &g).await;
    let mut a = AsgActuator::new(&m.sdk().await, &mapping("ce-e", &g));
    let e = a
        .apply_scaling(&cmd("ce-other", "u1", 1, (0, 1, 2), &[]), false)
        .await
        .unwrap_err();
    assert_eq!(e.retry, Retry::Permanent);
    assert!(e.message.contains("ce-other") && e.message.contains("u1"), "{}", e.message);
    let e = a
        .apply_scaling(&cmd("ce-e", "u2", 1, (0, -1, 2), &[]), false)
        .await
        .unwrap_err();
    assert_eq!(e.retry, Retry::Permanent, "{}", e.message);
    let e = a
        .apply_scaling(&cmd("ce-e", "u3", 1, (0, 1, 2), &[("zz.nothing", Market::Spot, 1)]), false)
        .await
        .unwrap_err();
    assert!(e.message.contains("zz.nothing"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_by_the_sdk_and_reported_transient_when_it_persists() {
    let m = Moto::shared();
    let g = unique("asg-throttle");
    create_group(m, &g).await;
    // Two of every three requests answered `Throttling`: with 3 attempts per call every call
    // gets through on its third.
    let proxy = ThrottlingProxy::start(&m.endpoint, 2, 3).await;
    let mut a = AsgActuator::new(&m.sdk_at(&proxy.endpoint).await, &mapping("ce-t", &g));
    let c = cmd("ce-t", "t1", 1, (1, 5, 9), &[("m5.large", Market::Spot, 3)]);
    a.apply_scaling(&c, false).await.expect("retried through throttling");
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
