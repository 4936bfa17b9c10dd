//! One delivery attempt: guard the target, then POST the stored body bytes
//! exactly as they were written to the outbox (and signed), with redirects
//! off and a per-attempt timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT};
use url::Url;

use super::policy::Attempt;
use super::signing::Signer;
use super::ssrf::{Blocked, Guard, Pinned};
use crate::store::WebhookDelivery;

const AGENT: &str = concat!("runsignal-webhooks/", env!("CARGO_PKG_VERSION"));

/// Clients kept at most; the cache starts over beyond this.
const MAX_CLIENTS: usize = 256;

/// A cached client: `None` for IP-literal URLs (nothing to pin), else the
/// domain and the checked addresses it is pinned to.
type ClientKey = Option<(String, Vec<SocketAddr>)>;

/// Sends attempts; shared by every in-flight delivery.
#[derive(Debug)]
pub struct Sender {
    guard: Guard,
    signer: Option<Signer>,
    timeout: Duration,
    /// Building a client costs milliseconds (TLS roots), so clients are
    /// reused per pinned target. A std `Mutex`: held only for a map
    /// lookup or insert, never across an `.await`.
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
}

impl Sender {
    pub fn new(guard: Guard, signer: Option<Signer>, timeout: Duration) -> Sender {
        Sender {
            guard,
            signer,
            timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub async fn attempt(&self, d: &WebhookDelivery) -> Attempt {
        // The URL was checked when the job was submitted; a stored row that
        // no longer parses can never succeed.
        let url = match Url::parse(&d.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => return Attempt::Refused(format!("`{}` is not an http(s) URL", d.url)),
        };
        let pinned = match self.guard.resolve(&url).await {
            Ok(p) => p,
            Err(Blocked::Refused(why)) => return Attempt::Refused(why),
            Err(Blocked::Unresolved(why)) => return Attempt::Unreachable(why),
        };
        let client = match self.client(&pinned) {
            Ok(c) => c,
            Err(e) => return Attempt::Unreachable(format!("HTTP client: {e}")),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let mut req = client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, AGENT)
            .header("webhook-id", &d.idempotency_key)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = &self.signer {
            let sig = signer.sign(&d.idempotency_key, timestamp, d.body.as_bytes());
            req = req
                .header("webhook-signature", sig.standard)
                .header("X-Foreman-Signature", sig.foreman);
        }
        match req.body(d.body.clone().into_bytes()).send().await {
            Ok(res) => {
                let header = |name| {
                    res.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                Attempt::Answered {
                    status: res.status().as_u16(),
                    retry_after: header(RETRY_AFTER),
                    location: header(LOCATION),
                }
            }
            Err(e) if e.is_timeout() => Attempt::Unreachable(format!(
                "no answer within {} s (Webhooks.TimeoutSeconds)",
                self.timeout.as_secs_f64()
            )),
            Err(e) => Attempt::Unreachable(error_chain(&e)),
        }
    }

    /// A client that connects only to this attempt's checked addresses
    /// (`resolve_to_addrs` is a client setting, hence one client per pinned
    /// target).
    fn client(&self, pinned: &Pinned) -> reqwest::Result<reqwest::Client> {
        let key: ClientKey = pinned.domain.clone().map(|d| {
            let mut addrs = pinned.addrs.clone();
            addrs.sort();
            (d, addrs)
        });
        // Poisoned only if a holder panicked; the map is still usable.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = self.build(pinned)?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn build(&self, pinned: &Pinned) -> reqwest::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf, past the pinned address.
            .no_proxy()
            .timeout(self.timeout);
        if let Some(domain) = &pinned.domain {
            builder = builder.resolve_to_addrs(domain, &pinned.addrs);
        }
        builder.build()
    }
}

/// `error: cause: cause…`, so "connection refused" is visible.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
