//! Terminal drawing for `runsignal watch`: the `indicatif` bars, their
//! styles, and the small text helpers the plain output shares.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

const KINDS: [&str; 8] = [
    "queued",
    "started",
    "phase",
    "blocked",
    "failed",
    "succeeded",
    "canceled",
    "unavailable",
];
const PHASES: [&str; 7] = [
    "resolve", "fetch", "restore", "analyze", "policy", "report", "unknown",
];

pub(super) fn kind_name(kind: Option<u64>) -> &'static str {
    kind.and_then(|k| KINDS.get(k as usize).copied())
        .unwrap_or("unknown")
}

pub(super) fn phase_name(phase: Option<u64>) -> &'static str {
    phase
        .and_then(|p| PHASES.get(p as usize).copied())
        .unwrap_or("unknown")
}

pub(super) fn short(job_id: &str) -> &str {
    // ULIDs share their timestamp head; the random tail tells jobs apart.
    job_id
        .get(job_id.len().saturating_sub(8)..)
        .unwrap_or(job_id)
}

pub(super) fn str_of(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// `stage/step: message`, leaving out what is missing.
pub(super) fn where_what(stage: Option<&str>, step: Option<&str>, message: Option<&str>) -> String {
    let place = match (stage, step) {
        (Some(a), Some(b)) => format!("{a}/{b}"),
        (Some(a), None) => a.to_owned(),
        (None, Some(b)) => b.to_owned(),
        (None, None) => String::new(),
    };
    match (place.is_empty(), message) {
        (true, Some(m)) => m.to_owned(),
        (false, Some(m)) => format!("{place}: {m}"),
        (_, None) => place,
    }
}

pub(super) fn write_stdout(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Terminal bars (stdout is a TTY and no `--json`).
pub(super) struct Bars {
    pub mp: MultiProgress,
    pub signal: ProgressBar,
    pub jobs: HashMap<String, ProgressBar>,
    pub steps: BTreeMap<i64, ProgressBar>,
}

fn job_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.green} {prefix:.bold} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

pub(super) fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix:.bold} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Bars {
    pub(super) fn new() -> Bars {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let signal = mp.add(ProgressBar::new_spinner().with_style(spinner_style()));
        signal.set_prefix("signal");
        signal.set_message("waiting for the first signal…");
        signal.enable_steady_tick(Duration::from_millis(120));
        Bars {
            mp,
            signal,
            jobs: HashMap::new(),
            steps: BTreeMap::new(),
        }
    }

    pub(super) fn job(&mut self, job_id: &str) -> &ProgressBar {
        let mp = &self.mp;
        self.jobs.entry(job_id.to_owned()).or_insert_with(|| {
            let bar = mp.add(ProgressBar::new(100).with_style(job_style()));
            bar.set_prefix(format!("job {}", short(job_id)));
            bar
        })
    }

    pub(super) fn step(&mut self, index: i64) -> &ProgressBar {
        let mp = &self.mp;
        self.steps.entry(index).or_insert_with(|| {
            let bar = mp.add(ProgressBar::new_spinner().with_style(spinner_style()));
            bar.set_prefix(format!("step {index}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_what_leaves_out_missing_parts() {
        assert_eq!(where_what(Some("a"), Some("b"), Some("m")), "a/b: m");
        assert_eq!(where_what(None, None, Some("m")), "m");
        assert_eq!(where_what(Some("a"), None, None), "a");
        assert_eq!(short("01ARZ3NDEKTSV4RRFFQ69G5FAV"), "Q69G5FAV");
    }
}
