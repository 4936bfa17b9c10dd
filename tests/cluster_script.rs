//! `scripts/cluster.sh` runs for real: two nodes on the test PostgreSQL (a
//! schema of their own) and Redis behind nginx. Through the balancer only:
//! an `external` job is submitted and leased, a run stream is opened, and
//! progress reports written through both nodes arrive on it live, in order,
//! without duplicates; a WebSocket upgrade passes; a second start is
//! refused; `stop` leaves no process.
//!
//! Skipped (with the reason printed) when `RUNSIGNAL_TEST_DATABASE_URL` or
//! `RUNSIGNAL_TEST_REDIS_URL` is unset or nginx is not installed; with the
//! variables set, unreachable services fail the test.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// How long the stream may stay silent before the test gives up.
const IDLE: Duration = Duration::from_secs(30);
const TENANT: &str = "cluster-script";
const API: &str = "/api/v1/orchestrator";
/// Progress reports written one at a time (each awaited on the stream),
/// then this many more in a burst.
const STEPPED: usize = 10;
const BURST: usize = 10;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn nginx_installed() -> bool {
    Path::new("/usr/sbin/nginx").exists()
        || Command::new("nginx")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
}

/// Redis answers PING, or the test fails: the variable says it is there.
fn assert_redis_answers(url: &str) {
    let addr = url
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut conn = TcpStream::connect(&addr).unwrap_or_else(|e| {
        panic!("RUNSIGNAL_TEST_REDIS_URL is set but Redis at {addr} is unreachable: {e}")
    });
    conn.set_read_timeout(Some(IDLE)).unwrap();
    conn.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 5];
    conn.read_exact(&mut reply)
        .unwrap_or_else(|e| panic!("Redis at {addr} did not answer PING: {e}"));
    assert_eq!(&reply, b"+PONG", "Redis at {addr} answered PING oddly");
}

/// The cluster of one test: its directory and schema; stopped and dropped
/// even when the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    database: String,
    redis: String,
    schema: String,
}

impl Cluster {
    fn script(&self, arg: &str) -> Output {
        let out = Command::new("bash")
            .args(["scripts/cluster.sh", arg])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUNSIGNAL_BIN", env!("CARGO_BIN_EXE_runsignal"))
            .env("RUNSIGNAL_CLUSTER_DIR", self.dir.path())
            .env("RUNSIGNAL_CLUSTER_DATABASE_URL", &self.database)
            .env("RUNSIGNAL_CLUSTER_REDIS_URL", &self.redis)
            .env("RUNSIGNAL_CLUSTER_SCHEMA", &self.schema)
            .env("RUNSIGNAL_CLUSTER_PORT", "0")
            // The nodes' Redis cache keys outlive the test only briefly.
            .env("RUNSIGNAL__FirstSignal__Cache__TtlSeconds", "300")
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        println!(
            "--- cluster.sh {arg}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The pids of the cluster's pid files, and the children of each (the
    /// nginx workers).
    fn processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| {
                let path: PathBuf = e.ok()?.path();
                (path.extension()? == "pid").then(|| {
                    std::fs::read_to_string(&path)
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap()
                })
            })
            .collect();
        let parents: HashSet<u32> = pids.iter().copied().collect();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                if parents.contains(&ppid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let sql = format!(
            "SET client_min_messages = warning; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{0}'; \
             DROP SCHEMA IF EXISTS {0} CASCADE",
            self.schema
        );
        let _ = Command::new("psql")
            .args([&self.database, "-qc", &sql])
            .stdout(Stdio::null())
            .status();
    }
}

/// `/proc/<pid>/stat`: (parent pid, state), if the process exists.
fn stat(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(") ")?.1.split(' ');
    let state = rest.next()?.chars().next()?;
    Some((rest.next()?.parse().ok()?, state))
}

fn parent_of(pid: u32) -> Option<u32> {
    stat(pid).map(|(ppid, _)| ppid)
}

/// Still running: exists and is not a zombie nobody has reaped yet.
fn running(pid: u32) -> bool {
    matches!(stat(pid), Some((_, state)) if state != 'Z')
}

/// One SSE event: (id, event, data).
type Frame = (u64, String, Value);

/// Read an SSE stream on a thread of its own, sending each event on.
fn follow(response: reqwest::blocking::Response) -> mpsc::Receiver<Frame> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut id, mut event, mut data) = (0, String::new(), String::new());
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if !data.is_empty() {
                    let value = serde_json::from_str(&data).expect("data is JSON");
                    if tx.send((id, std::mem::take(&mut event), value)).is_err() {
                        return;
                    }
                }
                data.clear();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().expect("id is a seq");
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_owned();
            }
        }
    });
    rx
}

fn next(frames: &mpsc::Receiver<Frame>, waiting_for: &str) -> Frame {
    frames
        .recv_timeout(IDLE)
        .unwrap_or_else(|e| panic!("stream silent for {IDLE:?} ({e}) waiting for {waiting_for}"))
}

/// The status line and headers of a WebSocket handshake on `{lb}{API}/ws`.
fn websocket_handshake(lb: &str) -> String {
    let addr = lb.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(IDLE)).unwrap();
    write!(
        conn,
        "GET {API}/ws?tenant={TENANT} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    for line in BufReader::new(conn).lines() {
        let line = line.expect("the handshake's answer");
        if line.is_empty() {
            break;
        }
        head.push_str(&line);
        head.push('\n');
    }
    head
}

#[test]
fn cluster_script_serves_a_job_through_the_balancer_and_stops_cleanly() {
    let (Some(database), Some(redis)) = (
        env("RUNSIGNAL_TEST_DATABASE_URL"),
        env("RUNSIGNAL_TEST_REDIS_URL"),
    ) else {
        println!("cluster script test skipped: RUNSIGNAL_TEST_DATABASE_URL or RUNSIGNAL_TEST_REDIS_URL is unset");
        return;
    };
    if !nginx_installed() {
        println!(
            "cluster script test skipped: nginx is not installed (apt-get install nginx-light)"
        );
        return;
    }
    assert_redis_answers(&redis);
    let cluster = Cluster {
        dir: tempfile::tempdir().unwrap(),
        database,
        redis,
        schema: format!("cs_{}", uuid::Uuid::new_v4().simple()),
    };

    let out = cluster.script("2");
    assert!(out.status.success(), "cluster.sh 2 failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lb = stdout
        .lines()
        .find_map(|l| l.strip_prefix("load balancer: "))
        .expect("the balancer's URL is printed")
        .to_owned();
    assert!(
        stdout.contains("node1: ") && stdout.contains("node2: "),
        "{stdout}"
    );

    let again = cluster.script("2");
    assert!(!again.status.success(), "a second start is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let http = reqwest::blocking::Client::builder()
        .timeout(IDLE)
        .build()
        .unwrap();
    let post = |path: &str, body: Value| {
        let r = http
            .post(format!("{lb}{path}"))
            .header("X-Tenant-Id", TENANT)
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let upstream = r
            .headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let status = r.status();
        let body: Value = r.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {body}");
        (body, upstream)
    };

    // Submit and lease through the balancer.
    let (job, _) = post("/jobs", json!({"pack": "external"}));
    let (job_id, run_id) = (
        job["job_id"].as_str().unwrap().to_owned(),
        job["run_id"].as_str().unwrap().to_owned(),
    );
    let (lease, _) = post(
        &format!("{API}/workers/lease"),
        json!({"workerId": "w1", "packs": ["external"], "max": 1,
               "leaseSeconds": 300, "waitSeconds": 10}),
    );
    assert_eq!(lease["jobs"][0]["jobId"], job_id.as_str(), "{lease}");
    let lease_id = lease["jobs"][0]["leaseId"].as_str().unwrap().to_owned();

    // The run's stream through the balancer: live once its first signal came.
    let streams = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let response = streams
        .get(format!("{lb}{API}/stream/runs/{run_id}?tenant={TENANT}"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let frames = follow(response);
    let (_, event, _) = next(&frames, "the first signal on connect");
    assert_eq!(event, "first_signal");

    // Reports one at a time, each seen live before the next, then a burst;
    // round robin sends them through both nodes.
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut upstreams = HashSet::new();
    let mut report = |i: usize| {
        let (_, upstream) = post(
            &format!("{API}/jobs/{job_id}/progress"),
            json!({"leaseId": lease_id, "message": format!("step {i}"), "percent": i}),
        );
        upstreams.insert(upstream);
    };
    let take_until = |want: &str, seen: &mut Vec<(u64, String)>| loop {
        let (id, event, data) = next(&frames, want);
        match event.as_str() {
            "progress" => {
                let message = data["payload"]["message"].as_str().unwrap().to_owned();
                seen.push((id, message.clone()));
                if message == want {
                    return;
                }
            }
            "completed" if want == "completed" => return,
            _ => {}
        }
    };
    for i in 1..=STEPPED {
        report(i);
        take_until(&format!("step {i}"), &mut seen);
    }
    for i in STEPPED + 1..=STEPPED + BURST {
        report(i);
    }
    post(
        &format!("{API}/jobs/{job_id}/complete"),
        json!({"leaseId": lease_id, "result": {"ok": true}}),
    );
    take_until("completed", &mut seen);

    assert!(
        upstreams.len() >= 2,
        "the reports went through one node only: {upstreams:?}"
    );
    let messages: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    let want: Vec<String> = (1..=STEPPED + BURST).map(|i| format!("step {i}")).collect();
    assert_eq!(messages, want, "every report once, in order");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "ids rise: {seen:?}"
    );

    // The balancer passes WebSocket upgrades on.
    let handshake = websocket_handshake(&lb);
    assert!(
        handshake.starts_with("HTTP/1.1 101"),
        "WebSocket upgrade through nginx: {handshake}"
    );

    // Stop: nothing of the cluster is left running.
    let processes = cluster.processes();
    assert!(processes.len() >= 3, "two nodes and nginx: {processes:?}");
    assert!(cluster.script("stop").status.success());
    let left: Vec<u32> = processes.into_iter().filter(|&p| running(p)).collect();
    assert!(left.is_empty(), "still running after stop: {left:?}");
    assert!(
        http.get(format!("{lb}/healthz")).send().is_err(),
        "the balancer still answers"
    );
}
