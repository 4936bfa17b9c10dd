//! The writes, by concern, as handlers and tasks call them: each is one
//! [`Cmd`] through the group-commit writer, answered after its commit (and
//! after its events were published).

use runsignal_actors::RunKey;

use super::writer::{Cmd, Done};
use super::*;

/// The writer answered a command with another command's outcome: cannot
/// happen (`lifecycle::apply` maps each command to one outcome), reported
/// as an error rather than a panic.
fn mismatch() -> StoreError {
    StoreError::Unavailable("the writer answered with an unexpected outcome".into())
}

macro_rules! expect_done {
    ($call:expr, $pat:pat => $out:expr) => {
        match $call.await? {
            $pat => Ok($out),
            _ => Err(mismatch()),
        }
    };
}

/// Runs.
impl Store {
    pub async fn create_run(&self, tenant: &str, new: NewRun) -> StoreResult<RunRecord> {
        let cmd = Cmd::CreateRun {
            tenant: tenant.to_owned(),
            new,
        };
        expect_done!(self.call(cmd), Done::Run(run) => run)
    }
}

/// Jobs and leases.
impl Store {
    /// Submit a job; `created` is false when the idempotency key matched.
    pub async fn submit_job(&self, tenant: &str, new: NewJob) -> StoreResult<(JobRecord, bool)> {
        let cmd = Cmd::Submit {
            tenant: tenant.to_owned(),
            new,
        };
        expect_done!(self.call(cmd), Done::Submitted(job, created) => (job, created))
    }

    pub async fn cancel_job(
        &self,
        tenant: &str,
        job_id: &str,
        correlation_id: &str,
    ) -> StoreResult<JobRecord> {
        let cmd = Cmd::Cancel {
            tenant: tenant.to_owned(),
            job_id: job_id.to_owned(),
            correlation_id: correlation_id.to_owned(),
        };
        expect_done!(self.call(cmd), Done::Job(job) => job)
    }

    /// A new job of the same pack, inputs and webhook in the same run as a
    /// failed or canceled one, with `retry_of` naming it.
    pub async fn retry_job(
        &self,
        tenant: &str,
        job_id: &str,
        correlation_id: &str,
    ) -> StoreResult<JobRecord> {
        let cmd = Cmd::Retry {
            tenant: tenant.to_owned(),
            job_id: job_id.to_owned(),
            correlation_id: correlation_id.to_owned(),
        };
        expect_done!(self.call(cmd), Done::Job(job) => job)
    }

    pub async fn lease_jobs(
        &self,
        tenant: &str,
        req: &LeaseRequest,
    ) -> StoreResult<Vec<LeasedJob>> {
        let cmd = Cmd::Lease {
            tenant: Some(tenant.to_owned()),
            req: req.clone(),
        };
        expect_done!(self.call(cmd), Done::Leased(jobs) => jobs.into_iter().map(|(_, j)| j).collect())
    }

    /// The built-in executor's lease: like [`Store::lease_jobs`] but across
    /// all tenants; each leased job comes with its tenant. A cheap read
    /// first, so an idle executor neither queues a write nor counts as a
    /// store call.
    pub async fn lease_any_tenant(
        &self,
        req: &LeaseRequest,
    ) -> StoreResult<Vec<(String, LeasedJob)>> {
        if !self.backend.any_queued(&req.packs).await? {
            return Ok(Vec::new());
        }
        let cmd = Cmd::Lease {
            tenant: None,
            req: req.clone(),
        };
        expect_done!(self.call(cmd), Done::Leased(jobs) => jobs)
    }

    /// The built-in executor's look before a lease: each tenant with queued
    /// jobs of `packs` and its oldest one. Like [`Store::lease_any_tenant`]'s
    /// look, not counted as a store call.
    pub async fn queued_tenants(&self, packs: &[String]) -> StoreResult<Vec<(String, String)>> {
        self.backend.queued_tenants(packs).await
    }

    /// Restart recovery: end now the leases `worker_id` holds so the sweeper
    /// requeues or fails them. Returns how many.
    pub async fn expire_worker_leases(&self, worker_id: &str) -> StoreResult<u64> {
        let cmd = Cmd::ExpireWorkerLeases {
            worker_id: worker_id.to_owned(),
        };
        expect_done!(self.call(cmd), Done::Count(n) => n)
    }

    pub async fn report_progress(
        &self,
        tenant: &str,
        job_id: &str,
        report: &ProgressReport,
    ) -> StoreResult<JobRecord> {
        let cmd = Cmd::Progress {
            tenant: tenant.to_owned(),
            job_id: job_id.to_owned(),
            report: report.clone(),
        };
        expect_done!(self.call(cmd), Done::Job(job) => job)
    }

    pub async fn complete_job(
        &self,
        tenant: &str,
        job_id: &str,
        done: &Completion,
    ) -> StoreResult<JobRecord> {
        let cmd = Cmd::Complete {
            tenant: tenant.to_owned(),
            job_id: job_id.to_owned(),
            done: done.clone(),
        };
        expect_done!(self.call(cmd), Done::Job(job) => job)
    }

    pub async fn fail_job(
        &self,
        tenant: &str,
        job_id: &str,
        failure: &Failure,
    ) -> StoreResult<JobRecord> {
        let cmd = Cmd::Fail {
            tenant: tenant.to_owned(),
            job_id: job_id.to_owned(),
            failure: failure.clone(),
        };
        expect_done!(self.call(cmd), Done::Job(job) => job)
    }

    /// Flag a queued job blocked with `reason`, or clear the flag (`None`);
    /// a job no longer queued is left alone. Returns whether it changed.
    pub async fn set_blocked(
        &self,
        tenant: &str,
        job_id: &str,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        let cmd = Cmd::SetBlocked {
            tenant: tenant.to_owned(),
            job_id: job_id.to_owned(),
            reason: reason.map(str::to_owned),
        };
        expect_done!(self.call(cmd), Done::Count(n) => n > 0)
    }

    /// The blocked check's look: queued jobs waiting since `cutoff_ms` or
    /// flagged blocked. Like [`Store::queued_tenants`], a background look
    /// that is not counted as a store call.
    pub async fn queued_since(
        &self,
        cutoff_ms: i64,
        after_job_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<JobRecord>> {
        self.backend
            .queued_since(cutoff_ms, after_job_id, limit)
            .await
    }

    /// Requeue or fail every job whose lease ended before `now_ms`.
    pub async fn sweep_expired_leases(&self, now_ms: i64) -> StoreResult<usize> {
        expect_done!(self.call(Cmd::SweepLeases { now_ms }), Done::Count(n) => n as usize)
    }
}

/// The webhook outbox.
impl Store {
    /// Claim up to `limit` due deliveries, shared between tenants as
    /// `share` says.
    pub async fn claim_webhooks(
        &self,
        now_ms: i64,
        limit: u32,
        share: &ClaimShare,
    ) -> StoreResult<Vec<WebhookDelivery>> {
        let cmd = Cmd::ClaimWebhooks {
            now_ms,
            limit,
            share: share.clone(),
        };
        expect_done!(self.call(cmd), Done::Claimed(d) => d)
    }

    /// Record how an attempt ended.
    pub async fn finish_webhook(&self, id: i64, outcome: &WebhookOutcome) -> StoreResult<()> {
        let cmd = Cmd::FinishWebhook {
            id,
            outcome: outcome.clone(),
        };
        expect_done!(self.call(cmd), Done::Unit => ())
    }

    /// Deliveries left `sending` by a crash go back to `pending`, due
    /// `now_ms`: all of them (this was the only node), or `only_expired`,
    /// those whose claim ran out by `now_ms` (a dead node's, several nodes).
    pub async fn reset_sending_webhooks(
        &self,
        now_ms: i64,
        only_expired: bool,
    ) -> StoreResult<u64> {
        let cmd = Cmd::ResetSendingWebhooks {
            now_ms,
            only_expired,
        };
        expect_done!(self.call(cmd), Done::Count(n) => n)
    }
}

/// Prune.
impl Store {
    /// Delete up to `limit` runs whose jobs are all terminal and finished
    /// before `cutoff_ms`, with their jobs, events, deliveries, snapshots and
    /// artifact rows. Returns the runs and the artifact files, which the
    /// caller deletes (after the commit, so a failed prune deletes nothing).
    pub async fn prune(
        &self,
        cutoff_ms: i64,
        limit: u32,
    ) -> StoreResult<(Vec<RunKey>, Vec<String>)> {
        expect_done!(self.call(Cmd::Prune { cutoff_ms, limit }), Done::Pruned(runs, files) => (runs, files))
    }
}

impl Store {
    async fn call(&self, cmd: Cmd) -> StoreResult<Done> {
        self.queries.hit();
        self.writer.call(cmd).await
    }
}
