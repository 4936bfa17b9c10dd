//! `runsignal watch <runId|jobId>`: a terminal monitor over the SSE streams
//! (SPEC §5.1) for CLI users.
//!
//! # What is followed
//!
//! - A **UUID** names a run: `{prefix}/stream/runs/{runId}` (`first_signal`,
//!   `job`, `progress`, `completed`). The run's outcome is the `completed`
//!   event's envelope `payload.status` (`succeeded|failed|canceled`); the last
//!   `first_signal`'s `signal.kind` (4 failed, 5 succeeded, 6 canceled) is kept
//!   as the last known outcome.
//! - A **ULID** names a job: its job stream `{prefix}/stream/jobs/{jobId}`
//!   (`job`, `progress`, `step`, `log`, `completed`): the job's bar follows its
//!   state and percent live, a bar per pack step follows `step` events.
//!   `watch` reads `GET /jobs/{jobId}` once at start: it tells a missing job
//!   ("job not found", exit 3) apart before streaming, and seeds the job's bar
//!   and the last known outcome when the job is already terminal. The outcome
//!   is the `completed` event's envelope `type`
//!   (`job.done|job.failed|job.canceled`). `GET /jobs/{jobId}` is read again
//!   only if the stream answers 204 with no outcome known.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | the run / job succeeded (also: 204 on resume with no outcome known) |
//! | 1 | it failed |
//! | 2 | it was canceled |
//! | 3 | error: bad arguments, run or job not found, other 4xx, or the server could not be reached after `--max-attempts` consecutive failed attempts |
//!
//! # Reconnects
//!
//! The SSE text is parsed by the `eventsource-stream` crate over `reqwest`'s
//! `bytes_stream()`. `watch` tracks the largest event id seen. When a
//! connection fails, ends without `completed`, errors, goes silent for
//! [`IDLE_TIMEOUT`] (the server sends `: heartbeat` every 15 s by default) or
//! ends with a `timeout` event, it reconnects with `Last-Event-ID: <last id>`
//! after a backoff (200 ms, doubling, capped at 5 s). The server replays the
//! events after that id, so there is no gap; events with an id at or below
//! the resume point are dropped, so there is no duplicate. A connection that
//! delivered a new event or stayed up for [`HEALTHY_AFTER`] resets the
//! failure count; `--max-attempts` (default 30) consecutive failures exit 3.
//! A 204 on reconnect means the server knows the end was already seen: the
//! last known outcome decides the exit code.
//!
//! # Output
//!
//! - stdout a terminal (and no `--json`): the current first signal on one
//!   line, a bar per job (`progress` percent and message) and per pack step
//!   (`step` status), drawn with `indicatif::MultiProgress`; `--logs` prints
//!   log lines above the bars with `MultiProgress::println`.
//! - not a terminal: the same information as plain lines, `[<id>] <event> …`.
//! - `--json`: every event the stream carries (log lines included, whatever
//!   `--logs` says), one `{"id":N,"event":"…","data":{…}}` per line, nothing
//!   else on stdout. Reconnect notices and errors always go to stderr.

mod args;
mod bars;
mod client;
mod view;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use reqwest::{Client, StatusCode};

use args::Target;
pub use args::{WatchArgs, EXIT_ERROR};
use client::{get_json, lookup_outcome, problem, retryable, Backoff, Failure};
use view::View;

/// A connection that sends nothing (not even a heartbeat) this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection up this long (or that delivered an event) counts as healthy.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// Why a connection ended without `completed`.
enum Ended {
    Stream,
    Error(String),
    Timeout,
}

/// Follow the run or job until it ends; the exit code on success (0, 1 or 2),
/// an error for exit code 3.
pub async fn watch(args: WatchArgs) -> anyhow::Result<u8> {
    let target = Target::parse(&args.id)?;
    let base = args.url.trim().trim_end_matches('/').to_owned();
    let parsed = url::Url::parse(&base).with_context(|| format!("--url `{base}`"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("--url `{base}` must be an http(s) URL");
    }
    let prefix = format!("/{}", args.prefix.trim().trim_matches('/'));
    let prefix = if prefix == "/" { String::new() } else { prefix };
    let tenant = args.tenant.trim().to_owned();
    if tenant.is_empty() {
        bail!("--tenant must not be empty");
    }
    // Every request carries the token; marked sensitive so that no debug
    // output of the client shows it.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("--token must be printable ASCII")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(IDLE_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let mut view = View::new(&target, args.json, args.logs);
    let mut backoff = Backoff::new(args.max_attempts);
    view.line(format!(
        "watching {} {} at {base} (tenant {tenant})",
        target.noun(),
        target.id()
    ));

    if let Target::Job(id) = &target {
        let job = loop {
            match get_json(&client, &format!("{base}/jobs/{id}"), &tenant).await {
                Ok(Some(job)) => break job,
                Ok(None) => bail!("job not found: {id} (tenant {tenant})"),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(why)) => backoff.retry(&view, &base, &why).await?,
            }
        };
        backoff.reset();
        view.job_snapshot(&job);
    }

    let url = format!("{base}{}", target.stream_path(&prefix));
    let mut last_id: Option<u64> = None;
    loop {
        let mut req = client
            .get(&url)
            .header("X-Tenant-Id", &tenant)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) => {
                let why = format!("cannot connect: {:#}", anyhow::Error::from(e));
                backoff.retry(&view, &base, &why).await?;
                continue;
            }
        };
        let status = res.status();
        match status {
            StatusCode::OK => {}
            StatusCode::NO_CONTENT => {
                // The server knows this client has seen the end already.
                let outcome = match view.known {
                    Some(o) => Some(o),
                    None => lookup_outcome(&client, &base, &prefix, &tenant, &target).await,
                };
                return Ok(view.finish(outcome));
            }
            StatusCode::NOT_FOUND => {
                bail!(
                    "{} not found: {} (tenant {tenant})",
                    target.noun(),
                    target.id()
                )
            }
            s if retryable(s) => {
                let why = format!("{url} answered {s}");
                backoff.retry(&view, &base, &why).await?;
                continue;
            }
            s => bail!("{url} answered {s}: {}", problem(res).await),
        }
        let connected = Instant::now();
        let resume_from = last_id;
        let mut delivered = false;
        let mut events = res.bytes_stream().eventsource();
        let ended = loop {
            let event = match events.next().await {
                None => break Ended::Stream,
                Some(Err(e)) => break Ended::Error(e.to_string()),
                Some(Ok(event)) => event,
            };
            if event.event == "timeout" {
                break Ended::Timeout;
            }
            let Ok(id) = event.id.trim().parse::<u64>() else {
                // Every carried event has its seq as id (SPEC §5.1).
                continue;
            };
            if resume_from.is_some_and(|from| id <= from) {
                continue; // already shown before the reconnect
            }
            last_id = Some(last_id.map_or(id, |l| l.max(id)));
            delivered = true;
            if let Some(outcome) = view.event(id, &event.event, &event.data) {
                return Ok(view.finish(Some(outcome)));
            }
        };
        if delivered || connected.elapsed() >= HEALTHY_AFTER {
            backoff.reset();
        }
        let why = match ended {
            Ended::Stream => "the stream ended before completion".to_owned(),
            Ended::Error(e) => format!("the stream broke: {e}"),
            Ended::Timeout => "the server ended the stream (timeout)".to_owned(),
        };
        backoff.retry(&view, &base, &why).await?;
    }
}
