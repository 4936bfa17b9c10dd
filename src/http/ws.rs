//! WebSocket (SPEC §5.2): `GET {prefix}/ws`, one socket carrying many run,
//! job and pack-run subscriptions.
//!
//! Each socket is a [`WsSession`] actor. This is the only file that knows
//! `actix-web-actors` (its `WebsocketContext`), so that moving to another
//! WebSocket crate touches nothing else.
//!
//! Client text frames:
//! `{"op":"subscribe","stream":"run|job|pack-run","id":"…","after":N?,"events":[…]?,"correlationId":"…"?}`,
//! `{"op":"unsubscribe","stream":…,"id":…}`, `{"op":"ping"}`.
//!
//! Server text frames:
//! - `{"op":"subscribed","stream":…,"id":…,"liveFrom":N}` (plus
//!   `"completed":true` when `after` already covers the stream's end: no
//!   frames follow for it);
//! - `{"op":"event","stream":…,"id":…,"seq":N,"event":…,"data":{…}}`, encoded
//!   once per event by the run actor (`Wire::WebSocket`);
//! - `{"op":"unsubscribed","stream":…,"id":…}`, `{"op":"pong"}`;
//! - `{"op":"error","code":…,"detail":…}` (with `stream` and `id` when the
//!   error concerns one subscription). Errors never close the socket.
//!
//! A subscription works like an SSE stream (see `feed.rs`): it subscribes
//! to the run's actor first and learns `live_from`; `after` then replays
//! `(after, live_from]` from the store, followed by the live events from the
//! subscription's own bounded queue (`Streams.BufferSize`): no gap, no
//! duplicate. Without `after`, a run subscription starts with the run's
//! current `first_signal`. A subscription whose run completes (or whose job
//! ends) is over after its `completed` event; the socket stays open and the
//! same stream may be subscribed again. A subscription whose queue overflows
//! is dropped by the run actor: the client gets an error frame
//! `subscription_dropped` carrying `after`, the seq to resume from.
//!
//! Protocol limits: an RFC 6455 ping every `Streams.HeartbeatIntervalSeconds`,
//! closed with 1001 when two pings in a row get no pong; frames are limited
//! to 64 KiB (a larger one closes with 1009, as soon as its header arrives);
//! fragmented messages close with 1003; a graceful server stop closes with
//! 1001.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::prelude::*;
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use runsignal_actors::subscriber::ws_frames;
use runsignal_actors::{Delivery, Filter, RunActor, RunKey, StreamKind, Unsubscribe, Wire};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::errors::{ApiError, ErrorCode};
use super::extract::{job_id, run_id, CorrelationId, Tenant};
use super::feed::{stream_filter, Replay, Subscription};
use crate::AppState;

/// Largest client frame (payload bytes); a larger one closes with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Pings in a row without a pong before the socket is closed.
const MISSED_PONGS: u32 = 2;

/// How long a socket we close waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// `GET {prefix}/ws`: upgrade and start a session for the request's tenant.
#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/ws",
    tag = "streams",
    summary = "WebSocket: many run / job / pack-run subscriptions over one socket",
    description = "Client text frames: `{\"op\":\"subscribe\",\"stream\":\"run|job|pack-run\",\"id\":\"…\",\"after\":N?,\"events\":[…]?}`, `{\"op\":\"unsubscribe\",\"stream\",\"id\"}`, `{\"op\":\"ping\"}`. Server frames: `subscribed`, `event` (`{\"op\":\"event\",\"stream\",\"id\",\"seq\",\"event\",\"data\"}`), `error` (the socket stays open), `pong`. RFC 6455 ping every `Streams.HeartbeatIntervalSeconds`; two missed pongs close with 1001; frames over 64 KiB close with 1009.",
    params(
        ("X-Tenant-Id" = Option<String>, Header, description = "The tenant (or `?tenant=`, for browsers)"),
        ("tenant" = Option<String>, Query, description = "The tenant, when headers cannot be set"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the socket is open"),
        (status = 400, description = "`invalid_tenant`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 426, description = "`websocket_handshake`: not a WebSocket upgrade request", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn socket(
    req: HttpRequest,
    tenant: Tenant,
    correlation: CorrelationId,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Err(e) = ws::handshake(&req) {
        return Ok(handshake_problem(&e));
    }
    let oversize = Rc::new(Cell::new(false));
    let session = WsSession {
        state: state.into_inner(),
        tenant: tenant.0,
        correlation_id: correlation.0,
        subs: HashMap::new(),
        next_token: 1,
        missed_pongs: 0,
        oversize: oversize.clone(),
        closing: false,
    };
    let guarded = FrameGuard::new(payload, MAX_FRAME_BYTES as u64, oversize);
    ws::WsResponseBuilder::new(session, &req, guarded)
        .frame_size(MAX_FRAME_BYTES)
        .start()
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// A plain GET (or a broken handshake) on the WebSocket route: problem+json.
fn handshake_problem(e: &ws::HandshakeError) -> HttpResponse {
    use ws::HandshakeError::*;
    let status = match e {
        NoWebsocketUpgrade | NoConnectionUpgrade => StatusCode::UPGRADE_REQUIRED,
        _ => StatusCode::BAD_REQUEST,
    };
    let code = "websocket_handshake";
    let mut res = HttpResponse::build(status);
    if status == StatusCode::UPGRADE_REQUIRED {
        res.insert_header(("Upgrade", "websocket"));
    }
    res.content_type("application/problem+json").json(json!({
        "type": format!("https://runsignal.dev/problems/{code}"),
        "title": "WebSocket handshake required",
        "status": status.as_u16(),
        "detail": format!("{e}: this route speaks WebSocket (RFC 6455) only"),
        "code": code,
    }))
}

/// One socket.
pub struct WsSession {
    state: Arc<AppState>,
    tenant: String,
    /// Of the upgrade request: named in the first `first_signal` frames.
    correlation_id: String,
    /// Subscriptions by token (a token is never reused within a socket).
    subs: HashMap<u64, Sub>,
    next_token: u64,
    missed_pongs: u32,
    /// Set by the [`FrameGuard`] when a client frame exceeds the limit.
    oversize: Rc<Cell<bool>>,
    /// We sent a close frame: nothing else goes out, nothing else is served.
    closing: bool,
}

struct Sub {
    kind: StreamKind,
    /// Normalized run id (run streams) or job id (job and pack-run streams).
    id: String,
    /// `None` while the subscription is being opened.
    live: Option<Live>,
}

struct Live {
    addr: Addr<RunActor>,
    subscriber: u64,
    /// The stream feeding this subscription's frames into the session.
    feed: SpawnHandle,
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_secs(self.state.config.streams.heartbeat_interval_seconds);
        ctx.run_interval(every, |act, ctx| act.heartbeat(ctx));
        let mut shutdown = self.state.shutdown.clone();
        ctx.spawn(
            async move { shutdown.wait_for(|stop| *stop).await.is_ok() }
                .into_actor(self)
                .map(|stopping, act, ctx| {
                    if stopping {
                        act.close(ctx, ws::CloseCode::Away, "the server is stopping");
                    }
                }),
        );
        tracing::debug!(tenant = %self.tenant, "websocket opened");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.unsubscribe_all();
        tracing::debug!(tenant = %self.tenant, "websocket closed");
    }
}

impl WsSession {
    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.closing {
            return;
        }
        if self.missed_pongs >= MISSED_PONGS {
            // The peer is gone or stuck: no closing handshake to wait for.
            tracing::debug!(tenant = %self.tenant, "websocket missed {MISSED_PONGS} pongs, closing");
            self.unsubscribe_all();
            ctx.close(Some(reason(ws::CloseCode::Away, "no pong to two pings")));
            self.closing = true;
            ctx.stop();
            return;
        }
        self.missed_pongs += 1;
        ctx.ping(b"");
    }

    /// Send a close frame, then wait a little for the client's before stopping.
    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, why: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.unsubscribe_all();
        ctx.close(Some(reason(code, why)));
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }

    fn unsubscribe_all(&mut self) {
        for (_, sub) in self.subs.drain() {
            if let Some(live) = sub.live {
                live.addr.do_send(Unsubscribe(live.subscriber));
            }
        }
    }

    /// End one subscription (its feed, its registration at the run actor).
    fn end(&mut self, token: u64, ctx: &mut ws::WebsocketContext<Self>) -> Option<Sub> {
        let sub = self.subs.remove(&token)?;
        if let Some(live) = &sub.live {
            ctx.cancel_future(live.feed);
            live.addr.do_send(Unsubscribe(live.subscriber));
        }
        Some(sub)
    }

    fn find(&self, kind: StreamKind, id: &str) -> Option<u64> {
        self.subs
            .iter()
            .find(|(_, s)| s.kind == kind && s.id == id)
            .map(|(t, _)| *t)
    }

    fn send_json(&self, ctx: &mut ws::WebsocketContext<Self>, value: Value) {
        if !self.closing {
            ctx.text(value.to_string());
        }
    }

    /// A frame encoded by the run actor (or by a replay), sent as is.
    fn send_frame(&self, ctx: &mut ws::WebsocketContext<Self>, bytes: Bytes) {
        if self.closing {
            return;
        }
        // Frames are serialized JSON: always UTF-8.
        match bytes.try_into() {
            Ok(text) => ctx.write_raw(ws::Message::Text(text)),
            Err(_) => tracing::error!("a websocket frame was not UTF-8; dropped"),
        }
    }

    fn send_error(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        code: &str,
        detail: &str,
        stream: Option<(StreamKind, &str)>,
    ) {
        let mut frame = json!({"op": "error", "code": code, "detail": detail});
        if let Some((kind, id)) = stream {
            frame["stream"] = json!(kind.as_str());
            frame["id"] = json!(id);
        }
        self.send_json(ctx, frame);
    }

    fn send_api_error(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        e: &ApiError,
        stream: Option<(StreamKind, &str)>,
    ) {
        self.send_error(ctx, e.code.as_str(), &e.detail, stream);
    }

    /// One client text message.
    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let mut msg = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return self.send_error(
                    ctx,
                    ErrorCode::InvalidBody.as_str(),
                    "a message is a JSON object with an `op`",
                    None,
                )
            }
            Err(e) => {
                return self.send_error(
                    ctx,
                    ErrorCode::InvalidBody.as_str(),
                    &format!("malformed JSON: {e}"),
                    None,
                )
            }
        };
        let op = match msg.remove("op") {
            Some(Value::String(op)) => op,
            _ => {
                return self.send_error(
                    ctx,
                    ErrorCode::InvalidBody.as_str(),
                    "field `op` is required: subscribe, unsubscribe or ping",
                    None,
                )
            }
        };
        let args = Value::Object(msg);
        match op.as_str() {
            "subscribe" => match parse_args::<SubscribeArgs>(args) {
                Ok(args) => self.subscribe(args, ctx),
                Err(e) => self.send_api_error(ctx, &e, None),
            },
            "unsubscribe" => match parse_args::<UnsubscribeArgs>(args) {
                Ok(args) => self.unsubscribe(args, ctx),
                Err(e) => self.send_api_error(ctx, &e, None),
            },
            "ping" => self.send_json(ctx, json!({"op": "pong"})),
            other => self.send_error(
                ctx,
                "unknown_op",
                &format!("unknown op `{other}`; expected subscribe, unsubscribe or ping"),
                None,
            ),
        }
    }

    fn subscribe(&mut self, args: SubscribeArgs, ctx: &mut ws::WebsocketContext<Self>) {
        let (kind, id) = match stream_and_id(&args.stream, &args.id) {
            Ok(v) => v,
            Err((code, detail)) => return self.send_error(ctx, code, &detail, None),
        };
        let events = args.events.map(|names| names.join(","));
        let mut filter = match stream_filter(kind, events.as_deref(), args.correlation_id) {
            Ok(f) => f,
            Err(e) => return self.send_api_error(ctx, &e, Some((kind, &id))),
        };
        if kind != StreamKind::Run {
            filter.job_id = Some(id.as_str().into());
        }
        if self.find(kind, &id).is_some() {
            return self.send_error(
                ctx,
                "already_subscribed",
                "this socket already follows this stream",
                Some((kind, &id)),
            );
        }
        let max = self.state.config.streams.max_subscriptions_per_socket;
        if self.subs.len() >= max {
            return self.send_error(
                ctx,
                "subscription_limit",
                &format!(
                    "a socket follows at most {max} streams (Streams.MaxSubscriptionsPerSocket)"
                ),
                Some((kind, &id)),
            );
        }
        let token = self.next_token;
        self.next_token += 1;
        self.subs.insert(
            token,
            Sub {
                kind,
                id: id.clone(),
                live: None,
            },
        );
        let open = open_subscription(
            self.state.clone(),
            self.tenant.clone(),
            self.correlation_id.clone(),
            kind,
            id,
            filter,
            args.after,
        );
        ctx.spawn(
            open.into_actor(self)
                .map(move |result, act, ctx| act.opened(token, result, ctx)),
        );
    }

    /// The run actor answered a subscribe: ack, first frames, then the feed.
    fn opened(
        &mut self,
        token: u64,
        result: Result<Opened, ApiError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let wanted = !self.closing && self.subs.contains_key(&token);
        let opened = match result {
            Ok(opened) if !wanted => {
                // Unsubscribed (or closing) meanwhile.
                opened.addr.do_send(Unsubscribe(opened.subscriber));
                return;
            }
            Ok(opened) => opened,
            Err(_) if !wanted => return,
            Err(e) => {
                if let Some(sub) = self.subs.remove(&token) {
                    self.send_api_error(ctx, &e, Some((sub.kind, &sub.id)));
                }
                return;
            }
        };
        let Some(sub) = self.subs.get(&token) else {
            return;
        };
        let mut ack = json!({
            "op": "subscribed",
            "stream": sub.kind.as_str(),
            "id": sub.id,
            "liveFrom": opened.live_from,
        });
        let Some(feed) = opened.feed else {
            // `after` covers the end of the stream: nothing more will come.
            ack["completed"] = json!(true);
            self.send_json(ctx, ack);
            self.subs.remove(&token);
            return;
        };
        self.send_json(ctx, ack);
        if let Some(first) = opened.first {
            self.send_frame(ctx, first);
        }
        let handle = ctx.add_stream(feed.into_stream(token));
        if let Some(sub) = self.subs.get_mut(&token) {
            sub.live = Some(Live {
                addr: opened.addr,
                subscriber: opened.subscriber,
                feed: handle,
            });
        }
    }

    fn unsubscribe(&mut self, args: UnsubscribeArgs, ctx: &mut ws::WebsocketContext<Self>) {
        let (kind, id) = match stream_and_id(&args.stream, &args.id) {
            Ok(v) => v,
            Err((code, detail)) => return self.send_error(ctx, code, &detail, None),
        };
        match self.find(kind, &id) {
            Some(token) => {
                self.end(token, ctx);
                self.send_json(
                    ctx,
                    json!({"op": "unsubscribed", "stream": kind.as_str(), "id": id}),
                );
            }
            None => self.send_error(
                ctx,
                "not_subscribed",
                "this socket does not follow this stream",
                Some((kind, &id)),
            ),
        }
    }
}

fn reason(code: ws::CloseCode, why: &str) -> ws::CloseReason {
    ws::CloseReason {
        code,
        description: Some(why.to_owned()),
    }
}

/// The stream kind and normalized id a message names, or an error frame's
/// code and detail.
fn stream_and_id(stream: &str, id: &str) -> Result<(StreamKind, String), (&'static str, String)> {
    let kind = StreamKind::parse(stream).ok_or_else(|| {
        (
            "unknown_stream",
            format!("unknown stream `{stream}`; expected run, job or pack-run"),
        )
    })?;
    let id = match kind {
        StreamKind::Run => run_id(id),
        StreamKind::Job | StreamKind::PackRun => job_id(id),
    }
    .map_err(|e| (e.code.as_str(), e.detail))?;
    Ok((kind, id))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscribeArgs {
    stream: String,
    id: String,
    /// Resume after this seq (as `Last-Event-ID`).
    after: Option<u64>,
    /// Stream event names to keep.
    events: Option<Vec<String>>,
    correlation_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UnsubscribeArgs {
    stream: String,
    id: String,
}

/// A message's fields (without `op`), errors naming the field.
fn parse_args<T: DeserializeOwned>(args: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let detail = if path == "." {
            inner.to_string()
        } else {
            format!("field `{path}`: {inner}")
        };
        ApiError::new(ErrorCode::InvalidField, detail)
    })
}

/// A subscription registered at its run actor, ready to go.
struct Opened {
    addr: Addr<RunActor>,
    subscriber: u64,
    live_from: u64,
    /// The run stream's current `first_signal` (fresh subscriptions only).
    first: Option<Bytes>,
    /// `None`: the client has already seen the end of the stream.
    feed: Option<Feed>,
}

/// Subscribe to the run's actor and plan the replay, as SSE does
/// (`streams::Subscription`): a foreign run or job is "not found", never
/// "forbidden".
async fn open_subscription(
    state: Arc<AppState>,
    tenant: String,
    correlation_id: String,
    kind: StreamKind,
    id: String,
    filter: Filter,
    after: Option<u64>,
) -> Result<Opened, ApiError> {
    let sub =
        Subscription::open(&state, &tenant, kind, &id, filter.clone(), Wire::WebSocket).await?;
    let Some(replay) = sub.start(after) else {
        return Ok(Opened {
            addr: sub.addr,
            subscriber: sub.id,
            live_from: sub.live_from,
            first: None,
            feed: None,
        });
    };
    let first = match (kind, after, &sub.signal) {
        (StreamKind::Run, None, Some(view)) if filter.wants("first_signal") => {
            let run = &*sub.key.run_id;
            let data = view.stream_data(
                &format!("{}:{}", run, view.seq),
                "snapshot",
                true,
                &correlation_id,
            );
            ws_frames(StreamKind::Run, run, view.seq, "first_signal", &[data])
                .into_iter()
                .next()
        }
        _ => None,
    };
    let Subscription {
        addr,
        id: subscriber,
        key,
        live,
        live_from,
        ..
    } = sub;
    let feed = Feed {
        state,
        replay: replay
            .map(|range| Replay::new(key.clone(), kind, filter.clone(), Wire::WebSocket, range)),
        key,
        kind,
        filter,
        resume_after: after.unwrap_or(0),
        last_seq: after.unwrap_or(live_from),
        last_seq_frames: 0,
        live_from,
        live: Some(live),
        queue: VecDeque::new(),
        ended: false,
    };
    Ok(Opened {
        addr,
        subscriber,
        live_from,
        first,
        feed: Some(feed),
    })
}

/// What a subscription's feed yields to the session.
struct FeedEvent {
    token: u64,
    item: FeedItem,
}

enum FeedItem {
    /// An encoded event frame; `closes`: the stream is over after it.
    Frame { bytes: Bytes, closes: bool },
    /// The stream ended on an event this subscription filters out.
    Completed,
    /// The run actor dropped the subscription (its queue overflowed, or the
    /// actor stopped): resume after `last_seq`.
    Dropped { last_seq: u64 },
    /// Reading the replay from the store failed.
    Failed,
}

/// One subscription's frames: the replay from the store, then its live
/// queue, in seq order.
struct Feed {
    state: Arc<AppState>,
    key: RunKey,
    kind: StreamKind,
    filter: Filter,
    /// Stored events still to replay.
    replay: Option<Replay>,
    /// Live events up to this seq were seen by the client already.
    resume_after: u64,
    /// The seq a dropped subscription resumes after.
    last_seq: u64,
    /// Frames of `last_seq` handed out (an event may make several).
    last_seq_frames: usize,
    live_from: u64,
    live: Option<mpsc::Receiver<Delivery>>,
    /// Replayed frames not yet handed out.
    queue: VecDeque<FeedItem>,
    ended: bool,
}

impl Feed {
    fn into_stream(self, token: u64) -> impl Stream<Item = FeedEvent> + 'static {
        futures_util::stream::unfold(self, move |mut feed| async move {
            let item = feed.next().await?;
            Some((FeedEvent { token, item }, feed))
        })
    }

    async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            if let Some(replay) = &mut self.replay {
                if replay.done() {
                    self.replay = None;
                    if self.live_from > self.last_seq {
                        self.last_seq = self.live_from;
                        self.last_seq_frames = 0;
                    }
                    continue;
                }
                let Ok(page) = replay.next_page(&self.state).await else {
                    self.ended = true;
                    return Some(FeedItem::Failed);
                };
                for d in page {
                    self.push(d);
                }
                continue;
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                // Already replayed (an `after` beyond `live_from`).
                Some(d) if d.seq <= self.resume_after => continue,
                Some(d) => self.push(d),
                None => {
                    self.ended = true;
                    self.live = None;
                    let last_seq = self.finish_last_event().await;
                    self.queue.push_back(FeedItem::Dropped { last_seq });
                }
            }
        }
    }

    /// Queue the frames of one event, replayed or live (a delivery holds
    /// every frame of its event).
    fn push(&mut self, d: Delivery) {
        if self.ended {
            return;
        }
        self.last_seq = d.seq;
        self.last_seq_frames = d.frames.len();
        for (i, bytes) in d.frames.iter().enumerate() {
            self.queue.push_back(FeedItem::Frame {
                bytes: bytes.clone(),
                closes: d.closes && i + 1 == d.frames.len(),
            });
        }
        if d.closes {
            if d.frames.is_empty() {
                // Ended on an event this subscription filters out.
                self.queue.push_back(FeedItem::Completed);
            }
            self.ended = true;
            self.replay = None;
            self.live = None;
        }
    }

    /// The queue was dropped: if that happened between two frames of one
    /// event (log lines), queue its missing frames from the store, so that
    /// resuming after its seq loses nothing. Returns the seq to resume after.
    async fn finish_last_event(&mut self) -> u64 {
        let (seq, sent) = (self.last_seq, self.last_seq_frames);
        if sent == 0 || seq == 0 {
            return seq;
        }
        let mut event = Replay::new(
            self.key.clone(),
            self.kind,
            self.filter.clone(),
            Wire::WebSocket,
            (seq - 1, seq),
        );
        let Ok(page) = event.next_page(&self.state).await else {
            // Unknown whether the event was complete: resume at it (a
            // client may see some of its lines twice, never lose one).
            return seq - 1;
        };
        if let Some(d) = page.iter().find(|d| d.seq == seq) {
            for bytes in d.frames.iter().skip(sent) {
                self.queue.push_back(FeedItem::Frame {
                    bytes: bytes.clone(),
                    closes: false,
                });
            }
        }
        seq
    }
}

impl StreamHandler<FeedEvent> for WsSession {
    fn handle(&mut self, event: FeedEvent, ctx: &mut Self::Context) {
        if self.closing || !self.subs.contains_key(&event.token) {
            return;
        }
        match event.item {
            FeedItem::Frame { bytes, closes } => {
                self.send_frame(ctx, bytes);
                if closes {
                    self.end(event.token, ctx);
                }
            }
            FeedItem::Completed => {
                self.end(event.token, ctx);
            }
            FeedItem::Dropped { last_seq } => {
                if let Some(sub) = self.end(event.token, ctx) {
                    let mut frame = json!({
                        "op": "error",
                        "code": "subscription_dropped",
                        "detail": format!(
                            "the subscription fell behind and was dropped; subscribe again with \"after\": {last_seq}"
                        ),
                        "stream": sub.kind.as_str(),
                        "id": sub.id,
                    });
                    frame["after"] = json!(last_seq);
                    self.send_json(ctx, frame);
                }
            }
            FeedItem::Failed => {
                if let Some(sub) = self.end(event.token, ctx) {
                    self.send_error(
                        ctx,
                        ErrorCode::StoreUnavailable.as_str(),
                        "the stream's stored events could not be read; subscribe again",
                        Some((sub.kind, &sub.id)),
                    );
                }
            }
        }
    }

    /// A feed ending ends one subscription, never the socket.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(ws::ProtocolError::Overflow) => {
                return self.close(
                    ctx,
                    ws::CloseCode::Size,
                    &format!("frames are limited to {MAX_FRAME_BYTES} bytes"),
                )
            }
            Err(_) if self.oversize.replace(false) => {
                return self.close(
                    ctx,
                    ws::CloseCode::Size,
                    &format!("frames are limited to {MAX_FRAME_BYTES} bytes"),
                )
            }
            Err(ws::ProtocolError::Io(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                self.unsubscribe_all();
                return ctx.stop();
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket protocol error");
                return self.close(ctx, ws::CloseCode::Protocol, &e.to_string());
            }
        };
        match msg {
            ws::Message::Close(reason) => {
                if !self.closing {
                    self.closing = true;
                    self.unsubscribe_all();
                    ctx.close(reason);
                }
                ctx.stop();
            }
            _ if self.closing => {}
            ws::Message::Text(text) => self.on_text(&text, ctx),
            ws::Message::Ping(bytes) => ctx.pong(&bytes),
            ws::Message::Pong(_) => self.missed_pongs = 0,
            ws::Message::Binary(_) => self.send_error(
                ctx,
                ErrorCode::InvalidBody.as_str(),
                "binary frames are not supported; send JSON text frames",
                None,
            ),
            ws::Message::Continuation(_) => self.close(
                ctx,
                ws::CloseCode::Unsupported,
                "fragmented messages are not supported",
            ),
            ws::Message::Nop => {}
        }
    }
}

/// Watches the client's frame headers as the bytes arrive and refuses a
/// frame longer than the limit as soon as its header is complete.
///
/// The codec alone would refuse it too, but only once the whole frame is
/// buffered: a client announcing a huge length would make the server hold
/// everything it sends. The guard drops such a frame's payload instead of
/// passing it on, reports one error (the session then closes with 1009),
/// and keeps passing later frames through so that the client's close frame
/// completes the closing handshake.
struct FrameGuard<S> {
    inner: S,
    max: u64,
    /// Header bytes of the next frame, held until the header is complete.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current frame's payload is dropped.
    discard: bool,
    /// An error is owed to the reader.
    report: bool,
    tripped: Rc<Cell<bool>>,
}

impl<S> FrameGuard<S> {
    fn new(inner: S, max: u64, tripped: Rc<Cell<bool>>) -> FrameGuard<S> {
        FrameGuard {
            inner,
            max,
            head: Vec::with_capacity(14),
            payload_left: 0,
            discard: false,
            report: false,
            tripped,
        }
    }

    /// Header length (RFC 6455 §5.2) given its second byte.
    fn header_len(second: u8) -> usize {
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(head: &[u8]) -> u64 {
        match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    /// The bytes of `chunk` to pass on.
    fn filter(&mut self, chunk: &[u8]) -> BytesMut {
        let mut out = BytesMut::with_capacity(chunk.len());
        let mut i = 0;
        while i < chunk.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min((chunk.len() - i) as u64) as usize;
                if !self.discard {
                    out.extend_from_slice(&chunk[i..i + n]);
                }
                i += n;
                self.payload_left -= n as u64;
                continue;
            }
            self.head.push(chunk[i]);
            i += 1;
            if self.head.len() < 2 || self.head.len() < Self::header_len(self.head[1]) {
                continue;
            }
            let len = Self::payload_len(&self.head);
            self.discard = len > self.max;
            if self.discard {
                self.tripped.set(true);
                self.report = true;
            } else {
                out.extend_from_slice(&self.head);
            }
            self.head.clear();
            self.payload_left = len;
        }
        out
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.report {
                this.report = false;
                return Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.filter(&chunk);
                    // Usually the chunk passes whole (compare the bytes:
                    // held-back header bytes may shift the content).
                    if out[..] == chunk[..] {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f = header(len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    async fn run(chunks: Vec<Vec<u8>>, max: u64) -> (Vec<u8>, usize, bool) {
        let tripped = Rc::new(Cell::new(false));
        let inner = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, PayloadError>(Bytes::from(c))),
        );
        let mut guard = FrameGuard::new(inner, max, tripped.clone());
        let (mut out, mut errors) = (Vec::new(), 0);
        while let Some(item) = guard.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => errors += 1,
            }
        }
        (out, errors, tripped.get())
    }

    #[actix_rt::test]
    async fn passes_frames_within_the_limit_whatever_the_chunking() {
        let bytes: Vec<u8> = [frame(5), frame(300), frame(70_000), frame(0)].concat();
        for size in [1, 3, 7, 1000, bytes.len()] {
            let chunks = bytes.chunks(size).map(<[u8]>::to_vec).collect();
            let (out, errors, tripped) = run(chunks, 100_000).await;
            assert_eq!(out, bytes, "chunk size {size}");
            assert_eq!((errors, tripped), (0, false));
        }
    }

    #[actix_rt::test]
    async fn held_back_header_bytes_are_released_in_order() {
        // Chunks whose held-back tails are as long as the previous ones'.
        let bytes: Vec<u8> = [frame(1), frame(1), frame(1), frame(1)].concat();
        for size in 1..bytes.len() {
            for offset in 0..size {
                let (head, tail) = bytes.split_at(offset);
                let mut chunks: Vec<Vec<u8>> = vec![head.to_vec()];
                chunks.extend(tail.chunks(size).map(<[u8]>::to_vec));
                let (out, errors, _) = run(chunks, 100).await;
                assert_eq!(out, bytes, "chunk size {size}, offset {offset}");
                assert_eq!(errors, 0);
            }
        }
    }

    #[actix_rt::test]
    async fn drops_an_oversize_frame_and_keeps_the_rest() {
        let small = frame(10);
        let big = frame(70_000);
        let bytes: Vec<u8> = [small.clone(), big, small.clone()].concat();
        for size in [1, 5, 4096, bytes.len()] {
            let chunks = bytes.chunks(size).map(<[u8]>::to_vec).collect();
            let (out, errors, tripped) = run(chunks, 65_536).await;
            assert_eq!(
                out,
                [small.clone(), small.clone()].concat(),
                "chunk size {size}"
            );
            assert_eq!((errors, tripped), (1, true));
        }
    }

    #[actix_rt::test]
    async fn refuses_a_huge_declared_length_from_the_header_alone() {
        let (out, errors, tripped) = run(vec![header(1 << 40)], 65_536).await;
        assert!(out.is_empty());
        assert_eq!((errors, tripped), (1, true));
    }
}
