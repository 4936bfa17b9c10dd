//! Shared pieces of the write-path scenarios (`submit`, `progress`,
//! `lifecycle`): options, server start-up, error accounting and reporting.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use runsignal::config::Config;
use runsignal::{Application, Stopper};
use serde_json::Value;

/// Options every write-path scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Database URL. Default: a fresh temporary SQLite file per repetition.
    /// A `postgres://…` URL is passed through as `RUNSIGNAL__Database__Url`
    /// (each repetition uses its own tenant on it).
    #[arg(long)]
    pub database_url: Option<String>,
    /// PostgreSQL: write transactions at once (`Database.WriteLanes`).
    #[arg(long, default_value_t = 4)]
    pub write_lanes: u32,
    /// HTTP worker threads of the server.
    #[arg(long, default_value_t = 2)]
    pub server_workers: usize,
    /// Run the measurement this many times (a fresh server each time) and
    /// print the median rate.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

impl CommonArgs {
    pub fn describe(&self) -> String {
        format!(
            "server_workers={} db={}",
            self.server_workers,
            self.database_url.as_deref().unwrap_or("sqlite (temp file)")
        )
    }
}

/// A running in-process server and its temporary directory.
pub struct Server {
    pub base: String,
    /// Unique per repetition, so a shared (non-temporary) database does not
    /// mix the jobs of two repetitions.
    pub tenant: String,
    stopper: Stopper,
    state: actix_web::web::Data<runsignal::AppState>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(common: &CommonArgs, repetition: usize) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().display();
        let url = common
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{path}/bench.db"));
        let packs = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/packs");
        let env = [
            ("Server__Bind", "127.0.0.1:0".to_owned()),
            ("Server__Workers", common.server_workers.to_string()),
            ("Database__Url", url),
            ("Database__WriteLanes", common.write_lanes.to_string()),
            ("Logging__Level", "warn".to_owned()),
            ("Artifacts__Dir", format!("{path}/artifacts")),
            ("Executor__WorkspaceDir", format!("{path}/workspaces")),
            ("Executor__PacksDir", packs.to_owned()),
        ]
        .map(|(k, v)| (format!("RUNSIGNAL__{k}"), v));
        let app = Application::build(Config::load_from(None, env)?).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let stopper = app.stopper();
        let state = app.state();
        actix_rt::spawn(app.run_until_stopped());
        Ok(Server {
            base,
            tenant: format!("bench-{}-{repetition}", std::process::id()),
            stopper,
            state,
            _dir: dir,
        })
    }

    /// Calls into the store since the server started.
    pub fn store_calls(&self) -> u64 {
        self.state.queries.get()
    }

    pub async fn stop(self) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.state.store.writer().stats();
        let (batches, writes) = (stats.batches.load(Relaxed), stats.writes.load(Relaxed));
        println!(
            "  writer: {writes} writes in {batches} transactions (mean batch {:.1}, largest {}), busy {:.2} s",
            writes as f64 / batches.max(1) as f64,
            stats.largest.load(Relaxed),
            stats.busy_us.load(Relaxed) as f64 / 1e6
        );
        self.stopper.stop().await;
    }
}

/// A keep-alive client pooling up to `connections` idle connections.
pub fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Non-2xx answers and transport errors: a count and the first few.
#[derive(Default)]
pub struct Errors {
    pub count: usize,
    samples: Vec<String>,
}

const SAMPLES: usize = 5;

impl Errors {
    pub fn push(&mut self, what: String) {
        self.count += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(what);
        }
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        let room = SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    pub fn print(&self) {
        if self.count > 0 {
            println!("  errors: {} (first {}):", self.count, self.samples.len());
            for s in &self.samples {
                println!("    {s}");
            }
        }
    }
}

/// Send `req`; the JSON body of a 2xx answer, else `None` with the error recorded.
pub async fn call(req: reqwest::RequestBuilder, what: &str, errors: &mut Errors) -> Option<Value> {
    let res = match req.send().await {
        Ok(res) => res,
        Err(e) => {
            errors.push(format!("{what}: transport: {e}"));
            return None;
        }
    };
    let status = res.status();
    let body = match res.bytes().await {
        Ok(b) => b,
        Err(e) => {
            errors.push(format!("{what}: {status}, body unread: {e}"));
            return None;
        }
    };
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(200).collect();
        errors.push(format!("{what}: {status} {text}"));
        return None;
    }
    match serde_json::from_slice(&body) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(format!("{what}: {status}, not JSON: {e}"));
            None
        }
    }
}

/// A latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// Record the time since `since`, clamped into the histogram's range.
pub fn record(hist: &mut Histogram<u64>, since: Instant) {
    let us = (since.elapsed().as_micros() as u64).clamp(1, hist.high());
    hist.saturating_record(us);
}

/// One repetition's figures.
pub struct Measured {
    /// Successful operations (requests, or whole job cycles).
    pub ok: usize,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    pub errors: Errors,
}

impl Measured {
    /// Nothing yet, for a phase that took `elapsed`.
    pub fn empty(elapsed: Duration) -> anyhow::Result<Measured> {
        Ok(Measured {
            ok: 0,
            elapsed,
            hist: histogram()?,
            errors: Errors::default(),
        })
    }

    /// Add one connection's share of the phase.
    pub fn add(&mut self, hist: Histogram<u64>, errors: Errors, ok: usize) -> anyhow::Result<()> {
        self.hist.add(hist)?;
        self.errors.merge(errors);
        self.ok += ok;
        Ok(())
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn print_header(unit: &str) {
    println!(
        "{:>3} {:>9} {:>8} {:>11} {:>9} {:>9} {:>9} {:>7}",
        "rep", "ok", "secs", unit, "p50_us", "p99_us", "max_us", "errors"
    );
}

pub fn print_row(rep: usize, m: &Measured) {
    println!(
        "{:>3} {:>9} {:>8.2} {:>11.1} {:>9} {:>9} {:>9} {:>7}",
        rep,
        m.ok,
        m.elapsed.as_secs_f64(),
        m.rate(),
        m.hist.value_at_quantile(0.50),
        m.hist.value_at_quantile(0.99),
        m.hist.max(),
        m.errors.count
    );
    m.errors.print();
}

/// The median of the rates (mean of the middle two for an even count).
pub fn median(mut rates: Vec<f64>) -> f64 {
    if rates.is_empty() {
        return 0.0;
    }
    rates.sort_by(f64::total_cmp);
    let mid = rates.len() / 2;
    if rates.len() % 2 == 1 {
        rates[mid]
    } else {
        (rates[mid - 1] + rates[mid]) / 2.0
    }
}

pub fn print_median(unit: &str, rates: Vec<f64>) {
    let n = rates.len();
    println!("median {unit} over {n} repetition(s): {:.1}", median(rates));
}
