//! `runsignal watch` as a user runs it: the real binary as a child process
//! against a real server started in this test's actix system, driven by
//! HTTP calls of a remote worker. Exit codes: 0 succeeded, 1 failed,
//! 2 canceled, 3 error.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use runsignal::config::Config;
use runsignal::{Application, Stopper};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_runsignal");
const TENANT: &str = "acme";
const ORCH: &str = "/api/v1/orchestrator";
/// Generous: nothing here asserts on timing.
const WAIT: Duration = Duration::from_secs(30);

/// Build and spawn a server on `port` (0: any) over the database in `dir`.
async fn start(dir: &Path, port: u16) -> (Stopper, u16) {
    let env: Vec<(String, String)> = vec![
        (
            "RUNSIGNAL__Server__Bind".into(),
            format!("127.0.0.1:{port}"),
        ),
        ("RUNSIGNAL__Server__Workers".into(), "2".into()),
        (
            "RUNSIGNAL__Database__Url".into(),
            format!("sqlite://{}/runsignal.db", dir.display()),
        ),
        ("RUNSIGNAL__Logging__Level".into(), "warn".into()),
        (
            "RUNSIGNAL__Artifacts__Dir".into(),
            format!("{}/artifacts", dir.display()),
        ),
        (
            "RUNSIGNAL__Executor__WorkspaceDir".into(),
            format!("{}/workspaces", dir.display()),
        ),
    ];
    let config = Config::load_from(None, env).expect("test config");
    let app = Application::build(config).await.expect("app builds");
    let port = app.port();
    let stopper = app.stopper();
    actix_rt::spawn(app.run_until_stopped());
    (stopper, port)
}

struct Server {
    dir: TempDir,
    port: u16,
    stopper: Stopper,
    client: reqwest::Client,
}

impl Server {
    async fn new() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let (stopper, port) = start(dir.path(), 0).await;
        Server {
            dir,
            port,
            stopper,
            client: reqwest::Client::new(),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop gracefully (open streams get `timeout`), then serve the same
    /// database on the same port again.
    async fn restart(&mut self) {
        self.stopper.stop().await;
        let (stopper, port) = start(self.dir.path(), self.port).await;
        assert_eq!(port, self.port);
        self.stopper = stopper;
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let res = self
            .client
            .post(format!("{}{path}", self.base()))
            .header("X-Tenant-Id", TENANT)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Submit an `external` job; (job_id, run_id).
    async fn submit(&self) -> (String, String) {
        let v = self.post("/jobs", json!({"pack": "external"})).await;
        (
            v["job_id"].as_str().unwrap().into(),
            v["run_id"].as_str().unwrap().into(),
        )
    }

    /// Lease the one queued job; its lease id.
    async fn lease(&self, job_id: &str) -> String {
        let v = self
            .post(
                &format!("{ORCH}/workers/lease"),
                json!({"workerId": "w1", "packs": ["external"], "leaseSeconds": 300}),
            )
            .await;
        let job = &v["jobs"][0];
        assert_eq!(job["jobId"], job_id, "{v}");
        job["leaseId"].as_str().unwrap().into()
    }

    async fn worker(&self, job_id: &str, action: &str, body: Value) -> Value {
        self.post(&format!("{ORCH}/jobs/{job_id}/{action}"), body)
            .await
    }

    async fn timeline(&self, run_id: &str) -> Vec<Value> {
        let v: Value = self
            .client
            .get(format!(
                "{}{ORCH}/runs/{run_id}/timeline?limit=1000",
                self.base()
            ))
            .header("X-Tenant-Id", TENANT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["events"].as_array().unwrap().clone()
    }
}

/// A running `runsignal watch`, its stdout read line by line.
struct Watch {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Watch {
    fn spawn(base: &str, id: &str, extra: &[&str]) -> Watch {
        let mut child = Command::new(BIN)
            .arg("watch")
            .arg(id)
            .args(["--url", base, "--tenant", TENANT])
            .args(extra)
            .env_remove("RUNSIGNAL_URL")
            .env_remove("RUNSIGNAL_TENANT")
            // A client: the server's configuration is not its business.
            .env("RUNSIGNAL__FirstSignal__Cache__Backend", "memcached")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("watch starts");
        let stdout = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = actix_rt::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Wait for a stdout line matching `pred` (within [`WAIT`]).
    async fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| pred(l)) {
            return line.clone();
        }
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no stdout line: {what}; got {:#?}", self.seen),
        }
    }

    /// Whether a matching line arrives within `within`.
    async fn saw_within(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> bool {
        if self.seen.iter().any(|l| pred(l)) {
            return true;
        }
        let found = tokio::time::timeout(within, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if pred(&line) {
                    return true;
                }
            }
            false
        })
        .await;
        found.unwrap_or(false)
    }

    /// Wait for the exit: (code, stdout lines, stderr).
    async fn finish(mut self) -> (i32, Vec<String>, String) {
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("watch did not exit; stdout so far {:#?}", self.seen);
            }
        };
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        let stderr = self.stderr.await.unwrap_or_default();
        (status.code().unwrap_or(-1), self.seen, stderr)
    }
}

/// Run `watch` to its end without a server interaction.
async fn watch_output(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("watch")
        .args(args)
        .env_remove("RUNSIGNAL_URL")
        .env_remove("RUNSIGNAL_TENANT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("watch exits")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse `--json` lines; each is exactly `{"id","event","data"}`.
fn events(lines: &[String]) -> Vec<(u64, String, Value)> {
    lines
        .iter()
        .map(|line| {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 3, "only id, event, data: {line}");
            assert!(obj["data"].is_object(), "{line}");
            (
                obj["id"].as_u64().expect("numeric id"),
                obj["event"].as_str().unwrap().to_owned(),
                obj["data"].clone(),
            )
        })
        .collect()
}

/// Seqs of the run stream's carried events from `first` on.
fn run_stream_seqs(timeline: &[Value], first: u64) -> Vec<u64> {
    timeline
        .iter()
        .filter(|e| {
            let ty = e["type"].as_str().unwrap();
            ty == "signal.changed" || ty == "run.completed" || ty.starts_with("job.")
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .filter(|seq| *seq >= first)
        .collect()
}

fn strictly_increasing(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

#[actix_web::test]
async fn json_prints_run_events_in_seq_order_and_exits_0_on_success() {
    let server = Server::new().await;
    let (job, run) = server.submit().await;
    let mut watch = Watch::spawn(&server.base(), &run, &["--json"]);
    // Connected: the run stream starts with the current first signal.
    watch
        .until("first_signal", |l| l.contains(r#""event":"first_signal""#))
        .await;

    let lease = server.lease(&job).await;
    for (i, pct) in [(0, 40.0), (1, 80.0)] {
        server
            .worker(
                &job,
                "progress",
                json!({"leaseId": lease, "stage": "analyze", "step": format!("step-{i}"),
                       "stepIndex": i, "percent": pct, "message": format!("at {pct}"),
                       "log": [format!("line {i}")]}),
            )
            .await;
    }
    server
        .worker(
            &job,
            "complete",
            json!({"leaseId": lease, "result": {"ok": true}}),
        )
        .await;

    let (code, lines, stderr) = watch.finish().await;
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {lines:#?}");
    let events = events(&lines);
    let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert!(strictly_increasing(&ids), "seq order: {ids:?}");
    let timeline = server.timeline(&run).await;
    assert_eq!(
        ids,
        run_stream_seqs(&timeline, ids[0]),
        "every carried event, once"
    );
    let names: BTreeSet<&str> = events.iter().map(|e| e.1.as_str()).collect();
    for name in ["first_signal", "job", "progress", "completed"] {
        assert!(names.contains(name), "{name} in {names:?}");
    }
    let percents: Vec<f64> = events
        .iter()
        .filter(|e| e.1 == "progress")
        .filter_map(|e| e.2["payload"]["percent"].as_f64())
        .collect();
    assert_eq!(percents, [40.0, 80.0]);
    let (_, last, data) = events.last().unwrap();
    assert_eq!(last, "completed");
    assert_eq!(data["payload"]["status"], "succeeded");
}

#[actix_web::test]
async fn a_failed_job_exits_1_with_its_steps_and_logs() {
    let server = Server::new().await;
    let (job, run) = server.submit().await;
    let lease = server.lease(&job).await;
    let mut watch = Watch::spawn(&server.base(), &job, &["--json", "--logs"]);
    // The pack-run stream sends nothing on connect: report until it shows.
    let mut tick = 0;
    loop {
        server
            .worker(
                &job,
                "progress",
                json!({"leaseId": lease, "stage": "fetch", "step": "download", "stepIndex": 0,
                       "log": [format!("tick {tick}")]}),
            )
            .await;
        if watch
            .saw_within(Duration::from_millis(300), |l| l.contains("tick"))
            .await
        {
            break;
        }
        tick += 1;
        assert!(tick < 100, "watch never showed a log line");
    }
    server
        .worker(
            &job,
            "progress",
            json!({"leaseId": lease, "stage": "analyze", "step": "scan", "stepIndex": 1,
                   "log": ["hello from step 1", {"stream": "stderr", "line": "about to fail"}]}),
        )
        .await;
    server
        .worker(
            &job,
            "fail",
            json!({"leaseId": lease, "retryable": false, "code": "scan_failed",
                   "message": "scanner crashed", "exitCode": 7}),
        )
        .await;

    let (code, lines, stderr) = watch.finish().await;
    assert_eq!(code, 1, "stderr: {stderr}\nstdout: {lines:#?}");
    let events = events(&lines);
    // Log lines of one timeline event share its id: ids never go back.
    let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "seq order: {ids:?}");
    let distinct: Vec<u64> = ids
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let timeline = server.timeline(&run).await;
    let carried: Vec<u64> = timeline
        .iter()
        // The job stream carries the job's state, progress, steps and logs.
        .filter(|e| {
            let ty = e["type"].as_str().unwrap();
            e["jobId"].as_str() == Some(job.as_str())
                && (ty.starts_with("job.") || ty.starts_with("step.") || ty == "log")
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .filter(|seq| *seq >= ids[0])
        .collect();
    assert_eq!(distinct, carried, "no gap among carried events");
    let step = |index: i64, status: &str| {
        events
            .iter()
            .any(|e| e.1 == "step" && e.2["stepIndex"] == index && e.2["status"] == status)
    };
    assert!(
        step(0, "succeeded") && step(1, "running") && step(1, "failed"),
        "{lines:#?}"
    );
    let failed_step = events
        .iter()
        .find(|e| e.1 == "step" && e.2["status"] == "failed")
        .unwrap();
    assert_eq!(failed_step.2["exitCode"], 7);
    let logs: Vec<(&Value, &Value)> = events
        .iter()
        .filter(|e| e.1 == "log")
        .map(|e| (&e.2["stream"], &e.2["line"]))
        .collect();
    assert!(logs.contains(&(&json!("stdout"), &json!("hello from step 1"))));
    assert!(logs.contains(&(&json!("stderr"), &json!("about to fail"))));
    let (_, last, data) = events.last().unwrap();
    assert_eq!(last, "completed");
    assert_eq!(data["type"], "job.failed");
}

#[actix_web::test]
async fn a_canceled_run_exits_2_and_plain_output_without_a_terminal() {
    let server = Server::new().await;
    let (job, run) = server.submit().await;
    let mut watch = Watch::spawn(&server.base(), &run, &[]);
    watch
        .until("the first signal line", |l| l.contains("signal queued"))
        .await;
    server.post(&format!("/jobs/{job}/cancel"), json!({})).await;
    let (code, lines, stderr) = watch.finish().await;
    assert_eq!(code, 2, "stderr: {stderr}\nstdout: {lines:#?}");
    let text = lines.join("\n");
    assert!(
        text.contains(&format!("watching run {run}")),
        "header line: {text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("] job ") && l.contains("canceled")),
        "{text}"
    );
    assert!(text.contains("completed canceled"), "{text}");
    assert_eq!(
        lines.last().unwrap(),
        &format!("run {run} canceled"),
        "verdict last"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no terminal escapes when stdout is not a TTY"
    );

    // A job watched after its end replays its terminal event: exit 2 too.
    let (code, lines, stderr) = Watch::spawn(&server.base(), &job, &["--json"])
        .finish()
        .await;
    assert_eq!(code, 2, "stderr: {stderr}\nstdout: {lines:#?}");
    let events = events(&lines);
    assert_eq!(events.len(), 1, "{lines:#?}");
    assert_eq!(events[0].2["type"], "job.canceled");
}

#[actix_web::test]
async fn errors_exit_3() {
    let server = Server::new().await;
    let base = server.base();

    let unknown_run = "0b6f0a33-5b0e-4d8e-9f6e-3d2b1c0a9e8f";
    let (code, stderr) =
        watch_output(&[unknown_run, "--url", &base, "--tenant", TENANT, "--json"]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("run not found"), "{stderr}");

    let unknown_job = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let (code, stderr) = watch_output(&[unknown_job, "--url", &base, "--tenant", TENANT]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("job not found"), "{stderr}");

    // Another tenant's run is not found either.
    let (_, run) = server.submit().await;
    let (code, stderr) = watch_output(&[&run, "--url", &base, "--tenant", "other"]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("run not found"), "{stderr}");

    // Bad arguments: not an id, no tenant, an invalid tenant.
    let (code, stderr) = watch_output(&["not-an-id", "--url", &base, "--tenant", TENANT]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("neither a run id"), "{stderr}");
    let (code, stderr) = watch_output(&[&run, "--url", &base]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--tenant"), "{stderr}");
    let (code, stderr) = watch_output(&[&run, "--url", &base, "--tenant", "no spaces"]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("400"), "{stderr}");

    // Nobody listening: give up after the allowed attempts.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{closed}");
    let (code, stderr) = watch_output(&[
        &run,
        "--url",
        &url,
        "--tenant",
        TENANT,
        "--max-attempts",
        "3",
    ])
    .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("giving up"), "{stderr}");
    assert_eq!(
        stderr.matches("reconnecting in").count(),
        2,
        "two retries, then the third failure gives up: {stderr}"
    );
}

#[actix_web::test]
async fn reconnects_after_a_server_restart_without_gaps_or_duplicates() {
    let mut server = Server::new().await;
    let (job, run) = server.submit().await;
    let mut watch = Watch::spawn(&server.base(), &run, &["--json"]);
    watch
        .until("first_signal", |l| l.contains(r#""event":"first_signal""#))
        .await;
    let lease = server.lease(&job).await;
    server
        .worker(
            &job,
            "progress",
            json!({"leaseId": lease, "stage": "fetch", "step": "download", "stepIndex": 0, "percent": 25.0}),
        )
        .await;
    watch
        .until("the first progress", |l| l.contains(r#""percent":25"#))
        .await;

    // Down and up again on the same port and database; events happen while
    // `watch` is between connections and after it is back.
    server.restart().await;
    server
        .worker(
            &job,
            "progress",
            json!({"leaseId": lease, "stage": "analyze", "step": "scan", "stepIndex": 1, "percent": 60.0}),
        )
        .await;
    server
        .worker(
            &job,
            "progress",
            json!({"leaseId": lease, "stage": "report", "step": "write", "stepIndex": 2, "percent": 90.0}),
        )
        .await;
    server
        .worker(&job, "complete", json!({"leaseId": lease}))
        .await;

    let (code, lines, stderr) = watch.finish().await;
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {lines:#?}");
    assert!(
        stderr.contains("reconnecting"),
        "the drop was noticed: {stderr}"
    );
    let events = events(&lines);
    let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert!(strictly_increasing(&ids), "no duplicate, in order: {ids:?}");
    let timeline = server.timeline(&run).await;
    assert_eq!(
        ids,
        run_stream_seqs(&timeline, ids[0]),
        "no gap among carried events"
    );
    let percents: Vec<f64> = events
        .iter()
        .filter(|e| e.1 == "progress")
        .filter_map(|e| e.2["payload"]["percent"].as_f64())
        .collect();
    assert_eq!(percents, [25.0, 60.0, 90.0]);
    assert_eq!(events.last().unwrap().1, "completed");
}
