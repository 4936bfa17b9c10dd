//! Server-Sent Events (SPEC §5.1), read with `eventsource-stream`, a parser
//! the project did not write.
use std::time::Duration;

use crate::helpers::*;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq)]
struct Ev {
    id: String,
    event: String,
    data: Value,
}

type Events = std::pin::Pin<Box<dyn Stream<Item = Ev>>>;

async fn open(app: &TestApp, path: &str, last: Option<u64>) -> reqwest::Response {
    let mut req = app.get(path);
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last.to_string());
    }
    req.send().await.unwrap()
}

fn events(res: reqwest::Response) -> Events {
    Box::pin(res.bytes_stream().eventsource().filter_map(|e| async move {
        let e = e.ok()?;
        Some(Ev {
            id: e.id,
            event: e.event,
            data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
        })
    }))
}

/// Read until the stream ends, `stop` says so, or 30 s pass.
async fn read_until(stream: &mut Events, mut stop: impl FnMut(&[Ev]) -> bool) -> Vec<Ev> {
    // Gives up after 30 s without an event, not after 30 s in all: a loaded
    // CI machine can take longer than that over thousands of events.
    let mut got = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        got.push(ev);
        if stop(&got) {
            break;
        }
    }
    got
}

fn run_path(run: &str) -> String {
    format!("{ORCH}/stream/runs/{run}")
}

#[actix_web::test]
async fn headers_wire_format_and_heartbeat() {
    let app = spawn_with(&[
        ("Streams__HeartbeatIntervalSeconds", "1"),
        ("Streams__RetryMs", "1500"),
    ])
    .await;
    let (_, run) = app.submit_job(None).await;
    let mut res = open(&app, &run_path(&run), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), "text/event-stream");
    assert_eq!(header(&res, "cache-control"), "no-store");
    assert_eq!(header(&res, "x-accel-buffering"), "no");
    let mut raw = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = res.chunk().await.unwrap() {
            raw.push_str(&String::from_utf8_lossy(&chunk));
            if raw.contains(": heartbeat\n\n") {
                break;
            }
        }
    })
    .await;
    assert!(raw.starts_with("retry: 1500\n\n"), "{raw}");
    let first = raw.split("\n\n").nth(1).unwrap();
    let lines: Vec<&str> = first.lines().collect();
    assert!(
        lines[0].starts_with("id: ")
            && lines[1] == "event: first_signal"
            && lines[2].starts_with("data: {"),
        "{first}"
    );
    assert_eq!(lines.len(), 3, "one-line JSON data");
    assert!(
        raw.contains(": heartbeat\n\n"),
        "heartbeat within the interval: {raw}"
    );
}

#[actix_web::test]
async fn status_codes_tenants_and_query_tenant() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    assert_problem(
        open(&app, &run_path("nope"), None).await,
        400,
        "invalid_run_id",
    )
    .await;
    assert_problem(
        open(
            &app,
            &run_path("6fc74ab4-a997-41f2-adeb-8ee4565cb1b8"),
            None,
        )
        .await,
        404,
        "run_not_found",
    )
    .await;
    assert_problem(
        app.get(&format!("{ORCH}/stream/jobs/nope"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_job_id",
    )
    .await;
    for path in [
        run_path(&run),
        format!("{ENGINE}/stream/jobs/{job}"),
        format!("{ORCH}/stream/pack-runs/{job}"),
    ] {
        let res = app
            .req_as("globex", reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path} is invisible to another tenant");
        let res = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_tenant").await;
        let res = app
            .client
            .get(format!("{}{path}?tenant={TENANT}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "?tenant= where headers cannot be set");
    }
    let res = app
        .get(&format!("{}?events=first_signal,log", run_path(&run)))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_field").await;
    let res = app
        .get(&run_path(&run))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_field").await;
}

#[actix_web::test]
async fn first_signal_on_connect_and_exactly_when_the_etag_changes() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let mut stream = events(open(&app, &run_path(&run), None).await);
    let first = read_until(&mut stream, |_| true).await;
    assert_eq!(first[0].event, "first_signal");
    assert_eq!(first[0].data["signal"]["kind"], 0, "queued");
    let etag = header(&app.first_signal(&run).await, "etag");
    assert_eq!(first[0].data["etag"], etag.as_str());

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
    app.worker(&job, "progress", json!({"leaseId": lease, "percent": 30}))
        .await;
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let rest = read_until(&mut stream, |evs| {
        evs.last().is_some_and(|e| e.event == "completed")
    })
    .await;
    let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "job",
            "first_signal",
            "job",
            "progress",
            "first_signal",
            "progress",
            "progress",
            "job",
            "first_signal",
            "completed"
        ],
        "no first_signal for progress that leaves the signal unchanged"
    );
    let kinds: Vec<i64> = rest
        .iter()
        .filter(|e| e.event == "first_signal")
        .map(|e| e.data["signal"]["kind"].as_i64().unwrap())
        .collect();
    assert_eq!(kinds, [1, 2, 5]);
    let ids: Vec<u64> = rest.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "seq order: {ids:?}");
    assert!(
        stream.next().await.is_none(),
        "the run stream ends after `completed`"
    );
}

#[actix_web::test]
async fn a_fully_seen_complete_run_answers_204_and_a_fresh_connect_gets_its_end() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let all = read_until(
        &mut events(open(&app, &run_path(&run), Some(0)).await),
        |_| false,
    )
    .await;
    let done = all.last().unwrap();
    assert_eq!(done.event, "completed");
    let res = open(&app, &run_path(&run), Some(done.id.parse().unwrap())).await;
    assert_eq!(res.status(), 204);
    let fresh = read_until(&mut events(open(&app, &run_path(&run), None).await), |_| {
        false
    })
    .await;
    let names: Vec<&str> = fresh.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["first_signal", "completed"]);
    let res = open(&app, &format!("{ORCH}/stream/pack-runs/{job}"), Some(1000)).await;
    assert_eq!(res.status(), 204, "a job stream whose end was seen");
}

#[actix_web::test]
async fn resume_during_a_thousand_events_has_no_gap_and_no_duplicate() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    let mut first = events(open(&app, &run_path(&run), Some(0)).await);
    let publisher = async {
        progress_direct(&app, &job, &lease, 1000, 0, 0, 0).await;
        app.worker(&job, "complete", json!({"leaseId": lease}))
            .await;
    };
    let reader = async {
        let mut got = read_until(&mut first, |evs| evs.len() >= 300).await;
        drop(first);
        let last: u64 = got.last().unwrap().id.parse().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut second = events(open(&app, &run_path(&run), Some(last)).await);
        got.extend(
            read_until(&mut second, |evs| {
                evs.last().is_some_and(|e| e.event == "completed")
            })
            .await,
        );
        got
    };
    let ((), got) = futures_util::join!(publisher, reader);
    let replay = read_until(
        &mut events(open(&app, &run_path(&run), Some(0)).await),
        |_| false,
    )
    .await;
    assert_eq!(
        replay.iter().filter(|e| e.event == "progress").count(),
        1000
    );
    assert_eq!(got.len(), replay.len());
    assert_eq!(
        got, replay,
        "two connections carry exactly one uninterrupted replay"
    );
}

#[actix_web::test]
async fn filters_by_event_and_correlation_alone_and_together() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    let path = run_path(&run);
    let post = |corr: &'static str, body: Value| {
        app.post(&format!("{ORCH}/jobs/{job}/progress"), &body)
            .header("X-Correlation-Id", corr)
            .send()
    };
    post("a", json!({"leaseId": lease, "stage": "fetch"}))
        .await
        .unwrap();
    post("b", json!({"leaseId": lease, "percent": 5}))
        .await
        .unwrap();
    post("a", json!({"leaseId": lease, "stage": "report"}))
        .await
        .unwrap();
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let app = &app;
    let path = &path;
    let read = |query: &str| {
        let url = format!("{path}?lastEventId=0&{query}");
        async move { read_until(&mut events(app.get(&url).send().await.unwrap()), |_| false).await }
    };
    // `completed` ends every stream, whatever the filters (SPEC §5.1).
    let (progress, end) = ended(read("events=progress").await);
    assert_eq!(progress.len(), 3);
    assert!(progress.iter().all(|e| e.event == "progress"));
    let (by_a, _) = ended(read("correlationId=a").await);
    assert!(
        !by_a.is_empty()
            && by_a.iter().all(|e| e.data["correlationId"] == "a"
                || e.data["signal"]["diagnostics"]["correlationId"] == "a")
    );
    assert!(
        by_a.iter().any(|e| e.event == "first_signal") && by_a.iter().any(|e| e.event == "job")
    );
    let (both, _) = ended(read("events=progress&correlationId=a").await);
    assert_eq!(both.len(), 2);
    assert!(both
        .iter()
        .all(|e| e.event == "progress" && e.data["correlationId"] == "a"));
    // Resuming a filtered stream after its `completed`: 204, nothing left.
    for query in ["events=progress", "correlationId=a", "events=first_signal"] {
        let res = app
            .get(&format!("{path}?{query}"))
            .header("Last-Event-ID", end.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{query}");
    }
    let signals = read("events=first_signal,completed").await;
    assert!(signals
        .iter()
        .all(|e| e.event == "first_signal" || e.event == "completed"));
    assert_eq!(signals.last().unwrap().event, "completed");
}

#[actix_web::test]
async fn pack_run_and_job_streams_carry_steps_and_logs() {
    let app = spawn_app().await;
    let (job, _, lease) = started_job(&app).await;
    let pack = events(open(&app, &format!("{ORCH}/stream/pack-runs/{job}"), None).await);
    let jobs = events(open(&app, &format!("{ENGINE}/stream/jobs/{job}"), None).await);
    let body = |v: Value| v;
    app.worker(&job, "progress", body(json!({"leaseId": lease, "stepIndex": 0, "step": "clone", "log": ["one", {"stream": "stderr", "line": "two"}]}))).await;
    app.worker(
        &job,
        "progress",
        body(json!({"leaseId": lease, "stepIndex": 1, "step": "build", "percent": 50})),
    )
    .await;
    app.worker(
        &job,
        "fail",
        json!({"leaseId": lease, "message": "boom", "exitCode": 2}),
    )
    .await;
    let (mut pack, mut jobs) = (pack, jobs);
    let mut pack = read_until(&mut pack, |_| false).await;
    // A fresh connect starts with the plan (`external` declares no steps).
    let plan = pack.remove(0);
    assert_eq!(plan.event, "plan");
    assert_eq!(
        plan.data,
        json!({"jobId": job, "pack": "external", "totalSteps": 0, "percent": null, "steps": []})
    );
    let names: Vec<&str> = pack.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["step", "log", "log", "step", "step", "step", "completed"]
    );
    assert_eq!(
        pack[0].data,
        json!({"stepIndex": 0, "stepName": "clone", "status": "running", "exitCode": null,
        "startedAt": pack[0].data["startedAt"], "finishedAt": null})
    );
    assert_eq!(
        pack[1].data,
        json!({"stepIndex": 0, "lineNo": 1, "stream": "stdout", "line": "one"})
    );
    assert_eq!(pack[2].data["stream"], "stderr");
    assert_eq!(pack[1].id, pack[2].id, "lines of one report share its seq");
    assert_eq!(
        (
            pack[3].data["stepIndex"].as_i64(),
            pack[3].data["status"].as_str()
        ),
        (Some(0), Some("succeeded"))
    );
    assert_eq!(pack[5].data["status"], "failed");
    assert_eq!(pack[5].data["exitCode"], 2);
    assert_eq!(pack[6].data["type"], "job.failed");
    let jobs = read_until(&mut jobs, |_| false).await;
    let names: Vec<&str> = jobs.iter().map(|e| e.event.as_str()).collect();
    assert!(
        names.contains(&"job")
            && names.contains(&"progress")
            && names.contains(&"step")
            && names.contains(&"log")
    );
    assert_eq!(names.last(), Some(&"completed"));
}

/// What one raw SSE reader saw: ids in arrival order and progress count.
#[derive(Default)]
struct Tally {
    ids: Vec<u64>,
    progress: usize,
    completed: bool,
}

/// Reads a stream's raw chunks, tracking only `id:` and `event:` lines: a
/// hundred subscribers times ten thousand events is a million frames, too
/// many to JSON-decode on a small machine within the test's time.
async fn tally(mut res: reqwest::Response) -> Tally {
    let mut t = Tally::default();
    let mut partial = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(240), async {
        while let Ok(Some(chunk)) = res.chunk().await {
            partial.push_str(&String::from_utf8_lossy(&chunk));
            let complete = partial.rfind('\n').map_or(0, |i| i + 1);
            for line in partial[..complete].lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    t.ids.push(id.parse().unwrap());
                } else if line == "event: progress" {
                    t.progress += 1;
                } else if line == "event: completed" {
                    t.completed = true;
                }
            }
            partial.drain(..complete);
            if t.completed {
                break;
            }
        }
    })
    .await;
    t
}

#[actix_web::test]
async fn ten_thousand_events_reach_a_hundred_subscribers_complete_and_in_order() {
    let app = spawn_with(&[("Streams__BufferSize", "20000")]).await;
    let (job, run, lease) = started_job(&app).await;
    let mut streams = Vec::new();
    for _ in 0..100 {
        streams.push(open(&app, &run_path(&run), None).await);
    }
    let publisher = async {
        progress_direct(&app, &job, &lease, 10_000, 0, 0, 0).await;
        app.worker(&job, "complete", json!({"leaseId": lease}))
            .await;
    };
    let (results, ()) = futures_util::join!(
        futures_util::future::join_all(streams.into_iter().map(tally)),
        publisher
    );
    for t in &results {
        assert_eq!(t.progress, 10_000, "every event arrived");
        assert!(t.ids.windows(2).all(|w| w[0] < w[1]), "in seq order");
        assert!(t.completed);
    }
}

#[actix_web::test]
async fn a_subscriber_that_stops_reading_is_dropped_while_others_keep_up() {
    let app = spawn_with(&[("Streams__BufferSize", "16")]).await;
    let (job, run, lease) = started_job(&app).await;
    // A raw client that sends its request and never reads.
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nX-Tenant-Id: {TENANT}\r\n\r\n",
        run_path(&run)
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    let mut fast = events(open(&app, &run_path(&run), None).await);
    // The publisher keeps pace with the reading subscriber (batches of 8,
    // then it waits for them), so only the silent one falls behind.
    let received = std::cell::Cell::new(0usize);
    let fast_reader = async {
        read_until(&mut fast, |evs| {
            let last = evs.last().unwrap();
            if last.event == "progress" {
                received.set(received.get() + 1);
            }
            last.event == "completed"
        })
        .await
    };
    let publisher = async {
        // ~12 MB of progress messages: more than the socket buffers can hide.
        // Batches of 8, half the buffer, so that the reading subscriber never
        // falls 16 behind however slowly a loaded machine runs it.
        for batch in 1..=375 {
            progress_direct(&app, &job, &lease, 8, 4000, 0, 0).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while received.get() < batch * 8 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        app.worker(&job, "complete", json!({"leaseId": lease}))
            .await;
    };
    let (got, ()) = futures_util::join!(fast_reader, publisher);
    assert_eq!(
        got.iter().filter(|e| e.event == "progress").count(),
        3000,
        "the reading subscriber got everything"
    );
    assert_eq!(got.last().unwrap().event, "completed");
    // The slow one was dropped: reading now, its stream ends early, without `completed`.
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.ends_with(b"0\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the dropped stream ends");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.ends_with("0\r\n\r\n"), "chunked body terminated");
    assert!(
        !text.contains("event: completed"),
        "it was disconnected before the end"
    );
    assert!(text.matches("event: progress").count() < 3000);
}

#[actix_web::test]
async fn max_duration_ends_the_stream_with_a_timeout_event() {
    let app = spawn_with(&[("Streams__MaxDurationSeconds", "1")]).await;
    let (_, run) = app.submit_job(None).await;
    let got = read_until(&mut events(open(&app, &run_path(&run), None).await), |_| {
        false
    })
    .await;
    let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["first_signal", "timeout"]);
}

#[actix_web::test]
async fn an_idle_stream_gets_a_heartbeat_every_interval_until_its_deadline() {
    // One timer serves both: after each heartbeat it is set to the next one
    // or the deadline, whichever is first.
    let app = spawn_with(&[
        ("Streams__HeartbeatIntervalSeconds", "1"),
        ("Streams__MaxDurationSeconds", "4"),
    ])
    .await;
    let (_, run) = app.submit_job(None).await;
    let mut res = open(&app, &run_path(&run), None).await;
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = res.chunk().await.unwrap() {
            raw.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the stream ends at its deadline");
    let heartbeats = raw.matches(": heartbeat\n\n").count();
    assert!((2..=4).contains(&heartbeats), "{heartbeats} heartbeats: {raw}");
    assert!(raw.ends_with("event: timeout\ndata: {}\n\n"), "{raw}");
}

#[actix_web::test]
async fn a_graceful_stop_ends_open_streams_with_timeout() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    let mut stream = events(open(&app, &run_path(&run), None).await);
    read_until(&mut stream, |_| true).await;
    let stopper = app.server.clone();
    let stop = actix_rt::spawn(async move { stopper.stop().await });
    let rest = read_until(&mut stream, |_| false).await;
    assert_eq!(
        rest.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["timeout"]
    );
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("stopped within 10 s")
        .unwrap();
    assert!(
        app.client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .is_err(),
        "new connections refused"
    );
}

#[actix_web::test]
async fn a_filtered_stream_still_ends_when_the_run_completes() {
    let app = spawn_app().await;
    let (job, run, lease) = started_job(&app).await;
    let res = app
        .get(&format!("{}?events=progress", run_path(&run)))
        .header("X-Correlation-Id", "conn-1")
        .send()
        .await
        .unwrap();
    let mut only_progress = events(res);
    let mut plain = events(
        app.get(&run_path(&run))
            .header("X-Correlation-Id", "conn-2")
            .send()
            .await
            .unwrap(),
    );
    let first = read_until(&mut plain, |_| true).await;
    assert_eq!(
        first[0].data["signal"]["diagnostics"]["correlationId"], "conn-2",
        "the connect frame names the request"
    );
    app.worker(&job, "progress", json!({"leaseId": lease, "percent": 50}))
        .await;
    app.worker(&job, "complete", json!({"leaseId": lease}))
        .await;
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        read_until(&mut only_progress, |_| false),
    )
    .await
    .expect("the stream ended");
    let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["progress", "completed"],
        "only what the filter keeps, then the end, which every stream gets"
    );
}

/// The stream's events before its final `completed`, and that event's seq.
fn ended(mut got: Vec<Ev>) -> (Vec<Ev>, u64) {
    let last = got.pop().expect("at least the end");
    assert_eq!(last.event, "completed", "a stream ends with `completed`");
    assert_eq!(last.data["type"], "run.completed");
    (got, last.id.parse().expect("a seq id"))
}
