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

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// Exit code for errors (see the module docs).
pub const EXIT_ERROR: u8 = 3;

/// A connection that sends nothing (not even a heartbeat) this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection up this long (or that delivered an event) counts as healthy.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(5);

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// `runsignal watch`: follow a run or a job live until it ends.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit codes: 0 succeeded, 1 failed, 2 canceled, 3 error \
(bad arguments, not found, server unreachable after retries).")]
pub struct WatchArgs {
    /// Run id (UUID) or job id (ULID) to follow.
    pub id: String,
    /// Base URL of the runsignal server.
    #[arg(long, env = "RUNSIGNAL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Tenant the run or job belongs to (sent as `X-Tenant-Id`).
    #[arg(long, env = "RUNSIGNAL_TENANT")]
    pub tenant: String,
    /// API prefix of the stream routes.
    #[arg(long, default_value = "/api/v1/orchestrator")]
    pub prefix: String,
    /// Show log lines (pack-run stream).
    #[arg(long)]
    pub logs: bool,
    /// Print the raw events, one JSON object per line, and nothing else.
    #[arg(long)]
    pub json: bool,
    /// Consecutive failed connection attempts before giving up (exit 3).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
}

/// How the run or job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Canceled,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed => 1,
            Outcome::Canceled => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Canceled => "canceled",
        }
    }

    /// A run status or a job state.
    fn from_status(s: &str) -> Option<Outcome> {
        match s {
            "succeeded" | "done" => Some(Outcome::Succeeded),
            "failed" => Some(Outcome::Failed),
            "canceled" | "cancelled" => Some(Outcome::Canceled),
            _ => None,
        }
    }

    /// A job envelope type (`job.done|job.failed|job.canceled`).
    fn from_job_type(ty: &str) -> Option<Outcome> {
        Outcome::from_status(ty.strip_prefix("job.")?)
    }

    /// A first signal's `kind` (SPEC §4.1).
    fn from_signal_kind(kind: u64) -> Option<Outcome> {
        match kind {
            4 => Some(Outcome::Failed),
            5 => Some(Outcome::Succeeded),
            6 => Some(Outcome::Canceled),
            _ => None,
        }
    }
}

/// What the id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Run(String),
    Job(String),
}

impl Target {
    /// A UUID is a run, a ULID a job; anything else is a usage error.
    pub fn parse(id: &str) -> anyhow::Result<Target> {
        let id = id.trim();
        if let Ok(uuid) = uuid::Uuid::parse_str(id) {
            return Ok(Target::Run(uuid.hyphenated().to_string()));
        }
        if let Ok(ulid) = ulid::Ulid::from_string(id) {
            return Ok(Target::Job(ulid.to_string()));
        }
        bail!("`{id}` is neither a run id (UUID) nor a job id (ULID)")
    }

    fn noun(&self) -> &'static str {
        match self {
            Target::Run(_) => "run",
            Target::Job(_) => "job",
        }
    }

    fn id(&self) -> &str {
        match self {
            Target::Run(id) | Target::Job(id) => id,
        }
    }

    fn stream_path(&self, prefix: &str) -> String {
        match self {
            Target::Run(id) => format!("{prefix}/stream/runs/{id}"),
            Target::Job(id) => format!("{prefix}/stream/jobs/{id}"),
        }
    }
}

/// Consecutive failures and the delay before the next attempt.
struct Backoff {
    failures: u32,
    limit: u32,
    delay: Duration,
}

impl Backoff {
    fn new(limit: u32) -> Backoff {
        Backoff {
            failures: 0,
            limit,
            delay: BACKOFF_FIRST,
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
        self.delay = BACKOFF_FIRST;
    }

    /// Count a failed attempt, then wait; an error once the limit is reached.
    async fn retry(&mut self, view: &View, base: &str, why: &str) -> anyhow::Result<()> {
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
    let client = Client::builder()
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

/// 408, 429 and 5xx are worth another attempt; other statuses are final.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

enum Failure {
    Retry(String),
    Fatal(anyhow::Error),
}

/// GET a JSON resource: `None` on 404.
async fn get_json(client: &Client, url: &str, tenant: &str) -> Result<Option<Value>, Failure> {
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
async fn problem(res: reqwest::Response) -> String {
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
async fn lookup_outcome(
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

const KINDS: [&str; 8] = [
    "queued",
    "started",
    "phase",
    "blocked",
    "failed",
    "succeeded",
    "canceled",
    "unavailable",
];
const PHASES: [&str; 7] = [
    "resolve", "fetch", "restore", "analyze", "policy", "report", "unknown",
];

fn kind_name(kind: Option<u64>) -> &'static str {
    kind.and_then(|k| KINDS.get(k as usize).copied())
        .unwrap_or("unknown")
}

fn phase_name(phase: Option<u64>) -> &'static str {
    phase
        .and_then(|p| PHASES.get(p as usize).copied())
        .unwrap_or("unknown")
}

fn short(job_id: &str) -> &str {
    // ULIDs share their timestamp head; the random tail tells jobs apart.
    job_id
        .get(job_id.len().saturating_sub(8)..)
        .unwrap_or(job_id)
}

fn str_of(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// `stage/step: message`, leaving out what is missing.
fn where_what(stage: Option<&str>, step: Option<&str>, message: Option<&str>) -> String {
    let place = match (stage, step) {
        (Some(a), Some(b)) => format!("{a}/{b}"),
        (Some(a), None) => a.to_owned(),
        (None, Some(b)) => b.to_owned(),
        (None, None) => String::new(),
    };
    match (place.is_empty(), message) {
        (true, Some(m)) => m.to_owned(),
        (false, Some(m)) => format!("{place}: {m}"),
        (_, None) => place,
    }
}

fn write_stdout(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Terminal bars (stdout is a TTY and no `--json`).
struct Bars {
    mp: MultiProgress,
    signal: ProgressBar,
    jobs: HashMap<String, ProgressBar>,
    steps: BTreeMap<i64, ProgressBar>,
}

fn job_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.green} {prefix:.bold} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix:.bold} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Bars {
    fn new() -> Bars {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let signal = mp.add(ProgressBar::new_spinner().with_style(spinner_style()));
        signal.set_prefix("signal");
        signal.set_message("waiting for the first signal…");
        signal.enable_steady_tick(Duration::from_millis(120));
        Bars {
            mp,
            signal,
            jobs: HashMap::new(),
            steps: BTreeMap::new(),
        }
    }

    fn job(&mut self, job_id: &str) -> &ProgressBar {
        let mp = &self.mp;
        self.jobs.entry(job_id.to_owned()).or_insert_with(|| {
            let bar = mp.add(ProgressBar::new(100).with_style(job_style()));
            bar.set_prefix(format!("job {}", short(job_id)));
            bar
        })
    }

    fn step(&mut self, index: i64) -> &ProgressBar {
        let mp = &self.mp;
        self.steps.entry(index).or_insert_with(|| {
            let bar = mp.add(ProgressBar::new_spinner().with_style(spinner_style()));
            bar.set_prefix(format!("step {index}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }
}

/// Renders events (bars, plain lines or JSON) and keeps what decides the
/// outcome.
struct View {
    job_target: bool,
    json: bool,
    logs: bool,
    bars: Option<Bars>,
    /// Last stage/step each job reported (the first-signal line names them).
    stages: HashMap<String, (Option<String>, Option<String>)>,
    /// Last known outcome (terminal first signal, terminal job state).
    known: Option<Outcome>,
    target: String,
}

impl View {
    fn new(target: &Target, json: bool, logs: bool) -> View {
        let bars = (!json && std::io::stdout().is_terminal()).then(Bars::new);
        View {
            job_target: matches!(target, Target::Job(_)),
            json,
            logs,
            bars,
            stages: HashMap::new(),
            known: None,
            target: format!("{} {}", target.noun(), target.id()),
        }
    }

    /// A human line: above the bars, or plain on stdout; never with `--json`.
    fn line(&self, text: String) {
        if self.json {
            return;
        }
        match &self.bars {
            Some(b) => {
                let _ = b.mp.println(text);
            }
            None => write_stdout(&text),
        }
    }

    /// A notice on stderr (the bars are lifted while it prints).
    fn notice(&self, text: &str) {
        let print = || eprintln!("runsignal watch: {text}");
        match &self.bars {
            Some(b) => b.mp.suspend(print),
            None => print(),
        }
    }

    /// The job as `GET /jobs/{id}` returns it (job watch, before streaming).
    fn job_snapshot(&mut self, job: &Value) {
        let id = job["job_id"].as_str().unwrap_or_default().to_owned();
        let state = job["state"].as_str().unwrap_or("unknown");
        self.known = Outcome::from_status(state);
        let p = &job["progress"];
        let (stage, step) = (str_of(&p["stage"]), str_of(&p["step"]));
        let percent = p["percent"].as_f64();
        let detail = where_what(stage, step, str_of(&p["message"]));
        if let Some(bars) = &mut self.bars {
            let bar = bars.job(&id);
            if let Some(pct) = percent {
                bar.set_position(pct.round() as u64);
            }
            bar.set_message(format!("{state} {detail}").trim_end().to_owned());
            // No first signal on the pack-run stream: the top line names the job.
            let run = job["run_id"].as_str().unwrap_or("?");
            let pack = job["pack"].as_str().unwrap_or("?");
            bars.signal.set_prefix("pack");
            bars.signal
                .set_message(format!("{pack} · run {run} · attempt {}", job["attempt"]));
        } else {
            let pct = percent.map(|p| format!(" {p:.0}%")).unwrap_or_default();
            let line = format!(
                "job {id} ({}) {state}{pct} {detail}",
                job["pack"].as_str().unwrap_or("?")
            );
            self.line(line.trim_end().to_owned());
        }
    }

    /// Show one event; `Some` when it is the final `completed`.
    fn event(&mut self, id: u64, name: &str, raw: &str) -> Option<Outcome> {
        let data: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
        if self.json {
            // The server's data is one line of JSON: print it as sent.
            let body = if data.is_string() || raw.contains('\n') {
                data.to_string()
            } else {
                raw.trim().to_owned()
            };
            let name = Value::from(name);
            write_stdout(&format!(r#"{{"id":{id},"event":{name},"data":{body}}}"#));
        }
        match name {
            "first_signal" => self.first_signal(id, &data),
            "job" => self.job(id, &data),
            "progress" => self.progress(id, &data),
            "step" => self.step(id, &data),
            "log" => self.log(&data),
            "completed" => return Some(self.completed(id, &data)),
            _ => {}
        }
        None
    }

    fn first_signal(&mut self, id: u64, data: &Value) {
        let signal = &data["signal"];
        let kind = signal["kind"].as_u64();
        if let Some(outcome) = kind.and_then(Outcome::from_signal_kind) {
            self.known = Some(outcome);
        }
        // The signal names its phase; the deciding job's last progress
        // report names the stage and step more precisely.
        let reported = str_of(&signal["jobId"]).and_then(|j| self.stages.get(j));
        let stage = reported.and_then(|(stage, _)| stage.clone()).or_else(|| {
            match phase_name(signal["phase"].as_u64()) {
                "unknown" => None,
                phase => Some(phase.to_owned()),
            }
        });
        let step = reported.and_then(|(_, step)| step.clone());
        let place = where_what(stage.as_deref(), step.as_deref(), None);
        let mut text = kind_name(kind).to_owned();
        for part in [place.as_str(), signal["summary"].as_str().unwrap_or("")] {
            if !part.is_empty() {
                text.push_str(" · ");
                text.push_str(part);
            }
        }
        match &self.bars {
            Some(bars) => bars.signal.set_message(text),
            None => self.line(format!("[{id}] signal {text}")),
        }
    }

    fn job(&mut self, id: u64, env: &Value) {
        let job = env["jobId"].as_str().unwrap_or("?");
        let ty = env["type"].as_str().unwrap_or("");
        let p = &env["payload"];
        let state = str_of(&p["state"])
            .or_else(|| ty.strip_prefix("job."))
            .unwrap_or("?");
        let detail = match ty {
            "job.blocked" if p["blocked"] == Value::Bool(false) => "unblocked".to_owned(),
            "job.blocked" => format!("blocked: {}", p["reason"].as_str().unwrap_or("")),
            "job.retry_scheduled" => format!(
                "retry scheduled after attempt {}/{}: {}",
                p["attempt"],
                p["maxAttempts"],
                p["error"]["message"].as_str().unwrap_or("")
            ),
            _ => match str_of(&p["error"]["message"]) {
                Some(m) => format!("{state}: {m}"),
                None => state.to_owned(),
            },
        };
        if self.job_target {
            if let Some(outcome) = Outcome::from_job_type(ty) {
                self.known = Some(outcome);
            }
        }
        match &mut self.bars {
            Some(bars) => {
                let bar = bars.job(job);
                match Outcome::from_job_type(ty) {
                    Some(Outcome::Succeeded) => {
                        bar.set_position(100);
                        bar.finish_with_message(format!("✓ {detail}"));
                    }
                    Some(_) => bar.abandon_with_message(format!("✗ {detail}")),
                    None => bar.set_message(detail),
                }
            }
            None => self.line(format!("[{id}] job {job} {detail}")),
        }
    }

    fn progress(&mut self, id: u64, env: &Value) {
        let job = env["jobId"].as_str().unwrap_or("?");
        let p = &env["payload"];
        let (stage, step) = (str_of(&p["stage"]), str_of(&p["step"]));
        let entry = self.stages.entry(job.to_owned()).or_default();
        if let Some(s) = stage {
            entry.0 = Some(s.to_owned());
        }
        if let Some(s) = step {
            entry.1 = Some(s.to_owned());
        }
        let percent = p["percent"].as_f64();
        let detail = where_what(stage, step, str_of(&p["message"]));
        match &mut self.bars {
            Some(bars) => {
                let bar = bars.job(job);
                if let Some(pct) = percent {
                    bar.set_position(pct.round() as u64);
                }
                bar.set_message(detail);
            }
            None => {
                let pct = percent.map(|p| format!(" {p:.0}%")).unwrap_or_default();
                self.line(format!("[{id}] progress {job}{pct} {detail}"));
            }
        }
    }

    fn step(&mut self, id: u64, data: &Value) {
        let index = data["stepIndex"].as_i64().unwrap_or(-1);
        let name = data["stepName"].as_str().unwrap_or("");
        let status = data["status"].as_str().unwrap_or("?");
        let exit = match data["exitCode"].as_i64() {
            Some(code) => format!(" (exit {code})"),
            None => String::new(),
        };
        let job_target = self.job_target;
        match &mut self.bars {
            Some(bars) => {
                if job_target {
                    // The pack-run stream's only news about the job itself.
                    if let Some(job) = bars.jobs.values().next() {
                        job.set_message(format!("step {index} {name} {status}"));
                    }
                }
                let bar = bars.step(index);
                match status {
                    "running" | "pending" => bar.set_message(format!("{name} {status}")),
                    "succeeded" => {
                        bar.set_style(done_style());
                        bar.finish_with_message(format!("✓ {name}{exit}"));
                    }
                    other => {
                        bar.set_style(done_style());
                        bar.abandon_with_message(format!("✗ {name} {other}{exit}"));
                    }
                }
            }
            None => self.line(format!("[{id}] step #{index} {name} {status}{exit}")),
        }
    }

    fn log(&self, data: &Value) {
        if !self.logs {
            return;
        }
        let step = match data["stepIndex"].as_i64() {
            Some(i) => format!("#{i} "),
            None => String::new(),
        };
        self.line(format!(
            "  {step}{}| {}",
            data["stream"].as_str().unwrap_or("stdout"),
            data["line"].as_str().unwrap_or("")
        ));
    }

    fn completed(&mut self, id: u64, env: &Value) -> Outcome {
        let outcome = if self.job_target {
            env["type"].as_str().and_then(Outcome::from_job_type)
        } else {
            env["payload"]["status"]
                .as_str()
                .and_then(Outcome::from_status)
        };
        // An unrecognised end is not reported as success.
        let outcome = outcome.or(self.known).unwrap_or(Outcome::Failed);
        if self.job_target {
            let job = env["jobId"].as_str().unwrap_or("?").to_owned();
            if let Some(bars) = &mut self.bars {
                let bar = bars.job(&job);
                match outcome {
                    Outcome::Succeeded => {
                        bar.set_position(100);
                        bar.finish_with_message("✓ done");
                    }
                    other => bar.abandon_with_message(format!("✗ {}", other.as_str())),
                }
            }
        }
        if self.bars.is_none() {
            self.line(format!("[{id}] completed {}", outcome.as_str()));
        }
        outcome
    }

    /// Leave the bars as they are and print the verdict; the exit code.
    fn finish(mut self, outcome: Option<Outcome>) -> u8 {
        if let Some(bars) = self.bars.take() {
            let verdict = outcome.map_or("ended", Outcome::as_str);
            bars.signal.finish();
            for bar in bars.jobs.values().chain(bars.steps.values()) {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
            drop(bars);
            // The last bar's line is not terminated.
            write_stdout(&format!("\n{} {verdict}", self.target));
        } else if !self.json {
            let verdict = outcome.map_or("ended (already complete)", Outcome::as_str);
            write_stdout(&format!("{} {verdict}", self.target));
        }
        outcome.map_or(0, Outcome::code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pick_the_stream() {
        assert_eq!(
            Target::parse("3F2504E0-4F89-11D3-9A0C-0305E82C3301").unwrap(),
            Target::Run("3f2504e0-4f89-11d3-9a0c-0305e82c3301".into())
        );
        assert_eq!(
            Target::parse("01arz3ndektsv4rrffq69g5fav").unwrap(),
            Target::Job("01ARZ3NDEKTSV4RRFFQ69G5FAV".into())
        );
        assert!(Target::parse("nope").is_err());
        assert_eq!(
            Target::Run("r".into()).stream_path("/api/v1/orchestrator"),
            "/api/v1/orchestrator/stream/runs/r"
        );
        assert_eq!(
            Target::Job("j".into()).stream_path("/p"),
            "/p/stream/jobs/j"
        );
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(
            Outcome::from_status("succeeded").map(Outcome::code),
            Some(0)
        );
        assert_eq!(
            Outcome::from_job_type("job.done").map(Outcome::code),
            Some(0)
        );
        assert_eq!(
            Outcome::from_job_type("job.failed").map(Outcome::code),
            Some(1)
        );
        assert_eq!(
            Outcome::from_job_type("job.canceled").map(Outcome::code),
            Some(2)
        );
        assert_eq!(Outcome::from_job_type("job.working"), None);
        assert_eq!(Outcome::from_signal_kind(4), Some(Outcome::Failed));
        assert_eq!(Outcome::from_signal_kind(5), Some(Outcome::Succeeded));
        assert_eq!(Outcome::from_signal_kind(6), Some(Outcome::Canceled));
        assert_eq!(Outcome::from_signal_kind(2), None);
    }

    #[test]
    fn where_what_leaves_out_missing_parts() {
        assert_eq!(where_what(Some("a"), Some("b"), Some("m")), "a/b: m");
        assert_eq!(where_what(None, None, Some("m")), "m");
        assert_eq!(where_what(Some("a"), None, None), "a");
        assert_eq!(short("01ARZ3NDEKTSV4RRFFQ69G5FAV"), "Q69G5FAV");
    }
}
