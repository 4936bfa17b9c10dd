//! Retention prune (issue 4 point 7): terminal work past `Jobs.RetentionHours`
//! goes with everything it owns; nothing non-terminal is ever pruned.
use crate::helpers::*;
use serde_json::{json, Value};

/// A cutoff in the future: every finished job counts as past retention.
fn future_cutoff() -> i64 {
    chrono::Utc::now().timestamp_millis() + 3_600_000
}

async fn prune(app: &TestApp) -> usize {
    runsignal::tasks::prune_batch(&app.state, future_cutoff(), 100)
        .await
        .unwrap()
}

#[actix_web::test]
async fn finished_runs_are_deleted_with_their_events_jobs_and_signal() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    app.worker(&job, "complete", json!({"leaseId": l["leaseId"]}))
        .await;
    assert_eq!(
        app.first_signal(&run).await.status(),
        200,
        "resident and cached before the prune"
    );
    app.state.store.write_snapshots(0, None, 50).await.unwrap();

    assert_eq!(prune(&app).await, 1);
    assert_problem(
        app.get(&format!("/jobs/{job}")).send().await.unwrap(),
        404,
        "job_not_found",
    )
    .await;
    assert_problem(
        app.get(&format!("{ORCH}/runs/{run}")).send().await.unwrap(),
        404,
        "run_not_found",
    )
    .await;
    assert_problem(
        app.get(&format!("{ORCH}/runs/{run}/timeline"))
            .send()
            .await
            .unwrap(),
        404,
        "run_not_found",
    )
    .await;
    assert_problem(app.first_signal(&run).await, 404, "run_not_found").await;
    assert!(app
        .state
        .store
        .get_snapshot(TENANT, &run)
        .await
        .unwrap()
        .is_none());
    let list: Value = app.get("/jobs").send().await.unwrap().json().await.unwrap();
    assert!(list["jobs"].as_array().unwrap().is_empty());
}

#[actix_web::test]
async fn nothing_non_terminal_is_ever_pruned() {
    let app = spawn_app().await;
    let (done, mixed) = app.submit_job(None).await;
    let l = app.lease_one().await;
    app.worker(&done, "complete", json!({"leaseId": l["leaseId"]}))
        .await;
    // A run whose only job is leased, one whose job works, one with no job.
    let (loading, _) = app.submit_job(None).await;
    let (working, _) = app.submit_job(None).await;
    let leases = app
        .lease(json!({"workerId": "w", "packs": ["external"], "max": 5}))
        .await;
    assert_eq!(leases.len(), 2);
    let lease_of =
        |job: &str| leases.iter().find(|j| j["jobId"] == job).unwrap()["leaseId"].clone();
    app.worker(
        &working,
        "progress",
        json!({"leaseId": lease_of(&working), "stage": "fetch"}),
    )
    .await;
    let empty: Value = app.create_run(json!({})).await.json().await.unwrap();
    // The first run gets a second job that stays queued.
    let (queued, _) = app.submit_job(Some(&mixed)).await;

    assert_eq!(prune(&app).await, 0, "no run has only terminal jobs");
    for (job, state) in [
        (&done, "done"),
        (&queued, "queued"),
        (&loading, "loading"),
        (&working, "working"),
    ] {
        assert_eq!(app.job(job).await["state"], state);
    }
    let empty_run = format!("{ORCH}/runs/{}", empty["runId"].as_str().unwrap());
    assert_eq!(app.get(&empty_run).send().await.unwrap().status(), 200);

    // Once the mixed run's last job finishes, the run goes as a whole.
    let l = app.lease_one().await;
    app.worker(&queued, "complete", json!({"leaseId": l["leaseId"]}))
        .await;
    assert_eq!(prune(&app).await, 1);
    assert_eq!(
        app.get(&format!("/jobs/{done}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/jobs/{queued}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(app.job(&working).await["state"], "working");
}

#[actix_web::test]
async fn runs_inside_retention_are_kept() {
    let app = spawn_app().await;
    let (job, _) = app.submit_job(None).await;
    let l = app.lease_one().await;
    app.worker(&job, "complete", json!({"leaseId": l["leaseId"]}))
        .await;
    let past = chrono::Utc::now().timestamp_millis() - 3_600_000;
    assert!(
        runsignal::tasks::prune_batch(&app.state, past, 100)
            .await
            .unwrap()
            == 0,
        "finished after the cutoff"
    );
    runsignal::tasks::prune_runs(app.state.clone().into_inner()).await;
    assert_eq!(
        app.job(&job).await["state"],
        "done",
        "the retention sweep keeps recent work"
    );
}
