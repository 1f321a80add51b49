//! Issue #21 over Kafka, against the real broker (tansu via scripts/kafka.sh):
//! well-formed Avro records with an absurd timestamp or size go to the
//! dead-letter topic with the reason, and the stream goes on with the same
//! commands as without them.

mod kafka_support;

use kafka_support::*;
use prescale::events::avro::encode_event;
use prescale::events::Event;
use prescale::io::kafka::codec::headers;
use prescale::io::kafka::produce::Pace;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[test]
fn absurd_time_and_size_go_to_dlq_and_run_continues() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "hostile", state.path());
    create_topics(&cfg);
    let evs = events(12, 20);
    let want = by_id(&factory().replay(&evs));

    // Two submissions that decode as Avro but break the documented limits:
    // one in the year -300,000 (a negative 1e16 ms), one of 1.5e15 vCPUs.
    let Event::JobSubmitted(template) = evs
        .iter()
        .find(|e| matches!(e, Event::JobSubmitted(_)))
        .unwrap()
        .clone()
    else {
        unreachable!()
    };
    let mut far = template.clone();
    far.job_id = "hostile-far".into();
    far.submitted_at = -10_000_000_000_000_000;
    far.deadline = None;
    let mut huge = template;
    huge.job_id = "hostile-huge".into();
    huge.vcpus = 1.5e15;
    let bad = [Event::JobSubmitted(far), Event::JobSubmitted(huge)];

    let half = evs.len() / 2;
    produce(&cfg, &evs[..half], 0, Pace::AsFastAsPossible);
    let topic = cfg.topics.job_submission();
    let p = prescale::io::kafka::publish::Publisher::new(&cfg).unwrap();
    for ev in &bad {
        let bytes = encode_event(ev).unwrap();
        p.send(&topic, ev.key().as_bytes(), &bytes, &[], None)
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    produce(&cfg, &evs[half..], half as u64, Pace::AsFastAsPossible);

    let svc = spawn_service(&cfg, "hostile", Duration::from_millis(1000));
    let report = svc.handle.join().unwrap();
    assert_eq!(report.dead_letters, 2);
    assert_eq!(report.events, evs.len() as u64);
    assert_same(&distinct(&read_commands(&cfg)), &want);

    // Both dead letters, each with the field and the reason.
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(&cfg, None)
        .create()
        .unwrap();
    let dlq = cfg.topics.dlq(&topic);
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&dlq, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let mut errors = Vec::new();
    while errors.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "dead letters missing: {errors:?}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let h: BTreeMap<String, String> = m
                .headers()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or(&[])).to_string(),
                    )
                })
                .collect();
            assert_eq!(h[headers::DLQ_TOPIC], topic);
            errors.push(h[headers::DLQ_ERROR].clone());
        }
    }
    errors.sort();
    assert!(
        errors[0].contains("JobSubmitted: field `submitted_at`")
            && errors[0].contains("outside the accepted window"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("JobSubmitted: field `vcpus`") && errors[1].contains("above the limit"),
        "{errors:?}"
    );
}
