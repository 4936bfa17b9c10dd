//! The dashboard's files (issue 11, ADR 0038): `GET /` serves the page with
//! a strict Content-Security-Policy, its assets revalidate with ETags, the
//! whole page stays under 100 KiB without inline script or style, it is
//! public while the API keeps asking for credentials, and
//! `Dashboard.Enabled=false` takes it away.

use reqwest::{Method, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::*;

/// The page and every file it loads, with the type each must be served as.
const FILES: [(&str, &str); 4] = [
    ("/", "text/html; charset=utf-8"),
    ("/dashboard/app.js", "text/javascript; charset=utf-8"),
    ("/dashboard/app.css", "text/css; charset=utf-8"),
    ("/dashboard/favicon.svg", "image/svg+xml"),
];

/// A request as a browser loading the page sends it: no tenant, no token.
async fn fetch(app: &TestApp, method: Method, path: &str) -> Response {
    app.client
        .request(method, format!("{}{}", app.address, path))
        .send()
        .await
        .unwrap()
}

fn assert_strict_policy(res: &Response, what: &str) {
    let csp = header(res, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: `{directive}` in `{csp}`");
    }
    assert!(!csp.contains("unsafe"), "{what}: {csp}");
    assert_eq!(header(res, "x-content-type-options"), "nosniff", "{what}");
}

#[actix_web::test]
async fn the_page_and_its_files_are_served_with_their_types_and_a_strict_policy() {
    let app = spawn_app().await;
    for (path, content_type) in FILES {
        let res = fetch(&app, Method::GET, path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-type"), content_type, "{path}");
        assert_eq!(header(&res, "cache-control"), "no-cache", "{path}");
        assert_strict_policy(&res, path);
        let etag = header(&res, "etag");
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{path}: a strong ETag, got `{etag}`"
        );
        assert!(!res.bytes().await.unwrap().is_empty(), "{path}");
    }
    let html = fetch(&app, Method::GET, "/").await.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/dashboard/app.js"></script>"#));
    assert!(html.contains(r#"href="/dashboard/app.css""#));
}

#[actix_web::test]
async fn files_revalidate_with_their_etag_and_head_has_no_body() {
    let app = spawn_app().await;
    for (path, _) in FILES {
        let first = fetch(&app, Method::GET, path).await;
        let etag = header(&first, "etag");
        let length = first.bytes().await.unwrap().len();
        let again = app
            .client
            .get(format!("{}{}", app.address, path))
            .header("If-None-Match", format!("\"other\", {etag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(header(&again, "etag"), etag, "{path}");
        assert_strict_policy(&again, path);
        assert!(again.bytes().await.unwrap().is_empty(), "{path}");
        let stale = app
            .client
            .get(format!("{}{}", app.address, path))
            .header("If-None-Match", "\"0000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), 200, "{path}: another tag gets the body");
        let head = fetch(&app, Method::HEAD, path).await;
        assert_eq!(head.status(), 200, "{path}");
        assert_eq!(header(&head, "etag"), etag, "{path}");
        assert_eq!(
            header(&head, "content-length"),
            length.to_string(),
            "{path}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
}

#[actix_web::test]
async fn the_whole_page_is_under_100_kib_and_loads_only_its_own_files() {
    let app = spawn_app().await;
    let html = fetch(&app, Method::GET, "/").await.text().await.unwrap();
    let mut total = html.len();
    // Every file the page references comes from this server.
    let mut referenced = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            let url = &rest[..rest.find('"').unwrap()];
            if url.starts_with('#') {
                continue;
            }
            assert!(url.starts_with("/dashboard/"), "`{url}` is one of ours");
            if !referenced.contains(&url) {
                referenced.push(url);
            }
        }
    }
    assert!(referenced.contains(&"/dashboard/app.js"));
    for url in referenced {
        let res = fetch(&app, Method::GET, url).await;
        assert_eq!(res.status(), 200, "{url}");
        total += res.bytes().await.unwrap().len();
    }
    assert!(total < 100 * 1024, "the page weighs {total} bytes");
}

#[actix_web::test]
async fn the_page_has_no_inline_script_style_or_handlers() {
    let app = spawn_app().await;
    let html = fetch(&app, Method::GET, "/").await.text().await.unwrap();
    let lower = html.to_ascii_lowercase();
    for (i, _) in lower.match_indices("<script") {
        let tag_end = i + lower[i..].find('>').unwrap();
        assert!(lower[i..tag_end].contains(" src="), "a script loads a file");
        assert!(
            lower[tag_end + 1..].starts_with("</script>"),
            "a script has no inline body"
        );
    }
    assert!(!lower.contains("<style"), "no style element");
    assert!(!lower.contains(" style="), "no style attribute");
    assert!(
        !lower
            .split(|c: char| c.is_whitespace())
            .any(|word| word.starts_with("on") && word.contains('=')),
        "no inline event handler"
    );
    // The script builds the DOM from text only: data from the API is never
    // parsed as HTML.
    let js = fetch(&app, Method::GET, "/dashboard/app.js")
        .await
        .text()
        .await
        .unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
}

#[actix_web::test]
async fn other_methods_are_405_listing_get_and_head() {
    let app = spawn_app().await;
    for (path, _) in FILES {
        let res = fetch(&app, Method::POST, path).await;
        assert_eq!(header(&res, "allow"), "GET, HEAD", "{path}");
        assert_problem(res, 405, "method_not_allowed").await;
    }
    assert_problem(
        fetch(&app, Method::GET, "/dashboard/nope.js").await,
        404,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn a_disabled_dashboard_is_an_unknown_route() {
    let app = spawn_with(&[("Dashboard__Enabled", "false")]).await;
    for (path, _) in FILES {
        let res = fetch(&app, Method::GET, path).await;
        assert_problem(res, 404, "not_found").await;
    }
    // The API is unaffected.
    assert_eq!(
        app.get(&format!("{ORCH}/runs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[actix_web::test]
async fn with_tokens_the_page_loads_without_a_credential_and_the_api_still_asks() {
    let token = "dashboard-test-token-0123456789abcdef";
    let entry = json!({"name": "dash", "sha256": hex::encode(Sha256::digest(token)),
        "tenants": [TENANT], "scopes": ["read"]});
    let app = spawn_with(&[
        ("Auth__Mode", "token"),
        ("Auth__Tokens__0", &entry.to_string()),
    ])
    .await;
    for (path, _) in FILES {
        let res = fetch(&app, Method::GET, path).await;
        assert_eq!(res.status(), 200, "{path} is public");
        assert_strict_policy(&res, path);
    }
    // What the page probes on load: 401 makes it ask for a token.
    let probe = fetch(&app, Method::GET, &format!("{ORCH}/runs?limit=1")).await;
    assert!(header(&probe, "www-authenticate").starts_with("Bearer"));
    assert_problem(probe, 401, "unauthenticated").await;
    let with_token = app
        .client
        .get(format!("{}{ORCH}/runs?limit=1", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200, "the token alone names its tenant");
}
