//! `fanout`: E progress events published to one run as fast as the store
//! commits them, delivered over SSE to S subscribers of its run stream.
//! Reports the time until every subscriber has every event, and deliveries
//! per second. Frames are encoded once per event, so the per-subscriber cost
//! is a queue push and a socket write.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use runsignal::store::{BlockedChange, ProgressReport};
use serde_json::{json, Value};

use crate::{start_with, T};

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Subscriber counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    subscribers: Vec<usize>,
    /// Events published per run.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// HTTP worker threads of the server.
    #[arg(long, default_value_t = 1)]
    server_workers: usize,
}

/// Count `event: progress` frames until `want` arrived or the stream ends.
async fn count(mut res: reqwest::Response, want: usize) -> anyhow::Result<(usize, Instant)> {
    let mut seen = 0;
    let mut tail = String::new();
    while seen < want {
        let Some(chunk) = res.chunk().await? else {
            break;
        };
        tail.push_str(&String::from_utf8_lossy(&chunk));
        let complete = tail.rfind('\n').map_or(0, |i| i + 1);
        seen += tail[..complete]
            .lines()
            .filter(|l| *l == "event: progress")
            .count();
        tail.drain(..complete);
    }
    Ok((seen, Instant::now()))
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Queues that hold a whole burst: this measures delivery capacity, not
    // how fast this (same-machine) client reads; a lagging reader would
    // otherwise be dropped as a slow consumer, which is the designed
    // behaviour and tested elsewhere.
    let buffer = (args.events + 64).to_string();
    let (app, base) = start_with(
        dir.path(),
        args.server_workers,
        &[("Streams__BufferSize", &buffer)],
    )
    .await?;
    let state = app.state();
    let stopper = app.stopper();
    actix_rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    println!(
        "events={} server_workers={}",
        args.events, args.server_workers
    );
    println!(
        "{:>11} {:>10} {:>14} {:>16} {:>12}",
        "subscribers", "publish_s", "all_delivered_s", "deliveries/s", "per_sub_us"
    );
    for &subs in &args.subscribers {
        let v: Value = client
            .post(format!("{base}/jobs"))
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
            .post(format!("{base}/api/v1/orchestrator/workers/lease"))
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
        let mut streams = Vec::with_capacity(subs);
        for _ in 0..subs {
            let res = client
                .get(format!(
                    "{base}/api/v1/orchestrator/stream/runs/{run}?tenant={T}&events=progress"
                ))
                .send()
                .await?;
            ensure!(res.status() == 200, "subscribe: {}", res.status());
            streams.push(res);
        }
        let readers =
            futures_util::future::join_all(streams.into_iter().map(|r| count(r, args.events)));
        let started = Instant::now();
        let publisher = async {
            for i in 0..args.events {
                let report = ProgressReport {
                    lease_id: lease_id.clone(),
                    stage: None,
                    step: None,
                    step_index: None,
                    message: None,
                    percent: Some((i % 100) as f64),
                    log: vec![],
                    blocked: BlockedChange::Unchanged,
                    correlation_id: "bench".into(),
                };
                state.store.report_progress(T, &job, &report).await?;
            }
            anyhow::Ok(started.elapsed())
        };
        let (results, published) = futures_util::join!(readers, publisher);
        let published = published?;
        let mut last = started;
        for r in results {
            let (seen, at) = r?;
            ensure!(
                seen == args.events,
                "a subscriber got {seen} of {} events",
                args.events
            );
            last = last.max(at);
        }
        let all: Duration = last - started;
        let deliveries = (subs * args.events) as f64 / all.as_secs_f64();
        let per_sub = all.as_micros() as f64 / args.events as f64 / subs as f64;
        println!(
            "{subs:>11} {:>10.2} {:>14.2} {deliveries:>16.0} {per_sub:>12.2}",
            published.as_secs_f64(),
            all.as_secs_f64()
        );
    }
    stopper.stop().await;
    Ok(())
}
