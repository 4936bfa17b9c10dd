//! Two nodes on one PostgreSQL database and one Redis (SPEC §12): events
//! committed through one node reach subscribers on the other, in seq order,
//! without duplicates. Runs in the PostgreSQL binary only, against
//! `RUNSIGNAL_TEST_REDIS_URL` (skipped, with the reason printed, when it is
//! unset; failing when it is set and Redis does not answer).
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

fn redis_url() -> Option<String> {
    let url = std::env::var("RUNSIGNAL_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        println!("two-node tests skipped: RUNSIGNAL_TEST_REDIS_URL is unset");
    }
    url
}

/// Two nodes joined by Redis, on a channel of this test's own.
async fn two_nodes() -> Option<(TestApp, TestApp)> {
    let url = redis_url()?;
    let client = redis::Client::open(url.as_str()).expect("RUNSIGNAL_TEST_REDIS_URL parses");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("RUNSIGNAL_TEST_REDIS_URL is set but Redis does not answer");
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let prefix = key_prefix();
    Some(
        pair(&[
            ("messaging__transport", "redis"),
            ("Redis__Url", url.as_str()),
            ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
        ])
        .await,
    )
}

/// A Redis key prefix (and channel) of this test's own.
fn key_prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}

/// Node A with `settings`, node B beside it, both ready (subscribed).
async fn pair(settings: &[(&str, &str)]) -> (TestApp, TestApp) {
    let a = spawn_with(settings).await;
    let b = a.another_node(settings).await;
    for node in [&a, &b] {
        wait_ready(node).await;
    }
    (a, b)
}

/// Follow `run` on `node` until `completed`, once its stream is attached.
async fn follow_run(node: &TestApp, run: &str) -> actix_rt::task::JoinHandle<Vec<(u64, String)>> {
    let stream = node
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let reader = actix_rt::spawn(read_to_completed(stream));
    // Let the stream attach before anything is written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader
}

async fn wait_ready(node: &TestApp) {
    for _ in 0..300 {
        let res = node.get("/readyz").send().await.unwrap();
        let body: Value = res.json().await.unwrap();
        if body["status"] == "ready" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node never became ready");
}

/// (id, event) of every SSE event until `completed` (30 s without one ends it).
async fn read_to_completed(res: reqwest::Response) -> Vec<(u64, String)> {
    let mut events = res.bytes_stream().eventsource();
    let mut got = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(30), events.next()).await {
        let done = e.event == "completed";
        got.push((e.id.parse().unwrap_or(0), e.event));
        if done {
            break;
        }
    }
    got
}

#[actix_web::test]
async fn a_subscriber_on_b_sees_what_is_written_through_a_in_order_once() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let (job, run, lease) = started_job(&a).await;
    let reader = follow_run(&b, &run).await;
    progress_direct(&a, &job, &lease, 300, 0, 0, 0).await;
    let done = a.worker(&job, "complete", json!({"leaseId": lease})).await;
    assert_eq!(done.status(), 200);
    let got = reader.await.unwrap();
    assert_eq!(got.last().map(|(_, e)| e.as_str()), Some("completed"));
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in seq order, no duplicate: {ids:?}"
    );
    let progress = got.iter().filter(|(_, e)| e == "progress").count();
    assert_eq!(progress, 300, "every progress event written through A");
    // B's first signal is A's: same ETag on both nodes.
    let (sa, sb) = (a.first_signal(&run).await, b.first_signal(&run).await);
    assert_eq!(header(&sa, "etag"), header(&sb, "etag"));
}

#[actix_web::test]
async fn a_subscriber_that_moves_from_a_to_b_with_its_last_id_loses_nothing() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let (job, run, lease) = started_job(&a).await;
    progress_direct(&a, &job, &lease, 50, 0, 0, 0).await;
    // On A: read up to some progress event, then leave.
    let res = a
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    let mut events = res.bytes_stream().eventsource();
    let mut last = 0u64;
    let mut seen = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(30), events.next()).await {
        last = e.id.parse().unwrap();
        seen.push(last);
        if e.event == "first_signal" {
            break;
        }
    }
    drop(events);
    // Written through both nodes while the client is away.
    progress_direct(&a, &job, &lease, 25, 0, 0, 0).await;
    progress_direct(&b, &job, &lease, 25, 0, 0, 0).await;
    // Back, on B, with its last id.
    let res = b
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let reader = actix_rt::spawn(read_to_completed(res));
    tokio::time::sleep(Duration::from_millis(200)).await;
    progress_direct(&b, &job, &lease, 10, 0, 0, 0).await;
    assert_eq!(
        a.worker(&job, "complete", json!({"leaseId": lease}))
            .await
            .status(),
        200
    );
    let got = reader.await.unwrap();
    assert_eq!(got.last().map(|(_, e)| e.as_str()), Some("completed"));
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert!(ids[0] > last, "nothing the client had seen comes again");
    // Every progress event after `last`, by the timeline, reached the client.
    let want: Vec<u64> = a
        .timeline(&run)
        .await
        .iter()
        .filter(|e| e["type"] == "job.progress" && e["seq"].as_u64().unwrap() > last)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let have: Vec<u64> = got
        .iter()
        .filter(|(_, e)| e == "progress")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(have, want, "no progress event lost across the move");
    assert!(want.len() >= 60, "at least the 60 written after it left");
    assert!(!seen.is_empty());
}

/// A TCP proxy in front of Redis that the test can cut (every connection
/// dropped, new ones closed at once) and restore.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Release);
    }
}

async fn readiness(node: &TestApp) -> Value {
    node.get("/readyz")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_status(node: &TestApp, status: &str) -> Value {
    for _ in 0..600 {
        let body = readiness(node).await;
        if body["status"] == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never said {status}: {}", readiness(node).await);
}

#[actix_web::test]
async fn while_redis_is_cut_nodes_serve_and_then_catch_up_without_a_gap() {
    let Some(url) = redis_url() else {
        return;
    };
    let target = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let proxy = Proxy::start(target).await;
    let via_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = key_prefix();
    let settings = [
        ("messaging__transport", "redis"),
        ("Redis__Url", via_proxy.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
    ];
    let a = spawn_with(&settings).await;
    let b = a.another_node(&settings).await;
    wait_status(&a, "ready").await;
    wait_status(&b, "ready").await;

    let (job, run, lease) = started_job(&a).await;
    let reader = follow_run(&b, &run).await;
    progress_direct(&a, &job, &lease, 10, 0, 0, 0).await;

    proxy.cut();
    // Writes through A still commit and answer; B says it is degraded but
    // still serves its streams and reads.
    progress_direct(&a, &job, &lease, 20, 0, 0, 0).await;
    let body = wait_status(&b, "degraded").await;
    assert!(body["detail"].as_str().unwrap().contains("redis"), "{body}");
    assert_eq!(b.first_signal(&run).await.status(), 200);
    progress_direct(&a, &job, &lease, 20, 0, 0, 0).await;

    proxy.restore();
    wait_status(&b, "ready").await;
    wait_status(&a, "ready").await;
    assert_eq!(
        a.worker(&job, "complete", json!({"leaseId": lease}))
            .await
            .status(),
        200
    );
    let got = reader.await.unwrap();
    assert_eq!(got.last().map(|(_, e)| e.as_str()), Some("completed"));
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {ids:?}"
    );
    let progress = got.iter().filter(|(_, e)| e == "progress").count();
    assert_eq!(progress, 50, "the 40 written while Redis was cut too");
}

/// Two nodes sharing the Redis first-signal cache (and the transport).
async fn two_nodes_sharing_the_cache(extra: &[(&str, &str)]) -> Option<(TestApp, TestApp, String)> {
    let url = redis_url()?;
    let prefix = key_prefix();
    let mut settings = vec![
        ("messaging__transport", "redis"),
        ("FirstSignal__Cache__Backend", "redis"),
        ("Redis__Url", url.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
    ];
    settings.extend_from_slice(extra);
    let (a, b) = pair(&settings).await;
    Some((a, b, prefix))
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    let url = std::env::var("RUNSIGNAL_TEST_REDIS_URL").unwrap();
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// Wait until the cache entry of `run` is in Redis (written behind).
async fn cached_entry(prefix: &str, run: &str) -> String {
    let mut conn = redis_conn().await;
    let key = format!("{prefix}{TENANT}:{run}");
    for _ in 0..600 {
        let v: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(v) = v {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{key} never reached Redis");
}

#[actix_web::test]
async fn a_signal_computed_on_a_is_a_hit_on_b_with_the_same_etag() {
    let Some((a, b, prefix)) =
        two_nodes_sharing_the_cache(&[("FirstSignal__Cache__TtlSeconds", "300")]).await
    else {
        return;
    };
    let (_, run) = a.submit_job(None).await;
    let on_a = a.first_signal(&run).await;
    assert_eq!(on_a.status(), 200);
    let entry: Value = serde_json::from_str(&cached_entry(&prefix, &run).await).unwrap();
    assert_eq!(entry["signal"]["runId"], run.as_str());
    // TtlSeconds is the entry's expiry in Redis, under KeyPrefix.
    let mut conn = redis_conn().await;
    let key = format!("{prefix}{TENANT}:{run}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=300).contains(&ttl), "TTL {ttl}");

    // B has never seen the run: its first read is served from Redis.
    let on_b = b.first_signal(&run).await;
    assert_eq!(on_b.status(), 200);
    assert_eq!(header(&on_b, "cache-status"), "hit");
    assert_eq!(header(&on_b, "x-firstsignal-source"), "snapshot");
    assert_eq!(header(&on_b, "etag"), header(&on_a, "etag"));
    let (body_a, body_b) = (on_a.text().await.unwrap(), on_b.text().await.unwrap());
    assert_eq!(body_a, body_b);
}

#[actix_web::test]
async fn a_stale_shared_entry_is_never_served() {
    let Some(url) = redis_url() else {
        return;
    };
    let prefix = key_prefix();
    let settings = [
        ("FirstSignal__Cache__Backend", "redis"),
        ("Redis__Url", url.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
    ];
    let a = spawn_with(&settings).await;
    let (job, run) = a.submit_job(None).await;
    let queued = cached_entry(&prefix, &run).await;
    // The job moves on through A …
    let lease = a.lease_one().await;
    assert_eq!(lease["jobId"], job.as_str());
    let current = a.first_signal(&run).await;
    assert_eq!(current.status(), 200);
    let mut conn = redis_conn().await;
    let key = format!("{prefix}{TENANT}:{run}");
    for _ in 0..100 {
        // Let A's own write of the newer signal land first.
        let now: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if now != queued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // … and Redis is made to hold the older, `queued` signal again; a node
    // that has never seen the run reads it there.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&queued)
        .query_async(&mut conn)
        .await
        .unwrap();
    let b = a.another_node(&settings).await;
    let on_b = b.first_signal(&run).await;
    assert_eq!(on_b.status(), 200);
    assert_eq!(
        header(&on_b, "etag"),
        header(&current, "etag"),
        "the current signal, not the stale entry"
    );
    assert_eq!(header(&on_b, "cache-status"), "miss");
    let body: Value = on_b.json().await.unwrap();
    assert_eq!(body["firstSignal"]["type"], "started");
}

#[actix_web::test]
async fn sliding_expiration_renews_an_entry_read_from_redis() {
    let Some(url) = redis_url() else {
        return;
    };
    let prefix = key_prefix();
    let settings = [
        ("FirstSignal__Cache__Backend", "redis"),
        ("Redis__Url", url.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
        ("FirstSignal__Cache__TtlSeconds", "600"),
        ("FirstSignal__Cache__SlidingExpiration", "true"),
    ];
    let a = spawn_with(&settings).await;
    let (_, run) = a.submit_job(None).await;
    cached_entry(&prefix, &run).await;
    let mut conn = redis_conn().await;
    let key = format!("{prefix}{TENANT}:{run}");
    let _: () = redis::cmd("EXPIRE")
        .arg(&key)
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    // A node that has never seen the run reads it from Redis.
    let b = a.another_node(&settings).await;
    assert_eq!(header(&b.first_signal(&run).await, "cache-status"), "hit");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 100, "the read renewed the entry to TtlSeconds: {ttl}");
}

/// A node as a real process of the `runsignal` binary; SIGKILLed on drop.
struct NodeProcess {
    child: std::process::Child,
    address: String,
}

impl NodeProcess {
    async fn start(settings: &[(String, String)]) -> NodeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_runsignal"));
        cmd.env("RUNSIGNAL__Server__Bind", format!("127.0.0.1:{port}"))
            .env("RUNSIGNAL__Server__Workers", "1")
            .env("RUNSIGNAL__Logging__Level", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in settings {
            cmd.env(format!("RUNSIGNAL__{k}"), v);
        }
        let child = cmd.spawn().expect("the binary starts");
        let node = NodeProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(res) = client.get(format!("{}/readyz", node.address)).send().await {
                if res.status() == 200 {
                    return node;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node process never became ready");
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[actix_web::test]
async fn a_killed_nodes_builtin_job_is_run_again_by_the_other_node() {
    let Some(url) = redis_url() else {
        return;
    };
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db = std::sync::Arc::new(crate::testdb::TestDb::new(crate::BACKEND, dir.path()));
    // A step that hangs the first time it runs and succeeds the second.
    let packs = dir.path().join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    let slow = json!({"name": "once-hangs", "executor": "builtin",
        "inputs": [{"name": "mark"}], "steps": [
        {"name": "work", "stage": "analyze", "timeout_seconds": 600,
         "run": ["sh", "-c", "if [ -e \"$INPUT_MARK\" ]; then echo again; exit 0; fi; touch \"$INPUT_MARK\"; sleep 600"]}
    ]});
    std::fs::write(packs.join("once-hangs.json"), slow.to_string()).unwrap();
    let prefix = key_prefix();
    let settings: Vec<(String, String)> = [
        ("Database__Url", db.url.as_str()),
        ("messaging__transport", "redis"),
        ("Redis__Url", url.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
        ("Executor__PacksDir", packs.to_str().unwrap()),
        ("Jobs__LeaseSweepIntervalSeconds", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut a = NodeProcess::start(
        &[
            settings.clone(),
            vec![
                (
                    "Executor__WorkspaceDir".into(),
                    format!("{}/ws-a", dir.path().display()),
                ),
                (
                    "Artifacts__Dir".into(),
                    format!("{}/artifacts", dir.path().display()),
                ),
            ],
        ]
        .concat(),
    )
    .await;
    let client = reqwest::Client::new();
    let mark = dir.path().join("mark");
    let res = client
        .post(format!("{}/jobs", a.address))
        .header("X-Tenant-Id", TENANT)
        .json(&json!({"pack": "once-hangs", "inputs": {"mark": mark.to_str().unwrap()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A runs it (the step has started: the mark exists) …
    for _ in 0..600 {
        if mark.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(mark.exists(), "node A started the step");
    // … then B joins, and A dies mid-step.
    let b_settings: Vec<(&str, &str)> = settings
        .iter()
        .filter(|(k, _)| k != "Database__Url")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let b = spawn_on(dir.clone(), db.clone(), &b_settings).await;
    let before = b.job(&job).await;
    assert_eq!(
        before["state"], "working",
        "B's start took nothing from live A"
    );
    a.kill();
    // A's lease runs out (30 s without heartbeats); B's sweeper requeues the
    // job and B's executor runs it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let done = loop {
        let polled = b.job(&job).await;
        if polled["state"] == "done" || polled["state"] == "failed" {
            break polled;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job was never recovered: {polled}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["attempt"], 2, "run again once: {done}");
    let loading: Vec<Value> = b
        .timeline(done["run_id"].as_str().unwrap())
        .await
        .into_iter()
        .filter(|e| e["type"] == "job.loading")
        .collect();
    assert_eq!(loading.len(), 2);
    let workers: Vec<&str> = loading
        .iter()
        .map(|e| e["payload"]["workerId"].as_str().unwrap())
        .collect();
    assert!(
        workers.iter().all(|w| w.starts_with("builtin@")) && workers[0] != workers[1],
        "each node leases as itself: {workers:?}"
    );
}

#[actix_web::test]
async fn while_postgresql_is_cut_writes_are_503_reads_answer_and_it_resumes_by_itself() {
    let Some(base) = crate::testdb::postgres_url() else {
        return;
    };
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db = std::sync::Arc::new(crate::testdb::TestDb::new(crate::BACKEND, dir.path()));
    // The node reaches PostgreSQL through a proxy the test can cut.
    let authority = base
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|auth| auth.rsplit('@').next())
        .unwrap()
        .to_owned();
    let proxy = Proxy::start(authority.clone()).await;
    let via_proxy = db
        .url
        .replacen(&authority, &format!("127.0.0.1:{}", proxy.port), 1);
    let a = spawn_on(
        dir.clone(),
        db.clone(),
        &[("Database__Url", via_proxy.as_str())],
    )
    .await;
    let (_, run) = a.submit_job(None).await;
    let before = a.first_signal(&run).await;
    assert_eq!(before.status(), 200);

    proxy.cut();
    let res = a.submit(json!({"pack": "external"})).await;
    assert_eq!(res.status(), 503, "a write without the database");
    assert!(!header(&res, "retry-after").is_empty(), "with Retry-After");
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    // The resident run's signal still answers, from memory.
    let cached = a.first_signal(&run).await;
    assert_eq!(cached.status(), 200);
    assert_eq!(header(&cached, "etag"), header(&before, "etag"));

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let res = a.submit(json!({"pack": "external"})).await;
        if res.status() == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes never resumed: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let readyz = readiness(&a).await;
    assert_eq!(readyz["status"], "ready");
}

#[actix_web::test]
async fn a_long_poll_on_b_is_woken_by_a_job_submitted_through_a() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let poll = {
        let b_lease = b.post(
            &format!("{ORCH}/workers/lease"),
            &json!({"workerId": "w", "packs": ["external"], "leaseSeconds": 60, "waitSeconds": 30}),
        );
        actix_rt::spawn(async move {
            let started = std::time::Instant::now();
            let res = b_lease.send().await.unwrap();
            let body: Value = res.json().await.unwrap();
            (body, started.elapsed())
        })
    };
    // The long-poll is parked on B before the job exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (job, _) = a.submit_job(None).await;
    let (body, waited) = poll.await.unwrap();
    assert_eq!(body["jobs"][0]["jobId"], job.as_str(), "{body}");
    assert!(
        waited < Duration::from_secs(25),
        "woken by A's commit through Redis, not by its 30 s wait running out: {waited:?}"
    );
}

#[actix_web::test]
async fn built_in_jobs_submitted_through_both_nodes_run_once_each() {
    let Some(url) = redis_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    let quick = json!({"name": "quick", "executor": "builtin", "steps": [
        {"name": "one", "stage": "analyze", "run": ["sh", "-c", "echo one"]},
        {"name": "two", "stage": "report", "run": ["sh", "-c", "echo two"]}
    ]});
    std::fs::write(packs.join("quick.json"), quick.to_string()).unwrap();
    let prefix = key_prefix();
    let settings = [
        ("messaging__transport", "redis"),
        ("Redis__Url", url.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
        ("Executor__PacksDir", packs.to_str().unwrap()),
    ];
    let a = spawn_with(&settings).await;
    let b = a.another_node(&settings).await;
    let mut jobs = Vec::new();
    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        let res = node.submit(json!({"pack": "quick"})).await;
        assert_eq!(res.status(), 202);
        let v: Value = res.json().await.unwrap();
        jobs.push((
            v["job_id"].as_str().unwrap().to_owned(),
            v["run_id"].as_str().unwrap().to_owned(),
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for (job, run) in &jobs {
        let done = loop {
            let polled = a.job(job).await;
            if polled["state"] == "done" || polled["state"] == "failed" {
                break polled;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never finished: {polled}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(done["attempt"], 1, "{done}");
        let timeline = b.timeline(run).await;
        let loading = timeline
            .iter()
            .filter(|e| e["type"] == "job.loading")
            .count();
        let started = timeline
            .iter()
            .filter(|e| e["type"] == "step.started")
            .count();
        assert_eq!((loading, started), (1, 2), "run once, by one node: {job}");
    }
}

#[actix_web::test]
async fn stream_clients_of_a_killed_node_resume_on_the_other_and_lose_nothing() {
    let Some(url) = redis_url() else {
        return;
    };
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db = std::sync::Arc::new(crate::testdb::TestDb::new(crate::BACKEND, dir.path()));
    let prefix = key_prefix();
    let settings: Vec<(String, String)> = [
        ("Database__Url", db.url.as_str()),
        ("messaging__transport", "redis"),
        ("Redis__Url", url.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut a = NodeProcess::start(&settings).await;
    let b_settings: Vec<(&str, &str)> = settings[1..]
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let b = spawn_on(dir.clone(), db.clone(), &b_settings).await;
    let (job, run, lease) = started_job(&b).await;
    // Ten clients follow the run on A.
    let mut followers = Vec::new();
    for _ in 0..10 {
        let res = reqwest::Client::new()
            .get(format!("{}{ORCH}/stream/runs/{run}", a.address))
            .header("X-Tenant-Id", TENANT)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        followers.push(res.bytes_stream().eventsource());
    }
    progress_direct(&b, &job, &lease, 20, 0, 0, 0).await;
    // Each reads up to the 20th progress event, then A is killed.
    let mut last_ids = Vec::new();
    for f in &mut followers {
        let mut seen = 0;
        let mut last = 0u64;
        while seen < 20 {
            let e = tokio::time::timeout(Duration::from_secs(30), f.next())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .unwrap();
            last = e.id.parse().unwrap();
            if e.event == "progress" {
                seen += 1;
            }
        }
        last_ids.push(last);
    }
    a.kill();
    for f in &mut followers {
        // The stream ends (its node is gone).
        let end = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(_)) = f.next().await {}
        })
        .await;
        assert!(end.is_ok(), "a dead node's stream ends");
    }
    // Written while they reconnect.
    progress_direct(&b, &job, &lease, 15, 0, 0, 0).await;
    let mut readers = Vec::new();
    for last in &last_ids {
        let res = b
            .get(&format!("{ORCH}/stream/runs/{run}"))
            .header("Last-Event-ID", last.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        readers.push(actix_rt::spawn(read_to_completed(res)));
    }
    progress_direct(&b, &job, &lease, 5, 0, 0, 0).await;
    assert_eq!(
        b.worker(&job, "complete", json!({"leaseId": lease}))
            .await
            .status(),
        200
    );
    let want: Vec<u64> = b
        .timeline(&run)
        .await
        .iter()
        .filter(|e| e["type"] == "job.progress" && e["seq"].as_u64().unwrap() > last_ids[0])
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(want.len(), 20, "the 20 written after the kill");
    for reader in readers {
        let got = reader.await.unwrap();
        assert_eq!(got.last().map(|(_, e)| e.as_str()), Some("completed"));
        let have: Vec<u64> = got
            .iter()
            .filter(|(_, e)| e == "progress")
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            have, want,
            "no progress event lost or repeated across the move"
        );
    }
}
