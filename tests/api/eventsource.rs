//! A real `EventSource` (Node's `eventsource` package, pinned in
//! `tests/node/package.json`) on a finished run's streams, filtered or not,
//! reaches CLOSED: it gets `completed`, reconnects once with its id, gets the
//! 204 and stops. A stream whose filter hid the end used to make it
//! reconnect forever (SPEC §5.1, ADR 0030).
//!
//! Needs `node` and `npm` on the PATH (installs `tests/node/node_modules`
//! with `npm ci` when missing); without them the test says so and passes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{spawn_with, started_job, ORCH, TENANT};

/// How long the client may stay silent (no event, open or error line)
/// before the test gives up: generous, for a loaded machine.
const IDLE: Duration = Duration::from_secs(30);

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

async fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// `node` with the pinned `eventsource` installed, or `None` (skip) when
/// Node.js or npm is not installed at all.
async fn node_with_eventsource() -> Option<()> {
    if !installed("node").await || !installed("npm").await {
        eprintln!("skipped: `node` and `npm` are needed for the EventSource test");
        return None;
    }
    let dir = node_dir();
    if !dir.join("node_modules/eventsource/package.json").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .await
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm ci in tests/node failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(())
}

/// Run `tests/node/eventsource.mjs` on `url`; its output lines, and whether
/// it reached CLOSED (exit 0) rather than reconnecting again and again.
async fn follow(url: &str) -> (bool, Vec<String>) {
    let mut child = Command::new("node")
        .arg(node_dir().join("eventsource.mjs"))
        .arg(url)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(IDLE, lines.next_line()).await {
            Ok(Ok(Some(line))) => seen.push(line),
            Ok(_) => break,
            Err(_) => panic!("no output for {IDLE:?} from the EventSource on {url}: {seen:?}"),
        }
    }
    let status = tokio::time::timeout(IDLE, child.wait())
        .await
        .expect("node exits after closing its output")
        .expect("node exit status");
    (status.success(), seen)
}

#[actix_web::test]
async fn node_eventsource_reaches_closed_on_a_finished_run_filtered_or_not() {
    if node_with_eventsource().await.is_none() {
        return;
    }
    // A short `retry:` so each reconnect comes quickly.
    let app = spawn_with(&[("Streams__RetryMs", "100")]).await;
    let (job, run, lease) = started_job(&app).await;
    let res = app
        .post(
            &format!("{ORCH}/jobs/{job}/progress"),
            &json!({"leaseId": lease, "percent": 50, "log": [{"stream": "stdout", "line": "hi"}]}),
        )
        .header("X-Correlation-Id", "es-progress")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "progress");
    let res = app
        .worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    assert!(res.status().is_success(), "complete: {}", res.status());
    let timeline = app.timeline(&run).await;
    let seq_of = |ty: &str| {
        timeline
            .iter()
            .find(|e| e["type"] == ty)
            .unwrap_or_else(|| panic!("{ty} in {timeline:?}"))["seq"]
            .to_string()
    };
    let (run_end, job_end) = (seq_of("run.completed"), seq_of("job.done"));

    let base = format!("{}{ORCH}/stream", app.address);
    let cases = [
        (format!("{base}/runs/{run}?tenant={TENANT}"), &run_end),
        (
            format!("{base}/runs/{run}?tenant={TENANT}&events=first_signal"),
            &run_end,
        ),
        (
            format!("{base}/runs/{run}?tenant={TENANT}&correlationId=es-progress"),
            &run_end,
        ),
        // A cache buster is ignored, not a 400 (which would also close it).
        (
            format!("{base}/runs/{run}?tenant={TENANT}&events=progress&_=1700000000000"),
            &run_end,
        ),
        (
            format!("{base}/jobs/{job}?tenant={TENANT}&events=log"),
            &job_end,
        ),
    ];
    for (url, end) in cases {
        let (closed, seen) = follow(&url).await;
        assert!(closed, "{url}: EventSource never reached CLOSED: {seen:?}");
        assert!(
            seen.contains(&format!("event completed {end}")),
            "{url}: `completed` with the end's seq {end} is delivered: {seen:?}"
        );
        assert_eq!(
            seen.iter().filter(|l| l.starts_with("open")).count(),
            1,
            "{url}: one stream, then the reconnect is a 204: {seen:?}"
        );
    }
}
