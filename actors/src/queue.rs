//! A subscriber's bounded delivery queue: the run actor pushes without
//! waiting ([`Sender::try_send`]), the subscriber's connection pops when it
//! can write ([`Receiver::poll_recv`]).
//!
//! Not `tokio::sync::mpsc` (ADR 0057): a run with thousands of subscribers
//! holds thousands of these, mostly empty. Tokio's channel is several
//! cache-padded parts plus a first block of 32 slots, about 2 KiB per
//! subscriber before anything is queued, spread over lines that a push and
//! a pop each touch. Here a queue is one small allocation whose buffer grows
//! with what is queued, one uncontended lock per push and per pop, and at
//! most one wake-up per time the connection went idle, made after the lock
//! is released.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::subscriber::Delivery;

/// A queue holding at most `bound` deliveries (at least 1).
pub fn channel(bound: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        bound: bound.max(1),
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            woken: false,
            senders: 1,
            receiver_gone: false,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared {
    bound: usize,
    state: Mutex<State>,
}

struct State {
    items: VecDeque<Delivery>,
    /// The receiver's waker, kept while it is the same task's.
    waker: Option<Waker>,
    /// Woken since the receiver last found the queue empty: later pushes
    /// need not wake it again.
    woken: bool,
    senders: usize,
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock's state is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why [`Sender::try_send`] did not queue a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// `bound` deliveries are waiting: the subscriber is not keeping up.
    Full,
    /// The receiver is gone (the connection closed).
    Closed,
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Empty, and every sender is gone.
    Disconnected,
}

/// The run actor's half.
pub struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Queue `delivery` without waiting; wakes the receiver if it is idle.
    pub fn try_send(&self, delivery: Delivery) -> Result<(), TrySendError> {
        let waker = {
            let mut guard = self.shared.lock();
            let state = &mut *guard;
            if state.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if state.items.len() >= self.shared.bound {
                return Err(TrySendError::Full);
            }
            state.items.push_back(delivery);
            match &state.waker {
                Some(waker) if !state.woken => {
                    state.woken = true;
                    Some(waker.clone())
                }
                _ => None,
            }
        };
        // Woken outside the lock: waking a task on another thread may make
        // a system call, and the woken connection wants this lock next.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }
}

impl Clone for Sender {
    fn clone(&self) -> Sender {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.waker.take()
        };
        // The last sender: the receiver sees the end once it has drained.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The connection's half.
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// The next delivery; `None` once empty and every sender is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let mut state = self.shared.lock();
        if let Some(delivery) = state.items.pop_front() {
            return Poll::Ready(Some(delivery));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        state.woken = false;
        Poll::Pending
    }

    /// Wait for the next delivery; `None` once empty and every sender is gone.
    pub async fn recv(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next delivery if one is queued.
    pub fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        let mut state = self.shared.lock();
        match state.items.pop_front() {
            Some(delivery) => Ok(delivery),
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            state.waker = None;
            std::mem::take(&mut state.items)
        };
        // Frames are released outside the lock.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    fn delivery(seq: u64) -> Delivery {
        Delivery {
            frames: Arc::from(Vec::new()),
            seq,
            closes: false,
            committed_at: None,
        }
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(rx: &mut Receiver, waker: &Waker) -> Poll<Option<u64>> {
        rx.poll_recv(&mut Context::from_waker(waker))
            .map(|d| d.map(|d| d.seq))
    }

    #[test]
    fn deliveries_come_out_in_order_and_a_full_queue_refuses_the_next() {
        let (tx, mut rx) = channel(3);
        for seq in 1..=3 {
            tx.try_send(delivery(seq)).unwrap();
        }
        assert_eq!(tx.try_send(delivery(4)), Err(TrySendError::Full));
        let seqs: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok().map(|d| d.seq)).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        // Room again once popped.
        tx.try_send(delivery(5)).unwrap();
        assert_eq!(rx.try_recv().unwrap().seq, 5);
    }

    #[test]
    fn an_idle_receiver_is_woken_once_however_many_deliveries_arrive() {
        let (tx, mut rx) = channel(8);
        let count = Arc::new(CountingWaker::default());
        let waker = Waker::from(count.clone());
        assert_eq!(poll(&mut rx, &waker), Poll::Pending);
        tx.try_send(delivery(1)).unwrap();
        tx.try_send(delivery(2)).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Some(1)));
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Some(2)));
        // Idle again: the next delivery wakes it again.
        assert_eq!(poll(&mut rx, &waker), Poll::Pending);
        tx.try_send(delivery(3)).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_waker_replaces_the_old_one() {
        let (tx, mut rx) = channel(8);
        let first = Arc::new(CountingWaker::default());
        let second = Arc::new(CountingWaker::default());
        assert_eq!(poll(&mut rx, &Waker::from(first.clone())), Poll::Pending);
        assert_eq!(poll(&mut rx, &Waker::from(second.clone())), Poll::Pending);
        tx.try_send(delivery(1)).unwrap();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_receiver_drains_then_ends_when_the_last_sender_goes() {
        let (tx, mut rx) = channel(8);
        let other = tx.clone();
        let count = Arc::new(CountingWaker::default());
        let waker = Waker::from(count.clone());
        tx.try_send(delivery(1)).unwrap();
        drop(tx);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Some(1)));
        assert_eq!(poll(&mut rx, &waker), Poll::Pending);
        drop(other);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the end wakes it");
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(None));
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    #[test]
    fn a_gone_receiver_closes_the_queue_and_releases_what_it_held() {
        let (tx, rx) = channel(8);
        let frames: Arc<[bytes::Bytes]> = Arc::from(vec![bytes::Bytes::from_static(b"x")]);
        tx.try_send(Delivery {
            frames: frames.clone(),
            seq: 1,
            closes: false,
            committed_at: None,
        })
        .unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(delivery(2)), Err(TrySendError::Closed));
        assert_eq!(Arc::strong_count(&frames), 1);
    }

    #[test]
    fn deliveries_cross_threads_in_order_without_loss() {
        let (tx, mut rx) = channel(64);
        let sender = std::thread::spawn(move || {
            let mut seq = 1;
            while seq <= 10_000 {
                match tx.try_send(delivery(seq)) {
                    Ok(()) => seq += 1,
                    Err(TrySendError::Full) => std::thread::yield_now(),
                    Err(TrySendError::Closed) => panic!("closed"),
                }
            }
        });
        let got = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let mut seqs = Vec::new();
                while let Some(d) = rx.recv().await {
                    seqs.push(d.seq);
                }
                seqs
            });
        sender.join().unwrap();
        assert_eq!(got, (1..=10_000).collect::<Vec<u64>>());
    }
}
