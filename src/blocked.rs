//! Blocked while queued (SPEC §3, §4.1 rule 3; ADR 0031): who could take
//! a queued job now, and the periodic check that flags the jobs nobody can
//! take as blocked, with a reason the signal shows, and clears the flag
//! when that changes.
//!
//! - A remote pack's job is "waiting for a worker" when no worker has asked
//!   this node for its pack, in its tenant, for `Jobs.BlockedAfterSeconds`
//!   (a lease request, long-polling or not, asks for as long as it is open).
//! - A built-in pack's job is "waiting for an executor slot" when it has
//!   waited that long and every slot of `Executor.MaxConcurrentJobs` is
//!   taken.
//!
//! A lease takes the flag off in its own transaction (`job.blocked` with
//! `blocked: false` before `job.loading`), so "cleared when it is taken"
//! needs no check, and the check never clears a flag by itself: with
//! several nodes, each judging by its own workers, a node whose worker asks
//! but is full would clear what another node set, and the flag would flip
//! at every tick. What workers asked for is kept in memory, per node: a
//! restart forgets it and counts from the start of the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::packs::ExecutorKind;
use crate::store::now_ms;
use crate::AppState;

pub const WAITING_FOR_A_WORKER: &str = "waiting for a worker";
pub const WAITING_FOR_A_SLOT: &str = "waiting for an executor slot";
/// Queued jobs read per page; a check pages through all of them.
const CHECK_PAGE: u32 = 1000;

/// What could take a queued job on this node: workers asking for packs,
/// and the built-in executor's slots.
pub struct Demand {
    started: Instant,
    /// Per (tenant, pack): open lease requests and when the last one ended.
    /// A `std` mutex: held for a map operation, never across an `.await`.
    asks: Mutex<HashMap<(String, String), Asks>>,
    /// The built-in executor's slots (it takes a permit per running job).
    slots: Arc<Semaphore>,
}

#[derive(Clone, Copy)]
struct Asks {
    open: u32,
    last: Instant,
}

impl Demand {
    pub fn new(executor_slots: usize) -> Demand {
        Demand {
            started: Instant::now(),
            asks: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(executor_slots)),
        }
    }

    /// The built-in executor's slots.
    pub fn slots(&self) -> Arc<Semaphore> {
        self.slots.clone()
    }

    /// A worker asks for `packs` of `tenant` until the guard is dropped
    /// (the lease request answered, or its client gone).
    pub fn asking(self: &Arc<Self>, tenant: &str, packs: &[String]) -> Asking {
        let keys: Vec<(String, String)> = packs
            .iter()
            .map(|p| (tenant.to_owned(), p.clone()))
            .collect();
        let now = Instant::now();
        let mut asks = self.lock();
        for key in &keys {
            let e = asks
                .entry(key.clone())
                .or_insert(Asks { open: 0, last: now });
            e.open += 1;
            e.last = now;
        }
        Asking {
            demand: self.clone(),
            keys,
        }
    }

    /// How long no worker has asked for `pack` of `tenant` (zero while one
    /// is asking); counted from the start of the process at most.
    fn unasked_for(&self, tenant: &str, pack: &str, now: Instant) -> Duration {
        let key = (tenant.to_owned(), pack.to_owned());
        match self.lock().get(&key) {
            Some(a) if a.open > 0 => Duration::ZERO,
            Some(a) => now.saturating_duration_since(a.last),
            None => now.saturating_duration_since(self.started),
        }
    }

    /// Forget packs nobody has asked for in `age`: they read as never
    /// asked for, which is the same answer (keeps the map to active workers).
    fn forget_older_than(&self, age: Duration, now: Instant) {
        self.lock()
            .retain(|_, a| a.open > 0 || now.saturating_duration_since(a.last) < age);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Asks>> {
        // A panic while holding it leaves a plain map behind: still usable.
        self.asks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open lease request's interest in its packs (see [`Demand::asking`]).
pub struct Asking {
    demand: Arc<Demand>,
    keys: Vec<(String, String)>,
}

impl Drop for Asking {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut asks = self.demand.lock();
        for key in &self.keys {
            if let Some(a) = asks.get_mut(key) {
                a.open = a.open.saturating_sub(1);
                a.last = now;
            }
        }
    }
}

/// How often the check runs: half the threshold, between 1 and 15 s.
pub fn check_interval(blocked_after_seconds: u64) -> Duration {
    Duration::from_secs((blocked_after_seconds / 2).clamp(1, 15))
}

/// One check: flag or clear the blocked reason of every queued job that
/// has waited `Jobs.BlockedAfterSeconds` (or is flagged).
pub async fn check(state: Arc<AppState>) {
    let threshold = Duration::from_secs(state.config.jobs.blocked_after_seconds);
    let cutoff = now_ms() - threshold.as_millis() as i64;
    let now = Instant::now();
    let mut after = String::new();
    loop {
        let jobs = match state.store.queued_since(cutoff, &after, CHECK_PAGE).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "blocked check: reading queued jobs failed");
                break;
            }
        };
        let full = jobs.len() as u32 >= CHECK_PAGE;
        if let Some(last) = jobs.last() {
            after = last.job_id.clone();
        }
        flag(&state, jobs, cutoff, threshold, now).await;
        if !full {
            break;
        }
    }
    state.demand.forget_older_than(threshold, now);
}

/// Flag each job nobody can take now (or change its reason).
async fn flag(
    state: &AppState,
    jobs: Vec<crate::store::JobRecord>,
    cutoff: i64,
    after: Duration,
    now: Instant,
) {
    for job in jobs {
        let waited = job.state_changed_at <= cutoff;
        let reason = match state.packs.get(&job.pack).map(|p| p.executor) {
            _ if !waited => None,
            Some(ExecutorKind::Builtin) => {
                (state.demand.slots.available_permits() == 0).then_some(WAITING_FOR_A_SLOT)
            }
            Some(ExecutorKind::Remote) => {
                (state.demand.unasked_for(&job.tenant_id, &job.pack, now) >= after)
                    .then_some(WAITING_FOR_A_WORKER)
            }
            // A pack no longer declared: nobody will take it.
            None => Some(WAITING_FOR_A_WORKER),
        };
        // Only a lease clears a flag (see the module doc).
        if reason.is_none() || job.blocked_reason.as_deref() == reason {
            continue;
        }
        if let Err(e) = state
            .store
            .set_blocked(&job.tenant_id, &job.job_id, reason)
            .await
        {
            tracing::warn!(error = %e, job = %job.job_id, "blocked check: flagging failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_request_asks_until_it_ends_then_the_silence_counts() {
        let demand = Arc::new(Demand::new(1));
        let packs = vec!["p".to_owned()];
        let asking = demand.asking("t", &packs);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(demand.unasked_for("t", "p", later), Duration::ZERO);
        drop(asking);
        assert!(demand.unasked_for("t", "p", later) >= Duration::from_secs(59));
        assert!(
            demand.unasked_for("other", "p", later) >= Duration::from_secs(59),
            "another tenant's pack was never asked for"
        );
        demand.forget_older_than(Duration::from_secs(30), later);
        assert!(demand.lock().is_empty(), "silent entries are forgotten");
    }

    #[test]
    fn the_check_runs_at_half_the_threshold_within_bounds() {
        assert_eq!(check_interval(1), Duration::from_secs(1));
        assert_eq!(check_interval(30), Duration::from_secs(15));
        assert_eq!(check_interval(3600), Duration::from_secs(15));
    }
}
