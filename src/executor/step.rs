//! One step as a child process: argv (never a shell built from inputs) in
//! its own process group, stdout/stderr read line by line and reported in
//! batches, a heartbeat every second, and the whole group killed on timeout
//! or when the lease is lost (the job was canceled).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior};

use crate::packs::Step;
use crate::store::{BlockedChange, LogLine, LogStream, ProgressReport, StoreError};
use crate::AppState;

/// The only PATH a step sees (plus HOME = its workspace and its own env).
const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Lines are reported at least this often while they arrive…
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// …or as soon as this many are waiting.
const MAX_BATCH: usize = 200;
/// Longer lines are cut (bytes), marked with [`TRUNCATED`].
pub const MAX_LINE_BYTES: usize = 8 * 1024;
const TRUNCATED: &str = " …[truncated]";
/// A progress report (extending the lease, noticing a cancel) this often.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// After the step's process exits, how long its output may still drain.
const DRAIN: Duration = Duration::from_secs(2);

pub enum Outcome {
    Succeeded,
    /// Non-zero exit (`None`: killed by a signal).
    Exited(Option<i32>),
    TimedOut,
    /// The lease is gone (canceled, or swept): stop without reporting.
    LeaseLost,
    SpawnFailed(std::io::Error),
}

/// Reports for one leased job, like a remote worker would.
pub struct Reporter {
    pub state: Arc<AppState>,
    pub tenant: String,
    pub job_id: String,
    pub lease_id: String,
    pub correlation_id: String,
    /// The job's log line count after the last report.
    pub log_lines: i64,
}

impl Reporter {
    /// `false` when the lease is lost. Other store errors are logged and
    /// treated as transient (the next heartbeat tries again).
    async fn report(&mut self, report: ProgressReport) -> bool {
        let state = self.state.clone();
        match state
            .store
            .report_progress(&self.tenant, &self.job_id, &report)
            .await
        {
            Ok(job) => {
                self.log_lines = job.log_lines;
                true
            }
            Err(StoreError::LeaseLost | StoreError::JobNotFound | StoreError::InvalidState(_)) => {
                false
            }
            Err(e) => {
                tracing::warn!(job = %self.job_id, error = %e, lines = report.log.len(),
                    "built-in progress report failed");
                true
            }
        }
    }

    fn progress(&self, log: Vec<LogLine>) -> ProgressReport {
        ProgressReport {
            lease_id: self.lease_id.clone(),
            stage: None,
            step: None,
            step_index: None,
            message: None,
            percent: None,
            log,
            blocked: BlockedChange::Unchanged,
            correlation_id: self.correlation_id.clone(),
        }
    }

    /// Report step `index` as started (`step.started`); returns the line
    /// number its first log line will get, `None` when the lease is lost.
    pub async fn start_step(&mut self, index: usize, total: usize, step: &Step) -> Option<i64> {
        let mut report = self.progress(Vec::new());
        report.stage = Some(step.stage.clone());
        report.step = Some(step.name.clone());
        report.step_index = Some(index as i64);
        report.message = Some(format!("step {}/{total}: {}", index + 1, step.name));
        report.percent = Some((index * 100 / total.max(1)) as f64);
        self.report(report).await.then_some(self.log_lines + 1)
    }

    /// Report the waiting lines (possibly none: a heartbeat).
    async fn flush(&mut self, batch: &mut Vec<LogLine>) -> bool {
        let report = self.progress(std::mem::take(batch));
        self.report(report).await
    }
}

pub async fn run(
    rep: &mut Reporter,
    step: &Step,
    dir: &Path,
    inputs: &BTreeMap<String, String>,
) -> Outcome {
    let mut cmd = Command::new(&step.run[0]);
    cmd.args(&step.run[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("HOME", dir)
        .envs(&step.env)
        .envs(inputs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::SpawnFailed(e),
    };
    // The leader's pid is the group id (`process_group(0)`).
    let pgid = child.id();
    let (tx, mut rx) = mpsc::channel::<LogLine>(4 * MAX_BATCH);
    if let Some(out) = child.stdout.take() {
        actix_rt::spawn(pump(out, LogStream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        actix_rt::spawn(pump(err, LogStream::Stderr, tx.clone()));
    }
    drop(tx);
    let deadline = sleep(Duration::from_secs(step.timeout_seconds));
    let drain = sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(deadline, drain);
    let mut flush = interval_at(Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heartbeat = interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch: Vec<LogLine> = Vec::new();
    let mut status: Option<Option<std::process::ExitStatus>> = None;
    let mut open = true;
    let stopped = loop {
        if let (Some(status), false) = (status, open) {
            break match status {
                Some(s) if s.success() => Outcome::Succeeded,
                Some(s) => Outcome::Exited(s.code()),
                None => Outcome::Exited(None),
            };
        }
        tokio::select! {
            line = rx.recv(), if open => match line {
                Some(line) => {
                    batch.push(line);
                    if batch.len() >= MAX_BATCH && !rep.flush(&mut batch).await {
                        break Outcome::LeaseLost;
                    }
                }
                None => open = false,
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.ok());
                // Whatever the step left running in its group ends with it;
                // that also closes the pipes it held.
                kill_group(pgid).await;
                drain.as_mut().reset(Instant::now() + DRAIN);
            }
            _ = &mut drain, if status.is_some() => open = false,
            _ = &mut deadline, if status.is_none() => break Outcome::TimedOut,
            _ = flush.tick() => {
                if !batch.is_empty() && !rep.flush(&mut batch).await {
                    break Outcome::LeaseLost;
                }
            }
            _ = heartbeat.tick() => {
                if !rep.flush(&mut batch).await {
                    break Outcome::LeaseLost;
                }
            }
        }
    };
    if !matches!(stopped, Outcome::Succeeded | Outcome::Exited(_)) {
        kill_group(pgid).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    if matches!(stopped, Outcome::LeaseLost) {
        return stopped;
    }
    // Lines read before the end are still reported.
    while let Ok(line) = rx.try_recv() {
        batch.push(line);
    }
    while !batch.is_empty() {
        let rest = batch.split_off(batch.len().min(MAX_BATCH));
        if !rep.flush(&mut batch).await {
            return Outcome::LeaseLost;
        }
        batch = rest;
    }
    stopped
}

/// SIGKILL the whole process group (the step and everything it started).
async fn kill_group(pgid: Option<u32>) {
    let Some(pgid) = pgid.filter(|p| *p > 1) else {
        return;
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Read `r` line by line (lines cut at [`MAX_LINE_BYTES`]) into `tx`.
async fn pump<R: AsyncRead + Unpin>(r: R, stream: LogStream, tx: mpsc::Sender<LogLine>) {
    let mut r = BufReader::new(r);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Ok(buf) = r.fill_buf().await {
        if buf.is_empty() {
            if !line.is_empty() {
                let _ = tx.send(log_line(&stream, &line, cut)).await;
            }
            break;
        }
        let newline = buf.iter().position(|b| *b == b'\n');
        let text = &buf[..newline.unwrap_or(buf.len())];
        let room = MAX_LINE_BYTES - line.len();
        cut |= text.len() > room;
        line.extend_from_slice(&text[..text.len().min(room)]);
        let used = newline.map_or(buf.len(), |at| at + 1);
        r.consume(used);
        if newline.is_some() {
            if tx.send(log_line(&stream, &line, cut)).await.is_err() {
                break;
            }
            line.clear();
            cut = false;
        }
    }
}

fn log_line(stream: &LogStream, bytes: &[u8], cut: bool) -> LogLine {
    let mut line = String::from_utf8_lossy(bytes).into_owned();
    if line.ends_with('\r') {
        line.pop();
    }
    if cut {
        line.push_str(TRUNCATED);
    }
    LogLine {
        stream: stream.clone(),
        line,
    }
}
