//! The HTTP API (axum): the planner, forecaster and budget ledger over HTTP.
//!
//! Routes: `POST /predict_demand`, `POST /get_optimal_instance`,
//! `POST /allocate_budget`, `GET /healthz`, `GET /metrics` (Prometheus text
//! from the shared telemetry registry), `GET /openapi.json`.
//!
//! Every route except `/healthz` requires `Authorization: Bearer <token>`
//! (401 otherwise). Bodies above the configured limit get 413. Invalid JSON
//! gets 400 with `{"error": "...", "field": "..."}` naming the offending
//! field (`body` for syntax errors). Handlers hold the state lock only for
//! pure computations, never across an await.

mod error;
mod handlers;
pub mod live;
pub mod openapi;
mod state;

pub use error::ApiError;
pub use live::{EnvironmentsProbe, LiveEngine};
pub use state::{Rejected, Runtimes, ServiceState, View, RUNTIME_SAMPLES};

use crate::events::{BudgetAllocation, Millis};
use crate::forecast::Forecaster;
use crate::policy::PolicyFile;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Default request body limit (64 KiB: every request is a small JSON object).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Called with each allocation accepted over HTTP, so a Kafka adapter can
/// publish it on the budget-allocation topic for the other instances. An
/// error (why it could not) fails the request with 503.
pub type AllocationHook = Arc<dyn Fn(&BudgetAllocation) -> Result<(), String> + Send + Sync>;

/// Where the engine the API answers from lives.
enum Source {
    /// `prescale serve`: an engine of the API's own, fed from files
    /// (boxed: an engine is large, the live handle small).
    Local(Box<RwLock<ServiceState>>),
    /// `prescale run --api-listen`: the service's live engine, asked on its
    /// decision thread.
    Live(LiveEngine),
}

/// The API's shared state.
pub struct AppState {
    source: Source,
    pub forecaster: Arc<dyn Forecaster>,
    /// The environments' policies (markets, regions, reserved capacity) for
    /// `/get_optimal_instance`: the file the engine's planner was built
    /// from.
    pub policy: Arc<PolicyFile>,
    /// Required bearer token; `None` disables auth (only with an explicit
    /// opt-out in `prescale serve`).
    pub token: Option<String>,
    pub on_allocation: Option<AllocationHook>,
    /// The event time of the last allocation made over HTTP (see
    /// [`AppState::stamp`]).
    last_stamp: AtomicI64,
}

impl AppState {
    /// Serve from an engine of the API's own (`prescale serve`); `policy`
    /// is the file its planner was built from.
    pub fn new(
        state: ServiceState,
        forecaster: Arc<dyn Forecaster>,
        token: Option<String>,
    ) -> Self {
        Self::with_policy(state, PolicyFile::default(), forecaster, token)
    }

    /// [`AppState::new`] with the environments' policies.
    pub fn with_policy(
        state: ServiceState,
        policy: PolicyFile,
        forecaster: Arc<dyn Forecaster>,
        token: Option<String>,
    ) -> Self {
        AppState {
            source: Source::Local(Box::new(RwLock::new(state))),
            forecaster,
            policy: Arc::new(policy),
            token,
            on_allocation: None,
            last_stamp: AtomicI64::new(i64::MIN),
        }
    }

    /// Serve from a running service's live engine (`prescale run
    /// --api-listen`). Allocations go to the budget-allocation topic
    /// through `on_allocation`, which every instance's engine applies in
    /// order, this one's included.
    pub fn live(
        engine: LiveEngine,
        policy: PolicyFile,
        forecaster: Arc<dyn Forecaster>,
        token: Option<String>,
        on_allocation: AllocationHook,
    ) -> Self {
        AppState {
            source: Source::Live(engine),
            forecaster,
            policy: Arc::new(policy),
            token,
            on_allocation: Some(on_allocation),
            last_stamp: AtomicI64::new(i64::MIN),
        }
    }

    /// Read access to a local engine (a poisoned lock still holds
    /// consistent data: every mutation is a single pure call); `None` when
    /// serving a live one.
    pub fn read(&self) -> Option<RwLockReadGuard<'_, ServiceState>> {
        match &self.source {
            Source::Local(s) => Some(s.read().unwrap_or_else(|e| e.into_inner())),
            Source::Live(_) => None,
        }
    }

    pub fn write(&self) -> Option<RwLockWriteGuard<'_, ServiceState>> {
        match &self.source {
            Source::Local(s) => Some(s.write().unwrap_or_else(|e| e.into_inner())),
            Source::Live(_) => None,
        }
    }

    /// The event time of an allocation made over HTTP: `now` (the newest
    /// event time seen), or just after the previous one. The engine takes
    /// a budget record's account and time as its identity (a copy is
    /// skipped, a different amount at the same time refused), so two
    /// allocations made between the same two input events need distinct
    /// times.
    pub fn stamp(&self, now: Millis) -> Millis {
        let mut at = now;
        let _ = self
            .last_stamp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                at = now.max(last.saturating_add(1));
                Some(at)
            });
        at
    }

    /// Run `f` on the engine. `env`: the compute environment the request
    /// is about, when it is about one; the live engine answers only for the
    /// environments its instance owns (see [`LiveEngine`]).
    pub async fn with_view<R: Send + 'static>(
        &self,
        env: Option<String>,
        f: impl FnOnce(&View<'_>) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        match &self.source {
            Source::Local(s) => {
                let st = s.read().unwrap_or_else(|e| e.into_inner());
                f(&st.view())
            }
            Source::Live(l) => l.ask(env, f).await,
        }
    }
}

/// Builds the router with auth, body limit and request metrics.
pub fn router(app: Arc<AppState>, body_limit: usize) -> Router {
    Router::new()
        .route("/predict_demand", post(handlers::predict_demand))
        .route(
            "/get_optimal_instance",
            post(handlers::get_optimal_instance),
        )
        .route("/allocate_budget", post(handlers::allocate_budget))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .route("/healthz", get(handlers::healthz))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(observe))
        .with_state(app)
}

/// Serves the router on a bound listener until the future is dropped, with
/// the default [`ServeLimits`].
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    serve_with_limits(listener, app, ServeLimits::default()).await
}

/// What the API allows a client before it drops it, so slow or stalled
/// clients cannot hold connections (and memory) forever. Documented in
/// docs/planner.md (API limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time a connection has to send a request's headers (also bounds an
    /// idle keep-alive connection): past it the connection is closed.
    pub header_read_timeout: Duration,
    /// Time a request has from its headers to its response, body read
    /// included: a request that promises a body and never sends it gets 408.
    pub request_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// [`serve`] with explicit limits: each connection is served by hyper's
/// HTTP/1 connection with a header read timeout, the router gets a request
/// timeout, and a semaphore bounds the connections. Every drop is logged
/// (`tracing` warn) and counted in `prescale_api_connections_dropped`.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
        request_deadline(limits.request_timeout, req, next)
    }));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, retry.
                tracing::warn!(error = %e, "API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_connections, "API: connection limit reached, dropping connection");
            crate::telemetry::metrics().inc_api_dropped("connection_limit");
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
                if e.is_timeout() {
                    tracing::warn!(%peer, "API: client too slow sending headers, connection dropped");
                    crate::telemetry::metrics().inc_api_dropped("header_timeout");
                } else {
                    tracing::debug!(%peer, error = %e, "API: connection ended with an error");
                }
            }
        });
    }
}

/// 408 when a request (its body read included) takes longer than `limit`.
async fn request_deadline(limit: Duration, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(%path, limit_s = limit.as_secs_f64(), "API: request not complete in time (stalled body?), dropped");
            crate::telemetry::metrics().inc_api_dropped("request_timeout");
            let mut r = ApiError::status(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!("request not complete within {} s", limit.as_secs_f64()),
                Some("body"),
            )
            .into_response();
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

/// Constant-time comparison, so response timing does not leak the token.
fn token_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let open = req.uri().path() == "/healthz";
    if let (Some(token), false) = (&app.token, open) {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| token_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            let mut r = ApiError::unauthorized().into_response();
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    crate::telemetry::metrics().observe_api_request(
        &route,
        &method,
        resp.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    resp
}
