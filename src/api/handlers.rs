//! Route handlers: decode and validate, call the pure core under the lock,
//! encode. Bodies are taken as bytes so size, syntax and field errors all
//! come back as the API's JSON error.

use super::{ApiError, AppState, Rejected, View};
use crate::budget::{account_key, scope_str, Account, BudgetError, Ledger};
use crate::events::{BudgetAllocation, BudgetScope, Event, JobSubmitted, Market, Millis};
use crate::forecast::{check_quantiles, Forecaster, History};
use crate::planner::{optimal_instances, InstanceRequest, RankedChoice};
use crate::state::{GPUS, MEMORY_MIB, VCPU};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type Res<T> = Result<Json<T>, ApiError>;

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body too large".to_string()
        } else {
            r.body_text()
        };
        ApiError::status(status, msg, Some("body"))
    })
}

fn finite_pos(field: &str, v: f64) -> Result<(), ApiError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            field,
            format!("must be a positive number, got {v}"),
        ))
    }
}

fn non_neg_i(field: &str, v: i64) -> Result<(), ApiError> {
    if v >= 0 {
        Ok(())
    } else {
        Err(ApiError::bad_field(field, format!("must be >= 0, got {v}")))
    }
}

// ---------------------------------------------------------------- predict

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub compute_environment: Option<String>,
    pub horizon_s: Option<i64>,
    pub quantiles: Option<Vec<f64>>,
    pub job: Option<JobSubmitted>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct QuantileDemand {
    pub quantile: f64,
    pub vcpus: f64,
    pub memory_mib: f64,
    pub gpus: f64,
    /// Job mode only: runtime at this quantile and the vCPU-hours it implies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_hours: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct DemandStep {
    pub at: Millis,
    pub vcpus: Vec<f64>,
    pub memory_mib: Vec<f64>,
    pub gpus: Vec<f64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PredictResponse {
    pub compute_environment: String,
    pub forecaster: String,
    /// Environment mode: peak over the horizon per quantile. Job mode: the
    /// job's shape with runtime quantiles.
    pub quantiles: Vec<QuantileDemand>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub steps: Vec<DemandStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon_s: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Job mode: where runtimes came from (`history:N`, `estimate`, `none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_source: Option<String>,
}

/// Linear-interpolated empirical quantile of sorted samples.
fn empirical_quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
}

pub async fn predict_demand(
    State(app): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Res<PredictResponse> {
    let req: PredictRequest = ApiError::decode(&body(b)?)?;
    let quantiles = req.quantiles.clone().unwrap_or_else(|| vec![0.1, 0.5, 0.9]);
    check_quantiles(&quantiles).map_err(|e| ApiError::bad_field("quantiles", e.to_string()))?;
    match (&req.compute_environment, &req.job) {
        (Some(_), Some(_)) => Err(ApiError::bad_field(
            "job",
            "give either `compute_environment` or `job`, not both",
        )),
        (None, None) => Err(ApiError::bad_field(
            "compute_environment",
            "missing field `compute_environment` (or give `job`)",
        )),
        (None, Some(job)) => {
            let job = job.clone();
            let env = job.compute_environment.to_string();
            app.with_view(Some(env), move |v| predict_job(v, &job, &quantiles))
                .await
                .map(Json)
        }
        (Some(env), None) => {
            let horizon_s = req.horizon_s.unwrap_or(3600);
            if !(1..=7 * 86_400).contains(&horizon_s) {
                return Err(ApiError::bad_field(
                    "horizon_s",
                    format!("must be between 1 and 604800 seconds, got {horizon_s}"),
                ));
            }
            let forecaster = app.forecaster.clone();
            let env = env.clone();
            app.with_view(Some(env.clone()), move |v| {
                predict_env(v, forecaster.as_ref(), &env, horizon_s, &quantiles)
            })
            .await
            .map(Json)
        }
    }
}

fn predict_env(
    st: &View<'_>,
    forecaster: &dyn Forecaster,
    env: &str,
    horizon_s: i64,
    quantiles: &[f64],
) -> Result<PredictResponse, ApiError> {
    if !st.demand().environments().contains(&env) {
        return Err(ApiError::status(
            StatusCode::NOT_FOUND,
            format!("unknown compute_environment `{env}` (no events seen for it)"),
            Some("compute_environment"),
        ));
    }
    let bucket_ms = st.demand().config().bucket_ms;
    let horizon = ((horizon_s * 1000 + bucket_ms - 1) / bucket_ms).max(1) as usize;
    let mut per_res = Vec::new();
    let mut origin = 0;
    for r in [VCPU, MEMORY_MIB, GPUS] {
        let (start, values) = st.demand().environment_history(env, r);
        let h = History {
            key: env,
            start,
            bucket_ms,
            values: &values,
        };
        origin = h.end();
        let f = if values.is_empty() {
            crate::forecast::Forecast {
                quantiles: quantiles.to_vec(),
                values: vec![vec![0.0; quantiles.len()]; horizon],
            }
        } else {
            forecaster.forecast(&h, horizon, quantiles)
        };
        per_res.push(f);
    }
    let get = |f: &crate::forecast::Forecast, h: usize, q: usize| {
        f.values
            .get(h)
            .and_then(|row| row.get(q))
            .copied()
            .unwrap_or(0.0)
            .max(0.0)
    };
    let steps: Vec<DemandStep> = (0..horizon)
        .map(|h| DemandStep {
            at: origin + h as i64 * bucket_ms,
            vcpus: (0..quantiles.len())
                .map(|q| get(&per_res[0], h, q))
                .collect(),
            memory_mib: (0..quantiles.len())
                .map(|q| get(&per_res[1], h, q))
                .collect(),
            gpus: (0..quantiles.len())
                .map(|q| get(&per_res[2], h, q))
                .collect(),
        })
        .collect();
    let peak = |r: usize, q: usize| {
        (0..horizon)
            .map(|h| get(&per_res[r], h, q))
            .fold(0.0, f64::max)
    };
    Ok(PredictResponse {
        compute_environment: env.to_string(),
        forecaster: forecaster.name().to_string(),
        quantiles: quantiles
            .iter()
            .enumerate()
            .map(|(i, &q)| QuantileDemand {
                quantile: q,
                vcpus: peak(0, i),
                memory_mib: peak(1, i),
                gpus: peak(2, i),
                runtime_s: None,
                vcpu_hours: None,
            })
            .collect(),
        steps,
        bucket_ms: Some(bucket_ms),
        horizon_s: Some(horizon_s),
        job_id: None,
        runtime_source: None,
    })
}

fn predict_job(
    st: &View<'_>,
    job: &JobSubmitted,
    quantiles: &[f64],
) -> Result<PredictResponse, ApiError> {
    finite_pos("job.vcpus", job.vcpus)?;
    non_neg_i("job.memory_mib", job.memory_mib)?;
    non_neg_i("job.gpus", job.gpus as i64)?;
    if let Some(r) = job.estimated_runtime_s {
        non_neg_i("job.estimated_runtime_s", r)?;
    }
    let mut samples = st.runtimes.samples(&job.compute_environment, &job.job_type);
    samples.sort_by(f64::total_cmp);
    let source = if !samples.is_empty() {
        format!("history:{}", samples.len())
    } else if job.estimated_runtime_s.is_some() {
        "estimate".to_string()
    } else {
        "none".to_string()
    };
    let out = quantiles
        .iter()
        .map(|&q| {
            let rt = if samples.is_empty() {
                job.estimated_runtime_s.map(|r| r as f64)
            } else {
                Some(empirical_quantile(&samples, q))
            };
            QuantileDemand {
                quantile: q,
                vcpus: job.vcpus,
                memory_mib: job.memory_mib as f64,
                gpus: job.gpus as f64,
                runtime_s: rt,
                vcpu_hours: rt.map(|r| job.vcpus * r / 3600.0),
            }
        })
        .collect();
    Ok(PredictResponse {
        compute_environment: job.compute_environment.to_string(),
        forecaster: "empirical_runtime".into(),
        quantiles: out,
        steps: Vec::new(),
        bucket_ms: None,
        horizon_s: None,
        job_id: Some(job.job_id.to_string()),
        runtime_source: Some(source),
    })
}

// ---------------------------------------------------------------- optimal instance

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimalRequest {
    pub vcpus: f64,
    #[serde(default)]
    pub memory_mib: i64,
    #[serde(default)]
    pub gpus: i32,
    pub max_usd_per_hour: Option<f64>,
    pub max_usd_per_job: Option<f64>,
    pub markets: Option<Vec<String>>,
    pub regions: Option<Vec<String>>,
    pub providers: Option<Vec<String>>,
    pub duration_s: Option<i64>,
    pub deadline: Option<Millis>,
    /// Allow several instances (default: one instance if any fits).
    pub fleet: Option<bool>,
    /// Apply this environment's policy (markets, regions, reserved, risk).
    pub compute_environment: Option<String>,
    pub alternatives: Option<usize>,
    /// Allowed CPU architectures (default `["amd64"]`).
    pub architectures: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct OptimalResponse {
    pub instance_type: String,
    pub market: Market,
    pub region: String,
    pub zone: Option<String>,
    pub count: i64,
    /// List price of one instance of the chosen type.
    pub usd_per_hour: f64,
    /// Risk-adjusted cost per hour of the whole choice.
    pub expected_usd_per_hour: f64,
    pub expected_job_usd: f64,
    pub choice: RankedChoice,
    pub alternatives: Vec<RankedChoice>,
}

/// A request that names an environment gets that environment's policy
/// where it left a choice open (markets, regions, providers), and the
/// policy's instance types, caps, reserved capacity and risk settings.
fn apply_policy(req: &mut InstanceRequest, policy: &crate::policy::PolicyFile, env: &str) {
    let p = policy.for_env(env);
    if req.markets.is_empty() {
        req.markets = p.markets.clone();
    }
    if req.regions.is_empty() {
        req.regions = p.regions.clone();
    }
    if req.providers.is_empty() {
        req.providers = p.providers.clone();
    }
    req.instance_types = p.instance_types.clone();
    req.max_usd_per_job = req.max_usd_per_job.or(p.max_usd_per_job);
    req.restart_overhead_s = p.restart_overhead_s;
    req.max_spot_pool_share = p.max_spot_pool_share;
    req.spot_interruption_rate_per_h = p.spot_interruption_rate_per_h;
    req.max_price_age_s = p.max_price_age_s;
    req.reserved = p.reserved.clone();
    req.architectures = p.architectures.clone();
    req.exclude_burstable = p.exclude_burstable;
    if req.duration_s.is_none() {
        req.duration_s = Some(p.typical_job_s);
    }
}

pub async fn get_optimal_instance(
    State(app): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Res<OptimalResponse> {
    let r: OptimalRequest = ApiError::decode(&body(b)?)?;
    finite_pos("vcpus", r.vcpus)?;
    non_neg_i("memory_mib", r.memory_mib)?;
    non_neg_i("gpus", r.gpus as i64)?;
    for (f, v) in [
        ("max_usd_per_hour", r.max_usd_per_hour),
        ("max_usd_per_job", r.max_usd_per_job),
    ] {
        if let Some(v) = v {
            finite_pos(f, v)?;
        }
    }
    if let Some(d) = r.duration_s {
        finite_pos("duration_s", d as f64)?;
    }
    let mut markets = Vec::new();
    for (i, m) in r.markets.iter().flatten().enumerate() {
        markets.push(
            m.parse::<Market>()
                .map_err(|e| ApiError::bad_field(&format!("markets[{i}]"), e))?,
        );
    }
    let mut req = InstanceRequest {
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        gpus: r.gpus,
        duration_s: r.duration_s,
        deadline: r.deadline,
        max_usd_per_hour: r.max_usd_per_hour,
        max_usd_per_job: r.max_usd_per_job,
        markets,
        regions: r.regions.clone().unwrap_or_default(),
        providers: r.providers.clone().unwrap_or_default(),
        fleet: r.fleet.unwrap_or(false),
        alternatives: r.alternatives.unwrap_or(5).min(50),
        ..InstanceRequest::default()
    };
    if let Some(env) = &r.compute_environment {
        apply_policy(&mut req, &app.policy, env);
    }
    if let Some(a) = &r.architectures {
        req.architectures = a.clone();
    }
    // Prices are read whole by every instance: any one answers.
    let fleet_unset = r.fleet.is_none();
    let ranked = app
        .with_view(None, move |st| {
            let now = st.now();
            let mut ranked = optimal_instances(&req, st.book(), st.catalog(), now);
            if ranked.is_empty() && fleet_unset {
                // Nothing holds it on one machine: fall back to a fleet.
                req.fleet = true;
                ranked = optimal_instances(&req, st.book(), st.catalog(), now);
            }
            Ok(ranked)
        })
        .await?;
    let mut it = ranked.into_iter();
    let Some(choice) = it.next() else {
        return Err(ApiError::status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no allowed priced instance meets the request (shape, markets, regions, caps or deadline)",
            None,
        ));
    };
    let main = choice
        .pools
        .iter()
        .max_by(|a, b| {
            (a.count as f64 * a.usd_per_hour)
                .total_cmp(&(b.count as f64 * b.usd_per_hour))
                .then(b.instance_type.cmp(&a.instance_type))
        })
        .cloned()
        .ok_or_else(|| ApiError::status(StatusCode::UNPROCESSABLE_ENTITY, "empty choice", None))?;
    Ok(Json(OptimalResponse {
        instance_type: main.instance_type,
        market: main.market,
        region: main.region,
        zone: main.zone,
        count: main.count,
        usd_per_hour: main.usd_per_hour,
        expected_usd_per_hour: choice.expected_usd_per_hour,
        expected_job_usd: choice.expected_job_usd,
        choice,
        alternatives: it.collect(),
    }))
}

// ---------------------------------------------------------------- budgets

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest {
    pub scope: String,
    pub id: String,
    pub usd: f64,
    pub period: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AccountView {
    pub key: String,
    pub scope: String,
    pub id: String,
    pub period: crate::budget::Period,
    pub allocated: f64,
    pub committed: f64,
    pub spent: f64,
    pub remaining: f64,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            key: account_key(a.scope, &a.id),
            scope: scope_str(a.scope).to_string(),
            id: a.id.clone(),
            period: a.period,
            allocated: a.allocated,
            committed: a.committed,
            spent: a.spent,
            remaining: a.remaining(),
        }
    }
}

pub async fn allocate_budget(
    State(app): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let r: AllocateRequest = ApiError::decode(&body(b)?)?;
    let scope = match r.scope.to_ascii_lowercase().as_str() {
        "job" => BudgetScope::Job,
        "project" => BudgetScope::Project,
        "user" => BudgetScope::User,
        other => {
            return Err(ApiError::bad_field(
                "scope",
                format!("unknown scope `{other}` (expected job, project or user)"),
            ))
        }
    };
    if r.id.trim().is_empty() {
        return Err(ApiError::bad_field("id", "must not be empty"));
    }
    if !(r.usd.is_finite() && r.usd >= 0.0) {
        return Err(ApiError::bad_field(
            "usd",
            format!("must be >= 0, got {}", r.usd),
        ));
    }
    let template = BudgetAllocation {
        at: 0,
        scope,
        id: r.id.clone(),
        usd: r.usd,
        period: r.period.clone(),
    };
    // What the ledger would refuse whatever it holds (period, amount).
    if let Err(e) = Ledger::default().on_allocation(&template) {
        return Err(refused(e));
    }
    let (status, alloc, view) = match allocate_local(&app, template.clone()) {
        Some(done) => {
            let (alloc, view) = done?;
            (StatusCode::OK, alloc, view)
        }
        // `run --api-listen`: published on the budget-allocation topic,
        // which every instance's engine (this one's included) applies in
        // order; the answer is the account as it will be then.
        None => {
            let stamps = app.clone();
            let (alloc, view) = app
                .with_view(None, move |st| {
                    let alloc = BudgetAllocation {
                        at: stamps.stamp(st.now()),
                        ..template
                    };
                    let mut ledger = st.ledger().clone();
                    let view = ledger.on_allocation(&alloc).map(AccountView::from);
                    Ok((alloc, view.map_err(refused)?))
                })
                .await?;
            (StatusCode::ACCEPTED, alloc, view)
        }
    };
    if let Some(hook) = &app.on_allocation {
        hook(&alloc).map_err(|e| {
            ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the allocation could not be published: {e}"),
                None,
            )
        })?;
    }
    crate::telemetry::metrics().set_budget(&view.scope, &view.id, view.allocated, view.spent);
    Ok((status, Json(view)))
}

/// `serve`: apply the allocation through the engine, as one read from a
/// file; `None` when the API serves a live engine.
fn allocate_local(
    app: &AppState,
    template: BudgetAllocation,
) -> Option<Result<(BudgetAllocation, AccountView), ApiError>> {
    let mut st = app.write()?;
    let alloc = BudgetAllocation {
        at: app.stamp(st.view().now()),
        ..template
    };
    match st.apply(&Event::BudgetAllocation(alloc.clone())) {
        Ok(()) => {}
        Err(Rejected::Budget(e)) => return Some(Err(refused(e))),
        Err(e @ Rejected::Conflict(_)) => {
            return Some(Err(ApiError::status(
                StatusCode::CONFLICT,
                e.to_string(),
                None,
            )))
        }
    }
    let key = account_key(alloc.scope, &alloc.id);
    let view = st.view().ledger().accounts.get(&key).map(AccountView::from);
    Some(match view {
        Some(v) => Ok((alloc, v)),
        None => Err(ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the allocation was applied but its account is missing",
            None,
        )),
    })
}

/// 400 naming the field the ledger refused.
fn refused(e: BudgetError) -> ApiError {
    match e {
        e @ BudgetError::Period { .. } => ApiError::bad_field("period", e.to_string()),
        e @ BudgetError::Amount { .. } => ApiError::bad_field("usd", e.to_string()),
    }
}

// ---------------------------------------------------------------- misc

pub async fn healthz(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let forecaster = app.forecaster.name().to_string();
    let health = app
        .with_view(None, move |st| {
            Ok(serde_json::json!({
                "status": "ok",
                "events_applied": st.events_applied,
                "environments": st.demand().environments(),
                "price_pools": st.book().pools(),
                "budget_accounts": st.ledger().accounts.len(),
                "forecaster": forecaster,
            }))
        })
        .await;
    // A live instance still joining its group is up, with nothing to say yet.
    Json(health.unwrap_or_else(|e| serde_json::json!({"status": "starting", "detail": e.error})))
}

/// Prometheus text from the shared telemetry registry (budget gauges are
/// refreshed first so a scrape sees the ledger as it is).
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let refreshed = app
        .with_view(None, |st| {
            let m = crate::telemetry::metrics();
            for a in st.ledger().accounts.values() {
                m.set_budget(scope_str(a.scope), &a.id, a.allocated, a.spent);
            }
            Ok(())
        })
        .await;
    // Without an engine yet, the gauges stay as they were.
    drop(refreshed);
    (
        [(
            header::CONTENT_TYPE,
            crate::telemetry::metrics::CONTENT_TYPE,
        )],
        crate::telemetry::metrics().render(),
    )
        .into_response()
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}

pub async fn not_found() -> ApiError {
    ApiError::status(StatusCode::NOT_FOUND, "no such route", None)
}
