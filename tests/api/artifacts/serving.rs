//! Serving artifacts safely (SPEC §11; issue 8 points 7 and 9, ADR 0023):
//! nosniff and a sandbox CSP always, attachments unless JSON, plain text
//! or a raster image; tenant ids and names never reach a path unchecked.
use std::path::Path;

use super::{app_with, artifact, b64};
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Both kinds: artifacts held in their rows and files (ADR 0061).
#[actix_web::test]
async fn only_json_text_and_images_are_inline_and_all_are_sandboxed() {
    let (app, _dir) = app_with(&[("Server__MaxBodyBytes", "4194304")]).await;
    let small = b"<script>alert(1)</script>".to_vec();
    let mut large = small.clone();
    large.resize(runsignal::artifacts::HELD_MAX_BYTES + 1, b' ');
    for bytes in [small, large] {
        served_safely(&app, &bytes).await;
    }
}

async fn served_safely(app: &TestApp, bytes: &[u8]) {
    let up = |name: &str, ct: Option<&str>| {
        let mut a = json!({"name": name, "content_base64": b64(bytes)});
        if let Some(ct) = ct {
            a["content_type"] = json!(ct);
        }
        a
    };
    let (job, _run, res) = super::complete(
        app,
        json!({"result": {"ok": true}, "artifacts": [
            up("page.html", Some("text/html")),
            up("logo.svg", Some("image/svg+xml")),
            up("page.xhtml", Some("application/xhtml+xml")),
            up("blob", None),
            up("data.json", Some("application/json")),
            up("notes.txt", Some("text/plain; charset=utf-8")),
            up("pic.png", Some("image/png")),
            up("shout.txt", Some("TEXT/PLAIN")),
        ]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let attachments = ["page.html", "logo.svg", "page.xhtml", "blob"];
    let inline = ["completion", "data.json", "notes.txt", "pic.png", "shout.txt"];
    for name in attachments.iter().chain(&inline) {
        let res = artifact(app, &job, name).await;
        assert_eq!(res.status(), 200, "{name}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{name}");
        assert_eq!(header(&res, "content-security-policy"), "sandbox", "{name}");
        let disposition = header(&res, "content-disposition");
        if attachments.contains(name) {
            assert_eq!(
                disposition,
                format!("attachment; filename=\"{name}\""),
                "{name}"
            );
        } else {
            assert!(!disposition.starts_with("attachment"), "{name}: {disposition}");
        }
    }
    // The type is still the one the worker gave, only never rendered.
    let res = artifact(app, &job, "page.html").await;
    assert_eq!(header(&res, "content-type"), "text/html");
    assert_eq!(header(&res, "content-length"), bytes.len().to_string());
    // A 304 carries the same protections.
    let etag = header(&res, "etag");
    let res = app
        .get(&format!("/jobs/{job}/artifacts/page.html"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(header(&res, "content-security-policy"), "sandbox");
    let res = artifact(app, &job, "page.html").await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes);
}

/// Names of everything under `dir` (recursively), relative to it.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            out.extend(listing(&e.path()).into_iter().map(|n| format!("{name}/{n}")));
        }
        out.push(name);
    }
    out.sort();
    out
}

#[actix_web::test]
async fn dot_tenants_are_invalid_and_write_nothing_outside_the_artifacts_dir() {
    // The artifacts dir is `<tmp>/artifacts`: tenant `..` would have
    // written `<tmp>/<jobId>/completion`.
    let (app, dir) = app_with(&[]).await;
    let mut statuses = Vec::new();
    for tenant in [".", ".."] {
        let res = app
            .req_as(tenant, Method::POST, "/jobs")
            .json(&json!({"pack": "external"}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        statuses.push((tenant, "submit", status));
        if status == 202 {
            // The old hole, followed to the end: lease and complete as `..`.
            let job = res.json::<Value>().await.unwrap()["job_id"].clone();
            let leased: Value = app
                .req_as(tenant, Method::POST, &format!("{ORCH}/workers/lease"))
                .json(&json!({"workerId": "w", "packs": ["external"]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let lease = leased["jobs"][0]["leaseId"].clone();
            let res = app
                .req_as(tenant, Method::POST, &format!("{ORCH}/jobs/{}/complete", job.as_str().unwrap()))
                .json(&json!({"leaseId": lease, "result": {"escaped": true}}))
                .send()
                .await
                .unwrap();
            statuses.push((tenant, "complete", res.status().as_u16()));
        }
    }
    let outside: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|n| n != "artifacts" && !n.starts_with("artifacts/"))
        .collect();
    assert!(outside.is_empty(), "written outside Artifacts.Dir: {outside:?}");
    assert_eq!(statuses, [(".", "submit", 400), ("..", "submit", 400)]);
    for tenant in [".", ".."] {
        let res = app
            .req_as(tenant, Method::POST, "/jobs")
            .json(&json!({"pack": "external"}))
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_tenant").await;
        let res = app
            .req_as(tenant, Method::GET, "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/artifacts/completion")
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_tenant").await;
    }
    // Dots inside a tenant id stay valid.
    let res = app
        .req_as("a.b", Method::POST, "/jobs")
        .json(&json!({"pack": "external"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[actix_web::test]
async fn names_that_are_not_one_path_component_are_refused_and_write_nothing() {
    let (app, dir) = app_with(&[]).await;
    let (job, _run) = app.submit_job(None).await;
    let lease = app.lease_one().await["leaseId"].clone();
    for name in ["../x", "a/b", "..", ".", "a\\b", "x\u{0}y", "/etc/passwd", "../../../../tmp/x"] {
        let res = app
            .worker(
                &job,
                "complete",
                json!({"leaseId": lease, "result": {"n": 1},
                       "artifacts": [{"name": name, "content_base64": b64(b"x")}]}),
            )
            .await;
        let problem = assert_problem(res, 400, "invalid_field").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("artifacts[0].name"), "{name}: {problem}");
    }
    assert_eq!(app.job(&job).await["state"], "loading");
    let written = listing(dir.path());
    assert!(
        written.iter().all(|n| n == "artifacts" || n == &format!("artifacts/{TENANT}")),
        "nothing written: {written:?}"
    );
    // Downloads of such names find nothing (and read nothing).
    for name in ["%2e%2e", "..%2fcompletion", "%2e%2e%2f%2e%2e%2fetc%2fpasswd"] {
        let res = artifact(&app, &job, name).await;
        let status = res.status().as_u16();
        assert!(matches!(status, 400 | 404), "{name}: {status}");
        assert_eq!(header(&res, "content-type"), "application/problem+json", "{name}");
    }
}
