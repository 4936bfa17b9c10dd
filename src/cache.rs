//! First-signal cache backends (`FirstSignal.Cache`). The run actor's memory
//! is the first tier; this cache serves runs whose actor is not resident.
//! Writers put every new signal here (write-through), so it never serves a
//! signal older than the store's.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use runsignal_actors::SignalView;
use tokio::time::Instant;

use crate::config::CacheConfig;

pub trait FirstSignalCache: Send + Sync + 'static {
    fn get(&self, tenant: &str, run_id: &str) -> Option<Arc<SignalView>>;
    /// Store `view` unless a newer signal (higher seq) is already cached.
    fn put(&self, tenant: &str, run_id: &str, view: Arc<SignalView>);
    /// Drop expired entries (called periodically).
    fn purge_expired(&self);
    /// Forget a run (it was pruned).
    fn remove(&self, tenant: &str, run_id: &str);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Entry {
    view: Arc<SignalView>,
    expires_at: Instant,
}

/// In-process cache: a sharded map with per-entry expiry. With
/// `SlidingExpiration`, each read pushes the expiry out by `TtlSeconds`.
pub struct InMemoryCache {
    map: DashMap<String, Entry>,
    ttl: Duration,
    sliding: bool,
    prefix: String,
}

impl InMemoryCache {
    pub fn new(config: &CacheConfig) -> InMemoryCache {
        InMemoryCache {
            map: DashMap::new(),
            ttl: Duration::from_secs(config.ttl_seconds),
            sliding: config.sliding_expiration,
            prefix: config.key_prefix.clone(),
        }
    }

    /// `{KeyPrefix}{tenant}:{runId}`, the same key a redis backend uses.
    pub fn key(&self, tenant: &str, run_id: &str) -> String {
        format!("{}{}:{}", self.prefix, tenant, run_id)
    }
}

impl FirstSignalCache for InMemoryCache {
    fn get(&self, tenant: &str, run_id: &str) -> Option<Arc<SignalView>> {
        let key = self.key(tenant, run_id);
        let now = Instant::now();
        {
            let mut entry = self.map.get_mut(&key)?;
            if entry.expires_at > now {
                if self.sliding {
                    entry.expires_at = now + self.ttl;
                }
                return Some(entry.view.clone());
            }
        }
        // Expired: the shard guard is released above before removing.
        self.map.remove_if(&key, |_, e| e.expires_at <= now);
        None
    }

    fn put(&self, tenant: &str, run_id: &str, view: Arc<SignalView>) {
        let expires_at = Instant::now() + self.ttl;
        self.map
            .entry(self.key(tenant, run_id))
            .and_modify(|e| {
                if view.seq >= e.view.seq {
                    *e = Entry {
                        view: view.clone(),
                        expires_at,
                    };
                }
            })
            .or_insert_with(|| Entry { view, expires_at });
    }

    fn remove(&self, tenant: &str, run_id: &str) {
        self.map.remove(&self.key(tenant, run_id));
    }

    fn purge_expired(&self) {
        let now = Instant::now();
        self.map.retain(|_, e| e.expires_at > now);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runsignal_actors::signal::Signal;

    fn view(seq: u64) -> Arc<SignalView> {
        Arc::new(SignalView::new(
            Signal::unavailable("r", format!("2026-11-22T08:00:0{seq}.000Z")),
            seq,
        ))
    }

    fn cache(ttl: u64, sliding: bool) -> InMemoryCache {
        InMemoryCache::new(&CacheConfig {
            backend: "inmemory".into(),
            ttl_seconds: ttl,
            sliding_expiration: sliding,
            key_prefix: "p:".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_ttl() {
        let c = cache(10, false);
        c.put("t", "r", view(1));
        assert_eq!(c.key("t", "r"), "p:t:r");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(c.get("t", "r").is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(c.get("t", "r").is_none(), "absolute expiry ignores reads");
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_expiration_extends_on_read() {
        let c = cache(10, true);
        c.put("t", "r", view(1));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(8)).await;
            assert!(c.get("t", "r").is_some());
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(c.get("t", "r").is_none());
        c.put("t", "x", view(1));
        tokio::time::advance(Duration::from_secs(11)).await;
        c.purge_expired();
        assert_eq!(c.len(), 0);
    }

    #[tokio::test]
    async fn older_signals_never_replace_newer_ones() {
        let c = cache(10, false);
        c.put("t", "r", view(5));
        c.put("t", "r", view(4));
        assert_eq!(c.get("t", "r").unwrap().seq, 5);
    }
}
