//! The `redis` transport: one pub/sub channel, `<KeyPrefix>events`.
//!
//! A message is one commit of one node:
//! `{"node","events":[<envelope>…],"queued":[[tenant,pack]…],"webhooks":bool}`,
//! or `{"node","catchUp":true}` after that node lost messages it meant to
//! send. Envelopes are sent as the writer encoded them (no re-encoding).
//!
//! Publishing goes through a bounded queue drained by one task: the writer
//! never waits for Redis. When the queue is full or Redis is down the
//! message is dropped and, once Redis answers again, a `catchUp` message
//! tells every other node to read from the store what it missed. A node
//! whose subscription broke catches up the same way when it resubscribes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use redis::AsyncCommands;
use runsignal_actors::{Envelope, Published, RunKey};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Transport;
use crate::engine::Engine;
use crate::store::Committed;

/// Commits queued for Redis at most; past it they are dropped (and the
/// other nodes told to catch up).
const QUEUE: usize = 10_000;
/// Pause before reconnecting to Redis.
const RECONNECT: Duration = Duration::from_millis(500);

pub struct RedisTransport {
    node: String,
    tx: mpsc::Sender<Bytes>,
    /// A message was dropped: the other nodes must catch up.
    lost: Arc<AtomicBool>,
    /// What is wrong with Redis now, if anything (publisher or subscriber).
    health: Arc<Health>,
}

#[derive(Default)]
struct Health {
    publisher: Mutex<Option<String>>,
    subscriber: Mutex<Option<String>>,
}

impl Health {
    fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
        if let Ok(mut s) = slot.lock() {
            *s = value;
        }
    }
}

/// What a node publishes; see the module doc.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    node: String,
    #[serde(default)]
    events: Vec<Envelope>,
    #[serde(default)]
    queued: Vec<(String, String)>,
    #[serde(default)]
    webhooks: bool,
    #[serde(default)]
    catch_up: bool,
}

impl RedisTransport {
    /// Connects lazily: start-up does not wait for Redis (a node serves
    /// from memory and the store while it is away).
    pub fn start(
        url: &str,
        key_prefix: &str,
        node: &str,
        engine: Engine,
    ) -> anyhow::Result<Arc<RedisTransport>> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("Redis.Url: {e}"))?;
        let channel = format!("{key_prefix}events");
        let node = node.to_owned();
        let (tx, rx) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Health::default());
        let catch_up = Bytes::from(serde_json::json!({"node": node, "catchUp": true}).to_string());
        tokio::spawn(publish(
            client.clone(),
            channel.clone(),
            rx,
            lost.clone(),
            catch_up,
            health.clone(),
        ));
        tokio::spawn(subscribe(
            client,
            channel,
            node.clone(),
            engine,
            health.clone(),
        ));
        Ok(Arc::new(RedisTransport {
            node,
            tx,
            lost,
            health,
        }))
    }

    fn encode(&self, committed: &Committed) -> Bytes {
        let mut out = BytesMut::with_capacity(256);
        out.put_slice(br#"{"node":""#);
        out.put_slice(self.node.as_bytes());
        out.put_slice(br#"","events":["#);
        let mut first = true;
        for (_, events) in &committed.runs {
            for e in events {
                if !first {
                    out.put_u8(b',');
                }
                first = false;
                out.put_slice(&e.json);
            }
        }
        out.put_slice(br#"],"queued":"#);
        out.put_slice(
            serde_json::to_string(&committed.queued)
                .unwrap_or_else(|_| "[]".into())
                .as_bytes(),
        );
        out.put_slice(if committed.webhooks {
            br#","webhooks":true}"#
        } else {
            br#","webhooks":false}"#
        });
        out.freeze()
    }
}

impl Transport for RedisTransport {
    fn forward(&self, committed: &Committed) {
        if committed.runs.is_empty() && committed.queued.is_empty() && !committed.webhooks {
            return;
        }
        if self.tx.try_send(self.encode(committed)).is_err() {
            self.lost.store(true, Ordering::Release);
        }
    }

    fn degraded(&self) -> Option<String> {
        let read = |m: &Mutex<Option<String>>| m.lock().ok().and_then(|s| s.clone());
        match (read(&self.health.publisher), read(&self.health.subscriber)) {
            (None, None) => None,
            (Some(e), _) | (None, Some(e)) => Some(e),
        }
    }
}

async fn publish(
    client: redis::Client,
    channel: String,
    mut rx: mpsc::Receiver<Bytes>,
    lost: Arc<AtomicBool>,
    catch_up: Bytes,
    health: Arc<Health>,
) {
    loop {
        let mut conn = match client.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => {
                Health::set(&health.publisher, Some(format!("redis: {e}")));
                // Meanwhile the queue fills; what overflows is lost (and
                // announced once Redis is back).
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        Health::set(&health.publisher, None);
        loop {
            // Whatever was lost is committed: one `catchUp` after it (at
            // any later point) makes the other nodes read it from the store.
            if lost.swap(false, Ordering::AcqRel) {
                if let Err(e) = conn.publish::<_, _, ()>(&channel, catch_up.as_ref()).await {
                    lost.store(true, Ordering::Release);
                    Health::set(&health.publisher, Some(format!("redis: {e}")));
                    break;
                }
            }
            let Some(msg) = rx.recv().await else { return };
            if let Err(e) = conn.publish::<_, _, ()>(&channel, msg.as_ref()).await {
                tracing::warn!(error = %e, "publishing to Redis failed; other nodes will catch up");
                lost.store(true, Ordering::Release);
                Health::set(&health.publisher, Some(format!("redis: {e}")));
                break;
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

async fn subscribe(
    client: redis::Client,
    channel: String,
    node: String,
    engine: Engine,
    health: Arc<Health>,
) {
    let mut first = true;
    loop {
        let pubsub = async {
            let mut p = client.get_async_pubsub().await?;
            p.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(p)
        }
        .await;
        let pubsub = match pubsub {
            Ok(p) => p,
            Err(e) => {
                Health::set(&health.subscriber, Some(format!("redis: {e}")));
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        Health::set(&health.subscriber, None);
        if !first {
            // Subscribed again after a break: what was published meanwhile
            // is lost to this node; the store has it.
            engine.catch_up();
        }
        first = false;
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            match serde_json::from_slice::<Message>(msg.get_payload_bytes()) {
                Ok(m) if m.node == node => {}
                Ok(m) => apply(&engine, m),
                Err(e) => tracing::warn!(error = %e, "an unreadable message on the Redis channel"),
            }
        }
        Health::set(
            &health.subscriber,
            Some("redis: the subscription was cut".into()),
        );
        tracing::warn!("the Redis subscription was cut; reconnecting");
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Another node's commit, applied here as the engine applies local ones
/// (except that nothing is forwarded again).
fn apply(engine: &Engine, m: Message) {
    if m.catch_up {
        engine.catch_up();
        return;
    }
    let mut runs: Vec<(RunKey, Vec<Arc<Published>>)> = Vec::new();
    for envelope in m.events {
        let key = RunKey::new(&envelope.tenant_id, &envelope.run_id);
        let event = Published::from_stored(envelope);
        match runs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, events)) => events.push(event),
            None => runs.push((key, vec![event])),
        }
    }
    engine.apply_remote(Committed {
        runs,
        webhooks: m.webhooks,
        queued: m.queued,
        ..Committed::default()
    });
}
