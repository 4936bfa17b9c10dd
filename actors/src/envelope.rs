//! The event envelope (SPEC §6): the immutable fact every timeline entry is,
//! with its RFC 8785 (JCS) canonical SHA-256 `hash`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Mutex;

/// Schema version written into every envelope.
pub const SCHEMA_VERSION: &str = "runsignal.event.v1";

/// Event types of the timeline (SPEC §6).
pub mod types {
    pub const RUN_CREATED: &str = "run.created";
    pub const RUN_COMPLETED: &str = "run.completed";
    pub const JOB_QUEUED: &str = "job.queued";
    pub const JOB_LOADING: &str = "job.loading";
    pub const JOB_WORKING: &str = "job.working";
    pub const JOB_PROGRESS: &str = "job.progress";
    pub const JOB_BLOCKED: &str = "job.blocked";
    pub const JOB_DONE: &str = "job.done";
    pub const JOB_FAILED: &str = "job.failed";
    pub const JOB_CANCELED: &str = "job.canceled";
    pub const JOB_RETRY_SCHEDULED: &str = "job.retry_scheduled";
    pub const STEP_STARTED: &str = "step.started";
    pub const STEP_FINISHED: &str = "step.finished";
    pub const LOG: &str = "log";
    pub const ARTIFACT_CREATED: &str = "artifact.created";
    pub const SIGNAL_CHANGED: &str = "signal.changed";
}

/// One timeline event as it travels on the wire and sits in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub event_id: String,
    pub schema_version: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub tenant_id: String,
    pub run_id: String,
    pub job_id: Option<String>,
    pub seq: u64,
    pub occurred_at: String,
    pub correlation_id: String,
    pub payload: Value,
    /// `sha256:<hex>` over the canonical JSON of every other field.
    pub hash: String,
}

/// The envelope without its hash: exactly the material that is hashed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Unhashed<'a> {
    event_id: &'a str,
    schema_version: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    tenant_id: &'a str,
    run_id: &'a str,
    job_id: Option<&'a str>,
    seq: u64,
    occurred_at: &'a str,
    correlation_id: &'a str,
    payload: &'a Value,
}

/// Fields of a new event before its hash is computed.
pub struct NewEnvelope<'a> {
    pub event_id: String,
    pub event_type: &'a str,
    pub tenant_id: &'a str,
    pub run_id: &'a str,
    pub job_id: Option<&'a str>,
    pub seq: u64,
    pub occurred_at: String,
    pub correlation_id: &'a str,
    pub payload: Value,
}

impl NewEnvelope<'_> {
    /// Seal the event: compute its hash and produce the envelope.
    pub fn seal(self) -> Envelope {
        let mut env = Envelope {
            event_id: self.event_id,
            schema_version: SCHEMA_VERSION.to_owned(),
            event_type: self.event_type.to_owned(),
            tenant_id: self.tenant_id.to_owned(),
            run_id: self.run_id.to_owned(),
            job_id: self.job_id.map(str::to_owned),
            seq: self.seq,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id.to_owned(),
            payload: self.payload,
            hash: String::new(),
        };
        env.hash = env.compute_hash();
        env
    }
}

impl Envelope {
    /// `sha256:<hex>` of the JCS canonical JSON of the envelope without `hash`.
    pub fn compute_hash(&self) -> String {
        let material = Unhashed {
            event_id: &self.event_id,
            schema_version: &self.schema_version,
            event_type: &self.event_type,
            tenant_id: &self.tenant_id,
            run_id: &self.run_id,
            job_id: self.job_id.as_deref(),
            seq: self.seq,
            occurred_at: &self.occurred_at,
            correlation_id: &self.correlation_id,
            payload: &self.payload,
        };
        format!("sha256:{}", canonical_sha256_hex(&material))
    }

    /// Whether the stored hash matches the content (anyone can re-verify).
    pub fn verify(&self) -> bool {
        self.hash == self.compute_hash()
    }

    /// The one-line JSON of the envelope, encoded once and shared.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing a struct of strings, numbers and a `Value` cannot fail.
        Bytes::from(serde_json::to_vec(self).expect("envelope serializes"))
    }
}

/// RFC 8785 canonical JSON of any serializable value.
///
/// Panics on a number JCS cannot write (one past the double range, such as
/// `1e400`, which `serde_json` keeps as written): values from clients are
/// checked with [`try_canonical_json`] where they enter the service.
pub fn canonical_json<T: Serialize>(value: &T) -> String {
    try_canonical_json(value).expect("canonical JSON of a checked JSON value")
}

/// RFC 8785 canonical JSON, or why the value has none.
pub fn try_canonical_json<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json_canonicalizer::to_string(value).map_err(|e| e.to_string())
}

/// Lowercase hex SHA-256 of the canonical JSON of `value`.
pub fn canonical_sha256_hex<T: Serialize>(value: &T) -> String {
    hex::encode(Sha256::digest(canonical_json(value).as_bytes()))
}

/// Monotonic ULID source: ids generated in one process sort in creation order.
///
/// A `std::sync::Mutex` because generation is a few nanoseconds of pure
/// computation and is never held across an `.await`.
static ULIDS: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

/// A new ULID, strictly greater than every earlier one from this process.
pub fn new_ulid() -> String {
    // A poisoned lock only means another thread panicked mid-generate; the
    // generator state (the previous id) is still valid.
    let mut gen = ULIDS.lock().unwrap_or_else(|p| p.into_inner());
    match gen.generate() {
        Ok(id) => id.to_string(),
        // Overflow within one millisecond (2^80 ids): fall back to a fresh one.
        Err(overflow) => overflow.commit_overflow_random().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(payload: Value) -> Envelope {
        NewEnvelope {
            event_id: "01JD0000000000000000000000".into(),
            event_type: types::JOB_WORKING,
            tenant_id: "acme",
            run_id: "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
            job_id: Some("01JD0000000000000000000001"),
            seq: 7,
            occurred_at: "2026-11-22T08:00:10.123Z".into(),
            correlation_id: "c-1",
            payload,
        }
        .seal()
    }

    #[test]
    fn identical_envelopes_hash_identically() {
        let a = sample(json!({"stage": "fetch", "b": 1, "a": [1, 2]}));
        let b = sample(json!({"a": [1, 2], "b": 1, "stage": "fetch"}));
        assert_eq!(a.hash, b.hash, "key order must not change the hash");
        assert!(a.hash.starts_with("sha256:") && a.hash.len() == 7 + 64);
        assert!(a.verify());
    }

    #[test]
    fn any_change_changes_the_hash() {
        let a = sample(json!({"stage": "fetch"}));
        let mut b = a.clone();
        b.seq = 8;
        assert!(!b.verify());
        let c = sample(json!({"stage": "fetch "}));
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn hash_survives_a_round_trip_through_json() {
        let a = sample(json!({"percent": 12.5, "msg": "é\u{1F600}"}));
        let back: Envelope = serde_json::from_slice(&a.to_bytes()).unwrap();
        assert!(back.verify());
    }

    /// RFC 8785 §3.2.2/§3.2.3 examples and Appendix B number vectors.
    #[test]
    fn rfc8785_vectors() {
        let input: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],
                "string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals":[null,true,false]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        let sorting: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&sorting),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"\u{1F600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        for (n, want) in [
            (0.0, "0"),
            (-0.0, "0"),
            (1e21, "1e+21"),
            (1e-7, "1e-7"),
            (123456789012345680000.0, "123456789012345680000"),
            (9007199254740992.0, "9007199254740992"),
            (295147905179352830000.0, "295147905179352830000"),
        ] {
            assert_eq!(canonical_json(&json!(n)), want, "number {n}");
        }
    }

    #[test]
    fn ulids_are_monotonic() {
        let ids: Vec<String> = (0..1000).map(|_| new_ulid()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|i| i.len() == 26));
    }
}
