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
        // The usual case, written straight out: the fields in JCS key order
        // and the payload by `write_jcs`, with no copy of the payload.
        let mut out = Vec::with_capacity(512);
        if self.write_unhashed_jcs(&mut out) {
            return format!("sha256:{}", hex::encode(Sha256::digest(&out)));
        }
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

    /// The canonical JSON of [`Unhashed`] (its properties sorted: all keys
    /// are ASCII), or `false` where the payload needs the canonicalizer.
    fn write_unhashed_jcs(&self, out: &mut Vec<u8>) -> bool {
        let strings: [(&str, Option<&str>); 4] = [
            ("{\"correlationId\":", Some(&self.correlation_id)),
            (",\"eventId\":", Some(&self.event_id)),
            (",\"jobId\":", self.job_id.as_deref()),
            (",\"occurredAt\":", Some(&self.occurred_at)),
        ];
        for (key, value) in strings {
            out.extend_from_slice(key.as_bytes());
            match value {
                Some(v) => write_str(v, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"payload\":");
        if !write_jcs(&self.payload, out) {
            return false;
        }
        out.extend_from_slice(b",\"runId\":");
        write_str(&self.run_id, out);
        out.extend_from_slice(b",\"schemaVersion\":");
        write_str(&self.schema_version, out);
        out.extend_from_slice(b",\"seq\":");
        write_integer(self.seq as f64, out);
        out.extend_from_slice(b",\"tenantId\":");
        write_str(&self.tenant_id, out);
        out.extend_from_slice(b",\"type\":");
        write_str(&self.event_type, out);
        out.push(b'}');
        true
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
///
/// Every event's hash and every signal's ETag goes through here, on the
/// writer's thread. `serde_json_canonicalizer` buffers each property on its
/// own and sorts keys as UTF-16; for a value whose keys are all ASCII (where
/// UTF-16 order is byte order, the order of `serde_json`'s map) the same
/// bytes are written straight from a [`Value`] ([`write_jcs`]), about four
/// times faster. Anything else goes to the canonicalizer. A property test
/// (`canonical_json_matches_the_canonicalizer`) holds the two to the same
/// output for JSON values. Other `Serialize` inputs go through
/// `serde_json::to_value` first, so they are canonicalized as the JSON value
/// they serialize to (an `f32` as its shortest decimal, a non-finite double
/// as `null`); the hashed inputs (envelopes, `json!` signal material) are
/// strings, integers, `f64`s and `Value`s, where the two agree.
pub fn try_canonical_json<T: Serialize>(value: &T) -> Result<String, String> {
    let value = serde_json::to_value(value).map_err(|e| e.to_string())?;
    try_canonical_json_value(&value)
}

/// [`try_canonical_json`] of a JSON value (not copied first).
pub fn try_canonical_json_value(value: &Value) -> Result<String, String> {
    let mut out = Vec::with_capacity(256);
    if write_jcs(value, &mut out) {
        // Only `serde_json`'s string escapes and ASCII were written.
        return String::from_utf8(out).map_err(|e| e.to_string());
    }
    serde_json_canonicalizer::to_string(value).map_err(|e| e.to_string())
}

/// Write `value` as RFC 8785 JSON; `false` (leaving `out` partial) where the
/// canonicalizer must decide: a key that is not ASCII, keys not in
/// ascending order, a number that is not a finite double.
pub(crate) fn write_jcs(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // RFC 8785 §3.2.2.3: the number as an IEEE double, written as
        // ECMAScript does (what the canonicalizer does, through `ryu-js`).
        Value::Number(n) => match n.to_string().parse::<f64>() {
            Ok(f) if f.is_finite() => {
                out.extend_from_slice(ryu_js::Buffer::new().format_finite(f).as_bytes())
            }
            _ => return false,
        },
        // `serde_json` escapes exactly what RFC 8785 §3.2.2.2 does.
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write_jcs(item, out) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            let mut last: Option<&str> = None;
            for (i, (key, item)) in map.iter().enumerate() {
                if !key.is_ascii() || last.is_some_and(|last| last >= key.as_str()) {
                    return false;
                }
                last = Some(key);
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                if !write_jcs(item, out) {
                    return false;
                }
            }
            out.push(b'}');
        }
    }
    true
}

/// An integer as a JCS number: an IEEE double (`as f64` rounds as parsing
/// its digits does), written as `write_jcs` writes one.
pub(crate) fn write_integer(n: f64, out: &mut Vec<u8>) {
    out.extend_from_slice(ryu_js::Buffer::new().format_finite(n).as_bytes());
}

pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing a `str` to a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Lowercase hex SHA-256 of the canonical JSON of a JSON value (panics as
/// [`canonical_json`] does).
pub fn canonical_value_sha256_hex(value: &Value) -> String {
    let json = try_canonical_json_value(value).expect("canonical JSON of a checked JSON value");
    hex::encode(Sha256::digest(json.as_bytes()))
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

    /// JSON values of every shape: keys and strings with ASCII, control
    /// characters, non-ASCII and astral characters; integers past 2^53 and
    /// past u64 (kept as written: arbitrary precision); doubles of every
    /// magnitude.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = prop_oneof![
            "[a-zA-Z0-9_]{0,8}",
            "[\\u{0}-\\u{7f}]{0,6}",
            "[a-z\\u{e9}\\u{20ac}\\u{fb33}\\u{1f600}\\u{0}-\\u{1f}]{0,6}",
        ];
        let number = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "-?[1-9][0-9]{0,40}".prop_map(|d| serde_json::from_str::<Value>(&d).unwrap()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number,
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(text.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The direct writer and the canonicalizer write the same bytes
        /// (hashes and ETags must never change with the code path).
        #[test]
        fn canonical_json_matches_the_canonicalizer(value in any_json()) {
            let ours = try_canonical_json(&value);
            let theirs = serde_json_canonicalizer::to_string(&value).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// An envelope's hash written field by field is the hash of its
        /// canonicalized material, whatever the payload, the strings (with
        /// escapes and non-ASCII), a missing job and the seq's size.
        #[test]
        fn an_envelope_hash_is_the_hash_of_its_canonical_material(
            payload in any_json(),
            text in "[a-z\\u{e9}\\u{1f600}\\u{0}-\\u{1f}\"\\\\]{0,6}",
            job in proptest::option::of("[a-z0-9]{0,4}"),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let env = Envelope {
                event_id: text.clone(),
                schema_version: SCHEMA_VERSION.to_owned(),
                event_type: types::JOB_PROGRESS.to_owned(),
                tenant_id: format!("t{text}"),
                run_id: "r".to_owned(),
                job_id: job,
                seq,
                occurred_at: text.clone(),
                correlation_id: text,
                payload,
                hash: String::new(),
            };
            let material = Unhashed {
                event_id: &env.event_id,
                schema_version: &env.schema_version,
                event_type: &env.event_type,
                tenant_id: &env.tenant_id,
                run_id: &env.run_id,
                job_id: env.job_id.as_deref(),
                seq: env.seq,
                occurred_at: &env.occurred_at,
                correlation_id: &env.correlation_id,
                payload: &env.payload,
            };
            let value = serde_json::to_value(&material).unwrap();
            // Numbers past the double range have no canonical form at all.
            if let Ok(canonical) = serde_json_canonicalizer::to_string(&value) {
                let want = format!("sha256:{}", hex::encode(Sha256::digest(canonical.as_bytes())));
                proptest::prop_assert_eq!(env.compute_hash(), want);
            }
        }
    }

    #[test]
    fn ascii_keyed_values_take_the_direct_writer() {
        let mut out = Vec::new();
        let value = json!({"b": [1, 2.5, -0.0, 1e21, "x\u{1}\"y"], "a": {"z": null, "y": true}, "n": 9007199254740993u64});
        assert!(
            write_jcs(&value, &mut out),
            "ASCII keys are written directly"
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json_canonicalizer::to_string(&value).unwrap()
        );
        // A non-ASCII key is left to the canonicalizer (UTF-16 order).
        assert!(!write_jcs(&json!({"\u{e9}": 1}), &mut Vec::new()));
        // Past the double range: no canonical form, from either path. Only
        // `serde_json`'s `arbitrary_precision` (the server's build) keeps
        // such a number; without it the parse itself refuses it.
        if let Ok(huge) = serde_json::from_str::<Value>("1e400") {
            assert!(!write_jcs(&huge, &mut Vec::new()));
            assert!(try_canonical_json(&huge).is_err());
        }
    }

    #[test]
    fn ulids_are_monotonic() {
        let ids: Vec<String> = (0..1000).map(|_| new_ulid()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|i| i.len() == 26));
    }
}
