//! `ttfs`: time to first signal. N runs are created (`POST /runs`) and each
//! gets an SSE subscriber of its run stream (`events=first_signal`); then
//! `POST /jobs {"pack":"external","run_id":…}` is sent at a set rate, one
//! per run (open loop: a slow answer does not delay the next submit). The
//! latency is from sending the submit to the first `first_signal` event on
//! that run's stream that arrives after it.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::procs::{self, ServerArgs};
use crate::streams::load_average;

#[derive(clap::Args, Debug, Clone)]
pub struct TtfsArgs {
    /// Jobs to submit (one per run, each run with its own subscriber).
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Submits per second (offered, open loop).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Measure this many times (fresh server each time).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[command(flatten)]
    server: ServerArgs,
}

struct Meter {
    base: Instant,
    sent: Vec<AtomicU64>,
    hist: RefCell<Histogram<u64>>,
    got: Cell<usize>,
}

impl Meter {
    fn now_us(&self) -> u64 {
        (self.base.elapsed().as_micros() as u64).max(1)
    }
}

/// Wait for the first `first_signal` after run `i`'s submit was sent.
async fn first_after(
    mut res: reqwest::Response,
    i: usize,
    m: &Meter,
    mut stop: watch::Receiver<bool>,
) {
    let mut tail = String::new();
    loop {
        let chunk = tokio::select! {
            c = res.chunk() => c,
            _ = stop.changed() => return,
        };
        let Ok(Some(chunk)) = chunk else { return };
        let now = m.now_us();
        tail.push_str(&String::from_utf8_lossy(&chunk));
        let complete = tail.rfind('\n').map_or(0, |k| k + 1);
        let hit = tail[..complete].lines().any(|l| l == "event: first_signal");
        tail.drain(..complete);
        let sent = m.sent[i].load(Ordering::Acquire);
        if hit && sent > 0 && now >= sent {
            m.hist.borrow_mut().saturating_record((now - sent).max(1));
            m.got.set(m.got.get() + 1);
            return;
        }
    }
}

async fn once(args: &TtfsArgs, rep: usize) -> anyhow::Result<()> {
    let control = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()?;
    let target = args
        .server
        .start(&control, &[procs::bind_setting()?])
        .await?;
    let base = target.base.clone();
    let tenant = format!("ttfs-{}-{rep}", std::process::id());
    let runs: Vec<anyhow::Result<String>> = futures_util::stream::iter(0..args.jobs)
        .map(|_| async {
            let v: Value = control
                .post(format!("{base}/api/v1/orchestrator/runs"))
                .header("X-Tenant-Id", &tenant)
                .json(&json!({}))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v["runId"].as_str().context("runId")?.to_owned())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let runs: Vec<String> = runs.into_iter().collect::<anyhow::Result<_>>()?;
    let subscriber = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let opened: Vec<(usize, Result<reqwest::Response, String>)> =
        futures_util::stream::iter(runs.iter().enumerate())
            .map(|(i, run)| {
                let (subscriber, base, tenant) = (&subscriber, &base, &tenant);
                async move {
                    let url = format!(
                "{base}/api/v1/orchestrator/stream/runs/{run}?tenant={tenant}&events=first_signal"
            );
                    let res = match subscriber.get(url).send().await {
                        Ok(r) if r.status() == 200 => Ok(r),
                        Ok(r) => Err(format!("subscribe: {}", r.status())),
                        Err(e) => Err(format!("subscribe: {e}")),
                    };
                    (i, res)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    let mut streams = Vec::new();
    let mut failed = 0;
    for (i, r) in opened {
        match r {
            Ok(res) => streams.push((i, res)),
            Err(e) => {
                if failed < 3 {
                    println!("    {e}");
                }
                failed += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = Meter {
        base: Instant::now(),
        sent: (0..args.jobs).map(|_| AtomicU64::new(0)).collect(),
        hist: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        got: Cell::new(0),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers = futures_util::future::join_all(
        streams
            .into_iter()
            .map(|(i, res)| first_after(res, i, &m, stop_rx.clone())),
    );
    let errors = Cell::new(0usize);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let started = tokio::time::Instant::now();
    let submits = futures_util::future::join_all(runs.iter().enumerate().map(|(i, run)| {
        let (control, base, tenant, m, errors) = (&control, &base, &tenant, &m, &errors);
        async move {
            tokio::time::sleep_until(started + period.mul_f64(i as f64)).await;
            m.sent[i].store(m.now_us(), Ordering::Release);
            let res = control
                .post(format!("{base}/jobs"))
                .header("X-Tenant-Id", tenant)
                .json(&json!({"pack": "external", "run_id": run}))
                .send()
                .await;
            if !matches!(res, Ok(ref r) if r.status() == 202) {
                errors.set(errors.get() + 1);
            }
        }
    }));
    let deadline = started + period.mul_f64(args.jobs as f64) + args.server.timeout();
    procs::stop_readers_after(readers, submits, deadline, &stop_tx).await;
    let offered = args.rate;
    let h = m.hist.borrow().clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{rep:>3} {:>6} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7}",
        args.jobs,
        m.got.get(),
        offered,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
        errors.get(),
        failed
    );
    target.stop().await;
    ensure!(
        m.got.get() == args.jobs,
        "{} of {} runs saw their first signal",
        m.got.get(),
        args.jobs
    );
    Ok(())
}

pub async fn run(args: TtfsArgs) -> anyhow::Result<()> {
    let limit = procs::raise_nofile()?;
    procs::check_fds(args.jobs + 64, limit)?;
    ensure!(
        args.jobs > 0 && args.rate > 0.0,
        "--jobs and --rate must be positive"
    );
    println!(
        "ttfs: jobs={} rate={}/s server_workers={} (SQLite unless --url)",
        args.jobs, args.rate, args.server.server_workers
    );
    println!("load average: {}", load_average());
    println!(
        "{:>3} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "rep",
        "jobs",
        "signals",
        "submit/s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "refused"
    );
    for rep in 1..=args.repeat.max(1) {
        once(&args, rep).await?;
    }
    println!("load average: {}", load_average());
    Ok(())
}
