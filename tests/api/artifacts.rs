//! Artifacts (SPEC §7, §7.2; issue 4 point 6): the result as `completion`,
//! worker uploads, pack artifacts, inline or by URL, streamed with strong
//! ETags, pruned with their runs.
use std::time::{Duration, Instant};

use crate::helpers::*;
use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod races;
mod serving;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A server whose artifacts live in a temp dir (kept alive by the caller).
async fn app_with(settings: &[(&str, &str)]) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("artifacts").display().to_string();
    let mut all = vec![("Artifacts__Dir", d.as_str())];
    all.extend_from_slice(settings);
    (spawn_with(&all).await, dir)
}

async fn artifact(app: &TestApp, job: &str, name: &str) -> reqwest::Response {
    app.get(&format!("/jobs/{job}/artifacts/{name}"))
        .send()
        .await
        .unwrap()
}

async fn done_event(app: &TestApp, run: &str) -> Value {
    app.timeline(run)
        .await
        .into_iter()
        .find(|e| e["type"] == "job.done")
        .expect("a job.done event")
}

/// Lease the one queued `external` job and complete it with `body`.
async fn complete(app: &TestApp, body: Value) -> (String, String, reqwest::Response) {
    let (job, run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    let mut body = body;
    body["leaseId"] = l["leaseId"].clone();
    let res = app.worker(&job, "complete", body).await;
    (job, run, res)
}

#[actix_web::test]
async fn the_result_is_the_completion_artifact_with_a_strong_etag() {
    let (app, _dir) = app_with(&[]).await;
    let result = json!({"answer": 42, "items": ["a", "b"]});
    let (job, run, res) = complete(&app, json!({"result": result})).await;
    assert_eq!(res.status(), 200);
    let bytes = result.to_string().into_bytes();

    let got = app.job(&job).await;
    let list = got["artifacts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{got}");
    let a = &list[0];
    assert_eq!(a["name"], "completion");
    assert_eq!(a["size"], bytes.len());
    assert_eq!(a["sha256"], sha(&bytes));
    assert_eq!(a["content_type"], "application/json");
    assert_eq!(a["url"], format!("/jobs/{job}/artifacts/completion"));
    assert!(a.get("content_base64").is_none());

    let res = artifact(&app, &job, "completion").await;
    assert_eq!(res.status(), 200);
    let etag = format!("\"{}\"", sha(&bytes));
    assert_eq!(header(&res, "etag"), etag);
    assert_eq!(header(&res, "content-type"), "application/json");
    assert_eq!(header(&res, "content-length"), bytes.len().to_string());
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let res = app
        .get(&format!("/jobs/{job}/artifacts/completion"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(header(&res, "etag"), etag);

    // The done event carries it inline (small).
    let done = done_event(&app, &run).await;
    let inline = &done["payload"]["artifacts"][0];
    assert_eq!(inline["name"], "completion");
    assert_eq!(inline["content_base64"], b64(&bytes));

    assert_problem(
        artifact(&app, &job, "nope").await,
        404,
        "artifact_not_found",
    )
    .await;
    assert_problem(
        artifact(&app, &job, ".hidden").await,
        404,
        "artifact_not_found",
    )
    .await;
    let res = app
        .req_as(
            "other",
            Method::GET,
            &format!("/jobs/{job}/artifacts/completion"),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "job_not_found").await;
    let res = app
        .req_as("other", Method::GET, &format!("/jobs/{job}"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "job_not_found").await;
}

#[actix_web::test]
async fn uploads_are_inline_up_to_the_threshold_then_metadata_and_url() {
    let (app, _dir) = app_with(&[("Artifacts__InlineMaxBytes", "1024")]).await;
    let small = b"hello artifacts".to_vec();
    let large: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
    let (job, run, res) = complete(
        &app,
        json!({"artifacts": [
            {"name": "small.txt", "content_type": "text/plain", "content_base64": b64(&small)},
            {"name": "large.bin", "content_base64": b64(&large)},
        ]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["artifacts"].as_array().unwrap().len(), 2, "{body}");

    let done = done_event(&app, &run).await;
    let arts = done["payload"]["artifacts"].as_array().unwrap().clone();
    let by = |n: &str| arts.iter().find(|a| a["name"] == n).unwrap().clone();
    let s = by("small.txt");
    assert_eq!(s["content_base64"], b64(&small));
    assert_eq!(s["content_type"], "text/plain");
    assert_eq!(s["sha256"], sha(&small));
    let l = by("large.bin");
    assert!(l.get("content_base64").is_none(), "{l}");
    assert_eq!(l["size"], 2048);
    assert_eq!(l["content_type"], "application/octet-stream");
    assert_eq!(l["url"], format!("/jobs/{job}/artifacts/large.bin"));

    let res = artifact(&app, &job, "large.bin").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), large.as_slice());
    let names: Vec<Value> = app.job(&job).await["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("large.bin"), json!("small.txt")]);
}

#[actix_web::test]
async fn bad_uploads_are_400_and_leave_the_job_running() {
    let (app, _dir) = app_with(&[]).await;
    let (job, _run) = app.submit_job(None).await;
    let l = app.lease_one().await;
    let bad = [
        json!([{"name": ".hidden", "content_base64": ""}]),
        json!([{"name": "a/b", "content_base64": ""}]),
        json!([{"name": "", "content_base64": ""}]),
        json!([{"name": "x".repeat(129), "content_base64": ""}]),
        json!([{"name": "completion", "content_base64": ""}]),
        json!([{"name": "ok", "content_base64": "not base64!"}]),
        json!([{"name": "ok", "content_base64": ""}, {"name": "ok", "content_base64": ""}]),
        json!([{"name": "ok", "content_type": "a\nb", "content_base64": ""}]),
    ];
    for artifacts in bad {
        let res = app
            .worker(
                &job,
                "complete",
                json!({"leaseId": l["leaseId"], "artifacts": artifacts}),
            )
            .await;
        assert_problem(res, 400, "invalid_field").await;
    }
    let res = app
        .worker(
            &job,
            "complete",
            json!({"leaseId": l["leaseId"], "artifacts": [{"name": "ok"}]}),
        )
        .await;
    assert_problem(res, 400, "invalid_body").await;
    assert_eq!(app.job(&job).await["state"], "loading");
    // A stale lease writes nothing.
    let res = app
        .worker(
            &job,
            "complete",
            json!({"leaseId": "stale", "artifacts": [{"name": "ok", "content_base64": ""}]}),
        )
        .await;
    assert_problem(res, 409, "lease_lost").await;
}

#[actix_web::test]
async fn a_5_mib_upload_is_served_intact() {
    let (app, _dir) = app_with(&[("Server__MaxBodyBytes", "16777216")]).await;
    let big: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (job, run, res) = complete(
        &app,
        json!({"artifacts": [{"name": "big.bin", "content_base64": b64(&big)}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let done = done_event(&app, &run).await;
    let a = &done["payload"]["artifacts"][0];
    assert!(a.get("content_base64").is_none(), "5 MiB is not inline");
    let res = artifact(&app, &job, "big.bin").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-length"), big.len().to_string());
    assert_eq!(header(&res, "etag"), format!("\"{}\"", sha(&big)));
    let got = res.bytes().await.unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(sha(&got), sha(&big));
}

#[actix_web::test]
async fn a_builtin_pack_gets_its_declared_artifacts_collected() {
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("packs");
    std::fs::create_dir(&packs).unwrap();
    let pack = json!({
        "name": "art", "executor": "builtin",
        "steps": [{"name": "write", "stage": "build",
                   "run": ["sh", "-c", "mkdir -p out && printf 'report body' > out/report.txt"]}],
        "artifacts": [
            {"name": "report.txt", "path": "out/report.txt", "content_type": "text/plain"},
            {"name": "missing.txt", "path": "out/missing.txt"},
        ],
    });
    std::fs::write(packs.join("art.json"), pack.to_string()).unwrap();
    let (p, w, a) = (
        packs.display().to_string(),
        dir.path().join("ws").display().to_string(),
        dir.path().join("artifacts").display().to_string(),
    );
    let app = spawn_with(&[
        ("Executor__PacksDir", p.as_str()),
        ("Executor__WorkspaceDir", w.as_str()),
        ("Artifacts__Dir", a.as_str()),
    ])
    .await;
    let res = app.submit(json!({"pack": "art"})).await;
    assert_eq!(res.status(), 202);
    let job = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = app.job(&job).await;
        if got["state"] == "done" || got["state"] == "failed" {
            break got;
        }
        assert!(Instant::now() < deadline, "never finished: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        got["state"], "done",
        "a missing artifact does not fail the job: {got}"
    );
    let names: Vec<&str> = got["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["completion", "report.txt"]);
    let res = artifact(&app, &job, "report.txt").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), "text/plain");
    assert_eq!(res.text().await.unwrap(), "report body");
    let res = artifact(&app, &job, "completion").await;
    assert_eq!(res.json::<Value>().await.unwrap(), got["result"]);
    assert_problem(
        artifact(&app, &job, "missing.txt").await,
        404,
        "artifact_not_found",
    )
    .await;
}

#[actix_web::test]
async fn prune_removes_artifact_rows_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("artifacts");
    let d = root.display().to_string();
    let app = spawn_with(&[("Artifacts__Dir", d.as_str()), ("Server__MaxBodyBytes", "4194304")]).await;
    let big = vec![7u8; runsignal::artifacts::HELD_MAX_BYTES + 1];
    let (job, _run, res) = complete(
        &app,
        json!({"result": {"ok": true}, "artifacts": [
            {"name": "a.bin", "content_base64": b64(b"abc")},
            {"name": "big.bin", "content_base64": b64(&big)},
        ]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let files = root.join(TENANT).join(&job);
    let mut paths = Vec::new();
    for name in ["big.bin", "a.bin", "completion"] {
        let row = app.state.store.get_artifact(TENANT, &job, name).await;
        paths.push(std::path::PathBuf::from(row.unwrap().unwrap().path));
    }
    let file = paths[0].clone();
    assert!(file.starts_with(&files) && file.is_file());
    // The small ones are held in their rows: no file.
    assert_eq!(paths[1..], [std::path::PathBuf::new(), std::path::PathBuf::new()]);
    assert_eq!(artifact(&app, &job, "a.bin").await.status(), 200);

    let cutoff = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let runs = runsignal::tasks::prune_batch(&app.state, cutoff, 100)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    assert_problem(artifact(&app, &job, "a.bin").await, 404, "job_not_found").await;
    for name in ["a.bin", "big.bin", "completion"] {
        assert!(app
            .state
            .store
            .get_artifact(TENANT, &job, name)
            .await
            .unwrap()
            .is_none());
    }
    assert!(!file.exists());
    assert!(!files.exists(), "the empty job directory goes too");
}

/// ADR 0061: an artifact of at most `HELD_MAX_BYTES` (and inline in the
/// `done` event) is held in its row. Its completion writes no file, and it
/// is served whole, with its strong ETag, after a restart too; one byte
/// more is a file.
#[actix_web::test]
async fn small_artifacts_are_held_in_the_database_and_survive_a_restart() {
    let app = spawn_with(&[("Server__MaxBodyBytes", "4194304")]).await;
    let root = app.dir.path().join("artifacts");
    let edge = vec![b'x'; runsignal::artifacts::HELD_MAX_BYTES];
    let over = vec![b'y'; runsignal::artifacts::HELD_MAX_BYTES + 1];
    let (small_job, run, res) = complete(
        &app,
        json!({"result": {"n": 123456789012345678901234567890u128}, "artifacts": [
            {"name": "edge.txt", "content_type": "text/plain", "content_base64": b64(&edge)},
        ]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(
        !root.join(TENANT).join(&small_job).exists(),
        "a completion of small artifacts writes no file"
    );
    let (big_job, _run, res) = complete(
        &app,
        json!({"artifacts": [{"name": "over.bin", "content_base64": b64(&over)}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(root.join(TENANT).join(&big_job).is_dir(), "one byte more is a file");

    let app = app.restart(&[]).await;
    let res = artifact(&app, &small_job, "edge.txt").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "etag"), format!("\"{}\"", sha(&edge)));
    assert_eq!(header(&res, "content-type"), "text/plain");
    assert_eq!(header(&res, "content-length"), edge.len().to_string());
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(res.bytes().await.unwrap().as_ref(), edge.as_slice());
    let res = artifact(&app, &small_job, "completion").await;
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"n":123456789012345678901234567890}"#,
        "the result's bytes as written"
    );
    let res = app
        .get(&format!("/jobs/{small_job}/artifacts/edge.txt"))
        .header("If-None-Match", format!("\"{}\"", sha(&edge)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    let res = artifact(&app, &big_job, "over.bin").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), over.as_slice());
    // Listed and announced as before.
    let got = app.job(&small_job).await;
    let names: Vec<&str> = got["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["completion", "edge.txt"]);
    let done = done_event(&app, &run).await;
    assert_eq!(done["payload"]["artifacts"][1]["content_base64"], b64(&edge));
}

/// A stale completion of small artifacts (no pre-check any more: nothing
/// to write) is still refused, and leaves the winner's bytes.
#[actix_web::test]
async fn a_stale_completion_of_small_artifacts_is_refused() {
    let app = spawn_app().await;
    let (job, _run, res) = complete(&app, json!({"result": {"who": "first"}})).await;
    assert_eq!(res.status(), 200);
    let res = app
        .worker(&job, "complete", json!({"leaseId": "stale", "result": {"who": "second"}}))
        .await;
    assert_problem(res, 409, "lease_lost").await;
    let res = app
        .worker("01ARZ3NDEKTSV4RRFFQ69G5FAV", "complete", json!({"leaseId": "x", "result": {}}))
        .await;
    assert_problem(res, 404, "job_not_found").await;
    let res = artifact(&app, &job, "completion").await;
    assert_eq!(res.text().await.unwrap(), r#"{"who":"first"}"#);
}
