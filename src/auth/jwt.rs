//! JWT bearer tokens (`Auth.Mode = jwt`) verified with `jsonwebtoken`. Keys
//! are read once, when the server starts; a token's header picks the key
//! (by `kid` in a JWK set, else every configured key of its algorithm's
//! family), never the algorithm: only `Auth.Jwt.Algorithms` are accepted.

use std::str::FromStr;

use anyhow::{bail, Context as _};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthError, JwtConfig, Principal, Scope};

pub struct JwtVerifier {
    algorithms: Vec<Algorithm>,
    /// HS256's key, from `Auth.Jwt.Secret`.
    secret: Option<DecodingKey>,
    /// From `PublicKeyFile` (no `kid`) and `JwksFile` (with their `kid`).
    public: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
}

/// The claims read besides the registered ones `jsonwebtoken` checks.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    tenants: OneOrMany,
    /// Space-separated scopes (RFC 8693 §4.2).
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> anyhow::Result<JwtVerifier> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| Algorithm::from_str(a).with_context(|| format!("Auth.Jwt.Algorithms: `{a}`")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let secret = match config.secret.as_deref() {
            Some(s) if algorithms.contains(&Algorithm::HS256) => {
                Some(DecodingKey::from_secret(s.as_bytes()).context("Auth.Jwt.Secret")?)
            }
            _ => None,
        };
        let mut public = Vec::new();
        if let Some(path) = &config.public_key_file {
            public.push((None, pem_key(path, &algorithms)?));
        }
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("Auth.Jwt.JwksFile: cannot read {path}"))?;
            let set: JwkSet = serde_json::from_str(&text).with_context(|| {
                format!("Auth.Jwt.JwksFile: {path} is not a JWK set ({{\"keys\": [...]}})")
            })?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let key = DecodingKey::from_jwk(jwk)
                    .with_context(|| format!("Auth.Jwt.JwksFile: {path}: key {i} is not usable"))?;
                public.push((jwk.common.key_id.clone(), key));
            }
            if set.keys.is_empty() {
                bail!("Auth.Jwt.JwksFile: {path} holds no keys");
            }
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = config.leeway_seconds;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &config.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier {
            algorithms,
            secret,
            public,
            validation,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| describe(e.kind()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidJwt(format!(
                "algorithm {:?} is not accepted here",
                header.alg
            )));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let family = header.alg.family();
        let keys = self.secret.iter().chain(
            self.public
                .iter()
                .filter(|(kid, _)| kid.is_none() || header.kid.is_none() || *kid == header.kid)
                .map(|(_, key)| key),
        );
        let mut last = AuthError::InvalidJwt("no configured key fits its algorithm".into());
        for key in keys.filter(|k| k.family() == family) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(principal(token, data.claims)),
                Err(e) => {
                    last = describe(e.kind());
                    // Only another key can fix a bad signature.
                    if *e.kind() != ErrorKind::InvalidSignature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

/// A PEM public key of the first configured family it parses as.
fn pem_key(path: &str, algorithms: &[Algorithm]) -> anyhow::Result<DecodingKey> {
    let pem = std::fs::read(path)
        .with_context(|| format!("Auth.Jwt.PublicKeyFile: cannot read {path}"))?;
    for alg in algorithms {
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => continue,
        };
        if let Ok(key) = key {
            return Ok(key);
        }
    }
    bail!("Auth.Jwt.PublicKeyFile: {path} is not a PEM public key for any of Auth.Jwt.Algorithms other than HS256")
}

fn principal(token: &str, claims: Claims) -> Principal {
    let tenants = match claims.tenants {
        OneOrMany::None => Vec::new(),
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(ts) => ts,
    };
    let credential = claims.sub.unwrap_or_else(|| {
        // No subject: a digest names the token (never the token itself).
        format!("jwt:{}", &hex::encode(super::token::sha256(token))[..16])
    });
    let scopes = claims
        .scope
        .split_ascii_whitespace()
        .filter_map(Scope::parse);
    Principal::new(credential, &tenants, scopes)
}

/// What is wrong, in words that never quote the token.
fn describe(kind: &ErrorKind) -> AuthError {
    let why = match kind {
        ErrorKind::ExpiredSignature => "it has expired".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidIssuer => "its issuer (iss) is not the expected one".to_owned(),
        ErrorKind::InvalidAudience => "its audience (aud) is not the expected one".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the `{claim}` claim is required"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the `{claim}` claim is malformed"),
        ErrorKind::InvalidSignature => "its signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm => "its algorithm does not fit the key".to_owned(),
        _ => "it is malformed".to_owned(),
    };
    AuthError::InvalidJwt(why)
}
