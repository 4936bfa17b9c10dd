//! The `redis` first-signal cache backend (`FirstSignal.Cache.Backend=redis`):
//! shared by every node, so a signal one node computed is a hit on another.
//!
//! Each node keeps the in-memory cache in front (`get` never waits on the
//! network); `fetch` falls through to Redis on a local miss. Entries are
//! `<KeyPrefix><tenant>:<runId>` → `{"seq":N,"signal":{…}}` with
//! `TtlSeconds` as their expiry; with `SlidingExpiration` a read from Redis
//! renews it (`GETEX`). Writes go to Redis in the background through a
//! bounded queue (the store's writer calls `put` and must not wait); a full
//! queue or an unreachable Redis drops them: the entry is then missing or
//! older, and the loader never serves an entry older than the run's latest
//! signal (it checks the seq against the store, SPEC §4.4).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use runsignal_actors::{Signal, SignalView};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{FirstSignalCache, InMemoryCache};
use crate::config::CacheConfig;

/// Writes waiting for Redis at most.
const QUEUE: usize = 10_000;
/// A read from Redis that takes longer is a miss (the loader goes on).
const READ_TIMEOUT: Duration = Duration::from_millis(500);

enum Write {
    Set(String, String),
    Del(String),
}

pub struct RedisCache {
    local: InMemoryCache,
    conn: ConnectionManager,
    writes: mpsc::Sender<Write>,
    prefix: String,
    ttl_seconds: u64,
    sliding: bool,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    seq: u64,
    signal: Signal,
}

impl RedisCache {
    /// Connects lazily: start-up does not wait for Redis.
    pub fn start(url: &str, config: &CacheConfig) -> anyhow::Result<Arc<RedisCache>> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("Redis.Url: {e}"))?;
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(READ_TIMEOUT))
            .set_response_timeout(Some(READ_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, settings)
            .map_err(|e| anyhow::anyhow!("Redis.Url: {e}"))?;
        let (writes, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_behind(conn.clone(), rx, config.ttl_seconds));
        Ok(Arc::new(RedisCache {
            local: InMemoryCache::new(config),
            conn,
            writes,
            prefix: config.key_prefix.clone(),
            ttl_seconds: config.ttl_seconds,
            sliding: config.sliding_expiration,
        }))
    }

    fn key(&self, tenant: &str, run_id: &str) -> String {
        format!("{}{tenant}:{run_id}", self.prefix)
    }

    async fn read(&self, key: &str) -> Option<Arc<SignalView>> {
        let mut conn = self.conn.clone();
        let read = async {
            if self.sliding {
                let expiry = redis::Expiry::EX(self.ttl_seconds);
                conn.get_ex::<_, Option<String>>(key, expiry).await
            } else {
                conn.get::<_, Option<String>>(key).await
            }
        };
        let text = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(text)) => text?,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "first-signal cache read from Redis failed");
                return None;
            }
            Err(_) => return None,
        };
        let stored: Stored = serde_json::from_str(&text).ok()?;
        Some(Arc::new(SignalView::new(stored.signal, stored.seq)))
    }
}

async fn write_behind(mut conn: ConnectionManager, mut rx: mpsc::Receiver<Write>, ttl: u64) {
    while let Some(w) = rx.recv().await {
        let done = match &w {
            Write::Set(key, value) => conn.set_ex::<_, _, ()>(key, value, ttl).await,
            Write::Del(key) => conn.del::<_, ()>(key).await,
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "first-signal cache write to Redis dropped");
        }
    }
}

#[async_trait::async_trait]
impl FirstSignalCache for RedisCache {
    fn get(&self, tenant: &str, run_id: &str) -> Option<Arc<SignalView>> {
        self.local.get(tenant, run_id)
    }

    async fn fetch(&self, tenant: &str, run_id: &str) -> Option<Arc<SignalView>> {
        if let Some(view) = self.local.get(tenant, run_id) {
            return Some(view);
        }
        let view = self.read(&self.key(tenant, run_id)).await?;
        self.local.put(tenant, run_id, view.clone());
        Some(view)
    }

    fn put(&self, tenant: &str, run_id: &str, view: Arc<SignalView>) {
        let stored = Stored {
            seq: view.seq,
            signal: view.signal.clone(),
        };
        if let Ok(value) = serde_json::to_string(&stored) {
            let _ = self
                .writes
                .try_send(Write::Set(self.key(tenant, run_id), value));
        }
        self.local.put(tenant, run_id, view);
    }

    fn put_local(&self, tenant: &str, run_id: &str, view: Arc<SignalView>) {
        self.local.put(tenant, run_id, view);
    }

    fn remove(&self, tenant: &str, run_id: &str) {
        let _ = self.writes.try_send(Write::Del(self.key(tenant, run_id)));
        self.local.remove(tenant, run_id);
    }

    fn purge_expired(&self) {
        self.local.purge_expired();
    }

    fn len(&self) -> usize {
        self.local.len()
    }
}
