//! Property tests for the parsers that take client or operator input
//! (issue 8 point 10): `If-None-Match`, `Last-Event-ID`, tenant and id
//! validation, configuration keys from the environment, canonical JSON.
//! Each property holds for every generated input, and no input panics.

use actix_web::test::TestRequest;
use proptest::prelude::*;
use runsignal::config::Config;
use runsignal::http::extract::canonical_value;
use runsignal::http::extract::{job_id, run_id, valid_tenant, MAX_SEQ};
use runsignal::http::first_signal::if_none_match_hits;
use runsignal::http::streams::parse_last_event_id;
use runsignal_actors::envelope::{canonical_json, try_canonical_json};
use serde_json::Value;

/// An entity tag as the server makes them: a quoted opaque string.
fn etag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,24}".prop_map(|t| format!("\"{t}\""))
}

/// Any JSON value, numbers included in forms a client may send (big
/// integers, exponents, negative zero).
fn json_value() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "-?[1-9][0-9]{0,40}",
        "-?[0-9]\\.[0-9]{1,12}([eE][+-]?[0-9]{1,3})?",
        Just("-0".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("1e-400".to_owned()),
    ]
    .prop_map(|n| serde_json::from_str::<Value>(&n).expect("a JSON number"));
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A list matches exactly when it names our tag (weakly or strongly) or is `*`.
    #[test]
    fn if_none_match_matches_exactly_the_listed_tags(
        ours in etag(),
        others in prop::collection::vec(etag(), 0..5),
        weak in any::<bool>(),
        include in any::<bool>(),
        star in any::<bool>(),
    ) {
        let mut list: Vec<String> = others.iter().filter(|t| **t != ours).cloned().collect();
        if include {
            list.push(if weak { format!("W/{ours}") } else { ours.clone() });
        }
        if star {
            list.push("*".into());
        }
        let req = TestRequest::default()
            .insert_header(("If-None-Match", list.join(", ")))
            .to_http_request();
        prop_assert_eq!(if_none_match_hits(&req, &ours), include || star);
    }

    /// Arbitrary header bytes never panic.
    #[test]
    fn if_none_match_takes_any_header(raw in "[ -~]{0,80}", ours in etag()) {
        let req = TestRequest::default()
            .insert_header(("If-None-Match", raw.as_str()))
            .to_http_request();
        let _ = if_none_match_hits(&req, &ours);
    }

    /// Every seq round-trips; past the largest seq, or not a number, is an error.
    #[test]
    fn last_event_id_is_a_seq_or_an_error(n in any::<u64>(), junk in "[^0-9\\s]{1,12}", pad in "[ \t]{0,2}") {
        let parsed = parse_last_event_id(Some(&format!("{pad}{n}{pad}")));
        if n <= MAX_SEQ {
            prop_assert_eq!(parsed.ok(), Some(Some(n)));
        } else {
            prop_assert!(parsed.is_err());
        }
        prop_assert!(parse_last_event_id(Some(&junk)).is_err());
        prop_assert_eq!(parse_last_event_id(Some(&pad)).ok(), Some(None));
    }

    /// A tenant is 1–64 of `[A-Za-z0-9._:-]` and never a path component
    /// such as `.` or `..`.
    #[test]
    fn tenants_are_valid_exactly_when_they_match_the_rule(t in "\\PC{0,70}") {
        let rule = (1..=64).contains(&t.len())
            && t.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
            && t != "."
            && t != "..";
        prop_assert_eq!(valid_tenant(&t), rule);
    }

    #[test]
    fn dot_tenants_are_invalid(dots in prop_oneof![Just("."), Just("..")]) {
        prop_assert!(!valid_tenant(dots));
    }

    /// A job id is a ULID in any case; it names one job, written upper case.
    #[test]
    fn job_ids_round_trip_and_nothing_else_parses(bits in any::<u128>(), raw in "\\PC{0,30}") {
        let id = ulid::Ulid(bits).to_string();
        prop_assert_eq!(job_id(&id.to_lowercase()).ok(), Some(id.clone()));
        if let Ok(parsed) = job_id(&raw) {
            // Whatever parsed is a ULID naming the same 128 bits as written.
            prop_assert_eq!(parsed.to_lowercase(), raw.to_lowercase());
        }
    }

    /// A run id is any UUID, lower case hyphenated out.
    #[test]
    fn run_ids_round_trip(bits in any::<u128>(), raw in "\\PC{0,40}") {
        let id = uuid::Uuid::from_u128(bits);
        let upper = id.hyphenated().to_string().to_uppercase();
        prop_assert_eq!(run_id(&upper).ok(), Some(id.hyphenated().to_string()));
        let _ = run_id(&raw);
    }

    /// Environment layering: a key in any letter case sets that key; junk
    /// names and values are errors or ignored, never a panic.
    #[test]
    fn config_keys_from_the_environment(
        n in 1u64..=1_000_000_000,
        upper in any::<bool>(),
        name in "RUNSIGNAL__[A-Za-z_]{0,30}",
        value in "\\PC{0,20}",
    ) {
        let key = if upper { "RUNSIGNAL__SERVER__MAXBODYBYTES" } else { "RUNSIGNAL__server__maxBodyBytes" };
        let config = Config::load_from(None, vec![(key.to_owned(), n.to_string())]);
        prop_assert_eq!(config.map(|c| c.server.max_body_bytes as u64).ok(), Some(n));
        let _ = Config::load_from(None, vec![(name, value)]);
    }

    /// Canonical JSON (RFC 8785) of any value a client can send: the
    /// boundary check refuses exactly the values that have none (`1e400`),
    /// and for every other value it is the same for any key order, parses
    /// back to an equal value, and is a fixed point.
    #[test]
    fn canonical_json_is_stable(v in json_value()) {
        let Ok(once) = try_canonical_json(&v) else {
            prop_assert!(canonical_value("inputs", &v).is_err(), "refused at the boundary");
            return Ok(());
        };
        prop_assert!(canonical_value("inputs", &v).is_ok());
        let back: Value = serde_json::from_str(&once).expect("canonical JSON parses");
        prop_assert_eq!(canonical_json(&back), once.clone());
        if let Value::Object(map) = &v {
            let reversed: serde_json::Map<String, Value> =
                map.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(canonical_json(&Value::Object(reversed)), once);
        }
    }
}
