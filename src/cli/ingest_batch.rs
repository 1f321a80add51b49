//! `prescale ingest batch`: AWS Batch job events in, prescale input events out (an events file
//! or the Kafka input topics). The mapping itself lives in `prescale::io::aws::ingest`.

use super::run::KafkaArgs;
use anyhow::Context;
use prescale::events::Event;
use prescale::import::events_file::{EventsWriter, RecordedMessage};
use prescale::io::aws::config::Mapping;
use prescale::io::aws::ingest::{from_detail, BadRecord, Ingest, SeenSet};
use prescale::io::aws::{sdk_config, AwsConnect};
use prescale::io::kafka::produce::{publish_messages, Pace};
use prescale::io::kafka::publish::Publisher;
use prescale::io::kafka::KafkaConfig;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Read AWS Batch job state changes and publish each job's submission and completion once.
///
/// SUBMITTED / PENDING / RUNNABLE / STARTING / RUNNING become `JobSubmitted`, SUCCEEDED / FAILED
/// `JobCompleted` (a job first seen finished gets both). Priority, deadline, budget, elasticity,
/// project and user come from job tags (`prescale:priority`, ...; see docs/actuators.md).
/// Events already emitted (kept in --seen) are skipped, so re-delivered or re-polled events
/// produce nothing new.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["events", "sqs_queue_url", "poll"])))]
pub struct BatchArgs {
    /// EventBridge events, one JSON object per line ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// SQS queue that an EventBridge rule for "Batch Job State Change" targets; messages are
    /// deleted once their events are delivered.
    #[arg(long, value_name = "URL")]
    pub sqs_queue_url: Option<String>,
    /// Poll ListJobs / DescribeJobs on this job queue (repeat for several).
    #[arg(long, value_name = "JOB_QUEUE")]
    pub poll: Vec<String>,
    /// Seconds between polls.
    #[arg(long, default_value_t = 30)]
    pub poll_interval_s: u64,
    /// SQS / polling: stop after one pass (SQS: once a receive comes back empty).
    #[arg(long)]
    pub once: bool,
    /// SQS long-poll wait, seconds (0..=20).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(0..=20))]
    pub sqs_wait_s: i32,
    /// Mapping file (TOML): a job queue listed under [batch.ENV] gives environment ENV.
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,
    /// Emitted (job, transition) pairs, kept across runs.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "prescale-ingest-batch.seen"
    )]
    pub seen: PathBuf,
    /// Write an events file (Avro, as `prescale produce` reads) instead of publishing to Kafka.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Records that cannot be read (JSON lines with the reason).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "prescale-ingest-batch.dlq.jsonl"
    )]
    pub dead_letter: PathBuf,
    /// Another AWS endpoint (moto, LocalStack, a VPC endpoint).
    #[arg(long, env = "PRESCALE_AWS_ENDPOINT")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: the standard chain's).
    #[arg(long)]
    pub region: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Where new events go.
enum Sink {
    File(Box<EventsWriter<std::io::BufWriter<std::fs::File>>>),
    Kafka {
        cfg: Box<KafkaConfig>,
        publisher: Box<Publisher>,
        seq: u64,
    },
}

impl Sink {
    /// Deliver a batch (in event-time order); on return it is durable (flushed).
    fn deliver(&mut self, mut evs: Vec<Event>) -> anyhow::Result<()> {
        evs.sort_by_key(Event::time);
        match self {
            Sink::File(w) => {
                for e in &evs {
                    w.append(e)
                        .map_err(|e| anyhow::anyhow!("writing the events file: {e}"))?;
                }
            }
            Sink::Kafka {
                cfg,
                publisher,
                seq,
            } => {
                let msgs = evs
                    .iter()
                    .map(RecordedMessage::from_event)
                    .collect::<Result<Vec<_>, _>>()?;
                publish_messages(cfg, publisher, &msgs, *seq, Pace::AsFastAsPossible)?;
                publisher.flush(Duration::from_secs(60))?;
                *seq += msgs.len() as u64;
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if let Sink::File(w) = self {
            w.finish()?.flush()?;
        }
        Ok(())
    }
}

struct DeadLetters {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl DeadLetters {
    fn put(&mut self, e: &BadRecord) -> anyhow::Result<()> {
        tracing::warn!(record = %e.record, "bad record: {}", e.message);
        if self.file.is_none() {
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .with_context(|| format!("opening {}", self.path.display()))?,
            );
        }
        let line = serde_json::json!({"record": e.record, "error": e.message});
        writeln!(self.file.as_mut().expect("opened"), "{line}")?;
        Ok(())
    }
}

pub fn run(args: BatchArgs) -> anyhow::Result<()> {
    let _telemetry = prescale::telemetry::init(&prescale::telemetry::TelemetryConfig::from_env()?)?;
    let mapping = match &args.mapping {
        Some(p) => Mapping::load(p)?,
        None => Mapping::default(),
    };
    let seen = SeenSet::open(&args.seen)?;
    let mut ingest = Ingest::new(mapping, seen);
    let mut sink = match &args.out {
        Some(p) => Sink::File(Box::new(EventsWriter::create(p)?)),
        None => {
            let cfg = args.kafka.load()?;
            Sink::Kafka {
                publisher: Box::new(Publisher::new(&cfg)?),
                cfg: Box::new(cfg),
                seq: 0,
            }
        }
    };
    let mut dlq = DeadLetters {
        path: args.dead_letter.clone(),
        file: None,
    };
    if let Some(path) = &args.events {
        from_lines(path, &mut ingest, &mut sink, &mut dlq)?;
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(from_aws(&args, &mut ingest, &mut sink, &mut dlq))?;
    }
    sink.finish()?;
    println!("{}", serde_json::to_string(&ingest.stats)?);
    Ok(())
}

/// A file or stdin of EventBridge lines: read all, deliver once, then remember them as seen.
fn from_lines(
    path: &PathBuf,
    ingest: &mut Ingest,
    sink: &mut Sink,
    dlq: &mut DeadLetters,
) -> anyhow::Result<()> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = format!("{} line {}", path.display(), i + 1);
        match ingest.observe_line(&line, &record) {
            Ok(evs) => out.extend(evs),
            Err(e) => dlq.put(&e)?,
        }
    }
    sink.deliver(out)?;
    ingest.seen.commit()?;
    Ok(())
}

async fn from_aws(
    args: &BatchArgs,
    ingest: &mut Ingest,
    sink: &mut Sink,
    dlq: &mut DeadLetters,
) -> anyhow::Result<()> {
    let sdk = sdk_config(&AwsConnect {
        endpoint_url: args.endpoint_url.clone(),
        region: args.region.clone(),
        max_attempts: 5,
    })
    .await;
    let region = sdk.region().map(|r| r.to_string());
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let batch = aws_sdk_batch::Client::new(&sdk);
    let mut stop = Box::pin(shutdown());
    let mut tick = tokio::time::interval(Duration::from_secs(args.poll_interval_s.max(1)));
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick(), if args.sqs_queue_url.is_none() => {
                poll_once(&batch, &args.poll, region.as_deref(), ingest, sink, dlq).await?;
                if args.once { return Ok(()); }
            }
            got = receive(&sqs, args), if args.sqs_queue_url.is_some() => {
                let msgs = got?;
                let empty = msgs.is_empty();
                sqs_batch(&sqs, args, msgs, ingest, sink, dlq).await?;
                if empty && args.once { return Ok(()); }
            }
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn receive(
    sqs: &aws_sdk_sqs::Client,
    args: &BatchArgs,
) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
    let url = args.sqs_queue_url.as_deref().unwrap_or_default();
    let r = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(args.sqs_wait_s)
        .send()
        .await
        .with_context(|| format!("ReceiveMessage {url}"))?;
    Ok(r.messages().to_vec())
}

/// Deliver one SQS batch's events, remember them, then delete the messages (in that order, so
/// a crash repeats a message rather than losing it; the seen-set drops the repeat).
async fn sqs_batch(
    sqs: &aws_sdk_sqs::Client,
    args: &BatchArgs,
    msgs: Vec<aws_sdk_sqs::types::Message>,
    ingest: &mut Ingest,
    sink: &mut Sink,
    dlq: &mut DeadLetters,
) -> anyhow::Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let url = args.sqs_queue_url.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for m in &msgs {
        let record = format!("SQS message {}", m.message_id().unwrap_or("?"));
        match ingest.observe_line(m.body().unwrap_or(""), &record) {
            Ok(evs) => out.extend(evs),
            Err(e) => dlq.put(&e)?,
        }
    }
    sink.deliver(out)?;
    ingest.seen.commit()?;
    let mut del = sqs.delete_message_batch().queue_url(url);
    for (i, m) in msgs.iter().enumerate() {
        del = del.entries(
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .set_receipt_handle(m.receipt_handle().map(str::to_string))
                .build()?,
        );
    }
    del.send()
        .await
        .with_context(|| format!("DeleteMessageBatch {url}"))?;
    Ok(())
}

const LISTED: [aws_sdk_batch::types::JobStatus; 7] = {
    use aws_sdk_batch::types::JobStatus as S;
    [
        S::Submitted,
        S::Pending,
        S::Runnable,
        S::Starting,
        S::Running,
        S::Succeeded,
        S::Failed,
    ]
};

/// One pass over the queues: list every job, describe those with a transition not yet emitted.
async fn poll_once(
    batch: &aws_sdk_batch::Client,
    queues: &[String],
    region: Option<&str>,
    ingest: &mut Ingest,
    sink: &mut Sink,
    dlq: &mut DeadLetters,
) -> anyhow::Result<()> {
    let mut ids: Vec<String> = Vec::new();
    for q in queues {
        for status in LISTED.iter() {
            let terminal = matches!(
                status,
                aws_sdk_batch::types::JobStatus::Succeeded
                    | aws_sdk_batch::types::JobStatus::Failed
            );
            let mut pages = batch
                .list_jobs()
                .job_queue(q)
                .job_status(status.clone())
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.with_context(|| format!("ListJobs {q} {}", status.as_str()))?;
                for j in page.job_summary_list() {
                    let id = j.job_id().unwrap_or_default();
                    let done = if terminal {
                        ingest.finished(id)
                    } else {
                        ingest.submitted(id)
                    };
                    if !done && !id.is_empty() {
                        ids.push(id.to_string());
                    }
                }
            }
        }
    }
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for chunk in ids.chunks(100) {
        let r = batch
            .describe_jobs()
            .set_jobs(Some(chunk.to_vec()))
            .send()
            .await
            .context("DescribeJobs")?;
        for j in r.jobs() {
            match ingest.observe(&from_detail(j, region)) {
                Ok(evs) => out.extend(evs),
                Err(e) => dlq.put(&e)?,
            }
        }
    }
    if out.is_empty() && ids.is_empty() {
        return Ok(());
    }
    sink.deliver(out)?;
    ingest.seen.commit()?;
    Ok(())
}
