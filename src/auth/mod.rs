//! Access control (SPEC §10): who a bearer credential is, which tenants it
//! may act for and which scopes it holds. This module knows nothing of HTTP:
//! the middleware in `http::auth` reads the credential off a request and
//! stores the [`Principal`] found here in the request's extensions; the
//! `Tenant` extractor (`http::extract`) applies the tenant rules; the
//! WebSocket's first-frame auth calls [`Authenticator::authenticate`] too.
//!
//! | File | Owns |
//! | --- | --- |
//! | `mod.rs` | [`Principal`], [`Scope`], [`Authenticator`] |
//! | `config.rs` | the `Auth` section and its validation |
//! | `token.rs` | static tokens: hashing, constant-time lookup, `token new` |
//! | `jwt.rs` | JWT keys (loaded once) and verification |

pub mod config;
mod jwt;
pub mod token;

use std::collections::BTreeSet;

pub use config::{AuthConfig, JwtConfig, TokenEntry};

/// What a credential may do; each route needs one (see `http::auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// GET of runs, signals, timelines, streams, jobs, artifacts, packs.
    Read,
    /// Create runs, submit, cancel, retry.
    Write,
    /// Lease, progress, complete, fail, uploads.
    Worker,
    /// `/metrics` (unless `Metrics.Public`).
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "worker" => Some(Scope::Worker),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Worker => "worker",
            Scope::Admin => "admin",
        }
    }
}

/// The tenants a credential may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantGrant {
    /// `"*"`: every tenant, but the request must name one.
    Any,
    /// These tenants only (possibly none).
    Only(BTreeSet<String>),
}

/// An authenticated caller, stored in the request's extensions by the auth
/// middleware. Carries no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured `name`, or the JWT's `sub` (`jwt:<digest>`
    /// when it has none): stable per credential, never the secret.
    pub credential: String,
    pub tenants: TenantGrant,
    pub scopes: BTreeSet<Scope>,
}

impl Principal {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn allows_tenant(&self, tenant: &str) -> bool {
        match &self.tenants {
            TenantGrant::Any => true,
            TenantGrant::Only(set) => set.contains(tenant),
        }
    }

    /// The tenant a request that names none acts for: the credential's
    /// only tenant, if it has exactly one.
    pub fn sole_tenant(&self) -> Option<&str> {
        match &self.tenants {
            TenantGrant::Only(set) if set.len() == 1 => set.iter().next().map(String::as_str),
            _ => None,
        }
    }

    fn new(
        credential: String,
        tenants: &[String],
        scopes: impl IntoIterator<Item = Scope>,
    ) -> Principal {
        let tenants = if tenants.iter().any(|t| t == "*") {
            TenantGrant::Any
        } else {
            TenantGrant::Only(tenants.iter().cloned().collect())
        };
        Principal {
            credential,
            tenants,
            scopes: scopes.into_iter().collect(),
        }
    }
}

/// Why a credential was refused. The messages never quote the credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this token is not known")]
    UnknownToken,
    #[error("the token is not a valid JWT: {0}")]
    InvalidJwt(String),
}

/// The configured way to check credentials; built once at start-up.
pub enum Authenticator {
    /// `Auth.Mode = none`: `X-Tenant-Id` is trusted, no credential is read.
    None,
    Token(token::TokenSet),
    Jwt(Box<jwt::JwtVerifier>),
}

impl Authenticator {
    /// Reads key files (JWT): a missing or bad one is an error naming its key.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Authenticator> {
        Ok(if config.mode_is("token") {
            Authenticator::Token(token::TokenSet::new(&config.tokens))
        } else if config.mode_is("jwt") {
            Authenticator::Jwt(Box::new(jwt::JwtVerifier::new(&config.jwt)?))
        } else {
            Authenticator::None
        })
    }

    /// Credentials are required (any mode but `none`).
    pub fn enabled(&self) -> bool {
        !matches!(self, Authenticator::None)
    }

    /// Who `credential` (the bearer token as sent) is.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, AuthError> {
        match self {
            Authenticator::None => Err(AuthError::UnknownToken),
            Authenticator::Token(set) => set.find(credential),
            Authenticator::Jwt(verifier) => verifier.verify(credential),
        }
    }
}
