//! WebSocket (SPEC §5.2), driven by `tokio-tungstenite`, a client the
//! project did not write, and by raw TCP where a client must misbehave.
use std::time::{Duration, Instant};

use crate::helpers::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(app: &TestApp, prefix: &str, query: &str) -> String {
    format!(
        "{}{prefix}/ws{query}",
        app.address.replacen("http://", "ws://", 1)
    )
}

/// Open a socket on `prefix`, as `tenant` (header) unless `None`.
async fn connect_with(
    app: &TestApp,
    prefix: &str,
    tenant: Option<&str>,
    query: &str,
) -> Result<Ws, WsError> {
    let mut req = ws_url(app, prefix, query).into_client_request().unwrap();
    if let Some(tenant) = tenant {
        req.headers_mut()
            .insert("X-Tenant-Id", tenant.parse().unwrap());
    }
    let (ws, res) = connect_async(req).await?;
    assert_eq!(res.status(), 101);
    Ok(ws)
}

async fn connect(app: &TestApp) -> Ws {
    connect_with(app, ORCH, Some(TENANT), "")
        .await
        .expect("websocket opens")
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// The next text frame as JSON (pings are answered by the client itself).
async fn recv(ws: &mut Ws) -> Value {
    let next = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str::<Value>(&text).expect("JSON frame")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await;
    next.expect("a frame within 15 s")
}

/// Frames until `stop` says so (30 s at most).
async fn recv_until(ws: &mut Ws, mut stop: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            got.push(recv(ws).await);
            if stop(&got) {
                break;
            }
        }
    })
    .await;
    got
}

fn is_completed(frames: &[Value]) -> bool {
    frames.last().is_some_and(|f| f["event"] == "completed")
}

/// The close frame the server sends, skipping anything before it.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket failed before a close frame: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    })
    .await
    .expect("closed within 15 s")
}

async fn subscribe(ws: &mut Ws, stream: &str, id: &str) -> Value {
    send(ws, json!({"op": "subscribe", "stream": stream, "id": id})).await;
    let ack = recv(ws).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    assert_eq!(
        (ack["stream"].as_str(), ack["id"].as_str()),
        (Some(stream), Some(id))
    );
    assert!(ack["liveFrom"].is_u64(), "{ack}");
    ack
}

fn names(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["event"].as_str().unwrap_or("?"))
        .collect()
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

#[actix_web::test]
async fn a_run_subscription_gets_its_ack_first_signal_then_live_events_in_seq_order() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let mut ws = connect(&app).await;
    let ack = subscribe(&mut ws, "run", &run).await;
    let first = recv(&mut ws).await;
    assert_eq!(
        (
            first["op"].as_str(),
            first["stream"].as_str(),
            first["id"].as_str()
        ),
        (Some("event"), Some("run"), Some(run.as_str()))
    );
    assert_eq!(first["event"], "first_signal");
    assert_eq!(first["data"]["signal"]["kind"], 0, "queued");
    let etag = header(&app.first_signal(&run).await, "etag");
    assert_eq!(first["data"]["etag"], etag.as_str());
    assert!(first["seq"].as_u64().unwrap() <= ack["liveFrom"].as_u64().unwrap());

    let l = app.lease_one().await;
    let lease = l["leaseId"].clone();
    app.worker(
        &job,
        "progress",
        json!({"leaseId": lease, "stage": "fetch", "message": "m", "percent": 10}),
    )
    .await;
    app.worker(&job, "progress", json!({"leaseId": lease, "percent": 20}))
        .await;
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let rest = recv_until(&mut ws, is_completed).await;
    let got = names(&rest);
    for name in ["job", "progress", "first_signal", "completed"] {
        assert!(got.contains(&name), "{name} in {got:?}");
    }
    assert_eq!(got.last(), Some(&"completed"));
    assert_eq!(rest.iter().filter(|f| f["event"] == "progress").count(), 2);
    let s = seqs(&rest);
    assert!(
        s[0] > first["seq"].as_u64().unwrap() && s.windows(2).all(|w| w[0] < w[1]),
        "seq order: {s:?}"
    );
    assert!(rest
        .iter()
        .all(|f| f["op"] == "event" && f["stream"] == "run" && f["id"] == run.as_str()));
    let kinds: Vec<i64> = rest
        .iter()
        .filter(|f| f["event"] == "first_signal")
        .map(|f| f["data"]["signal"]["kind"].as_i64().unwrap())
        .collect();
    assert_eq!(
        kinds.last(),
        Some(&5),
        "the last signal is the terminal one: {kinds:?}"
    );

    // The completed subscription is over; the socket stays usable and the
    // run may be followed again (its end is sent once more, then nothing).
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": "pong"}));
    subscribe(&mut ws, "run", &run).await;
    let again = recv_until(&mut ws, is_completed).await;
    assert_eq!(names(&again), ["first_signal", "completed"]);
}

#[actix_web::test]
async fn one_socket_carries_a_run_and_a_pack_run_subscription() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    let mut ws = connect_with(&app, ENGINE, Some(TENANT), "").await.unwrap();
    subscribe(&mut ws, "run", &run).await;
    assert_eq!(recv(&mut ws).await["event"], "first_signal");
    subscribe(&mut ws, "pack-run", &job).await;
    app.worker(&job, "progress", json!({"leaseId": lease, "stepIndex": 0, "step": "clone", "log": ["one", {"stream": "stderr", "line": "two"}]})).await;
    app.worker(
        &job,
        "progress",
        json!({"leaseId": lease, "stepIndex": 1, "step": "build", "percent": 50}),
    )
    .await;
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let mut done = 0;
    let frames = recv_until(&mut ws, |fs| {
        done += usize::from(fs.last().unwrap()["event"] == "completed");
        done == 2
    })
    .await;
    let run_frames: Vec<Value> = frames
        .iter()
        .filter(|f| f["stream"] == "run")
        .cloned()
        .collect();
    let pack_frames: Vec<Value> = frames
        .iter()
        .filter(|f| f["stream"] == "pack-run")
        .cloned()
        .collect();
    assert_eq!(
        run_frames.len() + pack_frames.len(),
        frames.len(),
        "every frame names its stream"
    );
    assert!(run_frames.iter().all(|f| f["id"] == run.as_str()));
    assert!(pack_frames.iter().all(|f| f["id"] == job.as_str()));
    assert_eq!(names(&pack_frames).first(), Some(&"plan"));
    assert_eq!(pack_frames[0]["data"]["jobId"], job.as_str());
    assert_eq!(names(&pack_frames)[1], "step");
    assert!(names(&pack_frames).contains(&"log"));
    assert_eq!(names(&pack_frames).last(), Some(&"completed"));
    assert_eq!(
        pack_frames.iter().filter(|f| f["event"] == "log").count(),
        2,
        "one frame per log line"
    );
    let log: Vec<&Value> = pack_frames.iter().filter(|f| f["event"] == "log").collect();
    assert_eq!(
        log[0]["data"],
        json!({"stepIndex": 0, "lineNo": 1, "stream": "stdout", "line": "one"})
    );
    assert_eq!(
        log[0]["seq"], log[1]["seq"],
        "lines of one report share its seq"
    );
    assert!(
        names(&run_frames).contains(&"progress") && names(&run_frames).last() == Some(&"completed")
    );
    for part in [&run_frames, &pack_frames] {
        let s = seqs(part);
        assert!(
            s.windows(2).all(|w| w[0] <= w[1]),
            "seq order per stream: {s:?}"
        );
    }
}

#[actix_web::test]
async fn after_resumes_without_gap_or_duplicate() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    for p in 1..=5 {
        app.worker(&job, "progress", json!({"leaseId": lease, "percent": p}))
            .await;
    }
    let mut first = connect(&app).await;
    send(
        &mut first,
        json!({"op": "subscribe", "stream": "run", "id": run, "after": 0}),
    )
    .await;
    assert_eq!(recv(&mut first).await["op"], "subscribed");
    let publisher = async {
        for p in 6..=60 {
            app.worker(&job, "progress", json!({"leaseId": lease, "percent": p}))
                .await;
        }
        app.worker(&job, "complete", json!({"leaseId": lease}))
            .await;
    };
    let reader = async {
        let mut got = recv_until(&mut first, |fs| fs.len() >= 20).await;
        drop(first);
        let last = got.last().unwrap()["seq"].as_u64().unwrap();
        let mut second = connect(&app).await;
        send(
            &mut second,
            json!({"op": "subscribe", "stream": "run", "id": run, "after": last}),
        )
        .await;
        let ack = recv(&mut second).await;
        assert_eq!(ack["op"], "subscribed");
        got.extend(recv_until(&mut second, is_completed).await);
        got
    };
    let ((), got) = futures_util::join!(publisher, reader);
    let mut all = connect(&app).await;
    send(
        &mut all,
        json!({"op": "subscribe", "stream": "run", "id": run, "after": 0}),
    )
    .await;
    assert_eq!(recv(&mut all).await["op"], "subscribed");
    let replay = recv_until(&mut all, is_completed).await;
    assert_eq!(
        replay.iter().filter(|f| f["event"] == "progress").count(),
        60
    );
    assert_eq!(
        got, replay,
        "two sockets carry exactly one uninterrupted replay"
    );
    let s = seqs(&replay);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");

    // A client that has seen the end: acked as completed, nothing follows.
    let end = *s.last().unwrap();
    send(
        &mut all,
        json!({"op": "subscribe", "stream": "run", "id": run, "after": end}),
    )
    .await;
    let ack = recv(&mut all).await;
    assert_eq!(
        (ack["op"].as_str(), ack["completed"].as_bool()),
        (Some("subscribed"), Some(true)),
        "{ack}"
    );
    send(
        &mut all,
        json!({"op": "subscribe", "stream": "job", "id": job, "after": end}),
    )
    .await;
    let ack = recv(&mut all).await;
    assert_eq!(
        (ack["op"].as_str(), ack["completed"].as_bool()),
        (Some("subscribed"), Some(true)),
        "{ack}"
    );
    send(&mut all, json!({"op": "ping"})).await;
    assert_eq!(
        recv(&mut all).await,
        json!({"op": "pong"}),
        "nothing else came"
    );
}

#[actix_web::test]
async fn bad_messages_are_error_frames_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let mut ws = connect(&app).await;
    let unknown_run = "6fc74ab4-a997-41f2-adeb-8ee4565cb1b8";
    let unknown_job = "01JC8Z0000000000000000000A";
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "invalid_body"),
        (Message::Text("[1,2]".into()), "invalid_body"),
        (Message::Text(r#"{"stream":"run"}"#.into()), "invalid_body"),
        (Message::Text(r#"{"op":"dance"}"#.into()), "unknown_op"),
        (Message::Binary(vec![1, 2, 3].into()), "invalid_body"),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "runs", "id": run})
                    .to_string()
                    .into(),
            ),
            "unknown_stream",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "run", "id": "nope"})
                    .to_string()
                    .into(),
            ),
            "invalid_run_id",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "job", "id": "nope"})
                    .to_string()
                    .into(),
            ),
            "invalid_job_id",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "run"})
                    .to_string()
                    .into(),
            ),
            "invalid_field",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "run", "id": run, "after": "x"})
                    .to_string()
                    .into(),
            ),
            "invalid_field",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "run", "id": run, "events": ["log"]})
                    .to_string()
                    .into(),
            ),
            "invalid_field",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "run", "id": run, "evnets": ["job"]})
                    .to_string()
                    .into(),
            ),
            "invalid_field",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "run", "id": unknown_run})
                    .to_string()
                    .into(),
            ),
            "run_not_found",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "job", "id": unknown_job})
                    .to_string()
                    .into(),
            ),
            "job_not_found",
        ),
        (
            Message::Text(
                json!({"op": "subscribe", "stream": "pack-run", "id": unknown_job})
                    .to_string()
                    .into(),
            ),
            "job_not_found",
        ),
        (
            Message::Text(
                json!({"op": "unsubscribe", "stream": "run", "id": run})
                    .to_string()
                    .into(),
            ),
            "not_subscribed",
        ),
    ];
    for (msg, code) in cases {
        let shown = format!("{msg:?}");
        ws.send(msg).await.unwrap();
        let frame = recv(&mut ws).await;
        assert_eq!(frame["op"], "error", "{shown}: {frame}");
        assert_eq!(frame["code"], code, "{shown}: {frame}");
        assert!(
            frame["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{frame}"
        );
    }
    // Still open: a valid subscription works, a second one is a duplicate.
    subscribe(&mut ws, "run", &run).await;
    assert_eq!(recv(&mut ws).await["event"], "first_signal");
    send(
        &mut ws,
        json!({"op": "subscribe", "stream": "run", "id": run.to_uppercase()}),
    )
    .await;
    let dup = recv(&mut ws).await;
    assert_eq!(
        (dup["code"].as_str(), dup["id"].as_str()),
        (Some("already_subscribed"), Some(run.as_str())),
        "ids are normalized: {dup}"
    );
    subscribe(&mut ws, "job", &job).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "stream": "job", "id": job.to_lowercase()}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "already_subscribed");
}

#[actix_web::test]
async fn another_tenants_runs_and_jobs_are_not_found() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let mut ws = connect_with(&app, ORCH, Some("globex"), "").await.unwrap();
    for (stream, id, code) in [
        ("run", &run, "run_not_found"),
        ("job", &job, "job_not_found"),
        ("pack-run", &job, "job_not_found"),
    ] {
        send(
            &mut ws,
            json!({"op": "subscribe", "stream": stream, "id": id}),
        )
        .await;
        let frame = recv(&mut ws).await;
        assert_eq!(
            (frame["op"].as_str(), frame["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}"
        );
    }
    // Its own run is fine on the same socket.
    let res = app
        .req_as("globex", reqwest::Method::POST, "/jobs")
        .json(&json!({"pack": "external", "inputs": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let own: Value = res.json().await.unwrap();
    subscribe(&mut ws, "run", own["run_id"].as_str().unwrap()).await;
    assert_eq!(recv(&mut ws).await["event"], "first_signal");
}

#[actix_web::test]
async fn the_tenant_may_come_from_the_query_and_is_required() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let mut ws = connect_with(&app, ORCH, None, &format!("?tenant={TENANT}"))
        .await
        .expect("?tenant= opens");
    subscribe(&mut ws, "run", &run).await;
    assert_eq!(recv(&mut ws).await["event"], "first_signal");
    match connect_with(&app, ORCH, None, "").await {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status(), 400);
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "invalid_tenant");
        }
        other => panic!("expected 400 without a tenant, got {:?}", other.map(|_| ())),
    }
    let mut other = connect_with(&app, ENGINE, None, "?tenant=globex")
        .await
        .unwrap();
    send(
        &mut other,
        json!({"op": "subscribe", "stream": "run", "id": run}),
    )
    .await;
    assert_eq!(recv(&mut other).await["code"], "run_not_found");
    // A plain GET is not a WebSocket.
    let res = app.get(&format!("{ORCH}/ws")).send().await.unwrap();
    assert_problem(res, 426, "websocket_handshake").await;
}

#[actix_web::test]
async fn unsubscribe_stops_the_events_of_that_stream_only() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    let mut ws = connect(&app).await;
    subscribe(&mut ws, "run", &run).await;
    assert_eq!(recv(&mut ws).await["event"], "first_signal");
    subscribe(&mut ws, "job", &job).await;
    send(
        &mut ws,
        json!({"op": "unsubscribe", "stream": "run", "id": run}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"op": "unsubscribed", "stream": "run", "id": run})
    );
    app.worker(&job, "progress", json!({"leaseId": lease, "percent": 10}))
        .await;
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let frames = recv_until(&mut ws, is_completed).await;
    assert!(
        frames.iter().all(|f| f["stream"] == "job"),
        "no run frames after unsubscribe: {frames:?}"
    );
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": "pong"}));
}

#[actix_web::test]
async fn the_subscription_limit_is_an_error_frame() {
    let app = spawn_with(&[("Streams__MaxSubscriptionsPerSocket", "2")]).await;
    let (job, run) = app.submit_job(None).await;
    let mut ws = connect(&app).await;
    subscribe(&mut ws, "job", &job).await;
    subscribe(&mut ws, "pack-run", &job).await;
    assert_eq!(recv(&mut ws).await["event"], "plan");
    send(
        &mut ws,
        json!({"op": "subscribe", "stream": "run", "id": run}),
    )
    .await;
    let frame = recv(&mut ws).await;
    assert_eq!(
        (frame["op"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("subscription_limit")),
        "{frame}"
    );
    send(
        &mut ws,
        json!({"op": "unsubscribe", "stream": "job", "id": job}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["op"], "unsubscribed");
    subscribe(&mut ws, "run", &run).await;
}

#[actix_web::test]
async fn ping_op_gets_pong() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    for _ in 0..3 {
        send(&mut ws, json!({"op": "ping"})).await;
        assert_eq!(recv(&mut ws).await, json!({"op": "pong"}));
    }
}

#[actix_web::test]
async fn a_frame_over_64_kib_closes_with_1009() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    // Exactly 64 KiB is fine (a bad-JSON error frame, the socket stays).
    ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["code"], "invalid_body");
    let big = format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    ws.send(Message::Text(big.into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
}

/// A raw WebSocket handshake; returns the socket right after the 101.
async fn raw_upgrade(app: &TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET {ORCH}/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Tenant-Id: {TENANT}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Everything the server sends until it closes the connection, and how long that took.
async fn read_to_close(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (raw, closed.ok().map(|()| started.elapsed()))
}

/// Whether the server's bytes hold an (unmasked) close frame with this code.
fn has_close(raw: &[u8], code: u16) -> bool {
    raw.windows(4).any(|w| {
        w[0] == 0x88 && w[1] >= 2 && w[1] < 126 && u16::from_be_bytes([w[2], w[3]]) == code
    })
}

#[actix_web::test]
async fn a_peer_that_never_answers_pings_is_closed_with_1001() {
    let app = spawn_with(&[("Streams__HeartbeatIntervalSeconds", "1")]).await;
    let mut tcp = raw_upgrade(&app).await;
    // Never write: the pings (0x89) go unanswered.
    let (raw, closed) = read_to_close(&mut tcp, Duration::from_secs(10)).await;
    let elapsed = closed.expect("the server closed the connection within 10 s");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "not before two pings went unanswered: {elapsed:?}"
    );
    assert!(
        raw.windows(2).filter(|w| w == &[0x89, 0x00]).count() >= 2,
        "two pings first: {raw:?}"
    );
    assert!(has_close(&raw, 1001), "close 1001: {raw:?}");
}

#[actix_web::test]
async fn a_client_that_answers_pings_stays_connected() {
    let app = spawn_with(&[("Streams__HeartbeatIntervalSeconds", "1")]).await;
    let mut ws = connect(&app).await;
    let mut pings = 0;
    let _ = tokio::time::timeout(Duration::from_millis(4500), async {
        // Reading lets the client answer each ping with a pong.
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(msg, Message::Ping(_)) {
                pings += 1;
            }
        }
    })
    .await;
    assert!(pings >= 3, "a ping every second: {pings}");
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": "pong"}));
}

#[actix_web::test]
async fn a_huge_declared_frame_is_refused_from_its_header() {
    let app = spawn_app().await;
    let mut tcp = raw_upgrade(&app).await;
    // A masked text frame announcing 1 GiB, then only a little of it.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 1024]);
    tcp.write_all(&frame).await.unwrap();
    let (raw, closed) = read_to_close(&mut tcp, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "closed within 10 s");
    assert!(
        has_close(&raw, 1009),
        "close 1009 before the frame arrived: {raw:?}"
    );
}

#[actix_web::test]
async fn a_graceful_stop_closes_sockets_with_1001() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let mut ws = connect(&app).await;
    subscribe(&mut ws, "run", &run).await;
    assert_eq!(recv(&mut ws).await["event"], "first_signal");
    let stopper = app.server.clone();
    let stop = actix_rt::spawn(async move { stopper.stop().await });
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("stopped within 10 s")
        .unwrap();
}

#[actix_web::test]
async fn a_socket_that_stops_reading_loses_the_subscription_and_resumes_with_after() {
    // 64 events of queue: room for the reading socket's client on a busy
    // machine, far less than the ~12 MB the silent socket is sent. A long
    // heartbeat: this socket stalls for the whole run, and a send queue full
    // for a heartbeat interval would close it (see `limits::a_websocket…`).
    let app = spawn_with(&[
        ("Streams__BufferSize", "64"),
        ("Streams__HeartbeatIntervalSeconds", "600"),
    ])
    .await;
    let (job, _, lease) = started_job(&app).await;
    let mut slow = connect(&app).await;
    subscribe(&mut slow, "job", &job).await;
    let mut fast = connect(&app).await;
    subscribe(&mut fast, "job", &job).await;
    // The publisher keeps pace with the reading socket (batches of 100
    // reports, then it waits for them), so the silent one falls behind and
    // the reading one, on a quiet machine, does not.
    let received = std::cell::Cell::new(0usize);
    let drops = std::cell::Cell::new(0usize);
    let fast_reader = async {
        let mut all = Vec::new();
        loop {
            let frame = recv(&mut fast).await;
            // On a loaded machine even the reading socket can fall 64 events
            // behind and be dropped as a slow consumer; it then does what a
            // client should (ADR 0052): resubscribe from `after`, without
            // gap or duplicate, which the line numbers below check.
            if frame["op"] == "error" && frame["code"] == "subscription_dropped" {
                eprintln!("the reading socket was dropped too (a loaded machine): {frame}");
                drops.set(drops.get() + 1);
                let after = frame["after"].as_u64().expect("`after` on a drop");
                send(
                    &mut fast,
                    json!({"op": "subscribe", "stream": "job", "id": job, "after": after}),
                )
                .await;
                continue;
            }
            if frame["event"] == "log" {
                received.set(received.get() + 1);
            }
            let done = frame["event"] == "completed";
            all.push(frame);
            if done {
                return all;
            }
        }
    };
    let publisher = async {
        // ~12 MB: more than the socket buffers can hide while `slow` sleeps.
        // Several lines per report: the drop may fall between two frames of
        // one event, whose missing lines must still arrive before the error.
        for batch in 1..=30 {
            progress_direct(&app, &job, &lease, 100, 0, 5, 800).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while received.get() < batch * 500 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        app.worker(&job, "complete", json!({"leaseId": lease}))
            .await;
    };
    let (all, ()) = futures_util::join!(fast_reader, publisher);
    let lines: Vec<u64> = all
        .iter()
        .filter(|f| f["event"] == "log")
        .map(|f| f["data"]["lineNo"].as_u64().expect("a log line's number"))
        .collect();
    assert!(
        lines.iter().copied().eq(1..=15_000),
        "the reading socket got every line once, in order ({} lines)",
        lines.len()
    );
    assert!(
        drops.get() <= 3,
        "the reading socket kept up but for a few drops ({})",
        drops.get()
    );
    assert_eq!(all.last().unwrap()["event"], "completed");

    // Reading now: the slow socket's frames stop with `subscription_dropped`.
    let mut got = recv_until(&mut slow, |fs| fs.last().unwrap()["op"] == "error").await;
    let dropped = got.pop().unwrap();
    assert_eq!(
        (
            dropped["code"].as_str(),
            dropped["stream"].as_str(),
            dropped["id"].as_str()
        ),
        (
            Some("subscription_dropped"),
            Some("job"),
            Some(job.as_str())
        ),
        "{dropped}"
    );
    assert!(got.len() < all.len(), "dropped before the end");
    let after = dropped["after"].as_u64().unwrap();
    assert_eq!(
        got.last().unwrap()["seq"].as_u64(),
        Some(after),
        "`after` is the last seq it got"
    );
    // The same socket resumes without gap or duplicate.
    send(
        &mut slow,
        json!({"op": "subscribe", "stream": "job", "id": job, "after": after}),
    )
    .await;
    assert_eq!(recv(&mut slow).await["op"], "subscribed");
    got.extend(recv_until(&mut slow, is_completed).await);
    assert_eq!(got, all);
}

#[actix_web::test]
async fn a_report_with_more_lines_than_the_buffer_reaches_websocket_subscribers() {
    let app = spawn_with(&[("Streams__BufferSize", "16")]).await;
    let (job, _, lease) = started_job(&app).await;
    let mut ws = connect(&app).await;
    subscribe(&mut ws, "pack-run", &job).await;
    let lines: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    let res = app
        .worker(
            &job,
            "progress",
            json!({"leaseId": lease, "stepIndex": 0, "step": "build", "log": lines}),
        )
        .await;
    assert_eq!(res.status(), 200);
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let frames = recv_until(&mut ws, |fs| {
        is_completed(fs) || fs.last().unwrap()["op"] == "error"
    })
    .await;
    let log: Vec<&Value> = frames.iter().filter(|f| f["event"] == "log").collect();
    assert_eq!(log.len(), 300, "every line, no drop");
    assert_eq!(log[299]["data"]["line"], "line 299");
    assert_eq!(frames.last().unwrap()["event"], "completed");
}

/// A subscription whose `events`/`correlationId` leave out `completed`
/// still gets it, with the end's seq, so that it can tell the stream is
/// over and resume past it (SPEC §5.1/§5.2).
#[actix_web::test]
async fn a_filtered_subscription_still_gets_completed() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    let mut ws = connect(&app).await;
    let subs = [
        json!({"op": "subscribe", "stream": "run", "id": run, "events": ["progress"], "correlationId": "nobody"}),
        json!({"op": "subscribe", "stream": "job", "id": job, "events": ["log"]}),
    ];
    for sub in subs {
        send(&mut ws, sub).await;
        assert_eq!(recv(&mut ws).await["op"], "subscribed");
    }
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let frames = recv_until(&mut ws, |got| {
        got.iter().filter(|f| f["event"] == "completed").count() == 2
    })
    .await;
    let ends: Vec<(&str, &str)> = frames
        .iter()
        .filter(|f| f["op"] == "event")
        .map(|f| (f["stream"].as_str().unwrap(), f["data"]["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ends.len(),
        2,
        "nothing but the two ends passes the filters: {frames:?}"
    );
    assert!(ends.contains(&("run", "run.completed")), "{frames:?}");
    assert!(ends.contains(&("job", "job.done")), "{frames:?}");
    // Resuming after the end it was given: acked as completed.
    let end = frames
        .iter()
        .find(|f| f["stream"] == "run" && f["event"] == "completed")
        .unwrap()["seq"]
        .clone();
    send(
        &mut ws,
        json!({"op": "subscribe", "stream": "run", "id": run, "events": ["progress"], "after": end}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["op"].as_str(), ack["completed"].as_bool()),
        (Some("subscribed"), Some(true)),
        "{ack}"
    );
}
