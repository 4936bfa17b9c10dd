//! `actors`: touch many runs with a cap on resident run actors. The runs
//! are seeded straight into a fresh SQLite database (one `INSERT … SELECT`
//! per 100,000 rows, after `runsignal migrate`), then the server is started
//! with `Actors.MaxResident` and every run's first signal is read once
//! (`GET …/first-signal`, which spawns the run's actor; a run without jobs
//! answers 204, "no signal yet"). A sampler reads
//! `runsignal_resident_run_actors` from `/metrics` and the server's RSS
//! every `--sample-ms`.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;

use crate::procs::{self, ServerArgs, Target};
use crate::streams::load_average;
use crate::svg;

#[derive(clap::Args, Debug, Clone)]
pub struct ActorsArgs {
    /// Runs to seed and touch.
    #[arg(long, default_value_t = 1_000_000)]
    runs: usize,
    /// `Actors.MaxResident` of the server.
    #[arg(long, default_value_t = 100_000)]
    max_resident: usize,
    /// Concurrent readers (keep-alive connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Milliseconds between two samples of resident actors and RSS.
    #[arg(long, default_value_t = 1000)]
    sample_ms: u64,
    /// Write a chart (RSS and resident actors over time) here.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Where to start the server (`--url` is not supported: the runs are
    /// seeded into the server's own database).
    #[command(flatten)]
    server: ServerArgs,
}

const TENANT: &str = "bench";

/// Run id number `i` as a UUID.
fn run_id(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i >> 16, i)
}

async fn seed(db: &std::path::Path, runs: usize) -> anyhow::Result<()> {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .connect()
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let chunk = 100_000;
    let mut from = 0;
    while from < runs {
        let to = (from + chunk).min(runs);
        sqlx::query(
            "INSERT INTO runs (tenant_id, run_id, status, last_seq, created_at, updated_at)
             WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             SELECT ?3, printf('%08x-0000-4000-8000-%012x', i >> 16, i), 'pending', 0, ?4, ?4 FROM n",
        )
        .bind(from as i64)
        .bind(to as i64)
        .bind(TENANT)
        .bind(now)
        .execute(&mut conn)
        .await?;
        from = to;
    }
    Ok(())
}

/// `runsignal_resident_run_actors` from `/metrics`.
async fn resident(client: &reqwest::Client, base: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("runsignal_resident_run_actors "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

pub async fn run(args: ActorsArgs) -> anyhow::Result<()> {
    ensure!(
        args.server.url.is_none(),
        "actors seeds its runs into the server's own database: start it here (no --url)"
    );
    ensure!(args.runs > 0, "--runs must be at least 1");
    let limit = procs::raise_nofile()?;
    procs::check_fds(args.concurrency + 32, limit)?;
    println!(
        "actors: runs={} max_resident={} concurrency={} server_workers={}",
        args.runs, args.max_resident, args.concurrency, args.server.server_workers
    );
    println!("load average: {}", load_average());
    let dir = tempfile::tempdir()?;
    let settings = vec![
        procs::bind_setting()?,
        ("Actors__MaxResident", args.max_resident.to_string()),
        (
            "Database__Url",
            format!("sqlite://{}/bench.db", dir.path().display()),
        ),
    ];
    let t = Instant::now();
    let status = args
        .server
        .spawn(dir.path(), &settings, Some("migrate"))?
        .wait()?;
    ensure!(status.success(), "runsignal migrate: {status}");
    seed(&dir.path().join("bench.db"), args.runs).await?;
    println!(
        "seeded {} runs in {:.1}s",
        args.runs,
        t.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency + 4)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut child = args.server.spawn(dir.path(), &settings, None)?;
    let base = format!("http://{}", settings[0].1);
    procs::wait_ready(
        &client,
        &format!("{base}/healthz"),
        &mut child,
        Duration::from_secs(60),
    )
    .await?;
    let pid = child.id();
    let target = Target {
        name: "runsignal",
        base: base.clone(),
        child: Some(child),
        pid: Some(pid),
        _dir: None,
    };
    let next = AtomicUsize::new(0);
    let done = Cell::new(false);
    let unexpected = Cell::new(0usize);
    let first_unexpected = std::cell::RefCell::new(None::<String>);
    let started = Instant::now();
    let deadline = started + args.server.timeout();
    let readers = futures_util::future::join_all((0..args.concurrency).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= args.runs || Instant::now() > deadline {
                break;
            }
            let res = client
                .get(format!(
                    "{base}/api/v1/orchestrator/runs/{}/first-signal",
                    run_id(i)
                ))
                .header("X-Tenant-Id", TENANT)
                .send()
                .await;
            let ok = match res {
                Ok(r) => {
                    let status = r.status();
                    let _ = r.bytes().await;
                    // 204: the run exists and has no signal yet (no jobs).
                    let ok = status == 200 || status == 204;
                    if !ok && first_unexpected.borrow().is_none() {
                        *first_unexpected.borrow_mut() = Some(format!("status {status}"));
                    }
                    ok
                }
                Err(e) => {
                    if first_unexpected.borrow().is_none() {
                        *first_unexpected.borrow_mut() = Some(e.to_string());
                    }
                    false
                }
            };
            if !ok {
                unexpected.set(unexpected.get() + 1);
            }
        }
    }));
    let samples = std::cell::RefCell::new(Vec::<(f64, Option<u64>, f64)>::new());
    // Its own connection, so a sample never waits behind the readers' pool.
    let sampler_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "secs", "touched", "resident", "rss_MiB"
    );
    let sample = || async {
        let res = resident(&sampler_client, &base).await;
        let rss = target.mem().map_or(0.0, |m| m.rss_mib());
        let secs = started.elapsed().as_secs_f64();
        let touched = next.load(Ordering::Relaxed).min(args.runs);
        let shown = res.map_or("-".to_owned(), |r| r.to_string());
        println!("{secs:>8.1} {touched:>10} {shown:>10} {rss:>10.1}");
        samples.borrow_mut().push((secs, res, rss));
    };
    let sampler = async {
        while !done.get() {
            sample().await;
            tokio::time::sleep(Duration::from_millis(args.sample_ms)).await;
        }
    };
    let readers = async {
        readers.await;
        done.set(true);
    };
    futures_util::join!(readers, sampler);
    let elapsed = started.elapsed();
    sample().await;
    let touched = next.load(Ordering::Relaxed).min(args.runs);
    let samples = samples.into_inner();
    let max_res = samples.iter().filter_map(|s| s.1).max().unwrap_or(0);
    let missed = samples.iter().filter(|s| s.1.is_none()).count();
    let max_rss = samples.iter().map(|s| s.2).fold(0.0, f64::max);
    println!(
        "touched {touched} of {} runs in {:.1}s ({:.0}/s); answers other than 200/204: {}{}",
        args.runs,
        elapsed.as_secs_f64(),
        touched as f64 / elapsed.as_secs_f64(),
        unexpected.get(),
        first_unexpected
            .borrow()
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "max resident actors sampled: {max_res} (cap {}; {} samples, {missed} without an answer from /metrics); max RSS sampled: {max_rss:.1} MiB",
        args.max_resident,
        samples.len()
    );
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("actors.svg");
        let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.2)).collect();
        let res: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| Some((s.0, s.1? as f64 / 1000.0)))
            .collect();
        std::fs::write(
            &path,
            svg::line_chart(
                &format!(
                    "actors: {touched} runs touched, MaxResident {}",
                    args.max_resident
                ),
                "seconds",
                "RSS MiB / resident actors (thousands)",
                &[
                    svg::Series::new("server RSS MiB", rss),
                    svg::Series::new("resident actors (thousands)", res),
                ],
            ),
        )?;
        println!("chart: {}", path.display());
    }
    target.stop().await;
    println!("load average: {}", load_average());
    ensure!(
        touched == args.runs,
        "timed out after {touched} runs (--timeout)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_are_distinct_uuids() {
        let a = super::run_id(1);
        let b = super::run_id(999_999);
        assert_ne!(a, b);
        assert!(uuid_like(&a) && uuid_like(&b), "{a} {b}");
    }

    fn uuid_like(s: &str) -> bool {
        let parts: Vec<usize> = s.split('-').map(str::len).collect();
        parts == [8, 4, 4, 4, 12] && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
    }
}
