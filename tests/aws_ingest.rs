//! `prescale ingest batch`: AWS Batch job events → prescale input events, once per transition.
//! The file test reads `tests/data/batch-job-events.jsonl`, EventBridge events in the shape of
//! the "Job state change events" example of the AWS Batch User Guide (PENDING → RUNNABLE →
//! STARTING → RUNNING → SUCCEEDED, a FAILED job that never started, a re-delivered event, a
//! "Batch Job Queue Blocked" event, a job with an unreadable tag). The SQS and polling tests
//! use a REAL moto server (scripts/moto.sh).

mod aws_support;

use aws_support::*;
use prescale::events::{Event, JobStatus};
use prescale::import::events_file::read_events;
use std::path::Path;
use std::process::Command as Proc;

fn prescale() -> Proc {
    Proc::new(env!("CARGO_BIN_EXE_prescale"))
}

fn fixture() -> std::path::PathBuf {
    repo().join("tests/data/batch-job-events.jsonl")
}

const MAPPING: &str = "[batch.ce-render]\nspot_compute_environment = \"render-spot-ce\"\non_demand_compute_environment = \"render-od-ce\"\njob_queue = \"render-spot\"\n";

/// Run `prescale ingest batch` with `args`; returns its stats line as JSON.
fn ingest(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mapping = dir.join("mapping.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let out = prescale()
        .args(["ingest", "batch"])
        .args(args)
        .arg("--mapping")
        .arg(&mapping)
        .arg("--seen")
        .arg(dir.join("seen"))
        .arg("--dead-letter")
        .arg(dir.join("dlq.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("stats line")).unwrap()
}

fn events(path: &Path) -> Vec<Event> {
    read_events(path, false).unwrap().events
}

#[test]
fn eventbridge_file_maps_each_transition_once_and_bad_records_go_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let out1 = dir.path().join("1.avro");
    let f = fixture();
    let stats = ingest(
        dir.path(),
        &[
            "--events",
            f.to_str().unwrap(),
            "--out",
            out1.to_str().unwrap(),
        ],
    );
    assert_eq!(stats["submitted"], 3, "{stats}");
    assert_eq!(stats["completed"], 3, "{stats}");
    assert_eq!(stats["bad"], 1, "{stats}");
    assert_eq!(stats["ignored"], 1, "{stats}");
    assert_eq!(stats["duplicates"], 8, "{stats}");

    let evs = events(&out1);
    assert_eq!(evs.len(), 6);
    let times: Vec<i64> = evs.iter().map(Event::time).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "event-time order: {times:?}"
    );
    let sub = |id: &str| {
        evs.iter()
            .find_map(|e| match e {
                Event::JobSubmitted(s) if s.job_id.starts_with(id) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no submission of {id}"))
    };
    let done = |id: &str| {
        evs.iter()
            .find_map(|e| match e {
                Event::JobCompleted(c) if c.job_id.starts_with(id) => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no completion of {id}"))
    };
    let a = sub("4c7599ae");
    assert_eq!(
        a.compute_environment, "ce-render",
        "queue → environment by the mapping"
    );
    assert_eq!((a.vcpus, a.memory_mib, a.gpus), (4.0, 8192, 0));
    assert_eq!(
        (a.project.as_str(), a.user.as_str(), a.priority),
        ("films", "ana", 5)
    );
    assert_eq!(a.job_type, "render");
    assert_eq!(a.submitted_at, 1_764_547_200_000, "createdAt");
    assert_eq!(a.deadline, Some(1_764_568_800_000));
    assert_eq!(
        (a.budget_usd, a.estimated_runtime_s, a.elasticity),
        (Some(12.5), Some(1800), true)
    );
    let ac = done("4c7599ae");
    assert_eq!(ac.status, JobStatus::Succeeded);
    assert_eq!(
        (ac.started_at, ac.finished_at),
        (1_764_547_320_000, 1_764_549_120_000)
    );
    assert_eq!(ac.vcpu_seconds, 4.0 * 1800.0);
    assert_eq!(ac.region.as_deref(), Some("us-east-1"));

    let b = sub("8d1f6c2e");
    assert_eq!(b.compute_environment, "ce-gpu", "tag wins over the queue");
    assert_eq!(
        (b.vcpus, b.gpus, b.job_type.as_str()),
        (8.0, 1, "train-gpu")
    );
    let bc = done("8d1f6c2e");
    assert_eq!(
        (bc.status, bc.vcpu_seconds),
        (JobStatus::Failed, 0.0),
        "never started"
    );
    let c = sub("f3a9b7c1");
    assert_eq!(
        (c.project.as_str(), c.user.as_str(), c.priority),
        ("default", "unknown", 0)
    );
    assert_eq!(done("f3a9b7c1").vcpu_seconds, 2.0 * 2110.0);

    let dlq = std::fs::read_to_string(dir.path().join("dlq.jsonl")).unwrap();
    assert!(
        dlq.contains("0b1c2d3e") && dlq.contains("prescale:priority"),
        "{dlq}"
    );

    // The same events delivered again (a replayed file, a re-driven queue): nothing new.
    let out2 = dir.path().join("2.avro");
    let again = ingest(
        dir.path(),
        &[
            "--events",
            f.to_str().unwrap(),
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert_eq!(
        (again["submitted"].as_u64(), again["completed"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    assert!(events(&out2).is_empty());
}

#[test]
fn sqs_messages_are_ingested_once_and_deleted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = Moto::shared();
    let name = unique("batch-events");
    let url = rt.block_on(async {
        let sqs = aws_sdk_sqs::Client::new(&m.sdk().await);
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        let text = std::fs::read_to_string(fixture()).unwrap();
        // Every event, and the first three a second time (SQS delivers at least once).
        for line in text.lines().chain(text.lines().take(3)) {
            sqs.send_message()
                .queue_url(&url)
                .message_body(line)
                .send()
                .await
                .unwrap();
        }
        url
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sqs.avro");
    let stats = ingest(
        dir.path(),
        &[
            "--sqs-queue-url",
            &url,
            "--once",
            "--sqs-wait-s",
            "0",
            "--endpoint-url",
            &m.endpoint,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        (stats["submitted"].as_u64(), stats["completed"].as_u64()),
        (Some(3), Some(3)),
        "{stats}"
    );
    assert_eq!(events(&out).len(), 6);
    let left = rt.block_on(async {
        let sqs = aws_sdk_sqs::Client::new(&m.sdk().await);
        let r = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        r.attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    .cloned()
            })
            .unwrap_or_default()
    });
    assert_eq!(left, "0", "delivered messages are deleted");
}

#[test]
fn polling_list_and_describe_jobs_emits_each_job_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = Moto::shared();
    let p = unique("poll");
    let queue = rt.block_on(async {
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
                            .value("2")
                            .build(),
                    )
                    .resource_requirements(
                        aws_sdk_batch::types::ResourceRequirement::builder()
                            .r#type(aws_sdk_batch::types::ResourceType::Memory)
                            .value("1024")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        for i in 0..3 {
            b.submit_job()
                .job_name(format!("j{i}"))
                .job_queue(&t.job_queue)
                .job_definition(format!("{p}-def"))
                .tags("prescale:project", "poll")
                .send()
                .await
                .unwrap();
        }
        t.job_queue
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("poll.avro");
    let stats = ingest(
        dir.path(),
        &[
            "--poll",
            &queue,
            "--once",
            "--endpoint-url",
            &m.endpoint,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    // moto's Docker-free Batch finishes each job at once: a submission and a completion each.
    assert_eq!(
        (stats["submitted"].as_u64(), stats["completed"].as_u64()),
        (Some(3), Some(3)),
        "{stats}"
    );
    let evs = events(&out);
    assert_eq!(evs.len(), 6);
    for e in &evs {
        if let Event::JobSubmitted(s) = e {
            assert_eq!(
                (s.vcpus, s.memory_mib, s.project.as_str()),
                (2.0, 1024, "poll")
            );
            assert_eq!(
                s.compute_environment,
                queue.as_str(),
                "unmapped queue: its name"
            );
        }
    }
    let out2 = dir.path().join("poll2.avro");
    let again = ingest(
        dir.path(),
        &[
            "--poll",
            &queue,
            "--once",
            "--endpoint-url",
            &m.endpoint,
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert_eq!(
        (again["submitted"].as_u64(), again["completed"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
}
