//! Server-Sent Events (SPEC §5.1): `{prefix}/stream/runs/{runId}`,
//! `{prefix}/stream/jobs/{jobId}`, `{prefix}/stream/pack-runs/{jobId}`.
//!
//! Each request opens a [`Subscription`] and replays the stored range before
//! it with [`Replay`] (both in `feed.rs`, shared with the WebSocket); a pump
//! task then writes the live events, heartbeats and the final `timeout`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use runsignal_actors::subscriber::sse_frame;
use runsignal_actors::{Delivery, RunActor, StreamKind, Unsubscribe, Wire};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::errors::{ApiError, Problem};
use super::extract::{job_id, parse_query, run_id, seq, CorrelationId, Tenant};
use super::feed::{stream_filter, Replay, Subscription};
use super::limits::{self, HeldConnection, StreamPermit};
use crate::AppState;

/// Unknown parameters are ignored (cache busters such as `?_=123`; ADR 0030).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Resume after this seq (what `Last-Event-ID` carries).
    pub last_event_id: Option<String>,
    /// Comma-separated stream event names to keep.
    pub events: Option<String>,
    pub correlation_id: Option<String>,
    /// Tenant for clients that cannot set headers (EventSource).
    pub tenant: Option<String>,
    /// Bearer token for clients that cannot set headers (EventSource);
    /// read by the auth middleware, never logged.
    #[serde(rename = "access_token")]
    #[param(rename = "access_token")]
    pub access_token: Option<String>,
}

fn last_event_id(req: &HttpRequest, q: &StreamParams) -> Result<Option<u64>, ApiError> {
    let raw = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.last_event_id.clone());
    parse_last_event_id(raw.as_deref())
}

/// A `Last-Event-ID` (or `lastEventId`): blank is none, else a seq.
pub fn parse_last_event_id(raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::field("lastEventId", "must be a seq (a non-negative integer)"))
            .and_then(|v| seq("lastEventId", v))
            .map(Some),
    }
}

/// Where a new stream starts.
struct Plan {
    /// Sent first (the run stream's current `first_signal` on a fresh connect).
    first: Option<Bytes>,
    /// Stored events to send before going live.
    replay: Option<Replay>,
}

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/stream/runs/{runId}",
    tag = "streams",
    summary = "Follow a run: first_signal, job, progress, completed",
    params(
        ("X-Tenant-Id" = Option<String>, Header, description = "The tenant (or `?tenant=`, for clients that cannot set headers)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq: replay from the store, then live, no gap, no duplicate"),
        ("runId" = String, Path, description = "The run's id (UUID)"),
        StreamParams,
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `retry:` first, then `id: <seq>` / `event:` / one-line JSON `data:` frames, `: heartbeat` comments every `Streams.HeartbeatIntervalSeconds`, and `event: timeout` after `Streams.MaxDurationSeconds` or on shutdown. The stream ends after `completed`, which is sent whatever `events` and `correlationId` keep.", content_type = "text/event-stream", body = String,
            headers(("Cache-Control" = String, description = "`no-store`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 204, description = "Resumed with a `Last-Event-ID` at or past the end (the `completed` event's id, filtered streams too): nothing more will come"),
        (status = 400, description = "`invalid_tenant`, `invalid_run_id`, `invalid_field` (events, lastEventId), `invalid_query` (a query string that does not parse). Unknown parameters are ignored.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`run_not_found` (also for another tenant's)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_streams`: `Limits.MaxStreamsPerTenant`, `Limits.MaxStreamsPerCredential` or the server's streaming connections are exhausted; see `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn run_stream(
    req: HttpRequest,
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    sse_stream(req, tenant, path, state, StreamKind::Run).await
}

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/stream/jobs/{jobId}",
    tag = "streams",
    summary = "Follow a job: job, progress, step, log, artifact, completed",
    params(
        ("X-Tenant-Id" = Option<String>, Header, description = "The tenant (or `?tenant=`, for clients that cannot set headers)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq: replay from the store, then live, no gap, no duplicate"),
        ("jobId" = String, Path, description = "The job's id (ULID)"),
        StreamParams,
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `retry:` first, then `id: <seq>` / `event:` / one-line JSON `data:` frames, `: heartbeat` comments every `Streams.HeartbeatIntervalSeconds`, and `event: timeout` after `Streams.MaxDurationSeconds` or on shutdown. The stream ends after `completed`, which is sent whatever `events` and `correlationId` keep.", content_type = "text/event-stream", body = String,
            headers(("Cache-Control" = String, description = "`no-store`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 204, description = "Resumed with a `Last-Event-ID` at or past the end (the `completed` event's id, filtered streams too): nothing more will come"),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`, `invalid_field` (events, lastEventId), `invalid_query` (a query string that does not parse). Unknown parameters are ignored.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found` (also for another tenant's)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_streams`: `Limits.MaxStreamsPerTenant`, `Limits.MaxStreamsPerCredential` or the server's streaming connections are exhausted; see `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn job_stream(
    req: HttpRequest,
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    sse_stream(req, tenant, path, state, StreamKind::Job).await
}

#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/stream/pack-runs/{jobId}",
    tag = "streams",
    summary = "Follow a pack run's steps and logs: plan (on connect), step, log, artifact, completed",
    params(
        ("X-Tenant-Id" = Option<String>, Header, description = "The tenant (or `?tenant=`, for clients that cannot set headers)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq: replay from the store, then live, no gap, no duplicate"),
        ("jobId" = String, Path, description = "The job's id (ULID)"),
        StreamParams,
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `retry:` first, then `id: <seq>` / `event:` / one-line JSON `data:` frames, `: heartbeat` comments every `Streams.HeartbeatIntervalSeconds`, and `event: timeout` after `Streams.MaxDurationSeconds` or on shutdown. The stream ends after `completed`, which is sent whatever `events` and `correlationId` keep.", content_type = "text/event-stream", body = String,
            headers(("Cache-Control" = String, description = "`no-store`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 204, description = "Resumed with a `Last-Event-ID` at or past the end (the `completed` event's id, filtered streams too): nothing more will come"),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`, `invalid_field` (events, lastEventId), `invalid_query` (a query string that does not parse). Unknown parameters are ignored.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found` (also for another tenant's)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_streams`: `Limits.MaxStreamsPerTenant`, `Limits.MaxStreamsPerCredential` or the server's streaming connections are exhausted; see `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn pack_run_stream(
    req: HttpRequest,
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    sse_stream(req, tenant, path, state, StreamKind::PackRun).await
}

/// Any SSE stream: subscribe, then 204 (end already seen) or the stream.
async fn sse_stream(
    req: HttpRequest,
    tenant: Tenant,
    path: web::Path<String>,
    state: web::Data<AppState>,
    kind: StreamKind,
) -> Result<HttpResponse, ApiError> {
    let id = match kind {
        StreamKind::Run => run_id(&path)?,
        StreamKind::Job | StreamKind::PackRun => job_id(&path)?,
    };
    let q: StreamParams = parse_query(&req)?;
    let mut filter = stream_filter(kind, q.events.as_deref(), q.correlation_id.clone())?;
    if kind != StreamKind::Run {
        filter.job_id = Some(id.as_str().into());
    }
    let last = last_event_id(&req, &q)?;
    // Admitted before subscribing; held by the response body, so released
    // however the stream ends.
    let permit = state
        .stream_limits
        .acquire(&tenant.0, limits::credential(&req).as_deref())?;
    let held = state.stream_limits.hold_connection()?;
    let sub = Subscription::open(&state, &tenant.0, kind, &id, filter.clone(), Wire::Sse).await?;
    let Some(replay) = sub.start(last) else {
        return Ok(HttpResponse::NoContent().finish());
    };
    // A fresh run stream starts with the current signal, tagged with the
    // request's correlation id (given or generated, and echoed).
    let first = match (kind, last, &sub.signal) {
        (StreamKind::Run, None, Some(view)) if filter.wants("first_signal") => {
            let corr = req
                .extensions()
                .get::<CorrelationId>()
                .map(|c| c.0.clone())
                .unwrap_or_default();
            let data = view.stream_data(&format!("{}:{}", id, view.seq), "snapshot", true, &corr);
            Some(sse_frame(view.seq, "first_signal", &[data]))
        }
        // A fresh pack-run stream starts with the job's plan.
        (StreamKind::PackRun, None, _) => {
            super::plan::frame(&state, &tenant.0, &id, &sub, &filter, Wire::Sse).await?
        }
        _ => None,
    };
    let plan = Plan {
        first,
        replay: replay.map(|range| Replay::new(sub.key.clone(), kind, filter, Wire::Sse, range)),
    };
    let slot = Slot {
        _permit: permit,
        _held: held,
    };
    Ok(open(&state, sub, plan, slot))
}

/// An open stream's places under the limits, held by its response body:
/// released when the body is dropped, however the stream ends.
struct Slot {
    _permit: StreamPermit,
    _held: HeldConnection,
}

/// Start the pump task and answer with its frames as the SSE body.
fn open(state: &web::Data<AppState>, sub: Subscription, plan: Plan, slot: Slot) -> HttpResponse {
    // Small: the pump waits on a slow client here, while the subscriber's
    // own queue (`Streams.BufferSize`) absorbs the run's bursts.
    let (out, body) = mpsc::channel::<Bytes>(16);
    let out = Out { tx: out };
    actix_rt::spawn(pump(
        state.clone().into_inner(),
        sub.addr,
        sub.id,
        plan,
        sub.live,
        out,
    ));
    let stream = futures_util::stream::unfold((body, slot), |(mut rx, slot)| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), (rx, slot)))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

/// Why a stream ended.
enum End {
    /// The run or job completed, the subscriber was dropped, or the client left.
    Done,
    /// `Streams.MaxDurationSeconds` or shutdown: tell the client to reconnect.
    Timeout,
}

/// The pump's side of the response body.
struct Out {
    tx: mpsc::Sender<Bytes>,
}

impl Out {
    /// Queue `bytes` for the client; `None`: the client left. A client that
    /// stops reading blocks this; the run actor drops its subscriber when
    /// its queue overflows, and the stream limits bound how many such
    /// streams a tenant (and the server) can hold (ADR 0026).
    async fn send(&self, bytes: Bytes) -> Option<()> {
        self.tx.send(bytes).await.ok()
    }
}

async fn pump(
    state: Arc<AppState>,
    addr: Addr<RunActor>,
    id: u64,
    plan: Plan,
    mut live: mpsc::Receiver<Delivery>,
    out: Out,
) {
    let streams = &state.config.streams;
    let lag = state
        .metrics
        .stream_delivery_lag
        .with_label_values(&["sse"]);
    let end = async {
        out.send(Bytes::from(format!("retry: {}\n\n", streams.retry_ms)))
            .await?;
        if let Some(first) = plan.first {
            out.send(first).await?;
        }
        if let Some(mut stored) = plan.replay {
            if replay(&state, &mut stored, &out).await? {
                return Some(End::Done);
            }
        }
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs(streams.heartbeat_interval_seconds));
        heartbeat.tick().await;
        let deadline = tokio::time::sleep(Duration::from_secs(streams.max_duration_seconds));
        tokio::pin!(deadline);
        let mut shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                delivery = live.recv() => {
                    let Some(d) = delivery else { return Some(End::Done) };
                    for frame in d.frames.iter() {
                        out.send(frame.clone()).await?;
                    }
                    if let Some(at) = d.committed_at {
                        lag.observe(at.elapsed().as_secs_f64());
                    }
                    if d.closes {
                        return Some(End::Done);
                    }
                }
                _ = heartbeat.tick() => out.send(Bytes::from_static(b": heartbeat\n\n")).await?,
                _ = &mut deadline => return Some(End::Timeout),
                _ = shutdown.wait_for(|stop| *stop) => return Some(End::Timeout),
            }
        }
    }
    .await;
    if let Some(End::Timeout) = end {
        let _ = out
            .send(Bytes::from_static(b"event: timeout\ndata: {}\n\n"))
            .await;
    }
    addr.do_send(Unsubscribe(id));
}

/// Send the stored events in `(after, upto]` that the stream carries.
/// `Some(true)`: one of them ended the stream; `None`: the client left (or
/// the store failed).
async fn replay(state: &AppState, replay: &mut Replay, out: &Out) -> Option<bool> {
    while !replay.done() {
        for delivery in replay.next_page(state).await.ok()? {
            for frame in delivery.frames.iter() {
                out.send(frame.clone()).await?;
            }
            if delivery.closes {
                return Some(true);
            }
        }
    }
    Some(false)
}
