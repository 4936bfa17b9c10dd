//! Where committed events go: the store's writer hands every commit here
//! (after it committed, in commit order): first the cache (write-through of
//! the newest signal), then the run's actor if it is resident, then the
//! wake-ups (webhook dispatcher, lease long-polls, the built-in executor).

use std::sync::{Arc, OnceLock};

use runsignal_actors::Supervisor;
use tokio::sync::Notify;

use crate::cache::FirstSignalCache;
use crate::metrics::Metrics;
use crate::store::{CommitSink, Committed};
use crate::transport::SharedTransport;
use crate::wakeups::QueuedWakeups;

/// The in-memory side of the runtime that commits feed.
#[derive(Clone)]
pub struct Engine {
    pub supervisor: Supervisor,
    pub cache: Arc<dyn FirstSignalCache>,
    /// Wakes long-polling lease requests and the built-in executor when a
    /// job of their tenant and pack becomes `queued`.
    pub queued: Arc<QueuedWakeups>,
    /// Wakes the webhook dispatcher when deliveries were queued.
    pub webhooks: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Carries commits to the other nodes (set once at start-up).
    pub transport: Arc<OnceLock<SharedTransport>>,
}

impl Engine {
    /// Another node's commit (through the transport): applied like a local
    /// one, and not forwarded again.
    pub fn apply_remote(&self, committed: Committed) {
        self.deliver(committed, false);
    }

    /// This node may have missed other nodes' events: every resident run
    /// actor reads what it lacks from the store.
    pub fn catch_up(&self) {
        self.supervisor.catch_up_all();
    }

    /// `/readyz`: what is wrong with the transport, if anything.
    pub fn transport_degraded(&self) -> Option<String> {
        self.transport.get().and_then(|t| t.degraded())
    }

    /// Drop a deleted run from memory: its actor and its cached signal.
    pub fn forget(&self, key: &runsignal_actors::RunKey) {
        self.supervisor.forget(key);
        self.cache.remove(&key.tenant, &key.run_id);
    }
}

/// The store's writer publishes here, after each commit, in commit order.
impl CommitSink for Engine {
    fn publish(&self, committed: Committed) {
        if let Some(transport) = self.transport.get() {
            transport.forward(&committed);
        }
        self.deliver(committed, true);
    }
}

impl Engine {
    /// Cache, run actors and wake-ups of this node. `local`: this node
    /// committed it (so it also writes the shared cache, if any).
    fn deliver(&self, committed: Committed, local: bool) {
        if committed.webhooks {
            self.webhooks.notify_one();
        }
        let now = std::time::Instant::now();
        for (key, events) in committed.runs {
            for e in &events {
                let _ = e.committed_at.set(now);
            }
            let changed = events.iter().rev().find_map(|e| e.signal.clone());
            let kind = changed.as_ref().map(|v| v.signal.kind.as_str());
            if let Some(kind) = kind {
                self.metrics.signal_changed(&key, kind);
            }
            if let Some(at) = committed.accepted {
                self.metrics.job_accepted(&key, at, kind);
            }
            match changed {
                Some(view) if local => self.cache.put(&key.tenant, &key.run_id, view),
                Some(view) => self.cache.put_local(&key.tenant, &key.run_id, view),
                None => {}
            }
            self.supervisor.publish(&key, events.into());
        }
        for (tenant, pack) in &committed.queued {
            self.queued.notify(tenant, pack);
        }
    }
}
