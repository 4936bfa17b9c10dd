//! `/openapi.json`, generated from the handlers' annotations.
//!
//! Every `{prefix}` route is annotated once, under `/api/v1/orchestrator`;
//! [`document`] then mirrors each of those path items under
//! `/api/v1/jobengine` (both prefixes serve the same routes, SPEC §2), and
//! adds what every route shares: the `X-Correlation-Id` request header and
//! its echo on every response, and the bearer security scheme (SPEC §10:
//! optional, since `Auth.Mode = none` takes no credential).
//!
//! This module only assembles: every schema is derived from the type its
//! handler serializes (`src/http/model/`, and beside the handlers), and no
//! handler imports this module. `/openapi.json` is routed by
//! `Application::build`, above both.

use std::sync::OnceLock;

use actix_web::{HttpResponse, ResponseError};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::{Header, ObjectBuilder, RefOr, Required, Type};
use utoipa::OpenApi;

use crate::http::errors::{ApiError, ErrorCode, Problem};
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
        jobs::retry_job,
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
    add_bearer(&mut doc);
    doc
}

/// `Authorization: Bearer` (a static token or a JWT, per `Auth.Mode`), or
/// nothing (`Auth.Mode = none`); `/healthz`, `/readyz` and this document
/// need none.
fn add_bearer(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    let scheme = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .bearer_format("static token or JWT")
        .description(Some(
            "Required unless Auth.Mode is `none`; stream and WebSocket routes also take              `?access_token=`. 401 `unauthenticated`, 403 `insufficient_scope` or `tenant_forbidden`.",
        ))
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    doc.security = Some(vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
    for (path, item) in doc.paths.paths.iter_mut() {
        if ["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str()) {
            for (_, op) in operations_mut(item) {
                op.security = Some(vec![SecurityRequirement::default()]);
            }
        }
    }
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
            "Carried into the events this request causes; 1..=128 visible ASCII \
             chars. Generated when absent, and when it is not such a value (it is \
             never refused: a caller's tracing header must not fail its request).",
        ))
        .schema(Some(string()))
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
