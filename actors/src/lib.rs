//! `runsignal-actors`: the in-memory runtime of runsignal.
//!
//! One [`RunActor`] per resident run holds the run's current signal, its
//! ETag and its subscribers; the [`Supervisor`] finds, spawns and evicts
//! them. Nothing here knows HTTP or SQL: state comes in through the
//! [`RunLoader`] trait, which the store implements, and committed events
//! come in through [`Supervisor::publish`].

pub mod envelope;
pub mod loader;
pub mod queue;
pub mod run;
pub mod signal;
pub mod subscriber;
pub mod supervisor;

pub use envelope::{new_ulid, Envelope};
pub use loader::{LoadError, LoadedRun, Published, RunKey, RunLoader, Source};
pub use run::{FirstSignalReply, GetFirstSignal, RunActor, Subscribe, SubscribeReply, Unsubscribe};
pub use signal::{JobFacts, JobState, Signal, SignalKind, SignalView};
pub use subscriber::{Delivery, Filter, StreamKind, Wire};
pub use supervisor::{ActorConfig, ActorHandle, Supervisor};
