//! State webhooks (SPEC §7.2) against an in-test receiver: order, payloads,
//! idempotency keys, signatures (verified by Python), retries, timeouts,
//! redirects, 410, Retry-After, the SSRF guard and delivery status.
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) mod receiver;
use receiver::*;

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PLAIN: &str = "plain-secret";

/// Allowed loopback, 1 s steps, a 1 s timeout, both kinds of secret.
async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let steps: Vec<String> = (0..5)
        .map(|i| format!("Webhooks__RetryScheduleSeconds__{i}"))
        .collect();
    let mut settings = vec![
        ("Webhooks__AllowedNetworks__0", "127.0.0.0/8"),
        ("Webhooks__TimeoutSeconds", "1"),
        ("Webhooks__Secrets__0", WHSEC),
        ("Webhooks__Secrets__1", PLAIN),
    ];
    settings.extend(steps.iter().map(|k| (k.as_str(), "1")));
    settings.extend_from_slice(extra);
    spawn_with(&settings).await
}

async fn submit_hooked(app: &TestApp, url: &str) -> String {
    let res = app
        .submit(json!({"pack": "external", "state_webhook_url": url}))
        .await;
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.unwrap();
    v["job_id"].as_str().unwrap().to_owned()
}

/// Lease, report progress and complete the (only queued) job.
async fn run_to_done(app: &TestApp, job: &str, result: Value) {
    let l = app.lease_one().await;
    assert_eq!(l["jobId"], job);
    let lease = l["leaseId"].clone();
    let p = json!({"leaseId": lease, "message": "half way", "percent": 50});
    assert_eq!(app.worker(job, "progress", p).await.status(), 200);
    let c = json!({"leaseId": lease, "result": result});
    assert_eq!(app.worker(job, "complete", c).await.status(), 200);
}

/// Wait until every delivery of the job is settled; returns them.
async fn settled(app: &TestApp, job: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = app.job(job).await;
        let ds = got["webhook"]["deliveries"].as_array().unwrap().clone();
        let open = ds
            .iter()
            .any(|d| d["status"] == "pending" || d["status"] == "sending");
        if ds.len() >= n && !open {
            return ds;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never settled: {ds:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn statuses(ds: &[Value]) -> Vec<&str> {
    ds.iter().map(|d| d["status"].as_str().unwrap()).collect()
}

#[actix_web::test]
async fn the_full_lifecycle_arrives_in_order_with_payloads_keys_and_verifiable_signatures() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    run_to_done(&app, &job, json!({"answer": 42})).await;
    let hits = rx.wait_count(4).await;
    let run_id = app.job(&job).await["run_id"].clone();
    let want = keys(&job, &["queued", "loading", "working", "done"]);
    assert_eq!(firsts(&hits), want, "state order");
    assert_eq!(hits.len(), 4, "each state once when the receiver says 2xx");
    let previous = [
        Value::Null,
        json!("queued"),
        json!("loading"),
        json!("working"),
    ];
    for (i, hit) in hits.iter().enumerate() {
        assert_eq!((hit.method.as_str(), hit.path.as_str()), ("POST", "/hook"));
        assert_eq!(hit.header("content-type"), "application/json");
        let body = hit.json();
        assert_eq!(body["idempotency_key"], want[i], "body key");
        assert_eq!(hit.id(), want[i], "webhook-id is the idempotency key");
        assert_eq!(body["job_id"], job);
        assert_eq!(body["run_id"], run_id);
        assert_eq!(body["state"], want[i].split(':').nth(1).unwrap());
        assert_eq!(body["previous_state"], previous[i]);
        assert!(body["attempt"].is_number());
        let at = body["occurred_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z'));
        assert!(body.get("error").is_none(), "no error on success: {body}");
        verify_with_python(hit, &[WHSEC, PLAIN]);
    }
    assert_eq!(hits[3].json()["result"], json!({"answer": 42}));
    // The result's `completion` artifact rides along, inline (it is small).
    let artifacts = hits[3].json()["artifacts"].clone();
    assert_eq!(artifacts[0]["name"], "completion", "{artifacts}");
    assert!(artifacts[0]["content_base64"].is_string() && artifacts[0]["url"].is_string());
    assert!(hits[0].json().get("result").is_none());

    let ds = settled(&app, &job, 4).await;
    let got = app.job(&job).await;
    assert_eq!(got["webhook"]["url"], rx.url());
    assert_eq!(statuses(&ds), ["delivered"; 4]);
    for (d, key) in ds.iter().zip(&want) {
        assert_eq!(d["idempotency_key"], *key);
        assert_eq!(
            (d["attempts"].as_i64(), d["last_status_code"].as_i64()),
            (Some(1), Some(200))
        );
        assert!(d["delivered_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(d["last_error"].is_null() && d["next_attempt_at"].is_null());
    }
}

#[actix_web::test]
async fn a_failure_and_a_requeue_are_sent_with_error_and_attempt() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    let l = app.lease_one().await;
    let fail =
        json!({"leaseId": l["leaseId"], "retryable": true, "code": "network", "message": "flaky"});
    assert_eq!(app.worker(&job, "fail", fail).await.status(), 200);
    let l = app.lease_one().await;
    let fail = json!({"leaseId": l["leaseId"], "code": "bad_input", "message": "nope"});
    assert_eq!(app.worker(&job, "fail", fail).await.status(), 200);
    let hits = rx.wait_count(5).await;
    let ids: Vec<&str> = hits.iter().map(Hit::id).collect();
    assert_eq!(
        ids,
        keys(&job, &["queued", "loading", "queued:1", "loading:2", "failed:2"]),
        "a requeue sends `queued` again, keyed with its attempt (SPEC §7.2)"
    );
    let bodies: Vec<Value> = hits.iter().map(Hit::json).collect();
    assert_eq!(bodies[2]["previous_state"], "loading");
    let attempts: Vec<i64> = bodies.iter().map(|b| b["attempt"].as_i64().unwrap()).collect();
    assert_eq!(attempts, [0, 1, 1, 2, 2], "`attempt` in every body");
    for (body, id) in bodies.iter().zip(&ids) {
        assert_eq!(body["idempotency_key"], *id, "webhook-id is the body's key");
    }
    assert_eq!(bodies[4]["state"], "failed");
    assert_eq!(bodies[4]["previous_state"], "loading");
    assert_eq!(
        bodies[4]["error"],
        json!({"code": "bad_input", "message": "nope"})
    );
    assert!(bodies[4].get("result").is_none());
}

#[actix_web::test]
async fn a_job_requeued_by_lease_expiry_sends_two_queued_with_different_keys() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    let far_future = chrono::Utc::now().timestamp_millis() + 3_600_000;
    assert_eq!(app.lease_one().await["attempt"], 1);
    let swept = app.state.store.sweep_expired_leases(far_future).await;
    assert_eq!(swept.unwrap(), 1, "the lease expired, the job is requeued");
    assert_eq!(app.lease_one().await["attempt"], 2);
    let hits = rx.wait_count(4).await;
    let ids: Vec<&str> = hits.iter().map(Hit::id).collect();
    assert_eq!(
        ids,
        keys(&job, &["queued", "loading", "queued:1", "loading:2"]),
        "a receiver deduplicating on webhook-id keeps both `queued`"
    );
    let bodies: Vec<Value> = hits.iter().map(Hit::json).collect();
    let queued: Vec<&Value> = bodies.iter().filter(|b| b["state"] == "queued").collect();
    assert_eq!(queued.len(), 2);
    assert_ne!(queued[0]["idempotency_key"], queued[1]["idempotency_key"]);
    assert_eq!((queued[0]["attempt"].as_i64(), queued[1]["attempt"].as_i64()), (Some(0), Some(1)));
    assert_eq!(queued[1]["previous_state"], "loading");
    let ds = settled(&app, &job, 4).await;
    let stored: Vec<&str> = ds.iter().map(|d| d["idempotency_key"].as_str().unwrap()).collect();
    assert_eq!(stored, ids, "GET /jobs lists the deliveries by the same keys");
}

#[actix_web::test]
async fn a_canceled_job_sends_canceled() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    let res = app
        .post(&format!("/jobs/{job}/cancel"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let hits = rx.wait_count(2).await;
    assert_eq!(firsts(&hits), keys(&job, &["queued", "canceled"]));
    assert_eq!(hits[1].json()["previous_state"], "queued");
}

#[actix_web::test]
async fn a_500ing_receiver_gets_retries_and_the_job_is_unaffected() {
    let app = app_with(&[]).await;
    // 500s asking for 2 s each: the webhooks need >= 4 s, the job does not.
    let rx = Receiver::start(vec![Answer::RetryAfter(500, 2), Answer::RetryAfter(500, 2)]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    run_to_done(&app, &job, json!({"ok": true})).await;
    let got = app.job(&job).await;
    assert_eq!(got["state"], "done", "the job finished without waiting");
    assert_eq!(got["result"], json!({"ok": true}));
    assert!(
        rx.hits().len() < 6,
        "the job was done before its webhooks were"
    );

    let hits = rx.wait_count(6).await;
    let ids: Vec<&str> = hits.iter().map(Hit::id).collect();
    assert_eq!(
        ids,
        keys(
            &job,
            &["queued", "queued", "queued", "loading", "working", "done"]
        ),
        "retries of `queued` come before any later state"
    );
    for pair in hits[..3].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(1900),
            "retried after 2 s: {gap:?}"
        );
    }
    let ds = settled(&app, &job, 4).await;
    assert_eq!(statuses(&ds), ["delivered"; 4]);
    assert_eq!(ds[0]["attempts"], 3);
    let after = app.job(&job).await;
    assert_eq!(
        (&after["state"], &after["finished_at"], &after["attempt"]),
        (&got["state"], &got["finished_at"], &got["attempt"]),
        "deliveries never change the job"
    );
}

#[actix_web::test]
async fn a_hanging_receiver_times_out_and_is_retried() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![Answer::Hang(Duration::from_secs(4))]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    let hits = rx.wait_count(2).await;
    assert_eq!(firsts(&hits), keys(&job, &["queued"]));
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_millis(1500) && gap < Duration::from_secs(4),
        "1 s timeout then ~1 s backoff, not the 4 s hang: {gap:?}"
    );
    let ds = settled(&app, &job, 1).await;
    assert_eq!(
        (ds[0]["status"].as_str(), ds[0]["attempts"].as_i64()),
        (Some("delivered"), Some(2))
    );
}

#[actix_web::test]
async fn gone_stops_this_and_every_later_delivery_of_the_job() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![Answer::Status(200), Answer::Status(410)]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    run_to_done(&app, &job, json!({})).await;
    let hits = rx.wait_count(2).await;
    assert_eq!(firsts(&hits), keys(&job, &["queued", "loading"]));
    let ds = settled(&app, &job, 4).await;
    assert_eq!(statuses(&ds), ["delivered", "gone", "gone", "gone"]);
    assert_eq!(ds[1]["last_status_code"], 410);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.hits().len(), 2, "nothing after the 410");
}

#[actix_web::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![
        Answer::Redirect(302, "/elsewhere"),
        Answer::Redirect(307, "/elsewhere"),
    ])
    .await;
    let job = submit_hooked(&app, &rx.url()).await;
    rx.wait_count(2).await;
    let got = app.job(&job).await;
    let d = &got["webhook"]["deliveries"][0];
    // The first or second redirect, whichever was recorded last.
    assert!(
        d["last_status_code"] == 302 || d["last_status_code"] == 307,
        "{d}"
    );
    assert!(
        d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not followed") && e.contains("/elsewhere")),
        "{d}"
    );
    let hits = rx.wait_count(3).await;
    assert!(
        hits.iter().all(|h| h.path == "/hook"),
        "the Location target received nothing"
    );
    assert_eq!(firsts(&hits), keys(&job, &["queued"]));
    let ds = settled(&app, &job, 1).await;
    assert_eq!(
        (ds[0]["status"].as_str(), ds[0]["attempts"].as_i64()),
        (Some("delivered"), Some(3))
    );
}

#[actix_web::test]
async fn retry_after_in_seconds_or_as_a_date_delays_the_next_attempt() {
    let app = app_with(&[]).await;
    let rx = Receiver::start(vec![
        Answer::RetryAfter(503, 2),
        Answer::RetryAfterDate(429, 3),
    ])
    .await;
    let job = submit_hooked(&app, &rx.url()).await;
    let hits = rx.wait_count(3).await;
    assert_eq!(firsts(&hits), keys(&job, &["queued"]));
    let first = hits[1].at - hits[0].at;
    let second = hits[2].at - hits[1].at;
    assert!(
        first >= Duration::from_millis(1900),
        "Retry-After: 2 → {first:?}"
    );
    assert!(
        second >= Duration::from_millis(1900),
        "Retry-After: <date +3 s> → {second:?}"
    );
    assert!(first < Duration::from_secs(10) && second < Duration::from_secs(10));
}

#[actix_web::test]
async fn a_loopback_receiver_is_refused_without_allowed_networks() {
    let app = spawn_app().await;
    let rx = Receiver::start(vec![]).await;
    let job = submit_hooked(&app, &rx.url()).await;
    let by_name = rx.url().replace("127.0.0.1", "localhost");
    let named = submit_hooked(&app, &by_name).await;
    let ds = settled(&app, &job, 1).await;
    assert_eq!(ds[0]["status"], "failed");
    assert_eq!(ds[0]["attempts"], 1, "a refusal is not retried");
    let err = ds[0]["last_error"].as_str().unwrap();
    assert!(
        err.contains("127.0.0.1") && err.contains("AllowedNetworks"),
        "{err}"
    );
    let ds = settled(&app, &named, 1).await;
    assert_eq!(ds[0]["status"], "failed");
    assert!(
        ds[0]["last_error"].as_str().unwrap().contains("loopback"),
        "{ds:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.hits().is_empty(), "the receiver got nothing");
}

#[actix_web::test]
async fn a_job_without_a_url_has_no_webhook() {
    let app = spawn_app().await;
    let (job, _) = app.submit_job(None).await;
    let got = app.job(&job).await;
    assert!(got.get("webhook").is_some_and(Value::is_null), "{got}");
    assert_eq!(got["state"], "queued", "existing fields stay");
}

#[actix_web::test]
async fn many_jobs_keep_their_own_order_and_an_idle_dispatcher_makes_no_store_calls() {
    let app = app_with(&[
        ("Webhooks__MaxConcurrency", "2"),
        ("Jobs__LeaseSweepIntervalSeconds", "3600"),
    ])
    .await;
    let rx = Receiver::start(vec![]).await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let job = submit_hooked(&app, &rx.url()).await;
        run_to_done(&app, &job, json!({})).await;
        jobs.push(job);
    }
    let hits = rx.wait_count(16).await;
    for job in &jobs {
        let mine: Vec<Hit> = hits
            .iter()
            .filter(|h| h.id().starts_with(job.as_str()))
            .cloned()
            .collect();
        assert_eq!(
            firsts(&mine),
            keys(job, &["queued", "loading", "working", "done"])
        );
    }
    for job in &jobs {
        settled(&app, job, 4).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = app.store_calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.store_calls(),
        before,
        "an idle dispatcher does not poll"
    );
}

#[actix_web::test]
async fn bad_webhook_settings_stop_start_up_naming_the_key() {
    use runsignal::config::Config;
    let load = |k: &str, v: &str| {
        Config::load_from(None, vec![(format!("RUNSIGNAL__{k}"), v.to_owned())])
            .unwrap_err()
            .to_string()
    };
    let err = load("Webhooks__AllowedNetworks__0", "10.0.0.0/33");
    assert!(err.contains("Webhooks.AllowedNetworks[0]"), "{err}");
    let err = load("Webhooks__MaxConcurrency", "0");
    assert!(err.contains("Webhooks.MaxConcurrency"), "{err}");
    let ok = Config::load_from(
        None,
        vec![(
            "RUNSIGNAL__Webhooks__AllowedNetworks__0".into(),
            "10.1.2.3".into(),
        )],
    )
    .unwrap();
    assert_eq!(ok.webhooks.max_concurrency, 8, "default");
}

/// Submit an `external` job with a webhook for `tenant`.
async fn submit_hooked_as(app: &TestApp, tenant: &str, url: &str) -> String {
    let body = json!({"pack": "external", "state_webhook_url": url});
    let res = app
        .req_as(tenant, reqwest::Method::POST, "/jobs")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.unwrap();
    v["job_id"].as_str().unwrap().to_owned()
}

/// SPEC §11: a tenant whose receiver hangs holds at most
/// `Webhooks.MaxInFlightPerTenant` delivery slots, so another tenant's
/// webhook goes out while all of them still hang.
#[actix_web::test]
async fn a_hanging_receiver_of_one_tenant_does_not_hold_up_another_tenants_webhook() {
    // Timeouts far beyond the test: a held request frees no slot.
    let app = app_with(&[
        ("Webhooks__TimeoutSeconds", "120"),
        ("Webhooks__MaxConcurrency", "8"),
        ("Webhooks__MaxInFlightPerTenant", "2"),
    ])
    .await;
    let noisy = Receiver::start(vec![Answer::Hold; 40]).await;
    let victim = Receiver::start(vec![]).await;
    for _ in 0..40 {
        submit_hooked_as(&app, "noisy", &noisy.url()).await;
    }
    noisy.wait_count(2).await;
    let job = submit_hooked_as(&app, "victim", &victim.url()).await;
    let hits = victim.wait_count(1).await;
    assert_eq!(hits[0].id(), format!("{job}:queued"));
    // Every noisy request is still held (none was released): the victim's
    // slot was never one of theirs, and they never had more than their share.
    assert_eq!(noisy.hits().len(), 2, "noisy holds MaxInFlightPerTenant slots");
    noisy.release(40);
}

/// SPEC §11: a freed slot goes round robin across tenants, not to the
/// oldest due delivery: with one slot, the victim's webhook is the next one
/// sent after the first of the noisy tenant's 5.
#[actix_web::test]
async fn a_freed_delivery_slot_goes_round_robin_across_tenants() {
    let app = app_with(&[
        ("Webhooks__TimeoutSeconds", "120"),
        ("Webhooks__MaxConcurrency", "1"),
        ("Webhooks__MaxInFlightPerTenant", "1"),
    ])
    .await;
    let noisy = Receiver::start(vec![Answer::Hold; 5]).await;
    let victim = Receiver::start(vec![]).await;
    for _ in 0..5 {
        submit_hooked_as(&app, "noisy", &noisy.url()).await;
    }
    noisy.wait_count(1).await;
    submit_hooked_as(&app, "victim", &victim.url()).await;
    noisy.release(1);
    let got = victim.wait_count(1).await;
    // The one slot served the victim before the noisy tenant's second
    // delivery (which is held until released, so it could not have ended).
    let second = noisy.wait_count(2).await;
    assert!(got[0].at < second[1].at, "victim before noisy's second");
    noisy.release(5);
}

#[actix_web::test]
async fn max_in_flight_per_tenant_defaults_to_a_quarter_of_the_slots_and_is_checked() {
    use runsignal::config::Config;
    let with = |vars: &[(&str, &str)]| {
        Config::load_from(
            None,
            vars.iter()
                .map(|(k, v)| (format!("RUNSIGNAL__{k}"), (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
    };
    let c = with(&[]).unwrap();
    assert_eq!(c.webhooks.per_tenant_slots(), 2, "8 slots: 2 per tenant");
    let c = with(&[("Webhooks__MaxConcurrency", "3")]).unwrap();
    assert_eq!(c.webhooks.per_tenant_slots(), 1, "at least 1");
    let c = with(&[("Webhooks__MaxInFlightPerTenant", "5")]).unwrap();
    assert_eq!(c.webhooks.per_tenant_slots(), 5);
    let err = with(&[("Webhooks__MaxInFlightPerTenant", "5000")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Webhooks.MaxInFlightPerTenant"), "{err}");
}
