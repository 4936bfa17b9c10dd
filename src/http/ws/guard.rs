//! The RFC 6455 frame guard in front of the WebSocket codec: refuses a frame
//! longer than the limit from its header alone.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

/// Watches the client's frame headers as the bytes arrive and refuses a
/// frame longer than the limit as soon as its header is complete.
///
/// The codec alone would refuse it too, but only once the whole frame is
/// buffered: a client announcing a huge length would make the server hold
/// everything it sends. The guard drops such a frame's payload instead of
/// passing it on, reports one error (the session then closes with 1009),
/// and keeps passing later frames through so that the client's close frame
/// completes the closing handshake.
pub(super) struct FrameGuard<S> {
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
    pub(super) fn new(inner: S, max: u64, tripped: Rc<Cell<bool>>) -> FrameGuard<S> {
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

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
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
