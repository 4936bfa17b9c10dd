//! The signal's `etaSeconds`, `lastKnownOutcome` and `nextActions` (SPEC
//! §4.3) on REST and streams, and `POST /jobs/{id}/retry` (ADR 0028).
use std::time::{Duration, Instant};

use base64::Engine;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn signal(app: &TestApp, run: &str) -> Value {
    let res = app.first_signal(run).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    v["firstSignal"].clone()
}

/// `(action, method, href)` of each next action, in order.
fn actions(signal: &Value) -> Vec<(String, String, String)> {
    signal["nextActions"]
        .as_array()
        .unwrap_or_else(|| panic!("nextActions is an array: {signal}"))
        .iter()
        .map(|a| {
            assert!(a["label"].as_str().is_some_and(|l| !l.is_empty()), "{a}");
            let s = |k: &str| a[k].as_str().unwrap().to_owned();
            (s("action"), s("method"), s("href"))
        })
        .collect()
}

fn act(action: &str, method: &str, href: String) -> (String, String, String) {
    (action.into(), method.into(), href)
}

fn cancel(job: &str) -> (String, String, String) {
    act("cancel", "POST", format!("/jobs/{job}/cancel"))
}

fn retry(job: &str) -> (String, String, String) {
    act("retry", "POST", format!("/jobs/{job}/retry"))
}

fn logs(job: &str) -> (String, String, String) {
    act("view_logs", "GET", format!("{ORCH}/stream/jobs/{job}"))
}

/// Follow an action's href as a UI would (tenant header, JSON body on POST).
async fn follow(app: &TestApp, (_, method, href): &(String, String, String)) -> reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.req(method.clone(), href);
    if method == Method::POST {
        req = req.json(&json!({}));
    }
    req.send().await.unwrap()
}

/// The job stream answers with SSE (its first bytes arrive).
async fn assert_logs_stream(app: &TestApp, action: &(String, String, String)) {
    let res = follow(app, action).await;
    assert_eq!(res.status(), 200, "view_logs {}", action.2);
    assert_eq!(header(&res, "content-type"), "text/event-stream");
}

async fn wait_state(app: &TestApp, job: &str, state: &str) -> Value {
    // Generous: an idle deadline would need events; a job's state is polled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = app.job(job).await;
        if got["state"] == state {
            return got;
        }
        assert!(Instant::now() < deadline, "job never reached {state}: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

async fn lease(app: &TestApp) -> (String, String) {
    let leased = app
        .lease(json!({"workerId": "w", "packs": ["external"], "leaseSeconds": 3600}))
        .await;
    assert_eq!(leased.len(), 1, "one job leased");
    let s = |k: &str| leased[0][k].as_str().unwrap().to_owned();
    (s("jobId"), s("leaseId"))
}

async fn fail(app: &TestApp, job: &str, lease: &str) {
    let body = json!({"leaseId": lease, "code": "boom", "message": "it broke"});
    assert_eq!(app.worker(job, "fail", body).await.status(), 200);
}

async fn complete(app: &TestApp, job: &str, lease: &str, artifacts: Value) {
    let body = json!({"leaseId": lease, "result": {"ok": true}, "artifacts": artifacts});
    assert_eq!(app.worker(job, "complete", body).await.status(), 200);
}

/// A fast built-in `demo` pack (two short steps and an artifact) in its own
/// packs dir, beside the shipped `external` one.
async fn fast_demo_app() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let demo = json!({"name": "demo", "executor": "builtin",
        "steps": [
            {"name": "one", "stage": "fetch", "run": ["sh", "-c", "sleep 0.4"]},
            {"name": "two", "stage": "report", "run": ["sh", "-c", "sleep 0.4; mkdir -p out; echo hi > out/report.txt"]}
        ],
        "artifacts": [{"name": "report", "path": "out/report.txt", "content_type": "text/plain"}]});
    std::fs::write(dir.path().join("demo.json"), demo.to_string()).unwrap();
    let packs = dir.path().display().to_string();
    let app = spawn_with(&[("Executor__PacksDir", packs.as_str())]).await;
    (app, dir)
}

async fn submit_demo(app: &TestApp) -> (String, String) {
    let res = app.submit(json!({"pack": "demo"})).await;
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    (s("job_id"), s("run_id"))
}

#[actix_web::test]
async fn after_three_successful_demo_jobs_a_new_one_has_an_eta_within_the_observed_range() {
    let (app, _packs) = fast_demo_app().await;
    let mut durations = Vec::new();
    for n in 0..3 {
        let (job, run) = submit_demo(&app).await;
        if n == 0 {
            // No history yet: no estimate, whatever the state.
            assert_eq!(signal(&app, &run).await["etaSeconds"], Value::Null);
        }
        let done = wait_state(&app, &job, "done").await;
        durations.push(ms(&done["finished_at"]) - ms(&done["started_at"]));
        // A finished run has no ETA.
        assert_eq!(signal(&app, &run).await["etaSeconds"], Value::Null);
    }
    let min = *durations.iter().min().unwrap();
    let max = *durations.iter().max().unwrap();
    let (job, run) = submit_demo(&app).await;

    // The signal derived when the job was queued (nothing elapsed yet)
    // estimates the median of the three.
    let queued = app
        .timeline(&run)
        .await
        .into_iter()
        .find(|e| e["type"] == "signal.changed")
        .unwrap();
    let eta = queued["payload"]["signal"]["etaSeconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("queued signal has an ETA: {queued}"));
    assert!(
        min / 1000 <= eta && eta <= (max + 999) / 1000,
        "eta {eta}s within the observed {min}..{max} ms"
    );

    // Pollers and streams see it while the run is active (never more than
    // the queued estimate: time only counts it down).
    let rest = signal(&app, &run).await;
    let stream = app
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    let mut events = stream.bytes_stream().eventsource();
    let first = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let data: Value = serde_json::from_str(&first.data).unwrap();
    let done = app.job(&job).await["state"] == "done";
    if !done {
        for got in [&rest["etaSeconds"], &data["signal"]["etaSeconds"]] {
            let got = got.as_i64().unwrap_or_else(|| panic!("ETA: {rest} {data}"));
            assert!((0..=eta).contains(&got), "{got} within 0..={eta}");
        }
    }
    wait_state(&app, &job, "done").await;
    assert_eq!(signal(&app, &run).await["etaSeconds"], Value::Null);
}

#[actix_web::test]
async fn a_run_after_a_failed_one_shows_it_as_last_known_outcome_also_after_a_restart() {
    let app = spawn_app().await;
    let (first_job, first_run) = app.submit_job(None).await;
    assert_eq!(signal(&app, &first_run).await["lastKnownOutcome"], Value::Null);
    let (job, lease_id) = lease(&app).await;
    assert_eq!(job, first_job);
    fail(&app, &job, &lease_id).await;
    let failed_at = app.job(&job).await["finished_at"].clone();

    let (_, run) = app.submit_job(None).await;
    let res = app.first_signal(&run).await;
    let etag = header(&res, "etag");
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["firstSignal"]["lastKnownOutcome"],
        json!({"status": "failed", "runId": first_run, "finishedAt": failed_at})
    );

    // The failed run itself knew of no other run when it was derived.
    assert_eq!(signal(&app, &first_run).await["lastKnownOutcome"], Value::Null);

    // After a restart the cold path serves the same signal and ETag.
    let app = app.restart(&[]).await;
    let res = app.first_signal(&run).await;
    assert_eq!(header(&res, "etag"), etag);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again, body);

    // The next run, once this one succeeded, points at it.
    let (job, lease_id) = lease(&app).await;
    complete(&app, &job, &lease_id, json!([])).await;
    let (_, third) = app.submit_job(None).await;
    let outcome = &signal(&app, &third).await["lastKnownOutcome"];
    assert_eq!(outcome["status"], "succeeded");
    assert_eq!(outcome["runId"], run.as_str());
}

#[actix_web::test]
async fn each_state_offers_exactly_its_actions_and_every_href_works() {
    let app = spawn_app().await;

    // Queued: cancel and logs.
    let (job, run) = app.submit_job(None).await;
    let queued = actions(&signal(&app, &run).await);
    assert_eq!(queued, [cancel(&job), logs(&job)]);
    assert_logs_stream(&app, &queued[1]).await;
    assert_eq!(follow(&app, &queued[0]).await.status(), 202);

    // Canceled: retry and logs; the retry is a new job of the same run.
    let canceled = actions(&signal(&app, &run).await);
    assert_eq!(canceled, [logs(&job), retry(&job)]);
    assert_logs_stream(&app, &canceled[0]).await;
    let res = follow(&app, &canceled[1]).await;
    assert_eq!(res.status(), 202);
    let retried: Value = res.json().await.unwrap();
    let job2 = retried["job_id"].as_str().unwrap().to_owned();
    assert_ne!(job2, job);
    let detail = app.job(&job2).await;
    assert_eq!(detail["retry_of"], job.as_str());
    assert_eq!(detail["run_id"], run.as_str());
    assert_eq!(detail["pack"], "external");
    assert_eq!(detail["inputs"], json!({"n": 1}));
    assert_eq!(detail["state"], "queued");
    assert_eq!(app.job(&job).await["retry_of"], Value::Null);

    // The run is judged by the retry now.
    let s = signal(&app, &run).await;
    assert_eq!(s["type"], "queued");
    assert_eq!(actions(&s), [cancel(&job2), logs(&job2)]);

    // Working: cancel and logs.
    let (leased, lease_id) = lease(&app).await;
    assert_eq!(leased, job2);
    let report = json!({"leaseId": lease_id, "stage": "fetch", "message": "busy"});
    assert_eq!(app.worker(&job2, "progress", report).await.status(), 200);
    let s = signal(&app, &run).await;
    assert_eq!(s["type"], "phase");
    assert_eq!(actions(&s), [cancel(&job2), logs(&job2)]);

    // Failed: retry and logs.
    fail(&app, &job2, &lease_id).await;
    let s = signal(&app, &run).await;
    assert_eq!(s["type"], "failed");
    let failed = actions(&s);
    assert_eq!(failed, [logs(&job2), retry(&job2)]);
    assert_logs_stream(&app, &failed[0]).await;
    let res = follow(&app, &failed[1]).await;
    assert_eq!(res.status(), 202);
    let job3 = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.job(&job3).await["retry_of"], job2.as_str());

    // Succeeded with an artifact: logs, and a download of the result
    // (`completion`) and of the artifact.
    let (leased, lease_id) = lease(&app).await;
    assert_eq!(leased, job3);
    let bytes = b"the report\n";
    let upload = json!([{"name": "report.txt", "content_type": "text/plain",
        "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes)}]);
    complete(&app, &job3, &lease_id, upload).await;
    let s = signal(&app, &run).await;
    assert_eq!(s["type"], "succeeded");
    let done = actions(&s);
    let download = act(
        "download_artifact",
        "GET",
        format!("/jobs/{job3}/artifacts/report.txt"),
    );
    let result = act(
        "download_artifact",
        "GET",
        format!("/jobs/{job3}/artifacts/completion"),
    );
    assert_eq!(done, [logs(&job3), result, download]);
    let res = follow(&app, &done[2]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(&res.bytes().await.unwrap()[..], bytes);
    assert_eq!(follow(&app, &done[1]).await.status(), 200);
    assert_logs_stream(&app, &done[0]).await;
    let run_body: Value = app
        .get(&format!("{ORCH}/runs/{run}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run_body["status"], "succeeded", "{run_body}");

    // The stream's first frame carries the same actions.
    let stream = app
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    let mut events = stream.bytes_stream().eventsource();
    let first = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.event, "first_signal");
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(data["signal"]["nextActions"], s["nextActions"]);
    assert_eq!(data["signal"]["etaSeconds"], Value::Null);

    // A job with only a result offers it for download.
    let (_, run) = app.submit_job(None).await;
    let (job, lease_id) = lease(&app).await;
    complete(&app, &job, &lease_id, json!([])).await;
    let completion = act(
        "download_artifact",
        "GET",
        format!("/jobs/{job}/artifacts/completion"),
    );
    assert_eq!(actions(&signal(&app, &run).await), [logs(&job), completion]);
}

#[actix_web::test]
async fn retry_refuses_what_it_cannot_retry() {
    let app = spawn_app().await;
    let (job, _) = app.submit_job(None).await;
    let path = format!("/jobs/{job}/retry");
    let res = app.post(&path, &json!({})).send().await.unwrap();
    assert_problem(res, 409, "not_retryable").await;
    // Nothing changed: the run still has its one job.
    assert_eq!(app.job(&job).await["state"], "queued");

    let res = app
        .req_as("someone-else", Method::POST, &path)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "job_not_found").await;
    let res = app
        .post("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry", &json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "job_not_found").await;
    let res = app.post("/jobs/nope/retry", &json!({})).send().await.unwrap();
    assert_problem(res, 400, "invalid_job_id").await;
    let res = app.get(&path).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(header(&res, "allow"), "POST");

    // A job is retried once; the chain goes on from its retry.
    let cancel = format!("/jobs/{job}/cancel");
    assert_eq!(app.post(&cancel, &json!({})).send().await.unwrap().status(), 202);
    let res = app.post(&path, &json!({})).send().await.unwrap();
    assert_eq!(res.status(), 202);
    assert!(header(&res, "location").starts_with("/jobs/"));
    let res = app.post(&path, &json!({})).send().await.unwrap();
    assert_problem(res, 409, "already_retried").await;

    // A pack no longer declared is not queued again.
    let (job, _) = app.submit_job(None).await;
    let cancel = format!("/jobs/{job}/cancel");
    assert_eq!(app.post(&cancel, &json!({})).send().await.unwrap().status(), 202);
    let empty = tempfile::tempdir().unwrap();
    let packs = empty.path().display().to_string();
    let app = app.restart(&[("Executor__PacksDir", packs.as_str())]).await;
    let res = app
        .post(&format!("/jobs/{job}/retry"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "unknown_pack").await;
    assert_eq!(app.job(&job).await["state"], "canceled");
}
