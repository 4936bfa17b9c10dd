//! Operational routes: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`,
//! and `{prefix}/packs`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::authorize_scope;
use super::errors::{ApiError, Problem};
use super::extract::{Tenant, TenantHeader};
use crate::auth::Scope;
use crate::packs::Pack;
use crate::AppState;

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` (serving, but the transport to the other nodes
    /// is down: events from them arrive late, caught up from the store) or
    /// `unavailable`.
    pub status: String,
    /// What is wrong (only when `degraded` or `unavailable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET {prefix}/packs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PackList {
    #[schema(value_type = Vec<PackInfo>)]
    pub packs: Vec<Pack>,
}

/// The schema of a [`Pack`] as served. `Pack` is the pack file's own type
/// (`src/packs.rs`, outside the HTTP layer), so this one stands in for it
/// in the document.
#[derive(Serialize, ToSchema)]
pub struct PackInfo {
    pub name: String,
    pub description: String,
    pub executor: PackExecutor,
    /// Declared inputs `{"name","required","default"?}`; absent when none.
    #[schema(value_type = Option<Vec<Object>>)]
    pub inputs: Option<Vec<Value>>,
    /// The declared steps, in order: a built-in pack's argv steps, or a
    /// remote pack's `{"name","stage"?}` (its pack-run plan); `[]` when a
    /// remote pack declares none.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
    /// Declared artifact paths; absent when none.
    #[schema(value_type = Option<Vec<Object>>)]
    pub artifacts: Option<Vec<Value>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackExecutor {
    Builtin,
    Remote,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    summary = "Liveness: the process is up",
    responses((status = 200, description = "Up", body = Health)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    summary = "Readiness: the store is reachable",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`, or `degraded` with a `detail` \
            while the transport to the other nodes (Redis) is down: the node keeps serving", body = Readiness),
        (status = 503, description = "`{\"status\": \"unavailable\", \"detail\": …}`",
            body = Readiness),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => match state.engine.transport_degraded() {
            None => HttpResponse::Ok().json(Readiness {
                status: "ready".into(),
                detail: None,
            }),
            Some(why) => HttpResponse::Ok().json(Readiness {
                status: "degraded".into(),
                detail: Some(why),
            }),
        },
        Err(e) => HttpResponse::ServiceUnavailable().json(Readiness {
            status: "unavailable".into(),
            detail: Some(format!("store unreachable: {e}")),
        }),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    summary = "Prometheus metrics",
    description = "`runsignal_time_to_first_signal_seconds{kind}`, \
        `runsignal_first_signal_request_seconds{cache_status}`, \
        `runsignal_stream_delivery_lag_seconds{wire}`, \
        `runsignal_webhook_attempt_seconds{outcome}`, `runsignal_webhook_delivery_attempts`, \
        `runsignal_open_streams`, `runsignal_streaming_connections`, `runsignal_open_connections`, \
        `runsignal_http_requests_total{route,method,status}` (route pattern, never the \
        raw path), `runsignal_resident_run_actors`, `runsignal_first_signal_cache_total{result}`, \
        `runsignal_first_signal_cold_path_seconds`, `runsignal_store_calls_total`.",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String,
            content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // With `Metrics.Public` (or `Auth.Mode = none`) anyone may read them.
    if !state.config.metrics.public {
        authorize_scope(&req, Scope::Admin)?;
    }
    state
        .metrics
        .resident_actors
        .set(state.engine.supervisor.len() as i64);
    state.metrics.store_queries.set(state.queries.get() as i64);
    let limits = &state.stream_limits;
    state.metrics.open_streams.set(limits.open_total() as i64);
    state
        .metrics
        .streaming_connections
        .set(limits.held_connections() as i64);
    state
        .metrics
        .open_connections
        .set(state.connections.open() as i64);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/packs",
    tag = "ops",
    summary = "The declared packs",
    params(TenantHeader),
    responses(
        (status = 200, description = "Every declared pack", body = PackList),
        (status = 400, description = "`invalid_tenant`", body = Problem, content_type = "application/problem+json"),
    ),
)]
/// Packs are server-wide, but like every API request this one names its
/// tenant (SPEC §2), so that token authentication can gate it later.
pub async fn packs(_tenant: Tenant, state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(PackList {
        packs: state.packs.all().cloned().collect(),
    })
}
