//! A plain rdkafka group member, no prescale code: joins `GROUP` on `TOPIC`
//! at `BROKERS` and prints every assignment change (with seconds since its
//! start) and how many messages it read per partition, so a broker's group
//! coordinator can be watched alone. The reproduction of a lost member that
//! is never replaced (docs/service.md, "A lost instance"):
//!
//! ```text
//! cargo run --example group_member -- 127.0.0.1:19692 g1 t1 a & A=$!
//! cargo run --example group_member -- 127.0.0.1:19692 g1 t1 b & B=$!
//! sleep 15; kill -9 $A     # b should be given a's partitions within the
//!                          # session timeout (10 s here)
//! ```
//!
//! Optional 5th argument: `session.timeout.ms` (default 10000); 6th:
//! `group.instance.id` (static membership).

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Ctx {
    name: String,
    start: Instant,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let t = self.start.elapsed().as_secs_f64();
        match r {
            Rebalance::Assign(tpl) => {
                let ps: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                println!("{t:7.2}s {}: assigned {:?}", self.name, ps);
            }
            Rebalance::Revoke(_) => println!("{t:7.2}s {}: revoked", self.name),
            Rebalance::Error(e) => println!("{t:7.2}s {}: rebalance error {e}", self.name),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: group_member BROKERS GROUP TOPIC NAME [SESSION_MS] [INSTANCE_ID]");
        std::process::exit(2);
    }
    let (brokers, group, topic, name) = (&args[1], &args[2], &args[3], &args[4]);
    let session = args.get(5).map_or("10000", String::as_str);
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("session.timeout.ms", session)
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "30000")
        .set("partition.assignment.strategy", "range")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("fetch.wait.max.ms", "10");
    if let Some(id) = args.get(6) {
        cfg.set("group.instance.id", id);
    }
    let start = Instant::now();
    let c: BaseConsumer<Ctx> = cfg
        .create_with_context(Ctx {
            name: name.clone(),
            start,
        })
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut read: BTreeMap<i32, u64> = BTreeMap::new();
    let mut last = Instant::now();
    loop {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            *read.entry(m.partition()).or_default() += 1;
        }
        if last.elapsed() >= Duration::from_secs(5) {
            println!(
                "{:7.2}s {name}: read per partition {read:?}",
                start.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    }
}
