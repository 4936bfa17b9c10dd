//! `lifecycle`: C clients, each looping for S seconds over a whole remote
//! job: submit → lease (max 1, its own workerId) → 3 progress reports →
//! complete. Another client may lease "this" client's job first; each
//! client completes whatever it leased, so a job is there for every lease
//! (each lease follows its own committed submit). On PostgreSQL a lease
//! can still come back empty while another write lane holds the candidates'
//! rows (`SKIP LOCKED`); the client then asks again, long-polling, as a
//! worker would. Afterwards every submitted job is checked to have ended
//! `done` (the tenant's jobs are listed page by page).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, call, CommonArgs, Errors, Measured, Server};

#[derive(clap::Args, Debug, Clone)]
pub struct LifecycleArgs {
    /// Concurrent clients (each a worker too).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of measurement (cycles started before the end run to completion).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[command(flatten)]
    common: CommonArgs,
}

/// Lease requests a client makes for one cycle before it gives up (each
/// long-polls up to a second).
const LEASE_TRIES: usize = 10;

/// One client's loop: cycle latencies, errors, completed jobs, submitted ids,
/// and leases that came back empty.
async fn client_loop(
    client: &reqwest::Client,
    server: &Server,
    worker: usize,
    deadline: Instant,
) -> anyhow::Result<(Measured, Vec<String>, usize)> {
    let base = &server.base;
    let tenant = &server.tenant;
    let started = Instant::now();
    let mut m = Measured {
        ok: 0,
        elapsed: Duration::ZERO,
        hist: common::histogram()?,
        errors: Errors::default(),
    };
    let mut submitted = Vec::new();
    let mut empty = 0;
    let lease_body = json!({"workerId": format!("bench-{worker}"), "packs": ["external"], "max": 1, "leaseSeconds": 300, "waitSeconds": 1});
    while Instant::now() < deadline {
        let t = Instant::now();
        let req = client
            .post(format!("{base}/jobs"))
            .header("X-Tenant-Id", tenant)
            .json(&json!({"pack": "external"}));
        let Some(v) = call(req, "POST /jobs", &mut m.errors).await else {
            continue;
        };
        if let Some(id) = v["job_id"].as_str() {
            submitted.push(id.to_owned());
        }
        // A lease may come back empty while jobs are queued: on PostgreSQL
        // a lane skips the rows another lane has locked (SKIP LOCKED). A
        // worker asks again (long-polling) rather than leave a job queued.
        let mut leased = None;
        for _ in 0..LEASE_TRIES {
            let req = client
                .post(format!("{base}/api/v1/orchestrator/workers/lease"))
                .header("X-Tenant-Id", tenant)
                .json(&lease_body);
            let Some(v) = call(req, "lease", &mut m.errors).await else {
                break;
            };
            if let (Some(job), Some(lease)) = (
                v["jobs"][0]["jobId"].as_str(),
                v["jobs"][0]["leaseId"].as_str(),
            ) {
                leased = Some((job.to_owned(), lease.to_owned()));
                break;
            }
            empty += 1;
        }
        let Some((job, lease)) = leased else {
            continue;
        };
        let mut cycle_ok = true;
        for (n, percent) in [(1, 33), (2, 66), (3, 100)] {
            let req = client
                .post(format!("{base}/api/v1/orchestrator/jobs/{job}/progress"))
                .header("X-Tenant-Id", tenant)
                .json(&json!({"leaseId": lease, "stage": "analyze", "message": format!("step {n}"), "percent": percent}));
            cycle_ok &= call(req, "progress", &mut m.errors).await.is_some();
        }
        let req = client
            .post(format!("{base}/api/v1/orchestrator/jobs/{job}/complete"))
            .header("X-Tenant-Id", tenant)
            .json(&json!({"leaseId": lease, "result": {"ok": true}}));
        cycle_ok &= call(req, "complete", &mut m.errors).await.is_some();
        if cycle_ok {
            m.ok += 1;
            common::record(&mut m.hist, t);
        }
    }
    m.elapsed = started.elapsed();
    Ok((m, submitted, empty))
}

/// Every job of the tenant: id → state.
async fn states(
    client: &reqwest::Client,
    server: &Server,
    errors: &mut Errors,
) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/jobs?limit=200", server.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let req = client.get(url).header("X-Tenant-Id", &server.tenant);
        let Some(page) = call(req, "GET /jobs", errors).await else {
            errors.print();
            anyhow::bail!("listing the jobs failed");
        };
        for job in page["jobs"].as_array().into_iter().flatten() {
            if let (Some(id), Some(state)) = (job["job_id"].as_str(), job["state"].as_str()) {
                out.insert(id.to_owned(), state.to_owned());
            }
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(out)
}

pub async fn run(args: LifecycleArgs) -> anyhow::Result<()> {
    println!(
        "lifecycle: concurrency={} seconds={} {}",
        args.concurrency,
        args.seconds,
        args.common.describe()
    );
    println!("one cycle = submit, lease, 3 progress reports, complete (5 requests)");
    common::print_header("jobs/s");
    let mut rates = Vec::new();
    let mut all_done = true;
    for rep in 1..=args.common.repeat.max(1) {
        let server = Server::start(&args.common, rep).await?;
        let client = common::client(args.concurrency)?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let loops =
            (0..args.concurrency.max(1)).map(|w| client_loop(&client, &server, w, deadline));
        let results = futures_util::future::join_all(loops).await;
        let mut m = Measured::empty(started.elapsed())?;
        let mut submitted = Vec::new();
        let mut empty = 0;
        for r in results {
            let (one, ids, e) = r?;
            m.add(one.hist, one.errors, one.ok)?;
            submitted.extend(ids);
            empty += e;
        }
        let mut check_errors = Errors::default();
        let states = states(&client, &server, &mut check_errors).await?;
        server.stop().await;
        common::print_row(rep, &m);
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &submitted {
            *by_state
                .entry(states.get(id).map_or("missing", String::as_str))
                .or_default() += 1;
        }
        let done = by_state.get("done").copied().unwrap_or(0);
        println!(
            "  check: submitted {} jobs, {done} ended done; by state: {by_state:?}; empty leases: {empty}",
            submitted.len()
        );
        all_done &= done == submitted.len();
        rates.push(m.rate());
    }
    common::print_median("jobs/s", rates);
    println!(
        "every submitted job ended done: {}",
        if all_done { "yes" } else { "NO" }
    );
    anyhow::ensure!(all_done, "some submitted jobs did not end done");
    Ok(())
}
