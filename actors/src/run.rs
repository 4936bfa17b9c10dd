//! `RunActor`: one per resident run. Holds the run's current signal (ETag and
//! REST body pre-encoded), the last seq it has applied, and its subscribers.
//! It loads itself through the [`RunLoader`] when it starts; messages that
//! arrive meanwhile wait in its mailbox, so concurrent first readers share
//! one cold computation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::loader::{LoadError, LoadedRun, Published, RunKey, RunLoader, Source};
use crate::signal::SignalView;
use crate::supervisor::{SlotShared, SupervisorInner};

/// Read the run's current first signal.
#[derive(Message)]
#[rtype(result = "FirstSignalReply")]
pub struct GetFirstSignal {
    /// The actor was already loaded when the reader looked it up: a hit.
    pub warm: bool,
}

/// Apply committed events (in seq order) to the run's state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply(pub Arc<[Arc<Published>]>);

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
    last_seq: u64,
    last_activity: Instant,
}

impl RunActor {
    pub(crate) fn new(
        key: RunKey,
        generation: u64,
        loader: Arc<dyn RunLoader>,
        supervisor: Weak<SupervisorInner>,
        shared: Arc<SlotShared>,
        idle_evict: Duration,
    ) -> RunActor {
        RunActor {
            key,
            generation,
            loader,
            supervisor,
            shared,
            idle_evict,
            state: State::Loading,
            signal: None,
            load_source: Source::ColdStart,
            last_seq: 0,
            last_activity: Instant::now(),
        }
    }

    fn loaded(&mut self, result: Result<Option<LoadedRun>, LoadError>) {
        match result {
            Ok(Some(run)) => {
                self.load_source = run.source;
                self.last_seq = self.last_seq.max(run.last_seq);
                if newer(&run.signal, &self.signal) {
                    self.signal = run.signal;
                }
                self.state = State::Ready;
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

    fn apply_one(&mut self, event: &Arc<Published>) {
        let seq = event.envelope.seq;
        if let Some(view) = &event.signal {
            if self.signal.as_ref().is_none_or(|cur| view.seq > cur.seq) {
                self.signal = Some(view.clone());
            }
        }
        self.last_seq = self.last_seq.max(seq);
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
                act.loaded(result);
                if !matches!(act.state, State::Ready) {
                    // Unknown run or failed load: leave the map at once so
                    // the next reader loads afresh, answer what is already
                    // queued, then stop.
                    act.deregister();
                    ctx.run_later(Duration::from_millis(100), |_, ctx| ctx.stop());
                }
            },
        ));
        let tick = (self.idle_evict / 4).max(Duration::from_millis(50));
        ctx.run_interval(tick, |act, ctx| {
            let idle = act.last_activity.elapsed() >= act.idle_evict;
            if idle && act.shared.subscribers.load(Ordering::Acquire) == 0 {
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

    fn handle(&mut self, msg: Apply, _ctx: &mut Context<Self>) {
        self.last_activity = Instant::now();
        for event in msg.0.iter() {
            self.apply_one(event);
        }
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
