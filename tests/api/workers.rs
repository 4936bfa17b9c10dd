//! Remote worker protocol (SPEC §7.1).
use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;
use runsignal_actors::Envelope;
use serde_json::{json, Value};

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn a_full_lease_progress_complete_cycle_is_one_event_per_transition() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let lease = app
        .lease(json!({"workerId": "w1", "packs": ["external"], "leaseSeconds": 30}))
        .await;
    assert_eq!(lease.len(), 1);
    let l = &lease[0];
    assert_eq!(
        (
            l["jobId"].as_str(),
            l["runId"].as_str(),
            l["attempt"].as_i64()
        ),
        (Some(&*job), Some(&*run), Some(1))
    );
    assert_eq!(l["inputs"], json!({"n": 1}));
    assert_eq!(l["pack"], "external");
    let lease_id = l["leaseId"].as_str().unwrap();
    let progress = json!({"leaseId": lease_id, "stage": "fetch", "step": "download", "stepIndex": 0,
        "message": "downloading", "percent": 40.5, "log": ["line one", {"stream": "stderr", "line": "warn"}]});
    assert_eq!(app.worker(&job, "progress", progress).await.status(), 200);
    let res = app
        .worker(
            &job,
            "complete",
            json!({"leaseId": lease_id, "result": {"artifacts": 2}}),
        )
        .await;
    assert_eq!(res.status(), 200);

    let got = app.job(&job).await;
    assert_eq!(got["state"], "done");
    assert_eq!(got["result"], json!({"artifacts": 2}));
    assert_eq!(got["progress"]["stage"], "fetch");
    assert!(got["finished_at"].is_string() && got["started_at"].is_string());

    let events = app.timeline(&run).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq 1, 2, 3… with no gap"
    );
    for e in &events {
        let env: Envelope = serde_json::from_value(e.clone()).unwrap();
        assert!(env.verify(), "hash re-verifies: {e}");
    }
    let t = types(&events);
    for want in [
        "run.created",
        "job.queued",
        "job.loading",
        "job.working",
        "job.progress",
        "log",
        "job.done",
        "run.completed",
    ] {
        assert_eq!(
            t.iter().filter(|x| *x == want).count(),
            1,
            "one {want} in {t:?}"
        );
    }
    let log = events.iter().find(|e| e["type"] == "log").unwrap();
    assert_eq!(
        log["payload"]["lines"][1],
        json!({"lineNo": 2, "stream": "stderr", "line": "warn"})
    );
    let pos = |ty: &str| t.iter().position(|x| x == ty).unwrap();
    assert!(pos("job.queued") < pos("job.loading") && pos("job.loading") < pos("job.working"));
    assert!(pos("job.working") < pos("job.done") && pos("job.done") < pos("run.completed"));
}

#[actix_web::test]
async fn progress_extends_the_lease_and_log_lines_keep_counting() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let l = app
        .lease(json!({"workerId": "w", "packs": ["external"], "leaseSeconds": 5}))
        .await
        .remove(0);
    let first_until = l["leaseUntil"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let body = json!({"leaseId": l["leaseId"], "log": ["a", "b"]});
    assert_eq!(
        app.worker(&job, "progress", body.clone()).await.status(),
        200
    );
    let after = app.job(&job).await;
    assert!(
        after["lease"]["lease_until"].as_str().unwrap() > first_until.as_str(),
        "lease extended"
    );
    assert_eq!(app.worker(&job, "progress", body).await.status(), 200);
    let lines: Vec<i64> = app
        .timeline(&run)
        .await
        .iter()
        .filter(|e| e["type"] == "log")
        .flat_map(|e| {
            e["payload"]["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["lineNo"].as_i64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines, vec![1, 2, 3, 4]);
}

#[actix_web::test]
async fn retryable_failures_requeue_until_attempts_run_out() {
    let app = spawn_with(&[("Jobs__MaxAttempts", "2")]).await;
    let (job, run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    let fail =
        json!({"leaseId": l["leaseId"], "retryable": true, "code": "network", "message": "flaky"});
    assert_eq!(app.worker(&job, "fail", fail).await.status(), 200);
    let got = app.job(&job).await;
    assert_eq!(
        (got["state"].as_str(), got["attempt"].as_i64()),
        (Some("queued"), Some(1))
    );
    assert!(types(&app.timeline(&run).await).contains(&"job.retry_scheduled".to_owned()));
    let l2 = app.lease_one().await;
    assert_eq!(l2["attempt"], 2);
    let fail = json!({"leaseId": l2["leaseId"], "retryable": true, "code": "network", "message": "flaky again"});
    app.worker(&job, "fail", fail).await;
    let got = app.job(&job).await;
    assert_eq!(got["state"], "failed");
    assert_eq!(
        got["error"],
        json!({"code": "network", "message": "flaky again"})
    );
    let fs: Value = app.first_signal(&run).await.json().await.unwrap();
    assert_eq!(fs["firstSignal"]["type"], "failed");
    assert_eq!(fs["firstSignal"]["message"], "flaky again");
}

#[actix_web::test]
async fn non_retryable_failure_fails_at_once_with_its_log_range() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    let fail = json!({"leaseId": l["leaseId"], "message": "compile error", "logRange": {"start": 3, "end": 9}});
    app.worker(&job, "fail", fail).await;
    let got = app.job(&job).await;
    assert_eq!(got["state"], "failed");
    assert_eq!(got["error"]["code"], "worker_failed");
    let fs: Value = app.first_signal(&run).await.json().await.unwrap();
    assert_eq!(
        fs["firstSignal"]["artifact"]["range"],
        json!({"start": 3, "end": 9})
    );
}

#[actix_web::test]
async fn a_stale_lease_is_lost_after_the_job_is_leased_again() {
    let app = spawn_app().await;
    let (job, _) = app.submit_job(None).await;
    let old = app.lease_one().await;
    let fail = json!({"leaseId": old["leaseId"], "retryable": true, "message": "retry"});
    app.worker(&job, "fail", fail).await;
    let new = app.lease_one().await;
    for action in ["progress", "complete", "fail"] {
        let mut body = json!({"leaseId": old["leaseId"]});
        if action == "fail" {
            body["message"] = json!("x");
        }
        let res = app.worker(&job, action, body).await;
        assert_problem(res, 409, "lease_lost").await;
    }
    let res = app
        .worker(&job, "complete", json!({"leaseId": new["leaseId"]}))
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn expired_leases_are_requeued_then_failed_by_the_sweeper() {
    let app = spawn_with(&[("Jobs__MaxAttempts", "2")]).await;
    let (job, run) = app.submit_job(None).await;
    let far_future = chrono::Utc::now().timestamp_millis() + 3_600_000;
    for attempt in 1..=2 {
        let l = app.lease_one().await;
        assert_eq!(l["attempt"], attempt);
        let swept = app
            .state
            .store
            .sweep_expired_leases(far_future)
            .await
            .unwrap();
        assert_eq!(swept, 1);
    }
    let got = app.job(&job).await;
    assert_eq!(got["state"], "failed");
    assert_eq!(got["error"]["code"], "lease_expired");
    let t = types(&app.timeline(&run).await);
    assert_eq!(t.iter().filter(|x| *x == "job.retry_scheduled").count(), 1);
    assert_eq!(t.iter().filter(|x| *x == "job.failed").count(), 1);
}

#[actix_web::test]
async fn the_background_sweeper_runs_on_its_interval() {
    let app = spawn_with(&[("Jobs__LeaseSweepIntervalSeconds", "1")]).await;
    let (job, _) = app.submit_job(None).await;
    app.lease(json!({"workerId": "w", "packs": ["external"], "leaseSeconds": 5}))
        .await;
    let mut state = String::new();
    for _ in 0..100 {
        state = app.job(&job).await["state"].as_str().unwrap().to_owned();
        if state == "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "queued", "requeued after its 5 s lease expired");
}

#[actix_web::test]
async fn long_poll_lease_wakes_when_a_job_is_queued() {
    let app = spawn_app().await;
    let lease = app.lease(json!({"workerId": "w", "packs": ["external"], "waitSeconds": 20}));
    let submit = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.submit_job(None).await
    };
    let started = std::time::Instant::now();
    let (jobs, (job, _)) = futures_util::join!(lease, submit);
    assert_eq!(jobs.len(), 1, "the waiting lease got the new job");
    assert_eq!(jobs[0]["jobId"], job);
    // Woken by the submit, not by its 20 s deadline (a generous bound for a
    // busy machine; the wake-up itself is immediate).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the lease waited {:?}: the submit did not wake it",
        started.elapsed()
    );
    let empty = app
        .lease(json!({"workerId": "w", "packs": ["external"], "waitSeconds": 0}))
        .await;
    assert!(empty.is_empty());
}

/// SPEC §11: parked long-polls cost no store work, a submit of another
/// tenant wakes none of them, and a submit of theirs wakes one lessee, not
/// all of them (each woken lessee runs a lease write).
#[actix_web::test]
async fn a_queued_job_wakes_one_parked_lease_not_all_of_them() {
    // Background store work (sweeps, prune) would blur the counts; what
    // little is left is the slack below (waking all would add 40).
    let app = spawn_with(&[
        ("Jobs__LeaseSweepIntervalSeconds", "3600"),
        ("Jobs__PruneIntervalSeconds", "3600"),
    ])
    .await;
    const SLACK: u64 = 5;
    const WAITERS: usize = 40;
    let base = app.store_calls();
    let parked: Vec<_> = (0..WAITERS)
        .map(|i| {
            let body = json!({"workerId": format!("w{i}"), "packs": ["external"], "waitSeconds": 20});
            let req = app.post(&format!("{ORCH}/workers/lease"), &body).send();
            tokio::spawn(async move {
                let v: Value = req.await.unwrap().json().await.unwrap();
                v["jobs"].as_array().unwrap().len()
            })
        })
        .collect();
    // Each parked lease looks once, then waits without touching the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.store_calls() < base + WAITERS as u64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parked_at = app.store_calls();
    assert!(
        parked_at <= base + WAITERS as u64 + SLACK,
        "one look per lease, then none: {} calls",
        parked_at - base
    );
    let res = app
        .req_as("other", reqwest::Method::POST, "/jobs")
        .json(&json!({"pack": "external"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = app.store_calls() - parked_at;
    assert!(calls <= 1 + SLACK, "another tenant's job woke leases: {calls} calls");
    app.submit_job(None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !parked.iter().any(|p| p.is_finished()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = app.store_calls() - parked_at;
    // Two submits and the one woken lease; waking all would be 2 + WAITERS.
    assert!(
        calls <= 3 + SLACK,
        "{calls} store calls for one queued job with {WAITERS} parked leases"
    );
    let mut leased = 0;
    for p in parked {
        p.abort();
        leased += p.await.unwrap_or(0);
    }
    assert_eq!(leased, 1, "one parked lease got the job");
}

#[actix_web::test]
async fn blocked_flag_sets_and_clears_the_signal() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    app.worker(
        &job,
        "progress",
        json!({"leaseId": l["leaseId"], "stage": "fetch", "blocked": "waiting for a GPU"}),
    )
    .await;
    let fs: Value = app.first_signal(&run).await.json().await.unwrap();
    assert_eq!(fs["firstSignal"]["type"], "blocked");
    assert_eq!(fs["firstSignal"]["message"], "waiting for a GPU");
    assert_eq!(
        app.job(&job).await["blocked"],
        json!({"reason": "waiting for a GPU"})
    );
    app.worker(
        &job,
        "progress",
        json!({"leaseId": l["leaseId"], "blocked": null}),
    )
    .await;
    let fs: Value = app.first_signal(&run).await.json().await.unwrap();
    assert_eq!(fs["firstSignal"]["type"], "phase");
    assert_eq!(app.job(&job).await["blocked"], Value::Null);
}

#[actix_web::test]
async fn progress_that_changes_nothing_stable_emits_no_signal_change() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    let body = json!({"leaseId": l["leaseId"], "stage": "fetch", "message": "m", "percent": 10});
    app.worker(&job, "progress", body).await;
    let signals = |ev: &[Value]| ev.iter().filter(|e| e["type"] == "signal.changed").count();
    let before = signals(&app.timeline(&run).await);
    app.worker(
        &job,
        "progress",
        json!({"leaseId": l["leaseId"], "percent": 20}),
    )
    .await;
    assert_eq!(
        signals(&app.timeline(&run).await),
        before,
        "percent is not part of the signal"
    );
}

#[actix_web::test]
async fn fifty_concurrent_leases_on_a_thousand_jobs_lease_each_exactly_once() {
    let app = spawn_app().await;
    let mut submitted = HashSet::new();
    for chunk in 0..20 {
        let jobs = (0..50).map(|_| app.submit_job(None));
        for (job, _) in futures_util::future::join_all(jobs).await {
            submitted.insert(job);
        }
        let _ = chunk;
    }
    assert_eq!(submitted.len(), 1000);
    let workers = (0..50).map(|w| {
        let app = &app;
        async move {
            let mut mine = Vec::new();
            loop {
                let jobs = app
                    .lease(json!({"workerId": format!("w{w}"), "packs": ["external"], "max": 7}))
                    .await;
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.iter().map(|j| j["jobId"].as_str().unwrap().to_owned()));
            }
        }
    });
    let per_worker = futures_util::future::join_all(workers).await;
    let all: Vec<String> = per_worker.into_iter().flatten().collect();
    let unique: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), unique.len(), "no job leased twice");
    assert_eq!(unique, submitted, "no job lost");
    let queued: Value = app
        .get("/jobs?state=queued&limit=10")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(queued["jobs"].as_array().unwrap().is_empty());
}

#[actix_web::test]
async fn a_bare_heartbeat_extends_the_lease_without_a_timeline_event() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let l = app
        .lease(json!({"workerId": "w", "packs": ["external"], "leaseSeconds": 5}))
        .await
        .remove(0);
    app.worker(
        &job,
        "progress",
        json!({"leaseId": l["leaseId"], "percent": 10}),
    )
    .await;
    let before = app.timeline(&run).await.len();
    let until = app.job(&job).await["lease"]["lease_until"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        app.worker(&job, "progress", json!({"leaseId": l["leaseId"]}))
            .await
            .status(),
        200
    );
    assert!(
        app.job(&job).await["lease"]["lease_until"]
            .as_str()
            .unwrap()
            > until.as_str(),
        "lease extended"
    );
    assert_eq!(
        app.timeline(&run).await.len(),
        before,
        "no event for a heartbeat"
    );
}

/// SPEC §11: a lease id is random, not derived from the ids a reader sees.
/// Lease ids used to come from the same monotonic ULID generator as event
/// ids, so the `job.loading` event id minus one was usually the lease, and a
/// reader of the timeline could complete the job with forged results.
#[actix_web::test]
async fn a_lease_id_cannot_be_guessed_from_the_timeline() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let lease_id = app.lease_one().await["leaseId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        lease_id.len() == 32 && lease_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "128 random bits, hex: {lease_id}"
    );
    let loading = app
        .timeline(&run)
        .await
        .into_iter()
        .find(|e| e["type"] == "job.loading")
        .expect("job.loading event");
    let seen: ulid::Ulid = loading["eventId"].as_str().unwrap().parse().unwrap();
    let near = (-3i32..=3).map(|d| ulid::Ulid(seen.0.wrapping_add_signed(d as i128)));
    for guess in near {
        let forged = json!({"leaseId": guess.to_string(), "result": {"forged": true}});
        let res = app.worker(&job, "complete", forged).await;
        assert_problem(res, 409, "lease_lost").await;
    }
    assert_eq!(app.job(&job).await["state"], "loading", "not completed");
    let other = {
        let (_, _) = app.submit_job(None).await;
        app.lease_one().await["leaseId"].as_str().unwrap().to_owned()
    };
    assert_ne!(other, lease_id);
}
