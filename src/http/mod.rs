//! HTTP surface: one file per resource; both API prefixes serve the same
//! routes (SPEC §2). Handlers talk to run actors only by message: requests
//! and replies, or the signal a run actor sends on its `watch` channel,
//! which first-signal hits read (ADR 0051).

pub mod auth;
pub mod errors;
pub mod extract;
pub mod feed;
pub mod first_signal;
pub mod jobs;
pub mod limits;
pub mod model;
pub mod ops;
pub mod plan;
pub mod prefer;
pub mod runs;
pub mod streams;
pub mod workers;
pub mod ws;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::ResponseError;
use actix_web::{web, HttpMessage, HttpRequest};

use errors::{ApiError, ErrorCode};
use extract::CorrelationId;

use crate::AppState;

pub const PREFIXES: [&str; 2] = ["/api/v1/orchestrator", "/api/v1/jobengine"];

/// Register every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for prefix in PREFIXES {
        cfg.service(
            web::scope(prefix)
                // First: the router tries resources in order, and this is
                // the hottest route (each pattern tried costs a regex match).
                .service(
                    web::resource("/runs/{runId}/first-signal")
                        .get(first_signal::get_first_signal)
                        .head(first_signal::get_first_signal),
                )
                .service(
                    web::resource("/runs")
                        .post(runs::create_run)
                        .get(runs::list_runs),
                )
                .service(web::resource("/runs/{runId}").get(runs::get_run))
                .service(web::resource("/runs/{runId}/timeline").get(runs::timeline))
                .service(web::resource("/workers/lease").post(workers::lease))
                .service(web::resource("/jobs/{jobId}/progress").post(workers::progress))
                .service(web::resource("/jobs/{jobId}/complete").post(workers::complete))
                .service(web::resource("/jobs/{jobId}/fail").post(workers::fail))
                .service(web::resource("/packs").get(ops::packs))
                .service(web::resource("/stream/runs/{runId}").get(streams::run_stream))
                .service(web::resource("/stream/jobs/{jobId}").get(streams::job_stream))
                .service(web::resource("/stream/pack-runs/{jobId}").get(streams::pack_run_stream))
                .service(web::resource("/ws").get(ws::socket)),
        );
    }
    cfg.service(
        web::resource("/jobs")
            .post(jobs::submit_job)
            .get(jobs::list_jobs),
    )
    .service(web::resource("/jobs/{jobId}").get(jobs::get_job))
    .service(web::resource("/jobs/{jobId}/cancel").post(jobs::cancel_job))
    .service(web::resource("/jobs/{jobId}/retry").post(jobs::retry_job))
    .service(web::resource("/jobs/{jobId}/artifacts/{name}").get(jobs::get_artifact))
    .service(web::resource("/healthz").get(ops::healthz))
    .service(web::resource("/readyz").get(ops::readyz))
    .service(web::resource("/metrics").get(ops::metrics));
}

/// Unknown path: 404 problem+json (the app's default service).
pub async fn not_found(req: HttpRequest) -> actix_web::HttpResponse {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// Known path, wrong method: actix answers 405 with an empty body; give it
/// the same problem+json shape as every other error.
pub fn method_not_allowed<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let detail = format!("{} is not allowed on {}", req.method(), req.path());
    let mut res = ApiError::new(ErrorCode::MethodNotAllowed, detail).error_response();
    // RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
    if let Some(allow) = req.match_pattern().as_deref().and_then(allowed_methods) {
        res.headers_mut().insert(
            actix_web::http::header::ALLOW,
            HeaderValue::from_static(allow),
        );
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, res).map_into_right_body(),
    ))
}

/// The methods `routes` registers on a route pattern, for `Allow`.
fn allowed_methods(pattern: &str) -> Option<&'static str> {
    let route = PREFIXES
        .iter()
        .find_map(|p| pattern.strip_prefix(p))
        .unwrap_or(pattern);
    Some(match route {
        "/runs" | "/jobs" => "GET, POST",
        "/runs/{runId}/first-signal" => "GET, HEAD",
        _ if crate::dashboard::ROUTES.contains(&route) => "GET, HEAD",
        "/workers/lease"
        | "/jobs/{jobId}/progress"
        | "/jobs/{jobId}/complete"
        | "/jobs/{jobId}/fail"
        | "/jobs/{jobId}/cancel"
        | "/jobs/{jobId}/retry" => "POST",
        "/runs/{runId}"
        | "/runs/{runId}/timeline"
        | "/packs"
        | "/stream/runs/{runId}"
        | "/stream/jobs/{jobId}"
        | "/stream/pack-runs/{jobId}"
        | "/ws"
        | "/jobs/{jobId}"
        | "/jobs/{jobId}/artifacts/{name}"
        | "/healthz"
        | "/readyz"
        | "/metrics"
        | "/openapi.json" => "GET",
        _ => return None,
    })
}

static CORRELATION: HeaderName = HeaderName::from_static("x-correlation-id");

/// Correlation id in (or generated) and echoed out; request metrics by
/// route pattern (never the raw path: ids would explode the label set).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&CORRELATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(runsignal_actors::new_ulid);
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let mut res = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(CORRELATION.clone(), value);
    }
    if let Some(state) = state {
        let hot = res
            .request()
            .extensions()
            .get::<first_signal::HotRoute>()
            .copied();
        let route: std::borrow::Cow<'_, str> = match hot {
            Some(first_signal::HotRoute(pattern)) => pattern.into(),
            None => res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into())
                .into(),
        };
        let status = res.status();
        state
            .metrics
            .http_requests
            .with_label_values(&[route.as_ref(), method.as_str(), status.as_str()])
            .inc();
        if route.ends_with("/first-signal") {
            let series = &state.metrics.first_signal;
            let histogram = match res
                .headers()
                .get(&first_signal::CACHE_STATUS)
                .map(|v| v.as_bytes())
            {
                Some(b"hit") => &series.request_hit,
                Some(b"miss") => &series.request_miss,
                _ => &series.request_none,
            };
            histogram.observe(started.elapsed().as_secs_f64());
        }
    }
    Ok(res)
}
