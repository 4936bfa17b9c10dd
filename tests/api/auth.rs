//! Access control (SPEC §10): every route under every mode and scope
//! (table-driven), JWT validation, `?access_token=` and `?tenant=` only on
//! stream and WebSocket routes, the WebSocket's first-frame auth, CORS and
//! the WebSocket `Origin` check, and no token in error bodies or metrics.
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use crate::helpers::*;

const SCOPES: [&str; 4] = ["read", "write", "worker", "admin"];
const SECRET: &str = "test-hmac-secret-of-enough-length-0123456789";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "runsignal";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Token,
    Jwt,
}

/// A credential for `tenants` holding `scopes`, in `mode`.
fn cred(mode: Mode, scopes: &[&str], tenants: &[&str]) -> String {
    match mode {
        // The server knows these by digest (see `token_settings`).
        Mode::Token => format!("tok:{}:{}", tenants.join("+"), scopes.join("+")),
        Mode::Jwt => jwt(json!({
            "sub": format!("user-{}", scopes.join("-")),
            "tenants": tenants,
            "scope": scopes.join(" "),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": now() + 600,
        })),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: Value) -> String {
    jwt_with(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(), claims)
}

fn jwt_with(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn ed_key(file: &str) -> EncodingKey {
    EncodingKey::from_ed_pem(&std::fs::read(format!("{FIXTURES}/{file}")).unwrap()).unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The credentials the route table uses, for every scope `s`: only `s`,
/// every scope but `s` (tenant acme), every scope for tenant beta, and one
/// for every tenant (`*`).
fn token_combos() -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    let mut combos = vec![(SCOPES.to_vec(), vec!["beta"]), (SCOPES.to_vec(), vec!["*"])];
    for s in SCOPES {
        combos.push((vec![s], vec![TENANT]));
        combos.push((SCOPES.iter().copied().filter(|x| *x != s).collect(), vec![TENANT]));
    }
    combos.push((SCOPES.to_vec(), vec![TENANT]));
    combos
}

fn token_settings() -> Vec<(String, String)> {
    let mut settings = vec![("Auth__Mode".to_owned(), "token".to_owned())];
    for (i, (scopes, tenants)) in token_combos().into_iter().enumerate() {
        let token = cred(Mode::Token, &scopes, &tenants);
        let entry = json!({"name": format!("t{i}"), "sha256": sha256_hex(&token),
            "tenants": tenants, "scopes": scopes});
        settings.push((format!("Auth__Tokens__{i}"), entry.to_string()));
    }
    settings
}

fn jwt_settings() -> Vec<(String, String)> {
    [
        ("Auth__Mode", "jwt".to_owned()),
        ("Auth__Jwt__Algorithms", r#"["HS256","EdDSA"]"#.to_owned()),
        ("Auth__Jwt__Secret", SECRET.to_owned()),
        ("Auth__Jwt__PublicKeyFile", format!("{FIXTURES}/ed25519.pub.pem")),
        ("Auth__Jwt__Issuer", ISSUER.to_owned()),
        ("Auth__Jwt__Audience", AUDIENCE.to_owned()),
        ("Auth__Jwt__LeewaySeconds", "60".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn spawn_mode(mode: Mode, extra: &[(&str, &str)]) -> TestApp {
    let settings = match mode {
        Mode::Token => token_settings(),
        Mode::Jwt => jwt_settings(),
    };
    let mut all: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.extend_from_slice(extra);
    spawn_with(&all).await
}

/// Every route (both API prefixes and the root routes, as
/// `src/http/mod.rs::routes` lists them) and the scope it needs: `public`,
/// or a scope; `admin` routes name no tenant.
fn routes(run: &str, job: &str) -> Vec<(Method, String, &'static str, Option<Value>)> {
    let mut all = Vec::new();
    for p in [ORCH, ENGINE] {
        let mut add = |m: Method, path: String, scope, body: Option<Value>| {
            all.push((m, format!("{p}{path}"), scope, body))
        };
        add(Method::POST, "/runs".into(), "write", Some(json!({})));
        add(Method::GET, "/runs".into(), "read", None);
        add(Method::GET, format!("/runs/{run}"), "read", None);
        add(Method::GET, format!("/runs/{run}/first-signal"), "read", None);
        add(Method::HEAD, format!("/runs/{run}/first-signal"), "read", None);
        add(Method::GET, format!("/runs/{run}/timeline"), "read", None);
        let lease = json!({"workerId": "w", "packs": ["nothing-here"]});
        add(Method::POST, "/workers/lease".into(), "worker", Some(lease));
        let lease_id = json!({"leaseId": "nope"});
        for action in ["progress", "complete", "fail"] {
            add(Method::POST, format!("/jobs/{job}/{action}"), "worker", Some(lease_id.clone()));
        }
        add(Method::GET, "/packs".into(), "read", None);
        add(Method::GET, format!("/stream/runs/{run}"), "read", None);
        add(Method::GET, format!("/stream/jobs/{job}"), "read", None);
        add(Method::GET, format!("/stream/pack-runs/{job}"), "read", None);
        add(Method::GET, "/ws".into(), "read", None);
    }
    let submit = json!({"pack": "external", "inputs": {}});
    all.extend([
        (Method::POST, "/jobs".into(), "write", Some(submit)),
        (Method::GET, "/jobs".into(), "read", None),
        (Method::GET, format!("/jobs/{job}"), "read", None),
        (Method::POST, format!("/jobs/{job}/cancel"), "write", Some(json!({}))),
        (Method::POST, format!("/jobs/{job}/retry"), "write", Some(json!({}))),
        (Method::GET, format!("/jobs/{job}/artifacts/result.json"), "read", None),
        (Method::GET, "/metrics".into(), "admin", None),
        (Method::GET, "/healthz".into(), "public", None),
        (Method::GET, "/readyz".into(), "public", None),
        (Method::GET, "/openapi.json".into(), "public", None),
    ]);
    all
}

async fn call(
    app: &TestApp,
    (method, path, _, body): &(Method, String, &str, Option<Value>),
    token: Option<&str>,
    tenant: Option<&str>,
) -> Response {
    let mut req = app
        .client
        .request(method.clone(), format!("{}{path}", app.address));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(tenant) = tenant {
        req = req.header("X-Tenant-Id", tenant);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    req.send().await.unwrap()
}

/// Status and code; HEAD answers carry no body.
async fn refused(res: Response, method: &Method, status: u16, code: &str, what: &str) {
    assert_eq!(res.status().as_u16(), status, "{what}");
    if status == 401 {
        assert!(header(&res, "www-authenticate").starts_with("Bearer"), "{what}");
    }
    if method != Method::HEAD {
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], code, "{what}: {body}");
    }
}

async fn every_route_needs_its_scope_and_tenant(mode: Mode) {
    let app = spawn_mode(mode, &[]).await;
    // Ids of nothing: the right credential gets past auth to a 404 or a 400.
    let run = uuid::Uuid::new_v4().to_string();
    let job = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for route in routes(&run, job) {
        let (method, path, scope, _) = &route;
        let what = |case: &str| format!("{method} {path} ({scope}): {case}");
        let res = call(&app, &route, None, Some(TENANT)).await;
        if *scope == "public" {
            assert_eq!(res.status(), 200, "{}", what("public"));
            continue;
        }
        refused(res, method, 401, "unauthenticated", &what("no credential")).await;
        let others: Vec<&str> = SCOPES.iter().copied().filter(|s| s != scope).collect();
        let token = cred(mode, &others, &[TENANT]);
        let res = call(&app, &route, Some(&token), Some(TENANT)).await;
        refused(res, method, 403, "insufficient_scope", &what("wrong scope")).await;
        let right = cred(mode, &[scope], &[TENANT]);
        if *scope != "admin" {
            let beta = cred(mode, &SCOPES, &["beta"]);
            let res = call(&app, &route, Some(&beta), Some(TENANT)).await;
            refused(res, method, 403, "tenant_forbidden", &what("wrong tenant")).await;
            // A credential bound to one tenant may leave X-Tenant-Id out.
            let res = call(&app, &route, Some(&right), None).await;
            let status = res.status().as_u16();
            let text = res.text().await.unwrap_or_default();
            assert!(
                status != 401 && status != 403 && !text.contains("invalid_tenant"),
                "{}: {status} {text}",
                what("tenant left out")
            );
        }
        let res = call(&app, &route, Some(&right), Some(TENANT)).await;
        let status = res.status().as_u16();
        assert!(status != 401 && status != 403, "{}: {status}", what("right scope and tenant"));
    }
    // `*` must name a tenant.
    let star = cred(mode, &SCOPES, &["*"]);
    let res = app.client.get(format!("{}/jobs", app.address)).bearer_auth(&star).send().await.unwrap();
    assert_problem(res, 400, "invalid_tenant").await;
    let res = app
        .client
        .get(format!("{}/jobs", app.address))
        .bearer_auth(&star)
        .header("X-Tenant-Id", "anyone")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn token_mode_every_route_needs_its_scope_and_tenant() {
    every_route_needs_its_scope_and_tenant(Mode::Token).await;
}

#[actix_web::test]
async fn jwt_mode_every_route_needs_its_scope_and_tenant() {
    every_route_needs_its_scope_and_tenant(Mode::Jwt).await;
}

#[actix_web::test]
async fn mode_none_keeps_every_route_open_and_trusts_the_tenant_header() {
    let app = spawn_app().await;
    let run = uuid::Uuid::new_v4().to_string();
    for route in routes(&run, "01ARZ3NDEKTSV4RRFFQ69G5FAV") {
        let res = call(&app, &route, None, Some(TENANT)).await;
        let status = res.status().as_u16();
        assert!(status != 401 && status != 403, "{} {}: {status}", route.0, route.1);
    }
    // `/metrics` is open with `none`.
    let res = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// `POST /jobs` with `token` and no `X-Tenant-Id` (the credential's only
/// tenant): the accepted job.
async fn submit_as(app: &TestApp, token: &str) -> Value {
    let res = app
        .client
        .post(format!("{}/jobs", app.address))
        .bearer_auth(token)
        .json(&json!({"pack": "external"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "no X-Tenant-Id: the credential's only tenant");
    res.json().await.unwrap()
}

#[actix_web::test]
async fn a_credential_acts_only_for_its_tenants_and_a_foreign_run_stays_404() {
    let app = spawn_mode(Mode::Token, &[]).await;
    let all = cred(Mode::Token, &SCOPES, &[TENANT]);
    let job = submit_as(&app, &all).await;
    let job_id = job["job_id"].as_str().unwrap();
    // Beta's credential, acting for beta, does not see acme's job.
    let beta = cred(Mode::Token, &SCOPES, &["beta"]);
    let res = app
        .client
        .get(format!("{}/jobs/{job_id}", app.address))
        .bearer_auth(&beta)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "job_not_found").await;
    let res = app
        .client
        .get(format!("{}/jobs/{job_id}", app.address))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn get_jobs(app: &TestApp, token: &str) -> Response {
    app.client
        .get(format!("{}/jobs", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn jwt_expiry_issuer_audience_algorithm_and_leeway() {
    let app = spawn_mode(Mode::Jwt, &[]).await;
    let claims = |extra: Value| {
        let mut c = json!({"sub": "u", "tenants": TENANT, "scope": "read",
            "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let hs = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    // Accepted: HS256; within the leeway (60 s) after expiry; EdDSA with
    // the configured key; `tenants` as a string.
    for (what, token) in [
        ("valid", jwt(claims(json!({})))),
        ("expired 30 s ago, leeway 60", jwt(claims(json!({"exp": now() - 30})))),
        ("EdDSA", jwt_with(Algorithm::EdDSA, &ed_key("ed25519.pem"), claims(json!({})))),
    ] {
        assert_eq!(get_jobs(&app, &token).await.status(), 200, "{what}");
    }
    for (what, token) in [
        ("expired past the leeway", jwt(claims(json!({"exp": now() - 600})))),
        ("wrong issuer", jwt(claims(json!({"iss": "https://evil.test"})))),
        ("no issuer", jwt(claims(json!({"iss": null})))),
        ("wrong audience", jwt(claims(json!({"aud": "someone-else"})))),
        ("no audience", jwt(claims(json!({"aud": null})))),
        ("no exp", jwt(claims(json!({"exp": null})))),
        ("HS384 is not configured", jwt_with(Algorithm::HS384, &hs, claims(json!({})))),
        ("another secret", jwt_with(Algorithm::HS256, &EncodingKey::from_secret(b"other").unwrap(), claims(json!({})))),
        ("another EdDSA key", jwt_with(Algorithm::EdDSA, &ed_key("ed25519-other.pem"), claims(json!({})))),
        ("not a JWT", "abc.def".to_owned()),
    ] {
        let res = get_jobs(&app, &token).await;
        assert_eq!(
            header(&res, "www-authenticate"),
            r#"Bearer realm="runsignal", error="invalid_token""#,
            "{what}"
        );
        let body = assert_problem(res, 401, "unauthenticated").await;
        assert!(!body.to_string().contains(&token), "{what}: the token is echoed");
    }
    // alg `none`: no signature at all.
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    assert_eq!(get_jobs(&app, &unsigned).await.status(), 401, "alg none");
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    app: &TestApp,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, WsError> {
    let url = format!("{}{ORCH}/ws{query}", app.address.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    connect_async(req).await.map(|(ws, _)| ws)
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next text frame, or the close code.
async fn ws_next(ws: &mut Ws) -> Result<Value, Option<CloseCode>> {
    let next = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
                Some(Ok(_)) => continue,
                other => panic!("socket failed: {other:?}"),
            }
        }
    });
    next.await.expect("a frame within 15 s")
}

fn ws_status(e: WsError) -> u16 {
    match e {
        WsError::Http(res) => res.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[actix_web::test]
async fn access_token_works_on_streams_and_the_websocket_and_nowhere_else() {
    let app = spawn_mode(Mode::Token, &[]).await;
    let token = cred(Mode::Token, &["read"], &[TENANT]);
    let run = uuid::Uuid::new_v4();
    // SSE: authenticated, so the unknown run is a 404, not a 401.
    let res = app
        .client
        .get(format!("{}{ORCH}/stream/runs/{run}?access_token={token}&tenant={TENANT}", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "run_not_found").await;
    // Elsewhere it is no credential at all.
    for path in [
        "/jobs".to_owned(),
        format!("{ORCH}/runs/{run}"),
        "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/artifacts/ws".to_owned(),
        "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/artifacts/stream".to_owned(),
    ] {
        let res = app
            .client
            .get(format!("{}{path}?access_token={token}&tenant={TENANT}", app.address))
            .send()
            .await
            .unwrap();
        let body = assert_problem(res, 401, "unauthenticated").await;
        assert!(!body.to_string().contains(&token));
    }
    // WebSocket: the query credential authenticates the handshake.
    let mut ws = ws_connect(&app, &format!("?access_token={token}"), &[]).await.unwrap();
    ws_send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap()["op"], "pong");
    // A wrong one is refused at the handshake.
    let err = ws_connect(&app, "?access_token=nope", &[]).await.unwrap_err();
    assert_eq!(ws_status(err), 401);
}

#[actix_web::test]
async fn the_tenant_query_is_not_honoured_outside_stream_routes() {
    // Mode none: `?tenant=` on an artifact whose name is `ws` (the stored
    // XSS link of issue 8) names no tenant.
    let app = spawn_app().await;
    let (job, _) = app.submit_job(None).await;
    for path in [
        format!("/jobs/{job}/artifacts/ws?tenant={TENANT}"),
        format!("/jobs/{job}?tenant={TENANT}"),
        format!("/jobs/{job}/artifacts/stream?tenant={TENANT}"),
    ] {
        let res = app.client.get(format!("{}{path}", app.address)).send().await.unwrap();
        assert_problem(res, 400, "invalid_tenant").await;
    }
    let res = app
        .client
        .get(format!("{}{ORCH}/stream/jobs/{job}?tenant={TENANT}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the stream route itself takes it");
}

#[actix_web::test]
async fn the_websocket_authenticates_with_its_first_frame() {
    let app = spawn_mode(Mode::Jwt, &[]).await;
    let token = cred(Mode::Jwt, &["read"], &[TENANT]);
    let mut ws = ws_connect(&app, "", &[]).await.unwrap();
    ws_send(&mut ws, json!({"op": "auth", "token": token})).await;
    let ack = ws_next(&mut ws).await.unwrap();
    assert_eq!(ack, json!({"op": "authenticated", "tenant": TENANT}));
    ws_send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap()["op"], "pong");

    // A wrong token closes the socket with 4401.
    let mut ws = ws_connect(&app, "", &[]).await.unwrap();
    ws_send(&mut ws, json!({"op": "auth", "token": "wrong"})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap_err(), Some(CloseCode::from(4401)));
    // Any other op first closes it too, without serving it.
    let mut ws = ws_connect(&app, "", &[]).await.unwrap();
    let run = uuid::Uuid::new_v4().to_string();
    ws_send(&mut ws, json!({"op": "subscribe", "stream": "run", "id": run})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap_err(), Some(CloseCode::from(4401)));
    // A tenant outside the credential: 4403.
    let mut ws = ws_connect(&app, "?tenant=beta", &[]).await.unwrap();
    ws_send(&mut ws, json!({"op": "auth", "token": token})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap_err(), Some(CloseCode::from(4403)));
    // No frame at all: closed once the auth timeout passes.
    let mut ws = ws_connect(&app, "", &[]).await.unwrap();
    assert_eq!(ws_next(&mut ws).await.unwrap_err(), Some(CloseCode::from(4401)));
}

#[actix_web::test]
async fn cors_headers_only_for_listed_origins_and_the_websocket_checks_origin() {
    let good = "https://app.example";
    let app = spawn_mode(Mode::Token, &[("Server__Cors__AllowedOrigins__0", good)]).await;
    let token = cred(Mode::Token, &["read"], &[TENANT]);
    let get = |origin: &'static str| {
        app.client
            .get(format!("{}/jobs", app.address))
            .bearer_auth(&token)
            .header("Origin", origin)
            .send()
    };
    let res = get(good).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), good);
    let res = get("https://evil.example").await.unwrap();
    assert_eq!(header(&res, "access-control-allow-origin"), "");
    // A preflight needs no credential.
    let res = app
        .client
        .request(Method::OPTIONS, format!("{}/jobs", app.address))
        .header("Origin", good)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization,x-tenant-id,content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), good);

    let auth = format!("Bearer {token}");
    let err = ws_connect(&app, "", &[("Authorization", &auth), ("Origin", "https://evil.example")])
        .await
        .unwrap_err();
    assert_eq!(ws_status(err), 403);
    ws_connect(&app, "", &[("Authorization", &auth), ("Origin", good)]).await.unwrap();
    ws_connect(&app, "", &[("Authorization", &auth)]).await.unwrap();

    // Without AllowedOrigins: no CORS headers at all, and a browser's
    // WebSocket (any Origin) is refused.
    let plain = spawn_app().await;
    let res = plain.get("/jobs").header("Origin", good).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), "");
    let err = ws_connect(&plain, "", &[("X-Tenant-Id", TENANT), ("Origin", good)])
        .await
        .unwrap_err();
    assert_eq!(ws_status(err), 403);
    // A page the server itself served (its own origin) may open a socket.
    let own = plain.address.clone();
    ws_connect(&plain, "", &[("X-Tenant-Id", TENANT), ("Origin", &own)])
        .await
        .unwrap();
    let look_alike = format!("{own}.evil.example");
    let err = ws_connect(&plain, "", &[("X-Tenant-Id", TENANT), ("Origin", &look_alike)])
        .await
        .unwrap_err();
    assert_eq!(ws_status(err), 403);
}

#[actix_web::test]
async fn no_token_appears_in_error_bodies_or_metrics() {
    let app = spawn_mode(Mode::Token, &[]).await;
    let good = cred(Mode::Token, &["read"], &[TENANT]);
    let bad = "rsg_this-is-not-a-configured-token";
    let admin = cred(Mode::Token, &["admin"], &[TENANT]);
    let run = uuid::Uuid::new_v4();
    let mut bodies = String::new();
    for token in [good.as_str(), bad] {
        for path in [
            "/jobs".to_owned(),
            format!("{ORCH}/stream/runs/{run}?access_token={token}"),
            format!("/jobs?access_token={token}"),
            "/metrics".to_owned(),
        ] {
            let res = app
                .client
                .get(format!("{}{path}", app.address))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            bodies.push_str(&res.text().await.unwrap());
        }
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("runsignal_http_requests_total"), "{metrics}");
    for token in [good.as_str(), bad, admin.as_str()] {
        assert!(!bodies.contains(token), "a token in an error body: {bodies}");
        assert!(!metrics.contains(token), "a token in /metrics");
    }
}

#[actix_web::test]
async fn metrics_public_needs_no_credential() {
    let app = spawn_mode(Mode::Token, &[("Metrics__Public", "true")]).await;
    let res = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn a_bad_key_file_refuses_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let env = |file: &str| {
        vec![
            ("RUNSIGNAL__Server__Bind".to_owned(), "127.0.0.1:0".to_owned()),
            ("RUNSIGNAL__Database__Url".to_owned(), "sqlite::memory:".to_owned()),
            ("RUNSIGNAL__Auth__Mode".to_owned(), "jwt".to_owned()),
            ("RUNSIGNAL__Auth__Jwt__Algorithms".to_owned(), r#"["EdDSA"]"#.to_owned()),
            ("RUNSIGNAL__Auth__Jwt__PublicKeyFile".to_owned(), file.to_owned()),
        ]
    };
    for file in [bad.display().to_string(), "/nonexistent/key.pem".to_owned()] {
        let config = runsignal::config::Config::load_from(None, env(&file)).unwrap();
        let err = runsignal::Application::build(config).await.err().expect("refused");
        assert!(format!("{err:#}").contains("Auth.Jwt.PublicKeyFile"), "{err:#}");
    }
}

/// A warm run's first signal is answered before routing (ADR 0051): that
/// answer must refuse exactly what the handler refuses.
async fn a_warm_first_signal_is_refused_exactly_as_a_cold_one(mode: Mode) {
    let app = spawn_mode(mode, &[]).await;
    let all = cred(mode, &SCOPES, &[TENANT]);
    let job = submit_as(&app, &all).await;
    let run = job["run_id"].as_str().unwrap().to_owned();
    let get = |path: String| app.client.get(format!("{}{path}", app.address));
    for p in [ORCH, ENGINE] {
        let path = format!("{p}/runs/{run}/first-signal");
        // Warm: read once, then every read is a hit.
        for _ in 0..2 {
            let res = get(path.clone()).bearer_auth(&all).send().await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(header(&res, "cache-status"), "hit", "{path}");
        }
        // HEAD and a matching `If-None-Match`, answered like GET.
        let etag = header(&get(path.clone()).bearer_auth(&all).send().await.unwrap(), "etag");
        let head = app
            .client
            .head(format!("{}{path}", app.address))
            .bearer_auth(&all)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "etag"), etag);
        assert!(head.bytes().await.unwrap().is_empty());
        let res = get(path.clone())
            .bearer_auth(&all)
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 304);
        assert_eq!(header(&res, "cache-status"), "hit");
        let res = get(path.clone()).header("X-Tenant-Id", TENANT).send().await.unwrap();
        assert_problem(res, 401, "unauthenticated").await;
        let no_read = cred(mode, &["write", "worker", "admin"], &[TENANT]);
        let res = get(path.clone()).bearer_auth(&no_read).send().await.unwrap();
        assert_problem(res, 403, "insufficient_scope").await;
        let beta = cred(mode, &SCOPES, &["beta"]);
        let res = get(path.clone())
            .bearer_auth(&beta)
            .header("X-Tenant-Id", TENANT)
            .send()
            .await
            .unwrap();
        assert_problem(res, 403, "tenant_forbidden").await;
        let res = get(path.clone()).bearer_auth(&beta).send().await.unwrap();
        assert_problem(res, 404, "run_not_found").await;
        let res = get(format!("{path}?access_token={all}&tenant={TENANT}"))
            .send()
            .await
            .unwrap();
        assert_problem(res, 401, "unauthenticated").await;
        let star = cred(mode, &SCOPES, &["*"]);
        let res = get(path.clone()).bearer_auth(&star).send().await.unwrap();
        assert_problem(res, 400, "invalid_tenant").await;
        let res = get(path.clone())
            .bearer_auth(&star)
            .header("X-Tenant-Id", TENANT)
            .header("X-Tenant-Id", TENANT)
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_tenant").await;
        let res = get(path.clone())
            .bearer_auth(&star)
            .header("X-Tenant-Id", "bad tenant!")
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_tenant").await;
        // The same run named otherwise (upper case, a percent-encoded
        // hyphen) is the same signal, whichever way it is answered.
        for other in [
            format!("{p}/runs/{}/first-signal", run.to_uppercase()),
            format!("{p}/runs/{}/first-signal", run.replacen('-', "%2D", 1)),
        ] {
            let res = get(other.clone()).bearer_auth(&star).header("X-Tenant-Id", TENANT).send().await.unwrap();
            assert_eq!(res.status(), 200, "{other}");
            assert_eq!(header(&res, "cache-status"), "hit", "{other}");
            assert_eq!(header(&res, "etag"), etag, "{other}");
        }
    }
}

#[actix_web::test]
async fn token_mode_a_warm_first_signal_is_refused_exactly_as_a_cold_one() {
    a_warm_first_signal_is_refused_exactly_as_a_cold_one(Mode::Token).await;
}

#[actix_web::test]
async fn jwt_mode_a_warm_first_signal_is_refused_exactly_as_a_cold_one() {
    a_warm_first_signal_is_refused_exactly_as_a_cold_one(Mode::Jwt).await;
}
