//! `runsignal-load`: benchmarks of the first-signal read path, stream
//! fan-out, and the write path (`submit`, `progress`, `lifecycle`).
//!
//! Starts a real server in-process on a temporary SQLite database, seeds
//! runs through the public API, restarts the server (so the runtime and
//! cache are empty), then measures over HTTP on loopback:
//! - `cold`: the first read of each run (derived from its jobs),
//! - `hit`:  repeated reads served from the run actors' memory,
//! - `304`:  conditional reads with `If-None-Match`,
//! - `trivial`: `GET /healthz` on the same server (the yardstick: hit and
//!   304 rates are reported as ratios of it, over `--rounds` interleaved
//!   rounds of trivial, hit, 304).
//!
//! Compare ratios within one run: the machines are shared and noisy.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;

/// jemalloc instead of the system allocator: profiles of the write path
/// and of fan-out spent about a quarter of all CPU in glibc's malloc and
/// free (ADR 0042).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod actors;
mod cluster;
mod common;
mod fanout;
mod lifecycle;
mod longpoll;
mod procs;
mod progress;
mod streams;
mod submit;
mod svg;
mod ttfs;
mod wrk;
use hdrhistogram::Histogram;
use runsignal::config::Config;
use runsignal::Application;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "runsignal benchmarks")]
enum Cli {
    /// First-signal reads: cold vs hit vs 304.
    FirstSignal(Args),
    /// Stream fan-out: events published to one run, delivered to many SSE subscribers.
    Fanout(fanout::FanoutArgs),
    /// Write path: `POST /jobs` rate and latency (closed loop, or `--rate`).
    Submit(submit::SubmitArgs),
    /// Write path: worker progress reports on leased jobs.
    Progress(progress::ProgressArgs),
    /// Write path: whole remote-job cycles (submit, lease, progress, complete).
    Lifecycle(lifecycle::LifecycleArgs),
    /// Parked long-polling leases: store calls while waiting and per wake-up.
    Longpoll(longpoll::LongpollArgs),
    /// Fan-out on one node and on two nodes joined by Redis, in one run.
    ClusterFanout(cluster::ClusterFanoutArgs),
    /// S SSE subscribers over R runs, events at a set rate per run through
    /// the worker progress API; `--vs-nchan` runs the same against nginx+nchan.
    SseFanout(streams::FanoutArgs),
    /// As `sse-fanout`, over WebSocket (one socket per subscriber).
    WsFanout(streams::FanoutArgs),
    /// Idle SSE subscribers: how many one server holds, memory per subscriber.
    Idle(streams::IdleArgs),
    /// Time to first signal: subscribe, `POST /jobs` at a set rate, time to
    /// the first `first_signal` event.
    Ttfs(ttfs::TtfsArgs),
    /// Touch many runs with `Actors.MaxResident`: resident actors and RSS over time.
    Actors(actors::ActorsArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct Args {
    /// Runs to seed (one job each, leased and reporting progress).
    #[arg(long, default_value_t = 2000)]
    runs: usize,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per timed phase (hit, 304).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// HTTP worker threads of the server.
    #[arg(long, default_value_t = 1)]
    server_workers: usize,
    /// Rounds of (trivial, hit, 304), interleaved so that drift in the
    /// machine's load touches all three alike; ratios are per round, and
    /// the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Drive the timed phases (trivial, hit, 304) with this `wrk` binary
    /// (Debian: `wrk`, one thread, `--concurrency` connections) instead of
    /// this tool's client, which on two cores saturates before the server
    /// does. The cold phase and the checks stay in this tool.
    #[arg(long)]
    wrk: Option<std::path::PathBuf>,
}

/// What a timed phase reads.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// `GET /healthz`: a route that does nothing (the yardstick).
    Trivial,
    /// First signals served from memory (200).
    Hit,
    /// Conditional first-signal reads (304).
    NotModified,
}

pub(crate) const T: &str = "bench";

struct Phase {
    name: &'static str,
    hist: Histogram<u64>,
    elapsed: Duration,
    unexpected: usize,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let n = self.hist.len();
        println!(
            "{:<7} {:>9} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
            self.name,
            n,
            self.rate(),
            self.hist.value_at_quantile(0.50),
            self.hist.value_at_quantile(0.90),
            self.hist.value_at_quantile(0.99),
            self.hist.max(),
            self.unexpected,
            "-"
        );
    }
}

pub(crate) async fn start(
    dir: &std::path::Path,
    workers: usize,
) -> anyhow::Result<(Application, String)> {
    start_with(dir, workers, &[]).await
}

/// A server on a temp database with extra `RUNSIGNAL__…` settings.
pub(crate) async fn start_with(
    dir: &std::path::Path,
    workers: usize,
    extra: &[(&str, &str)],
) -> anyhow::Result<(Application, String)> {
    let mut env = vec![
        (
            "RUNSIGNAL__Server__Bind".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        ("RUNSIGNAL__Server__Workers".to_owned(), workers.to_string()),
        (
            "RUNSIGNAL__Database__Url".to_owned(),
            format!("sqlite://{}/bench.db", dir.display()),
        ),
        ("RUNSIGNAL__Logging__Level".to_owned(), "error".to_owned()),
        // The lease sweeper is the only background store caller; keep it out
        // of the measured window so the store-call count sees requests only.
        (
            "RUNSIGNAL__Jobs__LeaseSweepIntervalSeconds".to_owned(),
            "3600".to_owned(),
        ),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (format!("RUNSIGNAL__{k}"), v.to_string())),
    );
    let app = Application::build(Config::load_from(None, env)?).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    Ok((app, base))
}

/// Seed `n` runs: submit, lease, report progress (so each has a phase signal).
async fn seed(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let mut runs = Vec::with_capacity(n);
    let submit = |_| async {
        let v: Value = client
            .post(format!("{base}/jobs"))
            .header("X-Tenant-Id", T)
            .json(&json!({"pack": "external"}))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(v["run_id"].as_str().context("run_id")?.to_owned())
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        for run in futures_util::future::join_all(chunk.iter().map(submit)).await {
            runs.push(run?);
        }
    }
    let lease_url = format!("{base}/api/v1/orchestrator/workers/lease");
    loop {
        let v: Value = client
            .post(&lease_url)
            .header("X-Tenant-Id", T)
            .json(&json!({"workerId": "bench", "packs": ["external"], "max": 100, "leaseSeconds": 3600}))
            .send()
            .await?
            .json()
            .await?;
        let jobs = v["jobs"].as_array().context("jobs")?.clone();
        if jobs.is_empty() {
            break;
        }
        let report = |job: &Value| {
            let url = format!(
                "{base}/api/v1/orchestrator/jobs/{}/progress",
                job["jobId"].as_str().unwrap_or("")
            );
            let body = json!({"leaseId": job["leaseId"], "stage": "analyze", "step": "scan", "message": "scanning"});
            client.post(url).header("X-Tenant-Id", T).json(&body).send()
        };
        for res in futures_util::future::join_all(jobs.iter().map(report)).await {
            ensure!(res?.status() == 200, "progress report failed");
        }
    }
    Ok(runs)
}

/// One GET per run, `concurrency` at a time; expects `source` on each answer.
async fn read_each(
    client: &reqwest::Client,
    base: &str,
    runs: &[String],
    concurrency: usize,
    source: &str,
) -> anyhow::Result<(Phase, Vec<String>)> {
    let mut hist = Histogram::<u64>::new(3)?;
    let mut unexpected = 0;
    let mut etags = Vec::with_capacity(runs.len());
    let started = Instant::now();
    for chunk in runs.chunks(concurrency) {
        let reads = chunk.iter().map(|run| async move {
            let t = Instant::now();
            let res = client
                .get(format!(
                    "{base}/api/v1/orchestrator/runs/{run}/first-signal"
                ))
                .header("X-Tenant-Id", T)
                .send()
                .await?;
            let us = t.elapsed().as_micros() as u64;
            let src = res
                .headers()
                .get("x-firstsignal-source")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let etag = res
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            anyhow::Ok((us, src, etag))
        });
        for r in futures_util::future::join_all(reads).await {
            let (us, src, etag) = r?;
            hist.record(us.max(1))?;
            unexpected += usize::from(src != source);
            etags.push(etag);
        }
    }
    Ok((
        Phase {
            name: "cold",
            hist,
            elapsed: started.elapsed(),
            unexpected,
        },
        etags,
    ))
}

/// `concurrency` loops of GETs of `target` for `seconds`.
async fn hammer(
    client: &reqwest::Client,
    base: &str,
    runs: &[String],
    etags: &[String],
    args: &Args,
    target: Target,
) -> anyhow::Result<Phase> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let want = if target == Target::NotModified {
        304
    } else {
        200
    };
    let loops = (0..args.concurrency).map(|worker| async move {
        let mut hist = Histogram::<u64>::new(3)?;
        let mut unexpected = 0;
        let mut i = worker * 7919;
        while Instant::now() < deadline {
            i = (i * 1_103_515_245 + 12_345) % runs.len().max(1);
            let mut req = match target {
                Target::Trivial => client.get(format!("{base}/healthz")),
                _ => client
                    .get(format!(
                        "{base}/api/v1/orchestrator/runs/{}/first-signal",
                        runs[i]
                    ))
                    .header("X-Tenant-Id", T),
            };
            if target == Target::NotModified {
                req = req.header("If-None-Match", &etags[i]);
            }
            let t = Instant::now();
            let res = req.send().await?;
            let status = res.status().as_u16();
            let hit = target == Target::Trivial
                || res
                    .headers()
                    .get("cache-status")
                    .is_some_and(|v| v == "hit");
            let _ = res.bytes().await?;
            hist.record((t.elapsed().as_micros() as u64).max(1))?;
            unexpected += usize::from(status != want || !hit);
        }
        anyhow::Ok((hist, unexpected))
    });
    let mut hist = Histogram::<u64>::new(3)?;
    let mut unexpected = 0;
    for r in futures_util::future::join_all(loops).await {
        let (h, u) = r?;
        hist.add(h)?;
        unexpected += u;
    }
    Ok(Phase {
        name: match target {
            Target::Trivial => "trivial",
            Target::Hit => "hit",
            Target::NotModified => "304",
        },
        hist,
        elapsed: started.elapsed(),
        unexpected,
    })
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let (app, base) = start(dir.path(), args.server_workers).await?;
    let handle = app.stopper();
    actix_rt::spawn(app.run_until_stopped());
    let t = Instant::now();
    let runs = seed(&client, &base, args.runs, args.concurrency).await?;
    eprintln!(
        "seeded {} runs in {:.1}s; restarting the server (empty runtime and cache)",
        runs.len(),
        t.elapsed().as_secs_f64()
    );
    handle.stop().await;

    let (app, base) = start(dir.path(), args.server_workers).await?;
    let state = app.state();
    actix_rt::spawn(app.run_until_stopped());
    let (cold, etags) = read_each(&client, &base, &runs, args.concurrency, "cold_start").await?;
    let calls_before = state.queries.get();
    if let Some(wrk) = &args.wrk {
        return with_wrk(wrk, &args, &base, &runs, &etags, &cold, state.get_ref()).await;
    }
    let mut rounds = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let trivial = hammer(&client, &base, &runs, &etags, &args, Target::Trivial).await?;
        let hit = hammer(&client, &base, &runs, &etags, &args, Target::Hit).await?;
        let not_modified =
            hammer(&client, &base, &runs, &etags, &args, Target::NotModified).await?;
        rounds.push((trivial, hit, not_modified));
    }
    let hot_calls = state.queries.get() - calls_before;

    print_head(&args, "reqwest", &cold);
    let mut hit_ratios = Vec::new();
    let mut nm_ratios = Vec::new();
    for (trivial, hit, not_modified) in &rounds {
        for phase in [trivial, hit, not_modified] {
            phase.print();
        }
        hit_ratios.push(hit.rate() / trivial.rate().max(f64::MIN_POSITIVE));
        nm_ratios.push(not_modified.rate() / trivial.rate().max(f64::MIN_POSITIVE));
    }
    println!("store calls during hit+304 phases: {hot_calls}");
    let hit = &rounds[0].1;
    println!(
        "p50 ratio cold/hit: {:.1}x",
        cold.hist.value_at_quantile(0.5) as f64 / hit.hist.value_at_quantile(0.5).max(1) as f64
    );
    print_ratios(&hit_ratios, &nm_ratios);
    ensure!(hot_calls == 0, "hits must not touch the store");
    Ok(())
}

/// The run's settings, the table's head and the cold phase.
fn print_head(args: &Args, client: &str, cold: &Phase) {
    println!(
        "runs={} connections={} server_workers={} seconds={} rounds={} client={client}",
        args.runs, args.concurrency, args.server_workers, args.seconds, args.rounds
    );
    println!(
        "{:<7} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "phase",
        "requests",
        "req/s",
        "p50_us",
        "p90_us",
        "p99_us",
        "max_us",
        "unexpected",
        "cpu_us/req"
    );
    cold.print();
}

/// `req/s of trivial: hit 0.90x (rounds …), 304 0.95x (rounds …)`.
fn print_ratios(hit: &[f64], not_modified: &[f64]) {
    println!(
        "req/s of trivial: hit {}, 304 {}",
        ratios(hit),
        ratios(not_modified)
    );
}

/// The same ratios from the server's CPU per request (trivial's over the
/// phase's): the rates a saturated server would reach. (They drift with
/// the machine's speed as much as req/s does.)
fn print_cpu_ratios(hit: &[f64], not_modified: &[f64]) {
    println!(
        "server CPU per request, trivial's / phase's: hit {}, 304 {}",
        ratios(hit),
        ratios(not_modified)
    );
}

/// `0.90x (rounds 0.88, 0.90, 0.93)`.
fn ratios(v: &[f64]) -> String {
    let rounds: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
    format!(
        "{:.2}x (rounds {})",
        common::median(v.to_vec()),
        rounds.join(", ")
    )
}

/// What the server says it served: first-signal cache results and statuses.
#[derive(Clone, Copy, PartialEq)]
struct Served {
    hit: u64,
    miss: u64,
    ok: u64,
    not_modified: u64,
}

fn served(state: &runsignal::AppState) -> Served {
    let status = |code: &str| {
        state
            .metrics
            .http_requests
            .with_label_values(&[
                "/api/v1/orchestrator/runs/{runId}/first-signal",
                "GET",
                code,
            ])
            .get()
    };
    Served {
        hit: state.metrics.first_signal.cache_hit.get(),
        miss: state.metrics.first_signal.cache_miss.get(),
        ok: status("200"),
        not_modified: status("304"),
    }
}

/// What the server served once it has answered every request it read: when
/// wrk stops, the server may still be answering the requests of its last
/// moment, and those must count in that phase, not the next.
async fn settled(state: &runsignal::AppState) -> Served {
    let mut last = served(state);
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = served(state);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// The timed phases through wrk (`--wrk`), rounds of trivial, hit, 304.
async fn with_wrk(
    wrk: &std::path::Path,
    args: &Args,
    base: &str,
    runs: &[String],
    etags: &[String],
    cold: &Phase,
    state: &runsignal::AppState,
) -> anyhow::Result<()> {
    let calls_before = state.queries.get();
    let dir = tempfile::tempdir()?;
    let paths: Vec<String> = runs
        .iter()
        .map(|r| format!("/api/v1/orchestrator/runs/{r}/first-signal"))
        .collect();
    let trivial = wrk::script(dir.path(), "trivial", &["/healthz".to_owned()], None, T)?;
    let hit = wrk::script(dir.path(), "hit", &paths, None, T)?;
    let not_modified = wrk::script(dir.path(), "304", &paths, Some(etags), T)?;
    print_head(args, "wrk", cold);
    let (mut hit_ratios, mut nm_ratios, mut bad) = (Vec::new(), Vec::new(), 0);
    let (mut hit_cpu, mut nm_cpu) = (Vec::new(), Vec::new());
    // wrk does not look at answers: the server's own counters say what it
    // served in each phase (a 200 with `Cache-Status: hit` in `hit`, a
    // 304 in `304`, never a miss).
    let check = |phase: &mut wrk::WrkPhase, before: Served, after: Served, want_304: bool| {
        let (ok, not_modified) = (
            after.ok - before.ok,
            after.not_modified - before.not_modified,
        );
        let (right, wrong) = if want_304 {
            (not_modified, ok)
        } else {
            (ok, not_modified)
        };
        phase.bad += (after.miss - before.miss) + wrong + phase.requests.saturating_sub(right);
        phase.bad += phase.requests.saturating_sub(after.hit - before.hit);
    };
    for _ in 0..args.rounds.max(1) {
        // Off this thread: it also runs the in-process server's own tasks.
        let phase = |name, script: &std::path::Path| {
            let (wrk, base, script) = (wrk.to_owned(), base.to_owned(), script.to_owned());
            let (connections, seconds) = (args.concurrency, args.seconds);
            tokio::task::spawn_blocking(move || {
                wrk::run(&wrk, name, &base, &script, connections, seconds)
            })
        };
        // The server's CPU per request: this process is the server while
        // wrk runs (the tool itself only waits), so its CPU time is the
        // server's. Its ratios following the req/s ratios say the server,
        // not wrk, is the saturated side.
        // (In clock ticks of 10 ms: a fraction of a per cent of a phase.)
        let cpu = procs::mem(std::process::id()).cpu_ms;
        let mut t = phase("trivial", &trivial).await??;
        let before = settled(state).await;
        let cpu = t.charge(cpu);
        let mut h = phase("hit", &hit).await??;
        let after = settled(state).await;
        let cpu = h.charge(cpu);
        check(&mut h, before, after, false);
        let before = after;
        let mut n = phase("304", &not_modified).await??;
        let after = settled(state).await;
        n.charge(cpu);
        check(&mut n, before, after, true);
        for p in [&t, &h, &n] {
            p.print();
            bad += p.bad;
        }
        hit_ratios.push(h.rate / t.rate.max(f64::MIN_POSITIVE));
        nm_ratios.push(n.rate / t.rate.max(f64::MIN_POSITIVE));
        let per = |p: &wrk::WrkPhase| p.cpu_us.unwrap_or(f64::NAN);
        hit_cpu.push(per(&t) / per(&h));
        nm_cpu.push(per(&t) / per(&n));
    }
    let calls = state.queries.get() - calls_before;
    println!("store calls during hit+304 phases: {calls}");
    print_ratios(&hit_ratios, &nm_ratios);
    print_cpu_ratios(&hit_cpu, &nm_cpu);
    ensure!(calls == 0, "hits must not touch the store");
    ensure!(
        bad == 0,
        "{bad} unexpected answers (not the phase's status, a cache miss, or a socket error)"
    );
    Ok(())
}

/// Run `f` on an actix system and return without dropping the system: the
/// in-process server's background tasks (executor, sweepers) outlive
/// `Stopper::stop` and may be mid-query, and dropping them after the
/// runtime is gone panics in sqlx's connection drop. The process ends next.
fn on_system(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let system = actix_rt::System::new();
    let result = system.block_on(f);
    std::mem::forget(system);
    result
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::FirstSignal(args) => on_system(bench(args)),
        Cli::Fanout(args) => on_system(fanout::run(args)),
        Cli::ClusterFanout(args) => on_system(cluster::run(args)),
        Cli::Submit(args) => on_system(submit::run(args)),
        Cli::Progress(args) => on_system(progress::run(args)),
        Cli::Lifecycle(args) => on_system(lifecycle::run(args)),
        Cli::Longpoll(args) => on_system(longpoll::run(args)),
        Cli::SseFanout(args) => on_system(streams::run(args, streams::Proto::Sse)),
        Cli::WsFanout(args) => on_system(streams::run(args, streams::Proto::Ws)),
        Cli::Idle(args) => on_system(streams::idle(args)),
        Cli::Ttfs(args) => on_system(ttfs::run(args)),
        Cli::Actors(args) => on_system(actors::run(args)),
    }
}
