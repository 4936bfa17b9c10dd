//! Blocked while queued (SPEC §3, §4.1 rule 3): a queued job nobody can
//! take is flagged blocked with a reason after `Jobs.BlockedAfterSeconds`,
//! the signal and the streams show it, and taking the job clears it.
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};

use crate::helpers::*;

type Events = std::pin::Pin<Box<dyn Stream<Item = (String, Value)>>>;

/// The run's SSE stream as (event, data) pairs.
async fn run_stream(app: &TestApp, run: &str) -> Events {
    let res = app
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    Box::pin(res.bytes_stream().eventsource().filter_map(|e| async move {
        let e = e.ok()?;
        Some((e.event, serde_json::from_str(&e.data).unwrap_or(Value::Null)))
    }))
}

/// Read until `stop` holds for an event; gives up after 30 s without one.
async fn read_until(stream: &mut Events, stop: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    while let Ok(Some((event, data))) =
        tokio::time::timeout(Duration::from_secs(30), stream.next()).await
    {
        let done = stop(&event, &data);
        got.push((event, data));
        if done {
            return got;
        }
    }
    panic!("the stream never got there: {got:?}");
}

/// Poll the REST first signal until `pred` holds (30 s at most).
pub async fn signal_until(app: &TestApp, run: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = app.first_signal(run).await;
        let v: Value = if res.status() == 200 {
            res.json().await.unwrap()
        } else {
            Value::Null
        };
        if pred(&v["firstSignal"]) {
            return v["firstSignal"].clone();
        }
        assert!(Instant::now() < deadline, "signal never got there: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The run's `job.blocked` payloads and `job.loading`, in timeline order.
pub async fn blocked_story(app: &TestApp, run: &str) -> Vec<Value> {
    app.timeline(run)
        .await
        .into_iter()
        .filter(|e| e["type"] == "job.blocked" || e["type"] == "job.loading")
        .map(|e| match e["type"].as_str() {
            Some("job.loading") => json!("loading"),
            _ => e["payload"].clone(),
        })
        .collect()
}

#[actix_web::test]
async fn a_job_no_worker_asks_for_is_blocked_until_a_lease_takes_it() {
    let app = spawn_with(&[("Jobs__BlockedAfterSeconds", "1")]).await;
    let (job, run) = app.submit_job(None).await;
    let mut stream = run_stream(&app, &run).await;

    let got = read_until(&mut stream, |event, data| {
        event == "first_signal" && data["signal"]["kind"] == 3
    })
    .await;
    let (_, signal) = got.last().unwrap();
    assert_eq!(signal["signal"]["summary"], "waiting for a worker");
    assert!(
        got.iter().any(|(e, d)| e == "job" && d["type"] == "job.blocked"),
        "the run stream carries job.blocked: {got:?}"
    );
    let rest = signal_until(&app, &run, |s| s["type"] == "blocked").await;
    assert_eq!(rest["message"], "waiting for a worker");
    let polled = app.job(&job).await;
    assert_eq!(polled["state"], "queued");
    assert_eq!(polled["blocked"]["reason"], "waiting for a worker");

    let lease = app.lease_one().await;
    assert_eq!(lease["jobId"], job);
    let got = read_until(&mut stream, |event, data| {
        event == "first_signal" && data["signal"]["kind"] == 1
    })
    .await;
    assert!(
        got.iter().any(|(e, d)| e == "job"
            && d["type"] == "job.blocked"
            && d["payload"]["blocked"] == false),
        "the clearing is streamed too: {got:?}"
    );
    let rest = signal_until(&app, &run, |s| s["type"] != "blocked").await;
    assert_eq!(rest["type"], "started", "taken: the signal says started");
    assert!(app.job(&job).await["blocked"].is_null());
    assert_eq!(
        blocked_story(&app, &run).await,
        [
            json!({"blocked": true, "reason": "waiting for a worker"}),
            json!({"blocked": false, "reason": null}),
            json!("loading"),
        ],
        "flagged once, cleared by the lease before job.loading"
    );
}

#[actix_web::test]
async fn a_worker_asking_in_another_tenant_does_not_count() {
    let app = spawn_with(&[("Jobs__BlockedAfterSeconds", "1")]).await;
    // Workers lease per tenant: one long-polling for `external` in tenant
    // `other` cannot take this tenant's job.
    let (job, run) = app.submit_job(None).await;
    let other = app
        .req_as("other", reqwest::Method::POST, &format!("{ORCH}/workers/lease"))
        .json(&json!({"workerId": "w2", "packs": ["external"], "waitSeconds": 3}))
        .send();
    let (res, signal) = tokio::join!(
        other,
        signal_until(&app, &run, |s| s["type"] == "blocked")
    );
    assert_eq!(res.unwrap().status(), 200);
    assert_eq!(signal["message"], "waiting for a worker");
    assert_eq!(app.job(&job).await["state"], "queued");
}

#[actix_web::test]
async fn every_waiting_job_is_flagged_past_a_page_of_a_thousand() {
    let app = spawn_with(&[("Jobs__BlockedAfterSeconds", "1")]).await;
    let mut jobs = Vec::new();
    for _ in 0..21 {
        let batch = futures_util::future::join_all((0..50).map(|_| app.submit_job(None))).await;
        jobs.extend(batch.into_iter().map(|(job, _)| job));
    }
    jobs.sort();
    // The job with the highest id is on the second page of the check.
    let last = jobs.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let polled = app.job(last).await;
        if polled["blocked"]["reason"] == "waiting for a worker" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 1,050th job was never flagged: {polled}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
