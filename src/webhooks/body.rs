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

/// `<job_id>:<state>` during the job's first attempt, `<job_id>:<state>:<attempt>`
/// once it was requeued (SPEC §7.2), so the second `queued` of a requeued
/// job is not taken for a retry of the first. `attempt` is the job's
/// stored counter, the body's `attempt`: 0 until the first lease, then the
/// number of leases (SPEC §7.1). So a transition of a job not leased in its
/// current attempt (`queued`, or `canceled` while queued) is past the first
/// attempt when `attempt >= 1`; any other (leased) one when `attempt >= 2`.
fn idempotency_key(job_id: &str, change: &StateChange<'_>) -> String {
    let leased = match change.state {
        "queued" => false,
        "loading" => true,
        _ => change.previous != Some("queued"),
    };
    if change.attempt > i64::from(leased) {
        format!("{job_id}:{}:{}", change.state, change.attempt)
    } else {
        format!("{job_id}:{}", change.state)
    }
}

/// The outbox row for this transition, when the job has a webhook URL.
pub fn delivery(job: &JobRecord, change: &StateChange<'_>) -> Option<NewDelivery> {
    let url = job.webhook_url.as_ref()?;
    let key = idempotency_key(&job.job_id, change);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(state: &str, previous: Option<&str>, attempt: i64) -> String {
        let event = Value::Null;
        let change = StateChange {
            state,
            previous,
            attempt,
            at_ms: 0,
            event: &event,
        };
        idempotency_key("J", &change)
    }

    #[test]
    fn the_first_attempt_has_no_suffix_and_every_requeue_a_new_one() {
        let first = [
            key("queued", None, 0),
            key("loading", Some("queued"), 1),
            key("working", Some("loading"), 1),
            key("canceled", Some("working"), 1),
            key("canceled", Some("queued"), 0),
        ];
        assert_eq!(
            first,
            [
                "J:queued",
                "J:loading",
                "J:working",
                "J:canceled",
                "J:canceled"
            ]
        );
        let requeued = [
            key("queued", Some("working"), 1),
            key("loading", Some("queued"), 2),
            key("working", Some("loading"), 2),
            key("queued", Some("loading"), 2),
            key("canceled", Some("queued"), 2),
            key("failed", Some("loading"), 3),
        ];
        assert_eq!(
            requeued,
            [
                "J:queued:1",
                "J:loading:2",
                "J:working:2",
                "J:queued:2",
                "J:canceled:2",
                "J:failed:3"
            ]
        );
    }
}
