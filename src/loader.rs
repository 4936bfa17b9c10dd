//! The store as the run actors see it: cache backend, then the snapshot
//! table, then a cold computation from the jobs.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use runsignal_actors::{LoadError, LoadedRun, RunKey, RunLoader, SignalView, Source};

use crate::cache::FirstSignalCache;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct StoreLoader {
    pub store: Arc<dyn Store>,
    pub cache: Arc<dyn FirstSignalCache>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl RunLoader for StoreLoader {
    async fn load(&self, key: &RunKey) -> Result<Option<LoadedRun>, LoadError> {
        if let Some(view) = self.cache.get(&key.tenant, &key.run_id) {
            return Ok(Some(LoadedRun {
                last_seq: view.seq,
                signal: Some(view),
                source: Source::Snapshot,
            }));
        }
        let err = |e: crate::store::StoreError| LoadError(e.to_string());
        if let Some((signal, seq)) = self
            .store
            .get_snapshot(&key.tenant, &key.run_id)
            .await
            .map_err(err)?
        {
            let view = Arc::new(SignalView::new(signal, seq));
            self.cache.put(&key.tenant, &key.run_id, view.clone());
            return Ok(Some(LoadedRun {
                last_seq: seq,
                signal: Some(view),
                source: Source::Snapshot,
            }));
        }
        let started = Instant::now();
        let cold = self
            .store
            .cold_run(&key.tenant, &key.run_id)
            .await
            .map_err(err)?;
        self.metrics
            .cold_path_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(cold.map(|run| {
            let signal = run
                .signal
                .map(|(signal, seq)| Arc::new(SignalView::new(signal, seq)));
            if let Some(view) = &signal {
                self.cache.put(&key.tenant, &key.run_id, view.clone());
            }
            LoadedRun {
                signal,
                last_seq: run.last_seq,
                source: Source::ColdStart,
            }
        }))
    }
}
