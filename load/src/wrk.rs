//! `first-signal --wrk`: the timed read phases driven by `wrk` (Debian:
//! `wrk`), so that the server, not this tool's HTTP client, is the
//! bottleneck. With reqwest on the same two cores, the client thread is
//! saturated before the server's worker: the ratios of first-signal reads
//! to a trivial route then mostly measure the client parsing larger
//! answers. wrk spends a fraction of that per request.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// One timed phase as wrk measured it.
pub struct WrkPhase {
    pub name: &'static str,
    pub requests: u64,
    pub rate: f64,
    /// p50, p90, p99 in microseconds.
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// Answers that were neither 2xx nor 3xx, and socket errors (the
    /// caller adds what the server's counters find wrong).
    pub bad: u64,
    /// The server's CPU time per request (µs), when the caller measured it.
    pub cpu_us: Option<f64>,
}

impl WrkPhase {
    pub fn print(&self) {
        println!(
            "{:<7} {:>9} {:>11.0} {:>9.0} {:>9.0} {:>9.0} {:>9} {:>11} {:>11}",
            self.name,
            self.requests,
            self.rate,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            "-",
            self.bad,
            self.cpu_us.map_or("-".to_owned(), |c| format!("{c:.2}"))
        );
    }

    /// Charge the server's CPU time since `since_ms` (this process's, from
    /// [`crate::procs::mem`]) to this phase's requests; returns it now.
    pub fn charge(&mut self, since_ms: u64) -> u64 {
        let now = crate::procs::mem(std::process::id()).cpu_ms;
        let spent_us = now.saturating_sub(since_ms) as f64 * 1000.0;
        self.cpu_us = Some(spent_us / self.requests.max(1) as f64);
        now
    }
}

/// A Lua script that cycles through `paths` (with `etags`, sent as
/// `If-None-Match`, when given), every request built the same way whatever
/// the phase, so the client's cost per request is alike in all of them.
pub fn script(
    dir: &Path,
    name: &str,
    paths: &[String],
    etags: Option<&[String]>,
    tenant: &str,
) -> anyhow::Result<PathBuf> {
    let quote = |s: &str| format!("{s:?}");
    let list = |v: &[String]| v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(",\n");
    let etags = etags.map_or("nil".to_owned(), |e| format!("{{\n{}\n}}", list(e)));
    let lua = format!(
        "local paths = {{\n{}\n}}\nlocal etags = {etags}\nlocal i = 0\n\
         local headers = {{ [\"X-Tenant-Id\"] = {} }}\n\
         request = function()\n  i = i % #paths + 1\n  \
         if etags then headers[\"If-None-Match\"] = etags[i] end\n  \
         return wrk.format(\"GET\", paths[i], headers)\nend\n",
        list(paths),
        quote(tenant)
    );
    let file = dir.join(format!("{name}.lua"));
    std::fs::write(&file, lua)?;
    Ok(file)
}

/// Run wrk (one thread, `connections`, `seconds`) with `script` against `base`.
pub fn run(
    wrk: &Path,
    name: &'static str,
    base: &str,
    script: &Path,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<WrkPhase> {
    let out = Command::new(wrk)
        .args(["-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(base)
        .output()
        .with_context(|| format!("starting {}", wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(name, &text).with_context(|| format!("reading wrk's output:\n{text}"))
}

fn parse(name: &'static str, text: &str) -> anyhow::Result<WrkPhase> {
    let mut phase = WrkPhase {
        name,
        requests: 0,
        rate: 0.0,
        p50_us: 0.0,
        p90_us: 0.0,
        p99_us: 0.0,
        bad: 0,
        cpu_us: None,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => phase.rate = rate.parse()?,
            [n, "requests", "in", ..] => phase.requests = n.parse()?,
            ["50%", v] => phase.p50_us = micros(v)?,
            ["90%", v] => phase.p90_us = micros(v)?,
            ["99%", v] => phase.p99_us = micros(v)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => phase.bad += n.parse::<u64>()?,
            // `Socket errors: connect 0, read 0, write 0, timeout 0`
            ["Socket", "errors:", counts @ ..] => {
                for n in counts.iter().skip(1).step_by(2) {
                    phase.bad += n.trim_end_matches(',').parse::<u64>()?;
                }
            }
            _ => {}
        }
    }
    if phase.requests == 0 {
        bail!("no requests counted");
    }
    Ok(phase)
}

/// wrk's durations: `376.00us`, `1.23ms`, `2.00s`.
fn micros(v: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("a duration without a unit: {v}")
    };
    Ok(number.parse::<f64>()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 5s test @ http://127.0.0.1:1\n  1 threads and 32 connections\n\
            \x20 Latency Distribution\n     50%  376.00us\n     75%  400.00us\n     90%    1.25ms\n\
            \x20    99%    2.00s\n  450000 requests in 5.00s, 100.00MB read\n\
            \x20 Socket errors: connect 0, read 1, write 0, timeout 2\n\
            \x20 Non-2xx or 3xx responses: 3\nRequests/sec:  90000.12\nTransfer/sec:     20.00MB\n";
        let p = parse("hit", text).unwrap();
        assert_eq!(p.requests, 450_000);
        assert!((p.rate - 90_000.12).abs() < 1e-6);
        assert_eq!(p.p50_us, 376.0);
        assert_eq!(p.p90_us, 1250.0);
        assert_eq!(p.p99_us, 2_000_000.0);
        assert_eq!(p.bad, 6);
        assert!(parse("hit", "Requests/sec: 1\n").is_err());
    }
}
