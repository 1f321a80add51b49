//! Spot signals through a real broker (tansu via scripts/kafka.sh): the
//! service reads the `spot-signal` topic with the other inputs (the
//! commands are those of the file replay of the same input), and a signal
//! that decodes but says nonsense goes to the topic's dead-letter twin with
//! the record and field named.

mod kafka_support;

use kafka_support::*;
use prescale::events::avro::encode_event;
use prescale::events::{Event, SpotSignal, SpotSignalKind};
use prescale::io::kafka::codec::headers;
use prescale::io::kafka::produce::Pace;
use std::time::Duration;

#[test]
fn spot_signals_are_read_and_nonsense_is_dead_lettered() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "spotsig", state.path());
    create_topics(&cfg);
    let mut evs = events(12, 20);
    let mid = evs.len() / 2;
    let signal = SpotSignal {
        at: evs[mid].time(),
        kind: SpotSignalKind::InterruptionWarning,
        region: "us-east-1".into(),
        zone: Some("us-east-1a".into()),
        instance_type: "c5.xlarge".into(),
        instance_id: Some("i-0b662ef9931388ba0".into()),
        count: 1,
    };
    evs.insert(mid, Event::SpotSignal(signal.clone()));
    let want = by_id(&factory().replay(&evs));
    produce(&cfg, &evs, 0, Pace::AsFastAsPossible);

    // Valid Avro, but a signal of no instance.
    let topic = cfg.topics.spot_signal();
    let nonsense = encode_event(&Event::SpotSignal(SpotSignal { count: 0, ..signal })).unwrap();
    let p = prescale::io::kafka::publish::Publisher::new(&cfg).unwrap();
    p.send(&topic, b"c5.xlarge", &nonsense, &[], None).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();

    let svc = spawn_service(&cfg, "spotsig", Duration::from_millis(1000));
    let report = svc.handle.join().unwrap();
    assert_eq!(report.dead_letters, 1);
    assert_eq!(report.events, evs.len() as u64);
    assert_same(&distinct(&read_commands(&cfg)), &want);

    // Keyed like the signal: any of the topic's three partitions.
    let (payload, h) = first_dead_letter(&cfg, &topic, 3);
    assert_eq!(payload, nonsense);
    let error = &h[headers::DLQ_ERROR];
    assert!(
        error.contains("SpotSignal: field `count`: must be >= 1, got 0"),
        "{error}"
    );
}
