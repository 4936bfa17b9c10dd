//! The built-in executor (SPEC §7.1): builtin packs run in-process as
//! process groups, reported through the same store calls as remote workers.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::helpers::*;
use serde_json::{json, Value};
use tempfile::TempDir;

struct Exec {
    app: TestApp,
    /// Holds the packs dir and the workspaces.
    dir: TempDir,
}

impl Exec {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A server whose packs dir holds `packs` (name → steps) as builtin packs.
async fn exec_app(packs: &[Value], settings: &[(&str, &str)]) -> Exec {
    let dir = tempfile::tempdir().unwrap();
    let packs_dir = dir.path().join("packs");
    std::fs::create_dir(&packs_dir).unwrap();
    for pack in packs {
        let file = format!("{}.json", pack["name"].as_str().unwrap());
        std::fs::write(packs_dir.join(file), pack.to_string()).unwrap();
    }
    let ws = dir.path().join("ws");
    let (p, w) = (packs_dir.display().to_string(), ws.display().to_string());
    let mut all = vec![
        ("Executor__PacksDir", p.as_str()),
        ("Executor__WorkspaceDir", w.as_str()),
    ];
    all.extend_from_slice(settings);
    let app = spawn_with(&all).await;
    Exec { app, dir }
}

fn sh(name: &str, stage: &str, script: &str) -> Value {
    json!({"name": name, "stage": stage, "run": ["sh", "-c", script]})
}

fn pack(name: &str, steps: Vec<Value>) -> Value {
    json!({"name": name, "executor": "builtin", "steps": steps})
}

async fn submit(app: &TestApp, pack: &str, inputs: Value) -> (String, String) {
    let res = app.submit(json!({"pack": pack, "inputs": inputs})).await;
    assert_eq!(res.status(), 202, "submit {pack}");
    let v: Value = res.json().await.unwrap();
    (
        v["job_id"].as_str().unwrap().into(),
        v["run_id"].as_str().unwrap().into(),
    )
}

async fn wait_state(app: &TestApp, job: &str, states: &[&str], secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = app.job(job).await;
        if states.iter().any(|s| got["state"] == *s) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "job never reached {states:?}: {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn a_job_waiting_for_a_full_executor_is_blocked_until_a_slot_frees() {
    let gate = tempfile::tempdir().unwrap();
    let open = gate.path().join("open");
    let script = format!("while [ ! -f '{}' ]; do sleep 0.1; done", open.display());
    let settings = [
        ("Executor__MaxConcurrentJobs", "1"),
        ("Jobs__BlockedAfterSeconds", "1"),
    ];
    let e = exec_app(&[pack("hold", vec![sh("wait", "fetch", &script)])], &settings).await;
    let app = &e.app;
    let (first, _) = submit(app, "hold", json!({})).await;
    wait_state(app, &first, &["working"], 30).await;
    let (second, run) = submit(app, "hold", json!({})).await;

    let signal = crate::blocked::signal_until(app, &run, |s| s["type"] == "blocked").await;
    assert_eq!(signal["message"], "waiting for an executor slot");
    let polled = app.job(&second).await;
    assert_eq!(polled["state"], "queued");
    assert_eq!(polled["blocked"]["reason"], "waiting for an executor slot");

    std::fs::write(&open, "").unwrap();
    wait_state(app, &second, &["done"], 30).await;
    let signal = crate::blocked::signal_until(app, &run, |s| s["type"] != "blocked").await;
    assert_eq!(signal["type"], "succeeded");
    assert_eq!(
        crate::blocked::blocked_story(app, &run).await,
        [
            json!({"blocked": true, "reason": "waiting for an executor slot"}),
            json!({"blocked": false, "reason": null}),
            json!("loading"),
        ],
        "flagged while the slot was taken, cleared when the job was"
    );
}

async fn wait_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Running (a zombie nobody reaped yet counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32, within: Duration) -> Duration {
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < within,
            "pid {pid} still alive after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

fn log_lines(events: &[Value]) -> Vec<String> {
    of_type(events, "log")
        .iter()
        .flat_map(|e| e["payload"]["lines"].as_array().unwrap().clone())
        .map(|l| l["line"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn a_multi_step_builtin_job_runs_to_done_with_steps_and_logs() {
    let p = json!({"name": "multi", "executor": "builtin",
        "inputs": [{"name": "who", "default": "world"}],
        "steps": [sh("greet", "resolve", "echo \"hello $INPUT_WHO\"; echo to-stderr >&2"),
                  sh("build", "build", "sleep 0.3; mkdir -p out; echo built > out/r.txt; echo \"home=$HOME\""),
                  sh("check", "check", "test -f out/r.txt && echo checked")],
        "artifacts": [{"name": "r", "path": "out/r.txt"}]});
    let x = exec_app(&[p], &[]).await;
    let (job, run) = submit(&x.app, "multi", json!({})).await;
    let got = wait_state(&x.app, &job, &["done", "failed"], 30).await;
    assert_eq!(got["state"], "done", "{got}");
    assert_eq!(got["result"], json!({"steps": 3}));
    assert!(
        x.path("ws").join(&job).join("out/r.txt").exists(),
        "the workspace is kept"
    );
    let events = x.app.timeline(&run).await;
    let states: Vec<&str> = events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| ["job.queued", "job.loading", "job.working", "job.done"].contains(t))
        .collect();
    assert_eq!(
        states,
        ["job.queued", "job.loading", "job.working", "job.done"]
    );
    assert_eq!(of_type(&events, "step.started").len(), 3);
    let finished = of_type(&events, "step.finished");
    assert_eq!(finished.len(), 3);
    assert!(finished
        .iter()
        .all(|e| e["payload"]["status"] == "succeeded"));
    let lines = log_lines(&events);
    assert!(lines.contains(&"hello world".to_owned()), "{lines:?}");
    assert!(lines.contains(&"to-stderr".to_owned()), "{lines:?}");
    assert!(lines.contains(&"checked".to_owned()), "{lines:?}");
    let stderr = of_type(&events, "log")
        .iter()
        .flat_map(|e| e["payload"]["lines"].as_array().unwrap().clone())
        .find(|l| l["line"] == "to-stderr")
        .unwrap();
    assert_eq!(stderr["stream"], "stderr");
}

#[actix_web::test]
async fn inputs_arrive_as_env_vars_and_are_never_executed() {
    let x = exec_app(
        &[json!({"name": "echo", "executor": "builtin",
            "inputs": [{"name": "msg", "required": true}],
            "steps": [sh("say", "s", "echo \"got: $INPUT_MSG\""),
                      json!({"name": "argv", "stage": "s", "run": ["echo", "argv"]})]})],
        &[],
    )
    .await;
    let marker = x.path("pwned");
    let evil = format!("$(touch {0}); touch {0}; `touch {0}`", marker.display());
    let (job, run) = submit(&x.app, "echo", json!({"msg": evil})).await;
    let got = wait_state(&x.app, &job, &["done", "failed"], 30).await;
    assert_eq!(got["state"], "done", "{got}");
    assert!(!marker.exists(), "an input was executed");
    let lines = log_lines(&x.app.timeline(&run).await);
    assert!(lines.contains(&format!("got: {evil}")), "{lines:?}");

    let (job, _) = submit(&x.app, "echo", json!({})).await;
    let got = wait_state(&x.app, &job, &["failed"], 30).await;
    assert_eq!(got["error"]["code"], "missing_input", "{got}");
}

#[actix_web::test]
async fn a_failing_step_fails_the_job_with_its_exit_code() {
    let x = exec_app(
        &[pack(
            "bad",
            vec![
                sh("ok", "a", "echo fine"),
                sh("boom", "b", "echo dying >&2; exit 3"),
                sh("never", "c", "echo never"),
            ],
        )],
        &[],
    )
    .await;
    let (job, run) = submit(&x.app, "bad", json!({})).await;
    let got = wait_state(&x.app, &job, &["done", "failed"], 30).await;
    assert_eq!(got["state"], "failed", "{got}");
    assert_eq!(got["error"]["code"], "step_failed");
    assert!(got["error"]["message"].as_str().unwrap().contains("boom"));
    let events = x.app.timeline(&run).await;
    let finished = of_type(&events, "step.finished");
    let failed = finished[1];
    assert_eq!(failed["payload"]["exitCode"], 3);
    assert_eq!(failed["payload"]["status"], "failed");
    // The step after it never ran: reported once, as skipped.
    assert_eq!(finished.len(), 3);
    assert_eq!(finished[2]["payload"]["stepName"], "never");
    assert_eq!(finished[2]["payload"]["status"], "skipped");
    assert!(!log_lines(&events).contains(&"never".to_owned()));
}

#[actix_web::test]
async fn a_step_timeout_kills_the_whole_process_group() {
    let x = exec_app(
        &[
            json!({"name": "slow", "executor": "builtin", "steps": [{"name": "hang", "stage": "s",
            "run": ["sh", "-c", "sleep 100 & echo $! > child.pid; echo $$ > step.pid; wait"],
            "timeout_seconds": 1}]}),
        ],
        &[],
    )
    .await;
    let (job, _) = submit(&x.app, "slow", json!({})).await;
    let ws = x.path("ws").join(&job);
    let child = wait_pid(&ws.join("child.pid")).await;
    let step = wait_pid(&ws.join("step.pid")).await;
    let got = wait_state(&x.app, &job, &["failed", "done"], 30).await;
    assert_eq!(got["error"]["code"], "step_timeout", "{got}");
    wait_gone(step, Duration::from_secs(5)).await;
    wait_gone(child, Duration::from_secs(5)).await;
}

#[actix_web::test]
async fn cancel_kills_a_running_step_within_two_seconds() {
    let x = exec_app(
        &[pack(
            "long",
            vec![sh("wait", "s", "echo $$ > step.pid; exec sleep 30")],
        )],
        &[],
    )
    .await;
    let (job, _) = submit(&x.app, "long", json!({})).await;
    let pid = wait_pid(&x.path("ws").join(&job).join("step.pid")).await;
    wait_state(&x.app, &job, &["working"], 20).await;
    let res = x
        .app
        .post(&format!("/jobs/{job}/cancel"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let took = wait_gone(pid, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(x.app.job(&job).await["state"], "canceled");
}

#[actix_web::test]
async fn max_concurrent_jobs_one_runs_jobs_one_after_the_other() {
    let x = exec_app(
        &[pack("one", vec![sh("nap", "s", "sleep 1")])],
        &[("Executor__MaxConcurrentJobs", "1")],
    )
    .await;
    let (a, _) = submit(&x.app, "one", json!({})).await;
    wait_state(&x.app, &a, &["working"], 20).await;
    let (b, _) = submit(&x.app, "one", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = x.app.job(&b).await;
    if x.app.job(&a).await["state"] == "working" {
        assert_eq!(waiting["state"], "queued", "second waits: {waiting}");
    }
    let first = wait_state(&x.app, &a, &["done"], 30).await;
    let second = wait_state(&x.app, &b, &["done"], 30).await;
    let (a_end, b_start) = (
        first["finished_at"].as_str().unwrap().to_owned(),
        second["started_at"].as_str().unwrap().to_owned(),
    );
    assert!(b_start >= a_end, "{b_start} before {a_end}");
}

#[actix_web::test]
async fn a_chatty_step_is_batched_and_loses_no_line() {
    let x = exec_app(
        &[pack(
            "chatty",
            vec![sh(
                "spam",
                "s",
                "i=1; while [ $i -le 5000 ]; do echo $i; i=$((i+1)); done",
            )],
        )],
        &[],
    )
    .await;
    let (job, run) = submit(&x.app, "chatty", json!({})).await;
    let got = wait_state(&x.app, &job, &["done", "failed"], 60).await;
    assert_eq!(got["state"], "done", "{got}");
    let events = x.app.timeline(&run).await;
    let batches = of_type(&events, "log").len();
    assert!((1..=250).contains(&batches), "{batches} log events");
    let want: Vec<String> = (1..=5000).map(|i| i.to_string()).collect();
    assert_eq!(log_lines(&events), want);
}

#[actix_web::test]
async fn builtin_packs_are_not_leasable_by_remote_workers() {
    let x = exec_app(&[pack("mine", vec![sh("a", "s", "true")])], &[]).await;
    let res = x
        .app
        .post(
            &format!("{ORCH}/workers/lease"),
            &json!({"workerId": "w", "packs": ["mine"]}),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "unknown_pack").await;
    let res = x.app.submit(json!({"pack": "nope"})).await;
    assert_problem(res, 422, "unknown_pack").await;
}

#[actix_web::test]
async fn the_shipped_demo_pack_runs_its_stages_and_writes_its_report() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path().display().to_string();
    let app = spawn_with(&[("Executor__WorkspaceDir", w.as_str())]).await;
    let (job, run) = submit(&app, "demo", json!({"name": "tester"})).await;
    let got = wait_state(&app, &job, &["done", "failed"], 60).await;
    assert_eq!(got["state"], "done", "{got}");
    let events = app.timeline(&run).await;
    let stages: Vec<&str> = of_type(&events, "job.progress")
        .iter()
        .filter_map(|e| e["payload"]["stage"].as_str())
        .collect();
    for stage in ["resolve", "fetch", "analyze", "report"] {
        assert!(stages.contains(&stage), "{stages:?}");
    }
    let lines = log_lines(&events);
    assert!(lines.contains(&"hello tester".to_owned()), "{lines:?}");
    let report = std::fs::read_to_string(ws.path().join(&job).join("out/report.txt")).unwrap();
    assert!(report.contains("tester"), "{report}");
}

#[actix_web::test]
async fn jobs_of_every_tenant_run_and_long_lines_are_cut() {
    let x = exec_app(
        &[pack(
            "wide",
            vec![sh(
                "long",
                "s",
                "head -c 20000 /dev/zero | tr '\\0' a; echo; echo short",
            )],
        )],
        &[],
    )
    .await;
    let mut jobs = Vec::new();
    for tenant in ["acme", "globex"] {
        let res = x
            .app
            .req_as(tenant, reqwest::Method::POST, "/jobs")
            .json(&json!({"pack": "wide"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let v: Value = res.json().await.unwrap();
        jobs.push((
            tenant,
            v["job_id"].as_str().unwrap().to_owned(),
            v["run_id"].as_str().unwrap().to_owned(),
        ));
    }
    for (tenant, job, _) in &jobs {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Value = x
                .app
                .req_as(tenant, reqwest::Method::GET, &format!("/jobs/{job}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["state"] == "done" {
                break;
            }
            assert!(Instant::now() < deadline, "{tenant}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let lines = log_lines(&x.app.timeline(&jobs[0].2).await);
    assert_eq!(lines.len(), 2, "{}", lines.len());
    assert!(lines[0].starts_with("aaaa") && lines[0].ends_with("[truncated]"));
    assert!(lines[0].len() < 8 * 1024 + 32, "{}", lines[0].len());
    assert_eq!(lines[1], "short");
}

#[test]
fn executor_settings_are_validated_naming_the_key() {
    use runsignal::config::Config;
    for (key, value) in [
        ("MaxConcurrentJobs", "0"),
        ("MaxConcurrentJobs", "1000"),
        ("WorkspaceDir", " "),
    ] {
        let env = vec![(format!("RUNSIGNAL__Executor__{key}"), value.to_owned())];
        let err = Config::load_from(None, env).unwrap_err().to_string();
        assert!(err.contains(&format!("Executor.{key}")), "{err}");
    }
    let ok = Config::load_from(None, Vec::new()).unwrap();
    assert_eq!(ok.executor.workspace_dir, "data/workspaces");
}

/// SPEC §11: built-in executor slots go round robin across tenants. With one
/// slot and tenant `noisy`'s first job running, `victim` submits one job;
/// when the slot frees, the victim's job runs next although `noisy` still
/// has 7 older jobs queued. Each noisy job holds the slot until the test
/// opens its gate, so the victim's job can only finish if it came first.
#[actix_web::test]
async fn a_victims_builtin_job_runs_before_another_tenants_queued_backlog() {
    let gated = json!({"name": "gated", "executor": "builtin",
        "inputs": [{"name": "gate", "required": true}],
        "steps": [sh("wait", "build",
            "i=0; while [ ! -e \"$INPUT_GATE\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done")]});
    let quick = pack("quick", vec![sh("run", "build", "echo quick")]);
    let x = exec_app(&[gated, quick], &[("Executor__MaxConcurrentJobs", "1")]).await;
    let gate = |i: usize| x.path(&format!("gate-{i}")).display().to_string();
    let submit_as = |tenant: &'static str, body: Value| {
        let req = x.app.req_as(tenant, reqwest::Method::POST, "/jobs").json(&body);
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 202);
            let v: Value = res.json().await.unwrap();
            v["job_id"].as_str().unwrap().to_owned()
        }
    };
    let job_of = |tenant: &'static str, id: String| {
        let req = x.app.req_as(tenant, reqwest::Method::GET, &format!("/jobs/{id}"));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let mut noisy = Vec::new();
    for i in 0..8 {
        noisy.push(submit_as("noisy", json!({"pack": "gated", "inputs": {"gate": gate(i)}})).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_of("noisy", noisy[0].clone()).await["state"] != "working" {
        assert!(Instant::now() < deadline, "the first noisy job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = submit_as("victim", json!({"pack": "quick"})).await;
    std::fs::write(gate(0), "").unwrap();
    // The next noisy job would hold the only slot until its gate opens, so
    // the victim's job reaching `done` means it got the slot first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = job_of("victim", victim.clone()).await;
        if got["state"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the victim's job waited behind the noisy backlog: {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut still_queued = 0;
    for id in &noisy[1..] {
        if job_of("noisy", id.clone()).await["state"] == "queued" {
            still_queued += 1;
        }
    }
    assert!(still_queued >= 6, "noisy still had its backlog: {still_queued}");
    for i in 0..8 {
        std::fs::write(gate(i), "").unwrap();
    }
}
