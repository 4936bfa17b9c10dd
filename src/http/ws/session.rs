//! [`WsSession`]: one actor per socket: its heartbeat, the client's frames,
//! what it writes, the closing handshake. Its subscriptions are handled in
//! `subscriptions.rs`.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use futures_util::stream::AbortHandle;
use runsignal_actors::{RunActor, StreamKind, Unsubscribe};

use super::feeds::FeedSet;
use super::protocol::{AuthArgs, ClientFrame, ServerFrame};
use super::MAX_FRAME_BYTES;
use crate::auth::Scope;
use crate::http::auth::insufficient;
use crate::http::errors::{ApiError, ErrorCode};
use crate::http::extract::{tenant_for, valid_tenant};
use crate::http::limits::{HeldConnection, StreamPermit};
use crate::AppState;

/// Pings in a row without a pong before the socket is closed.
const MISSED_PONGS: u32 = 2;

/// How long a socket we close waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long a socket whose handshake carried no credential has to send its
/// `auth` frame before it is closed (4401).
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) type Ctx = ws::WebsocketContext<WsSession>;

/// One socket.
pub struct WsSession {
    pub(super) state: Arc<AppState>,
    /// Empty while `awaiting_auth`.
    pub(super) tenant: String,
    /// `Some` until the first frame authenticates the socket: the tenant the
    /// handshake named, if any. No other op is served meanwhile.
    awaiting_auth: Option<Option<String>>,
    /// The credential the socket authenticated with (stream limits).
    pub(super) credential: Option<String>,
    /// Of the upgrade request: named in the first `first_signal` frames.
    pub(super) correlation_id: String,
    /// Subscriptions by token (a token is never reused within a socket).
    pub(super) subs: HashMap<u64, Sub>,
    /// Every subscription's feed, one stream in the context.
    pub(super) feeds: FeedSet,
    pub(super) next_token: u64,
    missed_pongs: u32,
    /// Set by the frame guard when a client frame exceeds the limit.
    oversize: Rc<Cell<bool>>,
    /// We sent a close frame: nothing else goes out, nothing else is served.
    pub(super) closing: bool,
    /// The socket's place among the server's streaming connections.
    _held: HeldConnection,
}

pub(super) struct Sub {
    pub kind: StreamKind,
    /// Normalized run id (run streams) or job id (job and pack-run streams).
    pub id: String,
    /// `None` while the subscription is being opened.
    pub live: Option<Live>,
    /// Its place under the stream limits, freed when the `Sub` is dropped.
    pub _permit: StreamPermit,
}

pub(super) struct Live {
    pub addr: Addr<RunActor>,
    pub subscriber: u64,
    /// Ends the feed of this subscription's frames (in `feeds`).
    pub feed: AbortHandle,
}

impl WsSession {
    /// `tenant`: `Ok` when the handshake was authenticated (or `Auth.Mode`
    /// is `none`); `Err(named)` when the first frame must authenticate,
    /// `named` the tenant the handshake named.
    pub fn new(
        state: Arc<AppState>,
        tenant: Result<String, Option<String>>,
        credential: Option<String>,
        correlation_id: String,
        oversize: Rc<Cell<bool>>,
        held: HeldConnection,
    ) -> WsSession {
        let (tenant, awaiting_auth) = match tenant {
            Ok(t) => (t, None),
            Err(named) => (String::new(), Some(named)),
        };
        WsSession {
            state,
            tenant,
            awaiting_auth,
            credential,
            correlation_id,
            subs: HashMap::new(),
            feeds: FeedSet::default(),
            next_token: 1,
            missed_pongs: 0,
            oversize,
            closing: false,
            _held: held,
        }
    }
}

impl Actor for WsSession {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        ctx.add_stream(self.feeds.stream());
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
        if self.awaiting_auth.is_some() {
            ctx.run_later(AUTH_TIMEOUT, |act, ctx| {
                if act.awaiting_auth.is_some() {
                    let why = format!(
                        "unauthenticated: no auth frame within {} s",
                        AUTH_TIMEOUT.as_secs()
                    );
                    act.close(ctx, CLOSE_UNAUTHENTICATED, &why);
                }
            });
        }
        tracing::debug!(tenant = %self.tenant, "websocket opened");
    }

    fn stopped(&mut self, _ctx: &mut Ctx) {
        self.unsubscribe_all();
        tracing::debug!(tenant = %self.tenant, "websocket closed");
    }
}

/// The socket: heartbeat, closing, writing frames.
impl WsSession {
    fn heartbeat(&mut self, ctx: &mut Ctx) {
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
    fn close(&mut self, ctx: &mut Ctx, code: ws::CloseCode, why: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.unsubscribe_all();
        ctx.close(Some(reason(code, why)));
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }

    pub(super) fn send(&self, ctx: &mut Ctx, frame: ServerFrame<'_>) {
        if !self.closing {
            ctx.text(frame.encode());
        }
    }

    /// A frame encoded by the run actor (or by a replay), sent as is.
    pub(super) fn send_frame(&self, ctx: &mut Ctx, bytes: Bytes) {
        if self.closing {
            return;
        }
        // Frames are serialized JSON: always UTF-8.
        match bytes.try_into() {
            Ok(text) => ctx.write_raw(ws::Message::Text(text)),
            Err(_) => tracing::error!("a websocket frame was not UTF-8; dropped"),
        }
    }

    /// An error frame, about one subscription when `stream` is given.
    pub(super) fn send_error(
        &self,
        ctx: &mut Ctx,
        e: &ApiError,
        stream: Option<(StreamKind, &str)>,
    ) {
        self.send(ctx, ServerFrame::error(e, stream));
    }

    /// One client text message.
    fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        if let Some(named) = self.awaiting_auth.take() {
            return match ClientFrame::parse(text) {
                Ok(ClientFrame::Auth(args)) => self.authenticate(args, named, ctx),
                _ => self.close(
                    ctx,
                    CLOSE_UNAUTHENTICATED,
                    r#"unauthenticated: the first frame must be {"op":"auth","token":"…"}"#,
                ),
            };
        }
        match ClientFrame::parse(text) {
            Ok(ClientFrame::Auth(_)) => {
                let e = ApiError::new(
                    ErrorCode::InvalidBody,
                    "this socket is already authenticated",
                );
                self.send_error(ctx, &e, None)
            }
            Ok(ClientFrame::Subscribe(args)) => self.subscribe(args, ctx),
            Ok(ClientFrame::Unsubscribe(args)) => self.unsubscribe(args, ctx),
            Ok(ClientFrame::Ping) => self.send(ctx, ServerFrame::Pong),
            Err(e) => self.send_error(ctx, &e, None),
        }
    }

    pub(super) fn unsubscribe_all(&mut self) {
        for (_, sub) in self.subs.drain() {
            if let Some(live) = sub.live {
                live.addr.do_send(Unsubscribe(live.subscriber));
            }
        }
    }
}

/// The first frame's credential: on success the socket acts for the
/// tenant; else it closes with 4000 + the HTTP status the same refusal
/// would have (4401, 4403, 4400) and the error code in the reason.
impl WsSession {
    fn authenticate(&mut self, args: AuthArgs, named: Option<String>, ctx: &mut Ctx) {
        let result = self
            .state
            .auth
            .authenticate(&args.token)
            .map_err(|e| ApiError::new(ErrorCode::InvalidToken, e.to_string()))
            .and_then(|principal| {
                if !principal.has_scope(Scope::Read) {
                    return Err(insufficient(Scope::Read));
                }
                let named = match args.tenant {
                    Some(t) if !valid_tenant(&t) => {
                        return Err(ApiError::new(
                            ErrorCode::InvalidTenant,
                            "tenant must be 1-64 chars of [A-Za-z0-9._:-]",
                        ))
                    }
                    Some(t) => Some(t),
                    None => named,
                };
                let tenant = tenant_for(true, Some(&principal), named)?;
                Ok((tenant, principal.credential))
            });
        match result {
            Ok((tenant, credential)) => {
                self.tenant = tenant.0;
                self.credential = Some(credential);
                let frame = ServerFrame::Authenticated {
                    tenant: &self.tenant,
                };
                self.send(ctx, frame);
            }
            Err(e) => {
                use actix_web::ResponseError as _;
                let code = ws::CloseCode::Other(4000 + e.status_code().as_u16());
                self.close(ctx, code, &format!("{}: {}", e.code.as_str(), e.detail));
            }
        }
    }
}

/// Close code of a socket that did not authenticate in time or correctly.
const CLOSE_UNAUTHENTICATED: ws::CloseCode = ws::CloseCode::Other(4401);

fn reason(code: ws::CloseCode, why: &str) -> ws::CloseReason {
    // A close frame's reason has at most 123 bytes.
    let mut end = why.len().min(123);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    ws::CloseReason {
        code,
        description: Some(why[..end].to_owned()),
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Ctx) {
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
            ws::Message::Binary(_) => {
                let e = ApiError::new(
                    ErrorCode::InvalidBody,
                    "binary frames are not supported; send JSON text frames",
                );
                self.send_error(ctx, &e, None)
            }
            ws::Message::Continuation(_) => self.close(
                ctx,
                ws::CloseCode::Unsupported,
                "fragmented messages are not supported",
            ),
            ws::Message::Nop => {}
        }
    }
}
