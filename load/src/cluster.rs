//! `cluster-fanout`: the same fan-out on one node and on two nodes joined
//! by Redis (SPEC §12), in one run. Subscribers open SSE run streams (split
//! evenly over the nodes in the two-node phase); a publisher writes E
//! progress events, one every `--interval-ms`, through the store of one
//! node (alternating between the nodes in the two-node phase). Each event
//! carries its index; a subscriber records when it got it, so latency is
//! publish → receipt per subscriber. Reports delivered/expected and p50,
//! p99, max for both phases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;
use runsignal::store::{BlockedChange, ProgressReport};
use runsignal::Application;
use serde_json::{json, Value};

use crate::{start_with, T};

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterFanoutArgs {
    /// PostgreSQL both nodes share (use a schema of its own, e.g. with
    /// `?options=-c%20search_path%3Dbench`).
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// SSE subscribers (split over the nodes in the two-node phase).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Events published per phase.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Pause between two events.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// HTTP worker threads per node.
    #[arg(long, default_value_t = 1)]
    server_workers: usize,
}

struct Node {
    app_state: actix_web::web::Data<runsignal::AppState>,
    base: String,
    stopper: runsignal::Stopper,
}

async fn node(
    args: &ClusterFanoutArgs,
    dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<Node> {
    let buffer = (args.events + 64).to_string();
    let (app, base): (Application, String) = start_with(
        dir,
        args.server_workers,
        &[
            ("Database__Url", &args.database_url),
            ("messaging__transport", "redis"),
            ("FirstSignal__Cache__Backend", "redis"),
            ("Redis__Url", &args.redis_url),
            ("FirstSignal__Cache__KeyPrefix", prefix),
            ("Streams__BufferSize", &buffer),
            ("Limits__MaxStreamsPerTenant", "100000"),
        ],
    )
    .await?;
    let node = Node {
        app_state: app.state(),
        base,
        stopper: app.stopper(),
    };
    actix_rt::spawn(app.run_until_stopped());
    Ok(node)
}

/// Receipt times of events `m0 … m<E-1>` on one stream.
async fn receive(mut res: reqwest::Response, want: usize) -> anyhow::Result<Vec<Option<Instant>>> {
    let mut got = vec![None; want];
    let mut seen = 0;
    let mut tail = String::new();
    while seen < want {
        let Some(chunk) = res.chunk().await? else {
            break;
        };
        let now = Instant::now();
        tail.push_str(&String::from_utf8_lossy(&chunk));
        let complete = tail.rfind('\n').map_or(0, |i| i + 1);
        for line in tail[..complete].lines() {
            if let Some(i) = line
                .find("\"message\":\"m")
                .and_then(|at| line[at + 12..].split('"').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                if i < want && got[i].is_none() {
                    got[i] = Some(now);
                    seen += 1;
                }
            }
        }
        tail.drain(..complete);
    }
    Ok(got)
}

/// One phase: subscribers spread over `subscribe_to`, events written
/// through `publish_through` in turn. Returns (delivered, histogram in µs).
async fn phase(
    args: &ClusterFanoutArgs,
    client: &reqwest::Client,
    subscribe_to: &[&Node],
    publish_through: &[&Node],
) -> anyhow::Result<(usize, Histogram<u64>)> {
    let first = subscribe_to[0];
    let v: Value = client
        .post(format!("{}/jobs", first.base))
        .header("X-Tenant-Id", T)
        .json(&json!({"pack": "external"}))
        .send()
        .await?
        .json()
        .await?;
    let (job, run) = (
        v["job_id"].as_str().context("job_id")?.to_owned(),
        v["run_id"].as_str().context("run_id")?.to_owned(),
    );
    let lease: Value = client
        .post(format!("{}/api/v1/orchestrator/workers/lease", first.base))
        .header("X-Tenant-Id", T)
        .json(&json!({"workerId": "bench", "packs": ["external"], "leaseSeconds": 3600}))
        .send()
        .await?
        .json()
        .await?;
    let lease_id = lease["jobs"][0]["leaseId"]
        .as_str()
        .context("leaseId")?
        .to_owned();
    let mut streams = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let node = subscribe_to[i % subscribe_to.len()];
        let res = client
            .get(format!(
                "{}/api/v1/orchestrator/stream/runs/{run}?tenant={T}&events=progress",
                node.base
            ))
            .send()
            .await?;
        ensure!(res.status() == 200, "subscribe: {}", res.status());
        streams.push(res);
    }
    // Every stream attached (on both nodes) before the first event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readers =
        futures_util::future::join_all(streams.into_iter().map(|r| receive(r, args.events)));
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; args.events]));
    let publisher = {
        let sent = sent.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms));
            for i in 0..args.events {
                tick.tick().await;
                let node = publish_through[i % publish_through.len()];
                let report = ProgressReport {
                    lease_id: lease_id.clone(),
                    stage: None,
                    step: None,
                    step_index: None,
                    message: Some(format!("m{i}")),
                    percent: Some((i % 100) as f64),
                    log: vec![],
                    blocked: BlockedChange::Unchanged,
                    correlation_id: "bench".into(),
                };
                let at = Instant::now();
                node.app_state
                    .store
                    .report_progress(T, &job, &report)
                    .await?;
                sent.lock().unwrap()[i] = Some(at);
            }
            anyhow::Ok(())
        }
    };
    let deadline = Duration::from_secs(args.events as u64 * args.interval_ms / 1000 + 60);
    let (results, published) =
        tokio::time::timeout(deadline, async { futures_util::join!(readers, publisher) })
            .await
            .context("the phase did not finish in time")?;
    published?;
    let sent = sent.lock().unwrap().clone();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut delivered = 0;
    for r in results {
        for (i, got) in r?.into_iter().enumerate() {
            if let (Some(got), Some(at)) = (got, sent[i]) {
                delivered += 1;
                hist.record(got.saturating_duration_since(at).as_micros() as u64)?;
            }
        }
    }
    Ok((delivered, hist))
}

fn report(name: &str, expected: usize, delivered: usize, h: &Histogram<u64>) {
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<28} {delivered:>9}/{expected:<9} {:>8.1} {:>8.1} {:>8.1}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    );
}

pub async fn run(args: ClusterFanoutArgs) -> anyhow::Result<()> {
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let prefix = format!("bench-{}:", std::process::id());
    let a = node(&args, dir_a.path(), &prefix).await?;
    let b = node(&args, dir_b.path(), &prefix).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    println!(
        "subscribers={} events={} interval_ms={} server_workers={} (per node)",
        args.subscribers, args.events, args.interval_ms, args.server_workers
    );
    println!(
        "{:<28} {:>19} {:>8} {:>8} {:>8}",
        "phase", "delivered/expected", "p50_ms", "p99_ms", "max_ms"
    );
    let expected = args.subscribers * args.events;
    let (d1, h1) = phase(&args, &client, &[&a], &[&a]).await?;
    report("one node", expected, d1, &h1);
    let (d2, h2) = phase(&args, &client, &[&a, &b], &[&a, &b]).await?;
    report("two nodes (split, both write)", expected, d2, &h2);
    a.stopper.stop().await;
    b.stopper.stop().await;
    Ok(())
}
