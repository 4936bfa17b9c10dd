//! What `runsignal watch` is asked and what it answers: its arguments, the
//! target an id names, the outcome and its exit code.

use anyhow::bail;

/// Exit code for errors (see the module docs).
pub const EXIT_ERROR: u8 = 3;

/// `runsignal watch`: follow a run or a job live until it ends.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit codes: 0 succeeded, 1 failed, 2 canceled, 3 error \
(bad arguments, not found, server unreachable after retries).")]
pub struct WatchArgs {
    /// Run id (UUID) or job id (ULID) to follow.
    pub id: String,
    /// Base URL of the runsignal server.
    #[arg(long, env = "RUNSIGNAL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Tenant the run or job belongs to (sent as `X-Tenant-Id`).
    #[arg(long, env = "RUNSIGNAL_TENANT")]
    pub tenant: String,
    /// Bearer token for a server with `Auth.Mode` token or jwt (sent as
    /// `Authorization: Bearer`).
    #[arg(long, env = "RUNSIGNAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// API prefix of the stream routes.
    #[arg(long, default_value = "/api/v1/orchestrator")]
    pub prefix: String,
    /// Show log lines (pack-run stream).
    #[arg(long)]
    pub logs: bool,
    /// Print the raw events, one JSON object per line, and nothing else.
    #[arg(long)]
    pub json: bool,
    /// Consecutive failed connection attempts before giving up (exit 3).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
}

/// How the run or job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Canceled,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed => 1,
            Outcome::Canceled => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Canceled => "canceled",
        }
    }

    /// A run status or a job state.
    pub(super) fn from_status(s: &str) -> Option<Outcome> {
        match s {
            "succeeded" | "done" => Some(Outcome::Succeeded),
            "failed" => Some(Outcome::Failed),
            "canceled" | "cancelled" => Some(Outcome::Canceled),
            _ => None,
        }
    }

    /// A job envelope type (`job.done|job.failed|job.canceled`).
    pub(super) fn from_job_type(ty: &str) -> Option<Outcome> {
        Outcome::from_status(ty.strip_prefix("job.")?)
    }

    /// A first signal's `kind` (SPEC §4.1).
    pub(super) fn from_signal_kind(kind: u64) -> Option<Outcome> {
        match kind {
            4 => Some(Outcome::Failed),
            5 => Some(Outcome::Succeeded),
            6 => Some(Outcome::Canceled),
            _ => None,
        }
    }
}

/// What the id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Run(String),
    Job(String),
}

impl Target {
    /// A UUID is a run, a ULID a job; anything else is a usage error.
    pub fn parse(id: &str) -> anyhow::Result<Target> {
        let id = id.trim();
        if let Ok(uuid) = uuid::Uuid::parse_str(id) {
            return Ok(Target::Run(uuid.hyphenated().to_string()));
        }
        if let Ok(ulid) = ulid::Ulid::from_string(id) {
            return Ok(Target::Job(ulid.to_string()));
        }
        bail!("`{id}` is neither a run id (UUID) nor a job id (ULID)")
    }

    pub(super) fn noun(&self) -> &'static str {
        match self {
            Target::Run(_) => "run",
            Target::Job(_) => "job",
        }
    }

    pub(super) fn id(&self) -> &str {
        match self {
            Target::Run(id) | Target::Job(id) => id,
        }
    }

    pub(super) fn stream_path(&self, prefix: &str) -> String {
        match self {
            Target::Run(id) => format!("{prefix}/stream/runs/{id}"),
            Target::Job(id) => format!("{prefix}/stream/jobs/{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pick_the_stream() {
        assert_eq!(
            Target::parse("3F2504E0-4F89-11D3-9A0C-0305E82C3301").unwrap(),
            Target::Run("3f2504e0-4f89-11d3-9a0c-0305e82c3301".into())
        );
        assert_eq!(
            Target::parse("01arz3ndektsv4rrffq69g5fav").unwrap(),
            Target::Job("01ARZ3NDEKTSV4RRFFQ69G5FAV".into())
        );
        assert!(Target::parse("nope").is_err());
        assert_eq!(
            Target::Run("r".into()).stream_path("/api/v1/orchestrator"),
            "/api/v1/orchestrator/stream/runs/r"
        );
        assert_eq!(
            Target::Job("j".into()).stream_path("/p"),
            "/p/stream/jobs/j"
        );
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(
            Outcome::from_status("succeeded").map(Outcome::code),
            Some(0)
        );
        assert_eq!(
            Outcome::from_job_type("job.done").map(Outcome::code),
            Some(0)
        );
        assert_eq!(
            Outcome::from_job_type("job.failed").map(Outcome::code),
            Some(1)
        );
        assert_eq!(
            Outcome::from_job_type("job.canceled").map(Outcome::code),
            Some(2)
        );
        assert_eq!(Outcome::from_job_type("job.working"), None);
        assert_eq!(Outcome::from_signal_kind(4), Some(Outcome::Failed));
        assert_eq!(Outcome::from_signal_kind(5), Some(Outcome::Succeeded));
        assert_eq!(Outcome::from_signal_kind(6), Some(Outcome::Canceled));
        assert_eq!(Outcome::from_signal_kind(2), None);
    }
}
