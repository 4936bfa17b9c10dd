//! Two `runsignal` processes on one fresh PostgreSQL schema and one Redis,
//! and one request helper per endpoint the two-node tests use.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::testdb::{postgres_url, Backend, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_runsignal");
pub const ORCH: &str = "/api/v1/orchestrator";
pub const TENANT: &str = "acme";
/// Longest wait for the next event of a stream before a reader gives up
/// (generous: the machine may be loaded).
const IDLE: Duration = Duration::from_secs(30);

/// The Redis server the tests use (set by `.ci/run`).
fn redis_url() -> Option<String> {
    std::env::var("RUNSIGNAL_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// One `runsignal` process, killed (SIGKILL) and reaped on drop, a panic
/// included.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The node's warnings and errors explain many a failure.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- {} (last 40 lines)\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// Two nodes; dropped in field order: the processes, then the schema.
pub struct Cluster {
    pub a: Node,
    pub b: Node,
    processes: Vec<Process>,
    settings: Vec<(String, String)>,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Two nodes joined by Redis under a `KeyPrefix` of this test's own,
    /// both ready; `None` (with the reason printed) when the PostgreSQL or
    /// Redis variable is unset.
    pub async fn start(extra: &[(&str, &str)]) -> Option<Cluster> {
        let (Some(_), Some(redis)) = (postgres_url(), redis_url()) else {
            println!(
                "two-node tests skipped: RUNSIGNAL_TEST_DATABASE_URL and RUNSIGNAL_TEST_REDIS_URL must both be set"
            );
            return None;
        };
        ping_redis(&redis).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let db = TestDb::new(Backend::Postgres, dir.path());
        let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
        let settings: Vec<(String, String)> = [
            ("Database__Url", db.url.as_str()),
            ("messaging__transport", "redis"),
            ("Redis__Url", redis.as_str()),
            ("FirstSignal__Cache__Backend", "redis"),
            ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
            // The entries outlive no test by much.
            ("FirstSignal__Cache__TtlSeconds", "600"),
            ("Server__Workers", "2"),
            ("Logging__Level", "warn"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // The first node migrates the schema; the second starts on it.
        let (pa, a) = spawn(dir.path(), "a", &settings);
        a.wait_ready(&pa).await;
        let (pb, b) = spawn(dir.path(), "b", &settings);
        b.wait_ready(&pb).await;
        Some(Cluster {
            a,
            b,
            processes: vec![pa, pb],
            settings,
            _db: db,
            _dir: dir,
        })
    }

    /// A third node joins, on the same schema and Redis; ready.
    pub async fn join(&mut self) -> Node {
        let (p, n) = spawn(self._dir.path(), "c", &self.settings);
        n.wait_ready(&p).await;
        self.processes.push(p);
        n
    }
}

async fn ping_redis(url: &str) {
    let client = redis::Client::open(url).expect("RUNSIGNAL_TEST_REDIS_URL parses");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("RUNSIGNAL_TEST_REDIS_URL is set but Redis does not answer: {e}")
        });
    let _: () = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("Redis answers PING");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start node `name` in a directory of its own under `dir`, its log in
/// `dir/<name>.log`.
fn spawn(dir: &Path, name: &str, settings: &[(String, String)]) -> (Process, Node) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let log = dir.join(format!("{name}.log"));
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(&home)
        .env("RUNSIGNAL__Server__Bind", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in settings {
        cmd.env(format!("RUNSIGNAL__{k}"), v);
    }
    // Should the test process itself be killed (no `Drop`), the node dies
    // with it rather than outliving the test.
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("the runsignal binary starts");
    let node = Node {
        name: name.to_owned(),
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Below the server's keep-alive (actix-web's 5 s): a pooled
            // connection is never reused just as the server closes it.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    };
    (Process { child, log }, node)
}

/// A cheap handle on one node: its address and a client.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub base: String,
    client: reqwest::Client,
}

impl Node {
    /// Wait until `/readyz` says `ready` (the store and Redis both answer).
    async fn wait_ready(&self, process: &Process) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = match self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
            {
                Ok(res) => res
                    .json::<Value>()
                    .await
                    .is_ok_and(|b| b["status"] == "ready"),
                Err(_) => false,
            };
            if ready {
                return;
            }
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "node {} never became ready; its log:\n{log}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .header("X-Tenant-Id", TENANT)
            .json(body)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .header("X-Tenant-Id", TENANT)
    }

    async fn ok(&self, req: reqwest::RequestBuilder, what: &str) -> Value {
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what} on {}: {e:?}", self.name));
        let status = res.status();
        let body = res.text().await.unwrap();
        assert!(
            status.is_success(),
            "{what} on {}: {status} {body}",
            self.name
        );
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// A new, empty run; returns its id.
    pub async fn create_run(&self) -> String {
        let run = self
            .ok(self.post(&format!("{ORCH}/runs"), &json!({})), "create run")
            .await;
        run["runId"].as_str().expect("runId").to_owned()
    }

    /// Submit an `external` job into `run` (with a state webhook); its id.
    pub async fn submit(&self, run: &str, hook: Option<&str>) -> String {
        self.submit_job(Some(run), hook).await.0
    }

    /// Submit an `external` job, into a new run unless `run` is given:
    /// (job, run).
    pub async fn submit_job(&self, run: Option<&str>, hook: Option<&str>) -> (String, String) {
        let mut body = json!({"pack": "external"});
        if let Some(run) = run {
            body["run_id"] = json!(run);
        }
        if let Some(hook) = hook {
            body["state_webhook_url"] = json!(hook);
        }
        let job = self.ok(self.post("/jobs", &body), "submit").await;
        let id = |k: &str| job[k].as_str().expect(k).to_owned();
        (id("job_id"), id("run_id"))
    }

    /// Lease up to `max` `external` jobs for an hour, long-polling `wait` s.
    pub async fn lease(&self, worker: &str, max: u32, wait: u32) -> Vec<Value> {
        self.try_lease(worker, max, wait)
            .await
            .unwrap_or_else(|status| panic!("lease on {}: {status}", self.name))
    }

    /// As [`Node::lease`], but a 503 (the store gave up, nothing leased)
    /// is returned for the worker to try again, as a real worker would.
    pub async fn try_lease(&self, worker: &str, max: u32, wait: u32) -> Result<Vec<Value>, u16> {
        let body = json!({"workerId": worker, "packs": ["external"], "max": max,
                          "leaseSeconds": 3600, "waitSeconds": wait});
        let res = self
            .post(&format!("{ORCH}/workers/lease"), &body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("lease on {}: {e:?}", self.name));
        match res.status().as_u16() {
            200 => {
                let got: Value = res.json().await.unwrap();
                Ok(got["jobs"].as_array().expect("jobs").clone())
            }
            503 => Err(503),
            other => panic!(
                "lease on {}: {other} {}",
                self.name,
                res.text().await.unwrap()
            ),
        }
    }

    /// Lease the one queued job, which must be `job`; its lease id.
    pub async fn lease_only(&self, job: &str) -> String {
        let jobs = self.lease("w", 1, 0).await;
        assert_eq!(jobs.len(), 1, "one job to lease");
        assert_eq!(jobs[0]["jobId"], job);
        jobs[0]["leaseId"].as_str().unwrap().to_owned()
    }

    pub async fn progress(&self, job: &str, lease: &str, i: usize) {
        let body = json!({"leaseId": lease, "message": format!("step {i}"), "percent": i % 100});
        self.ok(
            self.post(&format!("{ORCH}/jobs/{job}/progress"), &body),
            "progress",
        )
        .await;
    }

    pub async fn complete(&self, job: &str, lease: &str) {
        let body = json!({"leaseId": lease, "result": {"ok": true}});
        self.ok(
            self.post(&format!("{ORCH}/jobs/{job}/complete"), &body),
            "complete",
        )
        .await;
    }

    /// Every event of the run's timeline, page by page.
    pub async fn timeline(&self, run: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0u64;
        loop {
            let path = format!("{ORCH}/runs/{run}/timeline?after={after}&limit=1000");
            let page = self.ok(self.get(&path), "timeline").await;
            events.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next"].as_u64() {
                Some(next) => after = next,
                None => return events,
            }
        }
    }

    /// The run's latest seq.
    pub async fn last_seq(&self, run: &str) -> u64 {
        self.timeline(run)
            .await
            .last()
            .map_or(0, |e| e["seq"].as_u64().unwrap())
    }

    /// The job's webhook deliveries once `done` holds for them.
    pub async fn wait_deliveries(&self, job: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.ok(self.get(&format!("/jobs/{job}")), "job").await;
            let ds = got["webhook"]["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if done(&ds) {
                return ds;
            }
            assert!(Instant::now() < deadline, "deliveries of {job}: {ds:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The run's SSE stream, from `last` when given.
    pub async fn sse(&self, run: &str, last: Option<u64>) -> reqwest::Response {
        let mut req = self.get(&format!("{ORCH}/stream/runs/{run}"));
        if let Some(last) = last {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let res = req.send().await.unwrap();
        assert!(
            matches!(res.status().as_u16(), 200 | 204),
            "stream on {}: {}",
            self.name,
            res.status()
        );
        res
    }

    pub async fn ws(&self) -> Ws {
        let url = format!("{}{ORCH}/ws", self.base.replacen("http://", "ws://", 1));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("X-Tenant-Id", TENANT.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("the WebSocket opens");
        Ws(ws)
    }
}

pub struct Ws(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Ws {
    /// Subscribe to a run and wait for the server to confirm.
    pub async fn subscribe_run(&mut self, run: &str) {
        let frame = json!({"op": "subscribe", "stream": "run", "id": run});
        self.0
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = self.next().await.expect("a reply to subscribe");
            assert_ne!(frame["op"], "error", "{frame}");
            if frame["op"] == "subscribed" {
                return;
            }
        }
    }

    /// The next text frame as JSON; `None` when the socket ends or stays
    /// silent for [`IDLE`].
    async fn next(&mut self) -> Option<Value> {
        // Pings do not count as activity: the deadline is per text frame.
        let deadline = tokio::time::Instant::now() + IDLE;
        loop {
            match tokio::time::timeout_at(deadline, self.0.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }
}

/// (seq, event) of every WebSocket event frame until `completed`.
pub async fn read_ws(ws: &mut Ws) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while let Some(frame) = ws.next().await {
        if frame["op"] != "event" {
            continue;
        }
        let event = frame["event"].as_str().unwrap_or_default().to_owned();
        let done = event == "completed";
        got.push((frame["seq"].as_u64().unwrap_or(0), event));
        if done {
            break;
        }
    }
    got
}

/// (id, event) of every SSE event until `completed`, the end of the stream,
/// or [`IDLE`] without one.
pub async fn read_sse(res: reqwest::Response) -> Vec<(u64, String)> {
    read_sse_idle(res).await.0
}

/// As [`read_sse`], and whether the stream went silent for [`IDLE`] (rather
/// than reaching `completed` or being ended by the server).
pub async fn read_sse_idle(res: reqwest::Response) -> (Vec<(u64, String)>, bool) {
    let mut events = res.bytes_stream().eventsource();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(IDLE, events.next()).await {
            Err(_) => return (got, true),
            Ok(Some(Ok(e))) => {
                let done = e.event == "completed";
                got.push((e.id.parse().unwrap_or(0), e.event));
                if done {
                    return (got, false);
                }
            }
            Ok(_) => return (got, false),
        }
    }
}

/// (seq, SSE event name) of the timeline events a run stream carries.
pub fn carried(timeline: &[Value]) -> Vec<(u64, String)> {
    timeline
        .iter()
        .filter_map(|e| {
            let name = match e["type"].as_str()? {
                "signal.changed" => "first_signal",
                "job.progress" => "progress",
                "run.completed" => "completed",
                t if t.starts_with("job.") => "job",
                _ => return None,
            };
            Some((e["seq"].as_u64()?, name.to_owned()))
        })
        .collect()
}
