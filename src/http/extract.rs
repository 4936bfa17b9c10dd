//! Request extractors shared by every route: tenant, correlation id, ids,
//! and JSON bodies whose errors name the offending field.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use actix_web::http::header::HeaderValue;

use super::auth::{authorize, is_stream_route, query_param};
use super::errors::{ApiError, ErrorCode};
use crate::auth::Principal;
use crate::AppState;

/// The tenant a request acts for: `X-Tenant-Id`, 1–64 chars of
/// `[A-Za-z0-9._:-]`. The one place tenants are resolved: with
/// `Auth.Mode` other than `none` it also checks the route's scope and that
/// the credential may act for the tenant (see [`tenant_for`]).
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// The tenant header every tenant-scoped route requires.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct TenantHeader {
    /// The tenant this request acts for: 1–64 chars of `[A-Za-z0-9._:-]`.
    /// Missing or invalid → 400 `invalid_tenant`. Another tenant's resources
    /// are 404, never 403. With a credential bound to one tenant it may be
    /// left out; a tenant outside the credential → 403 `tenant_forbidden`.
    #[param(
        rename = "X-Tenant-Id",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._:-]{1,64}$",
        example = "acme"
    )]
    pub x_tenant_id: String,
}

/// 1–64 of `[A-Za-z0-9._:-]`, and not `.` or `..`: a tenant id names a
/// directory under `Artifacts.Dir` (SPEC §11).
pub fn valid_tenant(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
}

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Tenant, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(resolve_tenant(req))
    }
}

/// Scope first (403 `insufficient_scope`), then the tenant named (400 when
/// malformed), then the tenant rules.
fn resolve_tenant(req: &HttpRequest) -> Result<Tenant, ApiError> {
    let principal = authorize(req)?;
    let named = named_tenant(req)?;
    let enabled = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|s| s.auth.enabled());
    tenant_for(enabled, principal.as_ref(), named)
}

/// The tenant a request names: `X-Tenant-Id`, or on the stream and
/// WebSocket routes themselves (browsers' EventSource and WebSocket cannot
/// set headers) `?tenant=`. Malformed or repeated → 400.
pub fn named_tenant(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    named_tenant_on(req, || is_stream_route(req))
}

/// [`named_tenant`], told whether the route is a stream route (a caller
/// that knows its route spares the resource-map walk).
pub fn named_tenant_on(
    req: &HttpRequest,
    stream_route: impl FnOnce() -> bool,
) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all("x-tenant-id");
    let mut first = values.next().cloned();
    // Two tenants in one request: refuse rather than pick one.
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidTenant,
            "header X-Tenant-Id must be given once",
        ));
    }
    if first.is_none() && stream_route() {
        first =
            query_param(req.query_string(), "tenant").and_then(|t| HeaderValue::from_str(&t).ok());
    }
    match first.as_ref().map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(t)) if valid_tenant(t) => Ok(Some(t.to_owned())),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidTenant,
            "X-Tenant-Id must be 1-64 chars of [A-Za-z0-9._:-]",
        )),
    }
}

/// The tenant rules (SPEC §10). Without authentication the named tenant is
/// trusted and required. With it, a named tenant must be one of the
/// credential's; a credential bound to exactly one tenant may leave it out.
pub fn tenant_for(
    auth_enabled: bool,
    principal: Option<&Principal>,
    named: Option<String>,
) -> Result<Tenant, ApiError> {
    let required = || ApiError::new(ErrorCode::InvalidTenant, "header X-Tenant-Id is required");
    if !auth_enabled {
        return named.map(Tenant).ok_or_else(required);
    }
    let Some(principal) = principal else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "this route needs a credential: `Authorization: Bearer <token>`",
        ));
    };
    match named {
        Some(t) if principal.allows_tenant(&t) => Ok(Tenant(t)),
        Some(t) => Err(ApiError::new(
            ErrorCode::TenantForbidden,
            format!("this credential may not act for tenant `{t}`"),
        )),
        None => principal
            .sole_tenant()
            .map(|t| Tenant(t.to_owned()))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidTenant,
                    "header X-Tenant-Id is required: this credential is not bound to one tenant",
                )
            }),
    }
}

/// The request's correlation id (from `X-Correlation-Id` or generated by the
/// middleware, which also echoes it on the response).
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

impl FromRequest for CorrelationId {
    type Error = ApiError;
    type Future = std::future::Ready<Result<CorrelationId, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req.extensions().get::<CorrelationId>().cloned();
        std::future::ready(Ok(
            id.unwrap_or_else(|| CorrelationId(runsignal_actors::new_ulid()))
        ))
    }
}

/// A run id: any UUID, case-insensitive in, lowercase hyphenated out.
pub fn run_id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| {
            // Not `to_string`: the formatting machinery costs more than the
            // parse, on the hottest route.
            u.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned()
        })
        .map_err(|_| ApiError::new(ErrorCode::InvalidRunId, format!("`{raw}` is not a UUID")))
}

/// A job id: a ULID (26 Crockford base32 chars), normalized to upper case.
pub fn job_id(raw: &str) -> Result<String, ApiError> {
    // 26 chars carry 130 bits: a first char above `7` overflows the 128-bit
    // value, and the decoder would silently drop those bits, so that
    // `8…` named the same job as `0…`.
    let fits = raw
        .as_bytes()
        .first()
        .is_some_and(|c| (b'0'..=b'7').contains(c));
    ulid::Ulid::from_string(raw)
        .ok()
        .filter(|_| fits)
        .map(|u| u.to_string())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidJobId, format!("`{raw}` is not a ULID")))
}

/// A JSON body limited to `Server.MaxBodyBytes` and to
/// `Server.BodyTimeoutSeconds` (see [`body_deadline`]); errors name the field.
pub struct JsonBody<T>(pub T);

/// When a request's body must have arrived whole: `Server.BodyTimeoutSeconds`
/// after the handler starts reading it (actix's own `client_request_timeout`
/// covers only the head). Every extractor that reads a body reads it within
/// [`BodyDeadline::read`]; a body still trickling then is a 408.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    seconds: u64,
}

impl BodyDeadline {
    pub fn of(req: &HttpRequest) -> BodyDeadline {
        let seconds = req
            .app_data::<web::Data<AppState>>()
            .map_or(30, |s| s.config.server.body_timeout_seconds);
        BodyDeadline { seconds }
    }

    /// Run `read` (the body's reading) within the deadline.
    pub async fn read<T>(
        self,
        read: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let limit = std::time::Duration::from_secs(self.seconds);
        tokio::time::timeout(limit, read).await.map_err(|_| {
            ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s (Server.BodyTimeoutSeconds)",
                    self.seconds
                ),
            )
        })?
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<JsonBody<T>, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<AppState>>()
            .map_or(1 << 20, |s| s.config.server.max_body_bytes);
        let deadline = BodyDeadline::of(req);
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let json = is_json(req);
        let mut payload = payload.take();
        Box::pin(async move {
            let too_large = || {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body limit is {limit} bytes"),
                )
            };
            if declared.is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let read = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk =
                        chunk.map_err(|e| ApiError::new(ErrorCode::InvalidBody, e.to_string()))?;
                    if body.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            let body = deadline.read(read).await?;
            // No body at all is `invalid_body` below, whatever the type.
            if !json && !body.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "the body must be sent as Content-Type: application/json",
                ));
            }
            parse_json(&body).map(JsonBody)
        })
    }
}

/// `application/json` or `application/<something>+json`, parameters
/// allowed. Anything else (`text/plain` is what a cross-site form can send
/// without a CORS preflight) is refused before the body is read.
fn is_json(req: &HttpRequest) -> bool {
    let Some(Ok(value)) = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .map(|v| v.to_str())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Deserialize, reporting the path of the field that failed.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "a JSON body is required",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let detail = if inner.is_syntax() || inner.is_eof() || path == "." {
            format!("malformed JSON: {inner}")
        } else {
            format!("field `{path}`: {inner}")
        };
        ApiError::new(ErrorCode::InvalidBody, detail)
    })?;
    // One JSON value and nothing after it but whitespace.
    de.end()
        .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// A free-form JSON value from a client (inputs, labels, results) that the
/// service will hash as canonical JSON (RFC 8785): a number outside the
/// double range (`1e400`) has no canonical form and is refused here, before
/// anything is written.
pub fn canonical_value(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    runsignal_actors::envelope::try_canonical_json(value)
        .map(drop)
        .map_err(|e| ApiError::field(field, format!("has no canonical JSON form: {e}")))
}

/// Query string parsing with problem+json errors.
pub fn parse_query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.to_string()))
}

/// The largest seq a run can reach (seqs are stored as signed 64-bit).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// A seq a client sent (`after`, `lastEventId`): past [`MAX_SEQ`] it is not a
/// seq at all, and would wrap to a negative number in the store.
pub fn seq(field: &str, value: u64) -> Result<u64, ApiError> {
    if value > MAX_SEQ {
        return Err(ApiError::field(field, format!("must be 0..={MAX_SEQ}")));
    }
    Ok(value)
}

/// A list route's `limit`: `default` when absent, else within `1..=max`.
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::field("limit", format!("must be 1..={max}")));
    }
    Ok(limit)
}
