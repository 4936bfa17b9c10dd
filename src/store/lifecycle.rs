//! The job lifecycle, written once for every backend (SPEC §3, §7).
//!
//! An [`Op`] is one write: it reads and changes rows through the
//! [`WriteTx`] primitives and appends timeline events with the run's next
//! seq. Run rows and events go to the batch's [`Pending`] state: each run
//! row is read (and locked) once per batch and written back once, and all
//! of a batch's events go in one multi-row insert, just before the commit.
//! A write that fails leaves `Pending` as it found it (its undo log), as its
//! savepoint leaves the rows. What a write committed is handed to the
//! writer, which publishes it after the batch commits.

use std::collections::HashMap;
use std::sync::Arc;

use runsignal_actors::envelope::{types, NewEnvelope};
use runsignal_actors::signal::derive;
use runsignal_actors::{new_ulid, JobState, Published, RunKey, SignalView};
use serde_json::{json, Value};

use super::history::{HistoryFact, Outcome, PackHistory, PackRecord};
use super::tx::{BatchRows, RunRow, WriteTx};
use super::writer::{Cmd, Done};
use super::*;
use crate::packs::DeclaredSteps;

/// What a batch has changed but not yet written: run rows (as they will be
/// written back, and whether they changed) and events, in seq order per run.
#[derive(Default)]
pub struct Pending {
    runs: Vec<(RunKey, RunRow, bool)>,
    events: Vec<Arc<Published>>,
    /// Jobs as they will be written (inserted or updated), by id.
    jobs: Vec<JobRecord>,
    /// The rows of the runs the batch's job writes name, read (and locked)
    /// in one query before the batch's first write; older than `runs` and
    /// `jobs`, which take precedence.
    prefetched: Vec<(RunKey, RunRow, Vec<JobRecord>)>,
    /// Artifact rows of completions (read only for a done job's
    /// `download_artifact` actions).
    artifacts: Vec<ArtifactRecord>,
    /// Queued jobs read once for a batch's several leases of the same
    /// packs (and tenant), before its first write; as old as `prefetched`.
    pools: Vec<LeasePool>,
    /// Job rows as the transaction has them now, by id: the jobs this batch
    /// read or wrote. A job written back that is here has only its changed
    /// columns set (ADR 0048); one that is not is upserted whole. Forgotten
    /// whenever a write changes rows some other way.
    stored: HashMap<String, JobRecord>,
    /// The writer's per-(tenant, pack) history (`etaSeconds`,
    /// `lastKnownOutcome`).
    history: Arc<PackHistory>,
}

/// The candidates of a batch's leases of one (tenant, packs).
struct LeasePool {
    tenant: Option<String>,
    packs: Vec<String>,
    /// Oldest first.
    jobs: Vec<JobRecord>,
    /// Every queued job there was: the read asked for more than it got.
    all: bool,
}

/// Most candidates one read for a batch's leases asks for.
const MAX_POOL: u32 = 1000;

impl Pending {
    pub fn new(history: Arc<PackHistory>) -> Pending {
        Pending {
            history,
            ..Pending::default()
        }
    }

    /// Write the jobs, the changed run rows and the events (one statement
    /// each, whatever the batch's size; on SQLite one round trip for all).
    pub async fn flush(&mut self, tx: &mut dyn WriteTx) -> StoreResult<()> {
        let mut rows = BatchRows {
            artifacts: &self.artifacts,
            events: &self.events,
            ..BatchRows::default()
        };
        // Rows known to the transaction: grouped by the columns that
        // changed (one statement a group; a progress batch is one group).
        let mut narrow: Vec<(u32, &JobRecord)> = Vec::new();
        for job in &self.jobs {
            let changed = self
                .stored
                .get(&job.job_id)
                .and_then(|stored| job.changed_columns(stored));
            match changed {
                Some(0) => {}
                Some(columns) => narrow.push((columns, job)),
                None => rows.upserts.push(job.clone()),
            }
        }
        narrow.sort_by_key(|(columns, _)| *columns);
        for group in narrow.chunk_by(|a, b| a.0 == b.0) {
            rows.updates
                .push((group[0].0, group.iter().map(|(_, j)| *j).collect()));
        }
        rows.runs = self
            .runs
            .iter()
            .filter(|(_, _, dirty)| *dirty)
            .map(|(k, r, _)| (k.clone(), r.clone()))
            .collect();
        tx.write_rows(&rows).await?;
        drop(rows);
        for job in self.jobs.drain(..) {
            self.stored.insert(job.job_id.clone(), job);
        }
        self.artifacts.clear();
        self.runs.clear();
        self.events.clear();
        Ok(())
    }

    /// Remember a job row as read from the transaction.
    fn saw(&mut self, job: &JobRecord) {
        self.stored.insert(job.job_id.clone(), job.clone());
    }

    /// Read the runs of these jobs ahead, in one query.
    pub async fn prefetch(&mut self, tx: &mut dyn WriteTx, job_ids: &[String]) -> StoreResult<()> {
        if !job_ids.is_empty() {
            self.prefetched = tx.jobs_and_runs(job_ids).await?;
        }
        Ok(())
    }

    /// Read the candidates of the batch's leases (tenant, packs, max),
    /// one query for the leases of each (tenant, packs) that more than one
    /// asks for (ahead of the batch's first write, as `prefetch`).
    pub async fn pool_leases(
        &mut self,
        tx: &mut dyn WriteTx,
        leases: &[(Option<&str>, &[String], u32)],
    ) -> StoreResult<()> {
        let mut groups: Vec<(Option<&str>, &[String], u32, usize)> = Vec::new();
        for &(tenant, packs, max) in leases {
            match groups.iter_mut().find(|g| g.0 == tenant && g.1 == packs) {
                Some(g) => {
                    g.2 = g.2.saturating_add(max);
                    g.3 += 1;
                }
                None => groups.push((tenant, packs, max, 1)),
            }
        }
        for (tenant, packs, wanted, leases) in groups {
            if leases < 2 {
                continue;
            }
            let limit = wanted.min(MAX_POOL);
            let (jobs, runs) = tx.queued_jobs_and_runs(tenant, packs, limit).await?;
            self.read_ahead(runs);
            self.pools.push(LeasePool {
                tenant: tenant.map(str::to_owned),
                packs: packs.to_vec(),
                all: (jobs.len() as u32) < limit,
                jobs,
            });
        }
        Ok(())
    }

    /// Keep runs read with lease candidates (those not read ahead already).
    fn read_ahead(&mut self, runs: Vec<super::sql::RunJobs>) {
        for (key, row, jobs) in runs {
            if !self.prefetched.iter().any(|(k, _, _)| *k == key) {
                self.prefetched.push((key, row, jobs));
            }
        }
    }

    /// Forget what was read ahead (rows changed behind the batch's back).
    pub fn forget_prefetched(&mut self) {
        // `stored` stays: until the barrier's own write (which clears it,
        // as every write outside the flush does) it matches the rows.
        self.prefetched.clear();
        self.pools.clear();
    }

    /// A lease's candidates from the batch's pool: the pooled jobs this
    /// batch has not changed, when there are enough of them (or the pool
    /// held every queued job); `None`: ask the table.
    fn pooled(&self, tenant: Option<&str>, req: &LeaseRequest) -> Option<Vec<JobRecord>> {
        let pool = self
            .pools
            .iter()
            .find(|p| p.tenant.as_deref() == tenant && p.packs == req.packs)?;
        let left: Vec<JobRecord> = pool
            .jobs
            .iter()
            .filter(|j| self.job(&j.tenant_id, &j.job_id).is_none())
            .cloned()
            .collect();
        (pool.all || left.len() >= req.max as usize).then_some(left)
    }

    fn job(&self, tenant: &str, job_id: &str) -> Option<&JobRecord> {
        self.jobs
            .iter()
            .find(|j| j.job_id == job_id && j.tenant_id == tenant)
    }
}

/// One write in progress.
pub struct Op<'t> {
    tx: &'t mut dyn WriteTx,
    pending: &'t mut Pending,
    pub now: i64,
    correlation_id: String,
    /// The packs' declared steps: names for unnamed steps, and the steps a
    /// failed or canceled job never reached (reported `skipped`).
    declared: &'t DeclaredSteps,
    /// Undo log: how many runs and events `pending` had before this write,
    /// and the earlier state of the runs it changed.
    runs_before: usize,
    events_before: usize,
    jobs_before: usize,
    artifacts_before: usize,
    /// Runs a lease of this write read ahead: their row locks go with its
    /// savepoint, so they go too when it fails.
    prefetched_before: usize,
    saved: Vec<(usize, RunRow, bool)>,
    saved_jobs: Vec<(usize, JobRecord)>,
    /// Runs this write created: they have no jobs but its own.
    created: Vec<RunKey>,
    /// Runs whose jobs this write already read (with `job_and_run`).
    read_jobs: Vec<(RunKey, Vec<JobRecord>)>,
    committed: Committed,
}

/// Apply one command. On error nothing it did may be kept: the writer rolls
/// its savepoint back, and `pending` is restored here.
pub async fn apply(
    tx: &mut dyn WriteTx,
    pending: &mut Pending,
    declared: &DeclaredSteps,
    cmd: &Cmd,
) -> StoreResult<(Done, Committed)> {
    let writes_before = tx.writes();
    let mut op = Op::new(tx, pending, declared, cmd.correlation_id());
    let result = op.apply(cmd).await;
    if result.is_err() {
        op.undo();
    }
    if op.tx.writes() != writes_before {
        // It wrote rows itself (or a savepoint took such writes back):
        // what `stored` says may be wrong now.
        op.pending.stored.clear();
    }
    result.map(|done| (done, op.committed))
}

impl<'t> Op<'t> {
    async fn apply(&mut self, cmd: &Cmd) -> StoreResult<Done> {
        let op = self;
        let done = match cmd {
            Cmd::CreateRun { tenant, new } => Done::Run(op.create_run(tenant, new).await?),
            Cmd::Submit { tenant, new } => {
                let (job, created) = op.submit(tenant, new).await?;
                Done::Submitted(job, created)
            }
            Cmd::Cancel { tenant, job_id, .. } => Done::Job(op.cancel(tenant, job_id).await?),
            Cmd::Retry { tenant, job_id, .. } => Done::Job(op.retry(tenant, job_id).await?),
            Cmd::Lease { tenant, req } => Done::Leased(op.lease(tenant.as_deref(), req).await?),
            Cmd::Progress {
                tenant,
                job_id,
                report,
            } => Done::Job(op.progress(tenant, job_id, report).await?),
            Cmd::Complete {
                tenant,
                job_id,
                done,
            } => Done::Job(op.complete(tenant, job_id, done).await?),
            Cmd::Fail {
                tenant,
                job_id,
                failure,
            } => Done::Job(op.fail(tenant, job_id, failure).await?),
            Cmd::SweepLeases { now_ms } => Done::Count(op.sweep(*now_ms).await? as u64),
            Cmd::SetBlocked {
                tenant,
                job_id,
                reason,
            } => Done::Count(op.set_blocked(tenant, job_id, reason.as_deref()).await? as u64),
            Cmd::ExpireWorkerLeases { worker_id } => {
                let now = op.now;
                Done::Count(op.tx.expire_worker_leases(worker_id, now - 1).await?)
            }
            Cmd::ClaimWebhooks {
                now_ms,
                limit,
                share,
            } => Done::Claimed(op.tx.claim_deliveries(*now_ms, *limit, share).await?),
            Cmd::FinishWebhook { id, outcome } => {
                let now = op.now;
                op.tx.finish_delivery(*id, outcome, now).await?;
                Done::Unit
            }
            Cmd::ResetSendingWebhooks {
                now_ms,
                only_expired,
            } => Done::Count(op.tx.reset_sending(*now_ms, *only_expired).await?),
            Cmd::PutSnapshot {
                tenant,
                run_id,
                seq,
                signal,
            } => {
                let now = op.now;
                op.tx
                    .put_snapshot(tenant, run_id, *seq as i64, signal, now)
                    .await?;
                Done::Unit
            }
            Cmd::Prune { cutoff_ms, limit } => {
                let runs = op.tx.prunable_runs(*cutoff_ms, *limit).await?;
                let mut files = Vec::new();
                for (tenant, run) in &runs {
                    files.extend(op.tx.delete_run(tenant, run).await?);
                }
                let keys = runs.iter().map(|(t, r)| RunKey::new(t, r)).collect();
                Done::Pruned(keys, files)
            }
        };
        Ok(done)
    }

    fn new(
        tx: &'t mut dyn WriteTx,
        pending: &'t mut Pending,
        declared: &'t DeclaredSteps,
        correlation_id: &str,
    ) -> Op<'t> {
        Op {
            tx,
            declared,
            runs_before: pending.runs.len(),
            events_before: pending.events.len(),
            jobs_before: pending.jobs.len(),
            artifacts_before: pending.artifacts.len(),
            prefetched_before: pending.prefetched.len(),
            saved_jobs: Vec::new(),
            pending,
            now: now_ms(),
            correlation_id: correlation_id.to_owned(),
            saved: Vec::new(),
            created: Vec::new(),
            read_jobs: Vec::new(),
            committed: Committed::default(),
        }
    }

    /// Put `pending` back as this write found it.
    fn undo(&mut self) {
        self.pending.runs.truncate(self.runs_before);
        self.pending.events.truncate(self.events_before);
        for (i, row, dirty) in self.saved.drain(..) {
            self.pending.runs[i] = (self.pending.runs[i].0.clone(), row, dirty);
        }
        self.pending.jobs.truncate(self.jobs_before);
        self.pending.artifacts.truncate(self.artifacts_before);
        self.pending.prefetched.truncate(self.prefetched_before);
        for (i, job) in self.saved_jobs.drain(..) {
            self.pending.jobs[i] = job;
        }
    }

    /// The job as this batch has it: its pending version, else the row
    /// (locked for this transaction). Reading the row also reads its run's
    /// row and jobs in the same query: the write will need them.
    async fn job(&mut self, tenant: &str, job_id: &str) -> StoreResult<JobRecord> {
        if let Some(job) = self.pending.job(tenant, job_id) {
            return Ok(job.clone());
        }
        let prefetched =
            self.pending.prefetched.iter().find(|(k, _, jobs)| {
                &*k.tenant == tenant && jobs.iter().any(|j| j.job_id == job_id)
            });
        let (row, jobs) = match prefetched {
            Some((_, row, jobs)) => (row.clone(), jobs.clone()),
            None => self
                .tx
                .job_and_run(tenant, job_id)
                .await?
                .ok_or(StoreError::JobNotFound)?,
        };
        let job = jobs
            .iter()
            .find(|j| j.job_id == job_id)
            .cloned()
            .ok_or(StoreError::JobNotFound)?;
        self.pending.saw(&job);
        let key = RunKey::new(tenant, &job.run_id);
        if !self.pending.runs.iter().any(|(k, _, _)| *k == key) {
            self.pending.runs.push((key.clone(), row, false));
        }
        self.read_jobs.push((key, jobs));
        Ok(job)
    }

    /// Up to `req.max` queued jobs of `req.packs` (of one tenant, or all),
    /// oldest first, as this batch has them: the rows (locked, skipping
    /// other lessees' locks) that this batch has not changed since, plus
    /// the jobs this batch queued.
    async fn queued_jobs(
        &mut self,
        tenant: Option<&str>,
        req: &LeaseRequest,
    ) -> StoreResult<Vec<JobRecord>> {
        let wanted = |j: &JobRecord| {
            tenant.is_none_or(|t| j.tenant_id == t)
                && j.job_state() == JobState::Queued
                && req.packs.contains(&j.pack)
        };
        let mut jobs = match self.pending.pooled(tenant, req) {
            // Read with the batch's other leases (their runs too).
            Some(jobs) => jobs,
            None => {
                // Rows this batch took out of `queued` still match in the
                // table: ask for that many more (no more: on PostgreSQL
                // every row the query returns stays locked to this batch,
                // and every row is read whole). A job whose row is known
                // not to be queued (a running job's progress, say) does
                // not match there: not counted.
                let hidden = self
                    .pending
                    .jobs
                    .iter()
                    .filter(|j| {
                        tenant.is_none_or(|t| j.tenant_id == t)
                            && j.job_state() != JobState::Queued
                            && req.packs.contains(&j.pack)
                            && self
                                .pending
                                .stored
                                .get(&j.job_id)
                                .is_none_or(|row| row.job_state() == JobState::Queued)
                    })
                    .count();
                // The candidates' runs come with them (rows and jobs, read
                // under the candidates' locks): the lease reads nothing
                // more per job.
                let (candidates, runs) = self
                    .tx
                    .queued_jobs_and_runs(tenant, &req.packs, req.max + hidden as u32)
                    .await?;
                self.pending.read_ahead(runs);
                candidates
                    .into_iter()
                    .filter(|j| self.pending.job(&j.tenant_id, &j.job_id).is_none())
                    .collect::<Vec<JobRecord>>()
            }
        };
        for job in &jobs {
            self.pending.saw(job);
        }
        jobs.extend(self.pending.jobs.iter().filter(|j| wanted(j)).cloned());
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        jobs.truncate(req.max as usize);
        Ok(jobs)
    }

    /// The tenant's job holding `key`, as this batch has it.
    async fn job_by_idempotency_key(
        &mut self,
        tenant: &str,
        key: &str,
    ) -> StoreResult<Option<JobRecord>> {
        let pending = self
            .pending
            .jobs
            .iter()
            .find(|j| j.tenant_id == tenant && j.idempotency_key.as_deref() == Some(key));
        if let Some(job) = pending {
            return Ok(Some(job.clone()));
        }
        let Some(job) = self.tx.job_by_idempotency_key(tenant, key).await? else {
            return Ok(None);
        };
        // The row may be older than this batch's version (its key freed).
        match self.pending.job(tenant, &job.job_id) {
            Some(newer) if newer.idempotency_key.as_deref() != Some(key) => Ok(None),
            Some(newer) => Ok(Some(newer.clone())),
            None => Ok(Some(job)),
        }
    }

    /// Record the job as it will be written at the end of the batch.
    fn put_job(&mut self, job: &JobRecord) {
        match self
            .pending
            .jobs
            .iter()
            .position(|j| j.job_id == job.job_id)
        {
            Some(i) => {
                if i < self.jobs_before && !self.saved_jobs.iter().any(|(k, _)| *k == i) {
                    self.saved_jobs.push((i, self.pending.jobs[i].clone()));
                }
                self.pending.jobs[i] = job.clone();
            }
            None => self.pending.jobs.push(job.clone()),
        }
    }

    /// Every job of the run as this batch has it, oldest first.
    async fn run_jobs(&mut self, tenant: &str, run: &str) -> StoreResult<Vec<JobRecord>> {
        let key = RunKey::new(tenant, run);
        let read = self.read_jobs.iter().find(|(k, _)| *k == key);
        let mut jobs = if self.created.contains(&key) {
            Vec::new()
        } else if let Some((_, jobs)) = read {
            jobs.clone()
        } else {
            self.tx.run_jobs(tenant, run).await?
        };
        for job in jobs.iter_mut() {
            if let Some(newer) = self.pending.job(tenant, &job.job_id) {
                *job = newer.clone();
            }
        }
        for p in &self.pending.jobs {
            let ours = p.tenant_id == tenant && p.run_id == run;
            if ours && !jobs.iter().any(|j| j.job_id == p.job_id) {
                jobs.push(p.clone());
            }
        }
        jobs.sort_by(|a, b| (a.created_at, &a.job_id).cmp(&(b.created_at, &b.job_id)));
        Ok(jobs)
    }

    /// Index of the run's row in the batch, reading (and locking) it once
    /// per batch; the undo log keeps its state from before this write.
    async fn run(&mut self, tenant: &str, run: &str) -> StoreResult<usize> {
        if let Some(i) = self
            .pending
            .runs
            .iter()
            .position(|(k, _, _)| &*k.tenant == tenant && &*k.run_id == run)
        {
            if i < self.runs_before && !self.saved.iter().any(|(j, _, _)| *j == i) {
                let (_, row, dirty) = &self.pending.runs[i];
                self.saved.push((i, row.clone(), *dirty));
            }
            return Ok(i);
        }
        let row = self
            .tx
            .run_row(tenant, run)
            .await?
            .ok_or(StoreError::RunNotFound)?;
        self.pending
            .runs
            .push((RunKey::new(tenant, run), row, false));
        Ok(self.pending.runs.len() - 1)
    }

    /// Append one event to the run's timeline with the next seq.
    async fn append(
        &mut self,
        tenant: &str,
        run: &str,
        job: Option<&str>,
        ty: &str,
        payload: Value,
    ) -> StoreResult<u64> {
        self.append_with(tenant, run, job, ty, |_| (payload, None))
            .await
    }

    /// Append an event whose payload depends on its seq (`signal.changed`).
    async fn append_with(
        &mut self,
        tenant: &str,
        run: &str,
        job: Option<&str>,
        ty: &str,
        make: impl FnOnce(u64) -> (Value, Option<Arc<SignalView>>),
    ) -> StoreResult<u64> {
        let i = self.run(tenant, run).await?;
        let (key, row, dirty) = &mut self.pending.runs[i];
        row.last_seq += 1;
        row.updated_at = self.now;
        *dirty = true;
        let seq = row.last_seq as u64;
        let key = key.clone();
        let (payload, signal) = make(seq);
        let envelope = NewEnvelope {
            event_id: new_ulid(),
            event_type: ty,
            tenant_id: tenant,
            run_id: run,
            job_id: job,
            seq,
            occurred_at: rfc3339(self.now),
            correlation_id: &self.correlation_id,
            payload,
        }
        .seal();
        let published = Published::new(envelope, signal);
        self.pending.events.push(published.clone());
        match self.committed.runs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, events)) => events.push(published),
            None => self.committed.runs.push((key, vec![published])),
        }
        Ok(seq)
    }

    /// Re-derive the run's signal and status; append `signal.changed` and
    /// `run.completed` when they changed.
    async fn refresh_run(&mut self, tenant: &str, run: &str) -> StoreResult<()> {
        // The run row first: its lock orders concurrent writers of the run,
        // so the jobs read after it include every committed change before
        // ours (`job_and_run` and `jobs_and_runs` read in that order too).
        let i = self.run(tenant, run).await?;
        let all = self.run_jobs(tenant, run).await?;
        // A job that was retried is replaced by its retry: the run is
        // judged by the retry (ADR 0028).
        let jobs: Vec<JobRecord> = all
            .iter()
            .filter(|j| !all.iter().any(|r| r.retry_of.as_ref() == Some(&j.job_id)))
            .cloned()
            .collect();
        let facts: Vec<_> = jobs.iter().map(JobRecord::facts).collect();
        if let Some(mut signal) = derive(run, &facts) {
            let decider = signal
                .job_id
                .as_deref()
                .and_then(|id| jobs.iter().find(|j| j.job_id == id));
            let mut record = None;
            if let Some(job) = decider {
                let history = self.pack_record(tenant, &job.pack).await?;
                signal.last_known_outcome = history.last_other(run).map(|o| {
                    json!({"status": o.status, "runId": o.run_id, "finishedAt": rfc3339(o.finished_at)})
                });
                let artifacts = self.artifact_names(job).await?;
                signal.next_actions = Some(next_actions(job, &artifacts));
                record = Some((job, history));
            }
            let etag = signal.etag();
            if self.pending.runs[i].1.signal_etag.as_deref() != Some(etag.as_str()) {
                signal.eta_seconds = record.and_then(|(job, h)| eta_seconds(job, &h, self.now));
                let payload = json!({"etag": etag, "signal": signal});
                let seq = self
                    .append_with(tenant, run, None, types::SIGNAL_CHANGED, |seq| {
                        let view = Arc::new(SignalView::with_etag(signal, etag.clone(), seq));
                        (payload, Some(view))
                    })
                    .await?;
                let row = &mut self.pending.runs[i].1;
                row.signal_etag = Some(etag);
                row.signal_seq = Some(seq as i64);
            }
        }
        let status = run_status(&jobs);
        if status != self.pending.runs[i].1.status {
            let completed_seq = if matches!(status, "succeeded" | "failed" | "canceled") {
                let mut packs: Vec<&str> = jobs.iter().map(|j| j.pack.as_str()).collect();
                packs.sort_unstable();
                packs.dedup();
                for pack in packs {
                    self.committed.history.push(HistoryFact::RunFinished {
                        tenant: tenant.to_owned(),
                        pack: pack.to_owned(),
                        outcome: Outcome {
                            run_id: run.to_owned(),
                            status: status.to_owned(),
                            finished_at: self.now,
                        },
                    });
                }
                let payload = json!({"status": status});
                Some(
                    self.append(tenant, run, None, types::RUN_COMPLETED, payload)
                        .await? as i64,
                )
            } else {
                None
            };
            let (_, row, dirty) = &mut self.pending.runs[i];
            row.status = status.to_owned();
            row.completed_seq = completed_seq;
            *dirty = true;
        }
        Ok(())
    }

    /// Create a run. `deferred`: a run only this write can know of (a fresh
    /// id, no name, no labels) is not inserted now but with the batch's run
    /// rows at its end (foreign keys to it are checked at commit).
    async fn insert_run(
        &mut self,
        tenant: &str,
        run_id: &str,
        name: Option<&str>,
        labels: &Value,
        deferred: bool,
    ) -> StoreResult<RunRecord> {
        let mut run = RunRecord {
            tenant_id: tenant.to_owned(),
            run_id: run_id.to_owned(),
            name: name.map(str::to_owned),
            labels: labels.to_string(),
            status: "pending".into(),
            last_seq: 0,
            created_at: self.now,
            updated_at: self.now,
        };
        if !deferred && !self.tx.insert_run(&run).await? {
            return Err(StoreError::RunExists);
        }
        let row = RunRow {
            last_seq: 0,
            signal_etag: None,
            signal_seq: None,
            status: run.status.clone(),
            completed_seq: None,
            updated_at: self.now,
            created_at: self.now,
        };
        let key = RunKey::new(tenant, run_id);
        self.pending.runs.push((key.clone(), row, deferred));
        self.created.push(key);
        let payload = json!({"name": name, "labels": labels});
        run.last_seq = self
            .append(tenant, run_id, None, types::RUN_CREATED, payload)
            .await? as i64;
        Ok(run)
    }

    async fn create_run(&mut self, tenant: &str, new: &NewRun) -> StoreResult<RunRecord> {
        let (name, labels) = (new.name.as_deref(), &new.labels);
        self.insert_run(tenant, &new.run_id, name, labels, false)
            .await
    }

    async fn submit(&mut self, tenant: &str, new: &NewJob) -> StoreResult<(JobRecord, bool)> {
        if let Some(key) = &new.idempotency_key {
            if let Some(mut job) = self.job_by_idempotency_key(tenant, key).await? {
                if job.created_at > self.now - new.idempotency_window_ms {
                    if let Some(field) = differs(&job, new) {
                        return Err(StoreError::IdempotencyConflict(field));
                    }
                    return Ok((job, false));
                }
                // Past the window the key is free again: written now, as
                // the new job's row takes the key in this same write.
                job.idempotency_key = None;
                self.tx.upsert_jobs(std::slice::from_ref(&job)).await?;
                self.put_job(&job);
            }
        }
        let run_id = match &new.run_id {
            Some(run_id) => {
                self.run(tenant, run_id).await?;
                run_id.clone()
            }
            None => {
                let run_id = crate::store::model::new_run_id();
                self.insert_run(tenant, &run_id, None, &json!({}), true)
                    .await?;
                run_id
            }
        };
        let job = JobRecord::queued(tenant, &run_id, new, self.now);
        if new.idempotency_key.is_some() {
            // Now, not with the batch: a concurrent submit of the same key
            // (another lane or node) then fails alone, and is retried.
            self.tx.insert_job(&job).await?;
        }
        Ok((self.enqueue(job).await?, true))
    }

    /// A new job in its run: `job.queued`, its webhook, the run's signal.
    async fn enqueue(&mut self, job: JobRecord) -> StoreResult<JobRecord> {
        self.put_job(&job);
        let mut payload =
            json!({"state": "queued", "previousState": null, "attempt": 0, "pack": job.pack});
        if let Some(of) = &job.retry_of {
            payload["retryOf"] = json!(of);
        }
        self.webhook(&job, "queued", None, 0, &payload).await?;
        let (tenant, run_id) = (job.tenant_id.clone(), job.run_id.clone());
        self.append(
            &tenant,
            &run_id,
            Some(&job.job_id),
            types::JOB_QUEUED,
            payload,
        )
        .await?;
        self.refresh_run(&tenant, &run_id).await?;
        let queued = (job.tenant_id.clone(), job.pack.clone());
        self.committed.queued.push(queued);
        Ok(job)
    }

    /// `POST /jobs/{id}/retry`: a failed or canceled job, once, as a new job
    /// of the same pack, inputs and webhook in the same run.
    async fn retry(&mut self, tenant: &str, job_id: &str) -> StoreResult<JobRecord> {
        let old = self.job(tenant, job_id).await?;
        if !matches!(old.job_state(), JobState::Failed | JobState::Canceled) {
            return Err(StoreError::NotRetryable(old.state));
        }
        let jobs = self.run_jobs(tenant, &old.run_id).await?;
        if let Some(retry) = jobs.iter().find(|j| j.retry_of.as_deref() == Some(job_id)) {
            return Err(StoreError::AlreadyRetried(retry.job_id.clone()));
        }
        let new = NewJob {
            pack: old.pack.clone(),
            inputs: serde_json::from_str(&old.inputs).unwrap_or_else(|_| json!({})),
            run_id: Some(old.run_id.clone()),
            correlation_id: self.correlation_id.clone(),
            webhook_url: old.webhook_url.clone(),
            idempotency_key: None,
            max_attempts: u32::try_from(old.max_attempts).unwrap_or(1),
            idempotency_window_ms: 0,
        };
        let mut job = JobRecord::queued(tenant, &old.run_id, &new, self.now);
        job.retry_of = Some(old.job_id);
        self.enqueue(job).await
    }

    /// The tenant's history of `pack`: the writer's copy, read from the
    /// store the first time (and again once it is old).
    async fn pack_record(&mut self, tenant: &str, pack: &str) -> StoreResult<PackRecord> {
        if let Some(record) = self.pending.history.get(tenant, pack) {
            return Ok(record);
        }
        let record = self.tx.pack_history(tenant, pack).await?;
        self.pending.history.put(tenant, pack, record.clone());
        Ok(record)
    }

    /// A done job's downloadable artifacts by name (its result too, stored
    /// as `completion`, SPEC §7.2): this batch's rows, else the table's.
    /// Other jobs have none.
    async fn artifact_names(&mut self, job: &JobRecord) -> StoreResult<Vec<String>> {
        if job.job_state() != JobState::Done {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = self
            .pending
            .artifacts
            .iter()
            .filter(|a| a.job_id == job.job_id && a.tenant_id == job.tenant_id)
            .map(|a| a.name.clone())
            .collect();
        if names.is_empty() {
            names = self.tx.artifact_names(&job.tenant_id, &job.job_id).await?;
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn cancel(&mut self, tenant: &str, job_id: &str) -> StoreResult<JobRecord> {
        let mut job = self.job(tenant, job_id).await?;
        if job.job_state().is_terminal() {
            return Err(StoreError::InvalidState(job.state));
        }
        let reached = job.step_started_at.and(job.step_index);
        self.finish_step(&mut job, "failed", None).await?;
        self.skip_after(&job, reached).await?;
        self.transition(&mut job, JobState::Canceled, json!({}))
            .await?;
        self.settle(job).await
    }

    /// Lease queued jobs of `req.packs`: of one tenant, or of all (`None`).
    async fn lease(
        &mut self,
        tenant: Option<&str>,
        req: &LeaseRequest,
    ) -> StoreResult<Vec<(String, LeasedJob)>> {
        let candidates = self.queued_jobs(tenant, req).await?;
        let until = self.now + i64::from(req.lease_seconds) * 1000;
        let mut leased = Vec::with_capacity(candidates.len());
        let mut runs: Vec<(String, String)> = Vec::new();
        for job in candidates {
            // Its run's row and jobs, locked, in one read (the append and
            // the refresh below need them). The candidates' query locks run
            // rows only (the order every writer locks in), so a candidate
            // may have been taken by another lessee since: read under the
            // locks, it says.
            let mut job = self.job(&job.tenant_id, &job.job_id).await?;
            if job.job_state() != JobState::Queued {
                continue;
            }
            job.attempt += 1;
            job.lease_id = Some(random_lease_id());
            job.lease_worker = Some(req.worker_id.clone());
            job.lease_until = Some(until);
            job.lease_seconds = Some(i64::from(req.lease_seconds));
            job.started_at = job.started_at.or(Some(self.now));
            job.state = JobState::Loading.as_str().into();
            job.updated_at = self.now;
            job.state_changed_at = self.now;
            self.unblock(&mut job).await?;
            self.put_job(&job);
            let payload = json!({"state": "loading", "previousState": "queued", "attempt": job.attempt,
                                 "workerId": req.worker_id, "leaseUntil": rfc3339(until)});
            self.webhook(&job, "loading", Some("queued"), job.attempt, &payload)
                .await?;
            self.append(
                &job.tenant_id,
                &job.run_id,
                Some(&job.job_id),
                types::JOB_LOADING,
                payload,
            )
            .await?;
            let run = (job.tenant_id.clone(), job.run_id.clone());
            if !runs.contains(&run) {
                runs.push(run);
            }
            leased.push((job.tenant_id.clone(), job.leased(until)));
        }
        for (tenant, run) in runs {
            self.refresh_run(&tenant, &run).await?;
        }
        Ok(leased)
    }

    async fn progress(
        &mut self,
        tenant: &str,
        job_id: &str,
        r: &ProgressReport,
    ) -> StoreResult<JobRecord> {
        let mut job = self.leased_job(tenant, job_id, &r.lease_id).await?;
        let lease = (job.lease_id.clone(), job.lease_worker.clone());
        if job.job_state() == JobState::Loading {
            self.transition(&mut job, JobState::Working, json!({}))
                .await?;
        }
        // Steps are keyed by `stepIndex`: a new index starts a step (and ends
        // the one before it as succeeded).
        if let Some(index) = r.step_index {
            if job.step_started_at.is_none() || job.step_index != Some(index) {
                self.start_step(&mut job, index, r.step.as_deref()).await?;
            }
        }
        // The transition cleared the lease: restore and extend it.
        let until = self.now + job.lease_seconds.unwrap_or(60) * 1000;
        (job.lease_id, job.lease_worker) = lease;
        job.lease_until = Some(until);
        job.stage = r.stage.clone().or(job.stage);
        job.step = r.step.clone().or(job.step);
        job.step_index = r.step_index.or(job.step_index);
        job.message = r.message.clone().or(job.message);
        job.percent = r.percent.or(job.percent);
        job.updated_at = self.now;
        // A report that says nothing about progress is a heartbeat (or a log
        // batch): it extends the lease but is no `job.progress` event, so a
        // long quiet step does not fill the timeline and the streams.
        let says_something = r.stage.is_some()
            || r.step.is_some()
            || r.step_index.is_some()
            || r.message.is_some()
            || r.percent.is_some();
        if says_something {
            let payload = json!({"stage": r.stage, "step": r.step, "stepIndex": r.step_index,
                                 "message": r.message, "percent": r.percent, "leaseUntil": rfc3339(until)});
            self.append(
                tenant,
                &job.run_id,
                Some(job_id),
                types::JOB_PROGRESS,
                payload,
            )
            .await?;
        }
        let blocked = match &r.blocked {
            BlockedChange::Unchanged => None,
            BlockedChange::Set(reason) => Some(Some(reason.clone())),
            BlockedChange::Clear => Some(None),
        };
        if let Some(reason) = blocked {
            if reason != job.blocked_reason {
                let payload = json!({"blocked": reason.is_some(), "reason": reason});
                job.blocked_reason = reason;
                self.append(
                    tenant,
                    &job.run_id,
                    Some(job_id),
                    types::JOB_BLOCKED,
                    payload,
                )
                .await?;
            }
        }
        if !r.log.is_empty() {
            let first = job.log_lines + 1;
            let lines: Vec<Value> = r
                .log
                .iter()
                .enumerate()
                .map(|(i, l)| json!({"lineNo": first + i as i64, "stream": l.stream, "line": l.line}))
                .collect();
            job.log_lines += r.log.len() as i64;
            let payload = json!({"stepIndex": job.step_index, "lines": lines});
            self.append(tenant, &job.run_id, Some(job_id), types::LOG, payload)
                .await?;
        }
        self.settle(job).await
    }

    async fn complete(
        &mut self,
        tenant: &str,
        job_id: &str,
        done: &Completion,
    ) -> StoreResult<JobRecord> {
        let mut job = self.leased_job(tenant, job_id, &done.lease_id).await?;
        job.result = done.result.as_ref().map(Value::to_string);
        job.percent = Some(100.0);
        let mut artifacts = Vec::new();
        for a in &done.artifacts {
            let record = ArtifactRecord {
                tenant_id: tenant.to_owned(),
                job_id: job_id.to_owned(),
                run_id: job.run_id.clone(),
                name: a.name.clone(),
                size: a.size as i64,
                sha256: a.sha256.clone(),
                content_type: a.content_type.clone(),
                path: a.path.clone(),
                created_at: self.now,
                content: a.content.clone(),
            };
            self.pending.artifacts.push(record);
            artifacts.push(a.event_json(job_id));
        }
        self.finish_step(&mut job, "succeeded", None).await?;
        // One `artifact.created` per stored artifact, before `job.done`
        // ends the job's streams (SPEC §6).
        for a in &done.artifacts {
            let payload = crate::artifacts::metadata_json(
                job_id,
                &a.name,
                a.size,
                &a.sha256,
                &a.content_type,
            );
            self.append(
                tenant,
                &job.run_id,
                Some(job_id),
                types::ARTIFACT_CREATED,
                payload,
            )
            .await?;
        }
        let mut payload = json!({"result": done.result.clone().unwrap_or(Value::Null)});
        if !artifacts.is_empty() {
            payload["artifacts"] = Value::Array(artifacts);
        }
        self.transition(&mut job, JobState::Done, payload).await?;
        self.settle(job).await
    }

    async fn fail(&mut self, tenant: &str, job_id: &str, f: &Failure) -> StoreResult<JobRecord> {
        let mut job = self.leased_job(tenant, job_id, &f.lease_id).await?;
        let error = (f.code.as_str(), f.message.as_str());
        self.fail_or_retry(&mut job, f.retryable, error, f.log_range, f.exit_code)
            .await?;
        self.settle(job).await
    }

    /// Requeue or fail every job whose lease ended before `now`.
    async fn sweep(&mut self, now: i64) -> StoreResult<usize> {
        let expired = self.tx.expired_jobs(now, 500).await?;
        for job in &expired {
            self.pending.saw(job);
        }
        for mut job in expired.iter().cloned() {
            let message = format!(
                "lease held by {} expired",
                job.lease_worker.as_deref().unwrap_or("a worker")
            );
            let error = ("lease_expired", message.as_str());
            self.fail_or_retry(&mut job, true, error, None, None)
                .await?;
            self.put_job(&job);
            self.refresh_run(&job.tenant_id, &job.run_id).await?;
        }
        Ok(expired.len())
    }

    /// The job, if `lease_id` is its current lease and it is still running.
    async fn leased_job(
        &mut self,
        tenant: &str,
        job_id: &str,
        lease_id: &str,
    ) -> StoreResult<JobRecord> {
        let job = self.job(tenant, job_id).await?;
        let running = matches!(job.job_state(), JobState::Loading | JobState::Working);
        if !running || job.lease_id.as_deref() != Some(lease_id) {
            return Err(StoreError::LeaseLost);
        }
        Ok(job)
    }

    /// The end of every job write: save the job, re-derive its run.
    async fn settle(&mut self, job: JobRecord) -> StoreResult<JobRecord> {
        self.put_job(&job);
        self.refresh_run(&job.tenant_id, &job.run_id).await?;
        Ok(job)
    }

    /// Move a job to `to`, clearing its lease, and append the state event.
    async fn transition(
        &mut self,
        job: &mut JobRecord,
        to: JobState,
        extra: Value,
    ) -> StoreResult<()> {
        let previous = std::mem::replace(&mut job.state, to.as_str().to_owned());
        job.lease_id = None;
        job.lease_worker = None;
        job.lease_until = None;
        job.updated_at = self.now;
        job.state_changed_at = self.now;
        if to.is_terminal() || to == JobState::Queued {
            // Whatever blocked the job (a worker's reason, a wait) is over:
            // it ended, or waits afresh in the queue.
            self.unblock(job).await?;
        }
        if to.is_terminal() {
            job.finished_at = Some(self.now);
        }
        if let (JobState::Done, Some(started)) = (to, job.started_at) {
            self.committed.history.push(HistoryFact::Succeeded {
                tenant: job.tenant_id.clone(),
                pack: job.pack.clone(),
                sample: (job.job_id.clone(), self.now, self.now - started),
            });
        }
        let mut payload =
            json!({"state": to.as_str(), "previousState": previous, "attempt": job.attempt});
        if let (Value::Object(p), Value::Object(e)) = (&mut payload, extra) {
            p.extend(e);
        }
        if to == JobState::Queued {
            let queued = (job.tenant_id.clone(), job.pack.clone());
            self.committed.queued.push(queued);
        }
        let ty = match to {
            JobState::Queued => types::JOB_QUEUED,
            JobState::Loading => types::JOB_LOADING,
            JobState::Working => types::JOB_WORKING,
            JobState::Done => types::JOB_DONE,
            JobState::Failed => types::JOB_FAILED,
            JobState::Canceled => types::JOB_CANCELED,
        };
        self.webhook(job, to.as_str(), Some(&previous), job.attempt, &payload)
            .await?;
        let (tenant, run) = (job.tenant_id.clone(), job.run_id.clone());
        self.append(&tenant, &run, Some(&job.job_id), ty, payload)
            .await?;
        Ok(())
    }

    /// Flag a queued job blocked with `reason`, or clear the flag (`None`):
    /// event `job.blocked` (`{"blocked","reason"}`) and the run's signal
    /// (SPEC §4.1 rule 3). Only queued jobs: one taken meanwhile is left
    /// alone (its lease cleared the flag). Returns whether anything changed.
    async fn set_blocked(
        &mut self,
        tenant: &str,
        job_id: &str,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        let mut job = self.job(tenant, job_id).await?;
        if job.job_state() != JobState::Queued || job.blocked_reason.as_deref() == reason {
            return Ok(false);
        }
        job.blocked_reason = reason.map(str::to_owned);
        job.updated_at = self.now;
        self.put_job(&job);
        let payload = json!({"blocked": reason.is_some(), "reason": reason});
        self.append(
            tenant,
            &job.run_id,
            Some(job_id),
            types::JOB_BLOCKED,
            payload,
        )
        .await?;
        self.refresh_run(tenant, &job.run_id).await?;
        Ok(true)
    }

    /// Clear a job's blocked flag as part of a transition (taken, requeued,
    /// ended), with its `job.blocked` `{"blocked": false}` event, so that
    /// timeline readers see the flag go as they saw it come.
    async fn unblock(&mut self, job: &mut JobRecord) -> StoreResult<()> {
        if job.blocked_reason.take().is_none() {
            return Ok(());
        }
        let payload = json!({"blocked": false, "reason": null});
        let (tenant, run) = (job.tenant_id.clone(), job.run_id.clone());
        self.append(
            &tenant,
            &run,
            Some(&job.job_id),
            types::JOB_BLOCKED,
            payload,
        )
        .await?;
        Ok(())
    }

    /// Queue the state webhook of a job that has a `state_webhook_url`, in
    /// this transaction: the outbox row commits with the transition or not
    /// at all (SPEC §7.2). `event` is the state event's payload.
    async fn webhook(
        &mut self,
        job: &JobRecord,
        state: &str,
        previous: Option<&str>,
        attempt: i64,
        event: &Value,
    ) -> StoreResult<()> {
        let change = crate::webhooks::body::StateChange {
            state,
            previous,
            attempt,
            at_ms: self.now,
            event,
        };
        if let Some(delivery) = crate::webhooks::body::delivery(job, &change) {
            self.tx.insert_delivery(&delivery).await?;
            self.committed.webhooks = true;
        }
        Ok(())
    }

    /// Close the job's running step, if one is running (`step.finished`).
    async fn finish_step(
        &mut self,
        job: &mut JobRecord,
        status: &str,
        exit_code: Option<i64>,
    ) -> StoreResult<()> {
        let (Some(index), Some(started)) = (job.step_index, job.step_started_at.take()) else {
            return Ok(());
        };
        let payload = json!({"stepIndex": index, "stepName": job.step, "status": status, "exitCode": exit_code,
                             "startedAt": rfc3339(started), "finishedAt": rfc3339(self.now)});
        let (tenant, run) = (job.tenant_id.clone(), job.run_id.clone());
        self.append(
            &tenant,
            &run,
            Some(&job.job_id),
            types::STEP_FINISHED,
            payload,
        )
        .await?;
        Ok(())
    }

    /// Start step `index` (`step.started`), closing the previous one as succeeded.
    async fn start_step(
        &mut self,
        job: &mut JobRecord,
        index: i64,
        name: Option<&str>,
    ) -> StoreResult<()> {
        self.finish_step(job, "succeeded", None).await?;
        job.step_started_at = Some(self.now);
        // A worker that names no step gets the pack file's name for it.
        let declared = usize::try_from(index)
            .ok()
            .and_then(|i| self.declared.of(&job.pack).get(i));
        let name = name.or(declared.map(String::as_str));
        let payload = json!({"stepIndex": index, "stepName": name, "status": "running", "exitCode": null,
                             "startedAt": rfc3339(self.now), "finishedAt": null});
        let (tenant, run) = (job.tenant_id.clone(), job.run_id.clone());
        self.append(
            &tenant,
            &run,
            Some(&job.job_id),
            types::STEP_STARTED,
            payload,
        )
        .await?;
        Ok(())
    }

    /// The job ends failed or canceled: every declared step after `reached`
    /// (the step running when it ended; `None`: this attempt started no
    /// step, so all of them) is reported once as `step.finished` with status
    /// `skipped` (SPEC §5.1, ADR 0029), before the terminal state event.
    async fn skip_after(&mut self, job: &JobRecord, reached: Option<i64>) -> StoreResult<()> {
        let first = reached.map_or(0, |r| usize::try_from(r).map_or(0, |r| r + 1));
        let declared = self.declared;
        let (tenant, run) = (job.tenant_id.clone(), job.run_id.clone());
        for (index, name) in declared.of(&job.pack).iter().enumerate().skip(first) {
            let payload = json!({"stepIndex": index, "stepName": name, "status": "skipped",
                                 "exitCode": null, "startedAt": null, "finishedAt": null});
            self.append(
                &tenant,
                &run,
                Some(&job.job_id),
                types::STEP_FINISHED,
                payload,
            )
            .await?;
        }
        Ok(())
    }

    /// A failure with attempts left requeues the job; otherwise it fails.
    async fn fail_or_retry(
        &mut self,
        job: &mut JobRecord,
        retryable: bool,
        (code, message): (&str, &str),
        range: Option<(i64, i64)>,
        exit_code: Option<i64>,
    ) -> StoreResult<()> {
        // The step running now (this attempt's), before it is closed.
        let reached = job.step_started_at.and(job.step_index);
        self.finish_step(job, "failed", exit_code).await?;
        let error = json!({"code": code, "message": message});
        if retryable && job.attempt < job.max_attempts {
            let payload =
                json!({"attempt": job.attempt, "maxAttempts": job.max_attempts, "error": error});
            let (tenant, run) = (job.tenant_id.clone(), job.run_id.clone());
            self.append(
                &tenant,
                &run,
                Some(&job.job_id),
                types::JOB_RETRY_SCHEDULED,
                payload,
            )
            .await?;
            return self.transition(job, JobState::Queued, json!({})).await;
        }
        job.error_code = Some(code.to_owned());
        job.error_message = Some(message.to_owned());
        job.failure_start = range.map(|r| r.0);
        job.failure_end = range.map(|r| r.1);
        self.skip_after(job, reached).await?;
        self.transition(job, JobState::Failed, json!({"error": error}))
            .await
    }
}

/// Seconds the deciding job has left: the median duration of the pack's
/// last successful jobs (from lease to done) minus the time it has run, at
/// least 0, rounded up; `None` once it ended or without enough history.
fn eta_seconds(job: &JobRecord, history: &PackRecord, now: i64) -> Option<i64> {
    if job.job_state().is_terminal() {
        return None;
    }
    let median = history.median_ms()?;
    // A job queued again (a requeue) has not started this attempt yet.
    let elapsed = match job.job_state() {
        JobState::Queued => 0,
        _ => job.started_at.map_or(0, |s| (now - s).max(0)),
    };
    Some(((median - elapsed).max(0) + 999) / 1000)
}

/// The job surface's routes are unprefixed; the job stream is under the
/// first API prefix (both serve it, SPEC §2).
const STREAM_PREFIX: &str = "/api/v1/orchestrator";

/// `nextActions` of a signal decided by `job` (SPEC §4.3), in SPEC's
/// order: cancel, view_logs, retry, then downloads by name.
fn next_actions(job: &JobRecord, artifacts: &[String]) -> Value {
    let id = &job.job_id;
    let action = |action: &str, label: &str, method: &str, href: String| json!({"action": action, "label": label, "method": method, "href": href});
    let state = job.job_state();
    let mut actions = Vec::new();
    if !state.is_terminal() {
        actions.push(action(
            "cancel",
            "Cancel",
            "POST",
            format!("/jobs/{id}/cancel"),
        ));
    }
    let logs = format!("{STREAM_PREFIX}/stream/jobs/{id}");
    actions.push(action("view_logs", "View logs", "GET", logs));
    if matches!(state, JobState::Failed | JobState::Canceled) {
        actions.push(action(
            "retry",
            "Retry",
            "POST",
            format!("/jobs/{id}/retry"),
        ));
    }
    for name in artifacts {
        let label = format!("Download {name}");
        let href = format!("/jobs/{id}/artifacts/{name}");
        actions.push(action("download_artifact", &label, "GET", href));
    }
    Value::Array(actions)
}

/// Run status from its jobs: pending, running, or the terminal outcome.
fn run_status(jobs: &[JobRecord]) -> &'static str {
    let states: Vec<JobState> = jobs.iter().map(JobRecord::job_state).collect();
    if states.is_empty() {
        "pending"
    } else if states.iter().any(|s| !s.is_terminal()) {
        "running"
    } else if states.contains(&JobState::Failed) {
        "failed"
    } else if states.contains(&JobState::Canceled) {
        "canceled"
    } else {
        "succeeded"
    }
}

/// A lease id: 128 bits from the OS RNG, hex (SPEC §11). Never derived from
/// an event id or a clock: a reader of the timeline must not be able to guess
/// the lease and forge a worker's report.
pub fn random_lease_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    hex::encode(bytes)
}

/// What a retried submit changed, if anything: the same key with another
/// pack, inputs, webhook or run is a different request, not a retry.
fn differs(job: &JobRecord, new: &NewJob) -> Option<&'static str> {
    let inputs: serde_json::Value = serde_json::from_str(&job.inputs).unwrap_or_default();
    if job.pack != new.pack {
        Some("pack")
    } else if inputs != new.inputs {
        Some("inputs")
    } else if job.webhook_url != new.webhook_url {
        Some("state_webhook_url")
    } else if new.run_id.as_ref().is_some_and(|r| *r != job.run_id) {
        Some("run_id")
    } else {
        None
    }
}
