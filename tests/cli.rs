//! The `runsignal` binary as a user runs it: start-up, `migrate`, config
//! errors, and a SIGKILL that must not lose accepted work.

#[path = "common/testdb.rs"]
mod testdb;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testdb::{backends, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_runsignal");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &Path, port: u16) -> Child {
    Command::new(BIN)
        .current_dir(dir)
        .env("RUNSIGNAL__Server__Bind", format!("127.0.0.1:{port}"))
        .env("RUNSIGNAL__Server__Workers", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts")
}

fn wait_ready(client: &reqwest::blocking::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on port {port} never became ready");
}

#[test]
fn serves_on_embedded_defaults_from_any_directory_and_keeps_jobs_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let client = reqwest::blocking::Client::new();
    let mut server = serve(dir.path(), port);
    wait_ready(&client, port);
    assert!(
        dir.path().join("data/runsignal.db").exists(),
        "SQLite created under ./data"
    );
    let packs: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/orchestrator/packs"))
        .header("X-Tenant-Id", "acme")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = packs["packs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["demo", "external"],
        "embedded packs when config/packs is absent"
    );
    let res = client
        .post(format!("http://127.0.0.1:{port}/jobs"))
        .header("X-Tenant-Id", "acme")
        .json(&serde_json::json!({"pack": "external"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 202);
    let job: serde_json::Value = res.json().unwrap();
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    server.kill().unwrap(); // SIGKILL: no graceful shutdown
    server.wait().unwrap();

    let mut server = serve(dir.path(), port);
    wait_ready(&client, port);
    let got: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/jobs/{job_id}"))
        .header("X-Tenant-Id", "acme")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got["state"], "queued", "an accepted job survives a SIGKILL");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn migrate_creates_the_database_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    migrate(dir.path());
    assert!(dir.path().join("data/runsignal.db").exists());
    migrate(dir.path()); // idempotent
}

/// `runsignal migrate` in `dir`, which must succeed.
fn migrate(dir: &Path) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ADR 0049: a database made by the previous schema keeps its jobs through
/// `migrate`, and a job's run key is then checked at commit: a job may
/// precede its run inside a transaction, and cannot commit without it.
#[test]
fn migrate_upgrades_a_database_of_the_previous_schema_keeping_its_jobs() {
    use sqlx::{Connection, SqliteConnection};
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    let current = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(current).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, old.join(&name)).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let url = format!(
        "sqlite://{}/data/runsignal.db?mode=rwc",
        dir.path().display()
    );
    async fn job(conn: &mut SqliteConnection, id: &str, run: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO jobs (job_id, tenant_id, run_id, pack, state, max_attempts, correlation_id, \
             created_at, updated_at, state_changed_at, message) \
             VALUES (?, 'acme', ?, 'external', 'queued', 3, 'c', 1, 1, 1, 'kept')",
        )
        .bind(id)
        .bind(run)
        .execute(conn)
        .await
        .map(drop)
    }
    async fn run(conn: &mut SqliteConnection, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO runs (tenant_id, run_id, created_at, updated_at) VALUES ('acme', ?, 1, 1)",
        )
        .bind(id)
        .execute(conn)
        .await
        .map(drop)
    }
    const INDEXES: &str =
        "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'jobs' AND type = 'index' ORDER BY name";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rt.block_on(async {
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        let migrator = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
        migrator.run(&mut conn).await.unwrap();
        run(&mut conn, "r1").await.unwrap();
        job(&mut conn, "01JOLD", "r1").await.unwrap();
        let indexes: Vec<(String, Option<String>)> =
            sqlx::query_as(INDEXES).fetch_all(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        indexes
    });
    migrate(dir.path());
    rt.block_on(async {
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("PRAGMA foreign_keys = ON")
            .execute(&mut conn)
            .await
            .unwrap();
        let (message,): (String,) =
            sqlx::query_as("SELECT message FROM jobs WHERE job_id = '01JOLD'")
                .fetch_one(&mut conn)
                .await
                .expect("the job made before the upgrade is still there");
        assert_eq!(message, "kept");
        let mut tx = conn.begin().await.unwrap();
        job(&mut tx, "01JNEW", "r2").await.unwrap();
        run(&mut tx, "r2").await.unwrap();
        tx.commit()
            .await
            .expect("a job written before its run commits with it");
        let mut tx = conn.begin().await.unwrap();
        job(&mut tx, "01JBAD", "r3").await.unwrap();
        assert!(
            tx.commit().await.is_err(),
            "a job whose run does not exist does not commit"
        );
        let after: Vec<(String, Option<String>)> =
            sqlx::query_as(INDEXES).fetch_all(&mut conn).await.unwrap();
        assert_eq!(after, before, "the same indexes as before the upgrade");
    });
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key_and_allowed_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("RUNSIGNAL__FirstSignal__Cache__Backend", "memcached")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FirstSignal.Cache.Backend") && err.contains("inmemory"),
        "{err}"
    );

    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"Streams": {"HeartbeatIntervalSeconds": "soon"}}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Streams.HeartbeatIntervalSeconds"), "{err}");

    // A mistyped log level used to start a server that logged nothing.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("RUNSIGNAL__Logging__Level", "inof")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Logging.Level") && err.contains("`inof`"),
        "{err}"
    );
}

#[test]
fn a_bad_pack_file_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("packs");
    std::fs::create_dir(&packs).unwrap();
    std::fs::write(
        packs.join("broken.json"),
        r#"{"name": "broken", "executor": "teleport"}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("RUNSIGNAL__Executor__PacksDir", &packs)
        .env("RUNSIGNAL__Server__Bind", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.json") && err.contains("executor"),
        "{err}"
    );
}

#[test]
fn sigterm_ends_open_streams_and_exits_within_ten_seconds() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let mut server = serve(dir.path(), port);
    wait_ready(&client, port);
    let job: serde_json::Value = client
        .post(format!("http://127.0.0.1:{port}/jobs"))
        .header("X-Tenant-Id", "acme")
        .json(&serde_json::json!({"pack": "external"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let run = job["run_id"].as_str().unwrap().to_owned();
    let stream = client
        .get(format!(
            "http://127.0.0.1:{port}/api/v1/orchestrator/stream/runs/{run}?tenant=acme"
        ))
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    let reader = std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
            .collect();
        lines
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "exits within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let lines = reader.join().unwrap();
    assert!(
        lines.iter().any(|l| l == "event: first_signal"),
        "{lines:?}"
    );
    assert_eq!(
        lines
            .iter()
            .rev()
            .find(|l| l.starts_with("event: "))
            .map(String::as_str),
        Some("event: timeout"),
        "the stream ended cleanly with `timeout`: {lines:?}"
    );
    assert!(
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .is_err(),
        "no longer accepting"
    );

    // What was accepted before the stop is still there.
    let mut server = serve(dir.path(), port);
    wait_ready(&client, port);
    let got: serde_json::Value = client
        .get(format!(
            "http://127.0.0.1:{port}/jobs/{}",
            job["job_id"].as_str().unwrap()
        ))
        .header("X-Tenant-Id", "acme")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got["state"], "queued");
    server.kill().unwrap();
    server.wait().unwrap();
}

fn serve_with(dir: &Path, port: u16, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("RUNSIGNAL__Server__Bind", format!("127.0.0.1:{port}"))
        .env("RUNSIGNAL__Server__Workers", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(format!("RUNSIGNAL__{k}"), v);
    }
    cmd.spawn().expect("binary starts")
}

fn job_state(client: &reqwest::blocking::Client, port: u16, job: &str) -> serde_json::Value {
    client
        .get(format!("http://127.0.0.1:{port}/jobs/{job}"))
        .header("X-Tenant-Id", "acme")
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn a_builtin_job_left_working_by_a_sigkill_leaves_working_after_restart() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path());
        let packs = dir.path().join("packs");
        std::fs::create_dir(&packs).unwrap();
        std::fs::write(
            packs.join("sleepy.json"),
            serde_json::json!({"name": "sleepy", "executor": "builtin", "steps": [
                {"name": "nap", "stage": "s", "run": ["sh", "-c", "echo $$ > step.pid; exec sleep 30"]}]})
            .to_string(),
        )
        .unwrap();
        let ws = dir.path().join("ws");
        let env = [
            ("Database__Url", db.url.clone()),
            ("Executor__PacksDir", packs.display().to_string()),
            ("Executor__WorkspaceDir", ws.display().to_string()),
            ("Jobs__MaxAttempts", "1".to_owned()),
            ("Jobs__LeaseSweepIntervalSeconds", "1".to_owned()),
        ];
        let port = free_port();
        let client = reqwest::blocking::Client::new();
        let mut server = serve_with(dir.path(), port, &env);
        wait_ready(&client, port);
        let res = client
            .post(format!("http://127.0.0.1:{port}/jobs"))
            .header("X-Tenant-Id", "acme")
            .json(&serde_json::json!({"pack": "sleepy"}))
            .send()
            .unwrap();
        assert_eq!(res.status(), 202);
        let job: serde_json::Value = res.json().unwrap();
        let job_id = job["job_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        while job_state(&client, port, &job_id)["state"] != "working" {
            assert!(Instant::now() < deadline, "the job never started working");
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid_file = ws.join(&job_id).join("step.pid");
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "the step never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        server.kill().unwrap(); // SIGKILL: the executor dies mid-step
        server.wait().unwrap();
        // The orphaned step is not the server's any more: clean it up.
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", pid.trim())])
                .status();
        }

        let mut server = serve_with(dir.path(), port, &env);
        wait_ready(&client, port);
        let deadline = Instant::now() + Duration::from_secs(15);
        let got = loop {
            let got = job_state(&client, port, &job_id);
            if got["state"] != "working" && got["state"] != "loading" {
                break got;
            }
            assert!(
                Instant::now() < deadline,
                "still {} 15 s after the restart",
                got["state"]
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(got["state"], "failed", "{got}");
        assert_eq!(got["error"]["code"], "lease_expired", "{got}");
        server.kill().unwrap();
        server.wait().unwrap();
    }
}

/// Group commit keeps the durability promise: under concurrent submits a
/// SIGKILL loses no job that was answered 202, on every backend.
#[test]
fn no_job_answered_202_is_lost_by_a_sigkill_under_concurrent_submits() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path());
        let env = [("Database__Url", db.url.clone())];
        let port = free_port();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut server = serve_with(dir.path(), port, &env);
        wait_ready(&client, port);
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let submitters: Vec<_> = (0..8)
            .map(|_| {
                let (client, accepted) = (client.clone(), accepted.clone());
                std::thread::spawn(move || {
                    for _ in 0..400 {
                        let sent = client
                            .post(format!("http://127.0.0.1:{port}/jobs"))
                            .header("X-Tenant-Id", "acme")
                            .json(&serde_json::json!({"pack": "external"}))
                            .send();
                        let Ok(res) = sent else { return };
                        if res.status() != 202 {
                            return;
                        }
                        let v: serde_json::Value = res.json().unwrap();
                        let id = v["job_id"].as_str().unwrap().to_owned();
                        accepted.lock().unwrap().push(id);
                    }
                })
            })
            .collect();
        // Kill mid-stream: some submits are in a batch being written.
        let deadline = Instant::now() + Duration::from_secs(20);
        while accepted.lock().unwrap().len() < 300 {
            assert!(Instant::now() < deadline, "submits never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill().unwrap();
        server.wait().unwrap();
        for s in submitters {
            s.join().unwrap();
        }
        let accepted = accepted.lock().unwrap().clone();

        let mut server = serve_with(dir.path(), port, &env);
        wait_ready(&client, port);
        for id in &accepted {
            let got = job_state(&client, port, id);
            assert_eq!(
                got["state"], "queued",
                "{backend:?}: job {id} answered 202, then lost"
            );
        }
        server.kill().unwrap();
        server.wait().unwrap();
    }
}

/// `token new` prints a token, its entry (whose sha256 is the token's) and
/// the env-var form; a server configured with that line accepts the token.
/// With every log level on, no token (given as a header, as
/// `?access_token=`, right or wrong) appears in the server's logs.
#[test]
fn token_new_makes_a_working_token_and_no_token_reaches_the_logs() {
    use sha2::{Digest, Sha256};
    let out = Command::new(BIN)
        .args(["token", "new", "--tenant", "acme", "--scope", "read,write"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line")
        .to_owned();
    assert!(token.len() >= 32, "at least 128 bits: {token}");
    let entry: serde_json::Value = text
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("an entry line");
    assert_eq!(
        entry["sha256"],
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    assert_eq!(entry["tenants"], serde_json::json!(["acme"]));
    let env_line = text
        .lines()
        .find(|l| l.starts_with("RUNSIGNAL__Auth__Tokens__0="))
        .expect("an env-var line");
    let (name, value) = env_line.split_once('=').unwrap();
    let value = value.trim_matches('\'').to_owned();

    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let port = free_port();
    let mut server = Command::new(BIN)
        .current_dir(dir.path())
        .env("RUNSIGNAL__Server__Bind", format!("127.0.0.1:{port}"))
        .env("RUNSIGNAL__Server__Workers", "1")
        .env("RUNSIGNAL__Auth__Mode", "token")
        .env(name, value)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::new();
    wait_ready(&client, port);
    let base = format!("http://127.0.0.1:{port}");
    let jobs = client
        .get(format!("{base}/jobs"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(jobs.status(), 200, "the printed token authenticates");
    let none = client.get(format!("{base}/jobs")).send().unwrap();
    assert_eq!(none.status(), 401);
    let wrong = "rsg_wrong-token-that-must-not-be-logged";
    let run = "0b7c5a8e-2f35-4c1b-9a51-3f0a6f9d2c11";
    for t in [token.as_str(), wrong] {
        for path in [
            "/jobs".to_owned(),
            format!("/api/v1/orchestrator/stream/runs/{run}?access_token={t}"),
            format!("/jobs?access_token={t}"),
        ] {
            client
                .get(format!("{base}{path}"))
                .bearer_auth(t)
                .send()
                .unwrap();
            client.get(format!("{base}{path}")).send().unwrap();
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let logs = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        logs.contains("runsignal listening"),
        "logs were captured: {logs}"
    );
    for t in [token.as_str(), wrong] {
        assert!(!logs.contains(t), "a token in the logs");
    }
}
