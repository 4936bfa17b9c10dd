//! `longpoll`: what waiting lessees cost (SPEC §11, issue 8 point 4).
//!
//! W long-polling leases of tenant `waiting` (`waitSeconds` 30, pack
//! `external`) are parked; then S jobs are submitted by another tenant, and
//! then S jobs by the waiting tenant. Printed per phase: the time the S
//! submits took, and the store calls made meanwhile (a parked lease must
//! cost none; a submit of another tenant must wake none; a submit of the
//! waiting tenant wakes the waiters of its pack, and one of them leases it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, call, CommonArgs, Errors, Server};

#[derive(clap::Args, Debug, Clone)]
pub struct LongpollArgs {
    /// Parked long-polling leases.
    #[arg(long, default_value_t = 3000)]
    waiters: usize,
    /// Jobs submitted per phase.
    #[arg(long, default_value_t = 30)]
    submits: usize,
    #[command(flatten)]
    common: CommonArgs,
}

pub async fn run(args: LongpollArgs) -> anyhow::Result<()> {
    println!(
        "longpoll: {} parked leases (waitSeconds 30), {} submits per phase, {}",
        args.waiters,
        args.submits,
        args.common.describe()
    );
    for rep in 1..=args.common.repeat {
        let server = Server::start(&args.common, rep).await?;
        let waiting = format!("{}-waiting", server.tenant);
        let other = format!("{}-other", server.tenant);
        let client = common::client(args.waiters + 16)?;
        let leased = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut parked = Vec::with_capacity(args.waiters);
        for i in 0..args.waiters {
            let req = client
                .post(format!("{}/api/v1/orchestrator/workers/lease", server.base))
                .header("X-Tenant-Id", &waiting)
                .json(
                    &json!({"workerId": format!("w{i}"), "packs": ["external"], "waitSeconds": 30}),
                );
            let (leased, answered) = (leased.clone(), answered.clone());
            parked.push(tokio::spawn(async move {
                let mut errors = Errors::default();
                let v = call(req, "lease", &mut errors).await;
                answered.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = v.and_then(|v| v["jobs"].as_array().map(Vec::len)) {
                    leased.fetch_add(n, Ordering::Relaxed);
                }
                errors
            }));
        }
        // Parked once each lease has looked once and the calls stop moving.
        let start = server.store_calls();
        let mut last = start;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = server.store_calls();
            if now >= start + args.waiters as u64 && now == last {
                break;
            }
            last = now;
        }
        let idle_from = server.store_calls();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = server.store_calls() - idle_from;
        println!(
            "  rep {rep}: {} leases parked; store calls while they wait 2 s: {idle}",
            args.waiters - answered.load(Ordering::Relaxed)
        );
        for (phase, tenant) in [("another tenant", &other), ("the waiting tenant", &waiting)] {
            let before = server.store_calls();
            let t = Instant::now();
            let mut errors = Errors::default();
            for _ in 0..args.submits {
                let req = client
                    .post(format!("{}/jobs", server.base))
                    .header("X-Tenant-Id", tenant)
                    .json(&json!({"pack": "external"}));
                call(req, "POST /jobs", &mut errors).await;
            }
            let took = t.elapsed();
            // Let the woken leases finish their look.
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!(
                "  rep {rep}: {} submits by {phase}: {:.1} ms, store calls {} (leased so far {})",
                args.submits,
                took.as_secs_f64() * 1e3,
                server.store_calls() - before,
                leased.load(Ordering::Relaxed)
            );
            errors.print();
        }
        server.stop().await;
        for p in parked {
            p.abort();
        }
    }
    Ok(())
}
