//! The dashboard in a real browser (issue 11 point 6): `tests/browser/run.mjs`
//! drives Debian's Chromium with `playwright-core` (pinned in
//! `tests/browser/package-lock.json`; no browser is downloaded) through the
//! scenarios in `tests/browser/scenarios/`, each against a `runsignal`
//! process of its own (the binary cargo built) on a free loopback port and a
//! temporary directory. Screenshots go to `ci-artifacts/screenshots/`.
//!
//! Needs `node`, `npm` and Chromium (`/usr/bin/chromium`, or
//! `RUNSIGNAL_TEST_CHROMIUM`); installs `tests/browser/node_modules` with
//! `npm ci` when missing. Without them the test says so and passes, unless
//! `RUNSIGNAL_TEST_BROWSER=1` (set by `.ci/run`): then it fails.
//! `RUNSIGNAL_BROWSER_SCENARIOS="live cancel"` runs only those scenarios.
//! See docs/adr/0039-browser-tests.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runsignal");
/// Every scenario is bounded by the runner (240 s each); this bounds the
/// whole run should the runner itself hang (e.g. Chromium never starts).
const WHOLE_RUN: Duration = Duration::from_secs(30 * 60);

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the browser tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let chromium =
        std::env::var("RUNSIGNAL_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !runs("node") || !runs("npm") {
        return Some("`node` and `npm` are needed".to_owned());
    }
    if !Path::new(&chromium).exists() {
        return Some(format!("Chromium is not installed at {chromium}"));
    }
    None
}

/// `npm ci` in tests/browser unless playwright-core is already there.
fn install() {
    if dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .current_dir(dir())
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "npm ci in tests/browser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dashboard_works_in_chromium() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("RUNSIGNAL_TEST_BROWSER").as_deref() != Ok("1"),
            "RUNSIGNAL_TEST_BROWSER=1 but the browser tests cannot run: {why}"
        );
        println!("browser tests skipped: {why} (RUNSIGNAL_TEST_BROWSER=1 makes this a failure)");
        return;
    }
    install();
    let scenarios = std::env::var("RUNSIGNAL_BROWSER_SCENARIOS").unwrap_or_default();
    let mut cmd = Command::new("node");
    cmd.arg(dir().join("run.mjs"))
        .args(["--bin", BIN, "--parent-pipe"])
        .args(scenarios.split([' ', ',']).filter(|s| !s.is_empty()))
        .current_dir(dir())
        // The runner stops (and kills its servers) when this pipe closes.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Should this process be killed, the runner dies with it.
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("node starts");
    let _stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + WHOLE_RUN;
    let mut failed = Vec::new();
    // Printed as they come (captured by the test harness, shown on failure
    // and with --nocapture); the channel closes when the runner exits.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.starts_with("FAIL ") {
                    failed.push(line.clone());
                }
                println!("{line}");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the browser tests did not finish within {WHOLE_RUN:?}");
            }
        }
    }
    let status = child.wait().expect("node exit status");
    assert!(
        status.success() && failed.is_empty(),
        "browser scenarios failed ({status}):\n{}",
        failed.join("\n")
    );
}
