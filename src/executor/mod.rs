//! The built-in executor (SPEC §7.1): runs the jobs of `builtin` packs of
//! every tenant, in-process, at most `Executor.MaxConcurrentJobs` at a time.
//!
//! It is a worker like any remote one: it leases through the store (worker
//! id [`WORKER_ID`]) and then only reports progress, completes or fails with
//! its lease id, publishing every write through the engine. Events, signals,
//! step events and webhooks therefore behave exactly as for remote workers.
//! See docs/adr/0018-built-in-executor.md.

mod job;
mod step;

use std::sync::Arc;
use std::time::Duration;

use runsignal_actors::new_ulid;
use tokio::sync::{Notify, Semaphore};

use crate::store::LeaseRequest;
use crate::AppState;

/// The worker id the built-in executor leases under.
pub const WORKER_ID: &str = "builtin";
/// Lease length; heartbeats every second keep extending it.
pub const LEASE_SECONDS: u32 = 30;
/// When nothing wakes it, the executor looks for work this often.
const IDLE_TICK: Duration = Duration::from_secs(5);

/// Recover from a previous process, then run the leasing loop forever.
pub async fn run(state: Arc<AppState>) {
    let packs = state.packs.builtin();
    recover(&state).await;
    if packs.is_empty() {
        tracing::debug!("no builtin packs declared: the built-in executor is idle");
        return;
    }
    let max = state.config.executor.max_concurrent_jobs;
    let slots = Arc::new(Semaphore::new(max));
    let freed = Arc::new(Notify::new());
    loop {
        // Register interest before looking, so a job queued in between
        // wakes us; only jobs of built-in packs do.
        let queued = state.engine.queued.interest(None, &packs);
        let free = slots.available_permits();
        if free > 0 {
            let req = LeaseRequest {
                worker_id: WORKER_ID.to_owned(),
                packs: packs.clone(),
                max: free as u32,
                lease_seconds: LEASE_SECONDS,
                correlation_id: new_ulid(),
            };
            match state.store.lease_any_tenant(&req).await {
                Ok(leased_jobs) => {
                    for (tenant, leased) in leased_jobs {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            // Cannot happen: we leased at most `free`.
                            tracing::error!(job = %leased.job_id, "no free executor slot");
                            break;
                        };
                        let (state, freed) = (state.clone(), freed.clone());
                        actix_rt::spawn(async move {
                            job::run(state, tenant, leased).await;
                            drop(permit);
                            freed.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "built-in executor lease failed"),
            }
        }
        tokio::select! {
            _ = queued.wait() => {}
            _ = freed.notified() => {}
            _ = tokio::time::sleep(IDLE_TICK) => {}
        }
    }
}

/// After a restart (possibly `kill -9`), jobs this executor held died with
/// the old process: end their leases now and sweep, so they are requeued
/// (attempts left) or failed `lease_expired` instead of staying `working`.
async fn recover(state: &Arc<AppState>) {
    match state.store.expire_worker_leases(WORKER_ID).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                jobs = n,
                "built-in jobs of a previous process: leases expired"
            );
            crate::tasks::sweep_leases(state.clone()).await;
        }
        Err(e) => tracing::warn!(error = %e, "expiring built-in leases failed"),
    }
}
