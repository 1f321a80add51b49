//! `prescale run`: the live service. Consumes the input topics in a consumer
//! group, feeds the same engine the backtest uses, publishes commands, and
//! checkpoints state with the offsets it reflects.

use anyhow::Context;
use prescale::api::{AllocationHook, AppState, LiveEngine};
use prescale::forecast::Forecaster;
use prescale::io::kafka::client::ensure_topics;
use prescale::io::kafka::config::{parse_property, Framing, KafkaConfig, Overrides};
use prescale::io::kafka::directory::{self, Directory, DirectoryConfig};
use prescale::io::kafka::extras::{ExtrasOverrides, ServiceExtras};
use prescale::io::kafka::observe::ObservingFactory;
use prescale::io::kafka::produce::publish_allocation;
use prescale::io::kafka::publish::Publisher;
use prescale::io::kafka::service::{self, BrainFactory, Control, RunOptions, Stats};
use prescale::store::StoreWriter;
use prescale::wiring::{engine_factory, DecisionCore};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Connection flags shared by `run`, `produce`, `tail` and `bench kafka`.
/// Precedence: `--config` file < `PRESCALE_KAFKA_*` environment < flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// TOML configuration file (see docs/service.md).
    #[arg(long, env = "PRESCALE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bootstrap servers (host:port,...).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group of the service instances.
    #[arg(long)]
    pub group: Option<String>,
    /// Prefix for every default topic name.
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Message framing: plain Avro or Confluent Schema Registry.
    #[arg(long, value_enum)]
    pub framing: Option<FramingArg>,
    /// Snapshot directory.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Snapshot interval in milliseconds.
    #[arg(long)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Grace (ms) an event waits for partitions that look idle before the
    /// engine sees it (0: lowest latency; raise for replay-identical order of
    /// live input across partitions).
    #[arg(long)]
    pub merge_idle_ms: Option<u64>,
    /// Reader threads that take and decode the input partitions' messages
    /// off the loop thread (0: the loop does it; default: 0 on two cores or
    /// fewer, 1 on three or four, 2 above). Also `decode_threads` in the
    /// file, `PRESCALE_KAFKA_DECODE_THREADS`.
    #[arg(long, value_name = "N")]
    pub decode_threads: Option<u32>,
    /// librdkafka property, as kcat takes it: -X security.protocol=SASL_SSL
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub property: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FramingArg {
    Plain,
    Confluent,
}

impl KafkaArgs {
    pub fn load(&self) -> anyhow::Result<KafkaConfig> {
        let mut ov = Overrides {
            brokers: self.brokers.clone(),
            group_id: self.group.clone(),
            framing: self.framing.map(|f| match f {
                FramingArg::Plain => Framing::Plain,
                FramingArg::Confluent => Framing::Confluent,
            }),
            checkpoint_dir: self.checkpoint_dir.clone(),
            checkpoint_interval_ms: self.checkpoint_interval_ms,
            merge_idle_ms: self.merge_idle_ms,
            decode_threads: self.decode_threads,
            ..Default::default()
        };
        if let Some(p) = &self.topic_prefix {
            ov.topics.insert("prefix".into(), p.clone());
        }
        for x in &self.property {
            let (k, v) = parse_property(x)?;
            ov.properties.insert(k, v);
        }
        Ok(KafkaConfig::load(self.config.as_deref(), &ov)?)
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// On-demand catalogue CSV; default: the backtest's bundled one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Policy file (TOML, see examples/policy.toml); default: built-in
    /// defaults. Invalid files stop the service at start with file, key and reason.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Instance name (defaults to host-pid).
    #[arg(long)]
    pub instance: Option<String>,
    /// Create the topics first (tansu does not auto-create them).
    #[arg(long)]
    pub create_topics: bool,
    /// Stop once all input is read and nothing arrived for this many ms,
    /// finishing the last buckets as a file replay does (replays, tests).
    #[arg(long)]
    pub exit_when_idle_ms: Option<u64>,
    /// Write the run report (JSON) here as well as to stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Serve Prometheus `/metrics` (events in by topic, consumer lag, DLQ,
    /// decisions, forecast error, spend, store drops) on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Prediction store (InfluxDB 2 write API) base URL; also `[store] url`
    /// in the config file or `PRESCALE_INFLUX_URL`. Unset: no store.
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
    /// Store organisation (`[store] org`, `PRESCALE_INFLUX_ORG`).
    #[arg(long)]
    pub store_org: Option<String>,
    /// Store bucket (`[store] bucket`, `PRESCALE_INFLUX_BUCKET`).
    #[arg(long)]
    pub store_bucket: Option<String>,
    /// Store API token (`[store] token`, `PRESCALE_INFLUX_TOKEN`).
    #[arg(long)]
    pub store_token: Option<String>,
    /// Retrain the LSTM on the service's history every this many seconds
    /// and hot-swap it in (`[retrain] interval_s`; 0, the default, is off).
    #[arg(long, value_name = "SECONDS")]
    pub retrain_interval_s: Option<u64>,
    /// Where retrained checkpoints and model cards go (`[retrain] models_dir`).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Serve the HTTP API of `prescale serve` (same endpoints, token and
    /// limits) on this address, answered by this instance's live engine: an
    /// environment another instance holds is answered 404 naming it and its
    /// API address (from the group's API directory topic);
    /// `/allocate_budget` publishes on the budget-allocation topic (202).
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<std::net::SocketAddr>,
    /// The API address other instances name for this one
    /// (default: `http://` and the bound address, with the host name in
    /// place of an unspecified one such as 0.0.0.0).
    #[arg(long, value_name = "URL", requires = "api_listen")]
    pub api_advertise: Option<String>,
    #[command(flatten)]
    pub api: super::serve::ApiAccessArgs,
}

impl RunArgs {
    fn extras(&self) -> anyhow::Result<ServiceExtras> {
        Ok(ServiceExtras::load(
            self.kafka.config.as_deref(),
            &ExtrasOverrides {
                store_url: self.store_url.clone(),
                store_org: self.store_org.clone(),
                store_bucket: self.store_bucket.clone(),
                store_token: self.store_token.clone(),
                retrain_interval_s: self.retrain_interval_s,
                models_dir: self.models_dir.clone(),
            },
        )?)
    }
}

pub fn run(args: RunArgs, core: DecisionCore) -> anyhow::Result<()> {
    // Logs (RUST_LOG, default info; librdkafka's own log lines included) and
    // OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _telemetry = prescale::telemetry::init(&prescale::telemetry::TelemetryConfig::from_env()?)?;
    let cfg = args.kafka.load()?;
    let extras = args.extras()?;
    let factory = engine_factory(args.catalog.as_deref(), args.policy.as_deref(), core)?;
    let instance = args
        .instance
        .clone()
        .unwrap_or_else(|| format!("prescale-{}", std::process::id()));
    let opts = RunOptions {
        instance,
        exit_when_idle: args.exit_when_idle_ms.map(Duration::from_millis),
        ..Default::default()
    };
    // Checked before anything starts: an API without a token is refused.
    let api_token = args.api.token();
    if let (Some(_), Err(e)) = (args.api_listen, &api_token) {
        anyhow::bail!("--api-listen: {e}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        if args.create_topics {
            let names: Vec<(String, i32)> = cfg
                .topics
                .all()
                .into_iter()
                .map(|t| (t, cfg.partitions))
                .collect();
            ensure_topics(&cfg, &names)
                .await
                .context("creating topics")?;
        }
        if let Some(addr) = args.metrics_listen {
            let (bound, _task) =
                prescale::telemetry::http::serve_metrics(addr, prescale::telemetry::metrics())
                    .await
                    .with_context(|| format!("serving /metrics on {addr}"))?;
            eprintln!("metrics on http://{bound}/metrics");
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let signals = tx.clone();
        // SIGINT/SIGTERM: checkpoint, then stop.
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = signals.send(Control::Stop).await;
        });
        let metrics = prescale::telemetry::metrics();
        let (store, writer) = match &extras.store {
            Some(sc) => {
                let (h, w) = StoreWriter::spawn(sc.clone(), metrics)
                    .context("configuring the prediction store")?;
                eprintln!("writing predictions to {} (bucket {})", sc.url, sc.bucket);
                (Some(h), Some(w))
            }
            None => (None, None),
        };
        let observed = ObservingFactory::new(factory, store, &extras.retrain, metrics);
        let stats = Arc::new(Stats::default());
        let (brains, directory): (Box<dyn BrainFactory>, _) = match (args.api_listen, api_token) {
            (Some(addr), Ok(token)) => {
                let (b, d) =
                    serve_live_api(&args, &cfg, &opts, addr, token, observed, &tx, &stats).await?;
                (b, Some(d))
            }
            (Some(_), Err(e)) => return Err(e),
            (None, _) => (Box::new(observed), None),
        };
        let report = service::run(&cfg, brains.as_ref(), &opts, rx, stats)
            .await
            .map_err(|e| {
                let hint = e.retry();
                anyhow::Error::new(e).context(format!("prescale run ({hint})"))
            });
        if let Some(d) = directory {
            d.leave().await;
        }
        // Flush what the store writer holds (bounded), whatever the outcome.
        let store_stats = match writer {
            Some(w) => Some(w.shutdown(Duration::from_secs(10)).await),
            None => None,
        };
        anyhow::Ok((report?, store_stats))
    })?;
    let (report, store_stats) = report;
    let mut json = serde_json::to_value(&report)?;
    if let (Some(s), Some(obj)) = (store_stats, json.as_object_mut()) {
        obj.insert(
            "store".into(),
            serde_json::json!({
                "accepted": s.accepted,
                "written": s.written,
                "dropped_buffer_full": s.dropped_buffer_full,
                "dropped_write_failed": s.dropped_write_failed,
            }),
        );
    }
    let json = serde_json::to_string(&json)?;
    println!("{json}");
    if let Some(p) = &args.report {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// `--api-listen`: serve the HTTP API from this instance's live engine
/// (see `prescale::api::live`) and take part in the group's API directory;
/// returns the brain factory to run the service with (the engine's,
/// recording what the API keeps beside it) and the directory's task.
#[allow(clippy::too_many_arguments)]
async fn serve_live_api(
    args: &RunArgs,
    cfg: &KafkaConfig,
    opts: &RunOptions,
    addr: std::net::SocketAddr,
    token: Option<String>,
    observed: ObservingFactory,
    control: &tokio::sync::mpsc::Sender<Control>,
    stats: &Arc<Stats>,
) -> anyhow::Result<(Box<dyn BrainFactory>, DirectoryTask)> {
    let forecaster: Arc<dyn Forecaster> = Arc::new(observed.model().clone());
    let dir = Arc::new(Directory::new(&cfg.group_id, &opts.instance));
    let (live, served) = LiveEngine::new(
        observed,
        control.clone(),
        stats.clone(),
        &opts.instance,
        &cfg.group_id,
    );
    let live = live.with_directory(dir.clone());
    let probe = live.probe();
    let publisher = Arc::new(Publisher::new(cfg).context("the API's allocation publisher")?);
    let pcfg = cfg.clone();
    let hook: AllocationHook =
        Arc::new(move |a| publish_allocation(&pcfg, &publisher, a).map_err(|e| e.to_string()));
    let policy = prescale::wiring::load_policy(args.policy.as_deref())?;
    let app = Arc::new(AppState::live(live, policy, forecaster, token, hook));
    let (bound, _server) = args.api.serve(addr, app).await?;
    let dcfg = DirectoryConfig {
        topic: cfg.topics.api_directory(),
        instance: opts.instance.clone(),
        group: cfg.group_id.clone(),
        api: Some(
            args.api_advertise
                .clone()
                .unwrap_or_else(|| advertised(bound)),
        ),
    };
    Ok((
        Box::new(served),
        DirectoryTask::spawn(cfg.clone(), dcfg, dir, probe),
    ))
}

/// `http://host:port` for a bound address; an unspecified IP (0.0.0.0, ::)
/// is replaced by this host's name, which other hosts can resolve.
fn advertised(bound: std::net::SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return format!("http://{bound}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("http://{host}:{}", bound.port())
}

/// The API directory's publishing and reading task
/// (`prescale::io::kafka::directory`); it does not stop the service when
/// it fails (the API then names no other holder), it says why.
struct DirectoryTask {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DirectoryTask {
    fn spawn(
        cfg: KafkaConfig,
        dcfg: DirectoryConfig,
        dir: Arc<Directory>,
        probe: prescale::api::EnvironmentsProbe,
    ) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let envs = || {
                let p = probe.clone();
                async move { p.environments().await }
            };
            if let Err(e) = directory::run(&cfg, &dcfg, &dir, envs, stopped).await {
                tracing::warn!(
                    error = %e,
                    topic = %dcfg.topic,
                    "api directory stopped: requests for other instances' environments will not name them ({})",
                    e.retry()
                );
            }
        });
        Self { stop, task }
    }

    /// Publish that this instance left (bounded wait).
    async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
