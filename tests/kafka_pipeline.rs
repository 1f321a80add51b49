//! The pipelined read path (`decode_threads` ≥ 1: reader threads decode,
//! the loop merges) against a real broker: the same commands as the
//! inline path on the same input, a bad message dead-lettered the same
//! way, and a rebalance mid-stream. The other Kafka suites run either path
//! with `PRESCALE_KAFKA_DECODE_THREADS` (see `kafka_support::config`).

mod kafka_support;

use kafka_support::*;
use prescale::io::kafka::codec::headers;
use prescale::io::kafka::config::KafkaConfig;
use prescale::io::kafka::produce::Pace;
use prescale::io::kafka::publish::Publisher;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The same input, bad message included, on topics of `cfg`'s own.
fn produce_with_garbage(cfg: &KafkaConfig, evs: &[prescale::events::Event]) {
    let half = evs.len() / 2;
    produce(cfg, &evs[..half], 0, Pace::AsFastAsPossible);
    let p = Publisher::new(cfg).unwrap();
    p.send(
        &cfg.topics.job_submission(),
        b"ce-a",
        b"\x02\xff\xffnot avro at all",
        &[],
        None,
    )
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    produce(cfg, &evs[half..], half as u64, Pace::AsFastAsPossible);
}

/// The dead letters of the job-submission topic: payload and headers.
fn dead_letters(cfg: &KafkaConfig) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(cfg, None)
        .create()
        .unwrap();
    let dlq = cfg.topics.dlq(&cfg.topics.job_submission());
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&dlq, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    // One is expected; wait a little longer for any second one.
    while started.elapsed() < Duration::from_secs(20)
        && (out.is_empty() || started.elapsed() < Duration::from_secs(3))
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let h = m
                .headers()
                .unwrap()
                .iter()
                .map(|h| {
                    let v = String::from_utf8_lossy(h.value.unwrap_or(&[])).to_string();
                    (h.key.to_string(), v)
                })
                .collect();
            out.push((m.payload().unwrap_or(&[]).to_vec(), h));
        }
    }
    out
}

/// Inline and pipelined, each on its own copy of the input: the same
/// commands (those of the file replay), each published once, the same
/// counts, and the bad message dead-lettered once with the same error and
/// origin.
#[test]
fn pipelined_path_publishes_the_inline_paths_commands_and_dead_letters() {
    let broker = Broker::shared();
    let evs = events(30, 24);
    let want = by_id(&factory().replay(&evs));
    assert!(want.len() > 50, "input must make decisions");
    let mut results = Vec::new();
    for threads in [0, 2] {
        let state = tempfile::tempdir().unwrap();
        let mut cfg = config(broker, &format!("pipe{threads}"), state.path());
        cfg.decode_threads = Some(threads);
        create_topics(&cfg);
        produce_with_garbage(&cfg, &evs);
        let svc = spawn_service(&cfg, "solo", Duration::from_millis(1000));
        let report = svc.handle.join().unwrap();
        assert!(report.finished, "{threads} threads: {report:?}");
        assert_eq!(report.events, evs.len() as u64, "{threads} threads");
        assert_eq!(report.messages, evs.len() as u64 + 1, "{threads} threads");
        assert_eq!(report.dead_letters, 1, "{threads} threads");
        let published = read_commands(&cfg);
        assert_eq!(published.len(), want.len(), "{threads} threads: once each");
        let got = distinct(&published);
        assert_same(&got, &want);
        let dead = dead_letters(&cfg);
        assert_eq!(dead.len(), 1, "{threads} threads: {dead:?}");
        let (payload, mut h) = dead.into_iter().next().unwrap();
        assert_eq!(payload, b"\x02\xff\xffnot avro at all");
        assert_eq!(
            h.remove(headers::DLQ_TOPIC).as_deref(),
            Some(cfg.topics.job_submission().as_str())
        );
        results.push((got, h));
    }
    // Same error, partition and offset on both paths.
    assert_eq!(results[0].1, results[1].1);
    assert!(
        results[1].1[headers::DLQ_ERROR].contains("JobSubmitted: field `job_id`"),
        "{:?}",
        results[1].1
    );
    assert_eq!(results[0].0, results[1].0);
}

/// With reader threads on both instances, a second instance joining
/// mid-stream (the first is revoked with events in its pipes and assigned
/// again) and leaving again: the group publishes exactly the file replay's
/// commands, the first instance restoring its snapshot of the whole set.
#[test]
fn pipelined_path_survives_rebalances_mid_stream() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config(broker, "piperebal", state.path());
    cfg.decode_threads = Some(2);
    create_topics(&cfg);
    let evs = events(30, 24);
    let want = by_id(&factory().replay(&evs));
    let third = evs.len() / 3;
    produce(&cfg, &evs[..third], 0, Pace::AsFastAsPossible);
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !ok() {
            assert!(started.elapsed() < Duration::from_secs(40), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let a = spawn_service(&cfg, "a", Duration::from_secs(8));
    wait("a applied some input", &|| {
        a.stats.events.load(Ordering::Relaxed) > 0
    });
    // More input while b joins: a is revoked while reading.
    let more = std::thread::spawn({
        let (cfg, evs) = (cfg.clone(), evs.clone());
        move || {
            produce(
                &cfg,
                &evs[third..2 * third],
                third as u64,
                Pace::Rate(2_000.0),
            )
        }
    });
    let b = spawn_service(&cfg, "b", Duration::from_secs(60));
    wait("the group split", &|| {
        let (x, y) = (
            a.stats.assigned.load(Ordering::Relaxed),
            b.stats.assigned.load(Ordering::Relaxed),
        );
        x > 0 && y > 0 && x + y == 9
    });
    more.join().unwrap();
    b.control
        .blocking_send(prescale::io::kafka::service::Control::Stop)
        .unwrap();
    let rb = b.handle.join().unwrap();
    produce(
        &cfg,
        &evs[2 * third..],
        2 * third as u64,
        Pace::AsFastAsPossible,
    );
    let ra = a.handle.join().unwrap();
    assert!(ra.finished, "{ra:?}");
    assert!(ra.rebalances >= 3, "{ra:?} {rb:?}");
    assert_same(&distinct(&read_commands(&cfg)), &want);
}
