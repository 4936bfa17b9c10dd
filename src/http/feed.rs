//! The feed every stream reads, SSE and WebSocket alike (SPEC §5): a
//! [`Subscription`] on the run's actor for the live events, and [`Replay`]
//! for the stored ones before them.
//!
//! A stream subscribes first and learns `live_from`, the last seq the actor
//! has delivered; a resuming client then gets the events in
//! `(after, live_from]` from the store, followed by the live events
//! (`> live_from`) from its queue: no gap, no duplicate.
//!
//! [`history`] is the one place stored events are read and decoded: the
//! timeline route, both stream replays and the WebSocket's re-read of a cut
//! event all go through it.

use std::sync::Arc;

use actix::Addr;
use runsignal_actors::queue;
use runsignal_actors::SignalView;
use runsignal_actors::{
    Delivery, Envelope, Filter, Published, RunActor, RunKey, StreamKind, Subscribe, SubscribeReply,
    Unsubscribe, Wire,
};

use super::errors::{ApiError, ErrorCode};
use crate::store::{StoreResult, TimelineQuery};
use crate::AppState;

/// Stored events read per page while replaying.
const REPLAY_PAGE: u32 = 500;

/// The run's stored events matching `query`, in seq order, typed (the
/// store decodes them, in one place: `store::sql::decode_event`).
pub async fn history(
    state: &AppState,
    key: &RunKey,
    query: &TimelineQuery,
) -> StoreResult<Vec<Envelope>> {
    state.store.timeline(&key.tenant, &key.run_id, query).await
}

/// A stream's replay of the stored events in `(after, upto]`, page by page,
/// as the deliveries its subscription would have had live: only the events
/// the filter carries (each with its frames for `wire`), plus the event
/// that ends the stream (with no frames when the filter drops it).
pub struct Replay {
    key: RunKey,
    kind: StreamKind,
    filter: Filter,
    wire: Wire,
    after: u64,
    upto: u64,
}

impl Replay {
    pub fn new(
        key: RunKey,
        kind: StreamKind,
        filter: Filter,
        wire: Wire,
        (after, upto): (u64, u64),
    ) -> Replay {
        Replay {
            key,
            kind,
            filter,
            wire,
            after,
            upto,
        }
    }

    /// Every stored event of the range has been handed out.
    pub fn done(&self) -> bool {
        self.after >= self.upto
    }

    /// The next page of deliveries (possibly empty while pages hold only
    /// events the filter drops). After one that `closes`, nothing follows.
    pub async fn next_page(&mut self, state: &AppState) -> StoreResult<Vec<Delivery>> {
        if self.done() {
            return Ok(Vec::new());
        }
        let query = TimelineQuery {
            after: self.after,
            limit: REPLAY_PAGE.min((self.upto - self.after).min(u64::from(u32::MAX)) as u32),
            correlation_id: None,
        };
        let page = history(state, &self.key, &query).await?;
        let before = self.after;
        let mut out = Vec::new();
        for envelope in page {
            if envelope.seq > self.upto {
                // Later events come live.
                break;
            }
            self.after = envelope.seq;
            let seq = envelope.seq;
            let event = Published::from_stored(envelope);
            let closes = self.filter.closes_on(&event.envelope);
            let frames = match self.filter.matches(&event.envelope) {
                Some(name) => event.frames(self.kind, self.wire, name),
                None if closes => Arc::from([]),
                None => continue,
            };
            out.push(Delivery {
                frames,
                seq,
                closes,
                committed_at: None,
            });
            if closes {
                self.after = self.upto;
                break;
            }
        }
        if self.after == before {
            // An empty page, or later events only: nothing more is stored.
            self.after = self.upto;
        }
        Ok(out)
    }
}

/// The filter and resume point a stream request asks for.
pub fn stream_filter(
    kind: StreamKind,
    events: Option<&str>,
    correlation_id: Option<String>,
) -> Result<Filter, ApiError> {
    let mut filter = Filter::new(kind);
    if let Some(list) = events {
        let names: Vec<String> = list
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if let Some(bad) = names
            .iter()
            .find(|n| !kind.event_names().contains(&n.as_str()))
        {
            let allowed = kind.event_names().join(", ");
            return Err(ApiError::field(
                "events",
                format!("`{bad}` is not an event of this stream; allowed: {allowed}"),
            ));
        }
        filter.events = Some(names);
    }
    filter.correlation_id = correlation_id;
    Ok(filter)
}

/// Subscribe to the run's actor (retrying once if it stopped meanwhile).
pub async fn subscribe(
    state: &AppState,
    key: &RunKey,
    filter: Filter,
    wire: Wire,
    tx: queue::Sender,
) -> Result<(Addr<RunActor>, SubscribeReply), ApiError> {
    for _ in 0..2 {
        let addr = state.engine.supervisor.lookup(key).addr;
        let msg = Subscribe {
            filter: filter.clone(),
            wire,
            tx: tx.clone(),
        };
        if let Ok(reply) = addr.send(msg).await {
            return Ok((addr, reply));
        }
    }
    Err(ApiError::new(
        ErrorCode::StoreUnavailable,
        "the run's actor could not be reached",
    ))
}

/// "Not found" for the kind of id a stream names (never "forbidden": a
/// foreign run or job is as unknown as a missing one).
pub fn not_found(kind: StreamKind) -> ApiError {
    match kind {
        StreamKind::Run => ApiError::new(ErrorCode::RunNotFound, "no such run for this tenant"),
        StreamKind::Job | StreamKind::PackRun => {
            ApiError::new(ErrorCode::JobNotFound, "no such job for this tenant")
        }
    }
}

/// One stream's subscription on its run's actor, shared by SSE and
/// WebSocket: the live queue, where live events start, and where the stream
/// ends if it already has.
pub struct Subscription {
    pub addr: Addr<RunActor>,
    pub id: u64,
    pub key: RunKey,
    /// Events after `live_from`, bounded by `Streams.BufferSize`.
    pub live: queue::Receiver,
    pub live_from: u64,
    /// The run's current signal (a run stream's first frame on connect).
    pub signal: Option<Arc<SignalView>>,
    /// Seq of the event that ended this stream (`run.completed`, or the
    /// job's terminal event), if it has ended.
    pub end: Option<u64>,
}

impl Subscription {
    /// Subscribe to the stream `kind` of `id` (a run id, or a job id for job
    /// and pack-run streams; `filter` already names the job).
    pub async fn open(
        state: &AppState,
        tenant: &str,
        kind: StreamKind,
        id: &str,
        filter: Filter,
        wire: Wire,
    ) -> Result<Subscription, ApiError> {
        let run = match kind {
            StreamKind::Run => id.to_owned(),
            StreamKind::Job | StreamKind::PackRun => state.store.get_job(tenant, id).await?.run_id,
        };
        let key = RunKey::new(tenant, &run);
        let (tx, live) = queue::channel(state.config.streams.buffer_size);
        let (addr, reply) = subscribe(state, &key, filter, wire, tx).await?;
        let (sub, signal, live_from, completed_seq) = match reply {
            SubscribeReply::Subscribed {
                id,
                signal,
                live_from,
                completed_seq,
            } => (id, signal, live_from, completed_seq),
            SubscribeReply::NotFound => return Err(not_found(kind)),
            SubscribeReply::LoadFailed(e) => {
                return Err(ApiError::new(ErrorCode::StoreUnavailable, e.to_string()))
            }
        };
        // For a job, read after subscribing: a job that ends meanwhile is
        // either seen here or arrives live.
        let end = match kind {
            StreamKind::Run => completed_seq,
            StreamKind::Job | StreamKind::PackRun => {
                match state.store.job_terminal_seq(tenant, id).await {
                    Ok(end) => end,
                    Err(e) => {
                        addr.do_send(Unsubscribe(sub));
                        return Err(e.into());
                    }
                }
            }
        };
        Ok(Subscription {
            addr,
            id: sub,
            key,
            live,
            live_from,
            signal,
            end,
        })
    }

    /// The stored range to replay before going live, for a client that has
    /// seen everything up to `after`. `None`: it has seen the end already
    /// (the subscription is closed; SSE answers 204).
    pub fn start(&self, after: Option<u64>) -> Option<Option<(u64, u64)>> {
        match after {
            Some(after) if self.end.is_some_and(|end| after >= end) => {
                self.addr.do_send(Unsubscribe(self.id));
                None
            }
            Some(after) => Some(Some((after, self.live_from))),
            // A fresh connect to an ended stream gets its end, then stops.
            None => Some(self.end.map(|end| (end - 1, end))),
        }
    }
}
