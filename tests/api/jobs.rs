//! The async job surface `/jobs` (SPEC §7).
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

#[actix_web::test]
async fn submit_answers_202_with_a_ulid_and_location_and_a_new_run() {
    let app = spawn_app().await;
    let res = app.submit(json!({"pack": "external"})).await;
    assert_eq!(res.status(), 202);
    let location = header(&res, "location");
    let v: Value = res.json().await.unwrap();
    let job = v["job_id"].as_str().unwrap();
    assert_eq!(job.len(), 26);
    assert!(ulid::Ulid::from_string(job).is_ok());
    assert_eq!(location, format!("/jobs/{job}"));
    assert_eq!(v["state"], "queued");
    let run = v["run_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(run).is_ok());
    let run: Value = app
        .get(&format!("{ORCH}/runs/{run}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "running");
    let got = app.job(job).await;
    assert_eq!(
        (
            got["state"].as_str(),
            got["attempt"].as_i64(),
            got["max_attempts"].as_i64()
        ),
        (Some("queued"), Some(0), Some(3))
    );
}

#[actix_web::test]
async fn job_ids_are_monotonic() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(app.submit_job(None).await.0);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[actix_web::test]
async fn idempotency_key_returns_the_first_job_per_tenant() {
    let app = spawn_app().await;
    let body = json!({"pack": "external", "idempotency_key": "order-42"});
    let a: Value = app.submit(body.clone()).await.json().await.unwrap();
    let b: Value = app.submit(body.clone()).await.json().await.unwrap();
    assert_eq!(a["job_id"], b["job_id"]);
    assert_eq!(a["run_id"], b["run_id"]);
    let list: Value = app.get("/jobs").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "no duplicate");
    let other: Value = app
        .req_as("globex", Method::POST, "/jobs")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other["job_id"], a["job_id"], "keys are per tenant");
}

/// The same key with a different request is a client bug, not a retry:
/// answering the first job would hide it (the second request silently never
/// runs).
#[actix_web::test]
async fn an_idempotency_key_reused_for_a_different_request_is_a_conflict() {
    let app = spawn_app().await;
    let first = json!({"pack": "external", "inputs": {"n": 123456789012345678901234567890u128},
        "idempotency_key": "order-7"});
    let a: Value = app.submit(first.clone()).await.json().await.unwrap();
    let run: Value = app.create_run(json!({})).await.json().await.unwrap();
    let changes = [
        ("pack", json!({"pack": "demo"})),
        ("inputs", json!({"inputs": {"n": 123456789012345678901234567891u128}})),
        ("state_webhook_url", json!({"state_webhook_url": "http://127.0.0.1:9/h"})),
        ("run_id", json!({"run_id": run["runId"]})),
    ];
    for (field, change) in changes {
        let mut body = first.clone();
        body.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let problem = assert_problem(app.submit(body).await, 409, "idempotency_conflict").await;
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{field}: {problem}"
        );
    }
    let again: Value = app.submit(first.clone()).await.json().await.unwrap();
    assert_eq!(again["job_id"], a["job_id"], "the same request is still a retry");
    let list: Value = app.get("/jobs").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "nothing written");
}

#[actix_web::test]
async fn jobs_join_an_existing_run_and_list_with_filters_and_cursor() {
    let app = spawn_app().await;
    let run: Value = app
        .create_run(json!({"name": "nightly"}))
        .await
        .json()
        .await
        .unwrap();
    let run_id = run["runId"].as_str().unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.submit_job(Some(run_id)).await.0);
    }
    app.submit_job(None).await;
    let page: Value = app
        .get(&format!("/jobs?run_id={run_id}&limit=3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()],
        "newest first"
    );
    let cursor = page["next"].as_str().unwrap();
    let page2: Value = app
        .get(&format!("/jobs?run_id={run_id}&limit=3&cursor={cursor}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second: Vec<&str> = page2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(second, vec![ids[1].as_str(), ids[0].as_str()]);
    assert!(page2["next"].is_null());
    app.lease_one().await;
    let loading: Value = app
        .get("/jobs?state=loading")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(loading["jobs"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn cancel_is_a_state_change_that_ends_the_lease() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    let res = app
        .post(&format!("/jobs/{job}/cancel"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["state"], "canceled");
    assert_eq!(app.job(&job).await["state"], "canceled");
    let fs: Value = app.first_signal(&run).await.json().await.unwrap();
    assert_eq!(fs["firstSignal"]["type"], "canceled");
    let res = app
        .worker(&job, "complete", json!({"leaseId": l["leaseId"]}))
        .await;
    assert_problem(res, 409, "lease_lost").await;
    let res = app
        .post(&format!("/jobs/{job}/cancel"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "invalid_state").await;
}

#[actix_web::test]
async fn correlation_ids_are_echoed_and_carried_into_events() {
    let app = spawn_app().await;
    let res = app
        .post("/jobs", &json!({"pack": "external"}))
        .header("X-Correlation-Id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "x-correlation-id"), "trace-123");
    let v: Value = res.json().await.unwrap();
    let run = v["run_id"].as_str().unwrap();
    let events = app.timeline(run).await;
    assert!(events.iter().all(|e| e["correlationId"] == "trace-123"));
    let res = app
        .submit(json!({"pack": "external", "run_id": run, "correlation_id": "from-body"}))
        .await;
    assert!(
        !header(&res, "x-correlation-id").is_empty(),
        "generated when absent"
    );
    let events = app.timeline(run).await;
    assert!(events.iter().any(|e| e["correlationId"] == "from-body"));
}

#[actix_web::test]
async fn accepted_jobs_survive_a_restart() {
    let app = spawn_app().await;
    let (job, _) = app.submit_job(None).await;
    let app = app.restart(&[]).await;
    assert_eq!(app.job(&job).await["state"], "queued");
    assert_eq!(app.lease_one().await["jobId"], job);
}

#[actix_web::test]
async fn prefer_wait_answers_with_the_finished_job() {
    let app = spawn_app().await;
    let worker = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let jobs = app
            .lease(json!({"workerId": "w", "packs": ["external"], "waitSeconds": 10}))
            .await;
        let job = jobs[0]["jobId"].as_str().unwrap().to_owned();
        app.worker(
            &job,
            "complete",
            json!({"leaseId": jobs[0]["leaseId"], "result": {"answer": 42}}),
        )
        .await;
    };
    let submit = app
        .post(
            "/jobs",
            &json!({"pack": "external", "state_webhook_url": "https://hooks.example.com/x"}),
        )
        .header("Prefer", "wait=10")
        .send();
    let (res, ()) = futures_util::join!(submit, worker);
    let res = res.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "preference-applied"), "wait=10");
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["state"], "done");
    assert_eq!(job["result"], json!({"answer": 42}));
    // The synchronous path fires the same state webhooks (docs/adr/0017).
    assert_eq!(
        job["webhook"]["url"], "https://hooks.example.com/x",
        "the same body as GET /jobs/{{id}}"
    );
    let job_id = job["job_id"].as_str().unwrap();
    let queued = app.state.store.job_webhooks(TENANT, job_id).await.unwrap();
    let states: Vec<&str> = queued.iter().map(|d| d.state.as_str()).collect();
    assert_eq!(states, ["queued", "loading", "done"]);
}

#[actix_web::test]
async fn prefer_wait_falls_back_to_202_when_the_job_is_still_running() {
    let app = spawn_app().await;
    let res = app
        .post("/jobs", &json!({"pack": "external"}))
        .header("Prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(header(&res, "preference-applied"), "wait=1");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["state"], "queued");
    let res = app
        .post("/jobs", &json!({"pack": "external"}))
        .header("Prefer", "wait=soon")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "an invalid preference is ignored");
    assert!(header(&res, "preference-applied").is_empty());
}

#[actix_web::test]
async fn json_bodies_are_accepted_with_parameters_and_json_suffixes() {
    let app = spawn_app().await;
    for kind in ["application/json; charset=utf-8", "Application/JSON", "application/vnd.acme+json"] {
        let res = app
            .req(Method::POST, "/jobs")
            .header("Content-Type", kind)
            .body(r#"{"pack":"external"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{kind}");
    }
}
