//! Runs: `POST/GET {prefix}/runs`, `GET {prefix}/runs/{runId}`, and the
//! timeline `GET {prefix}/runs/{runId}/timeline` (SPEC §6, §7).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use runsignal_actors::RunKey;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::errors::{ApiError, Problem};
use super::extract::{
    canonical_value, page_limit, parse_query, run_id, seq, CorrelationId, JsonBody, Tenant,
    TenantHeader,
};
use super::feed::history;
use super::model::run::{Run, RunList, RunStatus, Timeline};
use crate::store::{parse_run_cursor, NewRun, RunQuery, TimelineQuery};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRun {
    /// The run's id (any UUID, case-insensitive); generated when absent.
    #[schema(format = "uuid")]
    pub run_id: Option<String>,
    #[schema(max_length = 256)]
    pub name: Option<String>,
    /// Free-form labels.
    #[schema(value_type = Option<Object>)]
    pub labels: Option<Map<String, Value>>,
}

/// The request's path prefix (`/api/v1/orchestrator` or `/api/v1/jobengine`).
fn prefix(req: &HttpRequest) -> &str {
    let path = req.path();
    ["/api/v1/orchestrator", "/api/v1/jobengine"]
        .into_iter()
        .find(|p| path.starts_with(p))
        .unwrap_or("")
}

#[utoipa::path(
    post,
    path = "/api/v1/orchestrator/runs",
    tag = "runs",
    summary = "Create a run",
    params(TenantHeader),
    request_body = CreateRun,
    responses(
        (status = 201, description = "Run created", body = Run,
            headers(("Location" = String, description = "`{prefix}/runs/{runId}` of the new run"))),
        (status = 400, description = "`invalid_tenant`, `invalid_body`, `invalid_field`, `invalid_run_id`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`run_exists`: a run with this runId already exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_run(
    req: HttpRequest,
    tenant: Tenant,
    corr: CorrelationId,
    body: JsonBody<CreateRun>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    let run_id = match &body.run_id {
        Some(raw) => run_id(raw)?,
        None => crate::store::model::new_run_id(),
    };
    if body.name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(ApiError::field("name", "at most 256 characters"));
    }
    let labels = Value::Object(body.labels.unwrap_or_default());
    canonical_value("labels", &labels)?;
    let new = NewRun {
        run_id: run_id.clone(),
        name: body.name,
        labels,
        correlation_id: corr.0,
    };
    let run = state.store.create_run(&tenant.0, new).await?;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("{}/runs/{}", prefix(&req), run_id),
        ))
        .json(Run::from(&run)))
}

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/runs/{runId}",
    tag = "runs",
    summary = "Get a run",
    params(
        TenantHeader,
        ("runId" = String, Path, format = "uuid", description = "The run's id (any UUID, case-insensitive)"),
    ),
    responses(
        (status = 200, description = "The run", body = Run),
        (status = 400, description = "`invalid_tenant`, `invalid_run_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`run_not_found` (also for another tenant's run)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_run(
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let run_id = run_id(&path)?;
    let run = state.store.get_run(&tenant.0, &run_id).await?;
    Ok(HttpResponse::Ok().json(Run::from(&run)))
}

/// Unknown parameters are ignored, as on every GET route (ADR 0030).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListRuns {
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next` of the previous page.
    cursor: Option<String>,
    /// Only runs in this status.
    #[param(value_type = Option<RunStatus>)]
    status: Option<String>,
}

const RUN_STATUSES: [&str; 5] = ["pending", "running", "succeeded", "failed", "canceled"];

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/runs",
    tag = "runs",
    summary = "List runs, newest first",
    params(TenantHeader, ListRuns),
    responses(
        (status = 200, description = "A page of runs", body = RunList),
        (status = 400, description = "`invalid_tenant`, `invalid_query`, `invalid_field`. Unknown query parameters are ignored.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_runs(
    req: HttpRequest,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q: ListRuns = parse_query(&req)?;
    let limit = page_limit(q.limit, 50, 200)?;
    if let Some(status) = &q.status {
        if !RUN_STATUSES.contains(&status.as_str()) {
            return Err(ApiError::field(
                "status",
                format!("allowed values: {}", RUN_STATUSES.join(", ")),
            ));
        }
    }
    if q.cursor
        .as_deref()
        .is_some_and(|c| parse_run_cursor(c).is_none())
    {
        return Err(ApiError::field(
            "cursor",
            "not a cursor from a previous page's `next`",
        ));
    }
    let page = state
        .store
        .list_runs(
            &tenant.0,
            &RunQuery {
                limit,
                cursor: q.cursor,
                status: q.status,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(RunList {
        runs: page.items.iter().map(Run::from).collect(),
        next: page.next,
    }))
}

/// Unknown parameters are ignored, as on every GET route (ADR 0030).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct TimelineParams {
    /// Only events with a larger seq (default 0).
    after: Option<u64>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only events carrying this correlation id.
    correlation_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/runs/{runId}/timeline",
    tag = "runs",
    summary = "Page the run's event envelopes in seq order",
    params(
        TenantHeader,
        ("runId" = String, Path, format = "uuid", description = "The run's id (any UUID, case-insensitive)"),
        TimelineParams,
    ),
    responses(
        (status = 200, description = "A page of envelopes", body = Timeline),
        (status = 400, description = "`invalid_tenant`, `invalid_run_id`, `invalid_query`, `invalid_field`. Unknown query parameters are ignored.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`run_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn timeline(
    req: HttpRequest,
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let run_id = run_id(&path)?;
    let q: TimelineParams = parse_query(&req)?;
    let limit = page_limit(q.limit, 100, 1000)?;
    // One event more than the page: `next` is set only when another page
    // really follows, so a last page of exactly `limit` events ends with null.
    let query = TimelineQuery {
        after: seq("after", q.after.unwrap_or(0))?,
        limit: limit + 1,
        correlation_id: q.correlation_id,
    };
    let mut events = history(&state, &RunKey::new(&tenant.0, &run_id), &query).await?;
    let next = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Timeline { events, next }))
}
