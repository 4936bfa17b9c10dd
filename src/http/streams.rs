//! Server-Sent Events (SPEC §5.1): `{prefix}/stream/runs/{runId}`,
//! `{prefix}/stream/jobs/{jobId}`, `{prefix}/stream/pack-runs/{jobId}`.
//!
//! Each request opens a [`Subscription`] and replays the stored range before
//! it with [`Replay`] (both in `feed.rs`, shared with the WebSocket); the
//! response body ([`SseBody`]) then writes the live events, heartbeats and
//! the final `timeout`, polled by the connection itself.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use prometheus::Histogram;
use runsignal_actors::subscriber::sse_frame;
use runsignal_actors::{RunActor, StreamKind, Unsubscribe, Wire};
use serde::Deserialize;
use tokio::time::{Instant, Sleep};

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

/// Answer with the SSE body: the stream's head (the `retry:` line, its
/// first frame, the stored replay), then its live deliveries.
fn open(state: &web::Data<AppState>, sub: Subscription, plan: Plan, slot: Slot) -> HttpResponse {
    let streams = &state.config.streams;
    let period = Duration::from_secs(streams.heartbeat_interval_seconds.max(1));
    let now = Instant::now();
    let deadline = later(now, Duration::from_secs(streams.max_duration_seconds));
    let next_heartbeat = later(now, period);
    let mut shutdown = state.shutdown.clone();
    let body = SseBody {
        phase: Phase::Head,
        head: head(state.clone().into_inner(), plan, streams.retry_ms),
        live: sub.live,
        ready: VecDeque::new(),
        ends: false,
        timer: Box::pin(tokio::time::sleep_until(next_heartbeat.min(deadline))),
        period,
        next_heartbeat,
        deadline,
        shutdown: Box::pin(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }),
        lag: state
            .metrics
            .stream_delivery_lag
            .with_label_values(&["sse"]),
        _unsubscribe: UnsubscribeOnDrop {
            addr: sub.addr,
            id: sub.id,
        },
        _slot: slot,
    };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// `now + d`, or about thirty years on where that does not fit (the
/// settings are unbounded; tokio's `sleep` caps the same way).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// One step of a stream's head: frames to write, and whether the stream
/// ends after them (the stored replay reached the end, or the store failed).
type HeadStep = (Vec<Bytes>, bool);

/// The head as a stream of steps: the `retry:` line with the first frame,
/// then one step per stored page.
fn head(state: Arc<AppState>, plan: Plan, retry_ms: u64) -> BoxStream<'static, HeadStep> {
    let mut opening = vec![Bytes::from(format!("retry: {retry_ms}\n\n"))];
    opening.extend(plan.first);
    let replay = plan.replay.filter(|r| !r.done());
    let pages = futures_util::stream::unfold(replay, move |replay| {
        let state = state.clone();
        async move {
            let mut replay = replay?;
            let Ok(page) = replay.next_page(&state).await else {
                return Some(((Vec::new(), true), None));
            };
            let mut frames = Vec::new();
            let mut closes = false;
            for delivery in page {
                frames.extend(delivery.frames.iter().cloned());
                closes |= delivery.closes;
            }
            let next = (!closes && !replay.done()).then_some(replay);
            Some(((frames, closes), next))
        }
    });
    futures_util::stream::once(async move { (opening, false) })
        .chain(pages)
        .boxed()
}

/// Where an SSE body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writing the head.
    Head,
    /// Writing live deliveries, heartbeats, and at last `timeout`.
    Live,
    /// Nothing more: the stream ends once `ready` is written.
    Done,
}

/// The response body of an SSE stream, polled by the connection's own task.
///
/// Live deliveries are taken straight off the subscriber's queue when the
/// connection is ready to write: no task or channel of its own per stream,
/// so a delivery costs one wake-up (of the connection) and one queue pop,
/// and every frame queued meanwhile goes out in the same socket write
/// (actix-http keeps polling the body until it is pending or its write
/// buffer is full). A client that stops reading stops the polling, its
/// queue fills, and the run actor drops it (ADR 0009). Dropping the body
/// (the client left, or the stream ended) unsubscribes it from the actor.
struct SseBody {
    phase: Phase,
    head: BoxStream<'static, HeadStep>,
    live: runsignal_actors::queue::Receiver,
    /// Frames to write before anything else.
    ready: VecDeque<Bytes>,
    /// The stream ends once `ready` is written.
    ends: bool,
    /// One timer for both: the next heartbeat or the deadline, whichever
    /// comes first.
    timer: Pin<Box<Sleep>>,
    /// `Streams.HeartbeatIntervalSeconds`.
    period: Duration,
    next_heartbeat: Instant,
    /// `Streams.MaxDurationSeconds` after the stream opened.
    deadline: Instant,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    lag: Histogram,
    _unsubscribe: UnsubscribeOnDrop,
    _slot: Slot,
}

const TIMEOUT_FRAME: &[u8] = b"event: timeout\ndata: {}\n\n";
const HEARTBEAT_FRAME: &[u8] = b": heartbeat\n\n";

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.ends {
                this.phase = Phase::Done;
            }
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Head => match this.head.as_mut().poll_next(cx) {
                    Poll::Ready(Some((frames, ends))) => {
                        this.ready.extend(frames);
                        this.ends = ends;
                    }
                    Poll::Ready(None) => this.phase = Phase::Live,
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Live => match this.live.poll_recv(cx) {
                    Poll::Ready(Some(delivery)) => {
                        if let Some(at) = delivery.committed_at {
                            this.lag.observe(at.elapsed().as_secs_f64());
                        }
                        this.ready.extend(delivery.frames.iter().cloned());
                        this.ends = delivery.closes;
                    }
                    // Dropped by the run actor (its queue overflowed) or the
                    // actor stopped: the client resumes with its last id.
                    Poll::Ready(None) => this.phase = Phase::Done,
                    Poll::Pending => {
                        // Checked only when the queue is empty: a stream
                        // that is writing will get here between bursts.
                        if this.shutdown.as_mut().poll(cx).is_ready() {
                            this.ready.push_back(Bytes::from_static(TIMEOUT_FRAME));
                            this.ends = true;
                        } else if this.timer.as_mut().poll(cx).is_ready() {
                            let now = Instant::now();
                            if now >= this.deadline {
                                this.ready.push_back(Bytes::from_static(TIMEOUT_FRAME));
                                this.ends = true;
                            } else {
                                // A heartbeat, then the next one a period
                                // later (the timer is armed on the next poll).
                                this.next_heartbeat = later(now, this.period);
                                let at = this.next_heartbeat.min(this.deadline);
                                this.timer.as_mut().reset(at);
                                return Poll::Ready(Some(Ok(Bytes::from_static(HEARTBEAT_FRAME))));
                            }
                        } else {
                            return Poll::Pending;
                        }
                    }
                },
            }
        }
    }
}

/// Takes a stream's subscriber off its run actor when the body goes.
struct UnsubscribeOnDrop {
    addr: Addr<RunActor>,
    id: u64,
}

impl Drop for UnsubscribeOnDrop {
    fn drop(&mut self) {
        self.addr.do_send(Unsubscribe(self.id));
    }
}
