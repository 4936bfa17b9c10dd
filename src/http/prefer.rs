//! `Prefer: wait=N` on `POST /jobs` (RFC 7240): answer with the finished job
//! when it ends within N seconds, else the usual 202.
//!
//! The wait is a subscription to the job on its run's actor (the same one a
//! job stream uses), so a waiting request costs no store polling: the store
//! is read once before waiting and once when the job's terminal event
//! arrives.

use std::time::Duration;

use actix_web::HttpRequest;
use runsignal_actors::{Filter, RunKey, StreamKind, SubscribeReply, Unsubscribe, Wire};

use super::errors::ApiError;
use super::feed::subscribe;
use crate::store::JobRecord;
use crate::AppState;

/// Longest wait honoured; a larger `wait` is capped (RFC 7240 lets a server
/// apply a preference partially).
pub const MAX_WAIT_SECONDS: u64 = 60;

/// The `wait` preference in seconds, if the request states a valid one.
/// Invalid or unknown preferences are ignored, as RFC 7240 asks.
pub fn wait_preference(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let (name, value) = pref.split(';').next()?.split_once('=')?;
            let value = value.trim().trim_matches('"');
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.parse::<u64>().ok())
                .flatten()
        })
        .next()
        .map(|secs| secs.min(MAX_WAIT_SECONDS))
}

/// Wait until `job` is terminal or `secs` pass. `Some`: the finished job.
pub async fn wait_for_job(
    state: &AppState,
    job: JobRecord,
    secs: u64,
) -> Result<Option<JobRecord>, ApiError> {
    if job.job_state().is_terminal() {
        return Ok(Some(job));
    }
    let key = RunKey::new(&job.tenant_id, &job.run_id);
    let mut filter = Filter::new(StreamKind::Job);
    filter.job_id = Some(job.job_id.as_str().into());
    filter.events = Some(vec!["completed".into()]);
    let (tx, mut rx) = runsignal_actors::queue::channel(4);
    let (addr, reply) = subscribe(state, &key, filter, Wire::Sse, tx).await?;
    let SubscribeReply::Subscribed { id, .. } = reply else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    // Read after subscribing: a job that ended in between is seen here.
    let mut current = state.store.get_job(&job.tenant_id, &job.job_id).await?;
    while !current.job_state().is_terminal() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(d)) if d.closes => {
                current = state.store.get_job(&job.tenant_id, &job.job_id).await?
            }
            Ok(Some(_)) => {}
            // The subscription was dropped (actor evicted or retired): check
            // the store once a second until the deadline.
            Ok(None) => {
                if tokio::time::Instant::now() + Duration::from_secs(1) > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                current = state.store.get_job(&job.tenant_id, &job.job_id).await?;
            }
            Err(_) => break,
        }
    }
    addr.do_send(Unsubscribe(id));
    Ok(current.job_state().is_terminal().then_some(current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn pref(values: &[&str]) -> Option<u64> {
        let mut req = TestRequest::default();
        for v in values {
            req = req.append_header(("Prefer", *v));
        }
        wait_preference(&req.to_http_request())
    }

    #[test]
    fn parses_rfc7240_wait() {
        assert_eq!(pref(&["wait=5"]), Some(5));
        assert_eq!(pref(&["respond-async, wait=10"]), Some(10));
        assert_eq!(pref(&["handling=lenient", "Wait=\"3\""]), Some(3));
        assert_eq!(pref(&["wait=3600"]), Some(MAX_WAIT_SECONDS), "capped");
        assert_eq!(
            pref(&["wait=soon"]),
            None,
            "invalid preferences are ignored"
        );
        assert_eq!(pref(&["return=minimal"]), None);
        assert_eq!(pref(&[]), None);
    }
}
