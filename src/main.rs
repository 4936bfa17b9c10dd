//! The `runsignal` binary: CLI parsing and nothing else.

use std::path::PathBuf;

/// jemalloc instead of the system allocator: profiles of the write path
/// and of fan-out spent about a quarter of all CPU in glibc's malloc and
/// free (ADR 0042).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cli;

use clap::{Parser, Subcommand};
use cli::watch::{self, WatchArgs};
use runsignal::config::Config;
use runsignal::{open_store, telemetry, Application};

#[derive(Parser)]
#[command(
    name = "runsignal",
    version,
    about = "Run orchestrator: first signal, live progress, jobs"
)]
struct Cli {
    /// JSON file layered over the built-in defaults (config/default.json shape).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Follow a run (UUID) or a job (ULID) live until it ends.
    /// Exit code: 0 succeeded, 1 failed, 2 canceled, 3 error.
    Watch(WatchArgs),
    /// Bearer tokens for `Auth.Mode = token`: `token new --tenant T --scope read,write`.
    Token(cli::token::TokenArgs),
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let command = match cli.command.unwrap_or(Command::Serve) {
        // A client of a server: it needs no (valid) server configuration.
        Command::Watch(args) => {
            return match watch::watch(args).await {
                Ok(code) => std::process::ExitCode::from(code),
                Err(e) => {
                    eprintln!("runsignal watch: {e:#}");
                    std::process::ExitCode::from(watch::EXIT_ERROR)
                }
            };
        }
        // Needs no configuration either: it prints one entry of it.
        Command::Token(args) => {
            return match cli::token::run(args) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("runsignal token: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        command => command,
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("runsignal: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&config.logging);
    let result = match command {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::Watch(_) | Command::Token(_) => {
            unreachable!("dispatched before the configuration is loaded")
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runsignal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Help and version print and exit 0; a usage error exits 2 as clap's
/// default, except for `watch`, whose errors all exit 3.
fn usage_error(e: clap::Error) -> std::process::ExitCode {
    let watching = std::env::args().skip(1).any(|a| a == "watch");
    if !e.use_stderr() || !watching {
        e.exit();
    }
    let _ = e.print();
    std::process::ExitCode::from(watch::EXIT_ERROR)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped().await?;
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    open_store(&config, Default::default()).await?;
    println!(
        "database at {} is migrated",
        runsignal::redact(&config.database.url)
    );
    Ok(())
}
