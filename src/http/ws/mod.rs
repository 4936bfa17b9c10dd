//! WebSocket (SPEC §5.2): `GET {prefix}/ws`, one socket carrying many run,
//! job and pack-run subscriptions.
//!
//! Each socket is a [`WsSession`] actor. This module is the only one that
//! knows `actix-web-actors` (the handshake here, the `WebsocketContext` in
//! `session.rs` and `subscriptions.rs`), so that moving to another WebSocket
//! crate touches nothing else.
//!
//! | File | Owns |
//! | --- | --- |
//! | `mod.rs` | the route: handshake, upgrade, the session's start |
//! | `session.rs` | `WsSession`: heartbeat, client frames, writing, closing |
//! | `subscriptions.rs` | subscribe / unsubscribe and the end of a subscription |
//! | `feed.rs` | one subscription's frames: replay, live queue, resume point |
//! | `protocol.rs` | the client and server JSON frames |
//! | `guard.rs` | the RFC 6455 frame-size guard in front of the codec |
//! | `writer.rs` | the session's output queue; closes a socket whose client stops reading |
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
//! current `first_signal`, a pack-run subscription with the job's `plan`
//! (`http::plan`). A subscription whose run completes (or whose job
//! ends) is over after its `completed` event; the socket stays open and the
//! same stream may be subscribed again. A subscription whose queue overflows
//! is dropped by the run actor: the client gets an error frame
//! `subscription_dropped` carrying `after`, the seq to resume from.
//!
//! Access control (SPEC §10, ADR 0021): a handshake from an `Origin` outside
//! `Server.Cors.AllowedOrigins` → 403. With `Auth.Mode` `token` or `jwt`
//! the handshake carries `Authorization: Bearer` or `?access_token=`, or no
//! credential at all: then the first frame must be
//! `{"op":"auth","token":"…","tenant"?:"…"}` (answered
//! `{"op":"authenticated","tenant":…}`), and any other frame, a wrong token
//! or no `auth` within 5 s closes with 4401 (4403: scope or tenant).
//!
//! Protocol limits: an RFC 6455 ping every `Streams.HeartbeatIntervalSeconds`,
//! closed with 1001 when two pings in a row get no pong; frames are limited
//! to 64 KiB (a larger one closes with 1009, as soon as its header arrives);
//! fragmented messages close with 1003; a graceful server stop closes with
//! 1001. A socket whose client stops reading is aborted once its send queue
//! stays full for a heartbeat interval (`writer.rs`). Each subscription
//! counts toward `Limits.MaxStreamsPerTenant` / `MaxStreamsPerCredential`
//! (an error frame `too_many_streams` past them), and each socket holds one
//! of the server's streaming connections (a 429 at the handshake past it).

mod feed;
mod feeds;
mod guard;
mod protocol;
mod session;
mod subscriptions;
mod writer;

use std::cell::Cell;
use std::rc::Rc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{
    web, FromRequest as _, HttpMessage as _, HttpRequest, HttpResponse, ResponseError,
};
use actix_web_actors::ws;

use super::auth::check_origin;
use super::errors::{ApiError, ErrorCode, Problem};
use super::extract::{named_tenant, CorrelationId, Tenant};
use super::limits::{self, Connection};
use crate::auth::Principal;
use crate::AppState;
use guard::FrameGuard;
pub use session::WsSession;

/// Largest client frame (payload bytes); a larger one closes with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// `GET {prefix}/ws`: upgrade and start a session for the request's tenant.
#[utoipa::path(
    get,
    path = "/api/v1/orchestrator/ws",
    tag = "streams",
    summary = "WebSocket: many run / job / pack-run subscriptions over one socket",
    description = "Client text frames: `{\"op\":\"subscribe\",\"stream\":\"run|job|pack-run\",\"id\":\"…\",\"after\":N?,\"events\":[…]?}`, `{\"op\":\"unsubscribe\",\"stream\",\"id\"}`, `{\"op\":\"ping\"}`. Server frames: `subscribed`, `event` (`{\"op\":\"event\",\"stream\",\"id\",\"seq\",\"event\",\"data\"}`; without `after`, a run subscription starts with `first_signal`, a pack-run subscription with `plan`), `error` (the socket stays open), `pong`. RFC 6455 ping every `Streams.HeartbeatIntervalSeconds`; two missed pongs close with 1001; frames over 64 KiB close with 1009.",
    params(
        ("X-Tenant-Id" = Option<String>, Header, description = "The tenant (or `?tenant=`, for browsers)"),
        ("tenant" = Option<String>, Query, description = "The tenant, when headers cannot be set"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the socket is open"),
        (status = 400, description = "`invalid_tenant`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: a wrong credential (none at all: authenticate with the first frame)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`insufficient_scope`, `tenant_forbidden`, `origin_forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "`websocket_handshake`: not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_streams`: the server's streaming connections (90% of `Limits.MaxConnections`) are taken; see `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn socket(
    req: HttpRequest,
    correlation: CorrelationId,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state.config.server.cors)?;
    // A handshake without any credential (the middleware let it through)
    // authenticates with its first frame; any other is resolved now.
    let awaiting = state.auth.enabled() && req.extensions().get::<Principal>().is_none();
    let tenant = if awaiting {
        Err(named_tenant(&req)?)
    } else {
        Ok(Tenant::extract(&req).await?.0)
    };
    if let Err(e) = ws::handshake(&req) {
        return Ok(handshake_problem(&e));
    }
    let held = state.stream_limits.hold_connection()?;
    let stall = std::time::Duration::from_secs(state.config.streams.heartbeat_interval_seconds);
    let oversize = Rc::new(Cell::new(false));
    let session = WsSession::new(
        state.into_inner(),
        tenant,
        limits::credential(&req),
        correlation.0,
        oversize.clone(),
        held,
    );
    let guarded = FrameGuard::new(payload, MAX_FRAME_BYTES as u64, oversize);
    let res = ws::WsResponseBuilder::new(session, &req, guarded)
        .frame_size(MAX_FRAME_BYTES)
        .start()
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let connection = Connection::of(&req);
    Ok(res.map_body(|_, session| writer::spawn(session, connection, stall)))
}

/// A plain GET (or a broken handshake) on the WebSocket route: problem+json.
fn handshake_problem(e: &ws::HandshakeError) -> HttpResponse {
    use ws::HandshakeError::*;
    let code = match e {
        NoWebsocketUpgrade | NoConnectionUpgrade => ErrorCode::WebsocketUpgradeRequired,
        _ => ErrorCode::WebsocketHandshake,
    };
    let detail = format!("{e}: this route speaks WebSocket (RFC 6455) only");
    let mut res = ApiError::new(code, detail).error_response();
    if code == ErrorCode::WebsocketUpgradeRequired {
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    res
}
