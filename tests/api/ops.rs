//! Operational routes (SPEC §2): `/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json`.
use std::collections::{BTreeSet, HashSet};

use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Every `{prefix}` route, as (method, path after the prefix).
const PREFIXED: &[(&str, &str)] = &[
    ("get", "/runs"),
    ("post", "/runs"),
    ("get", "/runs/{runId}"),
    ("get", "/runs/{runId}/first-signal"),
    ("head", "/runs/{runId}/first-signal"),
    ("get", "/runs/{runId}/timeline"),
    ("post", "/workers/lease"),
    ("post", "/jobs/{jobId}/progress"),
    ("post", "/jobs/{jobId}/complete"),
    ("post", "/jobs/{jobId}/fail"),
    ("get", "/packs"),
    ("get", "/stream/runs/{runId}"),
    ("get", "/stream/jobs/{jobId}"),
    ("get", "/stream/pack-runs/{jobId}"),
    ("get", "/ws"),
];

/// Every unprefixed route.
const UNPREFIXED: &[(&str, &str)] = &[
    ("get", "/jobs"),
    ("post", "/jobs"),
    ("get", "/jobs/{jobId}"),
    ("post", "/jobs/{jobId}/cancel"),
    ("post", "/jobs/{jobId}/retry"),
    ("get", "/jobs/{jobId}/artifacts/{name}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

fn all_routes() -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for prefix in [ORCH, ENGINE] {
        for (method, path) in PREFIXED {
            routes.push((method.to_string(), format!("{prefix}{path}")));
        }
    }
    for (method, path) in UNPREFIXED {
        routes.push((method.to_string(), path.to_string()));
    }
    routes
}

async fn openapi(app: &TestApp) -> Value {
    let res = app.get("/openapi.json").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        header(&res, "content-type").starts_with("application/json"),
        "{}",
        header(&res, "content-type")
    );
    let text = res.text().await.unwrap();
    serde_json::from_str(&text).expect("/openapi.json is valid JSON")
}

async fn metrics_text(app: &TestApp) -> String {
    let res = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        header(&res, "content-type").starts_with("text/plain"),
        "Prometheus text: {}",
        header(&res, "content-type")
    );
    res.text().await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[actix_web::test]
async fn healthz_is_up_without_a_tenant() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("X-Correlation-Id", "health-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-correlation-id"), "health-probe-1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok"}));
}

#[actix_web::test]
async fn readyz_is_ready_when_the_store_is_reachable() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        !header(&res, "x-correlation-id").is_empty(),
        "generated id echoed"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"status": "ready"}));
}

#[actix_web::test]
async fn metrics_count_requests_by_route_pattern_and_first_signal_cache_results() {
    let app = spawn_app().await;
    let (_, run) = app.submit_job(None).await;
    // A fresh process on the same database: the first read is a cold miss,
    // the second a hit from the resident run actor.
    let app = app.restart(&[]).await;
    let cold = app.first_signal(&run).await;
    assert_eq!(cold.status(), 200);
    assert_eq!(header(&cold, "cache-status"), "miss");
    let warm = app.first_signal(&run).await;
    assert_eq!(warm.status(), 200);
    assert_eq!(header(&warm, "cache-status"), "hit");
    let res = app
        .get(&format!("{ENGINE}/runs/not-a-uuid/first-signal"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let text = metrics_text(&app).await;
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("runsignal_http_requests_total{"))
        .collect();
    let orch_ok = requests.iter().find(|l| {
        l.contains(r#"route="/api/v1/orchestrator/runs/{runId}/first-signal""#)
            && l.contains(r#"method="GET""#)
            && l.contains(r#"status="200""#)
    });
    let count = orch_ok
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(count, Some(2.0), "two 200 first-signal reads:\n{text}");
    assert!(
        requests.iter().any(|l| {
            l.contains(r#"route="/api/v1/jobengine/runs/{runId}/first-signal""#)
                && l.contains(r#"status="400""#)
        }),
        "the other prefix and the status are labels:\n{text}"
    );
    assert!(
        !text.contains(&run) && !text.contains("not-a-uuid"),
        "labels carry route patterns, never raw paths:\n{text}"
    );

    assert!(text.contains("# TYPE runsignal_resident_run_actors gauge"));
    let resident = sample(&text, "runsignal_resident_run_actors").expect("resident gauge");
    assert!(resident >= 1.0, "the run's actor is resident: {resident}");

    assert!(text.contains("# TYPE runsignal_first_signal_cache_total counter"));
    assert_eq!(
        sample(&text, r#"runsignal_first_signal_cache_total{result="hit"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"runsignal_first_signal_cache_total{result="miss"}"#
        ),
        Some(1.0),
        "{text}"
    );

    assert!(text.contains("# TYPE runsignal_first_signal_cold_path_seconds histogram"));
    for le in ["0.0005", "0.01", "1", "5", "+Inf"] {
        let series = format!(r#"runsignal_first_signal_cold_path_seconds_bucket{{le="{le}"}}"#);
        assert!(sample(&text, &series).is_some(), "bucket {le}:\n{text}");
    }
    let cold_count =
        sample(&text, "runsignal_first_signal_cold_path_seconds_count").expect("histogram count");
    assert!(cold_count >= 1.0, "the cold read was timed: {cold_count}");
    assert_eq!(
        sample(
            &text,
            r#"runsignal_first_signal_cold_path_seconds_bucket{le="+Inf"}"#
        ),
        Some(cold_count)
    );
    assert!(sample(&text, "runsignal_first_signal_cold_path_seconds_sum").is_some());
}

#[actix_web::test]
async fn openapi_lists_every_route_under_both_prefixes() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let version = doc["openapi"].as_str().expect("openapi version field");
    assert!(version.starts_with("3."), "{version}");
    assert_eq!(doc["info"]["title"], "runsignal");
    assert!(doc["info"]["version"].is_string());

    let paths = doc["paths"].as_object().expect("paths object");
    for (method, path) in all_routes() {
        let op = &paths
            .get(&path)
            .unwrap_or_else(|| panic!("{path} is documented"))[&method];
        assert!(op.is_object(), "{method} {path} is documented");
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has responses"
        );
    }
    // Nothing documented that is not routed.
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let routed: BTreeSet<String> = all_routes().into_iter().map(|(_, p)| p).collect();
    let routed: BTreeSet<&str> = routed.iter().map(String::as_str).collect();
    assert_eq!(documented, routed);

    // Operation ids are unique across the document.
    let mut ids = HashSet::new();
    for item in paths.values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op["operationId"].as_str() {
                assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            }
        }
    }
}

#[actix_web::test]
async fn openapi_describes_first_signal_statuses_headers_and_problems() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    for prefix in [ORCH, ENGINE] {
        let path = format!("{prefix}/runs/{{runId}}/first-signal");
        let get = &doc["paths"][&path]["get"];
        assert!(get.is_object(), "GET {path}");
        let responses = get["responses"].as_object().unwrap();
        for status in ["200", "204", "304", "400", "404"] {
            assert!(responses.contains_key(status), "{path} documents {status}");
        }
        assert!(responses["200"]["content"]["application/json"]["schema"].is_object());
        assert!(responses["304"].get("content").is_none(), "304 has no body");
        for h in [
            "ETag",
            "Cache-Control",
            "Cache-Status",
            "X-FirstSignal-Source",
        ] {
            assert!(
                responses["200"]["headers"][h].is_object(),
                "200 declares {h}"
            );
            assert!(
                responses["304"]["headers"][h].is_object(),
                "304 declares {h}"
            );
        }
        let problem = &responses["404"]["content"]["application/problem+json"]["schema"];
        assert_eq!(problem["$ref"], "#/components/schemas/Problem");

        let params = get["parameters"].as_array().unwrap();
        let param = |name: &str, place: &str| {
            params
                .iter()
                .find(|p| p["name"] == name && p["in"] == place)
                .cloned()
                .unwrap_or_else(|| panic!("{path}: {place} parameter {name}"))
        };
        assert_eq!(param("X-Tenant-Id", "header")["required"], true);
        assert_eq!(param("runId", "path")["required"], true);
        param("If-None-Match", "header");
        param("X-Correlation-Id", "header");
        assert!(doc["paths"][&path]["head"].is_object());
    }

    // Bodies, query parameters and the problem schema.
    let post = &doc["paths"]["/jobs"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SubmitJob"
    );
    assert!(post["responses"]["202"].is_object());
    assert!(post["responses"]["422"]["content"]["application/problem+json"].is_object());
    let timeline = &doc["paths"][format!("{ORCH}/runs/{{runId}}/timeline")]["get"];
    let names: Vec<&str> = timeline["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["after", "limit", "correlationId"]);
    let lease = &doc["paths"][format!("{ENGINE}/jobs/{{jobId}}/progress")]["post"];
    assert!(
        lease["responses"]["409"].is_object(),
        "lease_lost documented"
    );
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(problem["properties"][field].is_object(), "Problem.{field}");
    }
    for schema in [
        "CreateRun",
        "SubmitJob",
        "LeaseBody",
        "ProgressBody",
        "CompleteBody",
        "FailBody",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("local schema ref: {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {r}"
        );
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Every documented operation reaches a handler: no 405, and no 404 from
/// the default service (code `not_found`).
#[actix_web::test]
async fn every_documented_operation_is_routed() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let run = "6fc74ab4-a997-41f2-adeb-8ee4565cb1b8";
    let job = "01HZX5V7Q8Y6S3T2R1P0N9M8K7";
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = path.replace("{runId}", run).replace("{jobId}", job);
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = app.req(m.clone(), &url);
            if m == Method::POST {
                req = req.json(&json!({}));
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            assert_ne!(status, 405, "{method} {path}");
            if m != Method::HEAD && status == 404 {
                let body: Value = res.json().await.unwrap();
                assert_ne!(body["code"], "not_found", "{method} {path} is routed");
            }
        }
    }
}

/// RFC 9110 §15.5.6: every 405 lists the route's methods in `Allow`, and the
/// list is the one `/openapi.json` documents for that path.
#[actix_web::test]
async fn a_405_lists_the_methods_the_document_gives_the_path() {
    let app = spawn_app().await;
    let doc: Value = app
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 30, "every route is documented");
    for (path, item) in paths {
        let mut documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| ["get", "head", "post", "put", "patch", "delete"].contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        documented.sort();
        let concrete = path
            .replace("{runId}", "00000000-0000-4000-8000-000000000000")
            .replace("{jobId}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .replace("{name}", "x");
        let res = app
            .req(reqwest::Method::from_bytes(b"TRACE").unwrap(), &concrete)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{path}");
        let mut allow: Vec<String> = header(&res, "allow")
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        allow.sort();
        assert_eq!(allow, documented, "Allow of {path}");
    }
}

/// `count` sample of a histogram series (`name_count{labels}`), 0 if absent.
fn histogram_count(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

#[actix_web::test]
async fn metrics_time_first_signals_reads_stream_deliveries_and_webhooks() {
    use crate::webhooks::receiver::Receiver;
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    let app = spawn_with(&[
        ("Webhooks__AllowedNetworks__0", "127.0.0.0/8"),
        ("Webhooks__TimeoutSeconds", "5"),
    ])
    .await;
    let rx = Receiver::start(vec![]).await;
    let res = app
        .submit(json!({"pack": "external", "state_webhook_url": rx.url()}))
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let (job, run) = (
        body["job_id"].as_str().unwrap().to_owned(),
        body["run_id"].as_str().unwrap().to_owned(),
    );
    // A run stream, open while a worker moves the job along.
    let stream = app
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut events = stream.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "first_signal");
    let lease = app.lease_one().await;
    let p = json!({"leaseId": lease["leaseId"], "message": "half way", "percent": 50});
    assert_eq!(app.worker(&job, "progress", p).await.status(), 200);
    let progress = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(e)) = events.next().await {
            if e.event == "progress" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(progress, Ok(true), "the live progress event arrived");
    assert_eq!(app.first_signal(&run).await.status(), 200);
    assert_eq!(
        header(&app.first_signal(&run).await, "cache-status"),
        "hit"
    );
    rx.wait_count(3).await; // queued, loading, working
    // The receiver has answered; the dispatcher records right after.
    let delivered = r#"runsignal_webhook_attempt_seconds_count{outcome="delivered"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut text = metrics_text(&app).await;
    while histogram_count(&text, delivered) < 3.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        text = metrics_text(&app).await;
    }
    assert_eq!(
        histogram_count(
            &text,
            r#"runsignal_time_to_first_signal_seconds_count{kind="queued"}"#
        ),
        1.0,
        "the submitted job's first signal was timed once, as queued:\n{text}"
    );
    assert!(
        histogram_count(
            &text,
            r#"runsignal_first_signal_request_seconds_count{cache_status="hit"}"#
        ) >= 2.0,
        "first-signal reads are timed by Cache-Status:\n{text}"
    );
    assert!(
        histogram_count(
            &text,
            r#"runsignal_stream_delivery_lag_seconds_count{wire="sse"}"#
        ) >= 2.0,
        "live SSE deliveries (job states, progress, signals) are timed:\n{text}"
    );
    assert!(
        histogram_count(&text, delivered) >= 3.0,
        "webhook attempts are timed by outcome:\n{text}"
    );
    assert!(
        histogram_count(&text, "runsignal_webhook_delivery_attempts_count") >= 3.0,
        "settled deliveries record their attempts:\n{text}"
    );
    assert_eq!(
        sample(&text, "runsignal_open_streams"),
        Some(1.0),
        "the one open SSE stream:\n{text}"
    );
    assert_eq!(sample(&text, "runsignal_streaming_connections"), Some(1.0));
    assert!(sample(&text, "runsignal_open_connections").unwrap_or(0.0) >= 1.0);

    // The shipped Grafana dashboard queries only metrics the server exposes.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/runsignal-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 10, "a panel per metric family");
    for expr in exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("runsignal_"))
        {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries `{name}`, which /metrics does not expose"
            );
        }
    }
    drop(events);
}
