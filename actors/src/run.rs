//! `RunActor`: one per resident run. Holds the run's current signal (ETag and
//! REST body pre-encoded), the last seq it has delivered, and its
//! subscribers. It loads itself through the [`RunLoader`] when it starts;
//! messages that arrive meanwhile wait in its mailbox, so concurrent first
//! readers share one cold computation.
//!
//! Committed events can be published out of order (two writers commit seq 5
//! and 6, the second publishes first): the actor holds early events until
//! the gap closes and delivers strictly in seq order. A gap that outlives
//! [`GAP_WAIT`] is filled from the store.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::loader::{LoadError, LoadedRun, Published, RunKey, RunLoader, Source};
use crate::queue::TrySendError;
use crate::signal::SignalView;
use crate::subscriber::{Delivery, Filter, Subscriber, Wire};
use crate::supervisor::{SlotShared, SupervisorInner};

/// How long an out-of-order event waits for the ones before it before the
/// actor reads the missing range from the store.
pub const GAP_WAIT: Duration = Duration::from_millis(200);

/// Read the run's current first signal.
#[derive(Message)]
#[rtype(result = "FirstSignalReply")]
pub struct GetFirstSignal {
    /// The actor was already loaded when the reader looked it up: a hit.
    pub warm: bool,
}

/// Apply committed events to the run's state and deliver them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply(pub Arc<[Arc<Published>]>);

/// Register a subscriber; live events with seq > `live_from` follow.
#[derive(Message)]
#[rtype(result = "SubscribeReply")]
pub struct Subscribe {
    pub filter: Filter,
    pub wire: Wire,
    pub tx: crate::queue::Sender,
}

/// Remove a subscriber (a closed queue is also removed on its own).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub u64);

/// Read every event after the actor's last seq from the store and apply it:
/// events may have been lost on the way from another node (its transport
/// was down or overflowed), and a lost tail leaves no gap to notice.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatchUp;

/// Stop now: the supervisor chose this actor for eviction.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Evict;

/// Panic inside the actor (tests of restart-after-panic only).
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Answer to [`GetFirstSignal`].
#[derive(Debug, Clone)]
pub enum FirstSignalReply {
    NotFound,
    NoSignal,
    Signal {
        view: Arc<SignalView>,
        hit: bool,
        source: Source,
    },
    LoadFailed(LoadError),
}

/// Answer to [`Subscribe`].
#[derive(Debug, Clone)]
pub enum SubscribeReply {
    NotFound,
    LoadFailed(LoadError),
    Subscribed {
        id: u64,
        /// The current signal (the run stream's first frame on connect).
        signal: Option<Arc<SignalView>>,
        /// Events up to this seq are in the store; later ones come live.
        live_from: u64,
        /// Seq of `run.completed` while the run is complete.
        completed_seq: Option<u64>,
    },
}

enum State {
    Loading,
    Ready,
    Missing,
    Broken(LoadError),
}

pub struct RunActor {
    key: RunKey,
    generation: u64,
    loader: Arc<dyn RunLoader>,
    supervisor: Weak<SupervisorInner>,
    shared: Arc<SlotShared>,
    idle_evict: Duration,
    state: State,
    signal: Option<Arc<SignalView>>,
    /// Where the loaded signal came from; later readers are memory hits.
    load_source: Source,
    /// Every event up to this seq has been applied and delivered.
    last_seq: u64,
    /// Events that arrived ahead of a gap, by seq.
    pending: BTreeMap<u64, Arc<Published>>,
    gap_check: Option<SpawnHandle>,
    completed_seq: Option<u64>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    last_activity: Instant,
    /// `shared.last_used` at the last idle check: a reader served without a
    /// message (ADR 0051) still counts as activity.
    seen_use: u64,
    /// Sends the signal readers may take without a message (ADR 0051).
    view_tx: watch::Sender<Option<Arc<SignalView>>>,
    /// A read of the store (`CatchUp`) is under way: events may be missing.
    reading: bool,
}

impl RunActor {
    pub(crate) fn new(
        key: RunKey,
        generation: u64,
        loader: Arc<dyn RunLoader>,
        supervisor: Weak<SupervisorInner>,
        shared: Arc<SlotShared>,
        view_tx: watch::Sender<Option<Arc<SignalView>>>,
        idle_evict: Duration,
    ) -> RunActor {
        RunActor {
            key,
            generation,
            loader,
            supervisor,
            idle_evict,
            state: State::Loading,
            signal: None,
            load_source: Source::ColdStart,
            last_seq: 0,
            pending: BTreeMap::new(),
            gap_check: None,
            completed_seq: None,
            subscribers: Vec::new(),
            next_subscriber: 1,
            last_activity: Instant::now(),
            seen_use: shared.last_used.load(Ordering::Relaxed),
            shared,
            view_tx,
            reading: false,
        }
    }

    fn loaded(&mut self, result: Result<Option<LoadedRun>, LoadError>, ctx: &mut Context<Self>) {
        match result {
            Ok(Some(run)) => {
                self.load_source = run.source;
                self.last_seq = run.last_seq;
                self.completed_seq = run.completed_seq;
                if newer(&run.signal, &self.signal) {
                    self.signal = run.signal;
                }
                self.state = State::Ready;
                // Events published while loading: keep only the newer ones.
                self.pending = self.pending.split_off(&(self.last_seq + 1));
                self.drain(ctx);
            }
            Ok(None) => self.state = State::Missing,
            Err(e) => {
                tracing::warn!(run_id = %self.key.run_id, error = %e, "run actor load failed");
                self.state = State::Broken(e);
            }
        }
        self.shared.ready.store(true, Ordering::Release);
    }

    /// Leave the supervisor's map (only if it still names this generation).
    fn deregister(&self) {
        if let Some(sup) = self.supervisor.upgrade() {
            sup.remove_if(&self.key, self.generation);
        }
    }

    /// Queue events, then deliver every one that is next in seq order.
    fn accept(&mut self, events: &[Arc<Published>], ctx: &mut Context<Self>) {
        for event in events {
            if event.envelope.seq > self.last_seq {
                self.pending.insert(event.envelope.seq, event.clone());
            }
        }
        if matches!(self.state, State::Ready) {
            self.drain(ctx);
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(event) = self.pending.remove(&(self.last_seq + 1)) {
            self.last_seq += 1;
            self.apply_one(&event);
        }
        self.send_view();
        if self.pending.is_empty() {
            if let Some(handle) = self.gap_check.take() {
                ctx.cancel_future(handle);
            }
        } else if self.gap_check.is_none() {
            self.gap_check = Some(ctx.run_later(GAP_WAIT, |act, ctx| {
                act.gap_check = None;
                act.fill_gap(ctx);
            }));
        }
    }

    /// Send readers that skip the mailbox the signal they may serve: the
    /// current one when every event given so far is applied, else none
    /// (they ask the actor, which answers as it always did: while a gap is
    /// open, with the signal from before it, and during a store read, after
    /// that read). Sent only when it changes.
    fn send_view(&self) {
        let behind = self.reading || !self.pending.is_empty();
        let servable = if behind { None } else { self.signal.clone() };
        self.view_tx.send_if_modified(|current| {
            let same = match (&*current, &servable) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                *current = servable;
            }
            !same
        });
    }

    /// Read the events between `last_seq` and the first early one from the store.
    fn fill_gap(&mut self, ctx: &mut Context<Self>) {
        let Some(&first_pending) = self.pending.keys().next() else {
            return;
        };
        let (loader, key, after) = (self.loader.clone(), self.key.clone(), self.last_seq);
        let missing = (first_pending - after - 1).min(10_000) as u32;
        tracing::debug!(run_id = %key.run_id, after, missing, "filling an event gap from the store");
        ctx.wait(
            async move { loader.events_after(&key, after, missing).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(events) => act.accept(&events, ctx),
                    Err(e) => {
                        tracing::warn!(error = %e, "gap fill failed; retrying");
                        act.drain(ctx);
                    }
                }),
        );
    }

    fn apply_one(&mut self, event: &Arc<Published>) {
        let env = &event.envelope;
        if let Some(view) = &event.signal {
            if self.signal.as_ref().is_none_or(|cur| view.seq > cur.seq) {
                self.signal = Some(view.clone());
            }
        }
        match env.event_type.as_str() {
            crate::envelope::types::RUN_COMPLETED => self.completed_seq = Some(env.seq),
            crate::envelope::types::JOB_QUEUED => self.completed_seq = None,
            _ => {}
        }
        let before = self.subscribers.len();
        self.subscribers.retain(|sub| deliver(sub, event));
        if self.subscribers.len() != before {
            self.shared
                .subscribers
                .store(self.subscribers.len(), Ordering::Release);
        }
    }
}

/// Send an event to one subscriber; `false` drops it (queue full or closed).
fn deliver(sub: &Subscriber, event: &Published) -> bool {
    let closes = sub.filter.closes_on(&event.envelope);
    let frames: Arc<[bytes::Bytes]> = match sub.filter.matches(&event.envelope) {
        Some(name) => event.frames(sub.filter.kind, sub.wire, name),
        // Filtered out, but it ends the stream: close without a frame.
        None if closes => Arc::from(Vec::new()),
        None => return !sub.tx.is_closed(),
    };
    let delivery = Delivery {
        frames,
        seq: event.envelope.seq,
        closes,
        committed_at: event.committed_at.get().copied(),
    };
    match sub.tx.try_send(delivery) {
        Ok(()) => true,
        Err(TrySendError::Full) => {
            tracing::info!(
                subscriber = sub.id,
                seq = event.envelope.seq,
                "subscriber queue full, disconnecting it"
            );
            false
        }
        Err(TrySendError::Closed) => false,
    }
}

/// Whether `candidate` is a later signal than `current`.
fn newer(candidate: &Option<Arc<SignalView>>, current: &Option<Arc<SignalView>>) -> bool {
    match (candidate, current) {
        (Some(c), Some(cur)) => c.seq > cur.seq,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let loader = self.loader.clone();
        let key = self.key.clone();
        // `wait` holds the mailbox until the load completes: every message
        // that arrives meanwhile sees the loaded state.
        ctx.wait(async move { loader.load(&key).await }.into_actor(self).map(
            |result, act, ctx| {
                act.loaded(result, ctx);
                if !matches!(act.state, State::Ready) {
                    // Unknown run or failed load: leave the map at once so the
                    // next reader loads afresh, answer what is already queued,
                    // then stop.
                    act.deregister();
                    ctx.run_later(Duration::from_millis(100), |_, ctx| ctx.stop());
                }
            },
        ));
        let tick = (self.idle_evict / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        ctx.run_interval(tick, |act, ctx| {
            let used = act.shared.last_used.load(Ordering::Relaxed);
            if used != act.seen_use {
                act.seen_use = used;
                act.last_activity = Instant::now();
            }
            act.subscribers.retain(|s| !s.tx.is_closed());
            act.shared
                .subscribers
                .store(act.subscribers.len(), Ordering::Release);
            let idle = act.last_activity.elapsed() >= act.idle_evict;
            if idle && act.subscribers.is_empty() {
                tracing::debug!(run_id = %act.key.run_id, "evicting idle run actor");
                act.deregister();
                ctx.stop();
            }
        });
    }
}

impl Drop for RunActor {
    /// Runs on every exit, a panic included: the next reader respawns the
    /// actor from the store.
    fn drop(&mut self) {
        self.deregister();
    }
}

impl Handler<GetFirstSignal> for RunActor {
    type Result = MessageResult<GetFirstSignal>;

    fn handle(&mut self, msg: GetFirstSignal, _ctx: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        MessageResult(match &self.state {
            State::Missing => FirstSignalReply::NotFound,
            State::Broken(e) => FirstSignalReply::LoadFailed(e.clone()),
            State::Loading | State::Ready => match &self.signal {
                None => FirstSignalReply::NoSignal,
                Some(view) if msg.warm => FirstSignalReply::Signal {
                    view: view.clone(),
                    hit: true,
                    source: Source::Snapshot,
                },
                Some(view) => {
                    let hit = self.load_source == Source::Snapshot;
                    FirstSignalReply::Signal {
                        view: view.clone(),
                        hit,
                        source: self.load_source,
                    }
                }
            },
        })
    }
}

impl Handler<Apply> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) {
        self.last_activity = Instant::now();
        self.accept(&msg.0, ctx);
        // After the view is stored: see `Supervisor::warm_signal`.
        self.shared.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Events read per store call while catching up.
const CATCH_UP_PAGE: u32 = 1_000;

impl RunActor {
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::Ready) {
            // A loading actor reads the store anyway.
            return;
        }
        let (loader, key, after) = (self.loader.clone(), self.key.clone(), self.last_seq);
        self.reading = true;
        self.send_view();
        ctx.wait(
            async move { loader.events_after(&key, after, CATCH_UP_PAGE).await }
                .into_actor(self)
                .map(|result, act, ctx| {
                    match result {
                        Ok(events) => {
                            // A full page: more follow, so the view stays
                            // withheld until the last page is applied.
                            let full = events.len() as u32 >= CATCH_UP_PAGE;
                            act.reading = full;
                            act.accept(&events, ctx);
                            if full {
                                act.catch_up(ctx);
                            }
                        }
                        Err(e) => {
                            act.reading = false;
                            tracing::warn!(error = %e, "catching up from the store failed");
                        }
                    }
                    act.send_view();
                }),
        );
    }
}

impl Handler<CatchUp> for RunActor {
    type Result = ();

    fn handle(&mut self, _msg: CatchUp, ctx: &mut Context<Self>) {
        self.catch_up(ctx);
    }
}

impl Handler<Subscribe> for RunActor {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        MessageResult(match &self.state {
            State::Missing => SubscribeReply::NotFound,
            State::Broken(e) => SubscribeReply::LoadFailed(e.clone()),
            State::Loading | State::Ready => {
                let id = self.next_subscriber;
                self.next_subscriber += 1;
                self.subscribers.push(Subscriber {
                    id,
                    filter: msg.filter,
                    wire: msg.wire,
                    tx: msg.tx,
                });
                self.shared
                    .subscribers
                    .store(self.subscribers.len(), Ordering::Release);
                SubscribeReply::Subscribed {
                    id,
                    signal: self.signal.clone(),
                    live_from: self.last_seq,
                    completed_seq: self.completed_seq,
                }
            }
        })
    }
}

impl Handler<Unsubscribe> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Context<Self>) {
        self.subscribers.retain(|s| s.id != msg.0);
        self.shared
            .subscribers
            .store(self.subscribers.len(), Ordering::Release);
    }
}

impl Handler<Evict> for RunActor {
    type Result = ();

    fn handle(&mut self, _msg: Evict, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Crash> for RunActor {
    type Result = ();

    fn handle(&mut self, _msg: Crash, _ctx: &mut Context<Self>) {
        panic!("run actor {} crashed on request", self.key.run_id);
    }
}

/// Test probe: the thread the actor runs on.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "std::thread::ThreadId")]
pub struct WhichThread;

#[cfg(test)]
impl Handler<WhichThread> for RunActor {
    type Result = MessageResult<WhichThread>;

    fn handle(&mut self, _msg: WhichThread, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(std::thread::current().id())
    }
}
