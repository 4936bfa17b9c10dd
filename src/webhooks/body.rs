//! The state webhook's body (SPEC §7.2), built when the transition is
//! written: the outbox row holds the exact bytes the dispatcher will POST
//! and sign.

use serde_json::{json, Value};

use crate::store::tx::NewDelivery;
use crate::store::{rfc3339, JobRecord};

/// One state transition of a job, as the lifecycle wrote it.
pub struct StateChange<'a> {
    pub state: &'a str,
    pub previous: Option<&'a str>,
    pub attempt: i64,
    pub at_ms: i64,
    /// The state event's payload: its `result`, `error` and `artifacts`
    /// are carried into the body.
    pub event: &'a Value,
}

/// The outbox row for this transition, when the job has a webhook URL.
pub fn delivery(job: &JobRecord, change: &StateChange<'_>) -> Option<NewDelivery> {
    let url = job.webhook_url.as_ref()?;
    let key = format!("{}:{}", job.job_id, change.state);
    let mut body = json!({
        "job_id": job.job_id, "run_id": job.run_id, "state": change.state,
        "previous_state": change.previous, "occurred_at": rfc3339(change.at_ms),
        "idempotency_key": key, "attempt": change.attempt,
    });
    for field in ["result", "error", "artifacts"] {
        if let Some(v) = change.event.get(field) {
            body[field] = v.clone();
        }
    }
    Some(NewDelivery {
        tenant_id: job.tenant_id.clone(),
        job_id: job.job_id.clone(),
        state: change.state.to_owned(),
        idempotency_key: key,
        url: url.clone(),
        body: body.to_string(),
        at: change.at_ms,
    })
}
