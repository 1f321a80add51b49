//! Helpers of the tests that run the real `prescale run` binary: a slice of
//! the bundled sample trace with run-unique environment names (so repeated
//! runs against one time-series server never mix), spot prices the planner
//! can buy at, and the binary's command line for a test's topics.
#![allow(dead_code)]

use prescale::events::{Event, Market, PriceTick};
use prescale::import::swf::{read_swf, SwfOptions};
use prescale::io::kafka::KafkaConfig;
use std::path::Path;
use std::process::Command;

pub const HOUR: i64 = 3_600_000;

/// The first `hours` of the bundled RICC sample (submissions and the
/// completions that fall inside the window), environments renamed
/// `<queue>-<tag>`, plus hourly SPOT prices for two instance types in a zone
/// named after `tag`, starting one hour before the first job.
pub fn sample_slice(hours: i64, tag: &str) -> Vec<Event> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/ricc-2010-2-excerpt.swf.gz");
    let imp = read_swf(
        &path,
        &SwfOptions {
            max_jobs: Some(2_000),
            ..Default::default()
        },
    )
    .expect("bundled sample imports");
    let t0 = imp.events.first().expect("sample has events").time();
    let end = t0 + hours * HOUR;
    let mut evs: Vec<Event> = imp
        .events
        .into_iter()
        .filter(|e| e.time() < end)
        .map(|mut e| {
            match &mut e {
                Event::JobSubmitted(j) => {
                    j.compute_environment =
                        compact_str::format_compact!("{}-{tag}", j.compute_environment)
                }
                Event::JobCompleted(c) => {
                    c.compute_environment =
                        compact_str::format_compact!("{}-{tag}", c.compute_environment)
                }
                _ => {}
            }
            e
        })
        .collect();
    let mut t = t0 - HOUR;
    let mut k = 0;
    while t < end {
        for (ty, base) in [("m5.4xlarge", 0.30), ("c5.9xlarge", 0.55)] {
            evs.push(Event::PriceTick(PriceTick {
                at: t,
                provider: "aws".into(),
                region: "us-east-1".into(),
                zone: Some(format!("use1-{tag}").into()),
                instance_type: ty.into(),
                market: Market::Spot,
                // few decimals: exact through the store's float encoding
                usd_per_hour: base + 0.01 * (k % 5) as f64,
            }));
        }
        t += HOUR;
        k += 1;
    }
    evs.sort_by_key(|e| e.time());
    evs
}

/// `prescale run` for `cfg`'s brokers, group and topics (no config file,
/// no store or OTLP from the caller's environment).
pub fn prescale_run(cfg: &KafkaConfig, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prescale"));
    c.args(["run", "--brokers", &cfg.brokers, "--group", &cfg.group_id])
        .args(["--topic-prefix", &cfg.topics.prefix])
        .arg("--checkpoint-dir")
        .arg(state)
        .args(["--checkpoint-interval-ms", "500"])
        .args(["-X", "fetch.wait.max.ms=10"])
        .env_remove("PRESCALE_CONFIG")
        .env_remove("PRESCALE_INFLUX_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "warn");
    c
}

/// A run-unique tag.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}{}x{}", std::process::id(), nanos % 1_000_000_000)
}
