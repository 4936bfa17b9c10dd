//! `sse-fanout`, `ws-fanout` and `idle`: S subscribers over R runs of a
//! server started as a child process (so its memory is its own), events
//! published through the worker progress API at a set rate per run; with
//! `--vs-nchan` the same shape against nginx+nchan in the same run.
//!
//! Each event carries its index (`"message":"m<i>"`); the publisher notes
//! when it sent the request for event i of run r, and each subscriber
//! records publish → receipt into one HDR histogram.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::common::median;
use crate::procs::{self, Mem, NchanArgs, ServerArgs, Target};
use crate::svg;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Proto {
    Sse,
    Ws,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Subscriber counts to measure (a sweep: `500,1000,2000`).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    subscribers: Vec<usize>,
    /// Runs (nchan: channels) the subscribers are spread over, round robin.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Events published per run.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// Events per second per run.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Measure each shape this many times (fresh servers each time);
    /// medians are printed at the end.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Write charts (p99 and memory against subscribers) as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Bytes of an nchan message. Default: the size of runsignal's frame
    /// for the same event, measured in the same run (else 525).
    #[arg(long)]
    message_bytes: Option<usize>,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    nchan: NchanArgs,
}

/// Where the subscribers connect and where events are published.
enum Kind {
    /// Per run: (runId, jobId, leaseId) of a leased `external` job.
    Runsignal {
        tenant: String,
        runs: Vec<(String, String, String)>,
    },
    /// Channels `c0 … c<R-1>`.
    Nchan,
}

struct Plan<'a> {
    target: &'a Target,
    kind: Kind,
}

impl Plan<'_> {
    fn sub_url(&self, r: usize, proto: Proto, events: &str) -> String {
        let base = match proto {
            Proto::Sse => self.target.base.clone(),
            Proto::Ws => self.target.base.replacen("http://", "ws://", 1),
        };
        match (&self.kind, proto) {
            (Kind::Runsignal { tenant, runs }, Proto::Sse) => format!(
                "{base}/api/v1/orchestrator/stream/runs/{}?tenant={tenant}&events={events}",
                runs[r].0
            ),
            (Kind::Runsignal { tenant, .. }, Proto::Ws) => {
                format!("{base}/api/v1/orchestrator/ws?tenant={tenant}")
            }
            (Kind::Nchan, _) => format!("{base}/sub/c{r}"),
        }
    }

    /// Publish event `i` of run `r`; `Err` with a description on failure.
    async fn publish(
        &self,
        client: &reqwest::Client,
        r: usize,
        i: usize,
        pad: usize,
    ) -> Result<(), String> {
        let req = match &self.kind {
            Kind::Runsignal { tenant, runs } => {
                let (_, job, lease) = &runs[r];
                client
                    .post(format!(
                        "{}/api/v1/orchestrator/jobs/{job}/progress",
                        self.target.base
                    ))
                    .header("X-Tenant-Id", tenant)
                    .json(
                        &json!({"leaseId": lease, "message": format!("m{i}"), "percent": i % 100}),
                    )
            }
            Kind::Nchan => client
                .post(format!("{}/pub/c{r}", self.target.base))
                .header("Content-Type", "application/json")
                .body(nchan_body(i, pad)),
        };
        match req.send().await {
            Ok(res) if res.status().is_success() => {
                let _ = res.bytes().await;
                Ok(())
            }
            Ok(res) => Err(format!("publish: {}", res.status())),
            Err(e) => Err(format!("publish: {e}")),
        }
    }
}

/// A one-line JSON message of about `bytes` bytes carrying the event index.
fn nchan_body(i: usize, bytes: usize) -> String {
    let head = format!("{{\"message\":\"m{i}\",\"percent\":{},\"pad\":\"", i % 100);
    let fill = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(fill))
}

/// The index `i` of a `"message":"m<i>"` in a frame.
fn tag(line: &str) -> Option<usize> {
    let at = line.find("\"message\":\"m")?;
    line[at + 12..].split('"').next()?.parse().ok()
}

/// What all subscribers of one measurement share (single-threaded).
struct Meter {
    base: Instant,
    /// Per run, per event: µs since `base` when its publish was sent (0: not yet).
    sent: Vec<Vec<AtomicU64>>,
    hist: RefCell<Histogram<u64>>,
    delivered: Cell<usize>,
    /// Bytes of the first event frame seen (SSE: the data field; WS: the frame).
    frame_bytes: Cell<usize>,
    events: usize,
}

impl Meter {
    fn new(runs: usize, events: usize) -> anyhow::Result<Meter> {
        Ok(Meter {
            base: Instant::now(),
            sent: (0..runs)
                .map(|_| (0..events).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            hist: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            delivered: Cell::new(0),
            frame_bytes: Cell::new(0),
            events,
        })
    }

    fn now_us(&self) -> u64 {
        (self.base.elapsed().as_micros() as u64).max(1)
    }

    /// A subscriber of run `r` got `frame` now; counts each event once.
    fn got(&self, r: usize, frame: &str, seen: &mut [bool]) -> bool {
        let Some(i) = tag(frame) else {
            return false;
        };
        if i >= self.events || seen[i] {
            return false;
        }
        seen[i] = true;
        if self.frame_bytes.get() == 0 {
            self.frame_bytes.set(frame.len());
        }
        let sent = self.sent[r][i].load(Ordering::Acquire);
        let now = self.now_us();
        if sent > 0 {
            self.hist
                .borrow_mut()
                .saturating_record(now.saturating_sub(sent).max(1));
        }
        self.delivered.set(self.delivered.get() + 1);
        true
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open subscription.
pub enum Conn {
    Sse(reqwest::Response),
    Ws(Box<Ws>),
}

/// Open one subscriber of run `r` (`events`: runsignal's event filter).
async fn open(
    plan: &Plan<'_>,
    client: &reqwest::Client,
    r: usize,
    proto: Proto,
    events: &str,
) -> Result<Conn, String> {
    let url = plan.sub_url(r, proto, events);
    match proto {
        Proto::Sse => {
            let res = client
                .get(&url)
                .header("Accept", "text/event-stream")
                .send()
                .await
                .map_err(|e| format!("subscribe: {e}"))?;
            if res.status() != 200 {
                return Err(format!("subscribe: {}", res.status()));
            }
            Ok(Conn::Sse(res))
        }
        Proto::Ws => {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(|e| format!("ws connect: {e}"))?;
            if let Kind::Runsignal { runs, .. } = &plan.kind {
                let sub = json!({"op": "subscribe", "stream": "run", "id": runs[r].0, "events": [events]});
                ws.send(Message::Text(sub.to_string().into()))
                    .await
                    .map_err(|e| format!("ws send: {e}"))?;
                // Connected once the server confirmed the subscription.
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            if t.as_str().contains("\"op\":\"subscribed\"") {
                                break;
                            }
                            if t.as_str().contains("\"op\":\"error\"") {
                                return Err(format!("ws subscribe: {}", t.as_str()));
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(other) => return Err(format!("ws subscribe: {other:?}")),
                        Err(_) => return Err("ws subscribe: no answer in 30 s".into()),
                    }
                }
            }
            Ok(Conn::Ws(Box::new(ws)))
        }
    }
}

/// Open `n` subscribers (subscriber k on run k mod `runs`), 64 at a time.
/// Returns the open ones with their run, and the failures.
async fn open_all(
    plan: &Plan<'_>,
    client: &reqwest::Client,
    n: usize,
    runs: usize,
    proto: Proto,
    events: &str,
    timeout: Duration,
) -> (Vec<(usize, Conn)>, Vec<String>) {
    let opening = futures_util::stream::iter(0..n)
        .map(|k| async move {
            let r = k % runs;
            (r, open(plan, client, r, proto, events).await)
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    let results = match tokio::time::timeout(timeout, opening).await {
        Ok(r) => r,
        Err(_) => return (Vec::new(), vec![format!("opening not done in {timeout:?}")]),
    };
    let mut ok = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for (r, res) in results {
        match res {
            Ok(c) => ok.push((r, c)),
            Err(e) => failed.push(e),
        }
    }
    (ok, failed)
}

/// Read frames until every event arrived, the stream ended, or `stop`.
///
/// This one thread reads every subscriber, so it does as little per frame as
/// it can (it is the busiest part of the measurement on a small machine):
/// one `stop` future for the whole read, and SSE lines split as bytes, with
/// only the `data:` field checked as UTF-8.
async fn read(conn: Conn, r: usize, meter: &Meter, mut stop: watch::Receiver<bool>) {
    let mut seen = vec![false; meter.events];
    let mut left = meter.events;
    let stopped = stop.changed();
    tokio::pin!(stopped);
    match conn {
        Conn::Sse(mut res) => {
            let mut tail: Vec<u8> = Vec::new();
            while left > 0 {
                let chunk = tokio::select! {
                    c = res.chunk() => c,
                    _ = &mut stopped => break,
                };
                let Ok(Some(chunk)) = chunk else { break };
                tail.extend_from_slice(&chunk);
                let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in tail[..complete].split(|&b| b == b'\n') {
                    let data = line.strip_prefix(b"data: ").map(std::str::from_utf8);
                    if let Some(Ok(data)) = data {
                        left -= usize::from(meter.got(r, data, &mut seen));
                    }
                }
                tail.drain(..complete);
            }
        }
        Conn::Ws(mut ws) => {
            while left > 0 {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = &mut stopped => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        left -= usize::from(meter.got(r, t.as_str(), &mut seen));
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            let _ = ws.close().await;
        }
    }
}

/// One measured row.
pub struct Row {
    pub target: &'static str,
    pub subscribers: usize,
    pub connected: usize,
    pub delivered: usize,
    pub expected: usize,
    pub hist: Histogram<u64>,
    pub before: Option<Mem>,
    pub connected_mem: Option<Mem>,
    /// runsignal's own commit → frame handed to the connection, p50 and p99
    /// (ms, the upper bound of its histogram bucket), over this measurement.
    pub server_lag: Option<(f64, f64)>,
    pub after: Option<Mem>,
    /// This client's own CPU time (ms) over the same window as the
    /// server's: every subscriber connected to the readers' end.
    pub client_cpu_ms: u64,
    pub publish_errors: usize,
    pub frame_bytes: usize,
    pub first_errors: Vec<String>,
}

impl Row {
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn p99(&self) -> f64 {
        self.p(0.99)
    }

    /// Server memory (RSS, MiB) with every subscriber connected.
    pub fn rss_mib(&self) -> Option<f64> {
        self.after.map(|m| m.rss_mib())
    }

    /// Server CPU time per delivery while the events went out (µs): from
    /// every subscriber connected to the readers' end, so it counts the
    /// publishes' work too. The figure to compare across builds when the
    /// latencies swing with the machine.
    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        let (from, to) = (self.connected_mem?, self.after?);
        (self.delivered > 0)
            .then(|| to.cpu_ms.saturating_sub(from.cpu_ms) as f64 * 1000.0 / self.delivered as f64)
    }

    /// The client's CPU time per delivery (µs) over the same window: one
    /// thread reads every subscriber, so how much of it each frame costs
    /// says how close the client is to being the bound.
    pub fn client_us_per_delivery(&self) -> Option<f64> {
        (self.delivered > 0).then(|| self.client_cpu_ms as f64 * 1000.0 / self.delivered as f64)
    }

    fn print(&self) {
        let mib = Mem::cell;
        let us = |v: Option<f64>| v.map_or("-".to_owned(), |c| format!("{c:.2}"));
        println!(
            "{:<10} {:>6} {:>9} {:>19} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10} {:>10} {:>10} {:>9} {:>9} {:>11} {:>6} {:>6}",
            self.target,
            self.subscribers,
            self.connected,
            format!("{}/{}", self.delivered, self.expected),
            self.p(0.5),
            self.p(0.9),
            self.p(0.99),
            self.hist.max() as f64 / 1000.0,
            mib(self.before),
            mib(self.connected_mem),
            mib(self.after),
            us(self.cpu_us_per_delivery()),
            us(self.client_us_per_delivery()),
            self.server_lag
                .map_or("-".to_owned(), |(p50, p99)| format!("{p50}/{p99}")),
            self.frame_bytes,
            self.publish_errors
        );
        for e in &self.first_errors {
            println!("    {e}");
        }
    }
}

fn header() {
    println!(
        "{:<10} {:>6} {:>9} {:>19} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>11} {:>6} {:>6}",
        "target",
        "subs",
        "connected",
        "delivered/expected",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "rss0_MiB",
        "rss_sub",
        "rss_end",
        "cpu_us/dl",
        "cli_us/dl",
        "srv_lag_ms",
        "frame",
        "errors"
    );
}

/// runsignal's `runsignal_stream_delivery_lag_seconds` buckets for the
/// wire, read from its `/metrics` (`None` for nchan or when unreadable).
async fn server_lag(
    plan: &Plan<'_>,
    client: &reqwest::Client,
    proto: Proto,
) -> Option<Vec<(f64, u64)>> {
    if !matches!(plan.kind, Kind::Runsignal { .. }) {
        return None;
    }
    let wire = match proto {
        Proto::Sse => "sse",
        Proto::Ws => "websocket",
    };
    let url = format!("{}/metrics", plan.target.base);
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    Some(lag_buckets(&text, wire))
}

/// Cumulative `(le seconds, count)` buckets of the lag histogram for a wire,
/// in the exposition's order (`+Inf` last). Empty before any delivery.
fn lag_buckets(text: &str, wire: &str) -> Vec<(f64, u64)> {
    let prefix = format!("runsignal_stream_delivery_lag_seconds_bucket{{wire=\"{wire}\",le=\"");
    text.lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = match le {
                "+Inf" => f64::INFINITY,
                le => le.parse().ok()?,
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound (ms) under which quantile `q` of the deliveries counted
/// between two reads of the buckets fell.
fn lag_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let count_before = |i: usize| before.get(i).map_or(0, |b| b.1);
    let total = after
        .last()?
        .1
        .saturating_sub(count_before(after.len() - 1));
    if total == 0 {
        return None;
    }
    after
        .iter()
        .enumerate()
        .find(|(i, (_, n))| n.saturating_sub(count_before(*i)) as f64 >= q * total as f64)
        .map(|(_, (le, _))| le * 1000.0)
}

/// A tenant unique to this process and measurement (also on a shared server).
fn tenant(n: usize) -> String {
    format!("bench-{}-{n}", std::process::id())
}

/// Submit `runs` `external` jobs as `tenant` and lease them all:
/// `(runId, jobId, leaseId)` per run.
pub async fn leased_runs(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    runs: usize,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let submits = futures_util::stream::iter(0..runs)
        .map(|_| async {
            let res = client
                .post(format!("{base}/jobs"))
                .header("X-Tenant-Id", tenant)
                .json(&json!({"pack": "external"}))
                .send()
                .await?;
            ensure!(res.status() == 202, "POST /jobs: {}", res.status());
            anyhow::Ok(())
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for s in submits {
        s?;
    }
    let mut out = Vec::with_capacity(runs);
    while out.len() < runs {
        let v: Value = client
            .post(format!("{base}/api/v1/orchestrator/workers/lease"))
            .header("X-Tenant-Id", tenant)
            .json(&json!({"workerId": "bench", "packs": ["external"], "max": 100, "leaseSeconds": 3600}))
            .send()
            .await?
            .json()
            .await?;
        let jobs = v["jobs"].as_array().context("lease answer without jobs")?;
        ensure!(!jobs.is_empty(), "leased {} of {runs} jobs", out.len());
        for j in jobs {
            let s = |k: &str| j[k].as_str().map(str::to_owned).context("lease field");
            out.push((s("runId")?, s("jobId")?, s("leaseId")?));
        }
    }
    Ok(out)
}

/// Publishing client: keep-alive, one connection per publishing run at most.
fn publisher(runs: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(runs.min(1024))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Subscribing client: one connection per stream, no timeout.
fn subscriber() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?)
}

/// Measure one shape against one target.
#[allow(clippy::too_many_arguments)]
async fn measure(
    plan: &Plan<'_>,
    args: &FanoutArgs,
    proto: Proto,
    subs: usize,
    pad: usize,
) -> anyhow::Result<Row> {
    let runs = args.runs;
    let subscribe = subscriber()?;
    let publish = publisher(runs)?;
    let timeout = args.server.timeout();
    let before = plan.target.mem();
    let (conns, failed) = open_all(plan, &subscribe, subs, runs, proto, "progress", timeout).await;
    let connected = conns.len();
    // Every subscriber attached to its run before the first event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_mem = plan.target.mem();
    let client_cpu_before = procs::own_cpu_ms();
    let lag_before = server_lag(plan, &publish, proto).await;
    let meter = Meter::new(runs, args.events)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers = futures_util::future::join_all(
        conns
            .into_iter()
            .map(|(r, c)| read(c, r, &meter, stop_rx.clone())),
    );
    let errors = RefCell::new(Vec::<String>::new());
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let publishers = futures_util::future::join_all((0..runs).map(|r| {
        let (meter, errors, publish) = (&meter, &errors, &publish);
        async move {
            // Runs start spread over one period, not all at the same instant.
            let offset = period.mul_f64(r as f64 / runs as f64);
            let mut tick = tokio::time::interval_at(start + offset, period);
            for i in 0..args.events {
                tick.tick().await;
                meter.sent[r][i].store(meter.now_us(), Ordering::Release);
                if let Err(e) = plan.publish(publish, r, i, pad).await {
                    errors.borrow_mut().push(e);
                }
            }
        }
    }));
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs_f64(args.events as f64 / args.rate.max(0.001))
        + timeout;
    procs::stop_readers_after(readers, publishers, deadline, &stop_tx).await;
    let after = plan.target.mem();
    let client_cpu_ms = procs::own_cpu_ms().saturating_sub(client_cpu_before);
    let lag_after = server_lag(plan, &publish, proto).await;
    let server_lag = lag_before
        .zip(lag_after)
        .and_then(|(b, a)| Some((lag_quantile(&b, &a, 0.5)?, lag_quantile(&b, &a, 0.99)?)));
    let errors = errors.into_inner();
    let mut first_errors: Vec<String> = failed.iter().take(3).cloned().collect();
    first_errors.extend(errors.iter().take(3).cloned());
    if failed.len() > 3 {
        first_errors.push(format!("… {} subscribers failed in all", failed.len()));
    }
    Ok(Row {
        target: plan.target.name,
        subscribers: subs,
        connected,
        delivered: meter.delivered.get(),
        expected: subs * args.events,
        hist: meter.hist.into_inner(),
        before,
        connected_mem,
        after,
        client_cpu_ms,
        server_lag,
        publish_errors: errors.len(),
        frame_bytes: meter.frame_bytes.get(),
        first_errors,
    })
}

fn server_settings(buffer: usize) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![
        procs::bind_setting()?,
        // Queues that hold a whole run's events: this measures delivery,
        // not how fast this (same-machine) client reads.
        ("Streams__BufferSize", buffer.to_string()),
    ])
}

pub async fn run(args: FanoutArgs, proto: Proto) -> anyhow::Result<()> {
    let limit = procs::raise_nofile()?;
    let max_subs = args.subscribers.iter().copied().max().unwrap_or(0);
    procs::check_fds(max_subs + args.runs.min(1024), limit)?;
    ensure!(
        args.runs > 0 && args.events > 0,
        "--runs and --events must be at least 1"
    );
    ensure!(args.rate > 0.0, "--rate must be positive");
    let nchan = args.nchan.module();
    let name = match proto {
        Proto::Sse => "sse-fanout",
        Proto::Ws => "ws-fanout",
    };
    println!(
        "{name}: subscribers={:?} runs={} events={} rate={}/s per run repeat={} server_workers={} open-file limit={limit}",
        args.subscribers, args.runs, args.events, args.rate, args.repeat, args.server.server_workers
    );
    println!("load average: {}", load_average());
    header();
    let control = reqwest::Client::new();
    let buffer = args.events + 64;
    let mut rows: Vec<(usize, Row, Option<Row>)> = Vec::new();
    let mut n = 0;
    for &subs in &args.subscribers {
        for _ in 0..args.repeat.max(1) {
            n += 1;
            let target = args
                .server
                .start(&control, &server_settings(buffer)?)
                .await?;
            let tenant = tenant(n);
            let runs = leased_runs(&control, &target.base, &tenant, args.runs).await?;
            let plan = Plan {
                target: &target,
                kind: Kind::Runsignal { tenant, runs },
            };
            let ours = measure(&plan, &args, proto, subs, 0).await?;
            ours.print();
            target.stop().await;
            let theirs = match &nchan {
                Some(module) => {
                    let pad = args.message_bytes.unwrap_or(if ours.frame_bytes > 0 {
                        ours.frame_bytes
                    } else {
                        525
                    });
                    let workers = args
                        .nchan
                        .nginx_workers
                        .unwrap_or(args.server.server_workers);
                    let target =
                        procs::start_nchan(&control, &args.nchan.nginx, module, workers, buffer)
                            .await?;
                    let plan = Plan {
                        target: &target,
                        kind: Kind::Nchan,
                    };
                    let row = measure(&plan, &args, proto, subs, pad).await?;
                    row.print();
                    target.stop().await;
                    println!(
                        "{:<10} {subs:>6} p99 runsignal/nchan = {:.2}",
                        "ratio",
                        ours.p99() / row.p99().max(0.001)
                    );
                    Some(row)
                }
                None => None,
            };
            rows.push((subs, ours, theirs));
        }
    }
    summary(&rows);
    if let Some(dir) = &args.svg {
        charts(dir, name, &rows)?;
    }
    println!("load average: {}", load_average());
    Ok(())
}

/// Medians over the repetitions of each subscriber count.
fn summary(rows: &[(usize, Row, Option<Row>)]) {
    println!("medians per subscriber count:");
    println!(
        "{:>6} {:>4} {:>14} {:>14} {:>10} {:>12} {:>12}",
        "subs", "reps", "runsignal_p99", "nchan_p99", "ratio", "rs_delivered", "nc_delivered"
    );
    let mut counts: Vec<usize> = rows.iter().map(|r| r.0).collect();
    counts.dedup();
    for subs in counts {
        let of: Vec<&(usize, Row, Option<Row>)> = rows.iter().filter(|r| r.0 == subs).collect();
        let ours = median(of.iter().map(|r| r.1.p99()).collect());
        let theirs: Vec<f64> = of
            .iter()
            .filter_map(|r| r.2.as_ref().map(Row::p99))
            .collect();
        let ratios: Vec<f64> = of
            .iter()
            .filter_map(|r| r.2.as_ref().map(|t| r.1.p99() / t.p99().max(0.001)))
            .collect();
        let all = |f: &dyn Fn(&Row) -> bool, side: bool| {
            of.iter().all(|r| {
                if side {
                    r.2.as_ref().is_none_or(f)
                } else {
                    f(&r.1)
                }
            })
        };
        let complete = |r: &Row| r.delivered == r.expected;
        let yes = |b| if b { "100%" } else { "NO" };
        println!(
            "{subs:>6} {:>4} {ours:>14.1} {:>14} {:>10} {:>12} {:>12}",
            of.len(),
            if theirs.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", median(theirs))
            },
            if ratios.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", median(ratios))
            },
            yes(all(&complete, false)),
            if of.iter().any(|r| r.2.is_some()) {
                yes(all(&complete, true))
            } else {
                "-"
            },
        );
    }
}

/// p99 and memory against subscriber count, one line per server.
fn charts(
    dir: &std::path::Path,
    name: &str,
    rows: &[(usize, Row, Option<Row>)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut counts: Vec<usize> = rows.iter().map(|r| r.0).collect();
    counts.dedup();
    let series = |f: &dyn Fn(&Row) -> Option<f64>, nchan: bool| -> Vec<(f64, f64)> {
        counts
            .iter()
            .filter_map(|&subs| {
                let vals: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.0 == subs)
                    .filter_map(|r| if nchan { r.2.as_ref() } else { Some(&r.1) })
                    .filter_map(f)
                    .collect();
                (!vals.is_empty()).then(|| (subs as f64, median(vals)))
            })
            .collect()
    };
    let p99 = |r: &Row| Some(r.p99());
    let rss = |r: &Row| r.rss_mib();
    let write = |file: String, title: String, y: &str, f: &dyn Fn(&Row) -> Option<f64>| {
        let s = vec![
            svg::Series::new("runsignal", series(f, false)),
            svg::Series::new("nginx+nchan", series(f, true)),
        ];
        let path = dir.join(file);
        std::fs::write(&path, svg::line_chart(&title, "subscribers", y, &s))?;
        println!("chart: {}", path.display());
        anyhow::Ok(())
    };
    write(
        format!("{name}-p99.svg"),
        format!("{name}: p99 publish→receipt (median of repetitions)"),
        "p99 ms",
        &p99,
    )?;
    write(
        format!("{name}-rss.svg"),
        format!("{name}: server RSS at the end (nginx: master + workers)"),
        "RSS MiB",
        &rss,
    )?;
    Ok(())
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    /// Idle SSE subscribers to open (a sweep: `2000,5000,10000`).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    subscribers: Vec<usize>,
    /// Runs (nchan: channels) they are spread over.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Seconds to hold them before measuring memory.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Write a chart (memory per subscriber against subscribers) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Also hold as many plain keep-alive connections (one `GET /healthz`
    /// answered on each, then idle) on a fresh server: what the HTTP layer
    /// costs per connection before any stream.
    #[arg(long)]
    baseline: bool,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    nchan: NchanArgs,
}

struct IdleRow {
    target: &'static str,
    subs: usize,
    held: usize,
    before: Option<Mem>,
    after: Option<Mem>,
}

impl IdleRow {
    fn per_sub(&self, pss: bool) -> Option<f64> {
        let (b, a) = (self.before?, self.after?);
        let (b, a) = if pss {
            (b.pss_kib, a.pss_kib)
        } else {
            (b.rss_kib, a.rss_kib)
        };
        Some(a.saturating_sub(b) as f64 / self.held.max(1) as f64)
    }

    fn print(&self) {
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let mib = Mem::cell;
        println!(
            "{:<10} {:>7} {:>7} {:>10} {:>10} {:>14} {:>14}",
            self.target,
            self.subs,
            self.held,
            mib(self.before),
            mib(self.after),
            f(self.per_sub(false)),
            f(self.per_sub(true))
        );
    }
}

async fn idle_one(plan: &Plan<'_>, args: &IdleArgs, subs: usize) -> anyhow::Result<IdleRow> {
    let client = subscriber()?;
    let before = plan.target.mem();
    let events = "first_signal";
    let (conns, failed) = open_all(
        plan,
        &client,
        subs,
        args.runs,
        Proto::Sse,
        events,
        args.server.timeout(),
    )
    .await;
    for e in failed.iter().take(3) {
        println!("    {e}");
    }
    let opened = conns.len();
    let meter = Meter::new(args.runs, 1)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let ended = Cell::new(0usize);
    let readers = futures_util::future::join_all(conns.into_iter().map(|(r, c)| {
        let (meter, stop_rx, ended) = (&meter, stop_rx.clone(), &ended);
        async move {
            // Never complete by count: no frame carries an event index.
            read(c, r, meter, stop_rx.clone()).await;
            if !*stop_rx.borrow() {
                ended.set(ended.get() + 1);
            }
        }
    }));
    let hold = async {
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let after = plan.target.mem();
        let _ = stop_tx.send(true);
        after
    };
    let (_, after) = futures_util::join!(readers, hold);
    Ok(IdleRow {
        target: plan.target.name,
        subs,
        held: opened - ended.get(),
        before,
        after,
    })
}

/// `subs` plain keep-alive connections, each after one answered
/// `GET /healthz`, held idle for `--settle` seconds.
async fn idle_keepalive(target: &Target, args: &IdleArgs, subs: usize) -> anyhow::Result<IdleRow> {
    let addr = target
        .base
        .strip_prefix("http://")
        .context("a base URL without http://")?
        .to_owned();
    let before = target.mem();
    let gate = tokio::sync::Semaphore::new(200);
    let opened = futures_util::future::join_all((0..subs).map(|_| {
        let (addr, gate) = (&addr, &gate);
        async move {
            let _permit = gate.acquire().await.ok()?;
            let mut conn = tokio::net::TcpStream::connect(addr.as_str()).await.ok()?;
            healthz(&mut conn).await.then_some(conn)
        }
    }))
    .await;
    let mut conns: Vec<_> = opened.into_iter().flatten().collect();
    // The server closes a connection idle for its keep-alive (actix: 5 s).
    // Opening 10,000 takes a while: ask once more on each, so that every
    // one was last used just before the settle.
    ask_all(&mut conns, &gate).await;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = target.mem();
    // Held: the connections that still answer after the measurement.
    let held = ask_all(&mut conns, &gate).await;
    drop(conns);
    Ok(IdleRow {
        target: "keepalive",
        subs,
        held,
        before,
        after,
    })
}

/// `GET /healthz` on an open connection: answered 200?
async fn healthz(conn: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if conn
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 1024];
    matches!(conn.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// Ask on every connection; how many answered.
async fn ask_all(conns: &mut [tokio::net::TcpStream], gate: &tokio::sync::Semaphore) -> usize {
    futures_util::future::join_all(conns.iter_mut().map(|conn| async move {
        let _permit = gate.acquire().await.ok()?;
        healthz(conn).await.then_some(())
    }))
    .await
    .into_iter()
    .flatten()
    .count()
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let limit = procs::raise_nofile()?;
    let max_subs = args.subscribers.iter().copied().max().unwrap_or(0);
    procs::check_fds(max_subs + 32, limit)?;
    ensure!(args.runs > 0, "--runs must be at least 1");
    let nchan = args.nchan.module();
    println!(
        "idle: subscribers={:?} runs={} settle={}s server_workers={} open-file limit={limit}",
        args.subscribers, args.runs, args.settle, args.server.server_workers
    );
    println!("load average: {}", load_average());
    println!(
        "{:<10} {:>7} {:>7} {:>10} {:>10} {:>14} {:>14}",
        "target", "subs", "held", "rss0_MiB", "rss_MiB", "KiB/sub(RSS)", "KiB/sub(PSS)"
    );
    let control = reqwest::Client::new();
    let mut rows = Vec::new();
    for (n, &subs) in args.subscribers.iter().enumerate() {
        let target = args
            .server
            .start(&control, &[procs::bind_setting()?])
            .await?;
        let tenant = tenant(n + 1);
        let runs = leased_runs(&control, &target.base, &tenant, args.runs).await?;
        let plan = Plan {
            target: &target,
            kind: Kind::Runsignal { tenant, runs },
        };
        let ours = idle_one(&plan, &args, subs).await?;
        ours.print();
        target.stop().await;
        if args.baseline {
            let target = args
                .server
                .start(&control, &[procs::bind_setting()?])
                .await?;
            let row = idle_keepalive(&target, &args, subs).await?;
            row.print();
            target.stop().await;
        }
        let theirs = match &nchan {
            Some(module) => {
                let workers = args
                    .nchan
                    .nginx_workers
                    .unwrap_or(args.server.server_workers);
                let target =
                    procs::start_nchan(&control, &args.nchan.nginx, module, workers, 16).await?;
                let plan = Plan {
                    target: &target,
                    kind: Kind::Nchan,
                };
                let row = idle_one(&plan, &args, subs).await?;
                row.print();
                target.stop().await;
                if let (Some(a), Some(b)) = (ours.per_sub(false), row.per_sub(false)) {
                    println!(
                        "{:<10} {subs:>7} KiB/sub (RSS) runsignal/nchan = {:.2}",
                        "ratio",
                        a / b.max(0.001)
                    );
                }
                Some(row)
            }
            None => None,
        };
        rows.push((ours, theirs));
    }
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir)?;
        let pts = |nchan: bool| -> Vec<(f64, f64)> {
            rows.iter()
                .filter_map(|(o, t)| if nchan { t.as_ref() } else { Some(o) })
                .filter_map(|r| Some((r.subs as f64, r.after?.rss_mib())))
                .collect()
        };
        let path = dir.join("idle-rss.svg");
        std::fs::write(
            &path,
            svg::line_chart(
                "idle SSE subscribers: server RSS",
                "subscribers",
                "RSS MiB",
                &[
                    svg::Series::new("runsignal", pts(false)),
                    svg::Series::new("nginx+nchan", pts(true)),
                ],
            ),
        )?;
        println!("chart: {}", path.display());
    }
    println!("load average: {}", load_average());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_lag_quantile_is_read_from_the_buckets_counted_between_two_reads() {
        let metrics = |counts: [u64; 3]| {
            format!(
                "# TYPE runsignal_stream_delivery_lag_seconds histogram\n\
                 runsignal_stream_delivery_lag_seconds_bucket{{wire=\"sse\",le=\"0.005\"}} {}\n\
                 runsignal_stream_delivery_lag_seconds_bucket{{wire=\"sse\",le=\"0.025\"}} {}\n\
                 runsignal_stream_delivery_lag_seconds_bucket{{wire=\"sse\",le=\"+Inf\"}} {}\n\
                 runsignal_stream_delivery_lag_seconds_bucket{{wire=\"ws\",le=\"0.005\"}} 7\n",
                counts[0], counts[1], counts[2]
            )
        };
        let before = lag_buckets(&metrics([10, 10, 10]), "sse");
        let after = lag_buckets(&metrics([60, 109, 110]), "sse");
        assert_eq!(after.len(), 3);
        // 100 deliveries between the reads: 50 under 5 ms, 99 under 25 ms.
        assert_eq!(lag_quantile(&before, &after, 0.5), Some(5.0));
        assert_eq!(lag_quantile(&before, &after, 0.99), Some(25.0));
        assert_eq!(lag_quantile(&before, &after, 1.0), Some(f64::INFINITY));
        // Nothing delivered before the first read, or nothing at all since.
        assert_eq!(lag_quantile(&[], &after, 0.5), Some(5.0));
        assert_eq!(lag_quantile(&after, &after, 0.5), None);
    }

    #[test]
    fn tags_are_read_from_frames_and_bodies() {
        assert_eq!(tag(r#"{"seq":3,"message":"m17","percent":17}"#), Some(17));
        assert_eq!(tag(&nchan_body(42, 525)), Some(42));
        assert_eq!(tag(r#"{"message":"hello"}"#), None);
    }

    #[test]
    fn nchan_bodies_have_the_asked_size() {
        assert_eq!(nchan_body(7, 525).len(), 525);
        assert!(serde_json::from_str::<Value>(&nchan_body(7, 525)).is_ok());
    }
}
