//! The async job surface `/jobs` (SPEC §7, snake_case bodies).

use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use runsignal_actors::JobState;
use serde::Deserialize;
use serde_json::Value;

use super::errors::{ApiError, ErrorCode, Problem};
use super::extract::{
    canonical_value, job_id, page_limit, parse_query, run_id, CorrelationId, JsonBody, Tenant,
    TenantHeader,
};
use super::model::job::{
    Job, JobAccepted, JobArtifact, JobDetail, JobList, JobStateName, JobWebhook,
};
use super::prefer::{wait_for_job, wait_preference};
use crate::store::{JobQuery, JobRecord, NewJob, WebhookDelivery};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// A pack declared server-side (e.g. `demo`, `external`).
    #[schema(min_length = 1, max_length = 64)]
    pub pack: String,
    /// Reach built-in steps as `INPUT_<NAME>` env vars.
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<serde_json::Map<String, Value>>,
    /// An existing run of the tenant; absent → a new run.
    #[schema(format = "uuid")]
    pub run_id: Option<String>,
    /// Defaults to the request's `X-Correlation-Id`.
    #[schema(min_length = 1, max_length = 128)]
    pub correlation_id: Option<String>,
    /// Absolute http(s) URL that receives a POST on every state transition.
    #[schema(format = "uri")]
    pub state_webhook_url: Option<String>,
    /// The same key for the tenant within 24 h returns the first job.
    #[schema(min_length = 1, max_length = 255)]
    pub idempotency_key: Option<String>,
}

/// The `GET /jobs/{id}` body: the job, its artifacts when done, and its
/// webhook delivery status.
pub async fn job_detail(state: &AppState, job: &JobRecord) -> Result<JobDetail, ApiError> {
    let deliveries = match job.webhook_url {
        Some(_) => {
            state
                .store
                .job_webhooks(&job.tenant_id, &job.job_id)
                .await?
        }
        None => Vec::new(),
    };
    let mut body = Job::new(job);
    // Artifact rows commit with the `done` transition: only done jobs have any.
    if job.job_state() == JobState::Done {
        let artifacts = state
            .store
            .list_artifacts(&job.tenant_id, &job.job_id)
            .await?;
        body = body.with_artifacts(artifacts.iter().map(JobArtifact::from).collect());
    }
    Ok(JobDetail {
        job: body,
        webhook: webhook(job, &deliveries),
    })
}

/// `webhook` of `GET /jobs/{id}`: null without a `state_webhook_url`, else
/// the URL and each delivery's status (oldest first), so a poller can see
/// what its receiver missed.
fn webhook(job: &JobRecord, deliveries: &[WebhookDelivery]) -> Option<JobWebhook> {
    Some(JobWebhook {
        url: job.webhook_url.clone()?,
        deliveries: deliveries.iter().map(Into::into).collect(),
    })
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max {
        return Err(ApiError::field(
            field,
            format!("must be 1..={max} characters"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/jobs",
    tag = "jobs",
    summary = "Submit a job",
    description = "Accepted at once (nothing waits on execution). No `run_id` → a new run. With `Prefer: wait=N` (RFC 7240, N ≤ 60) the answer waits up to N seconds for the job to end: 200 with the finished job, else the usual 202.",
    params(
        TenantHeader,
        ("Prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds (at most 60) for the job to end"),
    ),
    request_body = SubmitJob,
    responses(
        (status = 200, description = "`Prefer: wait=N` and the job ended within N seconds: the finished job",
            body = JobDetail,
            headers(("Preference-Applied" = String, description = "`wait=N`"), ("Location" = String, description = "`/jobs/{jobId}`"))),
        (status = 202, description = "Job accepted (queued), or the first job for a repeated `idempotency_key`",
            body = JobAccepted,
            headers(("Location" = String, description = "`/jobs/{jobId}`"))),
        (status = 400, description = "`invalid_tenant`, `invalid_body`, `invalid_field`, `invalid_run_id`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_conflict`: the key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_pack`; `run_not_found` when `run_id` names no run of the tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn submit_job(
    req: HttpRequest,
    tenant: Tenant,
    corr: CorrelationId,
    body: JsonBody<SubmitJob>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    check_len("pack", &body.pack, 64)?;
    if state.packs.get(&body.pack).is_none() {
        return Err(ApiError::new(
            ErrorCode::UnknownPack,
            format!("pack `{}` is not declared", body.pack),
        ));
    }
    let run_id = body.run_id.as_deref().map(run_id).transpose()?;
    if let Some(key) = &body.idempotency_key {
        check_len("idempotency_key", key, 255)?;
    }
    if let Some(c) = &body.correlation_id {
        check_len("correlation_id", c, 128)?;
    }
    if let Some(url) = &body.state_webhook_url {
        let ok = url::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(ApiError::field(
                "state_webhook_url",
                "must be an absolute http(s) URL",
            ));
        }
    }
    let inputs = Value::Object(body.inputs.unwrap_or_default());
    canonical_value("inputs", &inputs)?;
    let new = NewJob {
        pack: body.pack,
        inputs,
        run_id,
        correlation_id: body.correlation_id.unwrap_or(corr.0),
        webhook_url: body.state_webhook_url,
        idempotency_key: body.idempotency_key,
        max_attempts: state.config.jobs.max_attempts,
        idempotency_window_ms: state.config.jobs.idempotency_window_hours as i64 * 3_600_000,
    };
    let (job, _created) = state.store.submit_job(&tenant.0, new).await.map_err(|e| {
        match e {
            // A `run_id` in the body that names no run: the request is well
            // formed but impossible.
            crate::store::StoreError::RunNotFound => {
                ApiError::new(ErrorCode::UnknownRun, "run_id names no run of this tenant")
            }
            other => other.into(),
        }
    })?;
    let location = format!("/jobs/{}", job.job_id);
    let Some(wait) = wait_preference(&req) else {
        return Ok(accepted(&job, location));
    };
    let applied = format!("wait={wait}");
    Ok(match wait_for_job(&state, job.clone(), wait).await? {
        Some(done) => HttpResponse::Ok()
            .insert_header((header::LOCATION, location))
            .insert_header(("Preference-Applied", applied))
            .json(job_detail(&state, &done).await?),
        None => {
            let mut res = accepted(&job, location);
            // `wait=<digits>` is always a valid header value.
            res.headers_mut().insert(
                header::HeaderName::from_static("preference-applied"),
                header::HeaderValue::from_str(&applied).expect("ASCII digits"),
            );
            res
        }
    })
}

fn accepted(job: &JobRecord, location: String) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, location))
        .json(JobAccepted::from(job))
}

#[utoipa::path(
    get,
    path = "/jobs/{jobId}",
    tag = "jobs",
    summary = "Get a job (the poll path for missed webhooks)",
    params(TenantHeader, ("jobId" = String, Path, description = "The job's id (a ULID, 26 Crockford base32 chars)", pattern = "^[0-9A-Za-z]{26}$")),
    responses(
        (status = 200, description = "The job", body = JobDetail),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_job(
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let job = state.store.get_job(&tenant.0, &id).await?;
    Ok(HttpResponse::Ok().json(job_detail(&state, &job).await?))
}

/// Unknown parameters are ignored, as on every GET route (ADR 0030).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListJobs {
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next` of the previous page (a job id).
    cursor: Option<String>,
    /// Only jobs in this state.
    #[param(value_type = Option<JobStateName>)]
    state: Option<String>,
    /// Only jobs of this run.
    #[param(format = "uuid")]
    run_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    summary = "List jobs",
    params(TenantHeader, ListJobs),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "`invalid_tenant`, `invalid_query`, `invalid_field`, `invalid_run_id`, `invalid_job_id`. Unknown query parameters are ignored.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_jobs(
    req: HttpRequest,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q: ListJobs = parse_query(&req)?;
    let limit = page_limit(q.limit, 50, 200)?;
    let job_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::field(
                "state",
                "allowed values: queued, loading, working, done, failed, canceled",
            )
        })?),
    };
    let run_id = q.run_id.as_deref().map(run_id).transpose()?;
    let cursor = q.cursor.as_deref().map(job_id).transpose()?;
    let page = state
        .store
        .list_jobs(
            &tenant.0,
            &JobQuery {
                limit,
                cursor,
                state: job_state,
                run_id,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(JobList {
        jobs: page.items.iter().map(Job::new).collect(),
        next: page.next,
    }))
}

#[utoipa::path(
    post,
    path = "/jobs/{jobId}/cancel",
    tag = "jobs",
    summary = "Cancel a job",
    description = "Cancels a non-terminal job; its running steps are killed.",
    params(TenantHeader, ("jobId" = String, Path, description = "The job's id (a ULID, 26 Crockford base32 chars)", pattern = "^[0-9A-Za-z]{26}$")),
    responses(
        (status = 202, description = "Cancellation accepted", body = JobAccepted),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: the job is already terminal", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_job(
    tenant: Tenant,
    corr: CorrelationId,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let job = state.store.cancel_job(&tenant.0, &id, &corr.0).await?;
    Ok(HttpResponse::Accepted().json(JobAccepted::from(&job)))
}

#[utoipa::path(
    post,
    path = "/jobs/{jobId}/retry",
    tag = "jobs",
    summary = "Retry a failed or canceled job",
    description = "Queues a new job of the same pack, inputs and `state_webhook_url` in the same run, with `retry_of` naming this one; the run is then judged by the new job. A job is retried once: retry the newest job of a chain.",
    params(TenantHeader, ("jobId" = String, Path, description = "The job's id (a ULID, 26 Crockford base32 chars)", pattern = "^[0-9A-Za-z]{26}$")),
    responses(
        (status = 202, description = "The new job, queued", body = JobAccepted,
            headers(("Location" = String, description = "`/jobs/{jobId}` of the new job"))),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_retryable`: the job is not failed or canceled; `already_retried`: it was retried before", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_pack`: the job's pack is no longer declared", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry_job(
    tenant: Tenant,
    corr: CorrelationId,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    // A pack taken out of the configuration since: its retry would wait
    // forever (the writer checks the state; the pack is the server's).
    let old = state.store.get_job(&tenant.0, &id).await?;
    if state.packs.get(&old.pack).is_none() {
        return Err(ApiError::new(
            ErrorCode::UnknownPack,
            format!("pack `{}` is no longer declared", old.pack),
        ));
    }
    let job = state.store.retry_job(&tenant.0, &id, &corr.0).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/jobs/{}", job.job_id)))
        .json(JobAccepted::from(&job)))
}

#[utoipa::path(
    get,
    path = "/jobs/{jobId}/artifacts/{name}",
    tag = "jobs",
    summary = "Download a job artifact",
    description = "The bytes, streamed from storage, with `Content-Type`, `Content-Length` and a strong `ETag` (the SHA-256 in quotes); `If-None-Match` with it → 304. Always `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`; `Content-Disposition: attachment` unless the type is `application/json`, `text/plain` or a raster image.",
    params(
        TenantHeader,
        ("jobId" = String, Path, description = "The job's id (a ULID, 26 Crockford base32 chars)", pattern = "^[0-9A-Za-z]{26}$"),
        ("name" = String, Path, description = "The artifact's name (`completion` holds the result JSON)", pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"),
        ("If-None-Match" = Option<String>, Header, description = "A previous `ETag`: 304 when unchanged"),
    ),
    responses(
        (status = 200, description = "The artifact's bytes", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("ETag" = String, description = "`\"<sha256 hex>\"`"), ("Content-Length" = u64, description = "The size in bytes"),
                ("X-Content-Type-Options" = String, description = "`nosniff`"),
                ("Content-Security-Policy" = String, description = "`sandbox`"),
                ("Content-Disposition" = String, description = "`inline; filename=\"<name>\"` for JSON, plain text and raster images, else `attachment; filename=\"<name>\"`"))),
        (status = 304, description = "Not modified (`If-None-Match` matched)"),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found`, `artifact_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_artifact(
    req: HttpRequest,
    tenant: Tenant,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, name) = path.into_inner();
    let id = job_id(&raw_id)?;
    let job = state.store.get_job(&tenant.0, &id).await?;
    let not_found = || {
        ApiError::new(
            ErrorCode::ArtifactNotFound,
            format!("job {} has no artifact `{name}`", job.job_id),
        )
    };
    if !crate::artifacts::valid_name(&name) {
        return Err(not_found());
    }
    let artifact = state
        .store
        .get_artifact(&tenant.0, &id, &name)
        .await?
        .ok_or_else(not_found)?;
    let etag = format!("\"{}\"", artifact.sha256);
    let matched = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag.as_str()));
    if matched {
        let mut res = HttpResponse::NotModified();
        res.insert_header((header::ETAG, etag));
        return Ok(sandboxed(res, &artifact.content_type, &name).finish());
    }
    if let Some(bytes) = artifact.content {
        // Held in its row (ADR 0061).
        let mut res = HttpResponse::Ok();
        res.content_type(artifact.content_type.as_str())
            .insert_header((header::ETAG, etag));
        return Ok(sandboxed(res, &artifact.content_type, &name).body(bytes));
    }
    let file = tokio::fs::File::open(&artifact.path).await.map_err(|e| {
        tracing::warn!(job = %id, artifact = %name, error = %e, "artifact file unreadable");
        not_found()
    })?;
    let size = artifact.size as u64;
    let mut res = HttpResponse::Ok();
    res.content_type(artifact.content_type.as_str())
        .insert_header((header::ETAG, etag))
        .no_chunking(size);
    Ok(sandboxed(res, &artifact.content_type, &name).streaming(file_chunks(file, size)))
}

/// SPEC §11: a worker chooses an artifact's bytes and type, so a browser
/// must never run it as the service's page: no sniffing, a sandbox with
/// no script or same-origin rights, and a download (attachment) for every
/// type but JSON, plain text and raster images (see
/// [`crate::artifacts::served_inline`]).
fn sandboxed(mut res: HttpResponseBuilder, content_type: &str, name: &str) -> HttpResponseBuilder {
    let disposition = if crate::artifacts::served_inline(content_type) {
        DispositionType::Inline
    } else {
        DispositionType::Attachment
    };
    res.insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, "sandbox"))
        .insert_header(ContentDisposition {
            disposition,
            // Artifact names are `[A-Za-z0-9._-]`: a safe filename as is.
            parameters: vec![DispositionParam::Filename(name.to_owned())],
        });
    res
}

/// The file as a stream of chunks of at most [`crate::artifacts::CHUNK`]
/// bytes, ending after `size` bytes: never read whole into memory.
fn file_chunks(
    file: tokio::fs::File,
    size: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    use tokio::io::AsyncReadExt as _;
    futures_util::stream::unfold((file, size), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = (left as usize).min(crate::artifacts::CHUNK);
        let mut buf = bytes::BytesMut::zeroed(want);
        match file.read(&mut buf).await {
            Ok(0) => Some((Err(std::io::ErrorKind::UnexpectedEof.into()), (file, 0))),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.freeze()), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}
