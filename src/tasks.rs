//! Background tasks: the lease-expiry sweeper, the blocked check, the
//! snapshot writer, the cache purge, pruning and the orphan artifact sweep. Each runs on its own interval and publishes what it commits
//! through the store's writer, like any other write.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{now_ms, StoreResult};
use crate::AppState;

pub fn spawn_all(state: Arc<AppState>) {
    let sweep = Duration::from_secs(state.config.jobs.lease_sweep_interval_seconds);
    actix_rt::spawn(every(sweep, state.clone(), |s| Box::pin(sweep_leases(s))));
    let prune = Duration::from_secs(state.config.jobs.prune_interval_seconds);
    actix_rt::spawn(every(prune, state.clone(), |s| Box::pin(prune_runs(s))));
    actix_rt::spawn(sweep_artifacts(state.clone(), prune));
    let blocked = crate::blocked::check_interval(state.config.jobs.blocked_after_seconds);
    actix_rt::spawn(every(blocked, state.clone(), |s| {
        Box::pin(crate::blocked::check(s))
    }));
    let sw = &state.config.first_signal.snapshot_writer;
    if sw.enabled {
        let period = Duration::from_secs(sw.poll_interval_seconds);
        actix_rt::spawn(every(period, state.clone(), |s| {
            Box::pin(write_snapshots(s))
        }));
    }
    actix_rt::spawn(every(Duration::from_secs(60), state, |s| {
        Box::pin(async move {
            s.engine.cache.purge_expired();
        })
    }));
}

type Tick = fn(Arc<AppState>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

async fn every(period: Duration, state: Arc<AppState>, tick: Tick) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        tick(state.clone()).await;
    }
}

/// Requeue (attempts left) or fail (`lease_expired`) jobs whose lease ended.
pub async fn sweep_leases(state: Arc<AppState>) {
    if state.config.messaging.transport != "inmemory" {
        // Several nodes: a dead node's webhook claims run out like its
        // leases; send those deliveries again (ADR 0037).
        match state.store.reset_sending_webhooks(now_ms(), true).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deliveries = n, "webhook claims of a dead node taken back");
                state.engine.webhooks.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "taking back webhook claims failed"),
        }
    }
    match state.store.sweep_expired_leases(now_ms()).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(jobs = n, "expired leases swept");
            }
        }
        Err(e) => tracing::warn!(error = %e, "lease sweep failed"),
    }
}

/// Store derived signals of recently updated runs (`FirstSignal.SnapshotWriter`).
pub async fn write_snapshots(state: Arc<AppState>) {
    let sw = &state.config.first_signal.snapshot_writer;
    let since = now_ms() - (sw.lookback_minutes as i64) * 60_000;
    match state
        .store
        .write_snapshots(since, sw.tenant_id.as_deref(), sw.max_runs_per_tick)
        .await
    {
        Ok(n) => tracing::debug!(runs = n, "first-signal snapshots written"),
        Err(e) => tracing::warn!(error = %e, "snapshot writer failed"),
    }
}

/// Delete runs whose jobs all ended more than `Jobs.RetentionHours` ago
/// (`Jobs.PruneIntervalSeconds`), a bounded batch at a time.
pub async fn prune_runs(state: Arc<AppState>) {
    let cutoff = now_ms() - (state.config.jobs.retention_hours as i64) * 3_600_000;
    loop {
        match prune_batch(&state, cutoff, 100).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(runs = n, "pruned runs past retention");
                }
                if n < 100 {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "prune failed");
                return;
            }
        }
    }
}

/// Remove artifact files no row names (ADR 0023): all of `Artifacts.Dir`
/// once at start-up, then every `period` the job directories changed
/// recently enough to hold files that crossed the grace period since.
async fn sweep_artifacts(state: Arc<AppState>, period: Duration) {
    use crate::artifacts::{sweep_orphans, ORPHAN_GRACE};
    let dir = state.config.artifacts.dir.clone();
    sweep_orphans(&state.store, &dir, ORPHAN_GRACE, None).await;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let since = std::time::SystemTime::now().checked_sub(period + 2 * ORPHAN_GRACE);
        sweep_orphans(&state.store, &dir, ORPHAN_GRACE, since).await;
    }
}

/// One prune batch: up to `limit` runs finished before `cutoff_ms` leave
/// the store (one commit), then their artifact files leave the disk and
/// the runs leave memory (actor, cached signal). Returns how many runs.
pub async fn prune_batch(state: &AppState, cutoff_ms: i64, limit: u32) -> StoreResult<usize> {
    let (runs, files) = state.store.prune(cutoff_ms, limit).await?;
    crate::artifacts::remove_files(files).await;
    for key in &runs {
        state.engine.forget(key);
    }
    Ok(runs.len())
}
