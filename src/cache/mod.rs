//! First-signal cache backends (`FirstSignal.Cache`). The run actor's memory
//! is the first tier; this cache serves runs whose actor is not resident.
//! Writers put every new signal here (write-through), so it never serves a
//! signal older than the store's.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lru::LruCache;
use runsignal_actors::SignalView;
use tokio::time::Instant;

use crate::config::CacheConfig;

pub mod redis;

/// `get` and `put` are this node's memory and never wait; `fetch` may also
/// ask a shared backend over the network (the loader uses it for runs whose
/// actor is not resident); `put` and `remove` reach a shared backend in the
/// background (the store's writer calls them and must not wait).
#[async_trait::async_trait]
pub trait FirstSignalCache: Send + Sync + 'static {
    fn get(&self, tenant: &str, run_id: &str) -> Option<Arc<SignalView>>;
    /// This node's memory, then the shared backend if there is one.
    async fn fetch(&self, tenant: &str, run_id: &str) -> Option<Arc<SignalView>> {
        self.get(tenant, run_id)
    }
    /// Store `view` unless a newer signal (higher seq) is already cached.
    fn put(&self, tenant: &str, run_id: &str, view: Arc<SignalView>);
    /// Store `view` in this node's memory only (another node's commit, which
    /// that node has put in the shared backend already).
    fn put_local(&self, tenant: &str, run_id: &str, view: Arc<SignalView>) {
        self.put(tenant, run_id, view)
    }
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

/// Shards of the in-memory cache: enough that concurrent readers rarely
/// meet on one lock, few enough that each shard's LRU order is meaningful.
const SHARDS: usize = 16;

/// In-process cache: `MaxEntries` entries at most, the least recently used
/// evicted first, with per-entry expiry (`TtlSeconds`; with
/// `SlidingExpiration`, each read pushes the expiry out).
///
/// Sharded by key hash, each shard an LRU list behind its own `Mutex`
/// (a read moves its entry to the front, so even reads write): a lookup
/// locks one shard for a hash-map probe and never waits on I/O, as the
/// sharded map before it did. Each shard holds its share of `MaxEntries`,
/// so the whole never exceeds it; eviction is least-recently-used within a
/// shard, which over a uniform hash approximates the global order.
pub struct InMemoryCache {
    shards: Box<[Mutex<LruCache<String, Entry>>]>,
    hasher: RandomState,
    ttl: Duration,
    sliding: bool,
    prefix: String,
}

impl InMemoryCache {
    pub fn new(config: &CacheConfig) -> InMemoryCache {
        // Validation keeps MaxEntries above 0; a tiny cache gets fewer shards.
        let max = config.max_entries.max(1);
        let n = SHARDS.min(max);
        let shards = (0..n)
            .map(|i| {
                let share = max / n + usize::from(i < max % n);
                // `share` >= 1: n <= max.
                let cap = NonZeroUsize::new(share).unwrap_or(NonZeroUsize::MIN);
                Mutex::new(LruCache::new(cap))
            })
            .collect();
        InMemoryCache {
            shards,
            hasher: RandomState::new(),
            ttl: Duration::from_secs(config.ttl_seconds),
            sliding: config.sliding_expiration,
            prefix: config.key_prefix.clone(),
        }
    }

    /// `{KeyPrefix}{tenant}:{runId}`, the same key a redis backend uses.
    pub fn key(&self, tenant: &str, run_id: &str) -> String {
        format!("{}{}:{}", self.prefix, tenant, run_id)
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, LruCache<String, Entry>> {
        let i = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        // A panic while holding a shard leaves a consistent LruCache (its
        // operations do not unwind midway): keep serving it.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl FirstSignalCache for InMemoryCache {
    fn get(&self, tenant: &str, run_id: &str) -> Option<Arc<SignalView>> {
        let key = self.key(tenant, run_id);
        let now = Instant::now();
        let mut shard = self.shard(&key);
        let entry = shard.get_mut(&key)?;
        if entry.expires_at > now {
            if self.sliding {
                entry.expires_at = now + self.ttl;
            }
            return Some(entry.view.clone());
        }
        shard.pop(&key);
        None
    }

    fn put(&self, tenant: &str, run_id: &str, view: Arc<SignalView>) {
        let expires_at = Instant::now() + self.ttl;
        let key = self.key(tenant, run_id);
        let mut shard = self.shard(&key);
        match shard.get_mut(&key) {
            Some(e) => {
                if view.seq >= e.view.seq {
                    *e = Entry { view, expires_at };
                }
            }
            // Full: the shard's least recently used entry makes room.
            None => {
                shard.push(key, Entry { view, expires_at });
            }
        }
    }

    fn remove(&self, tenant: &str, run_id: &str) {
        let key = self.key(tenant, run_id);
        self.shard(&key).pop(&key);
    }

    fn purge_expired(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let expired: Vec<String> = shard
                .iter()
                .filter(|(_, e)| e.expires_at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                shard.pop(&key);
            }
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
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
        capped(ttl, sliding, 1000)
    }

    fn capped(ttl: u64, sliding: bool, max_entries: usize) -> InMemoryCache {
        InMemoryCache::new(&CacheConfig {
            backend: "inmemory".into(),
            ttl_seconds: ttl,
            sliding_expiration: sliding,
            key_prefix: "p:".into(),
            max_entries,
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

    #[tokio::test]
    async fn a_hundred_thousand_runs_keep_the_cache_at_max_entries() {
        let c = capped(3600, true, 10_000);
        for i in 0..100_000 {
            c.put("t", &format!("run-{i}"), view(1));
            assert!(
                c.len() <= 10_000,
                "{} entries after {} puts",
                c.len(),
                i + 1
            );
        }
        assert_eq!(c.len(), 10_000);
        // The newest are kept, the oldest went first.
        assert!(c.get("t", "run-99999").is_some());
        assert!(c.get("t", "run-0").is_none());
    }

    #[tokio::test]
    async fn the_least_recently_used_entry_goes_first() {
        // One shard per entry below SHARDS: a cap of 1 is exact.
        let c = capped(3600, false, 1);
        c.put("t", "a", view(1));
        c.put("t", "b", view(1));
        assert!(c.get("t", "a").is_none());
        assert!(c.get("t", "b").is_some());
        // Within a shard, a read makes an entry recent again.
        let c = capped(3600, false, 20_000);
        let shard_of = |k: &str| c.hasher.hash_one(c.key("t", k)) % SHARDS as u64;
        let same: Vec<String> = (0..)
            .map(|i| format!("r{i}"))
            .filter(|k| shard_of(k) == shard_of("r0"))
            .take(1250 + 1)
            .collect();
        for k in &same[..1250] {
            c.put("t", k, view(1));
        }
        assert!(c.get("t", &same[0]).is_some(), "read: now the most recent");
        c.put("t", &same[1250], view(1));
        assert!(c.get("t", &same[0]).is_some(), "the read entry stayed");
        assert!(
            c.get("t", &same[1]).is_none(),
            "the least recently used went"
        );
    }
}
