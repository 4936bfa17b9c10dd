//! The dashboard (issue 11, [ADR 0038](../../docs/adr/0038-dashboard.md)):
//! one HTML page, one ES module and one stylesheet, embedded in the binary
//! and served at `GET /` (no build step, no CDN, nothing fetched at run
//! time). The page uses only the public API, like any other client.
//!
//! Every response carries a strict `Content-Security-Policy` (scripts,
//! styles and connections from this origin only; no inline script or
//! style), `X-Content-Type-Options: nosniff` and a strong `ETag` with
//! `Cache-Control: no-cache`, so browsers revalidate and get a 304.
//! `Dashboard.Enabled = false` leaves the routes out: `/` is then a 404
//! like any unknown path. The routes are public (`http::auth`): the page
//! asks for a credential itself and sends it on its API calls.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::http::first_signal::if_none_match_hits;

/// The policy every dashboard response carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    /// The route that serves it.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every file of the page, in route order.
pub const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        path: "/dashboard/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        path: "/dashboard/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// The dashboard's route patterns (public in every `Auth.Mode`).
pub const ROUTES: [&str; 4] = [
    ASSETS[0].path,
    ASSETS[1].path,
    ASSETS[2].path,
    ASSETS[3].path,
];

/// Strong ETags, `"<sha256 hex>"` of each body in [`ASSETS`] order,
/// computed once on first use: the bodies never change in a process.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", hex::encode(Sha256::digest(a.body))))
        .collect()
});

/// Register the page's routes (`GET` and `HEAD` each).
pub fn routes(cfg: &mut web::ServiceConfig) {
    for (index, asset) in ASSETS.iter().enumerate() {
        let serve = move |req: HttpRequest| async move { serve(&req, index) };
        cfg.service(
            web::resource(asset.path)
                .route(web::get().to(serve))
                .route(web::head().to(serve)),
        );
    }
}

fn serve(req: &HttpRequest, index: usize) -> HttpResponse {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let not_modified = if_none_match_hits(req, etag);
    let mut res = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if not_modified {
        return res.finish();
    }
    res.content_type(asset.content_type).body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_page_is_under_100_kib() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total < 100 * 1024, "{total} bytes");
    }

    #[test]
    fn etags_are_strong_and_distinct() {
        assert_eq!(ETAGS.len(), ASSETS.len());
        for (i, tag) in ETAGS.iter().enumerate() {
            assert!(tag.starts_with('"') && tag.len() == 66, "{tag}");
            assert!(
                !ETAGS[..i].contains(tag),
                "{} repeats a tag",
                ASSETS[i].path
            );
        }
    }
}
