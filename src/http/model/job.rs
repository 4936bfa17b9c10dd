//! The bodies of the `/jobs` routes and of the worker routes that answer
//! with a job (snake_case): what the handlers serialize is what the
//! OpenAPI document describes.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::artifacts::StoredArtifact;
use crate::store::{rfc3339, ArtifactRecord, JobRecord, WebhookDelivery};

/// A job: everything a poller needs to reconcile.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    /// ULID.
    pub job_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    pub pack: String,
    /// The failed or canceled job this one retries (`POST /jobs/{id}/retry`), else null.
    #[schema(required = true)]
    pub retry_of: Option<String>,
    #[schema(value_type = JobStateName)]
    pub state: String,
    /// Set while the job waits (e.g. retry backoff), else null.
    #[schema(required = true)]
    pub blocked: Option<JobBlocked>,
    pub attempt: i64,
    pub max_attempts: i64,
    #[schema(value_type = Object)]
    pub inputs: Value,
    pub correlation_id: String,
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime, required = true)]
    pub started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
    pub progress: JobProgress,
    /// The current remote-worker lease, or null.
    #[schema(required = true)]
    pub lease: Option<JobLease>,
    /// The completion result, or null.
    #[schema(required = true, value_type = Option<Object>)]
    pub result: Option<Value>,
    #[schema(required = true)]
    pub error: Option<JobError>,
    /// The artifacts of a done job (empty otherwise, and in lists).
    pub artifacts: Vec<JobArtifact>,
    #[schema(required = true)]
    pub state_webhook_url: Option<String>,
}

impl Job {
    /// The job as stored; `artifacts` empty (see [`Job::with_artifacts`]).
    pub fn new(job: &JobRecord) -> Job {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
        };
        Job {
            job_id: job.job_id.clone(),
            run_id: job.run_id.clone(),
            pack: job.pack.clone(),
            retry_of: job.retry_of.clone(),
            state: job.state.clone(),
            blocked: job.blocked_reason.as_ref().map(|reason| JobBlocked {
                reason: reason.clone(),
            }),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            inputs: serde_json::from_str(&job.inputs)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            correlation_id: job.correlation_id.clone(),
            idempotency_key: job.idempotency_key.clone(),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            progress: JobProgress {
                stage: job.stage.clone(),
                step: job.step.clone(),
                step_index: job.step_index,
                message: job.message.clone(),
                percent: job.percent,
                log_lines: job.log_lines,
            },
            lease: job.lease_id.as_ref().map(|_| JobLease {
                worker_id: job.lease_worker.clone(),
                lease_until: job.lease_until.map(rfc3339),
            }),
            result: parse(&job.result),
            error: job.error_code.as_ref().map(|code| JobError {
                code: code.clone(),
                message: job.error_message.clone(),
            }),
            artifacts: Vec::new(),
            state_webhook_url: job.webhook_url.clone(),
        }
    }

    pub fn with_artifacts(mut self, artifacts: Vec<JobArtifact>) -> Job {
        self.artifacts = artifacts;
        self
    }
}

/// `GET /jobs/{jobId}` (and the 200 of `POST /jobs` with `Prefer: wait`):
/// the job and the delivery status of its state webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    /// Null without a `state_webhook_url`.
    #[schema(required = true)]
    pub webhook: Option<JobWebhook>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStateName {
    Queued,
    Loading,
    Working,
    Done,
    Failed,
    Canceled,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobBlocked {
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobProgress {
    #[schema(required = true)]
    pub stage: Option<String>,
    #[schema(required = true)]
    pub step: Option<String>,
    #[schema(required = true)]
    pub step_index: Option<i64>,
    #[schema(required = true)]
    pub message: Option<String>,
    #[schema(required = true)]
    pub percent: Option<f64>,
    pub log_lines: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobLease {
    #[schema(required = true)]
    pub worker_id: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub lease_until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobError {
    pub code: String,
    #[schema(required = true)]
    pub message: Option<String>,
}

/// An artifact of a done job (`completion` holds the result JSON). In the
/// `done` event and webhook, artifacts up to `Artifacts.InlineMaxBytes` also
/// carry `content_base64`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    /// `/jobs/{jobId}/artifacts/{name}`
    pub url: String,
}

impl JobArtifact {
    fn new(job_id: &str, name: &str, size: u64, sha256: &str, content_type: &str) -> JobArtifact {
        JobArtifact {
            name: name.to_owned(),
            size,
            sha256: sha256.to_owned(),
            content_type: content_type.to_owned(),
            url: format!("/jobs/{job_id}/artifacts/{name}"),
        }
    }
}

impl From<&ArtifactRecord> for JobArtifact {
    fn from(a: &ArtifactRecord) -> JobArtifact {
        JobArtifact::new(
            &a.job_id,
            &a.name,
            a.size as u64,
            &a.sha256,
            &a.content_type,
        )
    }
}

impl JobArtifact {
    /// An artifact just written for `job_id` (its row commits with `done`).
    pub fn stored(job_id: &str, a: &StoredArtifact) -> JobArtifact {
        JobArtifact::new(job_id, &a.name, a.size, &a.sha256, &a.content_type)
    }
}

/// `webhook` of `GET /jobs/{id}`: the URL and each delivery's status
/// (oldest first), so a poller can see what its receiver missed.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobWebhook {
    pub url: String,
    /// Oldest first: one per state transition.
    pub deliveries: Vec<WebhookDeliveryStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryStatus {
    pub state: String,
    /// `<job_id>:<state>`, also sent as `webhook-id`.
    pub idempotency_key: String,
    /// pending | sending | delivered | failed | gone
    pub status: String,
    pub attempts: i64,
    #[schema(required = true)]
    pub last_status_code: Option<i64>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// When the next attempt is due (null once settled).
    #[schema(format = DateTime, required = true)]
    pub next_attempt_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub delivered_at: Option<String>,
}

impl From<&WebhookDelivery> for WebhookDeliveryStatus {
    fn from(d: &WebhookDelivery) -> WebhookDeliveryStatus {
        let open = matches!(d.status.as_str(), "pending" | "sending");
        WebhookDeliveryStatus {
            state: d.state.clone(),
            idempotency_key: d.idempotency_key.clone(),
            status: d.status.clone(),
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            next_attempt_at: open.then(|| rfc3339(d.next_attempt_at)),
            delivered_at: d.delivered_at.map(rfc3339),
        }
    }
}

/// `202` of `POST /jobs` and `POST /jobs/{jobId}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
    #[schema(format = "uuid")]
    pub run_id: String,
    #[schema(value_type = JobStateName)]
    pub state: String,
}

impl From<&JobRecord> for JobAccepted {
    fn from(job: &JobRecord) -> JobAccepted {
        JobAccepted {
            job_id: job.job_id.clone(),
            run_id: job.run_id.clone(),
            state: job.state.clone(),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Cursor (a job id) for the next page, or null.
    #[schema(required = true)]
    pub next: Option<String>,
}
