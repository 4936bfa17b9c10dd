//! What the runtime needs from the outside world: a way to load a run's
//! current state. The store implements it; tests may use an in-memory one.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::signal::{Signal, SignalView};

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
    /// Highest seq in the run's timeline at load time.
    pub last_seq: u64,
    /// Seq of the `run.completed` of a run that is complete now.
    pub completed_seq: Option<u64>,
    pub source: Source,
}

/// The store (or a cache in front of it) as seen by a run actor.
#[async_trait]
pub trait RunLoader: Send + Sync + 'static {
    /// `Ok(None)`: no such run for the tenant.
    async fn load(&self, key: &RunKey) -> Result<Option<LoadedRun>, LoadError>;

    /// Committed events with `after < seq`, in seq order, at most `limit`:
    /// fills a gap in what was published to the actor.
    async fn events_after(
        &self,
        key: &RunKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Arc<Published>>, LoadError>;
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
    /// SSE frames per stream kind, encoded on first use.
    pub(crate) sse: [OnceLock<Arc<[Bytes]>>; 3],
    /// WebSocket frames per stream kind, encoded on first use.
    pub(crate) ws: [OnceLock<Arc<[Bytes]>>; 3],
    /// When the event was committed and published (live events only: one
    /// replayed from the timeline has none). Stream delivery lag starts here.
    pub committed_at: OnceLock<std::time::Instant>,
}

impl Published {
    pub fn new(envelope: Envelope, signal: Option<Arc<SignalView>>) -> Arc<Published> {
        let json = envelope.to_bytes();
        Arc::new(Published {
            envelope,
            json,
            signal,
            sse: Default::default(),
            ws: Default::default(),
            committed_at: OnceLock::new(),
        })
    }

    /// An event read back from the timeline: a `signal.changed` carries its
    /// signal in the payload (`{"etag", "signal"}`).
    pub fn from_stored(envelope: Envelope) -> Arc<Published> {
        let signal = (envelope.event_type == crate::envelope::types::SIGNAL_CHANGED)
            .then(|| serde_json::from_value::<Signal>(envelope.payload.get("signal")?.clone()).ok())
            .flatten()
            .map(|s| Arc::new(SignalView::new(s, envelope.seq)));
        Published::new(envelope, signal)
    }
}
