//! The primitives one write transaction offers the lifecycle rules. Each
//! backend implements them (one SQL body for both, see `sql.rs`); the rules
//! in `lifecycle.rs` are written once over them.
//!
//! Reads of rows a write will change lock them where the backend can
//! (PostgreSQL `FOR UPDATE`; SQLite's single writer needs no row locks), so
//! per-run seq allocation and leases stay exactly-once with several writers.

use std::sync::Arc;

use async_trait::async_trait;
use runsignal_actors::{Published, RunKey};

use super::{
    ArtifactRecord, ClaimShare, JobRecord, RunRecord, StoreResult, WebhookDelivery, WebhookOutcome,
};

/// The run columns a write may change (read locked, written back once).
/// `Deserialize` reads it from a JSON array of these columns in this order
/// (SQLite's packed reads, `sql::PACKED_ROW`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RunRow {
    pub last_seq: i64,
    pub signal_etag: Option<String>,
    pub signal_seq: Option<i64>,
    pub status: String,
    pub completed_seq: Option<i64>,
    pub updated_at: i64,
    pub created_at: i64,
}

/// A webhook delivery to insert into the outbox.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub tenant_id: String,
    pub job_id: String,
    pub state: String,
    pub idempotency_key: String,
    pub url: String,
    pub body: String,
    pub at: i64,
}

/// What a batch writes at its end (`lifecycle::Pending::flush`), in this
/// order: job updates grouped by the columns they set, whole jobs (new or
/// not read), artifacts, events, run rows.
#[derive(Default)]
pub struct BatchRows<'a> {
    pub updates: Vec<(u32, Vec<&'a JobRecord>)>,
    pub upserts: Vec<JobRecord>,
    pub artifacts: &'a [ArtifactRecord],
    pub events: &'a [Arc<Published>],
    pub runs: Vec<(RunKey, RunRow)>,
}

/// A batch's savepoints (PostgreSQL), taken lazily: see
/// [`WriteTx::isolate`].
#[derive(Debug, Default)]
pub struct Isolation {
    /// The current write is to be isolated and has sent no statement yet.
    pub wanted: bool,
    /// A savepoint is open (the last write that sent statements took it).
    pub open: bool,
    /// Taking a savepoint failed: the transaction is aborted, and the batch
    /// fails (`rollback_to_savepoint` says so).
    pub failed: bool,
}

#[async_trait]
pub trait WriteTx: Send {
    /// Isolate the next write of a batch: a failure rolls back only it.
    /// The savepoint is taken before the write's first statement (with the
    /// release of the previous one, in one round trip); a write whose rules
    /// run on rows the batch already holds sends none and needs none.
    fn isolate(&mut self);
    /// Undo the current write's statements, if it sent any.
    async fn rollback_to_savepoint(&mut self) -> StoreResult<()>;
    /// How many write statements ran so far.
    fn writes(&self) -> u64;
    async fn commit(self: Box<Self>) -> StoreResult<()>;
    async fn rollback(self: Box<Self>) -> StoreResult<()>;

    // Runs.
    /// The run's mutable columns, locked for this transaction.
    async fn run_row(&mut self, tenant: &str, run_id: &str) -> StoreResult<Option<RunRow>>;
    /// Insert a run; false when it exists already.
    async fn insert_run(&mut self, run: &RunRecord) -> StoreResult<bool>;

    // Jobs and leases.
    /// The job's run row and every job of that run (the job among them),
    /// oldest first, locked: what a write to one job reads, in one query.
    async fn job_and_run(
        &mut self,
        tenant: &str,
        job_id: &str,
    ) -> StoreResult<Option<(RunRow, Vec<JobRecord>)>>;
    /// [`WriteTx::job_and_run`] for many jobs at once (a batch's prefetch):
    /// each run's row and jobs, once per run.
    async fn jobs_and_runs(
        &mut self,
        job_ids: &[String],
    ) -> StoreResult<Vec<(RunKey, RunRow, Vec<JobRecord>)>>;
    async fn job_by_idempotency_key(
        &mut self,
        tenant: &str,
        key: &str,
    ) -> StoreResult<Option<JobRecord>>;
    /// Every job of the run, oldest first.
    async fn run_jobs(&mut self, tenant: &str, run_id: &str) -> StoreResult<Vec<JobRecord>>;
    /// The tenant's last successful jobs of `pack` (durations) and its
    /// latest finished runs with a job of `pack`, newest first.
    async fn pack_history(
        &mut self,
        tenant: &str,
        pack: &str,
    ) -> StoreResult<super::history::PackRecord>;
    /// Insert one job now (a job with an idempotency key: a concurrent
    /// writer of the same key fails here, alone, and is retried).
    async fn insert_job(&mut self, job: &JobRecord) -> StoreResult<()>;
    /// Insert the jobs that are new, write back every column of the others
    /// (one statement).
    async fn upsert_jobs(&mut self, jobs: &[JobRecord]) -> StoreResult<()>;
    /// Set the columns of `columns` (bits of [`super::JOB_UPDATE_COLUMNS`])
    /// of jobs whose rows exist, from these versions (one statement). Fails
    /// when a row is missing.
    async fn update_jobs(&mut self, columns: u32, jobs: &[&JobRecord]) -> StoreResult<()>;
    /// What a lease reads: up to `limit` queued jobs of `packs` (of one
    /// tenant, or all), oldest first, locked and skipped by concurrent
    /// lessees; and every job and the row of their runs, as
    /// [`WriteTx::jobs_and_runs`] has them (read under those locks).
    async fn queued_jobs_and_runs(
        &mut self,
        tenant: Option<&str>,
        packs: &[String],
        limit: u32,
    ) -> StoreResult<(Vec<JobRecord>, Vec<(RunKey, RunRow, Vec<JobRecord>)>)>;
    /// Up to `limit` running jobs whose lease ended before `now`, locked.
    async fn expired_jobs(&mut self, now: i64, limit: u32) -> StoreResult<Vec<JobRecord>>;
    /// End now the leases `worker_id` holds; returns how many.
    async fn expire_worker_leases(&mut self, worker_id: &str, now: i64) -> StoreResult<u64>;
    /// The names of a job's artifacts.
    async fn artifact_names(&mut self, tenant: &str, job_id: &str) -> StoreResult<Vec<String>>;

    // Jobs, artifacts, the timeline and runs, at a batch's end.
    /// A batch's rows: job updates as [`WriteTx::update_jobs`], job
    /// upserts, artifacts, events, run rows (one statement each; a backend
    /// that takes several statements at once sends them in one round
    /// trip). Fails when a job row to update is missing.
    async fn write_rows(&mut self, rows: &BatchRows<'_>) -> StoreResult<()>;

    // Outbox.
    async fn insert_delivery(&mut self, delivery: &NewDelivery) -> StoreResult<()>;
    /// Claim up to `limit` due deliveries (`pending`, due by `now`, and the
    /// oldest open one of their job, so each job's arrive in state order),
    /// shared between tenants as `share` says, marking them `sending`.
    async fn claim_deliveries(
        &mut self,
        now: i64,
        limit: u32,
        share: &ClaimShare,
    ) -> StoreResult<Vec<WebhookDelivery>>;
    async fn finish_delivery(
        &mut self,
        id: i64,
        outcome: &WebhookOutcome,
        now: i64,
    ) -> StoreResult<()>;
    /// Deliveries left `sending` go back to `pending`, due `now`: all of
    /// them (one node's restart), or `only_expired`, those whose claim ran
    /// out by `now` (a dead node's, with several nodes).
    async fn reset_sending(&mut self, now: i64, only_expired: bool) -> StoreResult<u64>;

    // Snapshots and prune.
    async fn put_snapshot(
        &mut self,
        tenant: &str,
        run_id: &str,
        seq: i64,
        signal: &str,
        now: i64,
    ) -> StoreResult<()>;
    /// Up to `limit` runs whose jobs all ended before `cutoff` (runs with an
    /// active job, or with no job, are never chosen).
    async fn prunable_runs(
        &mut self,
        cutoff: i64,
        limit: u32,
    ) -> StoreResult<Vec<(String, String)>>;
    /// Delete a run with its jobs, events, deliveries, snapshot and artifact
    /// rows; returns the artifact files to delete after the commit.
    async fn delete_run(&mut self, tenant: &str, run_id: &str) -> StoreResult<Vec<String>>;
}
