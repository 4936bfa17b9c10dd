//! The dispatcher: one background task that drains the durable outbox.
//!
//! Rows are written by the store in each job transition's own transaction;
//! the dispatcher claims due rows (`pending` → `sending`), sends them
//! concurrently, and records each outcome. On start it puts rows a crash left
//! `sending` back to `pending`: at-least-once, never at-most-once. The store
//! hands out only the oldest open row of a job, so a job's webhooks arrive in
//! state order. The dispatcher never touches jobs: a failing receiver cannot
//! block or change one. Free slots go round robin across tenants, and no
//! tenant has more than `Webhooks.MaxInFlightPerTenant` in flight (ADR 0025):
//! one tenant's hanging receivers delay only that tenant.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::policy;
use super::send::Sender;
use super::signing::Signer;
use super::ssrf::Guard;
use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::store::{now_ms, ClaimShare, Store, WebhookDelivery, WebhookOutcome};

/// Pause after a failed store call before trying again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Re-check interval (doubling up to the max) while rows are due but not
/// claimable because an earlier row of their job is still open, and the
/// dispatcher does not know when that row will be retried (it was
/// scheduled before a restart).
const BLOCKED_POLL_MIN: Duration = Duration::from_secs(1);
const BLOCKED_POLL_MAX: Duration = Duration::from_secs(10);
/// Pauses between tries to record an outcome; after the last one the row
/// stays `sending` and is sent again after the next restart.
const FINISH_RETRIES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
];

pub struct Dispatcher {
    store: Arc<Store>,
    /// Notified by the engine after a commit that queued deliveries.
    wake: Arc<Notify>,
    sender: Arc<Sender>,
    schedule: Arc<[u64]>,
    max_in_flight: usize,
    /// `Webhooks.MaxInFlightPerTenant` as in force.
    per_tenant: usize,
    /// Whether rows were pending at start-up (see [`Dispatcher::recover`]).
    pending_at_start: bool,
    metrics: Arc<Metrics>,
    /// Several nodes share the outbox: at start-up only claims that ran out
    /// are taken back (a live node's in-flight sends are not).
    shared: bool,
    /// How long a claim holds (a per-attempt timeout and recording it, with
    /// room to spare).
    claim_ms: i64,
}

/// Above `Webhooks.TimeoutSeconds`, how long a claim holds: recording the
/// outcome may take its retries (`FINISH_RETRIES`).
const CLAIM_MARGIN_MS: i64 = 60_000;

impl Dispatcher {
    /// Checks the secrets and networks (the error names the key).
    pub fn new(
        config: &WebhooksConfig,
        store: Arc<Store>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        shared: bool,
    ) -> anyhow::Result<Dispatcher> {
        let sender = Sender::new(
            Guard::new(&config.allowed_networks)
                .map_err(|e| anyhow::anyhow!("Webhooks.AllowedNetworks: {e}"))?,
            Signer::new(&config.secrets)?,
            Duration::from_secs(config.timeout_seconds.max(1)),
        );
        Ok(Dispatcher {
            store,
            wake,
            sender: Arc::new(sender),
            schedule: config.retry_schedule_seconds.clone().into(),
            max_in_flight: config.max_concurrency.max(1),
            per_tenant: config.per_tenant_slots(),
            pending_at_start: true,
            metrics,
            shared,
            claim_ms: config.timeout_seconds.max(1) as i64 * 1000 + CLAIM_MARGIN_MS,
        })
    }

    /// Before the service takes requests: rows a crash left `sending` go
    /// back to `pending` (at-least-once), and the dispatcher learns whether
    /// anything is pending, so that an idle service makes no store call
    /// once it is up.
    pub async fn recover(mut self) -> anyhow::Result<Dispatcher> {
        let reset = self
            .store
            .reset_sending_webhooks(now_ms(), self.shared)
            .await
            .context("resetting webhooks interrupted by a restart")?;
        if reset > 0 {
            tracing::info!(
                deliveries = reset,
                "webhooks interrupted by a restart will be sent again"
            );
        }
        self.pending_at_start = self
            .store
            .next_webhook_due()
            .await
            .context("reading the webhook outbox")?
            .is_some();
        Ok(self)
    }

    /// Run until `shutdown` turns true (or the runtime stops). Sends then in
    /// flight are left to finish; any the process does not outlive stay
    /// `sending` and are sent again after the restart. Call
    /// [`Dispatcher::recover`] first.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        // The semaphore bounds sends in flight; each task holds its permit
        // until its outcome is recorded, and the loop claims no more rows
        // than there are free permits, so a claimed row never waits.
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let mut in_flight: JoinSet<Sent> = JoinSet::new();
        // Who is sending: each tenant's sends in flight (entries removed at
        // zero, so the map is at most `max_in_flight` long) and the tenant
        // served last, where the next claim's round robin continues.
        let mut busy: HashMap<String, u32> = HashMap::new();
        let mut after: Option<String> = None;
        // Retry times this process scheduled: the wake-up for rows blocked
        // behind them.
        let mut retries: BinaryHeap<Reverse<i64>> = BinaryHeap::new();
        let mut blocked_poll = BLOCKED_POLL_MIN;
        // Whether the outbox may hold due rows; false only while idle at start.
        let mut look = self.pending_at_start;
        let mut watching = true;
        loop {
            if *shutdown.borrow() {
                in_flight.detach_all();
                return;
            }
            while let Some(done) = in_flight.try_join_next() {
                note(done, &mut retries, &mut busy);
            }
            let free = permits.available_permits();
            let mut wake_at = None;
            if look && free > 0 {
                let now = now_ms();
                let share = ClaimShare {
                    per_tenant: self.per_tenant as u32,
                    busy: busy.iter().map(|(t, n)| (t.clone(), *n)).collect(),
                    after: after.clone(),
                    claim_ms: self.claim_ms,
                };
                let batch = match self.store.claim_webhooks(now, free as u32, &share).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook claim failed");
                        tokio::time::sleep(STORE_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let full = batch.len() >= free;
                if let Some(last) = batch.last() {
                    blocked_poll = BLOCKED_POLL_MIN;
                    after = Some(last.tenant_id.clone());
                }
                for d in batch {
                    // At most `free` rows were claimed, one permit each.
                    let permit = permits
                        .clone()
                        .try_acquire_owned()
                        .expect("claimed no more rows than free permits");
                    *busy.entry(d.tenant_id.clone()).or_default() += 1;
                    in_flight.spawn(deliver(
                        self.sender.clone(),
                        self.store.clone(),
                        self.schedule.clone(),
                        self.metrics.clone(),
                        d,
                        permit,
                    ));
                }
                if full {
                    continue; // more may be due: claim again once a slot frees
                }
                match self.store.next_webhook_due().await {
                    Ok(due) => wake_at = next_wake(due, now, &mut retries, blocked_poll),
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook due time unavailable");
                        wake_at = Some((now + STORE_ERROR_PAUSE.as_millis() as i64, false));
                    }
                }
            }
            look = true;
            let timer = async {
                match wake_at {
                    Some((at, _)) => tokio::time::sleep_until(instant_of(at)).await,
                    // Nothing pending: no store call until a commit wakes us.
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => blocked_poll = BLOCKED_POLL_MIN,
                changed = shutdown.changed(), if watching => watching = changed.is_ok(),
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    note(done, &mut retries, &mut busy);
                }
                _ = timer => {
                    if matches!(wake_at, Some((_, true))) {
                        blocked_poll = (blocked_poll * 2).min(BLOCKED_POLL_MAX);
                    }
                }
            }
        }
    }
}

/// When to look again, and whether that is a blocked-row poll.
///
/// `due` is the earliest `next_attempt_at` of any pending row. In the future,
/// it is exact. In the past although the claim took everything it could,
/// those rows wait behind an open earlier row of their job: one in flight
/// (its end wakes the loop), one whose retry this process scheduled (in
/// `retries`), or one scheduled before a restart (found by polling).
fn next_wake(
    due: Option<i64>,
    now: i64,
    retries: &mut BinaryHeap<Reverse<i64>>,
    blocked_poll: Duration,
) -> Option<(i64, bool)> {
    while retries.peek().is_some_and(|Reverse(at)| *at <= now) {
        retries.pop();
    }
    match due {
        None => {
            retries.clear();
            None
        }
        Some(at) if at > now => Some((at, false)),
        Some(_) => {
            let poll = now + blocked_poll.as_millis() as i64;
            match retries.peek() {
                Some(Reverse(at)) if *at < poll => Some((*at, false)),
                _ => Some((poll, true)),
            }
        }
    }
}

/// A send that ended: its tenant, and its retry time if any.
type Sent = (String, Option<i64>);

fn note(
    done: Result<Sent, tokio::task::JoinError>,
    retries: &mut BinaryHeap<Reverse<i64>>,
    busy: &mut HashMap<String, u32>,
) {
    match done {
        Ok((tenant, retry)) => {
            if let Some(n) = busy.get_mut(&tenant) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(&tenant);
                }
            }
            if let Some(at) = retry {
                retries.push(Reverse(at));
            }
        }
        // `deliver` does not panic; if it did, its tenant's count stays
        // one too high until the restart (a slot of that tenant is lost).
        Err(e) => tracing::error!(error = %e, "webhook send task ended abnormally"),
    }
}

fn instant_of(at_ms: i64) -> Instant {
    let wait = u64::try_from(at_ms - now_ms()).unwrap_or(0);
    Instant::now() + Duration::from_millis(wait)
}

/// Send one claimed row and record the outcome; returns its tenant and the
/// retry time.
async fn deliver(
    sender: Arc<Sender>,
    store: Arc<Store>,
    schedule: Arc<[u64]>,
    metrics: Arc<Metrics>,
    d: WebhookDelivery,
    permit: OwnedSemaphorePermit,
) -> Sent {
    let retry = deliver_one(&sender, &store, &schedule, &metrics, &d).await;
    drop(permit);
    (d.tenant_id, retry)
}

async fn deliver_one(
    sender: &Sender,
    store: &Store,
    schedule: &[u64],
    metrics: &Metrics,
    d: &WebhookDelivery,
) -> Option<i64> {
    let started = Instant::now();
    let attempt = sender.attempt(d).await;
    let outcome = policy::outcome(&attempt, d.attempts, schedule, now_ms(), fastrand::f64());
    let label = match &outcome {
        WebhookOutcome::Delivered { .. } => "delivered",
        WebhookOutcome::Retry { .. } => "retry",
        WebhookOutcome::Failed { .. } => "failed",
        WebhookOutcome::Gone { .. } => "gone",
    };
    metrics
        .webhook_attempt
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    if label != "retry" {
        // `attempts` counts this one (it was claimed for it).
        metrics.webhook_attempts.observe(d.attempts as f64);
    }
    let key = d.idempotency_key.as_str();
    match &outcome {
        WebhookOutcome::Delivered { status } => {
            tracing::debug!(key, status, attempts = d.attempts, "webhook delivered")
        }
        WebhookOutcome::Retry { at_ms, error, .. } => {
            tracing::info!(key, attempts = d.attempts, retry_in_ms = at_ms - now_ms(), %error, "webhook will be retried")
        }
        WebhookOutcome::Failed { error, .. } => {
            tracing::warn!(key, attempts = d.attempts, %error, "webhook failed")
        }
        WebhookOutcome::Gone { .. } => {
            tracing::warn!(
                key,
                "webhook receiver answered 410 Gone: no more deliveries for this job"
            )
        }
    }
    for pause in FINISH_RETRIES {
        tokio::time::sleep(pause).await;
        match store.finish_webhook(d.id, &outcome).await {
            Ok(()) => {
                return match outcome {
                    WebhookOutcome::Retry { at_ms, .. } => Some(at_ms),
                    _ => None,
                }
            }
            Err(e) => tracing::warn!(key, error = %e, "recording a webhook outcome failed"),
        }
    }
    tracing::error!(
        key,
        "webhook outcome not recorded: it will be sent again after a restart"
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_pending_means_no_wake_up() {
        let mut r = BinaryHeap::from([Reverse(50)]);
        assert_eq!(next_wake(None, 10, &mut r, BLOCKED_POLL_MIN), None);
        assert!(r.is_empty());
    }

    #[test]
    fn a_future_due_time_is_exact() {
        let mut r = BinaryHeap::new();
        assert_eq!(
            next_wake(Some(5000), 10, &mut r, BLOCKED_POLL_MIN),
            Some((5000, false))
        );
    }

    #[test]
    fn blocked_rows_wake_at_a_known_retry_or_poll() {
        let mut r = BinaryHeap::from([Reverse(5), Reverse(400)]);
        assert_eq!(
            next_wake(Some(0), 10, &mut r, BLOCKED_POLL_MIN),
            Some((400, false)),
            "past retries are dropped, the next known one wins"
        );
        let mut r = BinaryHeap::from([Reverse(60_000)]);
        assert_eq!(
            next_wake(Some(0), 10, &mut r, BLOCKED_POLL_MIN),
            Some((1010, true))
        );
    }
}
