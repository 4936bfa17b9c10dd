//! The store as the run actors see it: cache backend, then the snapshot
//! table, then a cold computation from the jobs.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use runsignal_actors::{LoadError, LoadedRun, Published, RunKey, RunLoader, SignalView, Source};

use crate::cache::FirstSignalCache;
use crate::metrics::Metrics;
use crate::store::{Store, TimelineQuery};

pub struct StoreLoader {
    pub store: Arc<Store>,
    pub cache: Arc<dyn FirstSignalCache>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl RunLoader for StoreLoader {
    async fn load(&self, key: &RunKey) -> Result<Option<LoadedRun>, LoadError> {
        let err = |e: crate::store::StoreError| LoadError(e.to_string());
        let (tenant, run_id) = (&*key.tenant, &*key.run_id);
        let cached = match self.cache.fetch(tenant, run_id).await {
            Some(view) => Some(view),
            None => self
                .store
                .get_snapshot(tenant, run_id)
                .await
                .map_err(err)?
                .map(|(signal, seq)| Arc::new(SignalView::new(signal, seq))),
        };
        if let Some(view) = cached {
            // Where the timeline stands is one indexed row (a stream
            // positions its subscribers by it); it also tells whether the
            // signal is current. A stale one (its run changed while it was
            // evicted, or a cold load put an older signal back meanwhile)
            // is recomputed, never served (SPEC §4.4).
            let Some(head) = self.store.run_head(tenant, run_id).await.map_err(err)? else {
                return Ok(None);
            };
            if view.seq == head.signal_seq {
                self.cache.put(tenant, run_id, view.clone());
                return Ok(Some(LoadedRun {
                    last_seq: head.last_seq,
                    completed_seq: head.completed_seq,
                    signal: Some(view),
                    source: Source::Snapshot,
                }));
            }
            self.cache.remove(tenant, run_id);
        }
        let started = Instant::now();
        let cold = self.store.cold_run(tenant, run_id).await.map_err(err)?;
        self.metrics
            .cold_path_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(cold.map(|run| {
            let signal = run
                .signal
                .map(|(signal, seq)| Arc::new(SignalView::new(signal, seq)));
            if let Some(view) = &signal {
                self.cache.put(tenant, run_id, view.clone());
            }
            LoadedRun {
                signal,
                last_seq: run.last_seq,
                completed_seq: run.completed_seq,
                source: Source::ColdStart,
            }
        }))
    }

    async fn events_after(
        &self,
        key: &RunKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Arc<Published>>, LoadError> {
        let query = TimelineQuery {
            after,
            limit,
            correlation_id: None,
        };
        let stored = self
            .store
            .timeline(&key.tenant, &key.run_id, &query)
            .await
            .map_err(|e| LoadError(e.to_string()))?;
        Ok(stored.into_iter().map(Published::from_stored).collect())
    }
}
