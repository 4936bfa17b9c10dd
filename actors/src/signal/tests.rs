//! One test per derivation rule of SPEC §4.1, plus the ETag rules.
use super::*;

const RUN: &str = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa";

fn job(n: i64, state: JobState) -> JobFacts {
    JobFacts {
        job_id: format!("01JD00000000000000000000{n:02}"),
        state,
        blocked: None,
        stage: None,
        step: None,
        message: None,
        created_at_ms: n,
        state_changed_at: format!("2026-11-22T08:00:{n:02}.000Z"),
        failure_range: None,
    }
}

#[test]
fn rule1_no_jobs_no_signal() {
    assert_eq!(derive(RUN, &[]), None);
}

#[test]
fn rule2_any_failed_job_decides_and_the_earliest_wins() {
    let mut a = job(1, JobState::Working);
    a.message = Some("busy".into());
    let mut b = job(2, JobState::Failed);
    b.message = Some("disk full".into());
    b.step = Some("copy".into());
    b.failure_range = Some((10, 14));
    let mut c = job(3, JobState::Failed);
    c.message = Some("later failure".into());
    let s = derive(RUN, &[c, a, b.clone()]).unwrap();
    assert_eq!(s.kind, SignalKind::Failed);
    assert_eq!(s.job_id.as_deref(), Some(b.job_id.as_str()));
    assert_eq!(s.summary, "disk full");
    assert_eq!(
        s.artifact,
        SignalArtifact {
            kind: "step".into(),
            range: Some(LineRange { start: 10, end: 14 })
        }
    );
}

#[test]
fn rule3_blocked_beats_working_and_carries_the_reason() {
    let w = job(1, JobState::Working);
    let mut b = job(2, JobState::Queued);
    b.blocked = Some("waiting for a worker".into());
    let s = derive(RUN, &[w, b]).unwrap();
    assert_eq!(s.kind, SignalKind::Blocked);
    assert_eq!(s.summary, "waiting for a worker");
}

#[test]
fn rule4_working_job_gives_phase_with_its_stage_and_step() {
    let mut w = job(2, JobState::Working);
    w.stage = Some("fetch".into());
    w.step = Some("download".into());
    w.message = Some("downloading 3 files".into());
    let s = derive(RUN, &[job(1, JobState::Queued), w]).unwrap();
    assert_eq!(
        (s.kind, s.phase, s.stage.as_str()),
        (SignalKind::Phase, 1, "fetch")
    );
    assert_eq!(s.step.as_deref(), Some("download"));
    assert_eq!(s.summary, "downloading 3 files");
    let mut custom = job(3, JobState::Working);
    custom.stage = Some("compile".into());
    let s = derive(RUN, &[custom]).unwrap();
    assert_eq!(
        (s.phase, s.stage.as_str()),
        (6, "compile"),
        "unknown stage names map to phase 6"
    );
}

#[test]
fn rule5_loading_job_gives_started() {
    let s = derive(RUN, &[job(1, JobState::Queued), job(2, JobState::Loading)]).unwrap();
    assert_eq!(s.kind, SignalKind::Started);
    assert_eq!(s.summary, "Run started");
    assert_eq!((s.stage.as_str(), s.step.as_deref()), ("unknown", None));
}

#[test]
fn rule6_queued_only_gives_queued() {
    let s = derive(RUN, &[job(1, JobState::Queued), job(2, JobState::Done)]).unwrap();
    assert_eq!(s.kind, SignalKind::Queued);
}

#[test]
fn rule7_all_terminal_canceled_or_succeeded() {
    let s = derive(RUN, &[job(1, JobState::Done), job(2, JobState::Canceled)]).unwrap();
    assert_eq!(s.kind, SignalKind::Canceled);
    let s = derive(RUN, &[job(1, JobState::Done), job(3, JobState::Done)]).unwrap();
    assert_eq!(s.kind, SignalKind::Succeeded);
    assert_eq!(
        s.at, "2026-11-22T08:00:03.000Z",
        "a run succeeds when its last job does"
    );
}

#[test]
fn ties_go_to_the_earliest_created_job() {
    let mut a = job(5, JobState::Working);
    a.stage = Some("report".into());
    let mut b = job(4, JobState::Working);
    b.stage = Some("policy".into());
    assert_eq!(derive(RUN, &[a, b]).unwrap().stage, "policy");
}

#[test]
fn etag_is_weak_sha256_and_deterministic() {
    let s = derive(RUN, &[job(1, JobState::Loading)]).unwrap();
    let e = s.etag();
    assert!(e.starts_with("W/\"") && e.ends_with('"') && e.len() == 3 + 64 + 1);
    assert!(e[3..67]
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(e, derive(RUN, &[job(1, JobState::Loading)]).unwrap().etag());
    assert_ne!(e, derive(RUN, &[job(1, JobState::Queued)]).unwrap().etag());
}

#[test]
fn etag_covers_outcome_and_actions_but_not_the_eta() {
    let base = derive(RUN, &[job(1, JobState::Working)]).unwrap();
    let mut eta = base.clone();
    eta.eta_seconds = Some(42);
    assert_eq!(eta.etag(), base.etag(), "etaSeconds alone keeps the ETag");
    let mut outcome = base.clone();
    outcome.last_known_outcome = Some(serde_json::json!({"status": "failed"}));
    assert_ne!(outcome.etag(), base.etag());
    let mut actions = base.clone();
    actions.next_actions = Some(serde_json::json!([]));
    assert_ne!(actions.etag(), base.etag());
}

#[test]
fn the_new_fields_reach_both_shapes_and_round_trip_as_stored() {
    let mut s = derive(RUN, &[job(1, JobState::Working)]).unwrap();
    s.eta_seconds = Some(7);
    s.last_known_outcome =
        Some(serde_json::json!({"status": "succeeded", "runId": "r", "finishedAt": "t"}));
    s.next_actions = Some(serde_json::json!([{"action": "view_logs"}]));
    let view = SignalView::new(s.clone(), 3);
    let body: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
    let data = view.stream_data("sig", "snapshot", true, "c");
    for field in ["etaSeconds", "lastKnownOutcome", "nextActions"] {
        assert_eq!(body["firstSignal"][field], data["signal"][field], "{field}");
    }
    assert_eq!(data["signal"]["etaSeconds"], 7);
    // Stored (signal.changed payloads, snapshots) and read back unchanged.
    let stored = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Signal>(&stored).unwrap(), s);
    // Signals stored before `etaSeconds` existed still read.
    let mut old: serde_json::Value = serde_json::from_str(&stored).unwrap();
    old.as_object_mut().unwrap().remove("etaSeconds");
    assert_eq!(
        serde_json::from_value::<Signal>(old).unwrap().eta_seconds,
        None
    );
}

#[test]
fn view_body_has_the_exact_rest_shape() {
    let view = SignalView::new(derive(RUN, &[job(1, JobState::Loading)]).unwrap(), 3);
    let body: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"runId": RUN, "firstSignal": {"type": "started", "stage": "unknown", "step": null,
            "message": "Run started", "at": "2026-11-22T08:00:01.000Z", "artifact": {"kind": "run", "range": null},
            "etaSeconds": null, "lastKnownOutcome": null, "nextActions": null},
            "summaryEtag": view.etag})
    );
    let data = view.stream_data("sig", "snapshot", true, "c");
    assert_eq!(data["signal"]["kind"], 1);
    assert_eq!(data["signal"]["phase"], 6);
    assert_eq!(data["etag"], view.etag.as_str());
}

/// The REST body as it was built before `rest_body` borrowed: a `json!` value.
fn rest_body_value(signal: &Signal, etag: &str) -> Value {
    json!({
        "runId": signal.run_id,
        "firstSignal": {
            "type": signal.kind.as_str(),
            "stage": signal.stage,
            "step": signal.step,
            "message": signal.summary,
            "at": signal.at,
            "artifact": signal.artifact,
            "etaSeconds": signal.eta_seconds,
            "lastKnownOutcome": signal.last_known_outcome,
            "nextActions": signal.next_actions,
        },
        "summaryEtag": etag,
    })
}

/// The ETag as it was computed before it was written field by field: the
/// canonicalizer over the `json!` material.
fn etag_by_value(s: &Signal) -> String {
    format!(
        "W/\"{}\"",
        crate::envelope::canonical_sha256_hex(&s.etag_material())
    )
}

fn any_signal() -> impl proptest::strategy::Strategy<Value = Signal> {
    use proptest::prelude::*;
    let text = prop_oneof![
        "[a-zA-Z0-9 _.-]{0,12}",
        "[a-z\\u{e9}\\u{20ac}\\u{1f600}\\u{0}-\\u{1f}\"\\\\]{0,8}",
    ];
    let value = prop_oneof![
        Just(None),
        (text.clone(), any::<i64>())
            .prop_map(|(s, n)| Some(json!({"status": s, "n": n, "z": [1.5, null]}))),
        // A non-ASCII key: the canonicalizer's path.
        text.clone()
            .prop_map(|s| Some(json!({"\u{e9}": s, "a": 1}))),
    ];
    let kinds = prop_oneof![
        Just(SignalKind::Queued),
        Just(SignalKind::Started),
        Just(SignalKind::Phase),
        Just(SignalKind::Blocked),
        Just(SignalKind::Failed),
        Just(SignalKind::Succeeded),
        Just(SignalKind::Canceled),
        Just(SignalKind::Unavailable),
    ];
    (
        (
            text.clone(),
            kinds,
            any::<u8>(),
            text.clone(),
            proptest::option::of(text.clone()),
        ),
        (
            text.clone(),
            proptest::option::of(text.clone()),
            text.clone(),
            text,
        ),
        proptest::option::of((any::<i64>(), any::<i64>())),
        (value.clone(), value, proptest::option::of(any::<i64>())),
    )
        .prop_map(
            |(
                (run_id, kind, phase, stage, step),
                (summary, job_id, at, artifact),
                range,
                (outcome, actions, eta),
            )| Signal {
                run_id,
                kind,
                phase,
                stage,
                step,
                summary,
                job_id,
                at,
                artifact: SignalArtifact {
                    kind: artifact,
                    range: range.map(|(start, end)| LineRange { start, end }),
                },
                last_known_outcome: outcome,
                next_actions: actions,
                eta_seconds: eta,
            },
        )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
    /// The ETag written field by field is the ETag of the canonicalized
    /// material, and the borrowed REST body has the bytes of the `json!` one:
    /// stored ETags and cached bodies do not change with the code path.
    #[test]
    fn etag_and_rest_body_match_their_value_forms(s in any_signal()) {
        let etag = s.etag();
        proptest::prop_assert_eq!(&etag, &etag_by_value(&s));
        let want = serde_json::to_vec(&rest_body_value(&s, &etag)).unwrap();
        proptest::prop_assert_eq!(rest_body(&s, &etag).to_vec(), want);
    }
}

/// A stored event's hash, a stored ETag and a cached body never change with
/// the code that computes them: these literals were computed by the code
/// before the direct writers (`0d89d4c`).
#[test]
fn a_known_event_and_signal_keep_their_hash_etag_and_body() {
    let env = crate::envelope::NewEnvelope {
        event_id: "01JD0000000000000000000000".into(),
        event_type: crate::envelope::types::JOB_PROGRESS,
        tenant_id: "acme",
        run_id: "0192f5a0-0000-7000-8000-000000000001",
        job_id: Some("01JD0000000000000000000001"),
        seq: 42,
        occurred_at: "2026-11-30T22:00:00.123Z".into(),
        correlation_id: "c-é\"1",
        payload: json!({"percent": 33.5, "message": "step 1", "lines": ["a\u{1}", "ü"], "n": 123456789012345678u64}),
    }
    .seal();
    assert_eq!(
        env.hash,
        "sha256:e32d13bd380ab36970f5ce479b47d0292e30e62065259c518dbd0cdb145d0f6d"
    );
    let s = Signal {
        run_id: "0192f5a0-0000-7000-8000-000000000001".into(),
        kind: SignalKind::Phase,
        phase: 2,
        stage: "analyze".into(),
        step: Some("lint".into()),
        summary: "Analyzing: lint (2/3)".into(),
        job_id: Some("01JD0000000000000000000001".into()),
        at: "2026-11-30T22:00:00.123Z".into(),
        artifact: SignalArtifact {
            kind: "log".into(),
            range: Some(LineRange { start: 3, end: 9 }),
        },
        last_known_outcome: Some(
            json!({"status": "succeeded", "runId": "r0", "finishedAt": "2026-11-29T10:00:00.000Z"}),
        ),
        next_actions: Some(
            json!([{"action": "cancel", "label": "Cancel", "method": "POST", "href": "/jobs/x/cancel"}]),
        ),
        eta_seconds: Some(12),
    };
    let etag = s.etag();
    assert_eq!(
        etag,
        "W/\"3c51c80647c46c5ff107beaf50dfc013a7448f389a3f3e945f52a140eac91c73\""
    );
    assert_eq!(
        String::from_utf8(rest_body(&s, &etag).to_vec()).unwrap(),
        r#"{"firstSignal":{"artifact":{"kind":"log","range":{"end":9,"start":3}},"at":"2026-11-30T22:00:00.123Z","etaSeconds":12,"lastKnownOutcome":{"finishedAt":"2026-11-29T10:00:00.000Z","runId":"r0","status":"succeeded"},"message":"Analyzing: lint (2/3)","nextActions":[{"action":"cancel","href":"/jobs/x/cancel","label":"Cancel","method":"POST"}],"stage":"analyze","step":"lint","type":"phase"},"runId":"0192f5a0-0000-7000-8000-000000000001","summaryEtag":"W/\"3c51c80647c46c5ff107beaf50dfc013a7448f389a3f3e945f52a140eac91c73\""}"#
    );
}
