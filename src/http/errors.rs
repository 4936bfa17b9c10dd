//! One error type for every route, rendered as RFC 9457 problem+json with a
//! stable snake_case `code`. The table in [`ErrorCode`] is the only place a
//! code meets its status; the WebSocket's error frames take their codes from
//! the same table.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Serialize, Serializer};

use crate::store::StoreError;

/// Stable error codes and their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidTenant,
    InvalidRunId,
    InvalidJobId,
    InvalidBody,
    InvalidQuery,
    InvalidField,
    PayloadTooLarge,
    UnsupportedMediaType,
    RunNotFound,
    JobNotFound,
    ArtifactNotFound,
    RouteNotFound,
    MethodNotAllowed,
    RunExists,
    LeaseLost,
    IdempotencyConflict,
    InvalidState,
    NotRetryable,
    AlreadyRetried,
    UnknownPack,
    UnknownRun,
    StoreUnavailable,
    Internal,
    WebsocketHandshake,
    WebsocketUpgradeRequired,
    UnknownOp,
    UnknownStream,
    AlreadySubscribed,
    NotSubscribed,
    SubscriptionLimit,
    SubscriptionDropped,
    /// 401 without a credential (`WWW-Authenticate: Bearer`).
    Unauthenticated,
    /// 401 with a credential that is wrong (`error="invalid_token"`).
    InvalidToken,
    TenantForbidden,
    InsufficientScope,
    OriginForbidden,
    TooManyStreams,
    TooManyConnections,
    RequestTimeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    fn row(self) -> (&'static str, StatusCode, &'static str) {
        use ErrorCode::*;
        match self {
            InvalidTenant => (
                "invalid_tenant",
                StatusCode::BAD_REQUEST,
                "Missing or invalid tenant",
            ),
            InvalidRunId => ("invalid_run_id", StatusCode::BAD_REQUEST, "Invalid run id"),
            InvalidJobId => ("invalid_job_id", StatusCode::BAD_REQUEST, "Invalid job id"),
            InvalidBody => (
                "invalid_body",
                StatusCode::BAD_REQUEST,
                "Malformed request body",
            ),
            InvalidQuery => (
                "invalid_query",
                StatusCode::BAD_REQUEST,
                "Invalid query parameters",
            ),
            InvalidField => (
                "invalid_field",
                StatusCode::BAD_REQUEST,
                "Invalid field value",
            ),
            PayloadTooLarge => (
                "payload_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
            ),
            UnsupportedMediaType => (
                "unsupported_media_type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
            ),
            RunNotFound => ("run_not_found", StatusCode::NOT_FOUND, "Run not found"),
            JobNotFound => ("job_not_found", StatusCode::NOT_FOUND, "Job not found"),
            ArtifactNotFound => (
                "artifact_not_found",
                StatusCode::NOT_FOUND,
                "Artifact not found",
            ),
            RouteNotFound => ("not_found", StatusCode::NOT_FOUND, "No such route"),
            MethodNotAllowed => (
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
            ),
            RunExists => ("run_exists", StatusCode::CONFLICT, "Run already exists"),
            LeaseLost => ("lease_lost", StatusCode::CONFLICT, "Lease lost"),
            IdempotencyConflict => (
                "idempotency_conflict",
                StatusCode::CONFLICT,
                "Idempotency key reused for another request",
            ),
            InvalidState => (
                "invalid_state",
                StatusCode::CONFLICT,
                "Job state does not allow this",
            ),
            NotRetryable => (
                "not_retryable",
                StatusCode::CONFLICT,
                "Only failed or canceled jobs can be retried",
            ),
            AlreadyRetried => (
                "already_retried",
                StatusCode::CONFLICT,
                "Job was already retried",
            ),
            UnknownPack => (
                "unknown_pack",
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unknown pack",
            ),
            UnknownRun => (
                "run_not_found",
                StatusCode::UNPROCESSABLE_ENTITY,
                "Referenced run not found",
            ),
            StoreUnavailable => (
                "store_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
            ),
            Internal => (
                "internal",
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
            ),
            WebsocketHandshake => (
                "websocket_handshake",
                StatusCode::BAD_REQUEST,
                "WebSocket handshake required",
            ),
            WebsocketUpgradeRequired => (
                "websocket_handshake",
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket handshake required",
            ),
            // WebSocket error frames (SPEC §5.2) carry only the code; the
            // status is what the same refusal would be over HTTP.
            UnknownOp => ("unknown_op", StatusCode::BAD_REQUEST, "Unknown op"),
            UnknownStream => ("unknown_stream", StatusCode::BAD_REQUEST, "Unknown stream"),
            AlreadySubscribed => (
                "already_subscribed",
                StatusCode::CONFLICT,
                "Already subscribed",
            ),
            NotSubscribed => ("not_subscribed", StatusCode::CONFLICT, "Not subscribed"),
            SubscriptionLimit => (
                "subscription_limit",
                StatusCode::TOO_MANY_REQUESTS,
                "Too many subscriptions",
            ),
            SubscriptionDropped => (
                "subscription_dropped",
                StatusCode::CONFLICT,
                "Subscription dropped",
            ),
            Unauthenticated | InvalidToken => (
                "unauthenticated",
                StatusCode::UNAUTHORIZED,
                "Authentication required",
            ),
            TenantForbidden => (
                "tenant_forbidden",
                StatusCode::FORBIDDEN,
                "Tenant not allowed for this credential",
            ),
            InsufficientScope => (
                "insufficient_scope",
                StatusCode::FORBIDDEN,
                "Insufficient scope",
            ),
            OriginForbidden => (
                "origin_forbidden",
                StatusCode::FORBIDDEN,
                "Origin not allowed",
            ),
            TooManyStreams => (
                "too_many_streams",
                StatusCode::TOO_MANY_REQUESTS,
                "Too many streams",
            ),
            TooManyConnections => (
                "too_many_connections",
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many connections",
            ),
            RequestTimeout => (
                "request_timeout",
                StatusCode::REQUEST_TIMEOUT,
                "Request body too slow",
            ),
        }
    }

    /// `Retry-After` seconds for refusals that pass with time.
    fn retry_after(self) -> Option<u32> {
        match self {
            ErrorCode::TooManyStreams | ErrorCode::TooManyConnections => {
                Some(super::limits::RETRY_AFTER_SECONDS)
            }
            // The database is away (cut, restarting): try again shortly.
            ErrorCode::StoreUnavailable => Some(STORE_RETRY_AFTER_SECONDS),
            _ => None,
        }
    }
}

/// `Retry-After` of a 503 `store_unavailable`.
pub const STORE_RETRY_AFTER_SECONDS: u32 = 2;

/// On the wire a code is its snake_case string (WebSocket error frames).
impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// RFC 9457 problem details, served as `application/problem+json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
        }
    }

    /// `field`: what is wrong with it.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            ErrorCode::InvalidField,
            format!("field `{field}`: {problem}"),
        )
    }
}

impl ApiError {
    /// The problem+json body.
    pub fn problem(&self) -> Problem {
        let (code, status, title) = self.code.row();
        Problem {
            problem_type: format!("https://runsignal.dev/problems/{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            code: code.to_owned(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.row().1
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.content_type("application/problem+json");
        // RFC 6750 §3: how to authenticate, and what was wrong.
        let challenge = match self.code {
            ErrorCode::Unauthenticated => Some(r#"Bearer realm="runsignal""#),
            ErrorCode::InvalidToken => Some(r#"Bearer realm="runsignal", error="invalid_token""#),
            ErrorCode::InsufficientScope => {
                Some(r#"Bearer realm="runsignal", error="insufficient_scope""#)
            }
            _ => None,
        };
        if let Some(challenge) = challenge {
            res.insert_header((actix_web::http::header::WWW_AUTHENTICATE, challenge));
        }
        if let Some(secs) = self.code.retry_after() {
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        if self.code == ErrorCode::RequestTimeout {
            // The rest of the body is unread: the connection cannot be reused.
            res.force_close();
        }
        res.json(self.problem())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::RunNotFound => {
                ApiError::new(ErrorCode::RunNotFound, "no such run for this tenant")
            }
            StoreError::RunExists => {
                ApiError::new(ErrorCode::RunExists, "a run with this runId already exists")
            }
            StoreError::JobNotFound => {
                ApiError::new(ErrorCode::JobNotFound, "no such job for this tenant")
            }
            StoreError::LeaseLost => ApiError::new(
                ErrorCode::LeaseLost,
                "the leaseId is stale or not this job's current lease",
            ),
            StoreError::IdempotencyConflict(field) => ApiError::new(
                ErrorCode::IdempotencyConflict,
                format!(
                    "this idempotency_key was used within its window for a job with a \
                     different {field}; use a new key for a different request"
                ),
            ),
            StoreError::InvalidState(state) => ApiError::new(
                ErrorCode::InvalidState,
                format!("the job is {state}; terminal states never change"),
            ),
            StoreError::NotRetryable(state) => ApiError::new(
                ErrorCode::NotRetryable,
                format!("the job is {state}; only failed or canceled jobs can be retried"),
            ),
            StoreError::AlreadyRetried(retry) => ApiError::new(
                ErrorCode::AlreadyRetried,
                format!("the job was already retried as {retry}; retry that job instead"),
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the store could not complete the request",
                )
            }
        }
    }
}
