//! `progress`: seed R jobs of pack `external`, lease them all (`max` 100 per
//! lease, one-hour leases), then C publishers send worker progress reports
//! round-robin over the leased jobs for S seconds. Each report is a store
//! write (job row, progress event) plus a publish to the job's run actor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::common::{self, call, CommonArgs, Errors, Measured, Server};

#[derive(clap::Args, Debug, Clone)]
pub struct ProgressArgs {
    /// Jobs to seed and lease.
    #[arg(long, default_value_t = 600)]
    runs: usize,
    /// Concurrent publishers (keep-alive connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[command(flatten)]
    common: CommonArgs,
}

/// A leased job: `(jobId, leaseId)`.
type Lease = (String, String);

/// Submit `n` jobs (`concurrency` at a time), then lease until none is left.
async fn seed(
    client: &reqwest::Client,
    server: &Server,
    n: usize,
    concurrency: usize,
    errors: &mut Errors,
) -> anyhow::Result<Vec<Lease>> {
    let url = format!("{}/jobs", server.base);
    let ids: Vec<usize> = (0..n).collect();
    for chunk in ids.chunks(concurrency.max(1)) {
        let submits = chunk.iter().map(|_| async {
            let mut errors = Errors::default();
            let req = client
                .post(&url)
                .header("X-Tenant-Id", &server.tenant)
                .json(&json!({"pack": "external"}));
            call(req, "seed POST /jobs", &mut errors).await;
            errors
        });
        for e in futures_util::future::join_all(submits).await {
            errors.merge(e);
        }
    }
    let lease_url = format!("{}/api/v1/orchestrator/workers/lease", server.base);
    let body = json!({"workerId": "bench-progress", "packs": ["external"], "max": 100, "leaseSeconds": 3600});
    let mut leases = Vec::with_capacity(n);
    loop {
        let req = client
            .post(&lease_url)
            .header("X-Tenant-Id", &server.tenant)
            .json(&body);
        let v: Value = call(req, "seed lease", errors)
            .await
            .context("leasing the seeded jobs failed")?;
        let jobs = v["jobs"]
            .as_array()
            .context("lease answer without `jobs`")?;
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            let id = job["jobId"].as_str().context("jobId")?;
            let lease = job["leaseId"].as_str().context("leaseId")?;
            leases.push((id.to_owned(), lease.to_owned()));
        }
    }
    Ok(leases)
}

async fn measure(
    client: &reqwest::Client,
    server: &Server,
    leases: &[Lease],
    args: &ProgressArgs,
) -> anyhow::Result<Measured> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let loops = (0..args.concurrency.max(1)).map(|_| async {
        let mut hist = common::histogram()?;
        let mut errors = Errors::default();
        let mut ok = 0;
        while Instant::now() < deadline {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let (job, lease) = &leases[k % leases.len()];
            // The round over all jobs, so each job's reports count up.
            let n = (k / leases.len()) % 101;
            let req = client
                .post(format!(
                    "{}/api/v1/orchestrator/jobs/{job}/progress",
                    server.base
                ))
                .header("X-Tenant-Id", &server.tenant)
                .json(&json!({"leaseId": lease, "stage": "analyze", "message": format!("step {n}"), "percent": n}));
            let t = Instant::now();
            if call(req, "progress", &mut errors).await.is_some() {
                ok += 1;
                common::record(&mut hist, t);
            }
        }
        anyhow::Ok((hist, errors, ok))
    });
    let results = futures_util::future::join_all(loops).await;
    let mut m = Measured::empty(started.elapsed())?;
    for r in results {
        let (hist, errors, ok) = r?;
        m.add(hist, errors, ok)?;
    }
    Ok(m)
}

pub async fn run(args: ProgressArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    println!(
        "progress: runs={} concurrency={} seconds={} {}",
        args.runs,
        args.concurrency,
        args.seconds,
        args.common.describe()
    );
    common::print_header("reports/s");
    let mut rates = Vec::new();
    for rep in 1..=args.common.repeat.max(1) {
        let server = Server::start(&args.common, rep).await?;
        let client = common::client(args.concurrency)?;
        let mut seed_errors = Errors::default();
        let t = Instant::now();
        let leases = seed(
            &client,
            &server,
            args.runs,
            args.concurrency,
            &mut seed_errors,
        )
        .await?;
        println!(
            "  rep {rep}: seeded and leased {} of {} jobs in {:.1}s",
            leases.len(),
            args.runs,
            t.elapsed().as_secs_f64()
        );
        if seed_errors.count > 0 {
            println!("  seeding:");
            seed_errors.print();
        }
        anyhow::ensure!(!leases.is_empty(), "no job could be leased");
        let m = measure(&client, &server, &leases, &args).await?;
        server.stop().await;
        common::print_row(rep, &m);
        rates.push(m.rate());
    }
    common::print_median("reports/s", rates);
    Ok(())
}
