//! How committed events reach the other nodes (SPEC §12).
//!
//! The engine delivers every commit to this node's run actors itself; a
//! transport carries it to the others. `inmemory` (one node) carries
//! nothing. `redis` publishes each commit on one Redis channel and applies
//! what other nodes publish: their events go to the run actors resident
//! here (which restore order by seq, fill gaps from the store and drop
//! duplicates), newer signals to this node's cache, and their wake-ups
//! (jobs queued, webhook deliveries) to this node's lessees, executor and
//! dispatcher. Redis is a lossy hint: whatever it loses, the store has, and
//! every resident actor catches up from it after a loss.

use std::sync::Arc;

use crate::store::Committed;

pub mod redis;

/// Carries commits from this node to the others.
pub trait Transport: Send + Sync + 'static {
    /// Called by the engine after each commit, in commit order, on the
    /// writer's thread: must not block.
    fn forward(&self, committed: &Committed);
    /// `None` when healthy, else what is wrong (for `/readyz`).
    fn degraded(&self) -> Option<String>;
}

/// One node: nothing to carry.
pub struct InMemory;

impl Transport for InMemory {
    fn forward(&self, _committed: &Committed) {}

    fn degraded(&self) -> Option<String> {
        None
    }
}

pub type SharedTransport = Arc<dyn Transport>;
