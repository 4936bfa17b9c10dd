//! Static bearer tokens (`Auth.Mode = token`): the configuration holds only
//! each token's SHA-256; a presented token is hashed and compared with every
//! entry in constant time. `runsignal token new` makes fresh ones.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Principal, Scope, TokenEntry};

/// Prefix of generated tokens: recognizable in a leaked-secret scan.
pub const PREFIX: &str = "rsg_";

/// The configured tokens, digests decoded once.
pub struct TokenSet {
    entries: Vec<([u8; 32], Principal)>,
}

impl TokenSet {
    /// `entries` are validated (`AuthConfig::validate`): 64 hex digits each.
    pub fn new(entries: &[TokenEntry]) -> TokenSet {
        let entries = entries
            .iter()
            .filter_map(|e| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&e.sha256, &mut digest).ok()?;
                let scopes = e.scopes.iter().filter_map(|s| Scope::parse(s));
                Some((digest, Principal::new(e.name.clone(), &e.tenants, scopes)))
            })
            .collect();
        TokenSet { entries }
    }

    /// The entry whose digest matches. Every entry is compared, each in
    /// constant time, so the time taken says nothing about which matched.
    pub fn find(&self, token: &str) -> Result<Principal, AuthError> {
        let digest = sha256(token);
        let mut found = None;
        for (candidate, principal) in &self.entries {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(principal);
            }
        }
        found.cloned().ok_or(AuthError::UnknownToken)
    }
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh token: 256 bits from the operating system's RNG, URL-safe (it
/// may travel as `?access_token=`).
pub fn generate() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The configuration entry for `token` (only its digest).
pub fn entry(name: &str, token: &str, tenants: &[String], scopes: &[String]) -> TokenEntry {
    TokenEntry {
        name: name.to_owned(),
        sha256: hex::encode(sha256(token)),
        tenants: tenants.to_vec(),
        scopes: scopes.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TenantGrant;

    #[test]
    fn a_token_is_found_by_its_digest_only() {
        let token = generate().unwrap();
        assert!(token.starts_with(PREFIX) && token.len() >= PREFIX.len() + 43);
        assert_ne!(token, generate().unwrap(), "fresh every time");
        let set = TokenSet::new(&[
            entry("other", "not-it", &["b".into()], &["read".into()]),
            entry(
                "ci",
                &token,
                &["acme".into()],
                &["read".into(), "write".into()],
            ),
        ]);
        let p = set.find(&token).unwrap();
        assert_eq!(p.credential, "ci");
        assert_eq!(p.tenants, TenantGrant::Only(["acme".to_owned()].into()));
        assert!(p.has_scope(Scope::Write) && !p.has_scope(Scope::Worker));
        assert_eq!(set.find(&format!("{token}x")), Err(AuthError::UnknownToken));
        assert_eq!(set.find(""), Err(AuthError::UnknownToken));
    }
}
