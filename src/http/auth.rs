//! Access control on the HTTP surface (SPEC §10): the middleware that turns
//! a bearer credential into a [`Principal`] in the request's extensions, the
//! scope each route needs, and CORS.
//!
//! Two steps, split on purpose:
//! - [`authenticate`] (app middleware, before routing) reads the credential
//!   (`Authorization: Bearer`, or `?access_token=` on stream and WebSocket
//!   routes), answers 401 when it is missing or wrong, and stores the
//!   principal. Only `/healthz`, `/readyz`, `/openapi.json`, the dashboard's
//!   files (`crate::dashboard::ROUTES`: the page asks for a credential
//!   itself) and `/metrics` with `Metrics.Public` pass without one, and a WebSocket handshake
//!   without any credential, which authenticates with its first frame.
//! - [`authorize`] (called by the `Tenant` extractor and `/metrics`, after
//!   routing, so on the route actix actually matched) checks the route's
//!   scope → 403 `insufficient_scope`; the extractor then applies the tenant
//!   rules → 403 `tenant_forbidden`.
//!
//! Credentials never reach a log line, a metric label or an error body.

use actix_cors::Cors;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::{Condition, Next};
use actix_web::{web, HttpMessage, HttpRequest, ResponseError};

use super::errors::{ApiError, ErrorCode};
use super::PREFIXES;
use crate::auth::{Principal, Scope};
use crate::config::CorsConfig;
use crate::AppState;

/// Stream and WebSocket routes, below an API prefix: the only routes that
/// take `?access_token=` and `?tenant=` (browsers cannot set headers there).
const STREAM_ROUTES: [&str; 4] = [
    "/stream/runs/{runId}",
    "/stream/jobs/{jobId}",
    "/stream/pack-runs/{jobId}",
    "/ws",
];

/// Routes whose POST is a worker's (the other POSTs need `write`).
const WORKER_ROUTES: [&str; 4] = [
    "/workers/lease",
    "/jobs/{jobId}/progress",
    "/jobs/{jobId}/complete",
    "/jobs/{jobId}/fail",
];

/// Open to anyone in every mode.
const PUBLIC_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// Marks a request whose credential came from `?access_token=`: accepted
/// only if the route actix matched is a stream route (checked again after
/// routing, in [`authorize`]).
#[derive(Clone, Copy)]
pub struct QueryCredential;

/// A route pattern below its API prefix (`None`: not an API route).
fn below_prefix(pattern: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|p| pattern.strip_prefix(p))
}

/// The matched route is a stream or WebSocket route.
pub fn is_stream_route(req: &HttpRequest) -> bool {
    req.match_pattern()
        .as_deref()
        .and_then(below_prefix)
        .is_some_and(|rest| STREAM_ROUTES.contains(&rest))
}

/// A WebSocket upgrade request on the WebSocket route.
fn is_ws_upgrade(req: &HttpRequest) -> bool {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    upgrade
        && req
            .match_pattern()
            .as_deref()
            .and_then(below_prefix)
            .is_some_and(|rest| rest == "/ws")
}

/// The scope a tenant-scoped route needs: reads need `read`, a worker's
/// POSTs `worker`, every other POST `write`.
fn route_scope(req: &HttpRequest) -> Scope {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Scope::Read;
    }
    let pattern = req.match_pattern().unwrap_or_default();
    match below_prefix(&pattern) {
        Some(rest) if WORKER_ROUTES.contains(&rest) => Scope::Worker,
        _ => Scope::Write,
    }
}

/// The bearer credential a request carries, if any.
enum Presented {
    Nothing,
    Token(String),
    /// An `Authorization` header of another scheme, or not text.
    Unusable,
}

fn presented(req: &HttpRequest, stream: bool) -> (Presented, bool) {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        return match token {
            Some(t) if !t.is_empty() => (Presented::Token(t), false),
            _ => (Presented::Unusable, false),
        };
    }
    if stream {
        if let Some(token) = query_param(req.query_string(), "access_token") {
            return (Presented::Token(token), true);
        }
    }
    (Presented::Nothing, false)
}

/// One query parameter's value (the first).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The middleware: see the module docs.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    if !state.auth.enabled() {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    // The route the router will match, found once: `match_pattern` walks
    // the whole resource map, matching each dynamic pattern's regex. The
    // hottest route's shape is recognised without it.
    let pattern: Option<std::borrow::Cow<'_, str>> = match super::first_signal::hot_path(req.path())
    {
        Some((_, pattern)) => Some(pattern.into()),
        None => req.match_pattern().map(Into::into),
    };
    let public = pattern.as_deref().is_some_and(|p| {
        PUBLIC_ROUTES.contains(&p)
            || crate::dashboard::ROUTES.contains(&p)
            || (p == "/metrics" && state.config.metrics.public)
    });
    if public {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let stream = pattern
        .as_deref()
        .and_then(below_prefix)
        .is_some_and(|rest| STREAM_ROUTES.contains(&rest));
    let refusal = match presented(req.request(), stream) {
        // The WebSocket may authenticate with its first frame.
        (Presented::Nothing, _) if is_ws_upgrade(req.request()) => None,
        (Presented::Nothing, _) => {
            let how = if stream {
                "`Authorization: Bearer <token>` or `?access_token=`"
            } else {
                "`Authorization: Bearer <token>`"
            };
            Some(ApiError::new(
                ErrorCode::Unauthenticated,
                format!("this route needs a credential: {how}"),
            ))
        }
        (Presented::Unusable, _) => Some(ApiError::new(
            ErrorCode::InvalidToken,
            "the Authorization header must be `Bearer <token>`",
        )),
        (Presented::Token(token), via_query) => match state.auth.authenticate(&token) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                if via_query {
                    req.extensions_mut().insert(QueryCredential);
                }
                None
            }
            Err(e) => Some(ApiError::new(ErrorCode::InvalidToken, e.to_string())),
        },
    };
    match refusal {
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
        Some(e) => Ok(req.into_response(e.error_response()).map_into_right_body()),
    }
}

/// After routing: the request's principal, holding `scope`. `Ok(None)` when
/// `Auth.Mode = none`.
pub fn authorize_scope(req: &HttpRequest, scope: Scope) -> Result<Option<Principal>, ApiError> {
    let enabled = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|s| s.auth.enabled());
    if !enabled {
        return Ok(None);
    }
    let principal = req.extensions().get::<Principal>().cloned();
    let from_query = req.extensions().get::<QueryCredential>().is_some();
    let Some(principal) = principal.filter(|_| !from_query || is_stream_route(req)) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "this route needs a credential: `Authorization: Bearer <token>`",
        ));
    };
    if !principal.has_scope(scope) {
        return Err(insufficient(scope));
    }
    Ok(Some(principal))
}

/// [`authorize_scope`] with the scope the matched route needs.
pub fn authorize(req: &HttpRequest) -> Result<Option<Principal>, ApiError> {
    authorize_scope(req, route_scope(req))
}

pub fn insufficient(scope: Scope) -> ApiError {
    ApiError::new(
        ErrorCode::InsufficientScope,
        format!("this credential lacks the `{}` scope", scope.as_str()),
    )
}

/// `Origin` names the host the request was sent to (`Host`): the page came
/// from this server.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// CORS per `Server.Cors.AllowedOrigins`; none at all when it is empty.
pub fn cors(config: &CorsConfig) -> Condition<Cors> {
    let mut cors = Cors::default()
        .allowed_methods([Method::GET, Method::HEAD, Method::POST])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_NONE_MATCH,
            header::HeaderName::from_static("x-tenant-id"),
            header::HeaderName::from_static("x-correlation-id"),
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("prefer"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            header::HeaderName::from_static("x-correlation-id"),
            header::HeaderName::from_static("preference-applied"),
        ])
        .max_age(3600);
    for origin in &config.allowed_origins {
        cors = cors.allowed_origin(origin);
    }
    Condition::new(!config.allowed_origins.is_empty(), cors)
}

/// WebSocket handshakes from browsers: an `Origin` must be the server's
/// own (a page it served, such as the dashboard) or be listed in
/// `Server.Cors.AllowedOrigins`; a request without one is not a browser's.
pub fn check_origin(req: &HttpRequest, config: &CorsConfig) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let allowed = origin
        .to_str()
        .is_ok_and(|o| same_origin(o, host) || config.allowed_origins.iter().any(|a| a == o));
    if allowed {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::OriginForbidden,
        "this Origin is not in Server.Cors.AllowedOrigins",
    ))
}
