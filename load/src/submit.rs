//! `submit`: `POST /jobs` (pack `external`) from C keep-alive connections
//! for S seconds. Closed loop by default (each connection sends its next
//! request when the previous answer arrived): the maximum rate. With
//! `--rate R` each connection paces its requests so the total offered rate
//! is R/s, and latency is measured from each request's *scheduled* send time
//! (so a stalled server is not hidden by the client waiting for it).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, call, CommonArgs, Errors, Measured, Server};

#[derive(clap::Args, Debug, Clone)]
pub struct SubmitArgs {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Total offered rate (submits/s over all connections); default: as fast
    /// as answers come back.
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    common: CommonArgs,
}

async fn measure(
    client: &reqwest::Client,
    server: &Server,
    args: &SubmitArgs,
) -> anyhow::Result<Measured> {
    let url = format!("{}/jobs", server.base);
    let concurrency = args.concurrency.max(1);
    // Per-connection interval between scheduled sends.
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(concurrency as f64 / r));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let loops = (0..concurrency).map(|worker| {
        let url = &url;
        async move {
            let mut hist = common::histogram()?;
            let mut errors = Errors::default();
            let mut ok = 0;
            // Stagger the connections over one interval.
            let mut next =
                interval.map(|i| started + i.mul_f64(worker as f64 / concurrency as f64));
            loop {
                let t = match (next, interval) {
                    (Some(at), Some(step)) => {
                        tokio::time::sleep_until(at.into()).await;
                        next = Some(at + step);
                        at
                    }
                    _ => Instant::now(),
                };
                if t >= deadline {
                    break;
                }
                let req = client
                    .post(url)
                    .header("X-Tenant-Id", &server.tenant)
                    .json(&json!({"pack": "external"}));
                if call(req, "POST /jobs", &mut errors).await.is_some() {
                    ok += 1;
                    common::record(&mut hist, t);
                }
            }
            anyhow::Ok((hist, errors, ok))
        }
    });
    let results = futures_util::future::join_all(loops).await;
    let elapsed = started.elapsed();
    let mut m = Measured::empty(elapsed)?;
    for r in results {
        let (hist, errors, ok) = r?;
        m.add(hist, errors, ok)?;
    }
    Ok(m)
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<()> {
    if let Some(r) = args.rate {
        anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be a positive number");
    }
    println!(
        "submit: concurrency={} seconds={} rate={} {}",
        args.concurrency,
        args.seconds,
        args.rate
            .map_or("max (closed loop)".to_owned(), |r| format!("{r}/s offered")),
        args.common.describe()
    );
    if args.rate.is_some() {
        println!("latency is measured from each request's scheduled send time");
    }
    common::print_header("submits/s");
    let mut rates = Vec::new();
    for rep in 1..=args.common.repeat.max(1) {
        let server = Server::start(&args.common, rep).await?;
        let client = common::client(args.concurrency)?;
        let m = measure(&client, &server, &args).await?;
        server.stop().await;
        common::print_row(rep, &m);
        rates.push(m.rate());
    }
    common::print_median("submits/s", rates);
    Ok(())
}
