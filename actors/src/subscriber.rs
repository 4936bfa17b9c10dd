//! Subscribers of a run actor and the frames they receive.
//!
//! A subscriber is a filter plus a bounded queue ([`crate::queue`], bound
//! `Streams.BufferSize`). The run actor `try_send`s into it: a full queue
//! drops that subscriber (its stream then ends and the client resumes with
//! its last id) and never blocks the actor or the other subscribers.
//!
//! Frames are encoded once per event and stream kind, on first need, and
//! shared as `Bytes` by every subscriber of that kind (see [`Published`]).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::envelope::{types, Envelope};
use crate::loader::Published;

/// Which stream a subscription follows (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Run = 0,
    Job = 1,
    PackRun = 2,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Run => "run",
            StreamKind::Job => "job",
            StreamKind::PackRun => "pack-run",
        }
    }

    pub fn parse(s: &str) -> Option<StreamKind> {
        match s {
            "run" => Some(StreamKind::Run),
            "job" => Some(StreamKind::Job),
            "pack-run" => Some(StreamKind::PackRun),
            _ => None,
        }
    }

    /// Stream event names this kind carries (`plan`: the pack-run stream's
    /// first frame on a fresh connect, built by the HTTP layer, not from one
    /// timeline event).
    pub fn event_names(self) -> &'static [&'static str] {
        match self {
            StreamKind::Run => &["first_signal", "job", "progress", "completed"],
            StreamKind::Job => &["job", "progress", "step", "log", "artifact", "completed"],
            StreamKind::PackRun => &["plan", "step", "log", "artifact", "completed"],
        }
    }
}

/// Wire format of a subscriber's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Sse,
    WebSocket,
}

fn is_job_state(ty: &str) -> bool {
    ty.starts_with("job.") && ty != types::JOB_PROGRESS
}

fn is_job_terminal(ty: &str) -> bool {
    matches!(
        ty,
        types::JOB_DONE | types::JOB_FAILED | types::JOB_CANCELED
    )
}

/// The stream event name of a timeline event on a stream kind, if carried.
pub fn event_name(kind: StreamKind, env: &Envelope) -> Option<&'static str> {
    let ty = env.event_type.as_str();
    match kind {
        StreamKind::Run => match ty {
            types::SIGNAL_CHANGED => Some("first_signal"),
            types::JOB_PROGRESS => Some("progress"),
            types::RUN_COMPLETED => Some("completed"),
            _ if is_job_state(ty) => Some("job"),
            _ => None,
        },
        StreamKind::Job | StreamKind::PackRun => {
            let name = match ty {
                types::STEP_STARTED | types::STEP_FINISHED => "step",
                types::LOG => "log",
                types::ARTIFACT_CREATED => "artifact",
                _ if is_job_terminal(ty) => "completed",
                types::JOB_PROGRESS if kind == StreamKind::Job => "progress",
                _ if kind == StreamKind::Job && is_job_state(ty) => "job",
                _ => return None,
            };
            Some(name)
        }
    }
}

/// What one subscription wants.
#[derive(Debug, Clone)]
pub struct Filter {
    pub kind: StreamKind,
    /// Job and pack-run streams follow one job of the run.
    pub job_id: Option<Arc<str>>,
    /// `?events=`: stream event names to keep (all the kind carries if `None`).
    pub events: Option<Vec<String>>,
    /// `?correlationId=`: keep only events caused by this correlation id.
    pub correlation_id: Option<String>,
}

impl Filter {
    pub fn new(kind: StreamKind) -> Filter {
        Filter {
            kind,
            job_id: None,
            events: None,
            correlation_id: None,
        }
    }

    /// The stream event name if this subscription carries the event. The
    /// event that ends the stream (`completed`) is carried whatever
    /// `?events=` and `?correlationId=` say (SPEC §5.1): a client must see
    /// its seq, or it cannot resume past it and an `EventSource` would
    /// reconnect forever instead of getting the 204.
    pub fn matches(&self, env: &Envelope) -> Option<&'static str> {
        if self.closes_on(env) {
            return event_name(self.kind, env);
        }
        if let Some(job) = &self.job_id {
            if env.job_id.as_deref() != Some(&**job) {
                return None;
            }
        }
        let name = event_name(self.kind, env)?;
        if !self.wants(name) {
            return None;
        }
        if self
            .correlation_id
            .as_ref()
            .is_some_and(|c| *c != env.correlation_id)
        {
            return None;
        }
        Some(name)
    }

    /// Whether the `?events=` filter keeps this stream event name.
    pub fn wants(&self, name: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|e| e.iter().any(|n| n == name))
    }

    /// Whether this event ends the stream (the run or the followed job is done).
    pub fn closes_on(&self, env: &Envelope) -> bool {
        match self.kind {
            StreamKind::Run => env.event_type == types::RUN_COMPLETED,
            _ => {
                is_job_terminal(&env.event_type) && self.job_id.as_deref() == env.job_id.as_deref()
            }
        }
    }
}

/// One event on a subscriber's queue: all of its frames (a `log` event
/// makes one per line), so a queue bound counts events, not frames.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Encoded frames: SSE text, or WebSocket text messages, shared.
    pub frames: Arc<[Bytes]>,
    pub seq: u64,
    /// The stream ends after this event.
    pub closes: bool,
    /// When a live event was committed (`None` when replayed from the store).
    pub committed_at: Option<std::time::Instant>,
}

/// A registered subscriber: its filter and the sending half of its queue.
pub struct Subscriber {
    pub id: u64,
    pub filter: Filter,
    pub wire: Wire,
    /// For WebSocket frames: the id the client subscribed with.
    pub tx: crate::queue::Sender,
}

/// The `data` of stream events for a timeline event (SPEC §4.3, §5.1).
/// `log` events carry several lines: one data value per line.
pub fn event_data(event: &Published, name: &str) -> Vec<Value> {
    let env = &event.envelope;
    match name {
        "first_signal" => match &event.signal {
            Some(view) => {
                vec![view.stream_data(
                    &format!("{}:{}", env.run_id, env.seq),
                    "cold_start",
                    false,
                    &env.correlation_id,
                )]
            }
            None => vec![env.payload.clone()],
        },
        "step" | "artifact" => vec![env.payload.clone()],
        "log" => {
            let step = env.payload.get("stepIndex").cloned().unwrap_or(Value::Null);
            let lines = env
                .payload
                .get("lines")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            lines
                .into_iter()
                .map(|l| json!({"stepIndex": step, "lineNo": l["lineNo"], "stream": l["stream"], "line": l["line"]}))
                .collect()
        }
        _ => vec![serde_json::to_value(env).unwrap_or(Value::Null)],
    }
}

/// One SSE event per data value, all with the event's seq as `id`.
pub fn sse_frame(seq: u64, name: &str, data: &[Value]) -> Bytes {
    let mut out = String::new();
    for value in data {
        // `to_string` of a JSON value is one line: strings escape newlines.
        out.push_str(&format!("id: {seq}\nevent: {name}\ndata: {value}\n\n"));
    }
    Bytes::from(out)
}

/// One WebSocket text message per data value (SPEC §5.2).
pub fn ws_frames(kind: StreamKind, id: &str, seq: u64, name: &str, data: &[Value]) -> Vec<Bytes> {
    data.iter()
        .map(|value| {
            let frame = json!({"op": "event", "stream": kind.as_str(), "id": id, "seq": seq, "event": name, "data": value});
            Bytes::from(frame.to_string())
        })
        .collect()
}

impl Published {
    /// The frames of this event for a stream kind and wire, encoded on first
    /// use and shared by every later subscriber of the same kind and wire.
    pub fn frames(&self, kind: StreamKind, wire: Wire, name: &str) -> Arc<[Bytes]> {
        let slot = match wire {
            Wire::Sse => &self.sse[kind as usize],
            Wire::WebSocket => &self.ws[kind as usize],
        };
        slot.get_or_init(|| {
            let data = event_data(self, name);
            let seq = self.envelope.seq;
            match wire {
                Wire::Sse => Arc::from(vec![sse_frame(seq, name, &data)]),
                Wire::WebSocket => {
                    let id = match kind {
                        StreamKind::Run => self.envelope.run_id.as_str(),
                        _ => self.envelope.job_id.as_deref().unwrap_or(""),
                    };
                    Arc::from(ws_frames(kind, id, seq, name, &data))
                }
            }
        })
        .clone()
    }
}
