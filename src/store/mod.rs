//! Persistence: runs, jobs, the event timeline and first-signal snapshots.
//!
//! One [`Store`] trait; [`sqlite::SqliteStore`] is the embedded default. Every
//! write runs in one transaction that also appends its timeline events (seq
//! 1, 2, 3… per run, no gap) and, when the run's signal changed, a
//! `signal.changed` event: the caller publishes the returned [`Committed`]
//! events only after the commit.

pub mod model;
pub mod sqlite;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use runsignal_actors::{Published, RunKey, Signal};

pub use model::*;

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
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Events committed by one write, grouped by run, ready to publish.
#[derive(Debug, Default)]
pub struct Committed {
    pub runs: Vec<(RunKey, Vec<Arc<Published>>)>,
    /// Webhook deliveries were queued: wake the dispatcher.
    pub webhooks: bool,
}

/// The outcome of a write plus the events it committed.
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub committed: Committed,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reachability probe for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_run(&self, tenant: &str, new: NewRun) -> StoreResult<Written<RunRecord>>;
    async fn get_run(&self, tenant: &str, run_id: &str) -> StoreResult<RunRecord>;
    async fn list_runs(&self, tenant: &str, query: &RunQuery) -> StoreResult<Page<RunRecord>>;

    /// Submit a job; `created` is false when the idempotency key matched.
    async fn submit_job(
        &self,
        tenant: &str,
        new: NewJob,
    ) -> StoreResult<Written<(JobRecord, bool)>>;
    async fn get_job(&self, tenant: &str, job_id: &str) -> StoreResult<JobRecord>;
    async fn list_jobs(&self, tenant: &str, query: &JobQuery) -> StoreResult<Page<JobRecord>>;
    async fn cancel_job(
        &self,
        tenant: &str,
        job_id: &str,
        correlation_id: &str,
    ) -> StoreResult<Written<JobRecord>>;

    async fn lease_jobs(
        &self,
        tenant: &str,
        req: &LeaseRequest,
    ) -> StoreResult<Written<Vec<LeasedJob>>>;
    /// The built-in executor's lease: like [`Store::lease_jobs`] (attempt+1,
    /// lease, `job.loading`, signal refresh) but across all tenants; each
    /// leased job comes with its tenant.
    async fn lease_any_tenant(
        &self,
        req: &LeaseRequest,
    ) -> StoreResult<Written<Vec<(String, LeasedJob)>>>;
    /// Restart recovery: end now the leases `worker_id` holds (their
    /// `lease_until` moves to the past) so the sweeper requeues or fails
    /// them. Returns how many.
    async fn expire_worker_leases(&self, worker_id: &str) -> StoreResult<u64>;
    async fn report_progress(
        &self,
        tenant: &str,
        job_id: &str,
        report: &ProgressReport,
    ) -> StoreResult<Written<JobRecord>>;
    async fn complete_job(
        &self,
        tenant: &str,
        job_id: &str,
        done: &Completion,
    ) -> StoreResult<Written<JobRecord>>;
    async fn fail_job(
        &self,
        tenant: &str,
        job_id: &str,
        failure: &Failure,
    ) -> StoreResult<Written<JobRecord>>;
    /// A job's artifacts, by name.
    async fn list_artifacts(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<ArtifactRecord>>;
    /// One artifact of a job of the tenant (`None`: no such artifact).
    async fn get_artifact(
        &self,
        tenant: &str,
        job_id: &str,
        name: &str,
    ) -> StoreResult<Option<ArtifactRecord>>;
    /// Requeue or fail every job whose lease ended before `now_ms`.
    async fn sweep_expired_leases(&self, now_ms: i64) -> StoreResult<Written<usize>>;

    async fn timeline(
        &self,
        tenant: &str,
        run_id: &str,
        query: &TimelineQuery,
    ) -> StoreResult<Vec<String>>;

    /// Cold path: the run's signal derived from its jobs now (`None`: no run).
    async fn cold_run(&self, tenant: &str, run_id: &str) -> StoreResult<Option<ColdRun>>;
    /// The run's last seq and completion (`None`: no run).
    async fn run_head(&self, tenant: &str, run_id: &str) -> StoreResult<Option<RunHead>>;
    /// Seq of the job's terminal state event (`None` while it runs).
    async fn job_terminal_seq(&self, tenant: &str, job_id: &str) -> StoreResult<Option<u64>>;
    /// Claim up to `limit` due deliveries (`pending`, due by `now_ms`, and
    /// the oldest open one of their job, so each job's arrive in state
    /// order), marking them `sending`.
    async fn claim_webhooks(&self, now_ms: i64, limit: u32) -> StoreResult<Vec<WebhookDelivery>>;
    /// Record how an attempt ended.
    async fn finish_webhook(&self, id: i64, outcome: &WebhookOutcome) -> StoreResult<()>;
    /// When the next pending delivery is due (`None`: nothing pending), so
    /// an idle dispatcher sleeps instead of polling.
    async fn next_webhook_due(&self) -> StoreResult<Option<i64>>;
    /// After a restart: deliveries left `sending` by a crash go back to `pending`.
    async fn reset_sending_webhooks(&self) -> StoreResult<u64>;
    /// The job's deliveries, oldest first (`GET /jobs/{id}`).
    async fn job_webhooks(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<WebhookDelivery>>;
    /// Delete up to `limit` runs whose jobs are all terminal and finished
    /// before `cutoff_ms`, with their jobs, events, deliveries, snapshots and
    /// artifacts (rows in the transaction, files after the commit).
    /// Runs with a job still active, or with no job, are never touched.
    async fn prune(&self, cutoff_ms: i64, limit: u32) -> StoreResult<Vec<RunKey>>;
    /// A snapshot written by the snapshot writer, if any.
    async fn get_snapshot(&self, tenant: &str, run_id: &str) -> StoreResult<Option<(Signal, u64)>>;
    /// Store derived signals of runs updated since `since_ms`; returns how many.
    async fn write_snapshots(
        &self,
        since_ms: i64,
        tenant: Option<&str>,
        max: u32,
    ) -> StoreResult<usize>;
}

/// Where a run's timeline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHead {
    pub last_seq: u64,
    /// Seq of `run.completed` while the run is complete.
    pub completed_seq: Option<u64>,
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
