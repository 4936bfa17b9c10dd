//! `/openapi.json`, generated from the handlers' annotations.
//!
//! Every `{prefix}` route is annotated once, under `/api/v1/orchestrator`;
//! [`document`] then mirrors each of those path items under
//! `/api/v1/jobengine` (both prefixes serve the same routes, SPEC §2), and
//! adds what every route shares: the `X-Correlation-Id` request header and
//! its echo on every response. The schemas below describe the bodies that
//! handlers build with `serde_json::json!`; they exist for the document only.

use std::sync::OnceLock;

use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::{Header, ObjectBuilder, RefOr, Required, Type};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::http::errors::{ApiError, ErrorCode};
use crate::http::{first_signal, jobs, ops, runs, streams, workers, ws};

/// The prefix the `{prefix}` routes are annotated under.
pub const ANNOTATED_PREFIX: &str = "/api/v1/orchestrator";
/// The other prefix serving the same routes; its paths are mirrored.
pub const MIRRORED_PREFIX: &str = "/api/v1/jobengine";

const CORRELATION_HEADER: &str = "X-Correlation-Id";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "runsignal",
        description = "Run orchestrator: first signal, jobs, remote workers.\n\n\
            Every `/api/v1/orchestrator/...` route is also served, identically, under \
            `/api/v1/jobengine/...`. Errors are `application/problem+json` (RFC 9457) \
            with a stable snake_case `code`."
    ),
    paths(
        runs::create_run,
        runs::list_runs,
        runs::get_run,
        runs::timeline,
        first_signal::get_first_signal,
        workers::lease,
        workers::progress,
        workers::complete,
        workers::fail,
        ops::packs,
        streams::run_stream,
        streams::job_stream,
        streams::pack_run_stream,
        ws::socket,
        jobs::submit_job,
        jobs::list_jobs,
        jobs::get_job,
        jobs::cancel_job,
        jobs::get_artifact,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        serve,
    ),
    components(schemas(Problem)),
    tags(
        (name = "runs", description = "Runs and their event timeline (SPEC §6, §7)"),
        (name = "first-signal", description = "The run's current one-line status (SPEC §4)"),
        (name = "workers", description = "Remote worker protocol: lease, progress, complete, fail (SPEC §7.1)"),
        (name = "jobs", description = "The async job surface `/jobs` (SPEC §7), snake_case bodies"),
        (name = "streams", description = "Server-Sent Events over the run actors (SPEC §5.1)"),
        (name = "ops", description = "Operational routes"),
    )
)]
pub struct ApiDoc;

/// The served document: the annotations, plus the shared correlation
/// header, plus every `/api/v1/orchestrator` path mirrored under
/// `/api/v1/jobengine`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for item in doc.paths.paths.values_mut() {
        for (method, op) in operations_mut(item) {
            add_correlation(op);
            // One handler may serve several methods (GET and HEAD): keep
            // operation ids unique.
            if method == "head" {
                if let Some(id) = &mut op.operation_id {
                    *id = format!("head_{id}");
                }
            }
        }
    }
    let mirrored: Vec<(String, PathItem)> = doc
        .paths
        .paths
        .iter()
        .filter_map(|(path, item)| {
            let rest = path.strip_prefix(ANNOTATED_PREFIX)?;
            let mut item = item.clone();
            for (_, op) in operations_mut(&mut item) {
                if let Some(id) = &mut op.operation_id {
                    *id = format!("jobengine_{id}");
                }
            }
            Some((format!("{MIRRORED_PREFIX}{rest}"), item))
        })
        .collect();
    doc.paths.paths.extend(mirrored);
    doc
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
        ("query", &mut item.query),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_mut().map(|op| (method, op)))
}

/// `X-Correlation-Id` in (optional) and echoed on every response: the
/// `observe` middleware does this for every route.
fn add_correlation(op: &mut Operation) {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let param: Parameter = ParameterBuilder::new()
        .name(CORRELATION_HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Carried into the events this request causes; generated when absent \
             (used only when 1..=128 chars).",
        ))
        .schema(Some(string().max_length(Some(128))))
        .build();
    let params = op.parameters.get_or_insert_with(Vec::new);
    params.push(RefOr::T(param));
    for response in op.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            let mut header = Header::new(string());
            header.description =
                Some("The request's correlation id, or the one generated for it.".into());
            response
                .headers
                .entry(CORRELATION_HEADER.into())
                .or_insert(RefOr::T(header));
        }
    }
}

/// The OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1, JSON)", body = Object),
    )
)]
pub async fn serve() -> HttpResponse {
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    match DOC.get_or_init(|| serde_json::to_string(&document()).map_err(|e| e.to_string())) {
        Ok(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body.clone()),
        Err(e) => {
            ApiError::new(ErrorCode::Internal, format!("openapi document: {e}")).error_response()
        }
    }
}

// ---------------------------------------------------------------------------
// Shared parameters and schemas.

/// The tenant header every tenant-scoped route requires.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct TenantHeader {
    /// The tenant this request acts for: 1–64 chars of `[A-Za-z0-9._:-]`.
    /// Missing or invalid → 400 `invalid_tenant`. Another tenant's resources
    /// are 404, never 403.
    #[param(
        rename = "X-Tenant-Id",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._:-]{1,64}$",
        example = "acme"
    )]
    pub x_tenant_id: String,
}

/// RFC 9457 problem details, served as `application/problem+json`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "https://runsignal.dev/problems/run_not_found",
    "title": "Run not found",
    "status": 404,
    "detail": "no such run for this tenant",
    "code": "run_not_found"
}))]
pub struct Problem {
    /// `https://runsignal.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong; names the offending field for body/query errors.
    pub detail: String,
    /// Stable snake_case code, e.g. `invalid_tenant`, `invalid_run_id`,
    /// `invalid_field`, `run_not_found`, `unknown_pack`, `lease_lost`,
    /// `payload_too_large`.
    pub code: String,
}

/// A run (`/api/v1` bodies are camelCase).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    #[schema(format = "uuid")]
    pub run_id: String,
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(value_type = Object)]
    pub labels: Value,
    pub status: RunStatus,
    /// Seq of the run's latest timeline event.
    pub last_seq: i64,
    #[schema(format = DateTime, example = "2026-11-22T08:00:10.123Z")]
    pub created_at: String,
    #[schema(format = DateTime, example = "2026-11-22T08:00:10.123Z")]
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

/// A page of runs, newest first.
#[derive(Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
    /// Cursor for the next page, or null on the last page.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// A page of the run's event envelopes, in seq order.
#[derive(Serialize, ToSchema)]
pub struct Timeline {
    pub events: Vec<EventEnvelope>,
    /// Seq to pass as `after` for the next page, or null.
    #[schema(required = true)]
    pub next: Option<u64>,
}

/// An immutable timeline event (SPEC §6).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    /// ULID.
    pub event_id: String,
    /// `runsignal.event.v1`.
    pub schema_version: String,
    /// E.g. `run.created`, `job.queued`, `job.progress`, `signal.changed`,
    /// `run.completed`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub tenant_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    #[schema(required = true)]
    pub job_id: Option<String>,
    /// Per-run sequence number: 1, 2, 3, … without gaps.
    pub seq: u64,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    pub correlation_id: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    /// `sha256:<hex>` over the RFC 8785 canonical JSON of the envelope
    /// without `hash`.
    pub hash: String,
}

/// `GET {prefix}/runs/{runId}/first-signal` body (SPEC §4.2).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirstSignalBody {
    #[schema(format = "uuid")]
    pub run_id: String,
    pub first_signal: FirstSignal,
    /// Equals the `ETag` header: `W/"<64 lowercase hex>"`.
    #[schema(example = "W/\"3f1c…\"")]
    pub summary_etag: String,
}

#[derive(Serialize, ToSchema)]
pub struct FirstSignal {
    #[serde(rename = "type")]
    pub kind: SignalType,
    /// The deciding step's stage, `unknown` when none.
    pub stage: String,
    #[schema(required = true)]
    pub step: Option<String>,
    /// The deciding job's latest progress message or error summary, or the
    /// kind's default text.
    pub message: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub artifact: SignalArtifact,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignalType {
    Queued,
    Started,
    Phase,
    Blocked,
    Failed,
    Succeeded,
    Canceled,
    Unavailable,
}

/// What the signal points at.
#[derive(Serialize, ToSchema)]
pub struct SignalArtifact {
    pub kind: SignalArtifactKind,
    /// Log line range that explains a failure, or null.
    #[schema(required = true)]
    pub range: Option<LineRange>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignalArtifactKind {
    Run,
    Job,
    Step,
}

#[derive(Serialize, ToSchema)]
pub struct LineRange {
    pub start: i64,
    pub end: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStateName {
    Queued,
    Loading,
    Working,
    Done,
    Failed,
    Canceled,
}

/// `202` of `POST /jobs` and `POST /jobs/{jobId}/cancel`.
#[derive(Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    pub state: JobStateName,
}

/// `GET /jobs/{jobId}`: everything a poller needs to reconcile (snake_case).
#[derive(Serialize, ToSchema)]
pub struct Job {
    /// ULID.
    pub job_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    pub pack: String,
    pub state: JobStateName,
    /// Set while the job waits (e.g. retry backoff), else null.
    #[schema(required = true)]
    pub blocked: Option<JobBlocked>,
    pub attempt: i64,
    pub max_attempts: i64,
    #[schema(value_type = Object)]
    pub inputs: Value,
    pub correlation_id: String,
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime, required = true)]
    pub started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
    pub progress: JobProgress,
    /// The current remote-worker lease, or null.
    #[schema(required = true)]
    pub lease: Option<JobLease>,
    /// The completion result, or null.
    #[schema(required = true)]
    pub result: Option<Value>,
    #[schema(required = true)]
    pub error: Option<JobError>,
    pub artifacts: Vec<JobArtifact>,
    #[schema(required = true)]
    pub state_webhook_url: Option<String>,
    /// Delivery status of the state webhooks (null without a URL).
    #[schema(required = true)]
    pub webhook: Option<JobWebhook>,
}

#[derive(Serialize, ToSchema)]
pub struct JobWebhook {
    pub url: String,
    /// Oldest first: one per state transition.
    pub deliveries: Vec<WebhookDeliveryStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookDeliveryStatus {
    pub state: String,
    /// `<job_id>:<state>`, also sent as `webhook-id`.
    pub idempotency_key: String,
    /// pending | sending | delivered | failed | gone
    pub status: String,
    pub attempts: i64,
    #[schema(required = true)]
    pub last_status_code: Option<i64>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// When the next attempt is due (null once settled).
    #[schema(required = true)]
    pub next_attempt_at: Option<String>,
    #[schema(required = true)]
    pub delivered_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobBlocked {
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct JobProgress {
    #[schema(required = true)]
    pub stage: Option<String>,
    #[schema(required = true)]
    pub step: Option<String>,
    #[schema(required = true)]
    pub step_index: Option<i64>,
    #[schema(required = true)]
    pub message: Option<String>,
    #[schema(required = true)]
    pub percent: Option<f64>,
    pub log_lines: i64,
}

#[derive(Serialize, ToSchema)]
pub struct JobLease {
    #[schema(required = true)]
    pub worker_id: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub lease_until: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobError {
    pub code: String,
    #[schema(required = true)]
    pub message: Option<String>,
}

/// An artifact of a done job (`completion` holds the result JSON). In the
/// `done` event and webhook, artifacts up to `Artifacts.InlineMaxBytes` also
/// carry `content_base64`.
#[derive(Serialize, ToSchema)]
pub struct JobArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    /// `/jobs/{jobId}/artifacts/{name}`
    pub url: String,
}

/// A page of jobs.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Cursor (a job id) for the next page, or null.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// The job after a progress report, with the (extended) lease's id.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeasedJobState {
    #[serde(flatten)]
    pub job: Job,
    #[schema(required = true)]
    pub lease_id: Option<String>,
}

/// `POST {prefix}/workers/lease` answer: empty when nothing is available.
#[derive(Serialize, ToSchema)]
pub struct LeaseGrant {
    pub jobs: Vec<LeasedJob>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeasedJob {
    pub job_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    pub pack: String,
    #[schema(value_type = Object)]
    pub inputs: Value,
    /// Pass back on progress, complete and fail.
    pub lease_id: String,
    #[schema(format = DateTime)]
    pub lease_until: String,
    pub attempt: i64,
}

/// `stdout` or `stderr`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStreamName {
    Stdout,
    Stderr,
}

/// `GET {prefix}/packs`.
#[derive(Serialize, ToSchema)]
pub struct PackList {
    pub packs: Vec<PackInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct PackInfo {
    pub name: String,
    pub description: String,
    pub executor: PackExecutor,
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackExecutor {
    Builtin,
    Remote,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// Why the store is unreachable (only when `unavailable`).
    pub detail: Option<String>,
}
