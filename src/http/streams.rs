//! Server-Sent Events (SPEC §5.1): `{prefix}/stream/runs/{runId}`,
//! `{prefix}/stream/jobs/{jobId}`, `{prefix}/stream/pack-runs/{jobId}`.
//!
//! A stream subscribes to the run's actor first and learns `live_from`, the
//! last seq the actor has delivered; a resuming client then gets the events
//! in `(last id, live_from]` from the store, followed by the live events
//! (`> live_from`) from its queue: no gap, no duplicate.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use runsignal_actors::subscriber::sse_frame;
use runsignal_actors::SignalView;
use runsignal_actors::{
    Delivery, Filter, Published, RunActor, RunKey, StreamKind, Subscribe, SubscribeReply,
    Unsubscribe, Wire,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::errors::{ApiError, ErrorCode};
use super::extract::{job_id, parse_query, run_id, CorrelationId, Tenant};
use crate::store::TimelineQuery;
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Resume after this seq (what `Last-Event-ID` carries).
    pub last_event_id: Option<String>,
    /// Comma-separated stream event names to keep.
    pub events: Option<String>,
    pub correlation_id: Option<String>,
    /// Tenant for clients that cannot set headers (EventSource).
    pub tenant: Option<String>,
}

/// The filter and resume point a stream request asks for.
pub fn stream_filter(
    kind: StreamKind,
    events: Option<&str>,
    correlation_id: Option<String>,
) -> Result<Filter, ApiError> {
    let mut filter = Filter::new(kind);
    if let Some(list) = events {
        let names: Vec<String> = list
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if let Some(bad) = names
            .iter()
            .find(|n| !kind.event_names().contains(&n.as_str()))
        {
            let allowed = kind.event_names().join(", ");
            return Err(ApiError::field(
                "events",
                format!("`{bad}` is not an event of this stream; allowed: {allowed}"),
            ));
        }
        filter.events = Some(names);
    }
    filter.correlation_id = correlation_id;
    Ok(filter)
}

fn last_event_id(req: &HttpRequest, q: &StreamParams) -> Result<Option<u64>, ApiError> {
    let raw = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.last_event_id.clone());
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::field("lastEventId", "must be a seq (a non-negative integer)")),
    }
}

/// Subscribe to the run's actor (retrying once if it stopped meanwhile).
pub async fn subscribe(
    state: &AppState,
    key: &RunKey,
    filter: Filter,
    wire: Wire,
    tx: mpsc::Sender<Delivery>,
) -> Result<(Addr<RunActor>, SubscribeReply), ApiError> {
    for _ in 0..2 {
        let addr = state.engine.supervisor.lookup(key).addr;
        let msg = Subscribe {
            filter: filter.clone(),
            wire,
            tx: tx.clone(),
        };
        if let Ok(reply) = addr.send(msg).await {
            return Ok((addr, reply));
        }
    }
    Err(ApiError::new(
        ErrorCode::StoreUnavailable,
        "the run's actor could not be reached",
    ))
}

/// "Not found" for the kind of id a stream names (never "forbidden": a
/// foreign run or job is as unknown as a missing one).
pub fn not_found(kind: StreamKind) -> ApiError {
    match kind {
        StreamKind::Run => ApiError::new(ErrorCode::RunNotFound, "no such run for this tenant"),
        StreamKind::Job | StreamKind::PackRun => {
            ApiError::new(ErrorCode::JobNotFound, "no such job for this tenant")
        }
    }
}

/// One stream's subscription on its run's actor, shared by SSE and
/// WebSocket: the live queue, where live events start, and where the stream
/// ends if it already has.
pub struct Subscription {
    pub addr: Addr<RunActor>,
    pub id: u64,
    pub key: RunKey,
    /// Events after `live_from`, bounded by `Streams.BufferSize`.
    pub live: mpsc::Receiver<Delivery>,
    pub live_from: u64,
    /// The run's current signal (a run stream's first frame on connect).
    pub signal: Option<Arc<SignalView>>,
    /// Seq of the event that ended this stream (`run.completed`, or the
    /// job's terminal event), if it has ended.
    pub end: Option<u64>,
}

impl Subscription {
    /// Subscribe to the stream `kind` of `id` (a run id, or a job id for job
    /// and pack-run streams; `filter` already names the job).
    pub async fn open(
        state: &AppState,
        tenant: &str,
        kind: StreamKind,
        id: &str,
        filter: Filter,
        wire: Wire,
    ) -> Result<Subscription, ApiError> {
        let run = match kind {
            StreamKind::Run => id.to_owned(),
            StreamKind::Job | StreamKind::PackRun => state.store.get_job(tenant, id).await?.run_id,
        };
        let key = RunKey::new(tenant, &run);
        let (tx, live) = mpsc::channel(state.config.streams.buffer_size);
        let (addr, reply) = subscribe(state, &key, filter, wire, tx).await?;
        let (sub, signal, live_from, completed_seq) = match reply {
            SubscribeReply::Subscribed {
                id,
                signal,
                live_from,
                completed_seq,
            } => (id, signal, live_from, completed_seq),
            SubscribeReply::NotFound => return Err(not_found(kind)),
            SubscribeReply::LoadFailed(e) => {
                return Err(ApiError::new(ErrorCode::StoreUnavailable, e.to_string()))
            }
        };
        // For a job, read after subscribing: a job that ends meanwhile is
        // either seen here or arrives live.
        let end = match kind {
            StreamKind::Run => completed_seq,
            StreamKind::Job | StreamKind::PackRun => {
                match state.store.job_terminal_seq(tenant, id).await {
                    Ok(end) => end,
                    Err(e) => {
                        addr.do_send(Unsubscribe(sub));
                        return Err(e.into());
                    }
                }
            }
        };
        Ok(Subscription {
            addr,
            id: sub,
            key,
            live,
            live_from,
            signal,
            end,
        })
    }

    /// The stored range to replay before going live, for a client that has
    /// seen everything up to `after`. `None`: it has seen the end already
    /// (the subscription is closed; SSE answers 204).
    pub fn start(&self, after: Option<u64>) -> Option<Option<(u64, u64)>> {
        match after {
            Some(after) if self.end.is_some_and(|end| after >= end) => {
                self.addr.do_send(Unsubscribe(self.id));
                None
            }
            Some(after) => Some(Some((after, self.live_from))),
            // A fresh connect to an ended stream gets its end, then stops.
            None => Some(self.end.map(|end| (end - 1, end))),
        }
    }
}

/// Where a new stream starts.
struct Plan {
    key: RunKey,
    kind: StreamKind,
    filter: Filter,
    /// Sent first (the run stream's current `first_signal` on a fresh connect).
    first: Option<Bytes>,
    /// Replay `(after, upto]` from the store before going live.
    replay: Option<(u64, u64)>,
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
        (status = 200, description = "`text/event-stream`: `retry:` first, then `id: <seq>` / `event:` / one-line JSON `data:` frames, `: heartbeat` comments every `Streams.HeartbeatIntervalSeconds`, and `event: timeout` after `Streams.MaxDurationSeconds` or on shutdown. The stream ends after `completed`.", content_type = "text/event-stream", body = String,
            headers(("Cache-Control" = String, description = "`no-store`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 204, description = "Resumed with a `Last-Event-ID` at or past the end: nothing more will come"),
        (status = 400, description = "`invalid_tenant`, `invalid_run_id`, `invalid_field` (events, lastEventId), `invalid_query`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`run_not_found` (also for another tenant's)", body = crate::openapi::Problem, content_type = "application/problem+json"),
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
    summary = "Follow a job: job, progress, step, log, completed",
    params(
        ("X-Tenant-Id" = Option<String>, Header, description = "The tenant (or `?tenant=`, for clients that cannot set headers)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq: replay from the store, then live, no gap, no duplicate"),
        ("jobId" = String, Path, description = "The job's id (ULID)"),
        StreamParams,
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `retry:` first, then `id: <seq>` / `event:` / one-line JSON `data:` frames, `: heartbeat` comments every `Streams.HeartbeatIntervalSeconds`, and `event: timeout` after `Streams.MaxDurationSeconds` or on shutdown. The stream ends after `completed`.", content_type = "text/event-stream", body = String,
            headers(("Cache-Control" = String, description = "`no-store`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 204, description = "Resumed with a `Last-Event-ID` at or past the end: nothing more will come"),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`, `invalid_field` (events, lastEventId), `invalid_query`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found` (also for another tenant's)", body = crate::openapi::Problem, content_type = "application/problem+json"),
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
    summary = "Follow a pack run's steps and logs: step, log, completed",
    params(
        ("X-Tenant-Id" = Option<String>, Header, description = "The tenant (or `?tenant=`, for clients that cannot set headers)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq: replay from the store, then live, no gap, no duplicate"),
        ("jobId" = String, Path, description = "The job's id (ULID)"),
        StreamParams,
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `retry:` first, then `id: <seq>` / `event:` / one-line JSON `data:` frames, `: heartbeat` comments every `Streams.HeartbeatIntervalSeconds`, and `event: timeout` after `Streams.MaxDurationSeconds` or on shutdown. The stream ends after `completed`.", content_type = "text/event-stream", body = String,
            headers(("Cache-Control" = String, description = "`no-store`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 204, description = "Resumed with a `Last-Event-ID` at or past the end: nothing more will come"),
        (status = 400, description = "`invalid_tenant`, `invalid_job_id`, `invalid_field` (events, lastEventId), `invalid_query`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`job_not_found` (also for another tenant's)", body = crate::openapi::Problem, content_type = "application/problem+json"),
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
        _ => None,
    };
    let plan = Plan {
        key: sub.key.clone(),
        kind,
        filter,
        first,
        replay,
    };
    Ok(open(&state, sub, plan))
}

/// Start the pump task and answer with its frames as the SSE body.
fn open(state: &web::Data<AppState>, sub: Subscription, plan: Plan) -> HttpResponse {
    // Small: the pump waits on a slow client here, while the subscriber's
    // own queue (`Streams.BufferSize`) absorbs the run's bursts.
    let (out, body) = mpsc::channel::<Bytes>(16);
    actix_rt::spawn(pump(
        state.clone().into_inner(),
        sub.addr,
        sub.id,
        plan,
        sub.live,
        out,
    ));
    let stream = futures_util::stream::unfold(body, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
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

async fn pump(
    state: Arc<AppState>,
    addr: Addr<RunActor>,
    id: u64,
    plan: Plan,
    mut live: mpsc::Receiver<Delivery>,
    out: mpsc::Sender<Bytes>,
) {
    let streams = &state.config.streams;
    let end = async {
        out.send(Bytes::from(format!("retry: {}\n\n", streams.retry_ms))).await.ok()?;
        if let Some(first) = plan.first {
            out.send(first).await.ok()?;
        }
        if let Some((after, upto)) = plan.replay {
            if replay(&state, &plan.key, plan.kind, &plan.filter, after, upto, &out).await? {
                return Some(End::Done);
            }
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(streams.heartbeat_interval_seconds));
        heartbeat.tick().await;
        let deadline = tokio::time::sleep(Duration::from_secs(streams.max_duration_seconds));
        tokio::pin!(deadline);
        let mut shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                delivery = live.recv() => {
                    let Some(d) = delivery else { return Some(End::Done) };
                    for frame in d.frames.iter() {
                        out.send(frame.clone()).await.ok()?;
                    }
                    if d.closes {
                        return Some(End::Done);
                    }
                }
                _ = heartbeat.tick() => out.send(Bytes::from_static(b": heartbeat\n\n")).await.ok()?,
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
/// `Some(true)`: one of them ended the stream; `None`: the client left.
async fn replay(
    state: &AppState,
    key: &RunKey,
    kind: StreamKind,
    filter: &Filter,
    mut after: u64,
    upto: u64,
    out: &mpsc::Sender<Bytes>,
) -> Option<bool> {
    const PAGE: u32 = 500;
    while after < upto {
        let limit = PAGE.min((upto - after) as u32);
        let query = TimelineQuery {
            after,
            limit,
            correlation_id: None,
        };
        let page = state
            .store
            .timeline(&key.tenant, &key.run_id, &query)
            .await
            .ok()?;
        if page.is_empty() {
            break;
        }
        for envelope in page {
            after = envelope.seq;
            let event = Published::from_stored(envelope);
            if let Some(name) = filter.matches(&event.envelope) {
                for frame in event.frames(kind, Wire::Sse, name).iter() {
                    out.send(frame.clone()).await.ok()?;
                }
            }
            if filter.closes_on(&event.envelope) {
                return Some(true);
            }
        }
    }
    Some(false)
}
