//! One WebSocket subscription's feed: opened on its run's actor like an SSE
//! stream (with `http::feed`), then its stored range and its live queue as
//! one stream of frames for the session, and the resume point when the run
//! actor drops it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::Addr;
use bytes::Bytes;
use futures_util::Stream;
use prometheus::Histogram;
use runsignal_actors::subscriber::ws_frames;
use runsignal_actors::{Delivery, Filter, RunActor, RunKey, StreamKind, Wire};

use crate::http::errors::ApiError;
use crate::http::feed::{Replay, Subscription};
use crate::AppState;

/// A subscription registered at its run actor, ready to go.
pub(super) struct Opened {
    pub addr: Addr<RunActor>,
    pub subscriber: u64,
    pub live_from: u64,
    /// The run stream's current `first_signal` (fresh subscriptions only).
    pub first: Option<Bytes>,
    /// `None`: the client has already seen the end of the stream.
    pub feed: Option<Feed>,
}

/// Subscribe to the run's actor and plan the replay, as SSE does (with
/// `feed::Subscription`): a foreign run or job is "not found", never
/// "forbidden".
pub(super) async fn open(
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
        // A fresh pack-run subscription starts with the job's plan.
        (StreamKind::PackRun, None, _) => {
            crate::http::plan::frame(&state, &tenant, &id, &sub, &filter, Wire::WebSocket).await?
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
    let lag = state
        .metrics
        .stream_delivery_lag
        .with_label_values(&["websocket"]);
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
        lag,
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
pub(super) struct FeedEvent {
    pub token: u64,
    pub item: FeedItem,
}

pub(super) enum FeedItem {
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
pub(super) struct Feed {
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
    live: Option<runsignal_actors::queue::Receiver>,
    /// Replayed frames not yet handed out.
    queue: VecDeque<FeedItem>,
    ended: bool,
    /// `runsignal_stream_delivery_lag_seconds{wire="websocket"}`, looked up
    /// once (a label lookup per delivery is a lock and a hash).
    lag: Histogram,
}

impl Feed {
    pub(super) fn into_stream(self, token: u64) -> impl Stream<Item = FeedEvent> + 'static {
        FeedStream {
            token,
            feed: Some(Box::new(self)),
            slow: None,
        }
    }

    /// The next item without awaiting anything but the live queue: `None`
    /// when only [`Feed::next`] can tell (the replay is being read, or the
    /// queue was dropped and the last event must be completed from the
    /// store).
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<FeedItem>>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(Poll::Ready(Some(item)));
            }
            if self.ended {
                return Some(Poll::Ready(None));
            }
            if let Some(replay) = &self.replay {
                if !replay.done() {
                    return None;
                }
                self.replay_done();
                continue;
            }
            let Some(live) = self.live.as_mut() else {
                return Some(Poll::Ready(None));
            };
            match live.poll_recv(cx) {
                Poll::Pending => return Some(Poll::Pending),
                Poll::Ready(Some(d)) => self.live_delivery(d),
                // Dropped: `next` completes the last event and resumes.
                Poll::Ready(None) => return None,
            }
        }
    }

    /// The stored range is replayed: live events come next, and a dropped
    /// queue resumes no earlier than where they start.
    fn replay_done(&mut self) {
        self.replay = None;
        if self.live_from > self.last_seq {
            self.last_seq = self.live_from;
            self.last_seq_frames = 0;
        }
    }

    /// A live delivery: skipped if replayed already, else its frames queued.
    fn live_delivery(&mut self, d: Delivery) {
        if d.seq <= self.resume_after {
            return;
        }
        if let Some(at) = d.committed_at {
            self.lag.observe(at.elapsed().as_secs_f64());
        }
        self.push(d)
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
                    self.replay_done();
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
                // Skipped if already replayed (an `after` beyond `live_from`).
                Some(d) => self.live_delivery(d),
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

/// A feed as the session's stream. Live deliveries are taken straight off
/// the queue in `poll_next` (no future per item); reading the replay from
/// the store, and completing the last event when the queue is dropped, run
/// [`Feed::next`] as a boxed future that owns the feed until it is done.
struct FeedStream {
    token: u64,
    /// `None` while `slow` holds it.
    feed: Option<Box<Feed>>,
    slow: Option<SlowStep>,
}

type SlowStep = Pin<Box<dyn Future<Output = (Box<Feed>, Option<FeedItem>)>>>;

impl Stream for FeedStream {
    type Item = FeedEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedEvent>> {
        let this = self.get_mut();
        let token = this.token;
        let event = |item: Option<FeedItem>| item.map(|item| FeedEvent { token, item });
        if let Some(slow) = this.slow.as_mut() {
            let (feed, item) = std::task::ready!(slow.as_mut().poll(cx));
            this.slow = None;
            this.feed = Some(feed);
            return Poll::Ready(event(item));
        }
        let Some(mut feed) = this.feed.take() else {
            return Poll::Ready(None);
        };
        if let Some(poll) = feed.poll_live(cx) {
            this.feed = Some(feed);
            return poll.map(event);
        }
        let mut slow: SlowStep = Box::pin(async move {
            let item = feed.next().await;
            (feed, item)
        });
        match slow.as_mut().poll(cx) {
            Poll::Ready((feed, item)) => {
                this.feed = Some(feed);
                Poll::Ready(event(item))
            }
            Poll::Pending => {
                this.slow = Some(slow);
                Poll::Pending
            }
        }
    }
}
