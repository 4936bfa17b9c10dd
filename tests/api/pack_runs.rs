//! Pack-run monitors (SPEC §5.1, §6): the `plan` on connect, `skipped`
//! steps after a failure or cancel, remote packs' declared steps, and
//! `artifact.created` carried as `artifact`.
use std::time::{Duration, Instant};

use crate::helpers::*;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;

#[derive(Debug, Clone)]
struct Ev {
    id: u64,
    event: String,
    data: Value,
}

type Events = std::pin::Pin<Box<dyn Stream<Item = Ev>>>;

/// A server whose packs dir holds `packs` (kept alive with the dir).
async fn app_with_packs(packs: &[Value]) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let packs_dir = dir.path().join("packs");
    std::fs::create_dir(&packs_dir).unwrap();
    for pack in packs {
        let file = format!("{}.json", pack["name"].as_str().unwrap());
        std::fs::write(packs_dir.join(file), pack.to_string()).unwrap();
    }
    let p = packs_dir.display().to_string();
    let app = spawn_with(&[("Executor__PacksDir", p.as_str())]).await;
    (app, dir)
}

fn sh(name: &str, script: &str) -> Value {
    json!({"name": name, "stage": "s", "run": ["sh", "-c", script]})
}

async fn submit(app: &TestApp, pack: &str) -> (String, String) {
    let res = app.submit(json!({"pack": pack})).await;
    assert_eq!(res.status(), 202, "submit {pack}");
    let v: Value = res.json().await.unwrap();
    (
        v["job_id"].as_str().unwrap().into(),
        v["run_id"].as_str().unwrap().into(),
    )
}

async fn open(app: &TestApp, path: &str, last: Option<u64>) -> Events {
    let mut req = app.get(path);
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    Box::pin(res.bytes_stream().eventsource().filter_map(|e| async move {
        let e = e.ok()?;
        Some(Ev {
            id: e.id.parse().ok()?,
            event: e.event,
            data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
        })
    }))
}

/// Read until the stream ends, `stop` says so, or 30 s pass without an event.
async fn read_until(stream: &mut Events, mut stop: impl FnMut(&[Ev]) -> bool) -> Vec<Ev> {
    let mut got = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        got.push(ev);
        if stop(&got) {
            break;
        }
    }
    got
}

fn pack_path(job: &str) -> String {
    format!("{ORCH}/stream/pack-runs/{job}")
}

/// `(stepIndex, status)` of each `step` event, in order.
fn steps(events: &[Ev]) -> Vec<(i64, String)> {
    events
        .iter()
        .filter(|e| e.event == "step")
        .map(|e| {
            (
                e.data["stepIndex"].as_i64().unwrap(),
                e.data["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `(stepIndex, status)` of each step in a `plan`.
fn plan_steps(plan: &Value) -> Vec<(i64, String)> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stepIndex"].as_i64().unwrap(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn st(list: &[(i64, &str)]) -> Vec<(i64, String)> {
    list.iter().map(|(i, s)| (*i, s.to_string())).collect()
}

/// Poll the timeline until `ok` holds (30 s).
async fn wait_timeline(app: &TestApp, run: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = app.timeline(run).await;
        if ok(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "timeline never got there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has(events: &[Value], ty: &str, status: &str, index: i64) -> bool {
    events.iter().any(|e| {
        e["type"] == ty && e["payload"]["stepIndex"] == index && e["payload"]["status"] == status
    })
}

#[actix_web::test]
async fn a_failed_step_skips_the_later_steps_on_job_and_pack_run_streams() {
    let (app, _dir) = app_with_packs(&[json!({"name": "three", "executor": "builtin",
        "steps": [sh("ok", "echo fine"), sh("boom", "exit 3"), sh("never", "echo never")]})])
    .await;
    let (job, run) = submit(&app, "three").await;
    // From the start (Last-Event-ID 0): every step event the job had.
    let mut pack = open(&app, &pack_path(&job), Some(0)).await;
    let got = read_until(&mut pack, |_| false).await;
    assert_ne!(got[0].event, "plan", "a resumed stream has no plan");
    assert_eq!(
        steps(&got),
        st(&[
            (0, "running"),
            (0, "succeeded"),
            (1, "running"),
            (1, "failed"),
            (2, "skipped")
        ])
    );
    let skipped = got.iter().find(|e| e.data["status"] == "skipped").unwrap();
    assert_eq!(
        skipped.data,
        json!({"stepIndex": 2, "stepName": "never", "status": "skipped", "exitCode": null,
               "startedAt": null, "finishedAt": null})
    );
    assert_eq!(got.last().unwrap().event, "completed");
    assert_eq!(got.last().unwrap().data["type"], "job.failed");
    let failed = got.iter().find(|e| e.data["status"] == "failed").unwrap();
    assert_eq!(failed.data["exitCode"], 3);
    // The job stream carries it too, and the timeline keeps it.
    let mut jobs = open(&app, &format!("{ENGINE}/stream/jobs/{job}"), Some(0)).await;
    let got = read_until(&mut jobs, |_| false).await;
    assert_eq!(steps(&got).last(), Some(&(2, "skipped".to_owned())));
    let events = app.timeline(&run).await;
    assert!(has(&events, "step.finished", "skipped", 2));
    // A fresh connect to the ended pack run: its plan, then `completed`.
    let mut fresh = open(&app, &pack_path(&job), None).await;
    let got = read_until(&mut fresh, |_| false).await;
    let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["plan", "completed"]);
    assert_eq!(
        plan_steps(&got[0].data),
        st(&[(0, "succeeded"), (1, "failed"), (2, "skipped")])
    );
    assert_eq!(got[0].data["totalSteps"], 3);
}

#[actix_web::test]
async fn cancel_mid_run_skips_the_steps_after_the_running_one() {
    let (app, _dir) = app_with_packs(&[json!({"name": "long", "executor": "builtin",
        "steps": [sh("one", "echo one"), sh("wait", "sleep 60"), sh("three", "echo 3"), sh("four", "echo 4")]})])
    .await;
    let (job, run) = submit(&app, "long").await;
    wait_timeline(&app, &run, |ev| has(ev, "step.started", "running", 1)).await;
    let res = app
        .post(&format!("/jobs/{job}/cancel"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let events = wait_timeline(&app, &run, |ev| ev.iter().any(|e| e["type"] == "job.canceled")).await;
    let tail: Vec<(String, Value, Value)> = events
        .iter()
        .filter(|e| e["type"] == "step.finished" || e["type"] == "job.canceled")
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["payload"]["stepIndex"].clone(),
                e["payload"]["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            ("step.finished".into(), json!(0), json!("succeeded")),
            ("step.finished".into(), json!(1), json!("failed")),
            ("step.finished".into(), json!(2), json!("skipped")),
            ("step.finished".into(), json!(3), json!("skipped")),
            ("job.canceled".into(), Value::Null, Value::Null),
        ]
    );
    let mut fresh = open(&app, &pack_path(&job), None).await;
    let got = read_until(&mut fresh, |_| false).await;
    assert_eq!(got[0].event, "plan");
    assert_eq!(
        plan_steps(&got[0].data),
        st(&[(0, "succeeded"), (1, "failed"), (2, "skipped"), (3, "skipped")])
    );
    assert_eq!(got.last().unwrap().data["type"], "job.canceled");
}

#[actix_web::test]
async fn a_remote_pack_plans_its_declared_steps_and_carries_others() {
    let (app, _dir) = app_with_packs(&[json!({"name": "deploy", "executor": "remote",
        "steps": [{"name": "fetch"}, {"name": "build", "stage": "compile"}, {"name": "ship"}]})])
    .await;
    let (job, run) = submit(&app, "deploy").await;
    let lease = app
        .lease(json!({"workerId": "w", "packs": ["deploy"], "leaseSeconds": 3600}))
        .await
        .remove(0);
    let lease = lease["leaseId"].as_str().unwrap().to_owned();
    // Before any step: every declared step is pending.
    let mut early = open(&app, &pack_path(&job), None).await;
    let plan = read_until(&mut early, |_| true).await.remove(0);
    assert_eq!(plan.event, "plan");
    assert_eq!(plan.data["jobId"], job.as_str());
    assert_eq!(plan.data["pack"], "deploy");
    assert_eq!(plan.data["totalSteps"], 3);
    assert_eq!(
        plan.data["steps"][2],
        json!({"stepIndex": 2, "stepName": "ship", "status": "pending", "exitCode": null,
               "startedAt": null, "finishedAt": null})
    );
    let progress = |body: Value| app.worker(&job, "progress", body);
    // No `step` name: the pack file's name is used.
    assert_eq!(
        progress(json!({"leaseId": lease, "stepIndex": 0, "percent": 10}))
            .await
            .status(),
        200
    );
    progress(json!({"leaseId": lease, "stepIndex": 1, "percent": 40})).await;
    // A monitor joining now sees step 2 of 3 at once, with the job's seq.
    let mut pack = open(&app, &pack_path(&job), None).await;
    let plan = read_until(&mut pack, |_| true).await.remove(0);
    assert_eq!(plan.event, "plan");
    assert_eq!(
        plan_steps(&plan.data),
        st(&[(0, "succeeded"), (1, "running"), (2, "pending")])
    );
    assert_eq!(plan.data["steps"][0]["stepName"], "fetch");
    assert_eq!(plan.data["steps"][1]["stepName"], "build");
    assert_eq!(plan.data["percent"], 40.0);
    let job_seqs: Vec<u64> = app
        .timeline(&run)
        .await
        .iter()
        .filter(|e| e["jobId"] == job.as_str())
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(Some(&plan.id), job_seqs.last(), "id = the job's latest seq");
    // A step outside the plan is still carried.
    progress(json!({"leaseId": lease, "stepIndex": 7, "step": "extra"})).await;
    app.worker(&job, "complete", json!({"leaseId": lease})).await;
    let got = read_until(&mut pack, |_| false).await;
    assert_eq!(
        steps(&got),
        st(&[(1, "succeeded"), (7, "running"), (7, "succeeded")])
    );
    assert!(got.iter().all(|e| e.event != "plan"), "one plan per connect");
    assert!(got[0].id > plan.id, "live events follow the plan");
    assert_eq!(got[1].data["stepName"], "extra");
    assert_eq!(got.last().unwrap().event, "completed");
    // Resuming after the plan's id replays what came after it, no plan.
    let mut resumed = open(&app, &pack_path(&job), Some(plan.id)).await;
    let again = read_until(&mut resumed, |_| false).await;
    assert_eq!(steps(&again), steps(&got));

    // Canceled before it started: every declared step is skipped.
    let (queued, run) = submit(&app, "deploy").await;
    app.post(&format!("/jobs/{queued}/cancel"), &json!({}))
        .send()
        .await
        .unwrap();
    let events = wait_timeline(&app, &run, |ev| ev.iter().any(|e| e["type"] == "job.canceled")).await;
    let skipped: Vec<(Value, Value)> = events
        .iter()
        .filter(|e| e["payload"]["status"] == "skipped")
        .map(|e| (e["payload"]["stepIndex"].clone(), e["payload"]["stepName"].clone()))
        .collect();
    assert_eq!(
        skipped,
        [
            (json!(0), json!("fetch")),
            (json!(1), json!("build")),
            (json!(2), json!("ship"))
        ]
    );
}

#[actix_web::test]
async fn artifacts_are_announced_on_job_and_pack_run_streams() {
    let app = spawn_app().await;
    let (job, _, lease) = started_job(&app).await;
    let mut jobs = open(&app, &format!("{ENGINE}/stream/jobs/{job}"), None).await;
    let mut pack = open(&app, &pack_path(&job), None).await;
    let res = app
        .worker(
            &job,
            "complete",
            json!({"leaseId": lease, "result": {"ok": true},
                   "artifacts": [{"name": "notes.txt", "content_type": "text/plain",
                                  "content_base64": "aGVsbG8="}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let listed = app.job(&job).await["artifacts"].clone();
    let on_jobs = read_until(&mut jobs, |_| false).await;
    let on_pack = read_until(&mut pack, |_| false).await;
    for got in [&on_jobs, &on_pack] {
        let artifacts: Vec<&Value> = got
            .iter()
            .filter(|e| e.event == "artifact")
            .map(|e| &e.data)
            .collect();
        assert_eq!(artifacts.len(), 2, "{got:?}");
        for a in &artifacts {
            let stored = listed
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == a["name"])
                .unwrap();
            for field in ["size", "sha256", "content_type", "url"] {
                assert_eq!(a[field], stored[field], "{field}");
            }
        }
        let notes = artifacts.iter().find(|a| a["name"] == "notes.txt").unwrap();
        assert_eq!(notes["size"], 5);
        assert_eq!(notes["url"], format!("/jobs/{job}/artifacts/notes.txt"));
        assert_eq!(got.last().unwrap().event, "completed");
    }

    // A built-in `demo` job announces its `completion` and `report`.
    let (demo, run) = submit(&app, "demo").await;
    wait_timeline(&app, &run, |ev| ev.iter().any(|e| e["type"] == "job.done")).await;
    let mut replay = open(&app, &format!("{ORCH}/stream/jobs/{demo}"), Some(0)).await;
    let got = read_until(&mut replay, |_| false).await;
    let mut names: Vec<&str> = got
        .iter()
        .filter(|e| e.event == "artifact")
        .map(|e| e.data["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["completion", "report"]);
    let events = app.timeline(&run).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "artifact.created")
            .count(),
        2
    );
}

type Ws = tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
>;

async fn ws_connect(app: &TestApp) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{ORCH}/ws", app.address.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("X-Tenant-Id", TENANT.parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Send `value`, then read text frames until `stop` (30 s without one ends it).
async fn ws_exchange(ws: &mut Ws, value: Value, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        if let Message::Text(text) = msg {
            let frame: Value = serde_json::from_str(&text).unwrap();
            let done = stop(&frame);
            got.push(frame);
            if done {
                break;
            }
        }
    }
    got
}

#[actix_web::test]
async fn a_websocket_pack_run_subscription_gets_the_plan_unless_it_resumes() {
    let (app, _dir) = app_with_packs(&[json!({"name": "deploy", "executor": "remote",
        "steps": [{"name": "fetch"}, {"name": "ship"}]})])
    .await;
    let (job, _) = submit(&app, "deploy").await;
    let lease = app
        .lease(json!({"workerId": "w", "packs": ["deploy"], "leaseSeconds": 3600}))
        .await
        .remove(0);
    let lease = lease["leaseId"].as_str().unwrap().to_owned();
    app.worker(&job, "progress", json!({"leaseId": lease, "stepIndex": 0}))
        .await;
    let mut ws = ws_connect(&app).await;
    let subscribe = json!({"op": "subscribe", "stream": "pack-run", "id": job});
    let frames = ws_exchange(&mut ws, subscribe, |f| f["event"] == "plan").await;
    let plan = frames.last().unwrap();
    assert_eq!(frames[0]["op"], "subscribed");
    assert_eq!(
        (plan["op"].as_str(), plan["stream"].as_str(), plan["id"].as_str()),
        (Some("event"), Some("pack-run"), Some(job.as_str()))
    );
    assert_eq!(
        plan_steps(&plan["data"]),
        st(&[(0, "running"), (1, "pending")])
    );
    let after = plan["seq"].as_u64().unwrap();
    app.worker(
        &job,
        "complete",
        json!({"leaseId": lease, "result": {"shipped": 1}}),
    )
    .await;
    let frames = ws_exchange(&mut ws, json!({"op": "ping"}), |f| f["event"] == "completed").await;
    let events: Vec<&str> = frames.iter().filter_map(|f| f["event"].as_str()).collect();
    assert_eq!(events, ["step", "artifact", "completed"]);
    let artifact = frames.iter().find(|f| f["event"] == "artifact").unwrap();
    assert_eq!(artifact["data"]["name"], "completion");
    assert_eq!(artifact["data"]["content_type"], "application/json");
    // A resumed subscription replays what followed the plan, and no plan.
    let mut again = ws_connect(&app).await;
    let resume = json!({"op": "subscribe", "stream": "pack-run", "id": job, "after": after});
    let frames = ws_exchange(&mut again, resume, |f| f["event"] == "completed").await;
    let events: Vec<&str> = frames.iter().filter_map(|f| f["event"].as_str()).collect();
    assert_eq!(events, ["step", "artifact", "completed"]);
}
