//! The `runsignal` binary: CLI parsing and nothing else.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
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
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("runsignal: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&config.logging);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runsignal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped().await?;
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    open_store(&config, Default::default()).await?;
    println!("database at {} is migrated", config.database.url);
    Ok(())
}
