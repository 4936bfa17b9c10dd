//! The session's output on its way to the connection, and the close of a
//! socket whose client stopped reading (SPEC §11).
//!
//! actix-web-actors runs the session inside the response body: the HTTP
//! layer polls it only while the socket can take more bytes. A client that
//! stops reading therefore freezes its session (no heartbeat, no close) and
//! holds the connection for as long as it likes. Here the session runs in
//! its own task instead and hands its bytes to the body through a small
//! bounded queue; when that queue stays full for a heartbeat interval the
//! connection is aborted and the session stopped (its subscriptions end).

use std::time::Duration;

use actix_web::body::{BodyStream, BoxBody, MessageBody};
use bytes::Bytes;
use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::http::limits::Connection;

/// Chunks of encoded frames between the session and the connection. Small:
/// the kernel's socket buffers already absorb bursts; this only decouples
/// the session from the HTTP layer's polling.
const QUEUE_CHUNKS: usize = 16;

/// Run the session (`body`, the WebSocket context's output stream) in its
/// own task and return the response body that carries its bytes.
pub(super) fn spawn(
    mut session: BoxBody,
    connection: Option<Connection>,
    stall: Duration,
) -> BoxBody {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE_CHUNKS);
    // On this worker thread, like the HTTP layer that polls the body:
    // `Connection::abort` relies on it.
    actix_rt::spawn(async move {
        // One future for the whole session: a new one per chunk would
        // register and unregister with the channel each time.
        let closed = tx.closed();
        tokio::pin!(closed);
        loop {
            let next = tokio::select! {
                next = poll_fn(|cx| Pin::new(&mut session).poll_next(cx)) => next,
                // The connection ended (the body was dropped).
                _ = &mut closed => break,
            };
            let chunk = match next {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket output failed");
                    break;
                }
                // The session stopped: the body ends after the queued bytes.
                None => break,
            };
            // The queue has room nearly always: only a full one arms the
            // stall timer (a timer per chunk would cost more than the send).
            let chunk = match tx.try_send(chunk) {
                Ok(()) => continue,
                Err(TrySendError::Closed(_)) => break,
                Err(TrySendError::Full(chunk)) => chunk,
            };
            match tokio::time::timeout(stall, tx.send(chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::debug!("websocket client stopped reading; closing its connection");
                    if let Some(c) = connection {
                        c.abort(&tx);
                    }
                    break;
                }
            }
        }
        // Dropping the context stops the session: `stopped()` ends its
        // subscriptions and frees its places under the stream limits.
        drop(session);
    });
    let mut rx = rx;
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|bytes| bytes.map(Ok::<_, std::convert::Infallible>))
    });
    BoxBody::new(BodyStream::new(body))
}
