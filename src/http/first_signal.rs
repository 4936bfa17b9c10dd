//! `GET|HEAD {prefix}/runs/{runId}/first-signal` (SPEC §4.2). A hit is the
//! resident run actor's published signal, read without a message, and
//! pre-encoded bytes back: no store query, no serialization, no mailbox.
//! [`hot`] answers hits before routing; everything else (cold, changing,
//! missing runs, and every error) goes through the router to
//! [`get_first_signal`], which asks the actor (ADR 0051).

use std::time::Duration;

use actix::MailboxError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use runsignal_actors::signal::Signal;
use runsignal_actors::{FirstSignalReply, GetFirstSignal, RunKey, SignalView, Source};
use serde::Serialize;

use super::auth::{authorize_scope, QueryCredential};
use super::errors::{ApiError, ErrorCode, Problem};
use super::extract::{named_tenant_on, run_id, tenant_for, Tenant, TenantHeader};
use crate::auth::Scope;
use crate::store::{now_ms, rfc3339};
use crate::AppState;

/// Ask the run's actor, bounding a cold load by `ColdPath.TimeoutMs`.
/// `None`: the cold path ran out of time.
pub async fn ask(state: &AppState, key: &RunKey) -> Result<Option<FirstSignalReply>, ApiError> {
    let cold_timeout = Duration::from_millis(state.config.first_signal.cold_path.timeout_ms);
    // A second try covers an actor that stopped (evicted, crashed) between
    // lookup and send: the retry spawns a fresh one.
    for _ in 0..2 {
        let handle = state.engine.supervisor.lookup(key);
        let request = handle.addr.send(GetFirstSignal { warm: handle.warm });
        let reply = if handle.warm {
            request.await
        } else {
            // The deadline is looked at first: with `TimeoutMs` 0 a cold
            // read never waits, even when the actor (on another thread)
            // happens to have answered already.
            tokio::select! {
                biased;
                () = tokio::time::sleep(cold_timeout) => return Ok(None),
                reply = request => reply,
            }
        };
        match reply {
            Ok(reply) => return Ok(Some(reply)),
            Err(MailboxError::Closed | MailboxError::Timeout) => continue,
        }
    }
    Err(ApiError::new(
        ErrorCode::StoreUnavailable,
        "the run's actor could not be reached",
    ))
}

/// The route pattern of a request [`hot`] answered, for the request metrics
/// (which otherwise ask actix to match the path again).
#[derive(Clone, Copy)]
pub struct HotRoute(pub &'static str);

/// The first-signal pattern under each API prefix, in `PREFIXES` order.
const PATTERNS: [&str; 2] = [
    "/api/v1/orchestrator/runs/{runId}/first-signal",
    "/api/v1/jobengine/runs/{runId}/first-signal",
];

/// `{prefix}/runs/{runId}/first-signal` as written (no percent-encoding,
/// nothing after the last segment): the run id segment and the pattern.
/// Whenever this finds one, the router matches the same pattern.
pub fn hot_path(path: &str) -> Option<(&str, &'static str)> {
    super::PREFIXES
        .iter()
        .zip(PATTERNS)
        .find_map(|(prefix, pattern)| {
            let rest = path.strip_prefix(prefix)?.strip_prefix("/runs/")?;
            let id = rest.strip_suffix("/first-signal")?;
            (!id.is_empty() && !id.contains(['/', '%'])).then_some((id, pattern))
        })
}

/// Middleware, inside authentication and before routing: answers a GET or
/// HEAD of a first signal whose run actor is resident, loaded and has no
/// event on its way (`Supervisor::warm_signal`), with the same answer the
/// handler gives. Any other request, and any request the handler would
/// refuse or answer otherwise, passes on to the router unchanged.
pub async fn hot(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some((res, pattern)) = hot_answer(&req) {
        req.extensions_mut().insert(HotRoute(pattern));
        return Ok(req.into_response(res).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn hot_answer(req: &ServiceRequest) -> Option<(HttpResponse, &'static str)> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let (raw_id, pattern) = hot_path(req.path())?;
    let state = req.app_data::<web::Data<AppState>>()?;
    // What the `Tenant` extractor checks, for this route (not a stream
    // route): a credential from `?access_token=` is for stream routes
    // only, the scope is `read`, and the tenant rules.
    if req.extensions().get::<QueryCredential>().is_some() {
        return None;
    }
    let principal = authorize_scope(req.request(), Scope::Read).ok()?;
    let named = named_tenant_on(req.request(), || false).ok()?;
    let tenant = tenant_for(state.auth.enabled(), principal.as_ref(), named).ok()?;
    let run_id = run_id(raw_id).ok()?;
    let view = state
        .engine
        .supervisor
        .warm_signal(&RunKey::new(&tenant.0, &run_id))?;
    state.metrics.first_signal.cache(true).inc();
    let res = signal_response(req.request(), &view, true, Source::Snapshot.as_str());
    Some((res, pattern))
}

/// Weak comparison of `If-None-Match` against `etag` (RFC 9110 §13.1.2).
pub fn if_none_match_hits(req: &HttpRequest, etag: &str) -> bool {
    fn opaque(t: &str) -> &str {
        let t = t.trim();
        t.strip_prefix("W/").unwrap_or(t)
    }
    let values = req.headers().get_all(header::IF_NONE_MATCH);
    // What a client that read the signal before sends back: our tag as it
    // was written, alone. Settled without parsing the list.
    if let [only] = values.as_slice() {
        if only.as_bytes() == etag.as_bytes() && !etag.contains(',') {
            return true;
        }
    }
    let ours = opaque(etag);
    values.filter_map(|v| v.to_str().ok()).any(|list| {
        list.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || (!tag.is_empty() && opaque(tag) == ours))
    })
}

pub(super) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
static SOURCE: HeaderName = HeaderName::from_static("x-firstsignal-source");
static PRIVATE_60: HeaderValue = HeaderValue::from_static("private, max-age=60");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

fn signal_response(
    req: &HttpRequest,
    view: &SignalView,
    hit: bool,
    source: &'static str,
) -> HttpResponse {
    let not_modified = if_none_match_hits(req, &view.etag);
    let mut resp = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    // Static names and values: `insert_header` with strings parses them
    // again on every request.
    let cache_status = HeaderValue::from_static(if hit { "hit" } else { "miss" });
    resp.insert_header((header::ETAG, view.etag.as_str()))
        .insert_header((header::CACHE_CONTROL, PRIVATE_60.clone()))
        .insert_header((CACHE_STATUS.clone(), cache_status))
        .insert_header((SOURCE.clone(), HeaderValue::from_static(source)));
    if not_modified {
        return resp.finish();
    }
    resp.insert_header((header::CONTENT_TYPE, JSON.clone()))
        .body(view.body.clone())
}

#[utoipa::path(
    method(get, head),
    path = "/api/v1/orchestrator/runs/{runId}/first-signal",
    tag = "first-signal",
    summary = "The run's first signal",
    description = "The run's current best one-line status, from the run actor's memory, the \
        cache or the snapshot table (`Cache-Status: hit`), or computed from the jobs now \
        (`miss`). HEAD is answered like GET without a body.",
    params(
        TenantHeader,
        ("runId" = String, Path, format = "uuid", description = "The run's id (any UUID, case-insensitive)"),
        ("If-None-Match" = Option<String>, Header, nullable = false,
            description = "Entity tags, weak comparison; `*` matches when a signal exists"),
    ),
    responses(
        (status = 200, description = "The signal. When the cold path runs out of time: type \
            `unavailable`, `Cache-Control: no-store`, `Retry-After: 1`",
            body = FirstSignalBody,
            headers(
                ("ETag" = String, description = "`W/\"<64 lowercase hex>\"`; equals `summaryEtag`"),
                ("Cache-Control" = String, description = "`private, max-age=60` (`no-store` when `unavailable`)"),
                ("Cache-Status" = String, description = "`hit` or `miss`"),
                ("X-FirstSignal-Source" = String, description = "`snapshot` or `cold_start`"),
                ("Retry-After" = String, description = "`1`, only with an `unavailable` signal"),
            )),
        (status = 204, description = "The run exists but has no signal yet (no jobs)",
            headers(("Cache-Control" = String, description = "`no-cache`"))),
        (status = 304, description = "`If-None-Match` matched; no body",
            headers(
                ("ETag" = String, description = "The current weak entity tag"),
                ("Cache-Control" = String, description = "`private, max-age=60`"),
                ("Cache-Status" = String, description = "`hit` or `miss`"),
                ("X-FirstSignal-Source" = String, description = "`snapshot` or `cold_start`"),
            )),
        (status = 400, description = "`invalid_tenant`, `invalid_run_id`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`run_not_found` (also for another tenant's run)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
// Debug level: at the default `info` a span per hit costs more than the
// hit itself (ADR 0051).
#[tracing::instrument(level = "debug", skip_all, fields(run_id = %path))]
pub async fn get_first_signal(
    req: HttpRequest,
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let run_id = run_id(&path)?;
    let key = RunKey::new(&tenant.0, &run_id);
    let cache = &state.metrics.first_signal;
    match ask(&state, &key).await? {
        None => {
            // Out of time, but whether the run exists is settled first (SPEC
            // §4.2): an unknown or foreign run is 404, never `unavailable`.
            // One primary-key read, on the timed-out cold path only.
            // Bounded too: a store too slow to answer is 503, not a hang.
            let bound = state.config.first_signal.cold_path.timeout_ms.max(1000);
            tokio::time::timeout(
                std::time::Duration::from_millis(bound),
                state.store.get_run(&tenant.0, &run_id),
            )
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the store did not answer in time",
                )
            })??;
            cache.cache_miss.inc();
            let view = SignalView::new(Signal::unavailable(&run_id, rfc3339(now_ms())), 0);
            Ok(HttpResponse::Ok()
                .insert_header((header::ETAG, view.etag.as_str()))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header((header::RETRY_AFTER, "1"))
                .insert_header(("Cache-Status", "miss"))
                .insert_header(("X-FirstSignal-Source", "cold_start"))
                .content_type("application/json")
                .body(view.body))
        }
        Some(FirstSignalReply::NotFound) => Err(ApiError::new(
            ErrorCode::RunNotFound,
            "no such run for this tenant",
        )),
        Some(FirstSignalReply::LoadFailed(e)) => {
            Err(ApiError::new(ErrorCode::StoreUnavailable, e.to_string()))
        }
        Some(FirstSignalReply::NoSignal) => Ok(HttpResponse::NoContent()
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .finish()),
        Some(FirstSignalReply::Signal { view, hit, source }) => {
            cache.cache(hit).inc();
            Ok(signal_response(&req, &view, hit, source.as_str()))
        }
    }
}

/// `GET {prefix}/runs/{runId}/first-signal` body (SPEC §4.2).
///
/// The body itself is encoded once per signal by the actors crate
/// (`SignalView::body`) and served as bytes; these types document it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirstSignalBody {
    #[schema(format = "uuid")]
    pub run_id: String,
    pub first_signal: FirstSignal,
    /// Equals the `ETag` header: `W/"<64 lowercase hex>"`.
    #[schema(example = "W/\"3f1c…\"")]
    pub summary_etag: String,
}

#[derive(Serialize, utoipa::ToSchema)]
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
    /// Seconds left, estimated when the signal was derived (median duration
    /// of the tenant's last 20 successful jobs of the pack, at least 3,
    /// minus the time the deciding job has run); null for a finished
    /// deciding job or without enough history. Not in the ETag.
    #[serde(rename = "etaSeconds")]
    #[schema(required = true, minimum = 0)]
    pub eta_seconds: Option<i64>,
    /// The tenant's latest other finished run of the same pack, or null.
    #[serde(rename = "lastKnownOutcome")]
    #[schema(required = true)]
    pub last_known_outcome: Option<LastKnownOutcome>,
    /// What a UI can offer now, in a stable order (`[]` when nothing; null
    /// only on `unavailable`).
    #[serde(rename = "nextActions")]
    #[schema(required = true)]
    pub next_actions: Option<Vec<NextAction>>,
}

/// `lastKnownOutcome` of a signal.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastKnownOutcome {
    /// `succeeded`, `failed` or `canceled`.
    pub status: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    #[schema(format = DateTime)]
    pub finished_at: String,
}

/// One entry of `nextActions`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NextAction {
    /// `cancel`, `retry`, `download_artifact` or `view_logs`.
    pub action: String,
    pub label: String,
    /// `GET` or `POST`.
    pub method: String,
    /// A route of this service (send the tenant and credentials as usual).
    pub href: String,
}

#[derive(Serialize, utoipa::ToSchema)]
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
#[derive(Serialize, utoipa::ToSchema)]
pub struct SignalArtifact {
    pub kind: SignalArtifactKind,
    /// Log line range that explains a failure, or null.
    #[schema(required = true)]
    pub range: Option<LineRange>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignalArtifactKind {
    Run,
    Job,
    Step,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LineRange {
    pub start: i64,
    pub end: i64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;
    use utoipa::PartialSchema;

    use super::*;

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_hot_path_takes_exactly_the_first_signal_route_as_written() {
        let id = "7c3a0c1c-c5d4-4d9f-a76d-f73b89614f3b";
        for (prefix, pattern) in super::super::PREFIXES.iter().zip(PATTERNS) {
            // The label the router's match would give (`routes` registers
            // the resource under each prefix).
            assert_eq!(pattern, format!("{prefix}/runs/{{runId}}/first-signal"));
            let path = format!("{prefix}/runs/{id}/first-signal");
            assert_eq!(hot_path(&path), Some((id, pattern)));
            // Anything else goes to the router, which answers it as before.
            for other in [
                format!("{prefix}/runs/{id}/first-signal/"),
                format!("{prefix}/runs/{id}/first-signalx"),
                format!("{prefix}/runs//first-signal"),
                format!("{prefix}/runs/a/b/first-signal"),
                format!("{prefix}/runs/{}/first-signal", id.replacen('-', "%2D", 1)),
                format!("{prefix}/runs/{id}"),
                format!("{prefix}/runs/{id}/timeline"),
                format!("{prefix}x/runs/{id}/first-signal"),
                format!("/api/v1/other/runs/{id}/first-signal"),
            ] {
                assert_eq!(hot_path(&other), None, "{other}");
            }
        }
    }

    #[test]
    fn the_documented_body_has_the_encoded_bodys_fields() {
        let view = SignalView::new(Signal::unavailable("r", rfc3339(0)), 0);
        let body: Value = serde_json::from_slice(&view.body).unwrap();
        let doc = serde_json::to_value(FirstSignalBody::schema()).unwrap();
        assert_eq!(keys(&doc["properties"]), keys(&body));
        let signal = serde_json::to_value(FirstSignal::schema()).unwrap();
        assert_eq!(keys(&signal["properties"]), keys(&body["firstSignal"]));
    }
}
