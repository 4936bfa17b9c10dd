//! Operational routes: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`,
//! and `{prefix}/packs`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::AppState;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    summary = "Liveness: the process is up",
    responses((status = 200, description = "Up", body = crate::openapi::Health)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    summary = "Readiness: the store is reachable",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = crate::openapi::Readiness),
        (status = 503, description = "`{\"status\": \"unavailable\", \"detail\": …}`",
            body = crate::openapi::Readiness),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "detail": format!("store unreachable: {e}")})),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    summary = "Prometheus metrics",
    description = "`runsignal_http_requests_total{route,method,status}` (route pattern, never the \
        raw path), `runsignal_resident_run_actors`, `runsignal_first_signal_cache_total{result}`, \
        `runsignal_first_signal_cold_path_seconds`, `runsignal_store_calls_total`.",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String,
            content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .resident_actors
        .set(state.engine.supervisor.len() as i64);
    state.metrics.store_queries.set(state.queries.get() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/packs",
    tag = "ops",
    summary = "The declared packs",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "Every declared pack", body = crate::openapi::PackList),
        (status = 400, description = "`invalid_tenant`", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
/// Packs are server-wide, but like every API request this one names its
/// tenant (SPEC §2), so that token authentication can gate it later.
pub async fn packs(
    _tenant: crate::http::extract::Tenant,
    state: web::Data<AppState>,
) -> HttpResponse {
    let packs: Vec<_> = state.packs.all().collect();
    HttpResponse::Ok().json(json!({"packs": packs}))
}
