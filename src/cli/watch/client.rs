//! The HTTP side of `runsignal watch` besides the stream itself: the
//! reconnect backoff, which answers are worth a retry, the JSON reads.

use std::time::Duration;

use anyhow::{anyhow, bail};
use reqwest::{Client, StatusCode};
use serde_json::Value;

use super::args::{Outcome, Target};
use super::view::View;

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Consecutive failures and the delay before the next attempt.
pub(super) struct Backoff {
    failures: u32,
    limit: u32,
    delay: Duration,
}

impl Backoff {
    pub(super) fn new(limit: u32) -> Backoff {
        Backoff {
            failures: 0,
            limit,
            delay: BACKOFF_FIRST,
        }
    }

    pub(super) fn reset(&mut self) {
        self.failures = 0;
        self.delay = BACKOFF_FIRST;
    }

    /// Count a failed attempt, then wait; an error once the limit is reached.
    pub(super) async fn retry(&mut self, view: &View, base: &str, why: &str) -> anyhow::Result<()> {
        self.failures += 1;
        if self.failures >= self.limit {
            bail!(
                "connection to {base} failed {} times in a row, giving up: {why}",
                self.failures
            );
        }
        view.notice(&format!(
            "{why}; reconnecting in {} ms (failure {}/{})",
            self.delay.as_millis(),
            self.failures,
            self.limit
        ));
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(BACKOFF_CAP);
        Ok(())
    }
}

/// 408, 429 and 5xx are worth another attempt; other statuses are final.
pub(super) fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

pub(super) enum Failure {
    Retry(String),
    Fatal(anyhow::Error),
}

/// GET a JSON resource: `None` on 404.
pub(super) async fn get_json(
    client: &Client,
    url: &str,
    tenant: &str,
) -> Result<Option<Value>, Failure> {
    let res = client
        .get(url)
        .header("X-Tenant-Id", tenant)
        .send()
        .await
        .map_err(|e| Failure::Retry(format!("cannot connect: {:#}", anyhow::Error::from(e))))?;
    match res.status() {
        StatusCode::OK => res
            .json()
            .await
            .map(Some)
            .map_err(|e| Failure::Retry(format!("reading {url}: {e}"))),
        StatusCode::NOT_FOUND => Ok(None),
        s if retryable(s) => Err(Failure::Retry(format!("{url} answered {s}"))),
        s => Err(Failure::Fatal(anyhow!(
            "{url} answered {s}: {}",
            problem(res).await
        ))),
    }
}

/// The `detail` of a problem+json body, else the body's text.
pub(super) async fn problem(res: reqwest::Response) -> String {
    let text = res.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => match (v["code"].as_str(), v["detail"].as_str()) {
            (Some(code), Some(detail)) => format!("{detail} ({code})"),
            (None, Some(detail)) => detail.to_owned(),
            _ => text,
        },
        Err(_) => text,
    }
}

/// After a 204 with nothing known: ask the resource itself (best effort).
pub(super) async fn lookup_outcome(
    client: &Client,
    base: &str,
    prefix: &str,
    tenant: &str,
    target: &Target,
) -> Option<Outcome> {
    let (url, field) = match target {
        Target::Run(id) => (format!("{base}{prefix}/runs/{id}"), "status"),
        Target::Job(id) => (format!("{base}/jobs/{id}"), "state"),
    };
    let v = get_json(client, &url, tenant).await.ok()??;
    Outcome::from_status(v[field].as_str()?)
}
