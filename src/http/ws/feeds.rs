//! A socket's subscription feeds as one stream for its session.
//!
//! actix polls every stream added to an actor's context each time the
//! context wakes. With one stream per subscription, a socket following
//! 1,000 runs polled 1,000 queues for every frame it received (the dashboard
//! does exactly that). Here the feeds live in one `SelectAll`, whose
//! `FuturesUnordered` polls only the feeds that were woken, and the session
//! adds that one stream to its context.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_util::stream::{AbortHandle, Abortable, LocalBoxStream, SelectAll, Stream, StreamExt};

use super::feed::FeedEvent;

type Set = SelectAll<Abortable<LocalBoxStream<'static, FeedEvent>>>;

#[derive(Default)]
struct Inner {
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
        inner.set.push(feed);
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
