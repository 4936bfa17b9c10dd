//! Records and requests the store reads and writes.

use runsignal_actors::{JobFacts, JobState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Unix epoch milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 UTC with milliseconds (`2026-11-22T08:00:10.123Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: String,
    pub name: Option<String>,
    pub labels: Value,
    pub correlation_id: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRecord {
    pub tenant_id: String,
    pub run_id: String,
    pub name: Option<String>,
    pub labels: String,
    pub status: String,
    pub last_seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    pub status: Option<String>,
}

/// A new run's id when the client names none: a UUIDv7, so ids made later
/// sort later and the indexes keyed by run (runs, events, a run's jobs)
/// grow at their end instead of at random pages (ADR 0055).
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A runs-list cursor: `<created_at ms>_<runId>` of the last run returned.
pub fn parse_run_cursor(cursor: &str) -> Option<(i64, String)> {
    let (at, id) = cursor.split_once('_')?;
    Some((at.parse().ok()?, id.to_owned()))
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub pack: String,
    pub inputs: Value,
    pub run_id: Option<String>,
    pub correlation_id: String,
    pub webhook_url: Option<String>,
    pub idempotency_key: Option<String>,
    pub max_attempts: u32,
    pub idempotency_window_ms: i64,
}

/// `Deserialize` reads a job from a JSON array of its columns in this
/// order, `percent` as text (SQLite's packed reads, `sql::PACKED_ROW`).
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub tenant_id: String,
    pub run_id: String,
    pub pack: String,
    pub inputs: String,
    pub state: String,
    pub blocked_reason: Option<String>,
    pub attempt: i64,
    pub max_attempts: i64,
    pub lease_id: Option<String>,
    pub lease_worker: Option<String>,
    pub lease_until: Option<i64>,
    pub lease_seconds: Option<i64>,
    pub stage: Option<String>,
    pub step: Option<String>,
    pub step_index: Option<i64>,
    pub message: Option<String>,
    #[serde(deserialize_with = "percent_from_text")]
    pub percent: Option<f64>,
    pub log_lines: i64,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub failure_start: Option<i64>,
    pub failure_end: Option<i64>,
    pub correlation_id: String,
    pub idempotency_key: Option<String>,
    pub webhook_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub state_changed_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub step_started_at: Option<i64>,
    /// The failed or canceled job this one retries (`POST /jobs/{id}/retry`).
    pub retry_of: Option<String>,
}

/// A packed read's `percent`: the double's text with 17 significant
/// digits (exactly the stored value), or null.
fn percent_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    use serde::Deserialize;
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// The columns of a job row a write can change, in the order of the bits
/// of [`JobRecord::changed_columns`] (the others are fixed at insert).
pub const JOB_UPDATE_COLUMNS: [&str; 24] = [
    "state",
    "blocked_reason",
    "attempt",
    "lease_id",
    "lease_worker",
    "lease_until",
    "lease_seconds",
    "stage",
    "step",
    "step_index",
    "message",
    "percent",
    "log_lines",
    "result",
    "error_code",
    "error_message",
    "failure_start",
    "failure_end",
    "idempotency_key",
    "updated_at",
    "state_changed_at",
    "started_at",
    "finished_at",
    "step_started_at",
];

impl JobRecord {
    /// Which of [`JOB_UPDATE_COLUMNS`] differ between `self` and `stored`
    /// (bit `i` for column `i`), so that a write sets only those (ADR 0048);
    /// `None` when a column fixed at insert differs (not the same job).
    pub fn changed_columns(&self, stored: &JobRecord) -> Option<u32> {
        let fixed = self.job_id == stored.job_id
            && self.tenant_id == stored.tenant_id
            && self.run_id == stored.run_id
            && self.pack == stored.pack
            && self.inputs == stored.inputs
            && self.max_attempts == stored.max_attempts
            && self.correlation_id == stored.correlation_id
            && self.webhook_url == stored.webhook_url
            && self.created_at == stored.created_at
            && self.retry_of == stored.retry_of;
        if !fixed {
            return None;
        }
        let same = [
            self.state == stored.state,
            self.blocked_reason == stored.blocked_reason,
            self.attempt == stored.attempt,
            self.lease_id == stored.lease_id,
            self.lease_worker == stored.lease_worker,
            self.lease_until == stored.lease_until,
            self.lease_seconds == stored.lease_seconds,
            self.stage == stored.stage,
            self.step == stored.step,
            self.step_index == stored.step_index,
            self.message == stored.message,
            // Bitwise: a NaN is never stored, and -0.0 is not 0.0 on disk.
            self.percent.map(f64::to_bits) == stored.percent.map(f64::to_bits),
            self.log_lines == stored.log_lines,
            self.result == stored.result,
            self.error_code == stored.error_code,
            self.error_message == stored.error_message,
            self.failure_start == stored.failure_start,
            self.failure_end == stored.failure_end,
            self.idempotency_key == stored.idempotency_key,
            self.updated_at == stored.updated_at,
            self.state_changed_at == stored.state_changed_at,
            self.started_at == stored.started_at,
            self.finished_at == stored.finished_at,
            self.step_started_at == stored.step_started_at,
        ];
        Some(
            same.iter()
                .enumerate()
                .filter(|(_, same)| !**same)
                .fold(0, |mask, (i, _)| mask | 1 << i),
        )
    }

    /// A job just accepted by `POST /jobs`.
    pub fn queued(tenant: &str, run_id: &str, new: &NewJob, now: i64) -> JobRecord {
        JobRecord {
            job_id: runsignal_actors::new_ulid(),
            tenant_id: tenant.to_owned(),
            run_id: run_id.to_owned(),
            pack: new.pack.clone(),
            inputs: new.inputs.to_string(),
            state: JobState::Queued.as_str().to_owned(),
            blocked_reason: None,
            attempt: 0,
            max_attempts: i64::from(new.max_attempts),
            lease_id: None,
            lease_worker: None,
            lease_until: None,
            lease_seconds: None,
            stage: None,
            step: None,
            step_index: None,
            message: None,
            percent: None,
            log_lines: 0,
            result: None,
            error_code: None,
            error_message: None,
            failure_start: None,
            failure_end: None,
            correlation_id: new.correlation_id.clone(),
            idempotency_key: new.idempotency_key.clone(),
            webhook_url: new.webhook_url.clone(),
            created_at: now,
            updated_at: now,
            state_changed_at: now,
            started_at: None,
            finished_at: None,
            step_started_at: None,
            retry_of: None,
        }
    }

    /// What a lessee is handed for this (just leased) job.
    pub fn leased(&self, until: i64) -> LeasedJob {
        LeasedJob {
            job_id: self.job_id.clone(),
            run_id: self.run_id.clone(),
            pack: self.pack.clone(),
            inputs: serde_json::from_str(&self.inputs).unwrap_or(Value::Null),
            lease_id: self.lease_id.clone().unwrap_or_default(),
            lease_until: rfc3339(until),
            attempt: self.attempt,
        }
    }

    pub fn job_state(&self) -> JobState {
        // Only this module writes `state`, always from `JobState::as_str`.
        JobState::parse(&self.state).unwrap_or(JobState::Failed)
    }

    /// What signal derivation needs from this job.
    pub fn facts(&self) -> JobFacts {
        let state = self.job_state();
        let message = match state {
            JobState::Failed => self.error_message.clone().or_else(|| self.message.clone()),
            _ => self.message.clone(),
        };
        JobFacts {
            job_id: self.job_id.clone(),
            state,
            blocked: self.blocked_reason.clone(),
            stage: self.stage.clone(),
            step: self.step.clone(),
            message,
            created_at_ms: self.created_at,
            state_changed_at: rfc3339(self.state_changed_at),
            failure_range: self.failure_start.zip(self.failure_end),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub limit: u32,
    pub cursor: Option<String>,
    pub state: Option<JobState>,
    pub run_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub worker_id: String,
    pub packs: Vec<String>,
    pub max: u32,
    pub lease_seconds: u32,
    pub correlation_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeasedJob {
    pub job_id: String,
    pub run_id: String,
    pub pack: String,
    pub inputs: Value,
    pub lease_id: String,
    pub lease_until: String,
    pub attempt: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

/// Change to the blocked flag carried by a progress report.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockedChange {
    Unchanged,
    Set(String),
    Clear,
}

#[derive(Debug, Clone)]
pub struct ProgressReport {
    pub lease_id: String,
    pub stage: Option<String>,
    pub step: Option<String>,
    pub step_index: Option<i64>,
    pub message: Option<String>,
    pub percent: Option<f64>,
    pub log: Vec<LogLine>,
    pub blocked: BlockedChange,
    pub correlation_id: String,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub lease_id: String,
    pub result: Option<Value>,
    pub correlation_id: String,
    /// Stored already (files written, or bytes for their rows, ADR 0061);
    /// their rows commit with the `done` transition.
    pub artifacts: Vec<crate::artifacts::StoredArtifact>,
}

/// An artifact's metadata row (`artifacts`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ArtifactRecord {
    pub tenant_id: String,
    pub job_id: String,
    pub run_id: String,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    /// The file (empty when `content` holds the bytes).
    pub path: String,
    pub created_at: i64,
    /// The bytes of a small artifact (ADR 0061); not read by listings.
    #[sqlx(default)]
    pub content: Option<Vec<u8>>,
}

impl ArtifactRecord {
    /// `{"name","size","sha256","content_type","url"}` (`GET /jobs/{id}`).
    pub fn json(&self) -> Value {
        crate::artifacts::metadata_json(
            &self.job_id,
            &self.name,
            self.size as u64,
            &self.sha256,
            &self.content_type,
        )
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub lease_id: String,
    pub retryable: bool,
    pub code: String,
    pub message: String,
    pub log_range: Option<(i64, i64)>,
    /// Exit code of the failed step, when the worker ran a process.
    pub exit_code: Option<i64>,
    pub correlation_id: String,
}

/// One state webhook in the outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookDelivery {
    pub id: i64,
    pub tenant_id: String,
    pub job_id: String,
    pub state: String,
    pub idempotency_key: String,
    pub url: String,
    /// The exact bytes to POST (and sign).
    pub body: String,
    /// pending | sending | delivered | failed | gone
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// How a webhook claim shares the free slots between tenants (SPEC §11,
/// ADR 0025): round robin, each tenant's rows in due order, no tenant past
/// `per_tenant` deliveries in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimShare {
    /// `Webhooks.MaxInFlightPerTenant` as in force (≥ 1).
    pub per_tenant: u32,
    /// Deliveries of each tenant this dispatcher has in flight.
    pub busy: Vec<(String, u32)>,
    /// The tenant served last: the round continues with the next tenant id
    /// after it (wrapping).
    pub after: Option<String>,
    /// How long a claim holds: a row still `sending` past it was claimed by
    /// a node that died and is sent again (several nodes, ADR 0037).
    pub claim_ms: i64,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookOutcome {
    /// 2xx.
    Delivered { status: u16 },
    /// Try again at `at_ms`.
    Retry {
        at_ms: i64,
        status: Option<u16>,
        error: String,
    },
    /// Retries exhausted, or refused (SSRF guard): no more attempts.
    Failed { status: Option<u16>, error: String },
    /// 410 Gone: stop, for this and every later delivery of the job.
    Gone { status: u16 },
}

#[derive(Debug, Clone, Default)]
pub struct TimelineQuery {
    pub after: u64,
    pub limit: u32,
    pub correlation_id: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_run_ids_are_uuid_v7_and_sort_in_creation_order() {
        let ids: Vec<String> = (0..200).map(|_| super::new_run_id()).collect();
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert_eq!(id, &id.to_lowercase(), "lowercase hyphenated");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "later ids sort after earlier ones");
    }
}
