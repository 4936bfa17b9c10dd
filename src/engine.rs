//! The write side: every store write goes through here so that what it
//! committed is published afterwards, in order: first the cache (write-through
//! of the newest signal), then the run's actor if it is resident.

use std::sync::Arc;

use runsignal_actors::envelope::types;
use runsignal_actors::Supervisor;
use tokio::sync::Notify;

use crate::cache::FirstSignalCache;
use crate::store::{Committed, Written};

/// Publishes committed events; shared by HTTP handlers and background tasks.
#[derive(Clone)]
pub struct Engine {
    pub supervisor: Supervisor,
    pub cache: Arc<dyn FirstSignalCache>,
    /// Wakes long-polling lease requests when a job becomes `queued`.
    pub queued: Arc<Notify>,
    /// Wakes the webhook dispatcher when deliveries were queued.
    pub webhooks: Arc<Notify>,
}

impl Engine {
    /// Publish what a write committed and hand back its value.
    pub fn publish<T>(&self, written: Written<T>) -> T {
        self.publish_committed(written.committed);
        written.value
    }

    /// Drop a deleted run from memory: its actor and its cached signal.
    pub fn forget(&self, key: &runsignal_actors::RunKey) {
        self.supervisor.forget(key);
        self.cache.remove(&key.tenant, &key.run_id);
    }

    pub fn publish_committed(&self, committed: Committed) {
        if committed.webhooks {
            self.webhooks.notify_one();
        }
        let mut queued = false;
        for (key, events) in committed.runs {
            if let Some(view) = events.iter().rev().find_map(|e| e.signal.clone()) {
                self.cache.put(&key.tenant, &key.run_id, view);
            }
            queued |= events
                .iter()
                .any(|e| e.envelope.event_type == types::JOB_QUEUED);
            self.supervisor.publish(&key, events.into());
        }
        if queued {
            self.queued.notify_waiters();
        }
    }
}
