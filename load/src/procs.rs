//! Servers under test as child processes: `runsignal serve` (the release
//! binary built next to this one) and nginx with the nchan module. Their
//! memory is read from `/proc`, so the client's own memory never counts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// Raise the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0,
            "getrlimit"
        );
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    Ok(lim.rlim_cur)
}

/// Open files this tool allows itself, whatever the limit allows.
pub const MAX_OPEN_FILES: u64 = 20_000;

/// Refuse a shape that needs more than `MAX_OPEN_FILES` (or the process
/// limit) file descriptors: `connections` plus a margin for the rest.
pub fn check_fds(connections: usize, limit: u64) -> anyhow::Result<()> {
    let need = connections as u64 + 64;
    let cap = limit.min(MAX_OPEN_FILES);
    ensure!(
        need <= cap,
        "this shape needs about {need} open files; the tool stays within {cap} \
         (min of {MAX_OPEN_FILES} and the open-file limit {limit})"
    );
    Ok(())
}

/// A free port on loopback (bound, then released for the child to take).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Only loopback targets: the tool never loads a remote host.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.split("://").nth(1).unwrap_or("");
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map_or("", |h| &rest[..h.len() + 2]),
        None => rest.split(['/', ':']).next().unwrap_or(""),
    };
    ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "--url must point at loopback (127.0.0.1, localhost or [::1]), not {host:?}"
    );
    Ok(())
}

/// Resident and proportional set size of a process and its children, KiB,
/// and the CPU time they have used so far (user + system, ms; live
/// processes only: a child that exited takes its time with it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub cpu_ms: u64,
}

impl Mem {
    /// RSS in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    /// RSS in MiB as a table cell, `-` when not read.
    pub fn cell(m: Option<Mem>) -> String {
        m.map_or("-".to_owned(), |m| format!("{:.1}", m.rss_mib()))
    }
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(s) = std::fs::read_to_string(path) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks. The
/// command name (field 2) may hold spaces, so fields count from its `)`.
fn cpu_ticks(stat: &str) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // After `)`: field 3 (state) is index 0, so utime (14) is 11, stime 12.
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || {
        fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    next() + next()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// The CPU time (user + system, ms) this process has used so far, without
/// its children's: in the fan-out scenarios, the measuring client's own.
pub fn own_cpu_ms() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .map_or(0, |s| cpu_ticks(&s) * 1000 / clock_ticks_per_second())
}

/// The memory and CPU time of `pid` and its descendants (nginx: master and
/// workers).
pub fn mem(pid: u32) -> Mem {
    let hz = clock_ticks_per_second();
    let mut m = Mem::default();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            m.rss_kib += field_kib(&s, "VmRSS:");
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            m.cpu_ms += cpu_ticks(&s) * 1000 / hz;
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) {
            m.pss_kib += field_kib(&s, "Pss:");
        }
        todo.extend(children(p));
    }
    m
}

/// Wait until `GET url` answers 2xx, or fail after `timeout`.
pub async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited before it was ready: {status}");
        }
        if let Ok(res) = client.get(url).send().await {
            if res.status().is_success() {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "{url} not ready in {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server under test: its base URL and, when this tool started it, its
/// process (killed on drop).
pub struct Target {
    pub name: &'static str,
    pub base: String,
    pub child: Option<Child>,
    /// The pid to read memory from (`--server-pid` for an external server).
    pub pid: Option<u32>,
    /// The temporary directory of a started server, removed with it.
    pub _dir: Option<tempfile::TempDir>,
}

impl Target {
    pub fn mem(&self) -> Option<Mem> {
        self.pid.map(mem)
    }

    /// Stop the child (SIGTERM, then SIGKILL after 5 s).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where to find or how to start runsignal.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of an already running runsignal (loopback only), e.g.
    /// `http://127.0.0.1:8080`. Default: start `--server-bin serve` as a
    /// child process on a free port and a temporary SQLite database.
    #[arg(long)]
    pub url: Option<String>,
    /// With `--url`: the server's pid, to report its memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The `runsignal` binary to start. Default: `runsignal` next to this
    /// binary (both are built by `cargo build --release`).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// `Server.Workers` of the started server (HTTP worker threads).
    #[arg(long, default_value_t = 2)]
    pub server_workers: usize,
    /// Seconds each phase may take before the tool gives up on it.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

impl ServerArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    fn bin(&self) -> anyhow::Result<PathBuf> {
        if let Some(b) = &self.server_bin {
            return Ok(b.clone());
        }
        let me = std::env::current_exe()?;
        let dir = me.parent().context("the load binary has no directory")?;
        let bin = dir.join("runsignal");
        ensure!(
            bin.exists(),
            "{} not found: build it (`cargo build --release` builds both) or pass --server-bin",
            bin.display()
        );
        Ok(bin)
    }

    /// The server to measure: `--url`, or a fresh child process with
    /// `settings` (`Section__Key`, value) on top of the bench defaults.
    pub async fn start(
        &self,
        client: &reqwest::Client,
        settings: &[(&str, String)],
    ) -> anyhow::Result<Target> {
        if let Some(url) = &self.url {
            check_loopback(url)?;
            return Ok(Target {
                name: "runsignal",
                base: url.trim_end_matches('/').to_owned(),
                child: None,
                pid: self.server_pid,
                _dir: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let mut child = self.spawn(dir.path(), settings, None)?;
        let base = self.base_of(settings)?;
        wait_ready(
            client,
            &format!("{base}/healthz"),
            &mut child,
            Duration::from_secs(60),
        )
        .await?;
        let pid = child.id();
        Ok(Target {
            name: "runsignal",
            base,
            child: Some(child),
            pid: Some(pid),
            _dir: Some(dir),
        })
    }

    fn base_of(&self, settings: &[(&str, String)]) -> anyhow::Result<String> {
        let bind = settings
            .iter()
            .find(|(k, _)| *k == "Server__Bind")
            .map(|(_, v)| v.clone())
            .context("no Server__Bind")?;
        Ok(format!("http://{bind}"))
    }

    /// `runsignal <command>` with the bench environment in `dir`.
    pub fn spawn(
        &self,
        dir: &Path,
        settings: &[(&str, String)],
        command: Option<&str>,
    ) -> anyhow::Result<Child> {
        let bin = self.bin()?;
        let packs = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/packs");
        let d = dir.display();
        let mut env: Vec<(String, String)> = [
            ("Server__Workers", self.server_workers.to_string()),
            ("Database__Url", format!("sqlite://{d}/bench.db")),
            ("Logging__Level", "warn".to_owned()),
            ("Artifacts__Dir", format!("{d}/artifacts")),
            ("Executor__WorkspaceDir", format!("{d}/workspaces")),
            ("Executor__PacksDir", packs.to_owned()),
            ("Limits__MaxStreamsPerTenant", "1000000".to_owned()),
            ("Limits__MaxStreamsPerCredential", "1000000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in settings {
            env.retain(|(old, _)| old != k);
            env.push(((*k).to_owned(), v.clone()));
        }
        let mut cmd = Command::new(&bin);
        cmd.arg(command.unwrap_or("serve"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(format!("RUNSIGNAL__{k}"), v);
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }
}

/// Settings for a started server on a free loopback port.
pub fn bind_setting() -> anyhow::Result<(&'static str, String)> {
    Ok(("Server__Bind", format!("127.0.0.1:{}", free_port()?)))
}

/// Where Debian installs the nchan module.
const NCHAN_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
];

/// nginx + nchan, or why not.
pub fn nchan_installed(nginx: &Path) -> Result<PathBuf, String> {
    if !nginx.exists() {
        return Err(format!(
            "{} not found (Debian: apt-get install nginx-light libnginx-mod-nchan)",
            nginx.display()
        ));
    }
    NCHAN_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            "the nchan module is not installed (Debian: apt-get install libnginx-mod-nchan)"
                .to_owned()
        })
}

/// Start nginx with nchan on a free loopback port in a temporary prefix.
/// Publisher: `POST /pub/<channel>`; subscribers (EventSource or
/// WebSocket): `GET /sub/<channel>`.
pub async fn start_nchan(
    client: &reqwest::Client,
    nginx: &Path,
    module: &Path,
    workers: usize,
    buffer: usize,
) -> anyhow::Result<Target> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let d = dir.path().display();
    std::fs::create_dir_all(dir.path().join("tmp"))?;
    std::fs::create_dir_all(dir.path().join("logs"))?;
    let conf = format!(
        r#"load_module {module};
worker_processes {workers};
worker_rlimit_nofile {MAX_OPEN_FILES};
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections {MAX_OPEN_FILES}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  nchan_shared_memory_size 256M;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ ^/pub/([A-Za-z0-9_-]+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length {buffer};
      nchan_message_timeout 1h;
    }}
    location ~ ^/sub/([A-Za-z0-9_-]+)$ {{
      nchan_subscriber;
      nchan_channel_id $1;
    }}
    location = /healthz {{ return 200 "ok"; }}
  }}
}}
"#,
        module = module.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("logs/error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", nginx.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(
        client,
        &format!("{base}/healthz"),
        &mut child,
        Duration::from_secs(20),
    )
    .await?;
    let pid = child.id();
    Ok(Target {
        name: "nchan",
        base,
        child: Some(child),
        pid: Some(pid),
        _dir: Some(dir),
    })
}

/// `--vs-nchan` options.
#[derive(clap::Args, Debug, Clone)]
pub struct NchanArgs {
    /// Run the same shape against nginx+nchan in the same run and print
    /// both rows and the ratio runsignal/nchan.
    #[arg(long)]
    pub vs_nchan: bool,
    /// The nginx binary (with the nchan module installed).
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx: PathBuf,
    /// nginx `worker_processes` (default: the runsignal server's workers).
    #[arg(long)]
    pub nginx_workers: Option<usize>,
}

impl NchanArgs {
    /// The module to load, or `None` (after saying why) when nchan is not
    /// requested or not installed.
    pub fn module(&self) -> Option<PathBuf> {
        if !self.vs_nchan {
            return None;
        }
        match nchan_installed(&self.nginx) {
            Ok(m) => Some(m),
            Err(why) => {
                println!("nchan: skipped: {why}");
                None
            }
        }
    }
}

/// Wait for `readers` to finish, or stop them: 10 s after `writers` are done
/// (for the last deliveries to arrive), or at `deadline`, whichever is first.
pub async fn stop_readers_after<R, W>(
    readers: impl std::future::Future<Output = R>,
    writers: impl std::future::Future<Output = W>,
    deadline: tokio::time::Instant,
    stop: &tokio::sync::watch::Sender<bool>,
) {
    let watchdog = async {
        tokio::select! {
            _ = writers => tokio::time::sleep(std::time::Duration::from_secs(10)).await,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let _ = stop.send(true);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = readers => {}
        _ = watchdog => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{check_loopback, cpu_ticks, mem, own_cpu_ms};

    #[test]
    fn this_processs_cpu_time_grows_with_its_work() {
        let cpu_ms = || mem(std::process::id()).cpu_ms;
        let start = cpu_ms();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while cpu_ms() < start + 50 {
            assert!(
                Instant::now() < deadline,
                "50 ms of CPU not counted in 10 s"
            );
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }

    #[test]
    fn own_cpu_time_leaves_out_a_busy_child() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh runs");
        let (own, all) = (own_cpu_ms(), mem(std::process::id()).cpu_ms);
        let deadline = Instant::now() + Duration::from_secs(20);
        // The child's 400 ms of CPU show in the family's time…
        while mem(std::process::id()).cpu_ms < all + 400 {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("400 ms of the child's CPU not counted in 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        // Read once the child is reaped: its time has then moved into this
        // process's children's fields, which must not be counted either.
        let own_spent = own_cpu_ms() - own;
        // …and not in this process's own, which only slept and read /proc.
        assert!(own_spent < 200, "own CPU {own_spent} ms counts the child's");
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parens() {
        // Fields 14 and 15 (utime 250, stime 30) of a real line's shape.
        let stat = "4242 (nginx: worker (x)) S 1 4242 4242 0 -1 4194624 900 0 0 0 250 30 0 0 20 0 1 0 77 1000 50";
        assert_eq!(cpu_ticks(stat), 280);
        assert_eq!(cpu_ticks("garbage"), 0);
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/x",
            "http://[::1]:8080/",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "http://127.0.0.1.example.com:80",
            "http://[::2]:80",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }
}
