//! A socket's subscription feeds as one stream for its session.
//!
//! actix polls every stream added to an actor's context each time the
//! context wakes. With one stream per subscription, a socket following
//! 1,000 runs polled 1,000 queues for every frame it received (the dashboard
//! does exactly that). Here the feeds live in one `SelectAll`, whose
//! `FuturesUnordered` polls only the feeds that were woken, and the session
//! adds that one stream to its context. A socket with one feed (the usual
//! client) has it polled directly, with the session's own waker: the set's
//! per-feed task and its wake-up hop cost more than the feed itself.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_util::stream::{AbortHandle, Abortable, LocalBoxStream, SelectAll, Stream, StreamExt};

use super::feed::FeedEvent;

type Feed = Abortable<LocalBoxStream<'static, FeedEvent>>;
type Set = SelectAll<Feed>;

#[derive(Default)]
struct Inner {
    /// The socket's only feed while it has one; empty `set` meanwhile.
    single: Option<Feed>,
    /// Every feed once a second one was added.
    set: Set,
    /// The session's task, to wake when a feed is added.
    waker: Option<Waker>,
}

/// The session's handle: adds feeds. Its count is bounded by
/// `Streams.MaxSubscriptionsPerSocket` (each feed belongs to a `Sub`).
#[derive(Clone, Default)]
pub(super) struct FeedSet {
    inner: Rc<RefCell<Inner>>,
}

impl FeedSet {
    /// Add a subscription's feed; aborting the handle ends it.
    pub(super) fn add(&self, feed: impl Stream<Item = FeedEvent> + 'static) -> AbortHandle {
        let (feed, handle) = futures_util::stream::abortable(feed.boxed_local());
        let mut inner = self.inner.borrow_mut();
        if inner.single.is_none() && inner.set.is_empty() {
            inner.single = Some(feed);
        } else {
            if let Some(first) = inner.single.take() {
                inner.set.push(first);
            }
            inner.set.push(feed);
        }
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
        handle
    }

    /// The stream of every feed's events, for `ctx.add_stream`. It never
    /// ends by itself (an empty set waits for the next feed).
    pub(super) fn stream(&self) -> Feeds {
        Feeds {
            inner: self.inner.clone(),
        }
    }
}

pub(super) struct Feeds {
    inner: Rc<RefCell<Inner>>,
}

impl Stream for Feeds {
    type Item = FeedEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedEvent>> {
        let mut inner = self.inner.borrow_mut();
        if let Some(feed) = inner.single.as_mut() {
            match feed.poll_next_unpin(cx) {
                Poll::Ready(Some(event)) => return Poll::Ready(Some(event)),
                // Ended or aborted: the socket has no feed now.
                Poll::Ready(None) => inner.single = None,
                Poll::Pending => {
                    inner.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        match inner.set.poll_next_unpin(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(event)),
            // Empty, or no feed has anything: wait for one, or for a new feed.
            Poll::Ready(None) | Poll::Pending => {
                inner.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
