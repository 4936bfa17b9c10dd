//! Webhook signatures (SPEC §7.2), one per configured secret so that a
//! receiver can rotate keys:
//!
//! - Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of
//!   "{id}.{timestamp}.{body}">`, several separated by spaces;
//! - `X-Foreman-Signature: sha256=<hex HMAC-SHA256 of the body>`, several
//!   separated by commas.
//!
//! The HMAC key of a `whsec_…` secret is its base64-decoded tail (as the
//! Standard Webhooks libraries do); any other secret is used as raw bytes.

use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const WHSEC_PREFIX: &str = "whsec_";

/// A secret that cannot be used (a `whsec_` tail that is not base64).
#[derive(Debug, thiserror::Error)]
#[error("Webhooks.Secrets[{index}]: a `whsec_` secret must be followed by base64 ({reason})")]
pub struct BadSecret {
    pub index: usize,
    pub reason: String,
}

/// The signature headers of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `webhook-signature`.
    pub standard: String,
    /// `X-Foreman-Signature`.
    pub foreman: String,
}

/// The HMAC keys of `Webhooks.Secrets`, decoded once at start-up.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Signer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Signer {
    /// `None` when no secret is configured: deliveries go unsigned.
    pub fn new(secrets: &[String]) -> Result<Option<Signer>, BadSecret> {
        if secrets.is_empty() {
            return Ok(None);
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(index, secret)| {
                key_of(secret).map_err(|e| BadSecret {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Signer { keys }))
    }

    /// Both headers for message `id` sent at unix `timestamp` with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Signatures {
        let prefix = format!("{id}.{timestamp}.");
        let standard = self
            .keys
            .iter()
            .map(|key| {
                let mut mac = mac(key);
                mac.update(prefix.as_bytes());
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect::<Vec<_>>()
            .join(" ");
        let foreman = self
            .keys
            .iter()
            .map(|key| {
                let mut mac = mac(key);
                mac.update(body);
                format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
            })
            .collect::<Vec<_>>()
            .join(",");
        Signatures { standard, foreman }
    }
}

fn key_of(secret: &str) -> Result<Vec<u8>, base64::DecodeError> {
    match secret.strip_prefix(WHSEC_PREFIX) {
        Some(tail) => STANDARD_PAD_INDIFFERENT.decode(tail),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(key).expect("HMAC accepts any key length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(secrets: &[&str]) -> Signer {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        Signer::new(&secrets).unwrap().unwrap()
    }

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let s = signer(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            s.standard,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn foreman_signature_is_hex_hmac_of_the_raw_body() {
        // RFC 4231 test case 2: key "Jefe".
        let s = signer(&["Jefe"]).sign("id", 1, b"what do ya want for nothing?");
        assert_eq!(
            s.foreman,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn one_signature_per_secret_in_configured_order() {
        let both = signer(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "Jefe"]).sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let first = signer(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let second = signer(&["Jefe"]).sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            both.standard,
            format!("{} {}", first.standard, second.standard)
        );
        assert_eq!(
            both.foreman,
            format!("{},{}", first.foreman, second.foreman)
        );
    }

    #[test]
    fn a_plain_secret_is_raw_bytes_and_whsec_is_decoded() {
        // The raw bytes of "whsec_…" are not the key: the decoded tail is.
        let decoded = signer(&["whsec_SmVmZQ=="]).sign("i", 2, b"{}");
        let raw = signer(&["Jefe"]).sign("i", 2, b"{}");
        assert_eq!(decoded, raw, "whsec_ + base64(\"Jefe\") signs as \"Jefe\"");
    }

    #[test]
    fn no_secret_means_no_signer_and_bad_base64_names_the_key() {
        assert!(Signer::new(&[]).unwrap().is_none());
        let err = Signer::new(&["ok".into(), "whsec_not base64!".into()]).unwrap_err();
        assert!(err.to_string().contains("Webhooks.Secrets[1]"), "{err}");
    }
}
