//! Table-driven bad input across every route: each malformed or impossible
//! request answers its documented status with a problem+json body carrying a
//! stable `code`, nothing in the store changes, and nothing panics.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_with, TestApp, ENGINE, ORCH, TENANT};

/// Body limit for this server: small, so an oversized body is cheap to send
/// and fully written before the server answers.
const MAX_BODY: usize = 1024;
/// A well-formed run id no tenant has.
const UNKNOWN_RUN: &str = "00000000-0000-4000-8000-000000000000";
/// A well-formed job id no tenant has.
const UNKNOWN_JOB: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
/// A second tenant: must see none of the first one's data.
const OTHER: &str = "other";

enum Body {
    Json(Value),
    Raw(Vec<u8>),
    /// Bytes with this `Content-Type` (`None`: no header at all).
    Typed(Option<&'static str>, Vec<u8>),
    Empty,
}

struct Case<'a> {
    name: &'static str,
    method: Method,
    path: String,
    tenant: Option<&'a str>,
    body: Body,
    status: u16,
    code: &'static str,
}

/// A case sent as tenant `acme`; `.tenant(…)` overrides it.
fn case<'a>(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    body: Body,
    status: u16,
    code: &'static str,
) -> Case<'a> {
    Case {
        name,
        method,
        path: path.into(),
        tenant: Some(TENANT),
        body,
        status,
        code,
    }
}

impl<'a> Case<'a> {
    fn tenant(mut self, tenant: Option<&'a str>) -> Case<'a> {
        self.tenant = tenant;
        self
    }
}

fn raw(s: &str) -> Body {
    Body::Raw(s.as_bytes().to_vec())
}

async fn send(app: &TestApp, case: &Case<'_>) -> reqwest::Response {
    let mut req = app
        .client
        .request(case.method.clone(), format!("{}{}", app.address, case.path));
    if let Some(t) = case.tenant {
        // Bytes, so that a non-ASCII tenant reaches the server as sent.
        req = req.header("X-Tenant-Id", t.as_bytes());
    }
    req = match &case.body {
        Body::Json(v) => req.json(v),
        Body::Raw(b) => req
            .header("Content-Type", "application/json")
            .body(b.clone()),
        Body::Typed(Some(kind), b) => req.header("Content-Type", *kind).body(b.clone()),
        Body::Typed(None, b) => req.body(b.clone()),
        Body::Empty => req,
    };
    req.send()
        .await
        .unwrap_or_else(|e| panic!("case `{}`: request failed: {e}", case.name))
}

async fn get_json(app: &TestApp, tenant: &str, path: &str) -> Value {
    let res = app
        .client
        .get(format!("{}{}", app.address, path))
        .header("X-Tenant-Id", tenant)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    json!({"status": status, "body": serde_json::from_str::<Value>(&body).unwrap_or(json!(body))})
}

/// Everything a bad request could have changed, as read through the API.
async fn fingerprint(app: &TestApp, run: &str, jobs: &[&str]) -> Value {
    let mut fp = json!({
        "jobs": get_json(app, TENANT, "/jobs?limit=200").await,
        "runs_orch": get_json(app, TENANT, &format!("{ORCH}/runs?limit=200")).await,
        "runs_engine": get_json(app, TENANT, &format!("{ENGINE}/runs?limit=200")).await,
        "run": get_json(app, TENANT, &format!("{ORCH}/runs/{run}")).await,
        "timeline": get_json(app, TENANT, &format!("{ORCH}/runs/{run}/timeline?limit=1000")).await,
        "first_signal": get_json(app, TENANT, &format!("{ORCH}/runs/{run}/first-signal")).await,
        "other_jobs": get_json(app, OTHER, "/jobs?limit=200").await,
        "other_runs": get_json(app, OTHER, &format!("{ORCH}/runs?limit=200")).await,
    });
    for job in jobs {
        fp[format!("job_{job}")] = get_json(app, TENANT, &format!("/jobs/{job}")).await;
    }
    fp
}

#[actix_rt::test]
async fn malformed_requests_answer_problem_json_and_change_nothing() {
    let max_body = MAX_BODY.to_string();
    let app = spawn_with(&[("Server__MaxBodyBytes", max_body.as_str())]).await;

    // Seed: one run with a leased job, a queued job and a canceled job.
    let res = app.create_run(json!({"name": "seed"})).await;
    assert_eq!(res.status(), 201, "seed run");
    let run: Value = res.json().await.unwrap();
    let run = run["runId"].as_str().unwrap().to_owned();
    let (leased, _) = app.submit_job(Some(&run)).await;
    let lease = app
        .lease(json!({"workerId": "w1", "packs": ["external"], "leaseSeconds": 3600}))
        .await;
    assert_eq!(lease.len(), 1, "one job leased");
    assert_eq!(lease[0]["jobId"], leased.as_str());
    let lease_id = lease[0]["leaseId"].as_str().unwrap().to_owned();
    let (queued, _) = app.submit_job(Some(&run)).await;
    let (canceled, _) = app.submit_job(Some(&run)).await;
    let res = app
        .post(&format!("/jobs/{canceled}/cancel"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "seed cancel");
    let seeded = [leased.as_str(), queued.as_str(), canceled.as_str()];

    let before = fingerprint(&app, &run, &seeded).await;
    assert_eq!(before["jobs"]["status"], 200);
    assert_eq!(before["first_signal"]["status"], 200);

    let long_tenant = "t".repeat(65);
    let big = "x".repeat(MAX_BODY * 2);
    let stale = "01BX5ZZKBKACTAV9WEVGEMMVRZ";
    let lease_ok = |extra: Value| {
        let mut body = json!({"workerId": "w9", "packs": ["external"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Body::Json(body)
    };
    let progress = format!("{ORCH}/jobs/{leased}/progress");
    let complete = format!("{ORCH}/jobs/{leased}/complete");
    let fail = format!("{ORCH}/jobs/{leased}/fail");
    let lease_path = format!("{ORCH}/workers/lease");
    let runs = format!("{ORCH}/runs");
    let timeline = format!("{ORCH}/runs/{run}/timeline");
    let ok_submit = || Body::Json(json!({"pack": "external"}));
    let ok_lease = || Body::Json(json!({"leaseId": lease_id}));
    // 26 base32 chars hold 130 bits: adding 8 to the first char sets bits past
    // 128, which a lax decoder drops, naming the original job again.
    let overflow = |id: &str| {
        const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let first = CROCKFORD.find(&id[..1]).expect("base32 char");
        assert!(first < 8, "a ULID starts with 0-7");
        format!("{}{}", &CROCKFORD[first + 8..first + 9], &id[1..])
    };

    // One case per line: a table reads better than rustfmt's layout.
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // ---- tenant ------------------------------------------------------
        case("POST /jobs without tenant", Method::POST, "/jobs", ok_submit(), 400, "invalid_tenant").tenant(None),
        case("GET /jobs without tenant", Method::GET, "/jobs", Body::Empty, 400, "invalid_tenant").tenant(None),
        case("GET packs without tenant", Method::GET, format!("{ORCH}/packs"), Body::Empty, 400, "invalid_tenant").tenant(None),
        case("GET runs with a garbage cursor", Method::GET, format!("{ORCH}/runs?cursor=garbage"), Body::Empty, 400, "invalid_field"),
        case("GET /jobs/{id} without tenant", Method::GET, format!("/jobs/{leased}"), Body::Empty, 400, "invalid_tenant").tenant(None),
        case("cancel without tenant", Method::POST, format!("/jobs/{queued}/cancel"), Body::Empty, 400, "invalid_tenant").tenant(None),
        case("retry without tenant", Method::POST, format!("/jobs/{canceled}/retry"), Body::Empty, 400, "invalid_tenant").tenant(None),
        case("POST runs without tenant", Method::POST, &runs, Body::Json(json!({})), 400, "invalid_tenant").tenant(None),
        case("GET runs without tenant", Method::GET, format!("{ENGINE}/runs"), Body::Empty, 400, "invalid_tenant").tenant(None),
        case("GET run without tenant", Method::GET, format!("{ORCH}/runs/{run}"), Body::Empty, 400, "invalid_tenant").tenant(None),
        case("first-signal without tenant", Method::GET, format!("{ORCH}/runs/{run}/first-signal"), Body::Empty, 400, "invalid_tenant").tenant(None),
        case("timeline without tenant", Method::GET, &timeline, Body::Empty, 400, "invalid_tenant").tenant(None),
        case("lease without tenant", Method::POST, &lease_path, lease_ok(json!({})), 400, "invalid_tenant").tenant(None),
        case("progress without tenant", Method::POST, &progress, ok_lease(), 400, "invalid_tenant").tenant(None),
        case("complete without tenant", Method::POST, &complete, ok_lease(), 400, "invalid_tenant").tenant(None),
        case("fail without tenant", Method::POST, &fail, Body::Json(json!({"leaseId": lease_id, "message": "x"})), 400, "invalid_tenant").tenant(None),
        case("tenant of 65 chars", Method::GET, "/jobs", Body::Empty, 400, "invalid_tenant").tenant(Some(&long_tenant)),
        case("tenant with a slash", Method::POST, "/jobs", ok_submit(), 400, "invalid_tenant").tenant(Some("acme/evil")),
        case("tenant with a space", Method::GET, format!("{ORCH}/runs"), Body::Empty, 400, "invalid_tenant").tenant(Some("ac me")),
        case("empty tenant", Method::GET, format!("{ORCH}/runs/{run}"), Body::Empty, 400, "invalid_tenant").tenant(Some("")),
        case("tenant with non-ASCII", Method::POST, &lease_path, lease_ok(json!({})), 400, "invalid_tenant").tenant(Some("acmé")),
        // ---- tenant isolation: a foreign id is a 404 -----------------------
        case("foreign tenant GET job", Method::GET, format!("/jobs/{leased}"), Body::Empty, 404, "job_not_found").tenant(Some(OTHER)),
        case("foreign tenant cancel", Method::POST, format!("/jobs/{queued}/cancel"), Body::Empty, 404, "job_not_found").tenant(Some(OTHER)),
        case("foreign tenant retry", Method::POST, format!("/jobs/{canceled}/retry"), Body::Empty, 404, "job_not_found").tenant(Some(OTHER)),
        case("retry a queued job", Method::POST, format!("/jobs/{queued}/retry"), Body::Empty, 409, "not_retryable"),
        case("retry a leased job", Method::POST, format!("/jobs/{leased}/retry"), Body::Empty, 409, "not_retryable"),
        case("foreign tenant progress with the real lease", Method::POST, &progress, ok_lease(), 404, "job_not_found").tenant(Some(OTHER)),
        case("foreign tenant GET run", Method::GET, format!("{ORCH}/runs/{run}"), Body::Empty, 404, "run_not_found").tenant(Some(OTHER)),
        case("foreign tenant timeline", Method::GET, &timeline, Body::Empty, 404, "run_not_found").tenant(Some(OTHER)),
        case("foreign tenant first-signal", Method::GET, format!("{ENGINE}/runs/{run}/first-signal"), Body::Empty, 404, "run_not_found").tenant(Some(OTHER)),
        case("foreign tenant submit into the run", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "run_id": run})), 422, "run_not_found").tenant(Some(OTHER)),
        // ---- ids -----------------------------------------------------------
        case("GET run: runId not a UUID", Method::GET, format!("{ORCH}/runs/not-a-uuid"), Body::Empty, 400, "invalid_run_id"),
        case("GET run: runId one char short", Method::GET, format!("{ENGINE}/runs/{}", &run[..35]), Body::Empty, 400, "invalid_run_id"),
        case("first-signal: runId not a UUID", Method::GET, format!("{ORCH}/runs/xyz/first-signal"), Body::Empty, 400, "invalid_run_id"),
        case("timeline: runId not a UUID", Method::GET, format!("{ORCH}/runs/123/timeline"), Body::Empty, 400, "invalid_run_id"),
        case("GET job: jobId not a ULID", Method::GET, "/jobs/not-a-ulid", Body::Empty, 400, "invalid_job_id"),
        case("GET job: ULID overflow", Method::GET, "/jobs/8ZZZZZZZZZZZZZZZZZZZZZZZZZ", Body::Empty, 400, "invalid_job_id"),
        case("GET job: overflowing alias of a real job", Method::GET, format!("/jobs/{}", overflow(&leased)), Body::Empty, 400, "invalid_job_id"),
        case("cancel: overflowing alias of a real job", Method::POST, format!("/jobs/{}/cancel", overflow(&queued)), Body::Empty, 400, "invalid_job_id"),
        case("GET job: a UUID is not a ULID", Method::GET, format!("/jobs/{run}"), Body::Empty, 400, "invalid_job_id"),
        case("cancel: jobId not a ULID", Method::POST, "/jobs/42/cancel", Body::Empty, 400, "invalid_job_id"),
        case("retry: jobId not a ULID", Method::POST, "/jobs/42/retry", Body::Empty, 400, "invalid_job_id"),
        case("retry unknown ULID", Method::POST, format!("/jobs/{UNKNOWN_JOB}/retry"), Body::Empty, 404, "job_not_found"),
        case("progress: jobId not a ULID", Method::POST, format!("{ORCH}/jobs/nope/progress"), ok_lease(), 400, "invalid_job_id"),
        case("complete: jobId not a ULID", Method::POST, format!("{ENGINE}/jobs/nope/complete"), ok_lease(), 400, "invalid_job_id"),
        case("fail: jobId not a ULID", Method::POST, format!("{ORCH}/jobs/nope/fail"), Body::Json(json!({"leaseId": lease_id, "message": "x"})), 400, "invalid_job_id"),
        case("GET run unknown", Method::GET, format!("{ORCH}/runs/{UNKNOWN_RUN}"), Body::Empty, 404, "run_not_found"),
        case("first-signal unknown run", Method::GET, format!("{ORCH}/runs/{UNKNOWN_RUN}/first-signal"), Body::Empty, 404, "run_not_found"),
        case("timeline unknown run", Method::GET, format!("{ENGINE}/runs/{UNKNOWN_RUN}/timeline"), Body::Empty, 404, "run_not_found"),
        case("GET job unknown ULID", Method::GET, format!("/jobs/{UNKNOWN_JOB}"), Body::Empty, 404, "job_not_found"),
        case("cancel unknown ULID", Method::POST, format!("/jobs/{UNKNOWN_JOB}/cancel"), Body::Empty, 404, "job_not_found"),
        case("progress unknown ULID", Method::POST, format!("{ORCH}/jobs/{UNKNOWN_JOB}/progress"), ok_lease(), 404, "job_not_found"),
        // ---- POST /jobs bodies ---------------------------------------------
        case("submit: malformed JSON", Method::POST, "/jobs", raw(r#"{"pack": "external""#), 400, "invalid_body"),
        case("submit: empty body", Method::POST, "/jobs", Body::Raw(Vec::new()), 400, "invalid_body"),
        case("submit: whitespace body", Method::POST, "/jobs", raw("  \n "), 400, "invalid_body"),
        case("submit: JSON null", Method::POST, "/jobs", raw("null"), 400, "invalid_body"),
        case("submit: trailing garbage", Method::POST, "/jobs", raw(r#"{"pack": "external"} trailing"#), 400, "invalid_body"),
        case("submit: two JSON values", Method::POST, "/jobs", raw(r#"{"pack": "external"}{"pack": "external"}"#), 400, "invalid_body"),
        case("submit: pack is a number", Method::POST, "/jobs", Body::Json(json!({"pack": 5})), 400, "invalid_body"),
        case("submit: pack missing", Method::POST, "/jobs", Body::Json(json!({"inputs": {}})), 400, "invalid_body"),
        case("submit: inputs is an array", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "inputs": [1, 2]})), 400, "invalid_body"),
        case("submit: run_id is a number", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "run_id": 7})), 400, "invalid_body"),
        case("submit: unknown field", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "priority": 1})), 400, "invalid_body"),
        case("submit: camelCase field on the snake_case surface", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "runId": run})), 400, "invalid_body"),
        case("submit: duplicate field", Method::POST, "/jobs", raw(r#"{"pack": "external", "pack": "external"}"#), 400, "invalid_body"),
        case("submit: empty pack", Method::POST, "/jobs", Body::Json(json!({"pack": ""})), 400, "invalid_field"),
        case("submit: webhook not http(s)", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "state_webhook_url": "ftp://example.com/x"})), 400, "invalid_field"),
        case("submit: empty idempotency_key", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "idempotency_key": ""})), 400, "invalid_field"),
        case("submit: run_id not a UUID", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "run_id": "nope"})), 400, "invalid_run_id"),
        case("submit: undeclared pack", Method::POST, "/jobs", Body::Json(json!({"pack": "no-such-pack"})), 422, "unknown_pack"),
        case("submit: run_id names no run", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "run_id": UNKNOWN_RUN})), 422, "run_not_found"),
        case("submit: body over the limit", Method::POST, "/jobs", Body::Json(json!({"pack": "external", "inputs": {"pad": big}})), 413, "payload_too_large"),
        // ---- GET /jobs query ------------------------------------------------
        case("list jobs: limit=0", Method::GET, "/jobs?limit=0", Body::Empty, 400, "invalid_field"),
        case("list jobs: limit=201", Method::GET, "/jobs?limit=201", Body::Empty, 400, "invalid_field"),
        case("list jobs: limit=abc", Method::GET, "/jobs?limit=abc", Body::Empty, 400, "invalid_query"),
        case("list jobs: limit=-1", Method::GET, "/jobs?limit=-1", Body::Empty, 400, "invalid_query"),
        case("list jobs: unknown state", Method::GET, "/jobs?state=sleeping", Body::Empty, 400, "invalid_field"),
        case("list jobs: run_id not a UUID", Method::GET, "/jobs?run_id=nope", Body::Empty, 400, "invalid_run_id"),
        case("list jobs: cursor not a ULID", Method::GET, "/jobs?cursor=nope", Body::Empty, 400, "invalid_job_id"),
        // ---- runs ------------------------------------------------------------
        case("create run: existing runId", Method::POST, &runs, Body::Json(json!({"runId": run})), 409, "run_exists"),
        case("create run: existing runId in upper case", Method::POST, format!("{ENGINE}/runs"), Body::Json(json!({"runId": run.to_uppercase()})), 409, "run_exists"),
        case("create run: runId not a UUID", Method::POST, &runs, Body::Json(json!({"runId": "run-1"})), 400, "invalid_run_id"),
        case("create run: runId is a number", Method::POST, &runs, Body::Json(json!({"runId": 1})), 400, "invalid_body"),
        case("create run: labels is a list", Method::POST, &runs, Body::Json(json!({"labels": ["a"]})), 400, "invalid_body"),
        case("create run: unknown field", Method::POST, &runs, Body::Json(json!({"name": "x", "owner": "me"})), 400, "invalid_body"),
        case("create run: snake_case field on the camelCase surface", Method::POST, &runs, Body::Json(json!({"run_id": UNKNOWN_RUN})), 400, "invalid_body"),
        case("create run: malformed JSON", Method::POST, &runs, raw("{name:"), 400, "invalid_body"),
        case("create run: empty body", Method::POST, &runs, Body::Empty, 400, "invalid_body"),
        case("create run: name over 256 chars", Method::POST, &runs, Body::Json(json!({"name": "n".repeat(257)})), 400, "invalid_field"),
        case("create run: body over the limit", Method::POST, &runs, Body::Json(json!({"name": big})), 413, "payload_too_large"),
        case("list runs: limit=0", Method::GET, format!("{ORCH}/runs?limit=0"), Body::Empty, 400, "invalid_field"),
        case("list runs: limit=abc", Method::GET, format!("{ENGINE}/runs?limit=abc"), Body::Empty, 400, "invalid_query"),
        case("list runs: unknown status", Method::GET, format!("{ORCH}/runs?status=sleeping"), Body::Empty, 400, "invalid_field"),
        // ---- timeline ----------------------------------------------------------
        case("timeline: limit=0", Method::GET, format!("{timeline}?limit=0"), Body::Empty, 400, "invalid_field"),
        case("timeline: limit=1001", Method::GET, format!("{timeline}?limit=1001"), Body::Empty, 400, "invalid_field"),
        case("timeline: after=-1", Method::GET, format!("{timeline}?after=-1"), Body::Empty, 400, "invalid_query"),
        case("timeline: after=abc", Method::GET, format!("{timeline}?after=abc"), Body::Empty, 400, "invalid_query"),
        case("timeline: after=u64::MAX", Method::GET, format!("{timeline}?after=18446744073709551615"), Body::Empty, 400, "invalid_field"),
        case("timeline: after=i64::MAX+1", Method::GET, format!("{timeline}?after=9223372036854775808"), Body::Empty, 400, "invalid_field"),
        case("stream: lastEventId=u64::MAX", Method::GET, format!("{ORCH}/stream/runs/{run}?lastEventId=18446744073709551615"), Body::Empty, 400, "invalid_field"),
        // ---- media type: only JSON bodies (a cross-site form posts text/plain) ----
        case("submit as text/plain", Method::POST, "/jobs", Body::Typed(Some("text/plain"), br#"{"pack":"external"}"#.to_vec()), 415, "unsupported_media_type"),
        case("submit without Content-Type", Method::POST, "/jobs", Body::Typed(None, br#"{"pack":"external"}"#.to_vec()), 415, "unsupported_media_type"),
        case("create run as a form", Method::POST, &runs, Body::Typed(Some("application/x-www-form-urlencoded"), b"{}".to_vec()), 415, "unsupported_media_type"),
        case("complete as text/plain", Method::POST, &complete, Body::Typed(Some("text/plain;charset=UTF-8"), format!(r#"{{"leaseId":"{lease_id}"}}"#).into_bytes()), 415, "unsupported_media_type"),
        case("lease as application/jsonx", Method::POST, &lease_path, Body::Typed(Some("application/jsonx"), br#"{"workerId":"w9","packs":["external"]}"#.to_vec()), 415, "unsupported_media_type"),
        // ---- lease -------------------------------------------------------------
        case("lease: max 0", Method::POST, &lease_path, lease_ok(json!({"max": 0})), 400, "invalid_field"),
        case("lease: max 101", Method::POST, &lease_path, lease_ok(json!({"max": 101})), 400, "invalid_field"),
        case("lease: leaseSeconds 4", Method::POST, &lease_path, lease_ok(json!({"leaseSeconds": 4})), 400, "invalid_field"),
        case("lease: leaseSeconds 3601", Method::POST, format!("{ENGINE}/workers/lease"), lease_ok(json!({"leaseSeconds": 3601})), 400, "invalid_field"),
        case("lease: waitSeconds 31", Method::POST, &lease_path, lease_ok(json!({"waitSeconds": 31})), 400, "invalid_field"),
        case("lease: max negative", Method::POST, &lease_path, lease_ok(json!({"max": -1})), 400, "invalid_body"),
        case("lease: max is a string", Method::POST, &lease_path, lease_ok(json!({"max": "5"})), 400, "invalid_body"),
        case("lease: packs not a list", Method::POST, &lease_path, Body::Json(json!({"workerId": "w9", "packs": "external"})), 400, "invalid_body"),
        case("lease: workerId missing", Method::POST, &lease_path, Body::Json(json!({"packs": ["external"]})), 400, "invalid_body"),
        case("lease: unknown field", Method::POST, &lease_path, lease_ok(json!({"priority": 1})), 400, "invalid_body"),
        case("lease: empty workerId", Method::POST, &lease_path, Body::Json(json!({"workerId": "", "packs": ["external"]})), 400, "invalid_field"),
        case("lease: empty packs", Method::POST, &lease_path, Body::Json(json!({"workerId": "w9", "packs": []})), 400, "invalid_field"),
        case("lease: undeclared pack", Method::POST, &lease_path, Body::Json(json!({"workerId": "w9", "packs": ["external", "no-such-pack"]})), 422, "unknown_pack"),
        case("lease: empty body", Method::POST, &lease_path, Body::Empty, 400, "invalid_body"),
        case("lease: body over the limit", Method::POST, &lease_path, Body::Json(json!({"workerId": big, "packs": ["external"]})), 413, "payload_too_large"),
        // ---- progress / complete / fail ------------------------------------------
        case("progress: stale leaseId", Method::POST, &progress, Body::Json(json!({"leaseId": stale, "message": "hi"})), 409, "lease_lost"),
        case("progress: queued job (no lease)", Method::POST, format!("{ORCH}/jobs/{queued}/progress"), Body::Json(json!({"leaseId": lease_id})), 409, "lease_lost"),
        case("progress: percent 101", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "percent": 101})), 400, "invalid_field"),
        case("progress: percent -0.5", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "percent": -0.5})), 400, "invalid_field"),
        case("progress: percent is a string", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "percent": "50"})), 400, "invalid_body"),
        case("progress: negative stepIndex", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "stepIndex": -1})), 400, "invalid_field"),
        case("progress: stepIndex past the plan's bound", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "stepIndex": 1000})), 400, "invalid_field"),
        case("progress: empty stage", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "stage": ""})), 400, "invalid_field"),
        case("progress: log not a list", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "log": "line"})), 400, "invalid_body"),
        case("progress: leaseId missing", Method::POST, &progress, Body::Json(json!({"message": "hi"})), 400, "invalid_body"),
        case("progress: unknown field", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "eta": 5})), 400, "invalid_body"),
        case("progress: malformed JSON", Method::POST, &progress, raw(r#"{"leaseId": }"#), 400, "invalid_body"),
        case("progress: body over the limit", Method::POST, &progress, Body::Json(json!({"leaseId": lease_id, "message": big})), 413, "payload_too_large"),
        case("complete: stale leaseId", Method::POST, &complete, Body::Json(json!({"leaseId": stale, "result": {"ok": true}})), 409, "lease_lost"),
        case("complete: canceled job", Method::POST, format!("{ENGINE}/jobs/{canceled}/complete"), ok_lease(), 409, "lease_lost"),
        case("complete: leaseId is a number", Method::POST, &complete, Body::Json(json!({"leaseId": 1})), 400, "invalid_body"),
        case("complete: empty body", Method::POST, &complete, Body::Empty, 400, "invalid_body"),
        case("complete: body over the limit", Method::POST, &complete, Body::Json(json!({"leaseId": lease_id, "result": {"pad": big}})), 413, "payload_too_large"),
        case("fail: stale leaseId", Method::POST, &fail, Body::Json(json!({"leaseId": stale, "message": "boom"})), 409, "lease_lost"),
        case("fail: message missing", Method::POST, &fail, Body::Json(json!({"leaseId": lease_id})), 400, "invalid_body"),
        case("fail: retryable is a string", Method::POST, &fail, Body::Json(json!({"leaseId": lease_id, "message": "x", "retryable": "yes"})), 400, "invalid_body"),
        case("fail: code not snake_case", Method::POST, &fail, Body::Json(json!({"leaseId": lease_id, "message": "x", "code": "Bad-Code"})), 400, "invalid_field"),
        case("fail: logRange start 0", Method::POST, &fail, Body::Json(json!({"leaseId": lease_id, "message": "x", "logRange": {"start": 0, "end": 3}})), 400, "invalid_field"),
        case("fail: logRange end before start", Method::POST, &fail, Body::Json(json!({"leaseId": lease_id, "message": "x", "logRange": {"start": 5, "end": 3}})), 400, "invalid_field"),
        case("fail: body over the limit", Method::POST, &fail, Body::Json(json!({"leaseId": lease_id, "message": big})), 413, "payload_too_large"),
        // ---- cancel ---------------------------------------------------------------
        case("cancel a terminal job", Method::POST, format!("/jobs/{canceled}/cancel"), Body::Empty, 409, "invalid_state"),
        // ---- routing ----------------------------------------------------------------
        case("unknown route", Method::GET, "/nope", Body::Empty, 404, "not_found"),
        case("unknown route without tenant", Method::GET, "/nope", Body::Empty, 404, "not_found").tenant(None),
        case("unknown route under a prefix", Method::GET, format!("{ORCH}/nope"), Body::Empty, 404, "not_found"),
        case("unknown prefix", Method::GET, "/api/v1/scheduler/runs", Body::Empty, 404, "not_found"),
        case("unknown run sub-resource", Method::GET, format!("{ORCH}/runs/{run}/nope"), Body::Empty, 404, "not_found"),
        case("unknown job sub-resource", Method::POST, format!("/jobs/{queued}/restart"), Body::Empty, 404, "not_found"),
        case("trailing slash", Method::GET, "/jobs/", Body::Empty, 404, "not_found"),
        case("DELETE /jobs", Method::DELETE, "/jobs", Body::Empty, 405, "method_not_allowed"),
        case("PUT /jobs/{id}", Method::PUT, format!("/jobs/{queued}"), ok_submit(), 405, "method_not_allowed"),
        case("GET cancel", Method::GET, format!("/jobs/{queued}/cancel"), Body::Empty, 405, "method_not_allowed"),
        case("DELETE run", Method::DELETE, format!("{ORCH}/runs/{run}"), Body::Empty, 405, "method_not_allowed"),
        case("PATCH runs", Method::PATCH, format!("{ENGINE}/runs"), Body::Json(json!({})), 405, "method_not_allowed"),
        case("POST first-signal", Method::POST, format!("{ORCH}/runs/{run}/first-signal"), Body::Empty, 405, "method_not_allowed"),
        case("POST timeline", Method::POST, &timeline, Body::Empty, 405, "method_not_allowed"),
        case("GET lease", Method::GET, &lease_path, Body::Empty, 405, "method_not_allowed"),
        case("GET progress", Method::GET, &progress, Body::Empty, 405, "method_not_allowed"),
        case("PUT complete", Method::PUT, &complete, ok_lease(), 405, "method_not_allowed"),
        case("DELETE fail", Method::DELETE, &fail, Body::Empty, 405, "method_not_allowed"),
        case("POST packs", Method::POST, format!("{ORCH}/packs"), Body::Empty, 405, "method_not_allowed"),
        case("POST healthz", Method::POST, "/healthz", Body::Empty, 405, "method_not_allowed"),
        case("PUT readyz", Method::PUT, "/readyz", Body::Empty, 405, "method_not_allowed"),
        case("POST metrics", Method::POST, "/metrics", Body::Empty, 405, "method_not_allowed"),
        case("DELETE openapi.json", Method::DELETE, "/openapi.json", Body::Empty, 405, "method_not_allowed"),
        case("wrong method without tenant", Method::DELETE, "/jobs", Body::Empty, 405, "method_not_allowed").tenant(None),
    ];
    assert!(cases.len() >= 35, "at least 35 cases, got {}", cases.len());

    let mut failed = Vec::new();
    for case in &cases {
        let outcome = AssertUnwindSafe(async {
            let res = send(&app, case).await;
            assert_problem(res, case.status, case.code).await;
        })
        .catch_unwind()
        .await;
        if outcome.is_err() {
            eprintln!(
                "case `{}` ({} {}) failed: expected {} {}",
                case.name, case.method, case.path, case.status, case.code
            );
            failed.push(case.name);
        }
    }
    // Two tenants in one request: refused, not resolved to either.
    let res = app
        .client
        .post(format!("{}/jobs", app.address))
        .header("X-Tenant-Id", TENANT)
        .header("X-Tenant-Id", OTHER)
        .json(&json!({"pack": "external"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_tenant").await;

    // Nothing changed in the store; out-of-range leases leased nothing.
    let after = fingerprint(&app, &run, &seeded).await;
    let changed: Vec<&String> = before
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, value)| &after[key.as_str()] != *value)
        .map(|(key, _)| key)
        .collect();
    for key in &changed {
        eprintln!(
            "`{key}` changed\n before: {}\n after:  {}",
            before[key.as_str()],
            after[key.as_str()]
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed: {failed:#?}",
        failed.len(),
        cases.len()
    );
    assert!(
        changed.is_empty(),
        "bad requests changed the store: {changed:?}"
    );
    assert_eq!(after, before);

    // Nothing panicked: the server still answers, and normal requests work.
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "healthz");
    let res = app
        .worker(
            &leased,
            "progress",
            json!({"leaseId": lease_id, "percent": 50}),
        )
        .await;
    assert_eq!(res.status(), 200, "progress with the real lease");
    let jobs = app
        .lease(json!({"workerId": "w2", "packs": ["external"], "max": 100}))
        .await;
    let ids: Vec<&str> = jobs.iter().filter_map(|j| j["jobId"].as_str()).collect();
    assert_eq!(
        ids,
        [queued.as_str()],
        "the queued job is still leasable, once"
    );
    let (_, new_run) = app.submit_job(None).await;
    assert_ne!(new_run, run);
}

/// A number JCS cannot write (`1e400` parses, but is past the double range)
/// used to reach the event hashing in the writer and panic there. It is now
/// refused where it enters, and the server keeps serving.
#[actix_rt::test]
async fn a_number_with_no_canonical_form_is_refused_where_it_enters() {
    let app = crate::helpers::spawn_app().await;
    let raw = |path: &str, body: &str| {
        app.req(Method::POST, path)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let res = raw("/jobs", r#"{"pack":"external","inputs":{"x":1e400}}"#).await.unwrap();
    assert_problem(res, 400, "invalid_field").await;
    let res = raw(&format!("{ORCH}/runs"), r#"{"labels":{"x":[-1e400]}}"#).await.unwrap();
    assert_problem(res, 400, "invalid_field").await;
    let (job, _) = app.submit_job(None).await;
    let lease = app.lease_one().await;
    let body = format!(r#"{{"leaseId":"{}","result":{{"big":1E+999}}}}"#, lease["leaseId"].as_str().unwrap());
    let res = raw(&format!("{ORCH}/jobs/{job}/complete"), &body).await.unwrap();
    assert_problem(res, 400, "invalid_field").await;
    // Still serving and still writing; big integers are still exact.
    let done = json!({"leaseId": lease["leaseId"], "result": {"n": 123456789012345678901234567890u128}});
    assert_eq!(app.worker(&job, "complete", done).await.status(), 200);
    assert_eq!(app.job(&job).await["result"]["n"].to_string(), "123456789012345678901234567890");
}

/// Unknown query parameters (a cache buster `?_=…`, a key of another API)
/// are ignored on every GET route, streams included: the answer is the one
/// without them (ADR 0030). Known keys with bad values are still 400 (the
/// table above).
#[actix_rt::test]
async fn unknown_query_parameters_are_ignored() {
    let app = crate::helpers::spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let get = |path: String| {
        let app = &app;
        async move {
            let res = app.get(&path).send().await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            res.json::<Value>().await.unwrap()
        }
    };
    let timeline = format!("{ORCH}/runs/{run}/timeline");
    let cases = [
        ("/jobs".to_owned(), "/jobs?colour=red&_=1700000000000".to_owned()),
        (format!("{ORCH}/runs"), format!("{ORCH}/runs?state=running")),
        (timeline.clone(), format!("{timeline}?from=1&_=1700000000000")),
        (format!("/jobs/{job}"), format!("/jobs/{job}?_=1")),
    ];
    for (plain, with_unknown) in cases {
        assert_eq!(get(with_unknown).await, get(plain).await);
    }
    for path in [
        format!("{ORCH}/stream/runs/{run}?_=1700000000000"),
        format!("{ENGINE}/stream/jobs/{job}?events=job&cachebust=1"),
        format!("{ORCH}/stream/pack-runs/{job}?_=1&lastEventId=0"),
    ] {
        let res = app.get(&path).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            crate::helpers::header(&res, "content-type"),
            "text/event-stream",
            "{path}"
        );
    }
    let res = app
        .get(&format!("{ORCH}/stream/runs/{run}?events=nope&_=1"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_field").await;
}
