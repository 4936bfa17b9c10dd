//! `runsignal token new`: a fresh bearer token and the `Auth.Tokens` entry
//! that accepts it (only its SHA-256), for `Auth.Mode = token`.

use runsignal::auth::token;

/// `runsignal token …`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token (256 bits from the OS RNG) and its
    /// configuration entry; the token itself is shown only here.
    New(NewArgs),
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Tenant(s) the token may act for, comma-separated; `*` for every tenant.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tenant: Vec<String>,
    /// Scopes, comma-separated: read, write, worker, admin.
    #[arg(long, value_delimiter = ',', required = true,
          value_parser = ["read", "write", "worker", "admin"])]
    pub scope: Vec<String>,
    /// The entry's name (how logs and limits name the credential).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let TokenCommand::New(args) = args.command;
    if let Some(bad) = args
        .tenant
        .iter()
        .find(|t| *t != "*" && !runsignal::http::extract::valid_tenant(t))
    {
        anyhow::bail!("--tenant `{bad}` is not a tenant id (1-64 chars of [A-Za-z0-9._:-]) or `*`");
    }
    let secret = token::generate()?;
    let name = args.name.unwrap_or_else(|| {
        // Names need not be secret: a few hex digits of the token's digest.
        let digest = hex::encode(token::sha256(&secret));
        format!(
            "{}-{}",
            args.tenant.join("+").replace('*', "all"),
            &digest[..8]
        )
    });
    let entry = token::entry(&name, &secret, &args.tenant, &args.scope);
    let json = serde_json::to_string(&entry)?;
    println!("token: {secret}");
    println!();
    println!("Keep the token secret; the server needs only this entry. Add it to Auth.Tokens in the config file:");
    println!("{json}");
    println!();
    println!("or as an environment variable (use the next free index):");
    println!("RUNSIGNAL__Auth__Tokens__0='{json}'");
    Ok(())
}
