//! The first-signal model (SPEC §4): deterministic derivation from a run's
//! jobs, the weak ETag over its stable content, and the two wire shapes
//! (REST body and stream `first_signal` data), each encoded once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use sha2::{Digest, Sha256};

use crate::envelope::{canonical_value_sha256_hex, write_integer, write_jcs, write_str};

/// A job's state in its lifecycle (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Loading,
    Working,
    Done,
    Failed,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Loading,
        JobState::Working,
        JobState::Done,
        JobState::Failed,
        JobState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Loading => "loading",
            JobState::Working => "working",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Canceled)
    }
}

/// Signal kinds with their wire numbers (SPEC §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    Queued = 0,
    Started = 1,
    Phase = 2,
    Blocked = 3,
    Failed = 4,
    Succeeded = 5,
    Canceled = 6,
    Unavailable = 7,
}

impl SignalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Queued => "queued",
            SignalKind::Started => "started",
            SignalKind::Phase => "phase",
            SignalKind::Blocked => "blocked",
            SignalKind::Failed => "failed",
            SignalKind::Succeeded => "succeeded",
            SignalKind::Canceled => "canceled",
            SignalKind::Unavailable => "unavailable",
        }
    }

    /// Text used when the deciding job has no message of its own.
    pub fn default_message(self) -> &'static str {
        match self {
            SignalKind::Queued => "Run queued",
            SignalKind::Started => "Run started",
            SignalKind::Phase => "Run in progress",
            SignalKind::Blocked => "Run blocked",
            SignalKind::Failed => "Run failed",
            SignalKind::Succeeded => "Run succeeded",
            SignalKind::Canceled => "Run canceled",
            SignalKind::Unavailable => "Signal unavailable, retry shortly",
        }
    }
}

/// Named phases and their wire numbers; any other stage is `unknown` (6).
const PHASES: [&str; 7] = [
    "resolve", "fetch", "restore", "analyze", "policy", "report", "unknown",
];

/// The phase number of a stage string.
pub fn phase_of(stage: &str) -> u8 {
    PHASES.iter().position(|p| *p == stage).unwrap_or(6) as u8
}

/// What derivation needs to know about one job of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub job_id: String,
    pub state: JobState,
    /// Reason when the job is flagged blocked.
    pub blocked: Option<String>,
    pub stage: Option<String>,
    pub step: Option<String>,
    /// Latest progress message, or the error summary of a failed job.
    pub message: Option<String>,
    /// Creation order key (ULIDs sort by creation).
    pub created_at_ms: i64,
    /// When the job entered its current state (RFC 3339, ms, UTC).
    pub state_changed_at: String,
    /// Log line range that explains a failure, when the worker named one.
    pub failure_range: Option<(i64, i64)>,
}

/// `artifact` of the REST body: what the signal points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalArtifact {
    pub kind: String,
    pub range: Option<LineRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LineRange {
    pub start: i64,
    pub end: i64,
}

/// A signal: its stable content (the ETag material, SPEC §4.2) and
/// `eta_seconds`, which is computed with it but outside the ETag (SPEC §4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    pub run_id: String,
    pub kind: SignalKind,
    pub phase: u8,
    pub stage: String,
    pub step: Option<String>,
    pub summary: String,
    pub job_id: Option<String>,
    pub at: String,
    pub artifact: SignalArtifact,
    /// `{"status","runId","finishedAt"}` of the tenant's latest other
    /// finished run of the deciding job's pack (ADR 0028).
    pub last_known_outcome: Option<Value>,
    /// `[{"action","label","method","href"}]`: what a UI can offer now.
    pub next_actions: Option<Value>,
    /// Seconds left, estimated when the signal was derived; not in the ETag.
    /// Absent in signals stored before it existed.
    #[serde(default)]
    pub eta_seconds: Option<i64>,
}

impl Signal {
    /// `W/"<sha256 hex>"` over the canonical JSON of the stable content
    /// ([`Signal::etag_material`]).
    pub fn etag(&self) -> String {
        let mut out = Vec::with_capacity(512);
        let digest = if self.write_etag_material(&mut out) {
            hex::encode(Sha256::digest(&out))
        } else {
            canonical_value_sha256_hex(&self.etag_material())
        };
        format!("W/\"{digest}\"")
    }

    /// The canonical JSON of [`Signal::etag_material`] written straight
    /// from the fields, keys in JCS order (every key is ASCII); `false`
    /// where an outcome or action needs the canonicalizer. The writer's
    /// thread computes this for every write that touches a run.
    fn write_etag_material(&self, out: &mut Vec<u8>) -> bool {
        let opt_str = |key: &[u8], v: Option<&str>, out: &mut Vec<u8>| {
            out.extend_from_slice(key);
            match v {
                Some(v) => write_str(v, out),
                None => out.extend_from_slice(b"null"),
            }
        };
        let opt_value = |key: &[u8], v: Option<&Value>, out: &mut Vec<u8>| {
            out.extend_from_slice(key);
            match v {
                Some(v) => write_jcs(v, out),
                None => {
                    out.extend_from_slice(b"null");
                    true
                }
            }
        };
        out.extend_from_slice(b"{\"artifact\":{\"kind\":");
        write_str(&self.artifact.kind, out);
        out.extend_from_slice(b",\"range\":");
        match self.artifact.range {
            Some(r) => {
                out.extend_from_slice(b"{\"end\":");
                write_integer(r.end as f64, out);
                out.extend_from_slice(b",\"start\":");
                write_integer(r.start as f64, out);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        opt_str(b",\"at\":", Some(&self.at), out);
        opt_str(b",\"jobId\":", self.job_id.as_deref(), out);
        out.extend_from_slice(b",\"kind\":");
        write_integer(f64::from(self.kind as u8), out);
        if !opt_value(
            b",\"lastKnownOutcome\":",
            self.last_known_outcome.as_ref(),
            out,
        ) || !opt_value(b",\"nextActions\":", self.next_actions.as_ref(), out)
        {
            return false;
        }
        out.extend_from_slice(b",\"phase\":");
        write_integer(f64::from(self.phase), out);
        opt_str(b",\"runId\":", Some(&self.run_id), out);
        opt_str(b",\"stage\":", Some(&self.stage), out);
        opt_str(b",\"step\":", self.step.as_deref(), out);
        opt_str(b",\"summary\":", Some(&self.summary), out);
        out.push(b'}');
        true
    }

    /// What the ETag covers: the signal without `etaSeconds`.
    pub fn etag_material(&self) -> Value {
        json!({
            "runId": self.run_id,
            "kind": self.kind as u8,
            "phase": self.phase,
            "stage": self.stage,
            "step": self.step,
            "summary": self.summary,
            "jobId": self.job_id,
            "at": self.at,
            "artifact": self.artifact,
            "lastKnownOutcome": self.last_known_outcome,
            "nextActions": self.next_actions,
        })
    }

    /// The `unavailable` signal answered when the cold path runs out of time.
    pub fn unavailable(run_id: &str, at: String) -> Signal {
        Signal {
            run_id: run_id.to_owned(),
            kind: SignalKind::Unavailable,
            phase: 6,
            stage: "unknown".into(),
            step: None,
            summary: SignalKind::Unavailable.default_message().into(),
            job_id: None,
            at,
            artifact: SignalArtifact {
                kind: "run".into(),
                range: None,
            },
            last_known_outcome: None,
            next_actions: None,
            eta_seconds: None,
        }
    }
}

/// Derive the run's signal from its jobs (SPEC §4.1). `None`: no jobs yet.
pub fn derive(run_id: &str, jobs: &[JobFacts]) -> Option<Signal> {
    if jobs.is_empty() {
        return None;
    }
    let mut ordered: Vec<&JobFacts> = jobs.iter().collect();
    ordered.sort_by(|a, b| (a.created_at_ms, &a.job_id).cmp(&(b.created_at_ms, &b.job_id)));
    let first = |pred: &dyn Fn(&JobFacts) -> bool| ordered.iter().copied().find(|j| pred(j));

    let (kind, job) = if let Some(j) = first(&|j| j.state == JobState::Failed) {
        (SignalKind::Failed, j)
    } else if let Some(j) = first(&|j| j.blocked.is_some() && !j.state.is_terminal()) {
        (SignalKind::Blocked, j)
    } else if let Some(j) = first(&|j| j.state == JobState::Working) {
        (SignalKind::Phase, j)
    } else if let Some(j) = first(&|j| j.state == JobState::Loading) {
        (SignalKind::Started, j)
    } else if let Some(j) = first(&|j| j.state == JobState::Queued) {
        (SignalKind::Queued, j)
    } else if let Some(j) = first(&|j| j.state == JobState::Canceled) {
        (SignalKind::Canceled, j)
    } else {
        (SignalKind::Succeeded, ordered[0])
    };

    let summary = match kind {
        SignalKind::Blocked => job.blocked.clone(),
        SignalKind::Failed | SignalKind::Phase => job.message.clone(),
        _ => None,
    }
    .filter(|m| !m.is_empty())
    .unwrap_or_else(|| kind.default_message().to_owned());

    // Stage and step describe the deciding job only while it is active or
    // when it explains a failure; run-level kinds point at the run.
    let detailed = matches!(
        kind,
        SignalKind::Phase | SignalKind::Blocked | SignalKind::Failed
    );
    let stage = if detailed { job.stage.clone() } else { None }.unwrap_or_else(|| "unknown".into());
    let step = if detailed { job.step.clone() } else { None };
    let artifact_kind = match (detailed, &step) {
        (true, Some(_)) => "step",
        (true, None) => "job",
        (false, _) => "run",
    };
    let range = match kind {
        SignalKind::Failed => job
            .failure_range
            .map(|(start, end)| LineRange { start, end }),
        _ => None,
    };
    // A run-level outcome happened when its last job reached its state.
    let at = match kind {
        SignalKind::Succeeded | SignalKind::Canceled => ordered
            .iter()
            .map(|j| j.state_changed_at.as_str())
            .max()
            .unwrap_or(&job.state_changed_at)
            .to_owned(),
        _ => job.state_changed_at.clone(),
    };
    Some(Signal {
        run_id: run_id.to_owned(),
        kind,
        phase: phase_of(&stage),
        stage,
        step,
        summary,
        job_id: Some(job.job_id.clone()),
        at,
        artifact: SignalArtifact {
            kind: artifact_kind.into(),
            range,
        },
        last_known_outcome: None,
        next_actions: None,
        eta_seconds: None,
    })
}

/// A signal ready to serve: ETag and REST body computed once, shared by
/// every reader through an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalView {
    pub signal: Signal,
    pub etag: String,
    /// The REST body of `GET …/first-signal`, encoded once.
    pub body: Bytes,
    /// Seq of the `signal.changed` event that produced this signal.
    pub seq: u64,
}

impl SignalView {
    pub fn new(signal: Signal, seq: u64) -> SignalView {
        let etag = signal.etag();
        SignalView::with_etag(signal, etag, seq)
    }

    /// A view of a signal whose ETag (`signal.etag()`) is known already.
    pub fn with_etag(signal: Signal, etag: String, seq: u64) -> SignalView {
        let body = rest_body(&signal, &etag);
        SignalView {
            signal,
            etag,
            body,
            seq,
        }
    }

    /// The stream `first_signal` data (SPEC §4.3).
    pub fn stream_data(
        &self,
        signal_id: &str,
        source: &str,
        cache_hit: bool,
        correlation_id: &str,
    ) -> Value {
        let s = &self.signal;
        json!({
            "runId": s.run_id,
            "etag": self.etag,
            "signal": {
                "version": "1.0",
                "signalId": signal_id,
                "jobId": s.job_id,
                "timestamp": s.at,
                "kind": s.kind as u8,
                "phase": s.phase,
                "scope": {"type": "run", "id": s.run_id},
                "summary": s.summary,
                "etaSeconds": s.eta_seconds,
                "lastKnownOutcome": s.last_known_outcome,
                "nextActions": s.next_actions,
                "diagnostics": {"cacheHit": cache_hit, "source": source, "correlationId": correlation_id},
            }
        })
    }
}

/// The REST body of `GET …/first-signal` for a signal (SPEC §4.2).
pub fn rest_body(signal: &Signal, etag: &str) -> Bytes {
    // Borrowed, with fields in the order a `json!` object writes its keys
    // (sorted), so the bytes are those of the `json!` body this replaced
    // (a property test holds the two together).
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "firstSignal")]
        first_signal: First<'a>,
        #[serde(rename = "runId")]
        run_id: &'a str,
        #[serde(rename = "summaryEtag")]
        summary_etag: &'a str,
    }
    #[derive(Serialize)]
    struct First<'a> {
        artifact: Artifact<'a>,
        at: &'a str,
        #[serde(rename = "etaSeconds")]
        eta_seconds: Option<i64>,
        #[serde(rename = "lastKnownOutcome")]
        last_known_outcome: &'a Option<Value>,
        message: &'a str,
        #[serde(rename = "nextActions")]
        next_actions: &'a Option<Value>,
        stage: &'a str,
        step: &'a Option<String>,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    #[derive(Serialize)]
    struct Artifact<'a> {
        kind: &'a str,
        range: Option<Range>,
    }
    #[derive(Serialize)]
    struct Range {
        end: i64,
        start: i64,
    }
    let body = Body {
        first_signal: First {
            artifact: Artifact {
                kind: &signal.artifact.kind,
                range: signal.artifact.range.map(|r| Range {
                    end: r.end,
                    start: r.start,
                }),
            },
            at: &signal.at,
            eta_seconds: signal.eta_seconds,
            last_known_outcome: &signal.last_known_outcome,
            message: &signal.summary,
            next_actions: &signal.next_actions,
            stage: &signal.stage,
            step: &signal.step,
            kind: signal.kind.as_str(),
        },
        run_id: &signal.run_id,
        summary_etag: etag,
    };
    // Strings, integers and JSON values always serialize.
    Bytes::from(serde_json::to_vec(&body).expect("signal body serializes"))
}

#[cfg(test)]
mod tests;
