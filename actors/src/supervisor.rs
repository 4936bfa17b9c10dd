//! `Supervisor`: finds or spawns the run actor of a (tenant, run), evicts
//! least-recently-used idle actors past `Actors.MaxResident`, and forwards
//! committed events to resident actors.
//!
//! The map is a `DashMap` rather than a supervisor actor: lookups are on the
//! first-signal hot path and a sharded map answers them without a mailbox
//! round trip, while the entry API still guarantees a single spawn under
//! concurrent first requests (the spawn happens under the shard lock and
//! does no I/O: the actor loads itself after it starts).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::loader::{Published, RunKey, RunLoader};
use crate::run::{Apply, Evict, RunActor};
use crate::signal::SignalView;

/// Runtime limits (`Actors.*` in the configuration).
#[derive(Debug, Clone)]
pub struct ActorConfig {
    pub idle_evict: Duration,
    pub max_resident: usize,
    /// Bound of each run actor's mailbox.
    pub mailbox_capacity: usize,
    /// Threads of their own the actors run on, spawned round robin (ADR
    /// 0063); 0: each on the arbiter of the thread that looked it up.
    pub threads: usize,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            idle_evict: Duration::from_secs(300),
            max_resident: 100_000,
            mailbox_capacity: 1024,
            threads: 0,
        }
    }
}

/// State a slot shares with its actor, read without a message to it.
pub(crate) struct SlotShared {
    /// Set once the actor has loaded (later readers are warm hits).
    pub ready: AtomicBool,
    /// Live subscribers; an actor with any is never evicted.
    pub subscribers: AtomicUsize,
    /// LRU clock value of the last lookup.
    pub last_used: AtomicU64,
    /// The signal the actor sends for readers that skip its mailbox
    /// ([`Supervisor::warm_signal`], ADR 0051): its current signal while it
    /// has applied every event it was given, `None` while it waits for a
    /// missing event or reads the store. The actor holds the sender.
    pub view: watch::Receiver<Option<Arc<SignalView>>>,
    /// `Apply` messages sent to the actor and not yet handled. While any is
    /// on its way, readers ask the actor: a read that follows a write's
    /// answer must see that write.
    pub in_flight: AtomicUsize,
}

impl SlotShared {
    /// A slot's shared state and the sender of its `view`, for the actor.
    pub(crate) fn new(now: u64) -> (SlotShared, watch::Sender<Option<Arc<SignalView>>>) {
        let (tx, view) = watch::channel(None);
        let shared = SlotShared {
            ready: AtomicBool::new(false),
            subscribers: AtomicUsize::new(0),
            last_used: AtomicU64::new(now),
            view,
            in_flight: AtomicUsize::new(0),
        };
        (shared, tx)
    }
}

struct Slot {
    addr: Addr<RunActor>,
    generation: u64,
    shared: Arc<SlotShared>,
}

pub struct SupervisorInner {
    map: DashMap<RunKey, Slot>,
    loader: Arc<dyn RunLoader>,
    config: ActorConfig,
    generations: AtomicU64,
    clock: AtomicU64,
    spawned: AtomicU64,
    /// Held while making room for and inserting a new actor (see `lookup`).
    spawning: Mutex<()>,
    /// Actors in `map`: raised only under `spawning`, after room was made;
    /// lowered by every removal. (`DashMap::len` sums its shards one by one,
    /// so a read racing a removal and an insert can count one actor twice.)
    resident: AtomicUsize,
    threads: ActorThreads,
}

/// The arbiters the actors run on when `ActorConfig::threads` > 0: an
/// actor's mailbox is then not queued behind the HTTP connections its
/// worker thread is writing to (ADR 0063). Stopped by
/// [`Supervisor::shutdown`], or when the supervisor is dropped.
struct ActorThreads(Mutex<Vec<ArbiterHandle>>);

impl ActorThreads {
    fn start(threads: usize) -> ActorThreads {
        // Only inside an actix system (the server always is).
        if threads == 0 || actix::System::try_current().is_none() {
            return ActorThreads(Mutex::new(Vec::new()));
        }
        let mut arbiters = Vec::with_capacity(threads);
        for _ in 0..threads {
            match Arbiter::try_new() {
                Ok(arbiter) => arbiters.push(arbiter.handle()),
                Err(e) => {
                    tracing::warn!(error = %e, started = arbiters.len(), threads,
                        "could not start an actor thread; the run actors use those started");
                    break;
                }
            }
        }
        ActorThreads(Mutex::new(arbiters))
    }

    /// The arbiter of the `n`th spawn (round robin over spawns, respawns
    /// included), or none: the caller's.
    fn pick(&self, n: u64) -> Option<ArbiterHandle> {
        let arbiters = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if arbiters.is_empty() {
            return None;
        }
        Some(arbiters[(n % arbiters.len() as u64) as usize].clone())
    }

    /// Stop every arbiter; later spawns run on the caller's.
    fn stop(&self) {
        let arbiters = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for arbiter in arbiters {
            arbiter.stop();
        }
    }
}

impl Drop for ActorThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SupervisorInner {
    /// Remove `key` only while it still belongs to `generation`: a stopping
    /// actor must not remove its successor.
    pub(crate) fn remove_if(&self, key: &RunKey, generation: u64) {
        if self
            .map
            .remove_if(key, |_, slot| slot.generation == generation)
            .is_some()
        {
            self.resident.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A looked-up run actor.
pub struct ActorHandle {
    pub addr: Addr<RunActor>,
    /// Already loaded at lookup: its answer comes from memory.
    pub warm: bool,
}

/// Cheap to clone; all clones share one map.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<SupervisorInner>,
}

impl Supervisor {
    pub fn new(loader: Arc<dyn RunLoader>, config: ActorConfig) -> Supervisor {
        Supervisor {
            inner: Arc::new(SupervisorInner {
                map: DashMap::new(),
                loader,
                generations: AtomicU64::new(1),
                clock: AtomicU64::new(1),
                spawned: AtomicU64::new(0),
                spawning: Mutex::new(()),
                resident: AtomicUsize::new(0),
                threads: ActorThreads::start(config.threads),
                config,
            }),
        }
    }

    /// Find the run's actor or spawn it (on the next actor thread, else on
    /// the caller's arbiter). Must be called from within an actix system.
    pub fn lookup(&self, key: &RunKey) -> ActorHandle {
        let now = self.inner.clock.fetch_add(1, Ordering::Relaxed);
        // The common case, a resident actor, takes only the shard's shared
        // lock; `entry` (the shard's exclusive lock) is for spawning.
        if let Some(slot) = self.inner.map.get(key) {
            if slot.addr.connected() {
                slot.shared.last_used.store(now, Ordering::Relaxed);
                return ActorHandle {
                    addr: slot.addr.clone(),
                    warm: slot.shared.ready.load(Ordering::Acquire),
                };
            }
        }
        // One spawn at a time, room made first: the map never holds more
        // than `MaxResident` actors, not even for a moment (unless every
        // actor in it has subscribers: those are never evicted). Lookups of
        // resident actors above never take this lock.
        let _spawning = self
            .inner
            .spawning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.make_room();
        match self.inner.map.entry(key.clone()) {
            Entry::Occupied(slot) if slot.get().addr.connected() => {
                let slot = slot.get();
                slot.shared.last_used.store(now, Ordering::Relaxed);
                ActorHandle {
                    addr: slot.addr.clone(),
                    warm: slot.shared.ready.load(Ordering::Acquire),
                }
            }
            Entry::Occupied(mut stale) => {
                let slot = self.spawn(key, now);
                let addr = slot.addr.clone();
                stale.insert(slot);
                ActorHandle { addr, warm: false }
            }
            Entry::Vacant(vacant) => {
                let slot = self.spawn(key, now);
                let addr = slot.addr.clone();
                vacant.insert(slot);
                self.inner.resident.fetch_add(1, Ordering::AcqRel);
                ActorHandle { addr, warm: false }
            }
        }
    }

    fn spawn(&self, key: &RunKey, now: u64) -> Slot {
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
        let (shared, view_tx) = SlotShared::new(now);
        let shared = Arc::new(shared);
        let actor = RunActor::new(
            key.clone(),
            generation,
            self.inner.loader.clone(),
            Arc::downgrade(&self.inner),
            shared.clone(),
            view_tx,
            self.inner.config.idle_evict,
        );
        let capacity = self.inner.config.mailbox_capacity;
        let addr = match self.inner.threads.pick(generation) {
            Some(arbiter) => {
                // The mailbox is made here, at its full bound: senders may
                // use the address before the actor's thread has started it
                // (`start_in_arbiter` would give it actix's default of 16
                // until then).
                let (tx, rx) = actix::dev::channel::channel(capacity);
                // A stopped arbiter drops the actor: the address is then
                // disconnected and the next lookup spawns a successor.
                arbiter.spawn_fn(move || {
                    actix::spawn(Context::with_receiver(rx).into_future(actor));
                });
                Addr::new(tx)
            }
            None => RunActor::create(move |ctx| {
                ctx.set_mailbox_capacity(capacity);
                actor
            }),
        };
        self.inner.spawned.fetch_add(1, Ordering::Relaxed);
        Slot {
            addr,
            generation,
            shared,
        }
    }

    /// Before a spawn at `MaxResident`, stop the least-recently-used actors
    /// that have no subscribers, so that the new one fits. Evicted runs
    /// reload from the store on their next read. Called with no shard lock
    /// held: it walks the whole map.
    fn make_room(&self) {
        let max = self.inner.config.max_resident;
        let len = self.inner.resident.load(Ordering::Acquire);
        if len < max {
            return;
        }
        // Evict a little more than needed so a full runtime does not walk
        // the map on every spawn.
        let excess = len + 1 - max + (max / 100);
        let mut idle: Vec<(u64, RunKey, u64)> = self
            .inner
            .map
            .iter()
            .filter(|e| e.shared.subscribers.load(Ordering::Acquire) == 0)
            .map(|e| {
                (
                    e.shared.last_used.load(Ordering::Relaxed),
                    e.key().clone(),
                    e.generation,
                )
            })
            .collect();
        idle.sort_unstable_by_key(|(used, _, _)| *used);
        for (_, key, generation) in idle.into_iter().take(excess) {
            if let Some((_, slot)) = self
                .inner
                .map
                .remove_if(&key, |_, s| s.generation == generation)
            {
                self.inner.resident.fetch_sub(1, Ordering::AcqRel);
                slot.addr.do_send(Evict);
            }
        }
    }

    /// The run's current signal, as its actor last sent it on its `view`
    /// channel (ADR 0051): only when the actor is resident and loaded, has
    /// no committed event on its way to it, and has applied every event it
    /// was given (no gap, no store read under way). `None`: ask the actor.
    pub fn warm_signal(&self, key: &RunKey) -> Option<Arc<SignalView>> {
        let slot = self.inner.map.get(key)?;
        let shared = &slot.shared;
        // `in_flight` first: its Acquire pairs with the actor's Release
        // after it sent the view of the events it counted out.
        if shared.in_flight.load(Ordering::Acquire) != 0 || !shared.ready.load(Ordering::Acquire) {
            return None;
        }
        let view = shared.view.borrow().clone()?;
        if !slot.addr.connected() {
            return None;
        }
        let now = self.inner.clock.fetch_add(1, Ordering::Relaxed);
        shared.last_used.store(now, Ordering::Relaxed);
        Some(view)
    }

    /// Forward committed events to the run's actor if it is resident. A run
    /// that is not resident loads them from the store when it next starts.
    pub fn publish(&self, key: &RunKey, events: Arc<[Arc<Published>]>) {
        let Some(slot) = self.inner.map.get(key) else {
            return;
        };
        // Counted before the send, so that a reader answered after this
        // call returns goes through the mailbox, behind these events.
        slot.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        // Through the slot's own address, never a clone: actix bounds a
        // mailbox per sender (a full one parks that sender and refuses its
        // next message), and a fresh clone starts unparked, so sending
        // through clones queued past `MailboxCapacity` without end.
        let sent = slot.addr.try_send(Apply(events));
        if sent.is_err() {
            slot.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if let Err(SendError::Full(_)) = sent {
            let addr = slot.addr.clone();
            // The shard lock goes before the map is changed below.
            drop(slot);
            // The actor cannot keep up: retire it rather than block the
            // writer or drop the event; the next reader reloads the run.
            tracing::warn!(run_id = %key.run_id, "run actor mailbox full, retiring it");
            if self
                .inner
                .map
                .remove_if(key, |_, s| s.addr == addr)
                .is_some()
            {
                self.inner.resident.fetch_sub(1, Ordering::AcqRel);
            }
            addr.do_send(Evict);
        }
    }

    /// Every resident actor reads what it may have missed from the store
    /// (after the transport between nodes lost messages).
    pub fn catch_up_all(&self) {
        for slot in self.inner.map.iter() {
            slot.addr.do_send(crate::run::CatchUp);
        }
    }

    /// Stop the run's actor, if resident (the run was deleted).
    pub fn forget(&self, key: &RunKey) {
        if let Some((_, slot)) = self.inner.map.remove(key) {
            self.inner.resident.fetch_sub(1, Ordering::AcqRel);
            slot.addr.do_send(Evict);
        }
    }

    /// The resident actor of a run, without spawning one.
    pub fn resident(&self, key: &RunKey) -> Option<Addr<RunActor>> {
        self.inner.map.get(key).map(|s| s.addr.clone())
    }

    /// Number of resident run actors.
    pub fn len(&self) -> usize {
        self.inner.resident.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop the actor threads and the actors on them (the server has
    /// stopped). Actors spawned later run on their caller's arbiter.
    pub fn shutdown(&self) {
        self.inner.threads.stop();
    }

    /// Actors spawned since start (a metric and a test probe).
    pub fn spawned(&self) -> u64 {
        self.inner.spawned.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
