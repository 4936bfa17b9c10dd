//! Webhooks survive a SIGKILL (SPEC §7.2, at-least-once): the real binary
//! queues deliveries its receiver cannot take, is killed, restarts on the
//! same data directory, and every state still reaches the receiver once it
//! comes up — duplicates allowed, losses not.

#[path = "common/testdb.rs"]
mod testdb;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testdb::{backends, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_runsignal");
const ORCH: &str = "/api/v1/orchestrator";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &Path, db: &TestDb, port: u16, timeout_seconds: u32) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("RUNSIGNAL__Database__Url", &db.url)
        .env("RUNSIGNAL__Server__Bind", format!("127.0.0.1:{port}"))
        .env("RUNSIGNAL__Server__Workers", "1")
        .env("RUNSIGNAL__Webhooks__AllowedNetworks__0", "127.0.0.0/8")
        .env("RUNSIGNAL__Webhooks__Secrets__0", "crash-test-secret")
        .env(
            "RUNSIGNAL__Webhooks__TimeoutSeconds",
            timeout_seconds.to_string(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Many short steps: the receiver is down for a while, retries must not
    // run out before it comes up.
    for i in 0..120 {
        cmd.env(
            format!("RUNSIGNAL__Webhooks__RetryScheduleSeconds__{i}"),
            "1",
        );
    }
    cmd.spawn().expect("binary starts")
}

struct Api {
    client: reqwest::blocking::Client,
    base: String,
}

impl Api {
    fn new(port: u16) -> Api {
        Api {
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} never became ready", self.base);
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .header("X-Tenant-Id", "acme")
            .json(&body)
            .send()
            .unwrap();
        assert!(res.status().is_success(), "POST {path}: {}", res.status());
        res.json().unwrap()
    }

    fn job(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/jobs/{id}", self.base))
            .header("X-Tenant-Id", "acme")
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Submit a hooked job and run it to `done` as a remote worker.
    fn run_job(&self, hook: &str) -> String {
        let job = self.post(
            "/jobs",
            json!({"pack": "external", "state_webhook_url": hook}),
        );
        let id = job["job_id"].as_str().unwrap().to_owned();
        let leased = self.post(
            &format!("{ORCH}/workers/lease"),
            json!({"workerId": "w1", "packs": ["external"]}),
        );
        let lease = leased["jobs"][0]["leaseId"].clone();
        assert_eq!(leased["jobs"][0]["jobId"], id.as_str());
        self.post(
            &format!("{ORCH}/jobs/{id}/progress"),
            json!({"leaseId": lease, "message": "working"}),
        );
        self.post(
            &format!("{ORCH}/jobs/{id}/complete"),
            json!({"leaseId": lease, "result": {"n": 1}}),
        );
        assert_eq!(self.job(&id)["state"], "done");
        id
    }

    /// Poll the job until `pred` holds for its deliveries.
    fn wait_deliveries(&self, id: &str, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ds = self.job(id)["webhook"]["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if pred(&ds) {
                return ds;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {ds:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A minimal HTTP/1.1 receiver on its own thread: records each request's
/// `webhook-id` and whether it was signed, answers 200.
fn receiver(listener: TcpListener) -> Arc<Mutex<Vec<(String, bool)>>> {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Some(hit) = read_request(stream) {
                seen.lock().unwrap().push(hit);
            }
        }
    });
    hits
}

fn read_request(mut stream: TcpStream) -> Option<(String, bool)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let (mut id, mut signed, mut length) = (String::new(), false, 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "webhook-id" => id = value.trim().to_owned(),
                "x-foreman-signature" => signed = value.trim().starts_with("sha256="),
                "content-length" => length = value.trim().parse().ok()?,
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some((id, signed))
}

/// Start the receiver on `port`, then wait until every state arrived.
fn assert_every_state_arrives(api: &Api, port: u16, job: &str) {
    let hits = receiver(TcpListener::bind(("127.0.0.1", port)).expect("receiver port is free"));
    let want: Vec<String> = ["queued", "loading", "working", "done"]
        .iter()
        .map(|s| format!("{job}:{s}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let firsts = loop {
        let got = hits.lock().unwrap().clone();
        let mut firsts: Vec<String> = Vec::new();
        for (id, signed) in &got {
            assert!(*signed, "signed: {id}");
            if !firsts.contains(id) {
                firsts.push(id.clone());
            }
        }
        if want.iter().all(|w| firsts.contains(w)) {
            break firsts;
        }
        assert!(Instant::now() < deadline, "lost deliveries: got {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(firsts, want, "each state first arrives in state order");
    let ds = api.wait_deliveries(job, "all delivered", |ds| {
        ds.len() == 4 && ds.iter().all(|d| d["status"] == "delivered")
    });
    assert!(ds[0]["attempts"].as_i64().unwrap() >= 2, "{ds:?}");
}

#[test]
fn deliveries_pending_at_a_sigkill_are_sent_after_the_restart() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path());
        let port = free_port();
        let hook_port = free_port(); // nothing listens here yet
        let api = Api::new(port);
        let mut server = serve(dir.path(), &db, port, 2);
        api.wait_ready();
        let job = api.run_job(&format!("http://127.0.0.1:{hook_port}/hook"));
        let ds = api.wait_deliveries(&job, "failed attempts", |ds| {
            ds.len() == 4 && ds[0]["attempts"].as_i64() >= Some(2)
        });
        for d in &ds {
            assert!(
                d["status"] == "pending" || d["status"] == "sending",
                "nothing delivered while the receiver is down: {d}"
            );
        }
        server.kill().unwrap(); // SIGKILL: no graceful shutdown
        server.wait().unwrap();

        let mut server = serve(dir.path(), &db, port, 2);
        api.wait_ready();
        std::thread::sleep(Duration::from_millis(500));
        assert_every_state_arrives(&api, hook_port, &job);
        server.kill().unwrap();
        server.wait().unwrap();
    }
}

#[test]
fn a_delivery_in_flight_at_a_sigkill_is_sent_again_after_the_restart() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path());
        let port = free_port();
        // A listener that never accepts: the connection is made (backlog) but
        // never answered, so the first attempt stays `sending` for its timeout.
        let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
        let hook_port = blackhole.local_addr().unwrap().port();
        let api = Api::new(port);
        let mut server = serve(dir.path(), &db, port, 60);
        api.wait_ready();
        let job = api.run_job(&format!("http://127.0.0.1:{hook_port}/hook"));
        let ds = api.wait_deliveries(&job, "a send in flight", |ds| {
            ds.len() == 4 && ds[0]["status"] == "sending"
        });
        assert!(ds[1..].iter().all(|d| d["status"] == "pending"), "{ds:?}");
        server.kill().unwrap();
        server.wait().unwrap();
        drop(blackhole);

        let mut server = serve(dir.path(), &db, port, 60);
        api.wait_ready();
        assert_every_state_arrives(&api, hook_port, &job);
        server.kill().unwrap();
        server.wait().unwrap();
    }
}
