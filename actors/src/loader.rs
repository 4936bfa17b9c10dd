//! What the runtime needs from the outside world: a way to load a run's
//! current state. The store implements it; tests may use an in-memory one.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::signal::SignalView;

/// Identity of a run actor: runs are scoped by tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunKey {
    pub tenant: Arc<str>,
    pub run_id: Arc<str>,
}

impl RunKey {
    pub fn new(tenant: &str, run_id: &str) -> RunKey {
        RunKey {
            tenant: tenant.into(),
            run_id: run_id.into(),
        }
    }
}

/// Where a served signal came from (`X-FirstSignal-Source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Computed from the jobs just now.
    ColdStart,
    /// Served from memory, the cache backend or the snapshot table.
    Snapshot,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ColdStart => "cold_start",
            Source::Snapshot => "snapshot",
        }
    }
}

/// A run's state as loaded when its actor starts.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub signal: Option<Arc<SignalView>>,
    /// Highest seq known at load time (0 when only a cached signal was read).
    pub last_seq: u64,
    pub source: Source,
}

/// The store (or a cache in front of it) as seen by a run actor.
#[async_trait]
pub trait RunLoader: Send + Sync + 'static {
    /// `Ok(None)`: no such run for the tenant.
    async fn load(&self, key: &RunKey) -> Result<Option<LoadedRun>, LoadError>;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("loading run state failed: {0}")]
pub struct LoadError(pub String);

/// One committed event on its way to a run actor: persisted before it is
/// published, encoded once, shared by every subscriber.
#[derive(Debug)]
pub struct Published {
    pub envelope: Envelope,
    /// The envelope's JSON, encoded once.
    pub json: Bytes,
    /// For `signal.changed`: the new signal, ready to serve.
    pub signal: Option<Arc<SignalView>>,
}

impl Published {
    pub fn new(envelope: Envelope, signal: Option<Arc<SignalView>>) -> Arc<Published> {
        let json = envelope.to_bytes();
        Arc::new(Published {
            envelope,
            json,
            signal,
        })
    }
}
