//! Operational routes: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`,
//! and `{prefix}/packs`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "detail": format!("store unreachable: {e}")})),
    }
}

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

pub async fn packs(state: web::Data<AppState>) -> HttpResponse {
    let packs: Vec<_> = state.packs.all().collect();
    HttpResponse::Ok().json(json!({"packs": packs}))
}
