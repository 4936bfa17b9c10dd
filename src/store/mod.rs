//! Persistence: runs, jobs and leases, the event timeline, the webhook
//! outbox, first-signal snapshots and prune.
//!
//! The layers:
//! - [`lifecycle`]: the rules (transitions, retries and lease expiry, steps,
//!   run status, which events and outbox rows a change writes), written once
//!   over the [`tx::WriteTx`] primitives;
//! - [`writer`]: group commit. Every write is a [`writer::Cmd`] applied in a
//!   batch (one transaction; each write isolated, ADR 0020), answered after
//!   the commit; the writer publishes what the batch committed, in one place;
//! - [`sqlite`] and [`postgres`]: the backends. Each implements the
//!   primitives and the reads (one SQL body, see [`sql`]).
//!
//! [`Store`] is the facade handlers and tasks use: reads by concern through
//! the backend's traits, writes through the writer.

pub mod history;
mod lane;
pub mod lifecycle;
pub mod model;
pub mod postgres;
mod sql;
pub mod sqlite;
pub mod tx;
pub mod writer;
mod writes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use runsignal_actors::{Envelope, Published, RunKey, Signal};

pub use model::*;
pub use writer::{CommitSink, Writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run not found")]
    RunNotFound,
    #[error("run already exists")]
    RunExists,
    #[error("job not found")]
    JobNotFound,
    #[error("lease is not held by this leaseId")]
    LeaseLost,
    #[error("job is {0} and cannot change")]
    InvalidState(String),
    /// Only a failed or canceled job can be retried (its state).
    #[error("job is {0}; only failed or canceled jobs can be retried")]
    NotRetryable(String),
    /// The job was retried already (the retry's id).
    #[error("job was already retried as {0}")]
    AlreadyRetried(String),
    /// The idempotency key names a job submitted with another request.
    #[error("idempotency key reused with a different {0}")]
    IdempotencyConflict(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The batch this write was part of did not commit (shared by every
    /// write of the batch, hence a message rather than the source error).
    #[error("the write did not commit: {0}")]
    NotCommitted(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Worth running the same write again in a later batch: it lost a race
    /// with a concurrent transaction (PostgreSQL: deadlock, serialization
    /// failure, or a unique index another writer filled first).
    /// A rule said no (the write read rows and refused), as opposed to the
    /// database failing.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            StoreError::Database(_)
                | StoreError::Migrate(_)
                | StoreError::NotCommitted(_)
                | StoreError::Unavailable(_)
        )
    }

    pub fn is_retryable(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(e)) = self else {
            return false;
        };
        matches!(e.code().as_deref(), Some("40P01" | "40001" | "23505"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Events committed by one write, grouped by run, ready to publish.
#[derive(Debug, Default)]
pub struct Committed {
    pub runs: Vec<(RunKey, Vec<Arc<Published>>)>,
    /// Webhook deliveries were queued: wake the dispatcher.
    pub webhooks: bool,
    /// Jobs that became `queued`, as (tenant, pack): wake their lessees.
    pub queued: Vec<(String, String)>,
    /// For a submitted job: when its write reached the store (the start of
    /// its time to first signal, `runsignal_time_to_first_signal_seconds`).
    pub accepted: Option<std::time::Instant>,
    /// What the write taught the writer's pack history (applied after the
    /// commit, by the writer).
    pub history: Vec<history::HistoryFact>,
}

/// A run's state computed from its jobs (the cold path).
#[derive(Debug, Clone)]
pub struct ColdRun {
    pub last_seq: u64,
    /// Seq of `run.completed` while the run is complete.
    pub completed_seq: Option<u64>,
    /// The derived signal and the seq of the `signal.changed` that carried it.
    pub signal: Option<(Signal, u64)>,
}

/// Where a run's timeline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHead {
    pub last_seq: u64,
    /// Seq of `run.completed` while the run is complete.
    pub completed_seq: Option<u64>,
    /// Seq of the run's latest signal change: a cached or snapshot signal
    /// with another seq is stale (SPEC §4.4).
    pub signal_seq: u64,
}

/// Reads of runs.
#[async_trait]
pub trait RunReads: Send + Sync {
    async fn get_run(&self, tenant: &str, run_id: &str) -> StoreResult<RunRecord>;
    async fn list_runs(&self, tenant: &str, query: &RunQuery) -> StoreResult<Page<RunRecord>>;
    /// Cold path: the run's signal derived from its jobs now (`None`: no run).
    async fn cold_run(&self, tenant: &str, run_id: &str) -> StoreResult<Option<ColdRun>>;
    /// The run's last seq and completion (`None`: no run).
    async fn run_head(&self, tenant: &str, run_id: &str) -> StoreResult<Option<RunHead>>;
}

/// Reads of jobs and their artifacts.
#[async_trait]
pub trait JobReads: Send + Sync {
    async fn get_job(&self, tenant: &str, job_id: &str) -> StoreResult<JobRecord>;
    async fn list_jobs(&self, tenant: &str, query: &JobQuery) -> StoreResult<Page<JobRecord>>;
    /// Seq of the job's terminal state event (`None` while it runs).
    async fn job_terminal_seq(&self, tenant: &str, job_id: &str) -> StoreResult<Option<u64>>;
    /// Whether any job of `packs` is queued, in any tenant (a cheap read
    /// before the built-in executor asks the writer for a lease).
    async fn any_queued(&self, packs: &[String]) -> StoreResult<bool>;
    /// Each tenant with queued jobs of `packs`, with its oldest such job id.
    async fn queued_tenants(&self, packs: &[String]) -> StoreResult<Vec<(String, String)>>;
    /// Queued jobs, in any tenant, that have been queued since `cutoff_ms`
    /// or longer, or are flagged blocked: what the blocked check looks at
    /// (oldest first, at most `limit`).
    /// Queued jobs that have waited since `cutoff_ms` or are flagged
    /// blocked, in job id order after `after_job_id` (a page).
    async fn queued_since(
        &self,
        cutoff_ms: i64,
        after_job_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<JobRecord>>;
    /// A job's artifacts, by name.
    async fn list_artifacts(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<ArtifactRecord>>;
    /// One artifact of a job of the tenant (`None`: no such artifact).
    async fn get_artifact(
        &self,
        tenant: &str,
        job_id: &str,
        name: &str,
    ) -> StoreResult<Option<ArtifactRecord>>;
}

/// Reads of the timeline: typed envelopes, decoded in one place.
#[async_trait]
pub trait TimelineReads: Send + Sync {
    /// The run's events after `query.after`, in seq order (`RunNotFound`
    /// when the tenant has no such run).
    async fn timeline(
        &self,
        tenant: &str,
        run_id: &str,
        query: &TimelineQuery,
    ) -> StoreResult<Vec<Envelope>>;
    /// What a pack run's `plan` is drawn from (SPEC §5.1): the job's
    /// `job.loading` and `step.*` events up to `upto`, in seq order, and the
    /// seq of its latest event of any type up to `upto`.
    async fn job_steps(
        &self,
        tenant: &str,
        job_id: &str,
        upto: u64,
    ) -> StoreResult<(Vec<Envelope>, Option<u64>)>;
}

/// Reads of the webhook outbox.
#[async_trait]
pub trait OutboxReads: Send + Sync {
    /// When the next pending delivery is due (`None`: nothing pending), so
    /// an idle dispatcher sleeps instead of polling.
    async fn next_webhook_due(&self) -> StoreResult<Option<i64>>;
    /// The job's deliveries, oldest first (`GET /jobs/{id}`).
    async fn job_webhooks(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<WebhookDelivery>>;
}

/// Reads for the snapshot writer and the loader.
#[async_trait]
pub trait SnapshotReads: Send + Sync {
    /// A snapshot written by the snapshot writer, if any.
    async fn get_snapshot(&self, tenant: &str, run_id: &str) -> StoreResult<Option<(Signal, u64)>>;
    /// Runs updated since `since_ms` (newest first, at most `max`).
    async fn recent_runs(
        &self,
        since_ms: i64,
        tenant: Option<&str>,
        max: u32,
    ) -> StoreResult<Vec<(String, String)>>;
}

/// A backend: the reads by concern, plus the write lanes the writer drives.
#[async_trait]
pub trait Backend:
    RunReads + JobReads + TimelineReads + OutboxReads + SnapshotReads + 'static
{
    /// Reachability probe for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
    /// How many transactions may run at once (SQLite: 1).
    fn lanes(&self) -> usize;
    /// Whether a failed statement aborts the transaction (PostgreSQL), so
    /// every write of a batch that sends statements needs a savepoint
    /// (taken before its first one, ADR 0060); otherwise (SQLite) a write
    /// that fails before it changed anything needs none (ADR 0020).
    fn statement_errors_abort(&self) -> bool;
    /// Whether writers lock rows (PostgreSQL: several lanes, several
    /// nodes); without (SQLite) one writer holds the whole database.
    fn row_locks(&self) -> bool;
    /// Begin a write transaction on lane `lane`.
    async fn begin(&self, lane: usize) -> StoreResult<Box<dyn tx::WriteTx>>;
}

/// The store handlers and tasks use: reads through the backend (by
/// concern, via `Deref`), writes through the group-commit writer.
pub struct Store {
    backend: Arc<dyn Backend>,
    writer: Writer,
    queries: Arc<QueryCounter>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        self.queries.hit();
        &*self.backend
    }
}

impl Store {
    /// Open the backend `url` names (creating and migrating it) and start
    /// its writer. `write_lanes` bounds concurrent write transactions where
    /// the backend allows several (PostgreSQL).
    pub async fn open(
        url: &str,
        max_connections: u32,
        write_lanes: u32,
        queries: Arc<QueryCounter>,
    ) -> StoreResult<Store> {
        let backend: Arc<dyn Backend> = if postgres::is_postgres_url(url) {
            Arc::new(postgres::PgBackend::open(url, max_connections, write_lanes).await?)
        } else {
            Arc::new(sqlite::SqliteBackend::open(url, max_connections).await?)
        };
        let writer = Writer::start(backend.clone())?;
        Ok(Store {
            backend,
            writer,
            queries,
        })
    }

    /// Where committed events go (the engine); set once at start-up.
    pub fn attach(&self, sink: Arc<dyn CommitSink>) {
        self.writer.attach(sink);
    }

    /// The packs' declared steps (SPEC §5.1), for the lifecycle; set once
    /// at start-up.
    pub fn declare_steps(&self, steps: crate::packs::DeclaredSteps) {
        self.writer.declare_steps(steps);
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Store derived signals of runs updated since `since_ms`; returns how many.
    pub async fn write_snapshots(
        &self,
        since_ms: i64,
        tenant: Option<&str>,
        max: u32,
    ) -> StoreResult<usize> {
        let runs = self.backend.recent_runs(since_ms, tenant, max).await?;
        let mut written = 0;
        for (tenant, run) in runs {
            let Some(ColdRun {
                signal: Some((signal, seq)),
                ..
            }) = self.backend.cold_run(&tenant, &run).await?
            else {
                continue;
            };
            self.writer.put_snapshot(tenant, run, seq, &signal).await?;
            written += 1;
        }
        Ok(written)
    }
}

/// Counts store calls: the proof that first-signal hits never reach the store.
#[derive(Debug, Default)]
pub struct QueryCounter(AtomicU64);

impl QueryCounter {
    pub fn hit(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
