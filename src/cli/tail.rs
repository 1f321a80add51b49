//! `prescale tail`: decode the command topics and print one JSON object per
//! line, for humans and shell pipelines (`| jq`).

use super::run::KafkaArgs;
use anyhow::Context;
use prescale::io::kafka::client::{caught_up, consumer_config, partitions_of};
use prescale::io::kafka::codec::decode_output;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Start at the oldest retained command (default: only new ones).
    #[arg(long)]
    pub from_beginning: bool,
    /// Exit once everything the topics held has been printed.
    #[arg(long)]
    pub exit_at_end: bool,
    /// Exit after printing this many commands.
    #[arg(long)]
    pub count: Option<u64>,
    /// Only scaling commands.
    #[arg(long, conflicts_with = "preemption_only")]
    pub scaling_only: bool,
    /// Only preemption commands.
    #[arg(long)]
    pub preemption_only: bool,
    /// Add topic, partition and offset around each command.
    #[arg(long)]
    pub with_position: bool,
}

pub fn run(args: TailArgs) -> anyhow::Result<()> {
    let cfg = args.kafka.load()?;
    let mut topics = Vec::new();
    if !args.preemption_only {
        topics.push((cfg.topics.scaling_command(), true));
    }
    if !args.scaling_only {
        topics.push((cfg.topics.preemption_command(), false));
    }
    let consumer: BaseConsumer = consumer_config(&cfg, None)
        .create()
        .context("creating consumer")?;
    let mut tpl = TopicPartitionList::new();
    let start = if args.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut parts = Vec::new();
    for (t, _) in &topics {
        for p in partitions_of(consumer.client(), t, Duration::from_secs(10))? {
            tpl.add_partition_offset(t, p, start)?;
            parts.push((t.clone(), p, None::<i64>));
        }
    }
    consumer.assign(&tpl)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut bad = 0u64;
    let started = Instant::now();
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let scaling = topics
                    .iter()
                    .find(|(t, _)| t == m.topic())
                    .map(|(_, s)| *s)
                    .unwrap_or(true);
                if let Some(e) = parts
                    .iter_mut()
                    .find(|(t, p, _)| t == m.topic() && *p == m.partition())
                {
                    e.2 = Some(m.offset() + 1);
                }
                match decode_output(&cfg, scaling, m.payload().unwrap_or(&[])) {
                    Ok(c) => {
                        let line = if args.with_position {
                            serde_json::json!({"topic": m.topic(), "partition": m.partition(), "offset": m.offset(), "command": c})
                        } else {
                            serde_json::to_value(&c)?
                        };
                        writeln!(out, "{line}")?;
                        printed += 1;
                    }
                    Err(e) => {
                        bad += 1;
                        eprintln!("{}/{}@{}: {e}", m.topic(), m.partition(), m.offset());
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {
                out.flush()?;
                // Fetches answer within fetch.wait.max.ms; give the first
                // ones a moment before trusting "caught up" on empty topics.
                if args.exit_at_end
                    && started.elapsed() > Duration::from_millis(300)
                    && parts
                        .iter()
                        .all(|(t, p, n)| caught_up(consumer.client(), t, *p, *n))
                {
                    break;
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
        }
    }
    out.flush()?;
    if bad > 0 {
        eprintln!("{bad} message(s) could not be decoded");
    }
    Ok(())
}
