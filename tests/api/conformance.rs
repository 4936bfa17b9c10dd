//! The store conformance suite (issue 7 point 2): the same cases against
//! every backend, straight through the `Store` (no HTTP). The binary this
//! module is built into picks the backend (`api`: SQLite, `api_postgres`:
//! PostgreSQL).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use runsignal::store::tx::BatchRows;
use runsignal::store::{
    BlockedChange, ClaimShare, Completion, Failure, LeaseRequest, NewJob, NewRun, ProgressReport,
    Store, StoreError, TimelineQuery, JOB_UPDATE_COLUMNS,
};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::testdb::TestDb;

const T: &str = "acme";

struct Fixture {
    store: Arc<Store>,
    _db: TestDb,
    _dir: TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new(crate::BACKEND, dir.path());
    let store = Store::open(&db.url, 8, 4, Default::default())
        .await
        .expect("store opens");
    Fixture {
        store: Arc::new(store),
        _db: db,
        _dir: dir,
    }
}

fn new_job(run_id: Option<&str>) -> NewJob {
    NewJob {
        pack: "external".into(),
        inputs: json!({}),
        run_id: run_id.map(str::to_owned),
        correlation_id: "c".into(),
        webhook_url: None,
        idempotency_key: None,
        max_attempts: 3,
        idempotency_window_ms: 24 * 3_600_000,
    }
}

fn lease_req(worker: &str, max: u32, lease_seconds: u32) -> LeaseRequest {
    LeaseRequest {
        worker_id: worker.into(),
        packs: vec!["external".into()],
        max,
        lease_seconds,
        correlation_id: "c".into(),
    }
}

fn report(lease: &str, percent: f64) -> ProgressReport {
    ProgressReport {
        lease_id: lease.into(),
        stage: Some("analyze".into()),
        step: None,
        step_index: None,
        message: Some(format!("{percent}%")),
        percent: Some(percent),
        log: vec![],
        blocked: BlockedChange::Unchanged,
        correlation_id: "c".into(),
    }
}

async fn all_seqs(store: &Store, run: &str) -> Vec<u64> {
    let query = TimelineQuery {
        after: 0,
        limit: 100_000,
        correlation_id: None,
    };
    let events = store.timeline(T, run, &query).await.unwrap();
    events.iter().map(|e| e.seq).collect()
}

#[actix_web::test]
async fn seq_is_gap_free_per_run_under_32_concurrent_writers() {
    let f = fixture().await;
    let run = uuid::Uuid::new_v4().to_string();
    let new = NewRun {
        run_id: run.clone(),
        name: None,
        labels: json!({}),
        correlation_id: "c".into(),
    };
    f.store.create_run(T, new).await.unwrap();
    let writers = (0..32).map(|_| {
        let store = f.store.clone();
        let run = run.clone();
        async move {
            for _ in 0..5 {
                store.submit_job(T, new_job(Some(&run))).await.unwrap();
            }
        }
    });
    join_all(writers).await;
    let seqs = all_seqs(&f.store, &run).await;
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs 1..=N with no gap and no duplicate");
    // run.created + 160 × job.queued + signal.changed once (all queued).
    assert!(seqs.len() >= 162, "{} events", seqs.len());
    let stats = f.store.writer().stats();
    assert!(
        stats.largest.load(std::sync::atomic::Ordering::Relaxed) > 1,
        "concurrent writes were committed in batches"
    );
}

#[actix_web::test]
async fn fifty_workers_lease_a_thousand_jobs_each_exactly_once() {
    let f = fixture().await;
    join_all((0..1000).map(|_| f.store.submit_job(T, new_job(None)))).await;
    let workers = (0..50).map(|w| {
        let store = f.store.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let req = lease_req(&format!("w{w}"), 7, 600);
                let got = store.lease_jobs(T, &req).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| j.job_id));
            }
        }
    });
    let all: Vec<String> = join_all(workers).await.into_iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 1000, "every job leased");
    assert_eq!(unique.len(), 1000, "none leased twice");
}

/// Leases that share a batch take their candidates from one read (SQLite,
/// ADR 0062): still distinct jobs, each leased once, the oldest first, and
/// what is left stays queued for the next lease. (On PostgreSQL, where
/// the lanes lease side by side, a lease may come back short when another
/// lane took its candidate first: every job is still leased exactly once.)
#[actix_web::test]
async fn leases_sharing_a_batch_take_distinct_jobs_oldest_first() {
    let f = fixture().await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(f.store.submit_job(T, new_job(None)).await.unwrap().0.job_id);
    }
    ids.sort(); // ULIDs: the oldest first
    let leases = (0..12).map(|w| {
        let store = f.store.clone();
        async move {
            store
                .lease_jobs(T, &lease_req(&format!("w{w}"), 2, 600))
                .await
                .unwrap()
        }
    });
    let leased: Vec<_> = join_all(leases).await.into_iter().flatten().collect();
    let mut got: Vec<String> = leased.iter().map(|j| j.job_id.clone()).collect();
    got.sort();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "none leased twice: {got:?}");
    if matches!(crate::BACKEND, crate::testdb::Backend::Sqlite) {
        assert_eq!(got, ids[..24], "the 24 oldest, two for each of 12 leases");
    } else {
        assert!(got.len() <= 24 && got.iter().all(|g| ids.contains(g)), "{got:?}");
    }
    let lease_ids: HashSet<&str> = leased.iter().map(|j| j.lease_id.as_str()).collect();
    assert_eq!(lease_ids.len(), got.len(), "a lease id of its own for each job");
    for id in &got {
        let job = f.store.get_job(T, id).await.unwrap();
        assert_eq!(job.state, "loading", "{id}");
    }
    let rest = f
        .store
        .lease_jobs(T, &lease_req("late", 100, 600))
        .await
        .unwrap();
    let mut all: Vec<String> = rest.into_iter().map(|j| j.job_id).chain(got).collect();
    all.sort();
    assert_eq!(all, ids, "the rest stayed queued: every job leased exactly once");
    assert!(
        f.store.writer().stats().largest.load(Ordering::Relaxed) > 1,
        "the concurrent leases were committed in batches"
    );
}

#[actix_web::test]
async fn one_idempotency_key_under_concurrent_submits_makes_one_job() {
    let f = fixture().await;
    let submits = (0..20).map(|_| {
        let mut new = new_job(None);
        new.idempotency_key = Some("same-key".into());
        f.store.submit_job(T, new)
    });
    let results: Vec<_> = join_all(submits).await;
    let ids: HashSet<String> = results
        .iter()
        .map(|r| r.as_ref().unwrap().0.job_id.clone())
        .collect();
    let created = results.iter().filter(|r| r.as_ref().unwrap().1).count();
    assert_eq!(ids.len(), 1, "every submit answers the same job");
    assert_eq!(created, 1, "exactly one was created");
}

#[actix_web::test]
async fn a_failing_write_in_a_batch_rolls_back_only_itself() {
    let f = fixture().await;
    let (job, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    let lease = f.store.lease_jobs(T, &lease_req("w", 1, 600)).await.unwrap();
    let lease_id = lease[0].lease_id.clone();
    let writes = (0..40).map(|i| {
        let lease = if i % 2 == 0 { lease_id.clone() } else { "forged".into() };
        let store = f.store.clone();
        let job = job.job_id.clone();
        async move { store.report_progress(T, &job, &report(&lease, i as f64)).await }
    });
    let results = join_all(writes).await;
    for (i, r) in results.iter().enumerate() {
        match (i % 2, r) {
            (0, Ok(_)) | (1, Err(StoreError::LeaseLost)) => {}
            other => panic!("write {i}: {other:?}"),
        }
    }
    let seqs = all_seqs(&f.store, &job.run_id).await;
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let query = TimelineQuery {
        after: 0,
        limit: 1000,
        correlation_id: None,
    };
    let progress = f
        .store
        .timeline(T, &job.run_id, &query)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "job.progress")
        .count();
    assert_eq!(progress, 20, "the 20 good reports are all there, the forged ones none");
}

#[actix_web::test]
async fn outbox_rows_come_in_state_order_per_job() {
    let f = fixture().await;
    let mut new = new_job(None);
    new.webhook_url = Some("http://127.0.0.1:9/hook".into());
    let (job, _) = f.store.submit_job(T, new).await.unwrap();
    let lease = f.store.lease_jobs(T, &lease_req("w", 1, 600)).await.unwrap();
    let lease_id = lease[0].lease_id.clone();
    f.store
        .report_progress(T, &job.job_id, &report(&lease_id, 50.0))
        .await
        .unwrap();
    let done = Completion {
        lease_id,
        result: Some(json!({"ok": true})),
        correlation_id: "c".into(),
        artifacts: vec![],
    };
    f.store.complete_job(T, &job.job_id, &done).await.unwrap();
    let states: Vec<String> = f
        .store
        .job_webhooks(T, &job.job_id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.state)
        .collect();
    assert_eq!(states, ["queued", "loading", "working", "done"]);
    // Claims hand out the oldest open delivery of a job, one at a time.
    let far = runsignal::store::now_ms() + 3_600_000;
    let share = ClaimShare {
        per_tenant: 10,
        claim_ms: 60_000,
        ..ClaimShare::default()
    };
    let first = f.store.claim_webhooks(far, 10, &share).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].state, "queued");
    assert!(f
        .store
        .claim_webhooks(far, 10, &share)
        .await
        .unwrap()
        .is_empty());
    // With several nodes a claim holds for `claim_ms`: a live one is not
    // taken back; one that ran out (its node died) is, and is sent again.
    let live = f.store.reset_sending_webhooks(far + 59_999, true).await;
    assert_eq!(live.unwrap(), 0);
    let expired = f.store.reset_sending_webhooks(far + 60_000, true).await;
    assert_eq!(expired.unwrap(), 1);
    let again = f.store.claim_webhooks(far + 60_000, 10, &share).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (first[0].id, 2));
}

/// SPEC §11: claims go round robin across tenants (not oldest first) and
/// never past `per_tenant` in flight, counting what is already sending.
#[actix_web::test]
async fn webhook_claims_go_round_robin_across_tenants_within_a_per_tenant_cap() {
    let f = fixture().await;
    let hooked = || {
        let mut new = new_job(None);
        new.webhook_url = Some("http://127.0.0.1:9/hook".into());
        new
    };
    for _ in 0..4 {
        f.store.submit_job("noisy", hooked()).await.unwrap();
    }
    f.store.submit_job("victim", hooked()).await.unwrap();
    let far = runsignal::store::now_ms() + 3_600_000;
    let claim = |limit: u32, busy: &[(&str, u32)], after: Option<&str>| {
        let share = ClaimShare {
            per_tenant: 2,
            busy: busy.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            after: after.map(str::to_owned),
            claim_ms: 60_000,
        };
        let store = f.store.clone();
        async move {
            let got = store.claim_webhooks(far, limit, &share).await.unwrap();
            got.into_iter().map(|d| d.tenant_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(claim(1, &[], None).await, ["noisy"]);
    // noisy's three older rows wait: the next slot is the victim's.
    assert_eq!(claim(1, &[("noisy", 1)], Some("noisy")).await, ["victim"]);
    // With five slots free, noisy gets one more (2 in flight), no more.
    let busy = [("noisy", 1), ("victim", 1)];
    assert_eq!(claim(5, &busy, Some("victim")).await, ["noisy"]);
    assert_eq!(claim(5, &[("noisy", 2)], Some("noisy")).await, Vec::<String>::new());
    // A slot back: one more, the round wraps past the end of the ids.
    assert_eq!(claim(5, &[("noisy", 1)], Some("victim")).await, ["noisy"]);
}

#[actix_web::test]
async fn expired_leases_are_requeued_then_failed() {
    let f = fixture().await;
    let mut new = new_job(None);
    new.max_attempts = 2;
    let (job, _) = f.store.submit_job(T, new).await.unwrap();
    let far = runsignal::store::now_ms() + 3_600_000;
    for attempt in 1..=2 {
        let leased = f.store.lease_jobs(T, &lease_req("w", 1, 5)).await.unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].attempt, attempt);
        assert_eq!(f.store.sweep_expired_leases(far).await.unwrap(), 1);
    }
    let got = f.store.get_job(T, &job.job_id).await.unwrap();
    assert_eq!(got.state, "failed");
    assert_eq!(got.error_code.as_deref(), Some("lease_expired"));
    assert_eq!(f.store.sweep_expired_leases(far).await.unwrap(), 0);
}

#[actix_web::test]
async fn prune_deletes_finished_runs_and_keeps_active_ones() {
    let f = fixture().await;
    let (finished, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    let (active, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    let leased = f.store.lease_jobs(T, &lease_req("w", 1, 600)).await.unwrap();
    assert_eq!(leased[0].job_id, finished.job_id, "oldest first");
    let failure = Failure {
        lease_id: leased[0].lease_id.clone(),
        retryable: false,
        code: "boom".into(),
        message: "boom".into(),
        log_range: None,
        exit_code: None,
        correlation_id: "c".into(),
    };
    f.store
        .fail_job(T, &finished.job_id, &failure)
        .await
        .unwrap();
    let (runs, _files) = f
        .store
        .prune(runsignal::store::now_ms() + 60_000, 100)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(&*runs[0].run_id, finished.run_id.as_str());
    assert!(matches!(
        f.store.get_job(T, &finished.job_id).await,
        Err(StoreError::JobNotFound)
    ));
    assert!(f.store.get_job(T, &active.job_id).await.is_ok());
    assert!(f.store.run_head(T, &active.run_id).await.unwrap().is_some());
}

#[actix_web::test]
async fn large_json_integers_in_inputs_and_results_are_kept_exactly() {
    const BIG: &str = "123456789012345678901234567890";
    let f = fixture().await;
    let inputs: Value = serde_json::from_str(&format!(r#"{{"n":{BIG}}}"#)).unwrap();
    let mut new = new_job(None);
    new.inputs = inputs;
    let (job, _) = f.store.submit_job(T, new).await.unwrap();
    let leased = f.store.lease_jobs(T, &lease_req("w", 1, 600)).await.unwrap();
    assert_eq!(leased[0].inputs.to_string(), format!(r#"{{"n":{BIG}}}"#));
    let result: Value = serde_json::from_str(&format!(r#"{{"big":{BIG},"f":0.1}}"#)).unwrap();
    let done = Completion {
        lease_id: leased[0].lease_id.clone(),
        result: Some(result),
        correlation_id: "c".into(),
        artifacts: vec![],
    };
    f.store.complete_job(T, &job.job_id, &done).await.unwrap();
    let got = f.store.get_job(T, &job.job_id).await.unwrap();
    assert_eq!(got.result.as_deref(), Some(format!(r#"{{"big":{BIG},"f":0.1}}"#).as_str()));
    assert!(got.inputs.contains(BIG));
}

/// A batch reads its jobs ahead (and a lease its candidates) in one read;
/// on SQLite that read packs its rows as JSON. Every value comes back as
/// stored: percents whose shortest text needs 16 or 17 digits, and inputs
/// with escapes and non-ASCII text (stored as JSON text, control
/// characters already escaped).
#[actix_web::test]
async fn values_read_ahead_for_a_batch_come_back_exactly() {
    const PERCENTS: [f64; 6] = [
        0.1 + 0.2,
        100.0 / 3.0,
        200.0 / 3.0,
        99.999_999_999_999_99,
        1e-7,
        12.5,
    ];
    let inputs = json!({"s": "quote \" backslash \\ tab \t nul \u{0} é 🚀", "n": [1, -2, 3.5]});
    let f = fixture().await;
    let submits = (0..48).map(|_| {
        let mut new = new_job(None);
        new.inputs = inputs.clone();
        f.store.submit_job(T, new)
    });
    join_all(submits).await;
    // Several leases at once: their candidates come from one read.
    let leases = (0..6).map(|w| {
        let store = f.store.clone();
        async move { store.lease_jobs(T, &lease_req(&format!("w{w}"), 8, 600)).await.unwrap() }
    });
    let leased: Vec<_> = join_all(leases).await.into_iter().flatten().collect();
    assert_eq!(leased.len(), 48);
    for job in &leased {
        assert_eq!(job.inputs, inputs, "a leased job's inputs");
    }
    let stats = f.store.writer().stats();
    let batches_before = stats.batches.load(Ordering::Relaxed);
    let reports = leased.iter().enumerate().map(|(i, job)| {
        let store = f.store.clone();
        let (id, lease) = (job.job_id.clone(), job.lease_id.clone());
        async move {
            let percent = PERCENTS[i % PERCENTS.len()];
            store.report_progress(T, &id, &report(&lease, percent)).await.unwrap();
            // A report without a percent: the job read ahead keeps its own.
            let mut quiet = report(&lease, 0.0);
            quiet.percent = None;
            quiet.message = Some("still going".into());
            let job = store.report_progress(T, &id, &quiet).await.unwrap();
            (id, percent, job)
        }
    });
    let done = join_all(reports).await;
    let batches = stats.batches.load(Ordering::Relaxed) - batches_before;
    assert!(batches < 96, "{batches} batches for 96 reports: some were batched");
    for (id, percent, answered) in done {
        assert_eq!(answered.percent, Some(percent), "the answer to the second report");
        let got = f.store.get_job(T, &id).await.unwrap();
        assert_eq!(got.percent, Some(percent), "as stored");
        assert_eq!(got.message.as_deref(), Some("still going"));
        assert_eq!(serde_json::from_str::<Value>(&got.inputs).unwrap(), inputs);
    }
}

/// A submit with key `k` and a window of 0: it first frees the key of the
/// old job holding it (a write), then fails on an unknown run.
async fn submit_freeing_k_then_failing(
    store: &Store,
) -> Result<(runsignal::store::JobRecord, bool), StoreError> {
    let mut new = new_job(Some("00000000-0000-4000-8000-000000000000"));
    new.idempotency_key = Some("k".into());
    new.idempotency_window_ms = 0;
    store.submit_job(T, new).await
}

#[actix_web::test]
async fn a_write_failing_after_it_wrote_rolls_back_only_itself() {
    let f = fixture().await;
    // An old job whose idempotency key has left the window: a submit with
    // that key first frees it (a write), then fails on an unknown run.
    let mut old = new_job(None);
    old.idempotency_key = Some("k".into());
    let (old, _) = f.store.submit_job(T, old).await.unwrap();
    let others = (0..20).map(|_| f.store.submit_job(T, new_job(None)));
    let failing = submit_freeing_k_then_failing(&f.store);
    let (results, failed) = futures_util::join!(join_all(others), failing);
    assert!(matches!(failed, Err(StoreError::RunNotFound)), "{failed:?}");
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let old = f.store.get_job(T, &old.job_id).await.unwrap();
    assert_eq!(old.idempotency_key.as_deref(), Some("k"), "its write was undone");
    for r in results {
        let (job, _) = r.unwrap();
        let seqs = all_seqs(&f.store, &job.run_id).await;
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert!(f.store.get_job(T, &job.job_id).await.is_ok());
    }
}

/// Writes that send statements of their own (a submit with an idempotency
/// key looks it up and inserts its job at once) keep them when a later
/// write of their batch fails after writing: each write's savepoint is
/// taken before its first statement (ADR 0060).
#[actix_web::test]
async fn writes_that_sent_statements_keep_them_when_a_later_one_fails() {
    let f = fixture().await;
    let mut old = new_job(None);
    old.idempotency_key = Some("k".into());
    let (old, _) = f.store.submit_job(T, old).await.unwrap();
    for round in 0..3 {
        let keyed = (0..20).map(|i| {
            let mut job = new_job(None);
            job.idempotency_key = Some(format!("key-{round}-{i}"));
            f.store.submit_job(T, job)
        });
        let plain = (0..20).map(|_| f.store.submit_job(T, new_job(None)));
        let failing = submit_freeing_k_then_failing(&f.store);
        let (keyed, plain, failed) = futures_util::join!(join_all(keyed), join_all(plain), failing);
        assert!(matches!(failed, Err(StoreError::RunNotFound)), "{failed:?}");
        for (i, r) in keyed.into_iter().enumerate() {
            let (job, created) = r.unwrap_or_else(|e| panic!("keyed submit {i}: {e:?}"));
            assert!(created);
            let stored = f.store.get_job(T, &job.job_id).await.unwrap();
            assert_eq!(stored.idempotency_key, Some(format!("key-{round}-{i}")));
            let seqs = all_seqs(&f.store, &job.run_id).await;
            assert!(!seqs.is_empty());
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        }
        for r in plain {
            let (job, _) = r.unwrap();
            assert!(f.store.get_job(T, &job.job_id).await.is_ok());
        }
    }
    let old = f.store.get_job(T, &old.job_id).await.unwrap();
    assert_eq!(old.idempotency_key.as_deref(), Some("k"), "the failing writes were undone");
}

#[actix_web::test]
async fn jobs_submitted_and_leased_in_one_batch_are_leased_once_each() {
    let f = fixture().await;
    let submits = (0..50).map(|_| {
        let store = f.store.clone();
        async move { store.submit_job(T, new_job(None)).await.unwrap().0.job_id }
    });
    let leases = (0..50).map(|w| {
        let store = f.store.clone();
        async move {
            let req = lease_req(&format!("w{w}"), 1, 600);
            store.lease_jobs(T, &req).await.unwrap()
        }
    });
    let (submitted, leased) = futures_util::join!(join_all(submits), join_all(leases));
    let mut ids: Vec<String> = leased.into_iter().flatten().map(|j| j.job_id).collect();
    // What the concurrent leases did not get, a last lease gets.
    let rest = f.store.lease_jobs(T, &lease_req("last", 100, 600)).await.unwrap();
    ids.extend(rest.into_iter().map(|j| j.job_id));
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "none leased twice");
    let mut ids_sorted = ids.clone();
    ids_sorted.sort();
    let mut expected = submitted.clone();
    expected.sort();
    assert_eq!(ids_sorted, expected, "every job leased exactly once");
    for id in &submitted {
        let job = f.store.get_job(T, id).await.unwrap();
        assert_eq!(job.state, "loading");
        let seqs = all_seqs(&f.store, &job.run_id).await;
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
}

#[actix_web::test]
async fn an_idempotency_key_past_its_window_makes_a_new_job() {
    let f = fixture().await;
    let mut first = new_job(None);
    first.idempotency_key = Some("k".into());
    let (old, created) = f.store.submit_job(T, first).await.unwrap();
    assert!(created);
    let mut again = new_job(None);
    again.idempotency_key = Some("k".into());
    again.idempotency_window_ms = 0;
    let (new, created) = f.store.submit_job(T, again).await.unwrap();
    assert!(created, "past the window the key is free");
    assert_ne!(new.job_id, old.job_id);
    let old = f.store.get_job(T, &old.job_id).await.unwrap();
    assert_eq!(old.idempotency_key, None, "the old job gave the key up");
    let mut within = new_job(None);
    within.idempotency_key = Some("k".into());
    let (same, created) = f.store.submit_job(T, within).await.unwrap();
    assert!(!created);
    assert_eq!(same.job_id, new.job_id, "within the window: the new job");
}

/// Leases lock a run's row before its jobs, as every other writer does: 16
/// workers leasing and finishing 400 jobs that share 40 runs, while other
/// jobs of those runs report progress and complete, do not deadlock with
/// them (on PostgreSQL a deadlock costs a second and, five in a row, fails
/// the write).
#[actix_web::test]
async fn workers_on_jobs_that_share_runs_lease_and_finish_without_failing() {
    let f = fixture().await;
    let mut runs = Vec::new();
    for _ in 0..40 {
        let (job, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
        runs.push(job.run_id);
    }
    join_all(
        runs.iter()
            .flat_map(|r| (0..9).map(move |_| r))
            .map(|r| f.store.submit_job(T, new_job(Some(r)))),
    )
    .await
    .into_iter()
    .for_each(|r| {
        r.unwrap();
    });
    let started = std::time::Instant::now();
    let workers = (0..16).map(|w| {
        let store = f.store.clone();
        async move {
            let mut done = 0;
            loop {
                let got = store
                    .lease_jobs(T, &lease_req(&format!("w{w}"), 3, 600))
                    .await
                    .expect("lease");
                if got.is_empty() {
                    return done;
                }
                for j in got {
                    store
                        .report_progress(T, &j.job_id, &report(&j.lease_id, 50.0))
                        .await
                        .expect("progress");
                    let c = Completion {
                        lease_id: j.lease_id.clone(),
                        result: None,
                        correlation_id: "c".into(),
                        artifacts: vec![],
                    };
                    store.complete_job(T, &j.job_id, &c).await.expect("complete");
                    done += 1;
                }
            }
        }
    });
    let done: usize = join_all(workers).await.into_iter().sum();
    println!("400 jobs over 40 runs: {:?}", started.elapsed());
    assert_eq!(done, 400, "every job leased once and finished");
    // Writes of two jobs of one run can still meet in two lanes' batches
    // and lose a race now and then (0 to 4 seen, on a loaded machine); with
    // leases locking jobs before runs there were 82 here, each a second.
    let retried = f.store.writer().stats().retried.load(Ordering::Relaxed);
    assert!(retried <= 25, "{retried} writes lost a race (a deadlock) and were retried");
}

/// ADR 0048: a batch sets only the columns its writes changed. Jobs changed
/// in different ways in the same batches (two progress reports, a
/// completion, a failure, a retryable failure) read back exactly as their
/// last write left them, and the jobs no write named are as they were.
#[actix_web::test]
async fn jobs_changed_in_different_ways_in_one_batch_read_back_exactly() {
    let f = fixture().await;
    join_all((0..80).map(|_| f.store.submit_job(T, new_job(None)))).await;
    let leased = f.store.lease_jobs(T, &lease_req("w", 60, 600)).await.unwrap();
    assert_eq!(leased.len(), 60);
    let failure = |lease: &str, retryable: bool| Failure {
        lease_id: lease.into(),
        retryable,
        code: if retryable { "flaky" } else { "boom" }.into(),
        message: "it broke".into(),
        log_range: None,
        exit_code: Some(3),
        correlation_id: "c".into(),
    };
    let stats = f.store.writer().stats();
    let (writes_before, batches_before) = (
        stats.writes.load(Ordering::Relaxed),
        stats.batches.load(Ordering::Relaxed),
    );
    let writes = leased.iter().enumerate().map(|(i, job)| {
        let store = f.store.clone();
        let (id, lease) = (job.job_id.clone(), job.lease_id.clone());
        let failure = failure(&lease, i % 4 == 3);
        async move {
            match i % 4 {
                0 => {
                    store.report_progress(T, &id, &report(&lease, i as f64)).await.unwrap();
                    let mut second = report(&lease, 50.0 + i as f64);
                    second.stage = Some("render".into());
                    second.step = Some("frame".into());
                    second.step_index = Some(2);
                    store.report_progress(T, &id, &second).await.unwrap();
                }
                1 => {
                    let done = Completion {
                        lease_id: lease,
                        result: Some(json!({ "i": i })),
                        correlation_id: "c".into(),
                        artifacts: vec![],
                    };
                    store.complete_job(T, &id, &done).await.unwrap();
                }
                _ => {
                    store.fail_job(T, &id, &failure).await.unwrap();
                }
            }
        }
    });
    join_all(writes).await;
    let writes = stats.writes.load(Ordering::Relaxed) - writes_before;
    let batches = stats.batches.load(Ordering::Relaxed) - batches_before;
    assert!(writes > batches, "{writes} writes in {batches} batches: some were batched");
    for (i, job) in leased.iter().enumerate() {
        let got = f.store.get_job(T, &job.job_id).await.unwrap();
        match i % 4 {
            0 => {
                assert_eq!(got.state, "working", "job {i}");
                assert_eq!(got.percent, Some(50.0 + i as f64), "job {i}");
                assert_eq!(got.message.as_deref(), Some(format!("{}%", 50 + i).as_str()));
                assert_eq!(got.stage.as_deref(), Some("render"));
                assert_eq!(got.step.as_deref(), Some("frame"));
                assert_eq!(got.step_index, Some(2));
                assert_eq!(got.lease_id.as_deref(), Some(job.lease_id.as_str()));
                assert!(got.lease_until.unwrap() > got.updated_at, "job {i}: lease");
            }
            1 => {
                assert_eq!(got.state, "done", "job {i}");
                assert_eq!(got.result.as_deref(), Some(format!(r#"{{"i":{i}}}"#).as_str()));
                assert!(got.finished_at.is_some(), "job {i}");
                assert_eq!(got.state_changed_at, got.finished_at.unwrap(), "job {i}");
            }
            2 => {
                assert_eq!(got.state, "failed", "job {i}");
                assert_eq!(got.error_code.as_deref(), Some("boom"));
                assert_eq!(got.error_message.as_deref(), Some("it broke"));
                assert!(got.finished_at.is_some(), "job {i}");
            }
            _ => {
                assert_eq!(got.state, "queued", "job {i}: retried");
                assert_eq!(got.attempt, 1, "job {i}");
                assert_eq!(got.lease_id, None, "job {i}");
                assert_eq!(got.finished_at, None, "job {i}");
            }
        }
    }
    let leased_ids: HashSet<&str> = leased.iter().map(|j| j.job_id.as_str()).collect();
    let untouched = f.store.lease_jobs(T, &lease_req("x", 100, 600)).await.unwrap();
    let fresh: Vec<_> = untouched
        .iter()
        .filter(|j| !leased_ids.contains(j.job_id.as_str()))
        .collect();
    assert_eq!(fresh.len(), 20, "the 20 jobs never leased are still queued");
}

/// ADR 0048: an `UPDATE` of one column writes exactly that column, for each
/// column a write can change (the column list, the change mask and the
/// statement's binds agree).
#[actix_web::test]
async fn each_job_column_is_written_alone_by_an_update_of_that_column() {
    let f = fixture().await;
    let (job, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    let base = f.store.get_job(T, &job.job_id).await.unwrap();
    for (i, column) in JOB_UPDATE_COLUMNS.iter().enumerate() {
        let mut changed = base.clone();
        let s = |v: &str| Some(v.to_owned());
        match i {
            0 => changed.state = "working".into(),
            1 => changed.blocked_reason = s("waiting"),
            2 => changed.attempt = 7,
            3 => changed.lease_id = s("lease"),
            4 => changed.lease_worker = s("worker"),
            5 => changed.lease_until = Some(123),
            6 => changed.lease_seconds = Some(45),
            7 => changed.stage = s("stage"),
            8 => changed.step = s("step"),
            9 => changed.step_index = Some(3),
            10 => changed.message = s("message"),
            11 => changed.percent = Some(12.5),
            12 => changed.log_lines = 9,
            13 => changed.result = s(r#"{"r":1}"#),
            14 => changed.error_code = s("code"),
            15 => changed.error_message = s("error"),
            16 => changed.failure_start = Some(1),
            17 => changed.failure_end = Some(2),
            18 => changed.idempotency_key = s("key"),
            19 => changed.updated_at += 1,
            20 => changed.state_changed_at += 1,
            21 => changed.started_at = Some(5),
            22 => changed.finished_at = Some(6),
            _ => changed.step_started_at = Some(7),
        }
        assert_eq!(changed.changed_columns(&base), Some(1 << i), "{column}");
        let mut tx = f.store.begin(0).await.unwrap();
        tx.update_jobs(1 << i, &[&changed]).await.unwrap();
        let (_, jobs) = tx.job_and_run(T, &job.job_id).await.unwrap().unwrap();
        tx.rollback().await.unwrap();
        let got = jobs.into_iter().find(|j| j.job_id == job.job_id).unwrap();
        assert_eq!(format!("{got:?}"), format!("{changed:?}"), "{column}");
    }
}

/// ADR 0053: a lane keeps its connection between batches. A batch dropped
/// before its end (its task cancelled) leaves its transaction open there:
/// the lane's next `begin` rolls it back, so nothing it wrote is kept and
/// the lane goes on writing.
#[actix_web::test]
async fn a_batch_dropped_before_its_end_keeps_nothing_and_the_lane_goes_on() {
    let f = fixture().await;
    let (job, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    let base = f.store.get_job(T, &job.job_id).await.unwrap();
    let mut changed = base.clone();
    changed.message = Some("never committed".into());
    let mut tx = f.store.begin(0).await.unwrap();
    tx.update_jobs(1 << 10, &[&changed]).await.unwrap();
    drop(tx);
    // The same lane again: its `begin` must roll the abandoned one back
    // (SQLite refuses a `BEGIN` inside a transaction; PostgreSQL warns and
    // would keep the change in the new one).
    let mut tx = f.store.begin(0).await.unwrap();
    let (_, jobs) = tx.job_and_run(T, &job.job_id).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    let seen = jobs.into_iter().find(|j| j.job_id == job.job_id).unwrap();
    assert_eq!(seen.message, base.message, "the dropped batch's write is gone");
    let stored = f.store.get_job(T, &job.job_id).await.unwrap();
    assert_eq!(stored.message, base.message);
    // And the writer still commits through that lane.
    let (second, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    assert_eq!(f.store.get_job(T, &second.job_id).await.unwrap().state, "queued");
}

/// ADR 0053: a lane's held connection that the server ended while the lane
/// was idle (a restart) is replaced at the next batch's `BEGIN`: no write
/// fails.
#[actix_web::test]
async fn a_lane_whose_connection_the_server_ended_opens_it_again() {
    let f = fixture().await;
    f.store.submit_job(T, new_job(None)).await.unwrap();
    if !f._db.terminate_connections() {
        eprintln!("skipped: an embedded SQLite connection cannot be ended from outside");
        return;
    }
    let mut outcomes = Vec::new();
    for _ in 0..12 {
        outcomes.push(f.store.submit_job(T, new_job(None)).await.is_ok());
    }
    assert!(outcomes.iter().all(|ok| *ok), "{outcomes:?}");
}

/// ADR 0053: a batch's rows are written together (on SQLite in one round
/// trip). An update of a job row that is not there fails the write, and
/// the rollback keeps none of the rows written with it.
#[actix_web::test]
async fn a_batch_whose_job_row_to_update_is_missing_fails_and_keeps_nothing() {
    let f = fixture().await;
    let (job, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    let base = f.store.get_job(T, &job.job_id).await.unwrap();
    let mut changed = base.clone();
    changed.message = Some("written with a missing row".into());
    let mut ghost = changed.clone();
    ghost.job_id = "01J00000000000000000000000".into();
    let mut tx = f.store.begin(0).await.unwrap();
    let mut rows = BatchRows::default();
    rows.updates.push((1 << 10, vec![&changed, &ghost]));
    let err = tx.write_rows(&rows).await.expect_err("a missing row fails the write");
    assert!(matches!(err, StoreError::NotCommitted(_)), "{err:?}");
    tx.rollback().await.unwrap();
    assert_eq!(f.store.get_job(T, &job.job_id).await.unwrap().message, base.message);
    // The same rows without the missing one are written.
    let mut tx = f.store.begin(0).await.unwrap();
    let mut rows = BatchRows::default();
    rows.updates.push((1 << 10, vec![&changed]));
    tx.write_rows(&rows).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(f.store.get_job(T, &job.job_id).await.unwrap().message, changed.message);
}

/// A trigger that makes the transaction of a job update setting the message
/// `poison` fail at its `COMMIT`: it inserts a job of a run that does not
/// exist, which the deferred foreign key refuses only then.
fn poison_commits(db: &TestDb) {
    let insert = "INSERT INTO jobs (job_id, tenant_id, run_id, pack, state, max_attempts, correlation_id,
                                    created_at, updated_at, state_changed_at)";
    db.execute(&match crate::BACKEND {
        crate::testdb::Backend::Sqlite => format!(
            "CREATE TRIGGER poison AFTER UPDATE ON jobs WHEN NEW.message = 'poison' BEGIN
               {insert} VALUES ('poison-' || hex(randomblob(8)), NEW.tenant_id, 'no-such-run', NEW.pack,
                                'done', 1, 'c', 0, 0, 0);
             END;"
        ),
        crate::testdb::Backend::Postgres => format!(
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN
               {insert} VALUES ('poison-' || gen_random_uuid()::text, NEW.tenant_id, 'no-such-run', NEW.pack,
                                'done', 1, 'c', 0, 0, 0);
               RETURN NULL;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER poison AFTER UPDATE ON jobs FOR EACH ROW WHEN (NEW.message = 'poison')
               EXECUTE FUNCTION poison();"
        ),
    });
}

/// A batch whose `COMMIT` fails answers every write in it with an error and
/// keeps none of them; the writes queued behind it are applied and kept,
/// each exactly once, and the run's timeline has no gap where it failed.
#[actix_web::test]
async fn writes_behind_a_batch_whose_commit_fails_are_kept_exactly_once() {
    let f = fixture().await;
    // One run: every write appends to its timeline, so a write applied on
    // the rows of a batch that did not commit would leave a gap in it.
    let (first, _) = f.store.submit_job(T, new_job(None)).await.unwrap();
    for _ in 1..40 {
        f.store.submit_job(T, new_job(Some(&first.run_id))).await.unwrap();
    }
    let leased = f.store.lease_jobs(T, &lease_req("w", 40, 600)).await.unwrap();
    assert_eq!(leased.len(), 40);
    poison_commits(&f._db);
    // Per job: its last committed message, and how many reports committed.
    let mut kept: HashMap<String, (Option<String>, usize)> = HashMap::new();
    let mut failed = 0;
    for round in 0..5 {
        let writes = leased.iter().enumerate().map(|(i, job)| {
            let store = f.store.clone();
            let mut r = report(&job.lease_id, round as f64);
            r.message = Some(if i == 20 { "poison".into() } else { format!("{round}/{i}") });
            let (id, message) = (job.job_id.clone(), r.message.clone());
            async move {
                let result = store.report_progress(T, &id, &r).await;
                (id, message, result)
            }
        });
        for (id, message, result) in join_all(writes).await {
            match result {
                Ok(_) => {
                    assert_ne!(message.as_deref(), Some("poison"), "a poisoned write never commits");
                    let entry = kept.entry(id).or_default();
                    *entry = (message, entry.1 + 1);
                }
                Err(StoreError::NotCommitted(_)) => failed += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert!(failed > 0, "the poisoned commits failed");
    let query = TimelineQuery {
        after: 0,
        limit: 100_000,
        correlation_id: None,
    };
    let events = f.store.timeline(T, &first.run_id, &query).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the run's seqs have no gap and no duplicate");
    for job in &leased {
        let stored = f.store.get_job(T, &job.job_id).await.unwrap();
        let (message, reports) = kept.get(&job.job_id).cloned().unwrap_or_default();
        assert_eq!(stored.message, message, "job {} is as its last committed report left it", job.job_id);
        let progress = events
            .iter()
            .filter(|e| e.event_type == "job.progress" && e.job_id.as_deref() == Some(job.job_id.as_str()))
            .count();
        assert_eq!(progress, reports, "one job.progress event per committed report of {}", job.job_id);
    }
    let (poison, _) = kept.get(&leased[20].job_id).cloned().unwrap_or_default();
    assert_eq!(poison, None, "the poisoned job kept none of its reports");
}
