//! Limits (SPEC §11): stream caps, body deadline, connection cap, sockets
//! whose client stops reading, and the first-signal cache's size.
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use futures_util::{SinkExt, StreamExt};
use runsignal_actors::signal::Signal;
use runsignal_actors::SignalView;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn run_stream(run: &str) -> String {
    format!("{ORCH}/stream/runs/{run}")
}

async fn open_stream(app: &TestApp, tenant: &str, run: &str) -> reqwest::Response {
    app.req_as(tenant, reqwest::Method::GET, &run_stream(run))
        .send()
        .await
        .unwrap()
}

/// Retry `check` until it holds (the server frees a stream's place when it
/// notices the client left); false if it never did within 30 s.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn healthz_ok(app: &TestApp) -> bool {
    matches!(
        app.client.get(format!("{}/healthz", app.address)).send().await,
        Ok(res) if res.status() == 200
    )
}

async fn ws_connect(app: &TestApp) -> Ws {
    let url = format!("{}{ORCH}/ws", app.address.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("X-Tenant-Id", TENANT.parse().unwrap());
    connect_async(req).await.expect("websocket opens").0
}

/// The next JSON text frame.
async fn ws_recv(ws: &mut Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a frame within 15 s")
}

/// Subscribe to a run stream and return the reply (`subscribed` or `error`).
async fn ws_subscribe(ws: &mut Ws, run: &str) -> Value {
    let frame = json!({"op": "subscribe", "stream": "run", "id": run, "events": ["completed"]});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    loop {
        let f = ws_recv(ws).await;
        if f["op"] == "subscribed" || f["op"] == "error" {
            return f;
        }
    }
}

#[actix_web::test]
async fn streams_past_the_tenant_cap_are_429_and_the_server_keeps_answering() {
    // A short heartbeat: the server notices a client that left at its next
    // write to it.
    let app = spawn_with(&[
        ("Limits__MaxStreamsPerTenant", "3"),
        ("Streams__HeartbeatIntervalSeconds", "1"),
    ])
    .await;
    let (_, run) = app.submit_job(None).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let res = open_stream(&app, TENANT, &run).await;
        assert_eq!(res.status(), 200);
        open.push(res);
    }
    let refused = open_stream(&app, TENANT, &run).await;
    assert_eq!(header(&refused, "retry-after"), "5");
    let body = assert_problem(refused, 429, "too_many_streams").await;
    assert!(body["detail"].as_str().unwrap().contains("MaxStreamsPerTenant"));
    // The cap is the tenant's: another tenant, health and submits still answer.
    let (_, other_run) = {
        let res = app
            .req_as("other", reqwest::Method::POST, "/jobs")
            .json(&json!({"pack": "external", "inputs": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "POST /jobs answers");
        let v: Value = res.json().await.unwrap();
        ((), v["run_id"].as_str().unwrap().to_owned())
    };
    assert_eq!(open_stream(&app, "other", &other_run).await.status(), 200);
    assert!(healthz_ok(&app).await);
    assert_eq!(
        app.submit(json!({"pack": "external", "inputs": {}}))
            .await
            .status(),
        202
    );
    // Closing a stream frees its place.
    drop(open.pop());
    assert!(
        eventually(|| async { open_stream(&app, TENANT, &run).await.status() == 200 }).await,
        "a closed stream's place is reused"
    );
}

#[actix_web::test]
async fn websocket_subscriptions_count_toward_the_same_cap() {
    let app = spawn_with(&[
        ("Limits__MaxStreamsPerTenant", "2"),
        ("Streams__HeartbeatIntervalSeconds", "1"),
    ])
    .await;
    let (_, run1) = app.submit_job(None).await;
    let (_, run2) = app.submit_job(None).await;
    let sse = open_stream(&app, TENANT, &run1).await;
    assert_eq!(sse.status(), 200);
    let mut ws = ws_connect(&app).await;
    assert_eq!(ws_subscribe(&mut ws, &run1).await["op"], "subscribed");
    // Two open (one SSE, one subscription): the next subscription and the
    // next SSE stream are refused.
    let refused = ws_subscribe(&mut ws, &run2).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str(), refused["id"].as_str()),
        (Some("error"), Some("too_many_streams"), Some(run2.as_str())),
        "{refused}"
    );
    assert_problem(open_stream(&app, TENANT, &run2).await, 429, "too_many_streams").await;
    // Unsubscribing frees the place.
    let frame = json!({"op": "unsubscribe", "stream": "run", "id": run1});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    assert!(
        eventually(|| async { open_stream(&app, TENANT, &run2).await.status() == 200 }).await,
        "an ended subscription's place is reused"
    );
    // Closing the socket frees its subscriptions too.
    drop(sse);
    let mut subscribed = false;
    for _ in 0..300 {
        if ws_subscribe(&mut ws, &run1).await["op"] == "subscribed" {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(subscribed, "the closed SSE streams' places are reused");
    assert!(app.state.stream_limits.open_streams(TENANT) >= 1);
    drop(ws);
    assert!(
        eventually(|| async { app.state.stream_limits.open_streams(TENANT) == 0 }).await,
        "a closed socket's subscriptions are freed"
    );
}

/// A raw connection that sends a `POST /jobs` head announcing `len` bytes
/// and then trickles the body one byte every `every`, until told to stop
/// by the response (or `len` bytes).
async fn trickle(addr: String, len: usize, every: Duration) -> String {
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /jobs HTTP/1.1\r\nHost: {addr}\r\nX-Tenant-Id: {TENANT}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = 0;
    loop {
        tokio::select! {
            read = s.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"}") {
                        break;
                    }
                }
            },
            _ = tokio::time::sleep(every), if sent < len => {
                if s.write_all(b" ").await.is_err() {
                    break;
                }
                sent += 1;
            }
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[actix_web::test]
async fn trickled_bodies_get_408_and_the_server_stays_responsive() {
    let app = spawn_with(&[("Server__BodyTimeoutSeconds", "2")]).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let clients: Vec<_> = (0..1000)
        .map(|_| actix_rt::spawn(trickle(addr.clone(), 100, Duration::from_millis(300))))
        .collect();
    // Meanwhile the server answers others.
    assert!(healthz_ok(&app).await, "healthz answers during the trickle");
    assert_eq!(
        app.submit(json!({"pack": "external", "inputs": {}}))
            .await
            .status(),
        202
    );
    let mut timed_out = 0;
    for c in clients {
        let response = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("every trickling client is answered")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(response.contains("application/problem+json"), "{response}");
        assert!(response.contains("\"code\":\"request_timeout\""), "{response}");
        timed_out += 1;
    }
    assert_eq!(timed_out, 1000);
    assert!(healthz_ok(&app).await);
    // Only the well-formed submit created a job.
    let res = app.get("/jobs?limit=100").send().await.unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(1), "{v}");
}

/// Send `GET /healthz` on a new connection and read what comes back:
/// the response, or nothing when the connection is closed.
async fn raw_healthz(addr: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection is answered or closed, not left hanging");
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_web::test]
async fn connections_past_max_connections_are_refused_and_the_server_recovers() {
    let app = spawn_with(&[
        ("Limits__MaxConnections", "10"),
        ("Server__BodyTimeoutSeconds", "300"),
    ])
    .await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    // Ten connections held open by bodies that never finish.
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /jobs HTTP/1.1\r\nHost: {addr}\r\nX-Tenant-Id: {TENANT}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    let connections = app.state.connections.clone();
    assert!(
        eventually(|| async { connections.open() == 10 }).await,
        "the server counts the held connections"
    );
    // The eleventh is refused at once: a 503 or a closed socket, never served.
    for _ in 0..3 {
        let answer = raw_healthz(&addr).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
            "refused: {answer}"
        );
        if !answer.is_empty() {
            assert!(answer.contains("too_many_connections"), "{answer}");
            assert!(answer.to_ascii_lowercase().contains("retry-after:"), "{answer}");
        }
    }
    assert_eq!(connections.open(), 10, "refused connections are not counted");
    // The held connections close: the server serves new ones again.
    drop(held);
    assert!(
        eventually(|| async { raw_healthz(&addr).await.starts_with("HTTP/1.1 200") }).await,
        "the server recovers"
    );
}

#[actix_web::test]
async fn a_websocket_whose_client_stops_reading_is_closed_and_frees_its_place() {
    // One stream for the tenant: while the silent socket holds its
    // subscription, nobody else of the tenant can subscribe.
    let app = spawn_with(&[
        ("Streams__HeartbeatIntervalSeconds", "3"),
        ("Streams__BufferSize", "64"),
        ("Limits__MaxStreamsPerTenant", "1"),
    ])
    .await;
    let (job, _, lease) = started_job(&app).await;
    let (_, other_run) = app.submit_job(None).await;
    let mut silent = ws_connect(&app).await;
    let frame = json!({"op": "subscribe", "stream": "job", "id": job});
    silent
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    assert_eq!(ws_recv(&mut silent).await["op"], "subscribed");
    // From here the silent client reads nothing. ~16 MB of log lines fill
    // its socket buffers sooner than two heartbeats (the missed-pong rule):
    // the socket's send queue stays full, which alone must close it.
    for _ in 0..2 {
        progress_direct(&app, &job, &lease, 40, 0, 50, 4000).await;
    }
    let freed = eventually(|| async {
        // A fresh socket each time: one left unread would miss its pongs.
        let mut other = ws_connect(&app).await;
        let reply = ws_subscribe(&mut other, &other_run).await;
        if reply["op"] != "subscribed" {
            assert_eq!(reply["code"], "too_many_streams", "{reply}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        reply["op"] == "subscribed"
    })
    .await;
    assert!(freed, "the silent socket was closed and its place freed");
    // The silent socket was cut before the job's end: reading it now ends
    // in an error or a close, never in `completed`.
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Text(text))) => {
                    let f: Value = serde_json::from_str(&text).unwrap();
                    assert_ne!(f["event"], "completed", "the stalled socket was closed");
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent socket is closed");
}

#[actix_web::test]
async fn the_first_signal_cache_stays_at_max_entries_and_never_serves_an_evicted_stale_signal() {
    let app = spawn_with(&[
        ("FirstSignal__Cache__MaxEntries", "100"),
        ("Actors__MaxResident", "10"),
    ])
    .await;
    let cache = app.state.engine.cache.clone();
    // A run whose signal moves on (queued, then loading) before its cached
    // signal is evicted.
    let (job, run) = app.submit_job(None).await;
    let leased = app.lease_one().await;
    assert_eq!(leased["jobId"], job);
    for i in 0..300 {
        app.submit_job(None).await;
        if i % 20 == 0 {
            assert!(cache.len() <= 100, "{} cached after {i} runs", cache.len());
        }
    }
    assert_eq!(cache.len(), 100, "the cache stays at FirstSignal.Cache.MaxEntries");
    // What a racing cold load could put back once the current signal was
    // evicted: an older signal of the run.
    let stale = Arc::new(SignalView::new(
        Signal::unavailable(&run, "2026-01-01T00:00:00.000Z".to_owned()),
        1,
    ));
    cache.put(TENANT, &run, stale);
    let res = app.first_signal(&run).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let signal = &body["firstSignal"];
    assert_eq!(app.job(&job).await["state"], "loading");
    assert_eq!(
        signal["type"], "started",
        "the run's current signal, recomputed, not the stale entry: {body}"
    );
}
