//! A socket's subscriptions: `subscribe` opens one on its run's actor and
//! adds its feed to the session, `unsubscribe` and the end of its stream
//! remove it; a dropped or failed feed becomes an error frame.

use actix::prelude::*;
use runsignal_actors::{StreamKind, Unsubscribe};

use super::feed::{self, FeedEvent, FeedItem, Opened};
use super::protocol::{stream_and_id, ServerFrame, SubscribeArgs, UnsubscribeArgs};
use super::session::{Ctx, Live, Sub, WsSession};
use crate::http::errors::{ApiError, ErrorCode};
use crate::http::extract::seq;
use crate::http::feed::stream_filter;

impl WsSession {
    pub(super) fn subscribe(&mut self, args: SubscribeArgs, ctx: &mut Ctx) {
        let (kind, id) = match stream_and_id(&args.stream, &args.id) {
            Ok(v) => v,
            Err(e) => return self.send_error(ctx, &e, None),
        };
        let events = args.events.map(|names| names.join(","));
        let mut filter = match stream_filter(kind, events.as_deref(), args.correlation_id) {
            Ok(f) => f,
            Err(e) => return self.send_error(ctx, &e, Some((kind, &id))),
        };
        if let Err(e) = args.after.map(|after| seq("after", after)).transpose() {
            return self.send_error(ctx, &e, Some((kind, &id)));
        }
        if kind != StreamKind::Run {
            filter.job_id = Some(id.as_str().into());
        }
        if self.find(kind, &id).is_some() {
            return self.send_error(
                ctx,
                &ApiError::new(
                    ErrorCode::AlreadySubscribed,
                    "this socket already follows this stream",
                ),
                Some((kind, &id)),
            );
        }
        let max = self.state.config.streams.max_subscriptions_per_socket;
        if self.subs.len() >= max {
            let detail = format!(
                "a socket follows at most {max} streams (Streams.MaxSubscriptionsPerSocket)"
            );
            let e = ApiError::new(ErrorCode::SubscriptionLimit, detail);
            return self.send_error(ctx, &e, Some((kind, &id)));
        }
        let permit = match self
            .state
            .stream_limits
            .acquire(&self.tenant, self.credential.as_deref())
        {
            Ok(p) => p,
            Err(e) => return self.send_error(ctx, &e, Some((kind, &id))),
        };
        let token = self.next_token;
        self.next_token += 1;
        self.subs.insert(
            token,
            Sub {
                kind,
                id: id.clone(),
                live: None,
                _permit: permit,
            },
        );
        let open = feed::open(
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
    fn opened(&mut self, token: u64, result: Result<Opened, ApiError>, ctx: &mut Ctx) {
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
                    self.send_error(ctx, &e, Some((sub.kind, &sub.id)));
                }
                return;
            }
        };
        let Some(sub) = self.subs.get(&token) else {
            return;
        };
        let ack = ServerFrame::Subscribed {
            stream: sub.kind.as_str(),
            id: &sub.id,
            live_from: opened.live_from,
            // `after` covers the end of the stream: nothing more will come.
            completed: opened.feed.is_none(),
        };
        self.send(ctx, ack);
        let Some(feed) = opened.feed else {
            self.subs.remove(&token);
            return;
        };
        if let Some(first) = opened.first {
            self.send_frame(ctx, first);
        }
        let handle = self.feeds.add(feed.into_stream(token));
        if let Some(sub) = self.subs.get_mut(&token) {
            sub.live = Some(Live {
                addr: opened.addr,
                subscriber: opened.subscriber,
                feed: handle,
            });
        }
    }

    pub(super) fn unsubscribe(&mut self, args: UnsubscribeArgs, ctx: &mut Ctx) {
        let (kind, id) = match stream_and_id(&args.stream, &args.id) {
            Ok(v) => v,
            Err(e) => return self.send_error(ctx, &e, None),
        };
        match self.find(kind, &id) {
            Some(token) => {
                self.end(token);
                let stream = kind.as_str();
                self.send(ctx, ServerFrame::Unsubscribed { stream, id: &id });
            }
            None => self.send_error(
                ctx,
                &ApiError::new(
                    ErrorCode::NotSubscribed,
                    "this socket does not follow this stream",
                ),
                Some((kind, &id)),
            ),
        }
    }

    fn find(&self, kind: StreamKind, id: &str) -> Option<u64> {
        self.subs
            .iter()
            .find(|(_, s)| s.kind == kind && s.id == id)
            .map(|(t, _)| *t)
    }

    /// End one subscription (its feed, its registration at the run actor).
    fn end(&mut self, token: u64) -> Option<Sub> {
        let sub = self.subs.remove(&token)?;
        if let Some(live) = &sub.live {
            live.feed.abort();
            live.addr.do_send(Unsubscribe(live.subscriber));
        }
        Some(sub)
    }
}

impl StreamHandler<FeedEvent> for WsSession {
    fn handle(&mut self, event: FeedEvent, ctx: &mut Ctx) {
        if self.closing || !self.subs.contains_key(&event.token) {
            return;
        }
        match event.item {
            FeedItem::Frame { bytes, closes } => {
                self.send_frame(ctx, bytes);
                if closes {
                    self.end(event.token);
                }
            }
            FeedItem::Completed => {
                self.end(event.token);
            }
            FeedItem::Dropped { last_seq } => {
                if let Some(sub) = self.end(event.token) {
                    let detail = format!(
                        "the subscription fell behind and was dropped; subscribe again with \"after\": {last_seq}"
                    );
                    let frame = ServerFrame::Error {
                        code: ErrorCode::SubscriptionDropped,
                        detail: &detail,
                        stream: Some(sub.kind.as_str()),
                        id: Some(&sub.id),
                        after: Some(last_seq),
                    };
                    self.send(ctx, frame);
                }
            }
            FeedItem::Failed => {
                if let Some(sub) = self.end(event.token) {
                    let e = ApiError::new(
                        ErrorCode::StoreUnavailable,
                        "the stream's stored events could not be read; subscribe again",
                    );
                    self.send_error(ctx, &e, Some((sub.kind, &sub.id)));
                }
            }
        }
    }

    /// A feed ending ends one subscription, never the socket.
    fn finished(&mut self, _ctx: &mut Ctx) {}
}
