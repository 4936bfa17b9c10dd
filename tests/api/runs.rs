//! Runs and the timeline (SPEC §6, §7).
use crate::helpers::*;
use serde_json::{json, Value};

#[actix_web::test]
async fn create_get_and_conflict() {
    let app = spawn_app().await;
    let res = app
        .create_run(json!({"runId": "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE", "name": "nightly", "labels": {"team": "core"}}))
        .await;
    assert_eq!(res.status(), 201);
    let id = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    assert_eq!(header(&res, "location"), format!("{ORCH}/runs/{id}"));
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (
            v["runId"].as_str(),
            v["name"].as_str(),
            v["status"].as_str()
        ),
        (Some(id), Some("nightly"), Some("pending"))
    );
    assert_eq!(v["labels"], json!({"team": "core"}));
    let got: Value = app
        .get(&format!("{ENGINE}/runs/{}", id.to_uppercase()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        got["runId"], id,
        "ids are case-insensitive in, lowercase out"
    );
    let res = app.create_run(json!({"runId": id})).await;
    assert_problem(res, 409, "run_exists").await;
}

#[actix_web::test]
async fn list_runs_pages_and_filters_by_status() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_run(json!({})).await;
    }
    let (job, _) = app.submit_job(None).await;
    let l = app.lease_one().await;
    app.worker(&job, "complete", json!({"leaseId": l["leaseId"]}))
        .await;
    let page: Value = app
        .get(&format!("{ORCH}/runs?limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["runs"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let rest: Value = app
        .get(&format!("{ORCH}/runs?limit=10&cursor={next}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["runs"].as_array().unwrap().len(), 2);
    assert!(rest["next"].is_null());
    let done: Value = app
        .get(&format!("{ORCH}/runs?status=succeeded"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["runs"].as_array().unwrap().len(), 1);
    let pending: Value = app
        .get(&format!("{ORCH}/runs?status=pending"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["runs"].as_array().unwrap().len(), 3);
}

#[actix_web::test]
async fn timeline_pages_with_after_limit_next_and_filters_by_correlation() {
    let app = spawn_app().await;
    let run: Value = app.create_run(json!({})).await.json().await.unwrap();
    let run = run["runId"].as_str().unwrap();
    for i in 0..3 {
        app.post("/jobs", &json!({"pack": "external", "run_id": run}))
            .header("X-Correlation-Id", format!("c{i}"))
            .send()
            .await
            .unwrap();
    }
    let all = app.timeline(run).await;
    let n = all.len() as u64;
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page: Value = app
            .get(&format!(
                "{ENGINE}/runs/{run}/timeline?after={after}&limit=2"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(paged, all);
    assert_eq!(all.last().unwrap()["seq"].as_u64(), Some(n));
    let c1: Value = app
        .get(&format!("{ORCH}/runs/{run}/timeline?correlationId=c1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c1 = c1["events"].as_array().unwrap();
    assert!(!c1.is_empty() && c1.iter().all(|e| e["correlationId"] == "c1"));
    assert!(c1.iter().any(|e| e["type"] == "job.queued"));
}

#[actix_web::test]
async fn a_last_timeline_page_of_exactly_limit_events_has_no_next() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let n = app.timeline(&run).await.len();
    assert!(n >= 2, "a run with a job has several events");
    let page = |query: String| {
        let app = &app;
        let run = &run;
        async move {
            let v: Value = app
                .get(&format!("{ORCH}/runs/{run}/timeline?{query}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    // The whole timeline in one page of exactly its length: nothing follows.
    let whole = page(format!("limit={n}")).await;
    assert_eq!(whole["events"].as_array().unwrap().len(), n);
    assert!(whole["next"].is_null(), "{whole}");
    // A page that ends exactly at the last event, after a first page.
    let last = page(format!("after=1&limit={}", n - 1)).await;
    assert_eq!(last["events"].as_array().unwrap().len(), n - 1);
    assert!(last["next"].is_null(), "{last}");
    // One short of the end: `next` points at the page's last event.
    let first = page(format!("limit={}", n - 1)).await;
    assert_eq!(first["next"].as_u64(), Some(n as u64 - 1));
}
