//! Artifact integrity under races (issue 8 point 2, ADR 0023): overlapping
//! `complete` calls with one lease, and a cancel racing a complete, leave
//! only the committed completion's bytes, each matching its metadata, and
//! no file that no row references.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{app_with, artifact, b64, sha};
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Every file under `dir`, recursively (hidden ones too).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.map(Result::unwrap) {
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A completion body whose bytes say who sent it; large enough that the
/// two writes overlap.
fn completion(lease: &Value, who: &str, i: usize) -> Value {
    let blob: Vec<u8> = format!("{who}:{i}:").repeat(20_000).into_bytes();
    json!({
        "leaseId": lease,
        "result": {"who": who, "i": i},
        "artifacts": [
            {"name": "out.bin", "content_base64": b64(&blob)},
            {"name": format!("only-{who}.txt"), "content_type": "text/plain",
             "content_base64": b64(who.as_bytes())},
        ],
    })
}

/// The job's listed artifacts are served with bytes that match their
/// metadata, `completion` is the job's result, and the job's directory
/// holds exactly the listed artifacts too large for their rows (ADR 0061).
async fn assert_consistent(app: &TestApp, root: &Path, job: &str) -> Value {
    let got = app.job(job).await;
    let listed = got["artifacts"].as_array().cloned().unwrap_or_default();
    let mut served = BTreeMap::new();
    for a in &listed {
        let name = a["name"].as_str().unwrap();
        let res = artifact(app, job, name).await;
        assert_eq!(res.status(), 200, "{job}/{name}");
        let bytes = res.bytes().await.unwrap();
        assert_eq!(a["size"], bytes.len(), "{job}/{name}: size vs bytes");
        assert_eq!(a["sha256"], sha(&bytes), "{job}/{name}: sha256 vs bytes");
        if name == "completion" {
            let stored: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(stored, got["result"], "{job}: completion vs result");
        }
        served.insert(sha(&bytes), name.to_owned());
    }
    let files = files_under(&root.join(TENANT).join(job));
    let large = listed
        .iter()
        .filter(|a| a["size"].as_u64().unwrap() > runsignal::artifacts::HELD_MAX_BYTES as u64)
        .count();
    assert_eq!(
        files.len(),
        large,
        "{job}: files on disk {files:?} vs listed {listed:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            served.contains_key(&sha(&bytes)),
            "{job}: {} is referenced by no artifact",
            f.display()
        );
    }
    got
}

#[actix_web::test]
async fn racing_completions_with_one_lease_leave_only_the_winners_bytes() {
    let (app, dir) = app_with(&[("Server__MaxBodyBytes", "4194304")]).await;
    let root = dir.path().join("artifacts");
    for i in 0..30 {
        let (job, _run) = app.submit_job(None).await;
        let lease = app.lease_one().await["leaseId"].clone();
        let (a, b) = tokio::join!(
            app.worker(&job, "complete", completion(&lease, "a", i)),
            app.worker(&job, "complete", completion(&lease, "b", i)),
        );
        let statuses = [a.status().as_u16(), b.status().as_u16()];
        let got = assert_consistent(&app, &root, &job).await;
        assert_eq!(got["state"], "done");
        let winner = got["result"]["who"].as_str().unwrap().to_owned();
        let names: Vec<&str> = got["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["completion", &format!("only-{winner}.txt"), "out.bin"],
            "{job}: only the winner's artifacts"
        );
        let mut sorted = statuses;
        sorted.sort();
        assert_eq!(sorted, [200, 409], "{job}: one wins, one loses its lease");
    }
}

#[actix_web::test]
async fn a_cancel_racing_a_complete_leaves_no_orphan_files() {
    let (app, dir) = app_with(&[("Server__MaxBodyBytes", "4194304")]).await;
    let root = dir.path().join("artifacts");
    for i in 0..15 {
        let (job, _run) = app.submit_job(None).await;
        let lease = app.lease_one().await["leaseId"].clone();
        let cancel = app
            .req(Method::POST, &format!("/jobs/{job}/cancel"))
            .send();
        let (_c, _d) = tokio::join!(
            cancel,
            app.worker(&job, "complete", completion(&lease, "a", i)),
        );
        let got = assert_consistent(&app, &root, &job).await;
        assert!(
            got["state"] == "done" || got["state"] == "canceled",
            "{got}"
        );
    }
}

#[actix_web::test]
async fn the_sweep_removes_stranded_files_and_keeps_referenced_ones() {
    let (app, dir) = app_with(&[("Server__MaxBodyBytes", "4194304")]).await;
    let root = dir.path().join("artifacts");
    // Too large for its row (ADR 0061): a file the sweep must keep.
    let kept = vec![b'k'; runsignal::artifacts::HELD_MAX_BYTES + 1];
    let (job, _run, res) = super::complete(
        &app,
        json!({"result": {"ok": true}, "artifacts": [{"name": "a.bin", "content_base64": b64(&kept)}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let job_dir = root.join(TENANT).join(&job);
    let referenced = files_under(&job_dir);
    assert_eq!(referenced.len(), 1, "{referenced:?}");
    // What a crash between writing and committing leaves: a completion's
    // files under a directory no row names, in a known and an unknown job.
    let stranded = job_dir.join(runsignal_actors::new_ulid());
    std::fs::create_dir_all(&stranded).unwrap();
    std::fs::write(stranded.join("a.bin"), b"forged").unwrap();
    std::fs::write(job_dir.join(".a.bin.tmp"), b"partial").unwrap();
    let unknown = root.join(TENANT).join(runsignal_actors::new_ulid());
    std::fs::create_dir_all(unknown.join(runsignal_actors::new_ulid())).unwrap();
    std::fs::write(unknown.join("x.bin"), b"x").unwrap();
    // Not of the layout: never touched.
    std::fs::write(root.join("README"), b"keep me").unwrap();
    std::fs::create_dir_all(root.join(TENANT).join("not-a-job")).unwrap();
    std::fs::write(root.join(TENANT).join("not-a-job").join("f"), b"keep").unwrap();

    let removed = runsignal::artifacts::sweep_orphans(
        &app.state.store,
        &root.display().to_string(),
        std::time::Duration::ZERO,
        None,
    )
    .await;
    assert_eq!(removed, 3, "the stranded file, the temp file, the unknown job's file");
    assert!(!stranded.exists() && !unknown.exists());
    assert!(root.join("README").exists());
    assert!(root.join(TENANT).join("not-a-job").join("f").exists());
    assert!(referenced[0].is_file(), "the referenced file is kept");
    assert_consistent(&app, &root, &job).await;
    assert_eq!(
        artifact(&app, &job, "a.bin").await.bytes().await.unwrap().as_ref(),
        kept.as_slice()
    );
}
