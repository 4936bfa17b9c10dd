//! Wake-ups for work that became `queued`, keyed by tenant and pack, so a
//! waiter is woken only by work it could take (SPEC §11): a long-polling
//! lease of tenant `a` for pack `p` waits on `(a, p)`; the built-in
//! executor, which leases for every tenant, waits on `(*, p)` for each of
//! its packs. Waiting costs no store work.

use std::sync::Arc;

use dashmap::DashMap;
use futures_util::future::{select_all, BoxFuture};
use tokio::sync::Notify;

/// Stands for "any tenant" in a key.
const ANY: &str = "*";

/// One `Notify` per (tenant, pack) that someone waits on.
#[derive(Default)]
pub struct QueuedWakeups {
    /// Entries are made by waiters and live as long as the process: their
    /// number is bounded by tenants × declared packs that were waited on.
    map: DashMap<(String, String), Arc<Notify>>,
}

impl QueuedWakeups {
    /// A job of `pack` in `tenant` became `queued`: one waiter of that
    /// tenant and pack is woken, and one of any tenant (the executor), not
    /// every waiter. One job needs one lessee; waking them all made every
    /// parked long-poll run a lease write per queued job (3,000 waiters, 30
    /// submits: ~90,000 store calls). If the woken waiter gives up instead
    /// (its deadline won the race), tokio hands the wake-up to the next
    /// waiter; with none waiting it is kept for the next one to register.
    pub fn notify(&self, tenant: &str, pack: &str) {
        for key in [(tenant, pack), (ANY, pack)] {
            if let Some(n) = self.map.get(&(key.0.to_owned(), key.1.to_owned())) {
                n.notify_one();
            }
        }
    }

    /// Interest in jobs of `packs` of `tenant` (`None`: any tenant). Call
    /// [`Interest::wait`] after looking: a job queued in between still wakes.
    pub fn interest(&self, tenant: Option<&str>, packs: &[String]) -> Interest {
        let tenant = tenant.unwrap_or(ANY);
        let notifies = packs
            .iter()
            .map(|pack| {
                self.map
                    .entry((tenant.to_owned(), pack.clone()))
                    .or_default()
                    .clone()
            })
            .collect();
        Interest::new(notifies)
    }
}

/// Registered interest: its futures are enabled at creation, so a
/// notification sent between creating it and awaiting it is not missed.
pub struct Interest {
    waits: Vec<BoxFuture<'static, ()>>,
}

impl Interest {
    fn new(notifies: Vec<Arc<Notify>>) -> Interest {
        let waits = notifies
            .into_iter()
            .map(|n| -> BoxFuture<'static, ()> {
                let mut notified = Box::pin(n.notified_owned());
                notified.as_mut().enable();
                notified
            })
            .collect();
        Interest { waits }
    }

    /// Until one of the packs gets a queued job.
    pub async fn wait(self) {
        if self.waits.is_empty() {
            return std::future::pending().await;
        }
        select_all(self.waits).await;
    }
}
