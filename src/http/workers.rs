//! Remote worker protocol (SPEC §7.1): lease with long-poll, progress
//! (extends the lease), complete, fail. camelCase bodies.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use runsignal_actors::JobState;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tokio::time::Instant;

use super::errors::{ApiError, ErrorCode, Problem};
use super::extract::{canonical_value, job_id, CorrelationId, JsonBody, Tenant, TenantHeader};
use super::model::job::{Job, JobArtifact};
use super::model::worker::{LeaseGrant, LeasedJob, LeasedJobState, LogStreamName};
use crate::artifacts::{self, NewArtifact, Source};
use crate::packs::ExecutorKind;
use crate::store::{
    BlockedChange, Completion, Failure, LeaseRequest, LogLine, LogStream, ProgressReport,
};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseBody {
    #[schema(min_length = 1, max_length = 128)]
    pub worker_id: String,
    /// Remote packs this worker runs (1..=64 names).
    #[schema(min_items = 1, max_items = 64)]
    pub packs: Vec<String>,
    /// Most jobs to lease, 1..=100 (default 1).
    #[schema(minimum = 1, maximum = 100)]
    pub max: Option<u32>,
    /// Lease duration, 5..=3600 (default 60).
    #[schema(minimum = 5, maximum = 3600)]
    pub lease_seconds: Option<u32>,
    /// Long-poll: wait up to this long for a job, 0..=30 (default 0).
    #[schema(minimum = 0, maximum = 30)]
    pub wait_seconds: Option<u32>,
}

fn in_range(
    field: &str,
    value: Option<u32>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        return Err(ApiError::field(
            field,
            format!("{v} is out of range {}..={}", range.start(), range.end()),
        ));
    }
    Ok(v)
}

#[utoipa::path(
    post,
    path = "/api/v1/orchestrator/workers/lease",
    tag = "workers",
    summary = "Lease queued jobs of remote packs",
    description = "Two workers never hold the same job. With `waitSeconds`, waits for a job to be queued.",
    params(TenantHeader),
    request_body = LeaseBody,
    responses(
        (status = 200, description = "The leased jobs; an empty list when nothing is available",
            body = LeaseGrant),
        (status = 400, description = "`invalid_tenant`, `invalid_body`, `invalid_field`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_pack`: undeclared, or run by the built-in executor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn lease(
    tenant: Tenant,
    corr: CorrelationId,
    body: JsonBody<LeaseBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    if body.worker_id.is_empty() || body.worker_id.len() > 128 {
        return Err(ApiError::field("workerId", "must be 1..=128 characters"));
    }
    if body.packs.is_empty() || body.packs.len() > 64 {
        return Err(ApiError::field("packs", "must list 1..=64 pack names"));
    }
    for pack in &body.packs {
        match state.packs.get(pack) {
            Some(p) if p.executor == ExecutorKind::Remote => {}
            Some(_) => {
                return Err(ApiError::new(
                    ErrorCode::UnknownPack,
                    format!("pack `{pack}` is run by the built-in executor"),
                ))
            }
            None => {
                return Err(ApiError::new(
                    ErrorCode::UnknownPack,
                    format!("pack `{pack}` is not declared"),
                ))
            }
        }
    }
    let req = LeaseRequest {
        worker_id: body.worker_id,
        packs: body.packs,
        max: in_range("max", body.max, 1, 1..=100)?,
        lease_seconds: in_range("leaseSeconds", body.lease_seconds, 60, 5..=3600)?,
        correlation_id: corr.0,
    };
    let wait = in_range("waitSeconds", body.wait_seconds, 0, 0..=30)?;
    let deadline = Instant::now() + Duration::from_secs(wait.into());
    // A worker asks for these packs while this request is open (and stops
    // asking when it ends, or its client goes away): the blocked check
    // tells "waiting for a worker" by it.
    let _asking = state.demand.asking(&tenant.0, &req.packs);
    loop {
        // Register interest before looking, so a job queued in between
        // wakes us; only jobs of this tenant and these packs do.
        let interest = state.engine.queued.interest(Some(&tenant.0), &req.packs);
        let jobs = state.store.lease_jobs(&tenant.0, &req).await?;
        if !jobs.is_empty() || Instant::now() >= deadline {
            let jobs = jobs.into_iter().map(LeasedJob::from).collect();
            return Ok(HttpResponse::Ok().json(LeaseGrant { jobs }));
        }
        tokio::select! {
            _ = interest.wait() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Absent → unchanged; `null` → cleared; a string → blocked with that reason.
fn blocked_change<'de, D: Deserializer<'de>>(d: D) -> Result<BlockedChange, D::Error> {
    Ok(match Option::<String>::deserialize(d)? {
        Some(reason) if !reason.is_empty() => BlockedChange::Set(reason),
        _ => BlockedChange::Clear,
    })
}

fn default_blocked() -> BlockedChange {
    BlockedChange::Unchanged
}

/// A log line: a bare string (stdout) or `{"stream", "line"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LogEntry {
    Line(String),
    Full {
        #[schema(value_type = LogStreamName)]
        stream: LogStream,
        line: String,
    },
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgressBody {
    pub lease_id: String,
    #[schema(min_length = 1, max_length = 128)]
    pub stage: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub step: Option<String>,
    #[schema(minimum = 0, maximum = 999)]
    pub step_index: Option<i64>,
    pub message: Option<String>,
    #[schema(minimum = 0, maximum = 100)]
    pub percent: Option<f64>,
    /// At most 1000 lines per report.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub log: Vec<LogEntry>,
    /// Absent: unchanged; `null` or `""`: cleared; a string: blocked with
    /// that reason.
    #[serde(default = "default_blocked", deserialize_with = "blocked_change")]
    #[schema(value_type = Option<String>)]
    pub blocked: BlockedChange,
}

/// Step indexes a worker may report (a pack run has at most this many steps).
pub const MAX_STEPS: i64 = 1000;
const MAX_LOG_LINES: usize = 1000;

#[utoipa::path(
    post,
    path = "/api/v1/orchestrator/jobs/{jobId}/progress",
    tag = "workers",
    summary = "Report progress (extends the lease)",
    params(TenantHeader, ("jobId" = String, Path, description = "The job's id (a ULID, 26 Crockford base32 chars)", pattern = "^[0-9A-Za-z]{26}$")),
    request_body = ProgressBody,
    responses(
        (status = 200, description = "The job, with its lease id", body = LeasedJobState),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`, `invalid_body`, `invalid_field`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lease_lost`: stale or foreign `leaseId`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn progress(
    tenant: Tenant,
    corr: CorrelationId,
    path: web::Path<String>,
    body: JsonBody<ProgressBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let b = body.0;
    if b.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        return Err(ApiError::field("percent", "must be 0..=100"));
    }
    if b.step_index.is_some_and(|i| !(0..MAX_STEPS).contains(&i)) {
        // Every index a worker reports is a step of the pack-run plan that
        // each monitor gets on connect: bounded.
        return Err(ApiError::field(
            "stepIndex",
            format!("must be 0..={}", MAX_STEPS - 1),
        ));
    }
    if b.log.len() > MAX_LOG_LINES {
        return Err(ApiError::field(
            "log",
            format!("at most {MAX_LOG_LINES} lines per report"),
        ));
    }
    for (field, value) in [("stage", &b.stage), ("step", &b.step)] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 128)
        {
            return Err(ApiError::field(field, "must be 1..=128 characters"));
        }
    }
    let log = b
        .log
        .into_iter()
        .map(|entry| match entry {
            LogEntry::Line(line) => LogLine {
                stream: LogStream::Stdout,
                line,
            },
            LogEntry::Full { stream, line } => LogLine { stream, line },
        })
        .collect();
    let report = ProgressReport {
        lease_id: b.lease_id,
        stage: b.stage,
        step: b.step,
        step_index: b.step_index,
        message: b.message,
        percent: b.percent,
        log,
        blocked: b.blocked,
        correlation_id: corr.0,
    };
    let job = state.store.report_progress(&tenant.0, &id, &report).await?;
    Ok(HttpResponse::Ok().json(LeasedJobState::from(&job)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompleteBody {
    pub lease_id: String,
    /// Also stored as the artifact `completion` (application/json).
    pub result: Option<Value>,
    /// Files the worker produced; the request body limit
    /// (`Server.MaxBodyBytes`) bounds their total size.
    #[serde(default)]
    pub artifacts: Vec<UploadArtifact>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct UploadArtifact {
    /// `[A-Za-z0-9._-]{1,128}`, no leading dot; `completion` is reserved.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
    /// Default `application/octet-stream`.
    pub content_type: Option<String>,
    /// The bytes, standard base64.
    pub content_base64: String,
}

/// Validate and decode uploads, then the `completion` artifact of `result`.
fn completion_artifacts(
    result: Option<&Value>,
    uploads: Vec<UploadArtifact>,
) -> Result<Vec<NewArtifact>, ApiError> {
    let mut out: Vec<NewArtifact> = Vec::new();
    for (i, a) in uploads.into_iter().enumerate() {
        if !artifacts::valid_name(&a.name) || a.name == artifacts::COMPLETION {
            return Err(ApiError::field(
                &format!("artifacts[{i}].name"),
                "must match [A-Za-z0-9._-]{1,128}, no leading dot, not `completion`",
            ));
        }
        if out.iter().any(|o| o.name == a.name) {
            return Err(ApiError::field(
                &format!("artifacts[{i}].name"),
                "must be unique",
            ));
        }
        let content_type = a
            .content_type
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let ok_type = !content_type.is_empty()
            && content_type.len() <= 255
            && actix_web::http::header::HeaderValue::from_str(&content_type).is_ok();
        if !ok_type {
            return Err(ApiError::field(
                &format!("artifacts[{i}].content_type"),
                "must be a valid header value (1..=255 chars)",
            ));
        }
        let bytes = artifacts::decode_base64(&a.content_base64).ok_or_else(|| {
            ApiError::field(
                &format!("artifacts[{i}].content_base64"),
                "must be standard base64",
            )
        })?;
        out.push(NewArtifact {
            name: a.name,
            content_type,
            source: Source::Bytes(bytes),
        });
    }
    if let Some(result) = result.filter(|r| !r.is_null()) {
        out.insert(
            0,
            NewArtifact {
                name: artifacts::COMPLETION.to_owned(),
                content_type: "application/json".to_owned(),
                source: Source::Bytes(result.to_string().into_bytes()),
            },
        );
    }
    Ok(out)
}

#[utoipa::path(
    post,
    path = "/api/v1/orchestrator/jobs/{jobId}/complete",
    tag = "workers",
    summary = "Complete a leased job (→ done)",
    params(TenantHeader, ("jobId" = String, Path, description = "The job's id (a ULID, 26 Crockford base32 chars)", pattern = "^[0-9A-Za-z]{26}$")),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "The done job", body = Job),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`, `invalid_body`, `invalid_field` (an artifact's name, content type or base64)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lease_lost`: stale or foreign `leaseId`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: the body (uploads included) exceeds `Server.MaxBodyBytes`", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "`internal`: the artifacts could not be written", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn complete(
    tenant: Tenant,
    corr: CorrelationId,
    path: web::Path<String>,
    body: JsonBody<CompleteBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let body = body.0;
    if let Some(result) = &body.result {
        canonical_value("result", result)?;
    }
    let items = completion_artifacts(body.result.as_ref(), body.artifacts)?;
    // Files are written before the completing transaction: check the lease
    // first so a stale completion does not even write them. (Small
    // artifacts write none: their rows hold them, ADR 0061.)
    let cfg = &state.config.artifacts;
    if artifacts::writes_files(&items, cfg.inline_max_bytes) {
        let current = state.store.get_job(&tenant.0, &id).await?;
        let running = matches!(current.job_state(), JobState::Loading | JobState::Working);
        if !running || current.lease_id.as_deref() != Some(body.lease_id.as_str()) {
            return Err(crate::store::StoreError::LeaseLost.into());
        }
    }
    // Each completion writes under a directory of its own; the rows that
    // commit name the winner's files, a refused completion's go at once.
    let staged = artifacts::store_all(&cfg.dir, &tenant.0, &id, items, cfg.inline_max_bytes)
        .await
        .map_err(|e| {
            tracing::error!(job = %id, error = %e, "writing artifacts failed");
            ApiError::new(ErrorCode::Internal, "artifacts could not be stored")
        })?;
    // As `GET /jobs/{id}` lists them: without the event's inline bytes.
    let listed = staged
        .artifacts
        .iter()
        .map(|a| JobArtifact::stored(&id, a))
        .collect();
    let done = Completion {
        lease_id: body.lease_id,
        result: body.result,
        correlation_id: corr.0,
        artifacts: staged.artifacts.clone(),
    };
    let outcome = state.store.complete_job(&tenant.0, &id, &done).await;
    staged.settle(&outcome).await;
    let job = outcome?;
    Ok(HttpResponse::Ok().json(Job::new(&job).with_artifacts(listed)))
}

/// Log line range that explains the failure (1 <= start <= end).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogRange {
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailBody {
    pub lease_id: String,
    /// Requeue while attempts remain (default false).
    #[serde(default)]
    pub retryable: bool,
    /// snake_case, 1..=64 chars (default `worker_failed`).
    #[schema(pattern = "^[a-z0-9_]{1,64}$")]
    pub code: Option<String>,
    pub message: String,
    pub log_range: Option<LogRange>,
    /// Exit code of the failed step's process, if any.
    pub exit_code: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/orchestrator/jobs/{jobId}/fail",
    tag = "workers",
    summary = "Fail a leased job (→ failed, or queued again when retryable)",
    params(TenantHeader, ("jobId" = String, Path, description = "The job's id (a ULID, 26 Crockford base32 chars)", pattern = "^[0-9A-Za-z]{26}$")),
    request_body = FailBody,
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`, `invalid_body`, `invalid_field`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lease_lost`: stale or foreign `leaseId`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn fail(
    tenant: Tenant,
    corr: CorrelationId,
    path: web::Path<String>,
    body: JsonBody<FailBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let b = body.0;
    if let Some(r) = &b.log_range {
        if r.start < 1 || r.end < r.start {
            return Err(ApiError::field("logRange", "needs 1 <= start <= end"));
        }
    }
    let code = b.code.unwrap_or_else(|| "worker_failed".into());
    let snake = !code.is_empty()
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !snake {
        return Err(ApiError::field(
            "code",
            "must be 1..=64 chars of snake_case",
        ));
    }
    let failure = Failure {
        lease_id: b.lease_id,
        retryable: b.retryable,
        code,
        message: b.message,
        log_range: b.log_range.map(|r| (r.start, r.end)),
        exit_code: b.exit_code,
        correlation_id: corr.0,
    };
    let job = state.store.fail_job(&tenant.0, &id, &failure).await?;
    Ok(HttpResponse::Ok().json(Job::new(&job)))
}
