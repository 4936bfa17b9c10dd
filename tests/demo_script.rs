//! `scripts/demo.sh` (the phase-4 end-to-end demo) runs against the built
//! binary and succeeds: every job state reaches its webhook listener with a
//! verified signature, the dropped `working` delivery is retried, and
//! `GET /jobs/{id}` reconciles.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn demo_script_shows_the_webhook_lifecycle_and_reconciles() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(root)
        .env("RUNSIGNAL_BIN", env!("CARGO_BIN_EXE_runsignal"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash starts");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SIGTERM first so the script's trap stops the server and listener.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = stdout.join().unwrap();
    let err = stderr.join().unwrap();
    let report = format!("--- stdout\n{out}\n--- stderr\n{err}");
    let status = status.unwrap_or_else(|| panic!("demo.sh ran over {TIMEOUT:?}\n{report}"));
    assert!(status.success(), "demo.sh exited {status}\n{report}");
    for state in ["queued", "loading", "working", "done"] {
        assert!(
            out.contains(&format!("webhook  {state:<8}")),
            "no {state} delivery printed\n{report}"
        );
    }
    assert!(out.contains("signature ok"), "{report}");
    assert!(!out.contains("signature BAD"), "{report}");
    assert!(out.contains("DROPPED"), "{report}");
    assert!(
        out.contains("reconciled: job done; 4/4 states delivered with verified signatures; 'working' delivered after 2 attempts"),
        "{report}"
    );
    assert!(out.contains("runsignal watch"), "{report}");
}
