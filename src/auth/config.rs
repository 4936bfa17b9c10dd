//! The `Auth` configuration section (SPEC §10) and its validation. Key
//! files are read later, once, when the server starts
//! ([`super::Authenticator::from_config`]).

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use super::Scope;
use crate::config::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthConfig {
    /// `none`, `token` or `jwt`.
    pub mode: String,
    /// `none` on a non-loopback `Server.Bind` needs this set to `true`.
    pub allow_anonymous: bool,
    #[serde(deserialize_with = "token_entries")]
    pub tokens: Vec<TokenEntry>,
    pub jwt: JwtConfig,
}

/// One static token: only its SHA-256 is configured, never the token.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Names the credential in logs and limits (never the secret).
    pub name: String,
    /// Lower- or upper-case hex SHA-256 of the token.
    pub sha256: String,
    /// Tenant ids, or `"*"` for every tenant.
    pub tenants: Vec<String>,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JwtConfig {
    pub algorithms: Vec<String>,
    /// HMAC secret (HS256), its raw bytes.
    pub secret: Option<String>,
    /// PEM public key (RS256, ES256, EdDSA).
    pub public_key_file: Option<String>,
    /// A JWK set (`{"keys":[…]}`) file.
    pub jwks_file: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_seconds: u64,
}

/// Accepts each entry as an object or as a string holding one, so that
/// `RUNSIGNAL__Auth__Tokens__0='{"name":…}'` works like the file form.
fn token_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenEntry>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Entry(TokenEntry),
        Json(String),
    }
    Vec::<Item>::deserialize(d)?
        .into_iter()
        .map(|item| match item {
            Item::Entry(e) => Ok(e),
            Item::Json(text) => serde_json::from_str(&text).map_err(serde::de::Error::custom),
        })
        .collect()
}

pub const MODES: [&str; 3] = ["none", "token", "jwt"];
pub const ALGORITHMS: [&str; 4] = ["HS256", "RS256", "ES256", "EdDSA"];

impl AuthConfig {
    pub fn mode_is(&self, mode: &str) -> bool {
        self.mode.eq_ignore_ascii_case(mode)
    }

    /// Checks every key that can be checked without reading files.
    pub fn validate(&self, bind: &SocketAddr) -> Result<(), ConfigError> {
        if !MODES.iter().any(|m| self.mode_is(m)) {
            return Err(invalid(
                "Auth.Mode",
                format!(
                    "`{}` is not allowed; allowed values: none, token, jwt",
                    self.mode
                ),
            ));
        }
        if self.mode_is("none") && !bind.ip().is_loopback() && !self.allow_anonymous {
            return Err(invalid(
                "Auth.Mode",
                format!(
                    "`none` trusts X-Tenant-Id as given, so anyone who reaches Server.Bind = {bind} \
                     could read and act as every tenant; bind to a loopback address, set Auth.Mode \
                     to `token` or `jwt`, or set Auth.AllowAnonymous = true to accept this"
                ),
            ));
        }
        self.validate_tokens()?;
        if self.mode_is("jwt") {
            self.validate_jwt()?;
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), ConfigError> {
        if self.mode_is("token") && self.tokens.is_empty() {
            return Err(invalid(
                "Auth.Tokens",
                "Auth.Mode `token` needs at least one token; `runsignal token new` makes one",
            ));
        }
        let mut names = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = |field: &str| format!("Auth.Tokens[{i}].{field}");
            if t.name.trim().is_empty() || !names.insert(t.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    "must be a non-empty name, unique among the tokens",
                ));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    &key("sha256"),
                    "must be the 64 hex digits of the token's SHA-256 (never the token itself)",
                ));
            }
            validate_tenants(&key("tenants"), &t.tenants)?;
            validate_scopes(&key("scopes"), &t.scopes)?;
        }
        Ok(())
    }

    fn validate_jwt(&self) -> Result<(), ConfigError> {
        let jwt = &self.jwt;
        if jwt.algorithms.is_empty() {
            return Err(invalid(
                "Auth.Jwt.Algorithms",
                "must list at least one of HS256, RS256, ES256, EdDSA",
            ));
        }
        for (i, alg) in jwt.algorithms.iter().enumerate() {
            if !ALGORITHMS.contains(&alg.as_str()) {
                return Err(invalid(
                    &format!("Auth.Jwt.Algorithms[{i}]"),
                    format!("`{alg}` is not allowed; allowed values: HS256, RS256, ES256, EdDSA"),
                ));
            }
        }
        let hmac = jwt.algorithms.iter().any(|a| a == "HS256");
        let public = jwt.algorithms.iter().any(|a| a != "HS256");
        if hmac && jwt.secret.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("Auth.Jwt.Secret", "HS256 needs a secret"));
        }
        if public && jwt.public_key_file.is_none() && jwt.jwks_file.is_none() {
            return Err(invalid(
                "Auth.Jwt.PublicKeyFile",
                "RS256, ES256 and EdDSA need Auth.Jwt.PublicKeyFile or Auth.Jwt.JwksFile",
            ));
        }
        Ok(())
    }
}

fn validate_tenants(key: &str, tenants: &[String]) -> Result<(), ConfigError> {
    if tenants.is_empty() {
        return Err(invalid(
            key,
            "must list tenant ids, or \"*\" for every tenant",
        ));
    }
    match tenants
        .iter()
        .find(|t| *t != "*" && !crate::http::extract::valid_tenant(t))
    {
        Some(bad) => Err(invalid(
            key,
            format!("`{bad}` is not a tenant id (1-64 chars of [A-Za-z0-9._:-])"),
        )),
        None => Ok(()),
    }
}

fn validate_scopes(key: &str, scopes: &[String]) -> Result<(), ConfigError> {
    if scopes.is_empty() {
        return Err(invalid(key, "must list scopes: read, write, worker, admin"));
    }
    match scopes.iter().find(|s| Scope::parse(s).is_none()) {
        Some(bad) => Err(invalid(
            key,
            format!("`{bad}` is not a scope; allowed: read, write, worker, admin"),
        )),
        None => Ok(()),
    }
}
