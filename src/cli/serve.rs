//! `prescale serve`: the HTTP API over a decision engine fed from events
//! files (the engine `prescale run` runs: same event handling, duplicate
//! and conflict checks, budget admissions and ledger).

use anyhow::{bail, Context};
use clap::Args;
use prescale::api::{self, AppState, ServiceState};
use prescale::forecast::{Ets, Forecaster};
use prescale::import::events_file::read_events;
use prescale::model_file::load_or_fallback;
use prescale::state::StateConfig;
use prescale::wiring::{load_catalog, load_policy, serve_engine};
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
    /// Skip (and count) undecodable records in the events files.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub access: ApiAccessArgs,
}

/// Who may call the API and what a client is allowed: shared by `prescale
/// serve` and `prescale run --api-listen`, so both serve the endpoints alike.
#[derive(Debug, Clone, Args)]
pub struct ApiAccessArgs {
    /// Bearer token clients must send.
    #[arg(long, env = "PRESCALE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve without authentication (local experiments only).
    #[arg(long)]
    pub no_auth: bool,
    /// Largest accepted request body, bytes.
    #[arg(long, default_value_t = api::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
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

impl ApiAccessArgs {
    /// The token clients must send; an error when there is none and
    /// `--no-auth` was not given.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let token = self.token.clone().filter(|t| !t.trim().is_empty());
        if token.is_none() && !self.no_auth {
            bail!("no API token: pass --token or set PRESCALE_API_TOKEN (or --no-auth for local experiments)");
        }
        Ok(token)
    }

    pub fn limits(&self) -> api::ServeLimits {
        api::ServeLimits {
            header_read_timeout: std::time::Duration::from_secs(self.header_timeout_s as u64),
            request_timeout: std::time::Duration::from_secs(self.request_timeout_s as u64),
            max_connections: self.max_connections as usize,
        }
    }

    /// Bind `listen` and serve `app` there on the current runtime: the
    /// bound address is printed on stdout as `listening on http://ADDR`
    /// (port 0 picks a free one).
    pub async fn serve(
        &self,
        listen: SocketAddr,
        app: Arc<AppState>,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        let router = api::router(app, self.body_limit);
        let task = tokio::spawn(api::serve_with_limits(listener, router, self.limits()));
        Ok((addr, task))
    }
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
    let token = a.access.token()?;
    let policy = load_policy(a.policy.as_deref())?;
    let catalog = Arc::new(load_catalog(a.catalog.as_deref())?);
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
    let engine = serve_engine(catalog, &policy, forecaster.clone(), cfg);
    let mut state = ServiceState::with_engine(engine);
    let mut rejected = 0u64;
    for ev in &events {
        if state.apply(ev).is_err() {
            rejected += 1;
        }
    }
    {
        let v = state.view();
        eprintln!(
            "state: {} events, {} environment(s), {} price pool(s), {} budget account(s), {} rejected",
            v.events_applied,
            v.demand().environments().len(),
            v.book().pools(),
            v.ledger().accounts.len(),
            rejected
        );
    }
    let app = Arc::new(AppState::with_policy(state, policy, forecaster, token));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        a.access.serve(a.listen, app).await?.1.await??;
        Ok(())
    })
}
