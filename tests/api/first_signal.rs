//! First Signal API (SPEC §4.2).
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn body(res: reqwest::Response) -> Value {
    res.json().await.unwrap()
}

#[actix_web::test]
async fn status_codes_400_404_204() {
    let app = spawn_app().await;
    let res = app.first_signal("not-a-uuid").await;
    assert_problem(res, 400, "invalid_run_id").await;
    let res = app
        .first_signal("6fc74ab4-a997-41f2-adeb-8ee4565cb1b8")
        .await;
    assert_problem(res, 404, "run_not_found").await;
    let res = app
        .client
        .get(format!(
            "{}{ORCH}/runs/6fc74ab4-a997-41f2-adeb-8ee4565cb1b8/first-signal",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_tenant").await;
    let run: Value = app.create_run(json!({})).await.json().await.unwrap();
    let res = app.first_signal(run["runId"].as_str().unwrap()).await;
    assert_eq!(res.status(), 204, "run without jobs has no signal");
    assert_eq!(header(&res, "cache-control"), "no-cache");
}

#[actix_web::test]
async fn queued_signal_has_the_exact_shape_and_four_headers() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let res = app.first_signal(&run).await;
    assert_eq!(res.status(), 200);
    let etag = header(&res, "etag");
    assert!(etag.starts_with("W/\"") && etag.len() == 68, "{etag}");
    assert_eq!(header(&res, "cache-control"), "private, max-age=60");
    assert!(["hit", "miss"].contains(&header(&res, "cache-status").as_str()));
    assert!(["snapshot", "cold_start"].contains(&header(&res, "x-firstsignal-source").as_str()));
    let v = body(res).await;
    let at = v["firstSignal"]["at"].as_str().unwrap().to_owned();
    assert_eq!(
        v,
        json!({"runId": run, "firstSignal": {"type": "queued", "stage": "unknown", "step": null,
            "message": "Run queued", "at": at, "artifact": {"kind": "run", "range": null},
            "etaSeconds": null, "lastKnownOutcome": null,
            "nextActions": [
                {"action": "cancel", "label": "Cancel", "method": "POST", "href": format!("/jobs/{job}/cancel")},
                {"action": "view_logs", "label": "View logs", "method": "GET", "href": format!("{ORCH}/stream/jobs/{job}")}
            ]}, "summaryEtag": etag})
    );
    assert!(
        at.ends_with('Z') && at.len() == 24,
        "RFC 3339 with ms: {at}"
    );
    assert_eq!(app.job(&job).await["state"], "queued");
}

#[actix_web::test]
async fn both_prefixes_serve_the_same_signal() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let a = app
        .get(&format!("{ORCH}/runs/{run}/first-signal"))
        .send()
        .await
        .unwrap();
    let b = app
        .get(&format!("{ENGINE}/runs/{run}/first-signal"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&a, "etag"), header(&b, "etag"));
    assert_eq!(body(a).await, body(b).await);
}

#[actix_web::test]
async fn if_none_match_lists_weak_comparison_and_star() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let etag = header(&app.first_signal(&run).await, "etag");
    let strong = etag.trim_start_matches("W/").to_owned();
    let path = format!("{ORCH}/runs/{run}/first-signal");
    for (inm, want) in [
        (etag.clone(), 304),
        (format!("W/\"0000\", {etag}"), 304),
        (strong.clone(), 304),
        ("*".to_owned(), 304),
        ("W/\"0000\"".to_owned(), 200),
        ("\"nope\", W/\"other\"".to_owned(), 200),
    ] {
        let res = app
            .get(&path)
            .header("If-None-Match", &inm)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), want, "If-None-Match: {inm}");
        assert_eq!(header(&res, "etag"), etag);
        assert_eq!(header(&res, "cache-control"), "private, max-age=60");
        assert!(
            !header(&res, "cache-status").is_empty()
                && !header(&res, "x-firstsignal-source").is_empty()
        );
        let bytes = res.bytes().await.unwrap();
        assert_eq!(bytes.is_empty(), want == 304);
    }
    // `*` needs a signal to exist: a run without jobs is still 204.
    let empty: Value = app.create_run(json!({})).await.json().await.unwrap();
    let res = app
        .get(&format!(
            "{ORCH}/runs/{}/first-signal",
            empty["runId"].as_str().unwrap()
        ))
        .header("If-None-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

#[actix_web::test]
async fn head_answers_like_get_without_a_body() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let get = app.first_signal(&run).await;
    let head = app
        .req(Method::HEAD, &format!("{ORCH}/runs/{run}/first-signal"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "etag"), header(&get, "etag"));
    assert_eq!(header(&head, "cache-control"), "private, max-age=60");
    assert!(head.bytes().await.unwrap().is_empty());
}

#[actix_web::test]
async fn signal_follows_the_job_through_its_lifecycle() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let lease = app.lease_one().await;
    let fs = body(app.first_signal(&run).await).await;
    assert_eq!(fs["firstSignal"]["type"], "started");
    let lease_id = lease["leaseId"].as_str().unwrap();
    let res = app
        .worker(
            &job,
            "progress",
            json!({"leaseId": lease_id, "stage": "analyze", "step": "scan", "message": "scanning"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let fs = body(app.first_signal(&run).await).await;
    assert_eq!(fs["firstSignal"]["type"], "phase");
    assert_eq!(fs["firstSignal"]["stage"], "analyze");
    assert_eq!(fs["firstSignal"]["step"], "scan");
    assert_eq!(fs["firstSignal"]["message"], "scanning");
    assert_eq!(fs["firstSignal"]["artifact"]["kind"], "step");
    app.worker(
        &job,
        "complete",
        json!({"leaseId": lease_id, "result": {"ok": true}}),
    )
    .await;
    let fs = body(app.first_signal(&run).await).await;
    assert_eq!(fs["firstSignal"]["type"], "succeeded");
}

#[actix_web::test]
async fn a_hit_never_touches_the_store() {
    // The lease sweeper is the only background store caller: keep it out of
    // the window so the counter sees requests only.
    let app = spawn_with(&[("Jobs__LeaseSweepIntervalSeconds", "3600")]).await;
    let (_, run) = app.submit_job(None).await;
    let etag = header(&app.first_signal(&run).await, "etag");
    let before = app.store_calls();
    for i in 0..100 {
        let mut req = app.get(&format!("{ORCH}/runs/{run}/first-signal"));
        if i % 2 == 0 {
            req = req.header("If-None-Match", &etag);
        }
        let res = req.send().await.unwrap();
        assert_eq!(header(&res, "cache-status"), "hit");
        assert_eq!(header(&res, "x-firstsignal-source"), "snapshot");
    }
    assert_eq!(app.store_calls(), before, "100 hits made no store call");
}

#[actix_web::test]
async fn etag_is_stable_across_a_restart_and_the_source_tells_the_truth() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let lease = app.lease_one().await;
    app.worker(
        &job,
        "progress",
        json!({"leaseId": lease["leaseId"], "stage": "fetch", "message": "m"}),
    )
    .await;
    let before = app.first_signal(&run).await;
    let etag = header(&before, "etag");
    let body_before = body(before).await;

    let app = app.restart(&[]).await;
    let cold = app.first_signal(&run).await;
    assert_eq!(
        header(&cold, "etag"),
        etag,
        "same state, same ETag after a restart"
    );
    assert_eq!(header(&cold, "cache-status"), "miss");
    assert_eq!(header(&cold, "x-firstsignal-source"), "cold_start");
    assert_eq!(body(cold).await, body_before);
    let warm = app.first_signal(&run).await;
    assert_eq!(header(&warm, "cache-status"), "hit");
    assert_eq!(header(&warm, "x-firstsignal-source"), "snapshot");
    assert_eq!(header(&warm, "etag"), etag);
}

#[actix_web::test]
async fn snapshot_writer_makes_reads_after_a_restart_snapshot_hits() {
    let settings = [
        ("FirstSignal__SnapshotWriter__Enabled", "true"),
        ("FirstSignal__SnapshotWriter__PollIntervalSeconds", "1"),
    ];
    let app = spawn_with(&settings).await;
    let (_, run) = app.submit_job(None).await;
    let res = app.first_signal(&run).await;
    let etag = header(&res, "etag");
    let before = body(res).await;
    assert_eq!(before["firstSignal"]["nextActions"].as_array().unwrap().len(), 2);
    let mut written = false;
    for _ in 0..50 {
        if app
            .state
            .store
            .get_snapshot(TENANT, &run)
            .await
            .unwrap()
            .is_some()
        {
            written = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(written, "the snapshot writer stored the run's signal");
    let app = app.restart(&settings).await;
    let res = app.first_signal(&run).await;
    assert_eq!(header(&res, "cache-status"), "hit");
    assert_eq!(header(&res, "x-firstsignal-source"), "snapshot");
    assert_eq!(header(&res, "etag"), etag);
    // Every field, the signal fields (SPEC §4.3) too, came back from the
    // snapshot row as they were.
    assert_eq!(body(res).await, before);
}

/// The run's stored snapshot signal kind, if any.
async fn snapshot_kind(app: &TestApp, run: &str) -> Option<Value> {
    let (signal, _) = app.state.store.get_snapshot(TENANT, run).await.unwrap()?;
    Some(json!(signal.kind))
}

#[actix_web::test]
async fn a_snapshot_older_than_the_run_is_never_served_after_a_restart() {
    use futures_util::StreamExt;
    let writer = [
        ("FirstSignal__SnapshotWriter__Enabled", "true"),
        ("FirstSignal__SnapshotWriter__PollIntervalSeconds", "1"),
        ("FirstSignal__SnapshotWriter__MaxRunsPerTick", "1"),
    ];
    let app = spawn_with(&writer).await;
    let (_, run) = app.submit_job(None).await;
    let queued_etag = header(&app.first_signal(&run).await, "etag");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while snapshot_kind(&app, &run).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "no snapshot written");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(snapshot_kind(&app, &run).await, Some(json!("queued")));

    // The job is taken while no snapshot is written; then another run is
    // the newest, so a writer taking one run per tick never refreshes this
    // one: its snapshot stays `queued`.
    let app = app.restart(&[]).await;
    app.lease_one().await;
    let started = app.first_signal(&run).await;
    let started_etag = header(&started, "etag");
    assert_eq!(body(started).await["firstSignal"]["type"], "started");
    assert_ne!(started_etag, queued_etag);
    app.submit_job(None).await;

    // The stream's first frame after a restart.
    let app = app.restart(&writer).await;
    assert_eq!(snapshot_kind(&app, &run).await, Some(json!("queued")), "stale snapshot");
    let res = app
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut frames = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), frames.next())
        .await
        .expect("a first frame")
        .unwrap()
        .unwrap();
    assert_eq!(first.event, "first_signal");
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(data["signal"]["kind"], 1, "started, not the queued snapshot: {data}");
    assert_eq!(data["etag"], started_etag);
    drop(frames);

    // The REST read after a restart.
    let app = app.restart(&writer).await;
    assert_eq!(snapshot_kind(&app, &run).await, Some(json!("queued")), "stale snapshot");
    let res = app.first_signal(&run).await;
    assert_eq!(header(&res, "etag"), started_etag, "the run's current signal");
    assert_eq!(header(&res, "cache-status"), "miss", "a stale snapshot is no hit");
    assert_eq!(header(&res, "x-firstsignal-source"), "cold_start");
    assert_eq!(body(res).await["firstSignal"]["type"], "started");
}

#[actix_web::test]
async fn snapshot_writer_honours_tenant_max_runs_and_lookback() {
    let app = spawn_app().await;
    let (_, r1) = app.submit_job(None).await;
    let (_, r2) = app.submit_job(None).await;
    let store = &app.state.store;
    let now = chrono::Utc::now().timestamp_millis();
    assert_eq!(
        store.write_snapshots(now + 60_000, None, 50).await.unwrap(),
        0,
        "nothing updated in the lookback"
    );
    assert_eq!(
        store
            .write_snapshots(now - 60_000, Some("other"), 50)
            .await
            .unwrap(),
        0,
        "TenantId filters"
    );
    assert_eq!(
        store
            .write_snapshots(now - 60_000, Some(TENANT), 1)
            .await
            .unwrap(),
        1,
        "MaxRunsPerTick caps"
    );
    assert_eq!(
        store.write_snapshots(now - 60_000, None, 50).await.unwrap(),
        2
    );
    assert!(store.get_snapshot(TENANT, &r1).await.unwrap().is_some());
    assert!(store.get_snapshot(TENANT, &r2).await.unwrap().is_some());
}

#[actix_web::test]
async fn cold_path_timeout_answers_unavailable_and_caches_nothing() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let real = header(&app.first_signal(&run).await, "etag");
    let app = app
        .restart(&[("FirstSignal__ColdPath__TimeoutMs", "0")])
        .await;
    let res = app.first_signal(&run).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "cache-control"), "no-store");
    assert_eq!(header(&res, "retry-after"), "1");
    assert_eq!(header(&res, "cache-status"), "miss");
    let v = body(res).await;
    assert_eq!(v["firstSignal"]["type"], "unavailable");
    // The load finishes in the background; the next reads get the real signal.
    let mut got = String::new();
    for _ in 0..50 {
        let res = app.first_signal(&run).await;
        if header(&res, "cache-control") != "no-store" {
            got = header(&res, "etag");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(got, real);
}

#[actix_web::test]
async fn unknown_and_foreign_runs_are_404_even_when_the_cold_path_times_out() {
    let app = spawn_with(&[("FirstSignal__ColdPath__TimeoutMs", "0")]).await;
    let (_, run) = app.submit_job(None).await;
    // Each read is cold: a fresh unknown id, or the run under a fresh tenant.
    let reads = (0..60).flat_map(|i| {
        let unknown = uuid::Uuid::new_v4().to_string();
        let path = |run: &str| format!("{ORCH}/runs/{run}/first-signal");
        [
            app.req(reqwest::Method::GET, &path(&unknown)).send(),
            app.req_as(&format!("other-{i}"), reqwest::Method::GET, &path(&run))
                .send(),
            app.req_as(&format!("else-{i}"), reqwest::Method::HEAD, &path(&run))
                .send(),
        ]
    });
    let statuses: Vec<u16> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses.len(), 180);
    assert!(
        statuses.iter().all(|s| *s == 404),
        "never `200 unavailable` for a run the tenant does not have: {statuses:?}"
    );
}

#[actix_web::test]
async fn concurrent_cold_reads_spawn_one_actor() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let app = app.restart(&[]).await;
    let spawned = app.state.engine.supervisor.spawned();
    let cold_before = app.state.metrics.cold_path_seconds.get_sample_count();
    let reads = (0..1000).map(|_| app.first_signal(&run));
    let results = futures_util::future::join_all(reads).await;
    let etags: std::collections::HashSet<String> =
        results.iter().map(|r| header(r, "etag")).collect();
    assert_eq!(etags.len(), 1);
    assert_eq!(
        app.state.engine.supervisor.spawned() - spawned,
        1,
        "one actor"
    );
    assert_eq!(
        app.state.metrics.cold_path_seconds.get_sample_count() - cold_before,
        1,
        "one cold computation"
    );
    assert!(results.iter().all(|r| r.status() == 200));
}

#[actix_web::test]
async fn a_read_after_a_report_is_answered_always_sees_that_report() {
    // Hits skip the actor's mailbox (ADR 0051); a read that follows a
    // write's answer must still see the write, however fast it follows.
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let lease = app.lease_one().await;
    let lease_id = lease["leaseId"].as_str().unwrap();
    body(app.first_signal(&run).await).await;
    for i in 0..60 {
        let message = format!("step {i}");
        let res = app
            .worker(
                &job,
                "progress",
                json!({"leaseId": lease_id, "stage": "analyze", "message": message}),
            )
            .await;
        assert_eq!(res.status(), 200);
        let res = app.first_signal(&run).await;
        assert_eq!(header(&res, "cache-status"), "hit");
        let fs = body(res).await;
        assert_eq!(fs["firstSignal"]["message"], message.as_str());
    }
}
