//! The built-in executor (SPEC §7.1): runs the jobs of `builtin` packs of
//! every tenant, in-process, at most `Executor.MaxConcurrentJobs` at a time.
//!
//! It is a worker like any remote one: it leases through the store (worker
//! id [`WORKER_ID`]) and then only reports progress, completes or fails with
//! its lease id, publishing every write through the engine. Events, signals,
//! step events and webhooks therefore behave exactly as for remote workers.
//! Slots go round robin across tenants ([`turns`]). See
//! docs/adr/0018-built-in-executor.md and 0025.

mod job;
mod step;
mod turns;

use std::sync::Arc;
use std::time::Duration;

use runsignal_actors::new_ulid;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::store::LeaseRequest;
use crate::AppState;
use turns::Turns;

/// The worker id the built-in executor leases under, on one node.
pub const WORKER_ID: &str = "builtin";

/// The worker id this node's executor leases under: `builtin` on one node
/// (a restart takes back what the previous process held), `builtin@<node>`
/// when several nodes share the database (a starting node must not take
/// what a live one runs; a dead node's leases run out and any node's sweeper
/// requeues them, ADR 0037).
pub fn worker_id(state: &AppState) -> String {
    if state.config.messaging.transport == "inmemory" {
        WORKER_ID.to_owned()
    } else {
        format!("{WORKER_ID}@{}", state.node_id)
    }
}
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
    // Shared with the blocked check, which tells "waiting for an executor
    // slot" by it (src/blocked.rs).
    let slots = state.demand.slots();
    // Each running job sends its tenant back when it gives its slot up
    // (from `Drop`, so a panicking job does too). At most `max` slots are
    // out and the loop drains the channel before it leases, so `max`
    // messages never block a sender.
    let (freed_tx, mut freed) = mpsc::channel::<String>(max.max(1));
    let mut turns = Turns::default();
    loop {
        // Register interest before looking, so a job queued in between
        // wakes us; only jobs of built-in packs do.
        let queued = state.engine.queued.interest(None, &packs);
        while let Ok(tenant) = freed.try_recv() {
            turns.finished(&tenant);
        }
        let free = slots.available_permits();
        if free > 0 {
            start_jobs(&state, &packs, free, &slots, &freed_tx, &mut turns).await;
        }
        tokio::select! {
            _ = queued.wait() => {}
            Some(tenant) = freed.recv() => turns.finished(&tenant),
            _ = tokio::time::sleep(IDLE_TICK) => {}
        }
    }
}

/// Fill up to `free` slots, one lease at a time, each for the tenant whose
/// turn it is ([`Turns::pick`]).
async fn start_jobs(
    state: &Arc<AppState>,
    packs: &[String],
    free: usize,
    slots: &Arc<Semaphore>,
    freed: &mpsc::Sender<String>,
    turns: &mut Turns,
) {
    let mut queued = match state.store.queued_tenants(packs).await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "built-in executor: reading queued jobs failed");
            return;
        }
    };
    turns.prune(&queued);
    let mut started = 0;
    while started < free {
        let Some(i) = turns.pick(&queued) else {
            return;
        };
        let tenant = queued[i].0.clone();
        let req = LeaseRequest {
            worker_id: worker_id(state),
            packs: packs.to_vec(),
            max: 1,
            lease_seconds: LEASE_SECONDS,
            correlation_id: new_ulid(),
        };
        let leased = match state.store.lease_jobs(&tenant, &req).await {
            Ok(leased) => leased,
            Err(e) => {
                tracing::warn!(error = %e, "built-in executor lease failed");
                return;
            }
        };
        let Some(leased) = leased.into_iter().next() else {
            // Taken meanwhile (another node, a cancel): skip the tenant.
            queued.swap_remove(i);
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Cannot happen: the loop alone takes permits, at most `free`.
            tracing::error!(job = %leased.job_id, "no free executor slot");
            return;
        };
        turns.started(&tenant);
        started += 1;
        let slot = Slot {
            tenant: tenant.clone(),
            freed: freed.clone(),
            _permit: permit,
        };
        let state = state.clone();
        actix_rt::spawn(async move {
            job::run(state, tenant, leased).await;
            drop(slot);
        });
    }
}

/// A running job's slot: gives the permit back and tells the loop whose it was.
struct Slot {
    tenant: String,
    freed: mpsc::Sender<String>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Never full (see `run`); if the loop is gone, nobody needs to know.
        let _ = self.freed.try_send(std::mem::take(&mut self.tenant));
    }
}

/// After a restart (possibly `kill -9`), jobs this executor held died with
/// the old process: end their leases now and sweep, so they are requeued
/// (attempts left) or failed `lease_expired` instead of staying `working`.
async fn recover(state: &Arc<AppState>) {
    if state.config.messaging.transport != "inmemory" {
        // Several nodes: this node's id is new, it holds nothing yet.
        return;
    }
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
