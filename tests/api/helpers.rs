//! `spawn_app()` and one request helper per endpoint.
#![allow(dead_code)]

use std::sync::Arc;

use actix_web::web;
use reqwest::{Method, RequestBuilder, Response};
use runsignal::config::Config;
use runsignal::{AppState, Application};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::testdb::TestDb;

pub const TENANT: &str = "acme";
pub const ORCH: &str = "/api/v1/orchestrator";
pub const ENGINE: &str = "/api/v1/jobengine";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: web::Data<AppState>,
    pub dir: Arc<TempDir>,
    pub db: Arc<TestDb>,
    pub env: Vec<(String, String)>,
    pub server: runsignal::Stopper,
}

/// A server on an ephemeral port with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_with(&[]).await
}

/// A server with extra `RUNSIGNAL__…` settings.
pub async fn spawn_with(settings: &[(&str, &str)]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let db = Arc::new(TestDb::new(crate::BACKEND, dir.path()));
    start(dir, db, settings).await
}

/// A server on a database another server (a process) already uses.
#[allow(dead_code)]
pub async fn spawn_on(dir: Arc<TempDir>, db: Arc<TestDb>, settings: &[(&str, &str)]) -> TestApp {
    start(dir, db, settings).await
}

async fn start(dir: Arc<TempDir>, db: Arc<TestDb>, settings: &[(&str, &str)]) -> TestApp {
    let mut env: Vec<(String, String)> = vec![
        ("RUNSIGNAL__Server__Bind".into(), "127.0.0.1:0".into()),
        ("RUNSIGNAL__Server__Workers".into(), "2".into()),
        // A server a test never stops keeps its actor threads until the
        // test process exits: one each is enough here.
        ("RUNSIGNAL__Actors__Threads".into(), "1".into()),
        ("RUNSIGNAL__Database__Url".into(), db.url.clone()),
        ("RUNSIGNAL__Logging__Level".into(), "warn".into()),
        // Everything a test writes stays in its temp dir (later settings win).
        (
            "RUNSIGNAL__Artifacts__Dir".into(),
            format!("{}/artifacts", dir.path().display()),
        ),
        (
            "RUNSIGNAL__Executor__WorkspaceDir".into(),
            format!("{}/workspaces", dir.path().display()),
        ),
    ];
    env.extend(
        settings
            .iter()
            .map(|(k, v)| (format!("RUNSIGNAL__{k}"), v.to_string())),
    );
    let config = Config::load_from(None, env.clone()).expect("test config");
    let app = Application::build(config).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let server = app.stopper();
    actix_rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    TestApp {
        address,
        client,
        state,
        dir,
        db,
        env,
        server,
    }
}

impl TestApp {
    /// Stop this server and start a new one on the same database.
    pub async fn restart(self, settings: &[(&str, &str)]) -> TestApp {
        self.server.stop().await;
        start(self.dir.clone(), self.db.clone(), settings).await
    }

    /// A second server on the same database, beside this one (a node of a
    /// cluster; only meaningful on PostgreSQL).
    #[allow(dead_code)]
    pub async fn another_node(&self, settings: &[(&str, &str)]) -> TestApp {
        start(self.dir.clone(), self.db.clone(), settings).await
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_as(TENANT, method, path)
    }

    /// A request on behalf of another tenant.
    pub fn req_as(&self, tenant: &str, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.address, path))
            .header("X-Tenant-Id", tenant)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.req(Method::GET, path)
    }

    pub fn post(&self, path: &str, body: &Value) -> RequestBuilder {
        self.req(Method::POST, path).json(body)
    }

    pub async fn submit(&self, body: Value) -> Response {
        self.post("/jobs", &body).send().await.unwrap()
    }

    /// Submit an `external` job; returns (job_id, run_id).
    pub async fn submit_job(&self, run_id: Option<&str>) -> (String, String) {
        let mut body = json!({"pack": "external", "inputs": {"n": 1}});
        if let Some(run) = run_id {
            body["run_id"] = json!(run);
        }
        let res = self.submit(body).await;
        assert_eq!(res.status(), 202, "submit");
        let v: Value = res.json().await.unwrap();
        (
            v["job_id"].as_str().unwrap().into(),
            v["run_id"].as_str().unwrap().into(),
        )
    }

    pub async fn create_run(&self, body: Value) -> Response {
        self.post(&format!("{ORCH}/runs"), &body)
            .send()
            .await
            .unwrap()
    }

    pub async fn first_signal(&self, run_id: &str) -> Response {
        self.get(&format!("{ORCH}/runs/{run_id}/first-signal"))
            .send()
            .await
            .unwrap()
    }

    pub async fn job(&self, job_id: &str) -> Value {
        let res = self.get(&format!("/jobs/{job_id}")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Lease with defaults; returns the leased jobs.
    pub async fn lease(&self, body: Value) -> Vec<Value> {
        let res = self
            .post(&format!("{ORCH}/workers/lease"), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "lease");
        let v: Value = res.json().await.unwrap();
        v["jobs"].as_array().unwrap().clone()
    }

    /// Lease exactly one `external` job.
    pub async fn lease_one(&self) -> Value {
        let jobs = self
            .lease(json!({"workerId": "w1", "packs": ["external"]}))
            .await;
        assert_eq!(jobs.len(), 1, "one job leased");
        jobs[0].clone()
    }

    pub async fn worker(&self, job_id: &str, action: &str, body: Value) -> Response {
        self.post(&format!("{ORCH}/jobs/{job_id}/{action}"), &body)
            .send()
            .await
            .unwrap()
    }

    pub async fn timeline(&self, run_id: &str) -> Vec<Value> {
        let res = self
            .get(&format!("{ORCH}/runs/{run_id}/timeline?limit=1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let v: Value = res.json().await.unwrap();
        v["events"].as_array().unwrap().clone()
    }

    pub fn store_calls(&self) -> u64 {
        self.state.queries.get()
    }
}

pub fn header(res: &Response, name: &str) -> String {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Assert a problem+json error with the given status and code.
pub async fn assert_problem(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(
        res.status().as_u16(),
        status,
        "status for expected code {code}"
    );
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

/// A submitted `external` job already leased for an hour: (job, run, leaseId).
pub async fn started_job(app: &TestApp) -> (String, String, String) {
    let (job, run) = app.submit_job(None).await;
    let lease = app
        .lease(json!({"workerId": "w", "packs": ["external"], "leaseSeconds": 3600}))
        .await
        .remove(0);
    (job, run, lease["leaseId"].as_str().unwrap().to_owned())
}

/// `n` progress reports written straight through the store and engine, as
/// fast as the store commits them, without HTTP in between. Each carries a
/// message of `message_len` bytes (none when 0) and `lines` log lines of
/// `line_len` bytes.
pub async fn progress_direct(
    app: &TestApp,
    job: &str,
    lease: &str,
    n: usize,
    message_len: usize,
    lines: usize,
    line_len: usize,
) {
    use runsignal::store::{BlockedChange, LogLine, LogStream, ProgressReport};
    let message = "x".repeat(message_len);
    let line = "x".repeat(line_len);
    for i in 0..n {
        let report = ProgressReport {
            lease_id: lease.to_owned(),
            stage: None,
            step: None,
            step_index: None,
            message: (message_len > 0).then(|| message.clone()),
            percent: Some((i % 100) as f64),
            log: (0..lines)
                .map(|_| LogLine {
                    stream: LogStream::Stdout,
                    line: line.clone(),
                })
                .collect(),
            blocked: BlockedChange::Unchanged,
            correlation_id: format!("bulk-{i}"),
        };
        app.state
            .store
            .report_progress(TENANT, job, &report)
            .await
            .unwrap();
    }
}
