//! A pack run's `plan` (SPEC §5.1): the first frame of a pack-run stream
//! opened without a last id (SSE) or `after` (WebSocket). It lists every
//! declared step of the job's pack with its status, so a monitor joining
//! mid-run can draw "step N of M" at once ([ADR 0029](../../docs/adr/0029-pack-run-plan-skipped-steps-and-artifact-events.md)).
//!
//! The plan is drawn from the job's stored `job.loading` and `step.*`
//! events up to the subscription's `live_from`, the seq from which live
//! events come: the plan and the live events after it meet exactly, as a
//! replay and the live queue do. Its id is the job's latest seq up to there.

use std::collections::BTreeMap;

use bytes::Bytes;
use runsignal_actors::envelope::types;
use runsignal_actors::subscriber::{sse_frame, ws_frames};
use runsignal_actors::{Envelope, Filter, StreamKind, Unsubscribe, Wire};
use serde_json::{json, Value};

use super::errors::ApiError;
use super::feed::Subscription;
use crate::store::JobRecord;
use crate::AppState;

/// The `plan` frame of a fresh pack-run subscription (`None` when its
/// `?events=` leaves `plan` out). On a store error the subscription is
/// closed before the error is returned.
pub async fn frame(
    state: &AppState,
    tenant: &str,
    job_id: &str,
    sub: &Subscription,
    filter: &Filter,
    wire: Wire,
) -> Result<Option<Bytes>, ApiError> {
    if !filter.wants("plan") {
        return Ok(None);
    }
    let read = async {
        let job = state.store.get_job(tenant, job_id).await?;
        let (events, latest) = state.store.job_steps(tenant, job_id, sub.live_from).await?;
        Ok::<_, crate::store::StoreError>((job, events, latest))
    };
    let (job, events, latest) = match read.await {
        Ok(read) => read,
        Err(e) => {
            sub.addr.do_send(Unsubscribe(sub.id));
            return Err(e.into());
        }
    };
    let declared: Vec<&str> = state
        .packs
        .get(&job.pack)
        .map(|p| p.steps.iter().map(|s| s.name.as_str()).collect())
        .unwrap_or_default();
    let data = plan_data(&job, &declared, &events);
    let seq = latest.unwrap_or(sub.live_from);
    let frame = match wire {
        Wire::Sse => sse_frame(seq, "plan", &[data]),
        Wire::WebSocket => ws_frames(StreamKind::PackRun, job_id, seq, "plan", &[data])
            .into_iter()
            .next()
            .unwrap_or_default(),
    };
    Ok(Some(frame))
}

/// A declared step that has not started (in the current attempt).
fn pending(index: usize, name: &str) -> Value {
    json!({"stepIndex": index, "stepName": name, "status": "pending", "exitCode": null,
           "startedAt": null, "finishedAt": null})
}

/// `{"jobId","pack","totalSteps","percent","steps":[…]}`: the declared
/// steps, then any step a worker reported outside them, by `stepIndex`;
/// each as its latest `step.*` event has it since the attempt began
/// (`job.loading` starts every step afresh), else `pending`.
pub fn plan_data(job: &JobRecord, declared: &[&str], events: &[Envelope]) -> Value {
    let fresh = || -> BTreeMap<i64, Value> {
        declared
            .iter()
            .enumerate()
            .map(|(i, name)| (i as i64, pending(i, name)))
            .collect()
    };
    let mut steps = fresh();
    for event in events {
        match event.event_type.as_str() {
            types::JOB_LOADING => steps = fresh(),
            types::STEP_STARTED | types::STEP_FINISHED => {
                let Some(index) = event.payload["stepIndex"].as_i64() else {
                    continue;
                };
                let mut step = event.payload.clone();
                let declared_name = usize::try_from(index).ok().and_then(|i| declared.get(i));
                if let (Some(name), true) = (declared_name, step["stepName"].is_null()) {
                    step["stepName"] = json!(name);
                }
                steps.insert(index, step);
            }
            _ => {}
        }
    }
    let percent = match job.state.as_str() {
        "done" => Some(100.0),
        _ => job.percent,
    };
    json!({
        "jobId": job.job_id,
        "pack": job.pack,
        "totalSteps": steps.len(),
        "percent": percent,
        "steps": steps.into_values().collect::<Vec<_>>(),
    })
}
