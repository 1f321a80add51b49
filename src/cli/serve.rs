//! `prescale serve`: the HTTP API over a state built from events files.

use anyhow::{bail, Context};
use clap::Args;
use prescale::api::{self, AppState, ServiceState};
use prescale::forecast::{load_or_fallback, Ets, Forecaster};
use prescale::import::events_file::read_events;
use prescale::policy::PolicyFile;
use prescale::pricing::Catalog;
use prescale::state::StateConfig;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Events file(s) to build the state from (jobs, prices, budgets);
    /// repeatable. Events are applied in event-time order.
    #[arg(long = "events")]
    pub events: Vec<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the bound address is
    /// printed on stdout as `listening on http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Policy file (TOML, see examples/policy.toml). Invalid files stop here.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Instance catalogue CSV (default: the bundled one).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// LSTM checkpoint; falls back to ETS when absent or unusable.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Bearer token clients must send.
    #[arg(long, env = "PRESCALE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve without authentication (local experiments only).
    #[arg(long)]
    pub no_auth: bool,
    /// Largest accepted request body, bytes.
    #[arg(long, default_value_t = api::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Skip (and count) undecodable records in the events files.
    #[arg(long)]
    pub skip_bad: bool,
    /// Seconds a client has to send a request's headers (and the longest a
    /// keep-alive connection may sit idle); slower clients are dropped.
    #[arg(long, default_value_t = 10, value_parser = super::values::positive_secs)]
    pub header_timeout_s: i64,
    /// Seconds a request has to complete, its body included (408 after).
    #[arg(long, default_value_t = 30, value_parser = super::values::positive_secs)]
    pub request_timeout_s: i64,
    /// Connections served at once; more are closed on accept.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    // Dropped slow clients are logged (warn) on stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let token = a.token.filter(|t| !t.trim().is_empty());
    if token.is_none() && !a.no_auth {
        bail!("no API token: pass --token or set PRESCALE_API_TOKEN (or --no-auth for local experiments)");
    }
    let policy = match &a.policy {
        Some(p) => PolicyFile::load(p)?,
        None => PolicyFile::default(),
    };
    let catalog = Arc::new(match &a.catalog {
        Some(p) => Catalog::load(p)?,
        None => Catalog::bundled(),
    });
    let cfg = StateConfig::default();
    let forecaster: Arc<dyn Forecaster> = match &a.model {
        Some(p) => {
            let (f, err) = load_or_fallback(p, cfg.bucket_ms, 12);
            if let Some(e) = err {
                eprintln!(
                    "model {}: {e}; using the statistical forecaster",
                    p.display()
                );
            }
            Arc::new(f)
        }
        None => Arc::new(Ets::default()),
    };
    let mut events = Vec::new();
    for path in &a.events {
        let d = read_events(path, a.skip_bad)
            .with_context(|| format!("reading events file {}", path.display()))?;
        if !d.bad.is_empty() {
            eprintln!("{}: skipped {} bad record(s)", path.display(), d.bad.len());
        }
        events.extend(d.events);
    }
    events.sort_by_key(|e| e.time());
    let mut state = ServiceState::new(catalog, policy, cfg);
    let mut rejected = 0u64;
    for ev in &events {
        if state.apply(ev).is_err() {
            rejected += 1;
        }
    }
    eprintln!(
        "state: {} events, {} environment(s), {} price pool(s), {} budget account(s), {} rejected",
        state.events_applied,
        state.demand.environments().len(),
        state.book.pools(),
        state.ledger.accounts.len(),
        rejected
    );
    let app = Arc::new(AppState::new(state, forecaster, token));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        let limits = api::ServeLimits {
            header_read_timeout: std::time::Duration::from_secs(a.header_timeout_s as u64),
            request_timeout: std::time::Duration::from_secs(a.request_timeout_s as u64),
            max_connections: a.max_connections as usize,
        };
        api::serve_with_limits(listener, api::router(app, a.body_limit), limits).await?;
        Ok(())
    })
}
