//! Configuration (SPEC §9): compiled-in defaults (`config/default.json`),
//! layered with an optional `--config` file and `RUNSIGNAL__Section__Key`
//! environment variables, key by key, keys matched case-insensitively.
//! Validated at start-up; every error names the key and what is allowed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_JSON: &str = include_str!("../config/default.json");
const ENV_PREFIX: &str = "RUNSIGNAL__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("unknown configuration key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub first_signal: FirstSignalConfig,
    #[serde(rename = "messaging")]
    pub messaging: MessagingConfig,
    pub redis: RedisConfig,
    pub streams: StreamsConfig,
    pub limits: LimitsConfig,
    pub actors: ActorsConfig,
    pub jobs: JobsConfig,
    pub executor: ExecutorConfig,
    pub webhooks: WebhooksConfig,
    pub artifacts: ArtifactsConfig,
    pub logging: LoggingConfig,
    pub auth: crate::auth::AuthConfig,
    pub metrics: MetricsConfig,
    pub dashboard: DashboardConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServerConfig {
    pub bind: String,
    pub max_body_bytes: usize,
    pub workers: usize,
    pub shutdown_timeout_seconds: u64,
    pub cors: CorsConfig,
    /// A request body must arrive whole within this (408 otherwise).
    pub body_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CorsConfig {
    /// Browser origins allowed to call the API; empty: no CORS headers.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricsConfig {
    /// `/metrics` without the `admin` scope.
    pub public: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardConfig {
    /// Serve the dashboard at `GET /` (ADR 0038).
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// PostgreSQL: write transactions in flight at once (group-commit
    /// lanes). SQLite always has one writer.
    pub write_lanes: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FirstSignalConfig {
    pub cache: CacheConfig,
    pub cold_path: ColdPathConfig,
    pub snapshot_writer: SnapshotWriterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CacheConfig {
    pub backend: String,
    pub ttl_seconds: u64,
    pub sliding_expiration: bool,
    pub key_prefix: String,
    /// In-memory backend: entries kept; the least recently used go first.
    pub max_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ColdPathConfig {
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotWriterConfig {
    pub enabled: bool,
    pub tenant_id: Option<String>,
    pub poll_interval_seconds: u64,
    pub max_runs_per_tick: u32,
    pub lookback_minutes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessagingConfig {
    pub transport: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RedisConfig {
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamsConfig {
    pub heartbeat_interval_seconds: u64,
    pub retry_ms: u64,
    pub buffer_size: usize,
    pub max_duration_seconds: u64,
    pub max_subscriptions_per_socket: usize,
}

/// SPEC §11 (see ADR 0026).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LimitsConfig {
    /// Open connections; past it new ones are refused at once. `0`: 90% of
    /// the process's soft open-file limit, read at start-up
    /// ([`LimitsConfig::max_connections`]).
    pub max_connections: usize,
    /// Open SSE streams plus WebSocket subscriptions of one tenant.
    pub max_streams_per_tenant: usize,
    /// Open SSE streams plus WebSocket subscriptions of one credential.
    pub max_streams_per_credential: usize,
}

impl LimitsConfig {
    /// `MaxConnections`, resolved: the configured value, or 90% of the soft
    /// `RLIMIT_NOFILE` (the rest is headroom for the store, files, sockets
    /// of webhooks and the connections being refused).
    pub fn max_connections(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let soft = crate::http::limits::open_file_limit();
        (soft / 10 * 9).max(1)
    }
}

/// Most `Actors.Threads`: each is an OS thread started at once.
const MAX_ACTOR_THREADS: usize = 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActorsConfig {
    pub idle_evict_seconds: u64,
    pub max_resident: usize,
    pub mailbox_capacity: usize,
    /// Threads of the run actors; 0: one per CPU ([`ActorsConfig::threads`]).
    pub threads: usize,
}

impl ActorsConfig {
    /// `Actors.Threads` resolved: 0 is one per CPU, as for `Server.Workers`.
    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobsConfig {
    pub max_attempts: u32,
    pub retention_hours: u64,
    pub prune_interval_seconds: u64,
    pub lease_sweep_interval_seconds: u64,
    pub idempotency_window_hours: u64,
    /// A queued job nobody can take is flagged blocked after this long.
    pub blocked_after_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecutorConfig {
    pub packs_dir: String,
    /// Built-in pack jobs running at once (all tenants together).
    pub max_concurrent_jobs: usize,
    /// Parent of the per-job workspaces (`<WorkspaceDir>/<jobId>`).
    pub workspace_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WebhooksConfig {
    pub secrets: Vec<String>,
    pub allowed_networks: Vec<String>,
    pub retry_schedule_seconds: Vec<u64>,
    pub timeout_seconds: u64,
    /// Deliveries in flight at once.
    pub max_concurrency: usize,
    /// Deliveries of one tenant in flight at once; 0: a quarter of
    /// `MaxConcurrency`, at least 1 (see [`WebhooksConfig::per_tenant_slots`]).
    pub max_in_flight_per_tenant: usize,
}

impl WebhooksConfig {
    /// The per-tenant cap in force (SPEC §11, ADR 0025).
    pub fn per_tenant_slots(&self) -> usize {
        match self.max_in_flight_per_tenant {
            0 => (self.max_concurrency / 4).max(1),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArtifactsConfig {
    pub inline_max_bytes: usize,
    /// Artifact files live under `<Dir>/<tenant>/<jobId>/<completionId>/<name>`.
    pub dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoggingConfig {
    pub level: String,
    pub format: String,
}

impl Config {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, std::env::vars())
    }

    /// Defaults, then `file`, then the given environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // The compiled-in defaults are valid JSON (a unit test checks it).
        let mut tree: Value = serde_json::from_str(DEFAULT_JSON).expect("default.json parses");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let overlay: Value =
                serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?;
            merge(&mut tree, overlay, "", &path.display().to_string())?;
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Apply in path order, list indexes numerically (`…__2` before `…__10`),
        // so a list is filled item by item.
        vars.sort_by_cached_key(|(name, _)| env_sort_key(name));
        // Lists the environment sets by index: each is replaced as a whole by
        // the items given (ADR 0030), not merged item by item into the list
        // below it.
        let mut lists = HashSet::new();
        for (name, raw) in vars {
            let path: Vec<&str> = name[ENV_PREFIX.len()..].split("__").collect();
            set_path(&mut tree, &path, &raw, &name, &mut lists)?;
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            invalid(&key, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The default configuration (for tests and `migrate`).
    pub fn defaults() -> Config {
        Config::load_from(None, Vec::new()).expect("defaults are valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bind = self
            .server
            .bind
            .parse::<SocketAddr>()
            .map_err(|_| invalid("Server.Bind", "must be an address like 127.0.0.1:8080"))?;
        self.auth.validate(&bind)?;
        for (i, origin) in self.server.cors.allowed_origins.iter().enumerate() {
            let ok = url::Url::parse(origin)
                .is_ok_and(|u| u.origin().ascii_serialization() == origin.as_str());
            if !ok {
                return Err(invalid(
                    &format!("Server.Cors.AllowedOrigins[{i}]"),
                    format!("`{origin}` is not an origin such as https://app.example.com (scheme, host, optional port; no path)"),
                ));
            }
        }
        positive("Server.MaxBodyBytes", self.server.max_body_bytes as u64)?;
        positive(
            "Server.BodyTimeoutSeconds",
            self.server.body_timeout_seconds,
        )?;
        positive(
            "Limits.MaxStreamsPerTenant",
            self.limits.max_streams_per_tenant as u64,
        )?;
        positive(
            "Limits.MaxStreamsPerCredential",
            self.limits.max_streams_per_credential as u64,
        )?;
        let url = &self.database.url;
        if !url.starts_with("sqlite:") && !crate::store::postgres::is_postgres_url(url) {
            return Err(invalid(
                "Database.Url",
                format!("`{}` is not supported; allowed: sqlite://PATH, sqlite::memory:, postgres://USER@HOST/DB", crate::redact(url)),
            ));
        }
        if !(1..=64).contains(&self.database.write_lanes) {
            return Err(invalid(
                "Database.WriteLanes",
                format!(
                    "{} is out of range; allowed: 1..=64",
                    self.database.write_lanes
                ),
            ));
        }
        positive(
            "Database.MaxConnections",
            self.database.max_connections.into(),
        )?;
        one_of(
            "FirstSignal.Cache.Backend",
            &self.first_signal.cache.backend,
            &["inmemory", "redis"],
        )?;
        if self.first_signal.cache.backend == "redis"
            && self.redis.url.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "Redis.Url",
                "is required with FirstSignal.Cache.Backend = redis",
            ));
        }
        positive(
            "FirstSignal.Cache.TtlSeconds",
            self.first_signal.cache.ttl_seconds,
        )?;
        positive(
            "FirstSignal.Cache.MaxEntries",
            self.first_signal.cache.max_entries as u64,
        )?;
        let sw = &self.first_signal.snapshot_writer;
        positive(
            "FirstSignal.SnapshotWriter.PollIntervalSeconds",
            sw.poll_interval_seconds,
        )?;
        positive(
            "FirstSignal.SnapshotWriter.MaxRunsPerTick",
            sw.max_runs_per_tick.into(),
        )?;
        positive(
            "FirstSignal.SnapshotWriter.LookbackMinutes",
            sw.lookback_minutes,
        )?;
        one_of(
            "messaging.transport",
            &self.messaging.transport,
            &["inmemory", "redis"],
        )?;
        if self.messaging.transport == "redis" {
            if self.redis.url.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    "Redis.Url",
                    "is required with messaging.transport = redis",
                ));
            }
            if !self.database.url.starts_with("postgres") {
                return Err(invalid(
                    "messaging.transport",
                    "redis joins several nodes, which share one PostgreSQL database: \
                     set Database.Url to a postgres:// URL",
                ));
            }
        }
        positive(
            "Streams.HeartbeatIntervalSeconds",
            self.streams.heartbeat_interval_seconds,
        )?;
        positive("Streams.BufferSize", self.streams.buffer_size as u64)?;
        positive("Actors.IdleEvictSeconds", self.actors.idle_evict_seconds)?;
        positive("Actors.MaxResident", self.actors.max_resident as u64)?;
        positive(
            "Actors.MailboxCapacity",
            self.actors.mailbox_capacity as u64,
        )?;
        if self.actors.threads > MAX_ACTOR_THREADS {
            return Err(invalid(
                "Actors.Threads",
                format!(
                    "{} is out of range; allowed: 0..={MAX_ACTOR_THREADS}",
                    self.actors.threads
                ),
            ));
        }
        if !(1..=100).contains(&self.jobs.max_attempts) {
            return Err(invalid(
                "Jobs.MaxAttempts",
                format!(
                    "{} is out of range; allowed: 1..=100",
                    self.jobs.max_attempts
                ),
            ));
        }
        positive("Jobs.RetentionHours", self.jobs.retention_hours)?;
        positive(
            "Jobs.PruneIntervalSeconds",
            self.jobs.prune_interval_seconds,
        )?;
        positive(
            "Jobs.LeaseSweepIntervalSeconds",
            self.jobs.lease_sweep_interval_seconds,
        )?;
        positive(
            "Jobs.IdempotencyWindowHours",
            self.jobs.idempotency_window_hours,
        )?;
        if !(1..=86_400).contains(&self.jobs.blocked_after_seconds) {
            return Err(invalid(
                "Jobs.BlockedAfterSeconds",
                format!(
                    "{} is out of range; allowed: 1..=86400",
                    self.jobs.blocked_after_seconds
                ),
            ));
        }
        if self.executor.packs_dir.trim().is_empty() {
            return Err(invalid("Executor.PacksDir", "must be a directory path"));
        }
        if !(1..=256).contains(&self.executor.max_concurrent_jobs) {
            return Err(invalid(
                "Executor.MaxConcurrentJobs",
                format!(
                    "{} is out of range; allowed: 1..=256",
                    self.executor.max_concurrent_jobs
                ),
            ));
        }
        if self.artifacts.dir.trim().is_empty() {
            return Err(invalid("Artifacts.Dir", "must be a directory path"));
        }
        if self.executor.workspace_dir.trim().is_empty() {
            return Err(invalid("Executor.WorkspaceDir", "must be a directory path"));
        }
        log_level(&self.logging.level)?;
        one_of("Logging.Format", &self.logging.format, &["pretty", "json"])?;
        let hooks = &self.webhooks;
        if !(1..=1024).contains(&hooks.max_concurrency) {
            return Err(invalid(
                "Webhooks.MaxConcurrency",
                format!(
                    "{} is out of range; allowed: 1..=1024",
                    hooks.max_concurrency
                ),
            ));
        }
        if hooks.max_in_flight_per_tenant > 1024 {
            return Err(invalid(
                "Webhooks.MaxInFlightPerTenant",
                format!(
                    "{} is out of range; allowed: 0 (a quarter of MaxConcurrency) or 1..=1024",
                    hooks.max_in_flight_per_tenant
                ),
            ));
        }
        positive("Webhooks.TimeoutSeconds", hooks.timeout_seconds)?;
        if hooks.retry_schedule_seconds.is_empty() || hooks.retry_schedule_seconds.len() > 1000 {
            return Err(invalid(
                "Webhooks.RetryScheduleSeconds",
                "must list 1..=1000 delays in seconds (one per retry)",
            ));
        }
        if let Some((i, d)) = hooks
            .retry_schedule_seconds
            .iter()
            .enumerate()
            .find(|(_, d)| **d > 86_400)
        {
            return Err(invalid(
                &format!("Webhooks.RetryScheduleSeconds[{i}]"),
                format!("{d} is out of range; allowed: 0..=86400"),
            ));
        }
        for (i, net) in hooks.allowed_networks.iter().enumerate() {
            crate::webhooks::ssrf::parse_network(net)
                .map_err(|e| invalid(&format!("Webhooks.AllowedNetworks[{i}]"), e))?;
        }
        Ok(())
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
        return Ok(());
    }
    Err(invalid(
        key,
        format!(
            "`{value}` is not allowed; allowed values: {}",
            allowed.join(", ")
        ),
    ))
}

/// `Logging.Level`: a level, or comma-separated `target=level` directives
/// (tracing's env-filter syntax). The filter itself would take a mistyped
/// level (`inof`) as a target name and log nothing: refused here instead.
fn log_level(value: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |l: &str| LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l.trim()));
    let bad = |why: String| {
        invalid(
            "Logging.Level",
            format!(
                "{why}; allowed: {} or comma-separated target=level directives such as `info,runsignal=debug`",
                LEVELS.join(", ")
            ),
        )
    };
    let directives: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(bad("is empty".into()));
    }
    for d in directives {
        let ok = match d.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        };
        if !ok {
            return Err(bad(format!(
                "`{d}` is not a level or a target=level directive"
            )));
        }
    }
    tracing_subscriber::EnvFilter::try_new(value)
        .map(drop)
        .map_err(|e| bad(e.to_string()))
}

/// Sort key of an environment variable name: segments, numbers as numbers.
fn env_sort_key(name: &str) -> Vec<(u64, String)> {
    name.split("__")
        .map(|seg| match seg.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (u64::MAX, seg.to_ascii_lowercase()),
        })
        .collect()
}

/// The existing key of `map` that matches `name` case-insensitively.
fn find_key(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

/// Overlay `over` onto `base`; every key must already exist in the defaults.
fn merge(base: &mut Value, over: Value, prefix: &str, origin: &str) -> Result<(), ConfigError> {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (name, value) in over {
                let dotted = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                let Some(key) = find_key(base, &name) else {
                    return Err(ConfigError::UnknownKey {
                        key: dotted,
                        origin: origin.to_owned(),
                    });
                };
                // Key exists: `get_mut` cannot miss.
                let slot = base.get_mut(&key).expect("key just found");
                if slot.is_object() && value.is_object() {
                    merge(slot, value, &dotted, origin)?;
                } else {
                    *slot = value;
                }
            }
            Ok(())
        }
        (slot, value) => {
            *slot = value;
            Ok(())
        }
    }
}

/// Apply one environment variable: walk `path` (case-insensitive keys, list
/// items by index) and parse `raw` as the type the default has there. The
/// first variable to set an item of a list empties it (`lists` remembers
/// which were), so that the environment's items are the whole list.
fn set_path(
    tree: &mut Value,
    path: &[&str],
    raw: &str,
    var: &str,
    lists: &mut HashSet<String>,
) -> Result<(), ConfigError> {
    let unknown = || ConfigError::UnknownKey {
        key: path.join("."),
        origin: format!("environment variable {var}"),
    };
    let mut node = tree;
    for (i, part) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        node = match node {
            Value::Object(map) => {
                let key = find_key(map, part).ok_or_else(unknown)?;
                // Key exists: `get_mut` cannot miss.
                map.get_mut(&key).expect("key just found")
            }
            Value::Array(items) => {
                let idx: usize = part.parse().map_err(|_| unknown())?;
                // A new item takes the type of the list's items (strings when
                // none), read before the list is emptied.
                let like = items
                    .first()
                    .filter(|v| v.is_number())
                    .map_or(Value::String(String::new()), |_| Value::from(0));
                if lists.insert(path[..i].join(".").to_ascii_lowercase()) {
                    items.clear();
                }
                if idx > items.len() {
                    return Err(invalid(
                        &path.join("."),
                        format!(
                            "list index {idx} skips items; next index is {}",
                            items.len()
                        ),
                    ));
                }
                if idx == items.len() {
                    items.push(like);
                }
                &mut items[idx]
            }
            _ => return Err(unknown()),
        };
        if last {
            *node = parse_like(node, raw);
        }
    }
    Ok(())
}

/// Parse an environment value as the type of the value it replaces.
fn parse_like(current: &Value, raw: &str) -> Value {
    match current {
        Value::String(_) => Value::String(raw.to_owned()),
        // Every nullable key in the defaults holds a string when set.
        Value::Null if raw != "null" => Value::String(raw.to_owned()),
        _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests;
