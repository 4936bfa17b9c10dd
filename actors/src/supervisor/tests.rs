//! Runtime behaviour with an in-memory loader standing in for the store.
use super::*;
use crate::envelope::{new_ulid, types, NewEnvelope};
use crate::loader::{LoadError, LoadedRun, Source};
use crate::run::{Crash, FirstSignalReply, GetFirstSignal};
use crate::signal::{derive, JobFacts, JobState, SignalView};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// Runs and their current signals; counts every load.
#[derive(Default)]
struct MemLoader {
    runs: Mutex<HashMap<RunKey, Option<Arc<SignalView>>>>,
    loads: AtomicUsize,
}

#[async_trait]
impl RunLoader for MemLoader {
    async fn load(&self, key: &RunKey) -> Result<Option<LoadedRun>, LoadError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        // A cold computation takes a while: let every concurrent reader pile up.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let runs = self.runs.lock().unwrap();
        Ok(runs.get(key).map(|signal| LoadedRun {
            last_seq: signal.as_ref().map_or(0, |s| s.seq),
            signal: signal.clone(),
            source: Source::ColdStart,
        }))
    }
}

fn view(run: &str, state: JobState, seq: u64) -> Arc<SignalView> {
    let job = JobFacts {
        job_id: "01JD0000000000000000000001".into(),
        state,
        blocked: None,
        stage: None,
        step: None,
        message: None,
        created_at_ms: 1,
        state_changed_at: "2026-11-22T08:00:00.000Z".into(),
        failure_range: None,
    };
    Arc::new(SignalView::new(derive(run, &[job]).unwrap(), seq))
}

fn setup(config: ActorConfig, runs: &[&str]) -> (Supervisor, Arc<MemLoader>) {
    let loader = Arc::new(MemLoader::default());
    for run in runs {
        loader
            .runs
            .lock()
            .unwrap()
            .insert(RunKey::new("t", run), Some(view(run, JobState::Queued, 2)));
    }
    (Supervisor::new(loader.clone(), config), loader)
}

async fn read(sup: &Supervisor, run: &str) -> FirstSignalReply {
    let handle = sup.lookup(&RunKey::new("t", run));
    handle
        .addr
        .send(GetFirstSignal { warm: handle.warm })
        .await
        .unwrap()
}

fn etag(reply: &FirstSignalReply) -> String {
    match reply {
        FirstSignalReply::Signal { view, .. } => view.etag.clone(),
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[actix_rt::test]
async fn concurrent_cold_reads_spawn_one_actor_and_load_once() {
    let (sup, loader) = setup(ActorConfig::default(), &["r1"]);
    let reads: Vec<_> = (0..1000).map(|_| read(&sup, "r1")).collect();
    let replies = futures_util::future::join_all(reads).await;
    assert_eq!(sup.spawned(), 1);
    assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
    let first = etag(&replies[0]);
    assert!(replies.iter().all(|r| etag(r) == first));
    assert!(matches!(
        replies[0],
        FirstSignalReply::Signal {
            hit: false,
            source: Source::ColdStart,
            ..
        }
    ));
    // Once loaded, readers are memory hits.
    assert!(matches!(
        read(&sup, "r1").await,
        FirstSignalReply::Signal {
            hit: true,
            source: Source::Snapshot,
            ..
        }
    ));
    assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
}

#[actix_rt::test]
async fn unknown_run_is_not_found_and_not_kept() {
    let (sup, _) = setup(ActorConfig::default(), &[]);
    assert!(matches!(
        read(&sup, "nope").await,
        FirstSignalReply::NotFound
    ));
    tokio::task::yield_now().await;
    assert_eq!(sup.len(), 0);
}

#[actix_rt::test]
async fn idle_actor_is_evicted_and_comes_back_with_the_same_signal() {
    tokio::time::pause();
    let config = ActorConfig {
        idle_evict: Duration::from_secs(60),
        ..Default::default()
    };
    let (sup, loader) = setup(config, &["r1"]);
    let before = etag(&read(&sup, "r1").await);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(sup.len(), 1, "not idle long enough yet");
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(sup.len(), 0, "evicted after IdleEvictSeconds");
    let after = read(&sup, "r1").await;
    assert_eq!(etag(&after), before);
    assert_eq!(loader.loads.load(Ordering::SeqCst), 2);
    assert_eq!(sup.spawned(), 2);
}

#[actix_rt::test]
async fn max_resident_evicts_least_recently_used() {
    let config = ActorConfig {
        max_resident: 3,
        ..Default::default()
    };
    let (sup, _) = setup(config, &["a", "b", "c", "d"]);
    for run in ["a", "b", "c"] {
        read(&sup, run).await;
    }
    read(&sup, "a").await; // `b` is now the least recently used
    read(&sup, "d").await;
    assert_eq!(sup.len(), 3);
    assert!(sup.resident(&RunKey::new("t", "b")).is_none());
    for run in ["a", "c", "d"] {
        assert!(
            sup.resident(&RunKey::new("t", run)).is_some(),
            "{run} stays"
        );
    }
}

#[actix_rt::test]
async fn panicked_actor_restarts_from_the_loader() {
    let (sup, loader) = setup(ActorConfig::default(), &["r1"]);
    let before = etag(&read(&sup, "r1").await);
    let addr = sup.lookup(&RunKey::new("t", "r1")).addr;
    assert!(addr.send(Crash).await.is_err(), "the crash drops the reply");
    assert_eq!(etag(&read(&sup, "r1").await), before);
    assert_eq!(sup.spawned(), 2);
    assert_eq!(loader.loads.load(Ordering::SeqCst), 2);
}

#[actix_rt::test]
async fn published_signal_changes_are_served_and_stale_ones_ignored() {
    let (sup, loader) = setup(ActorConfig::default(), &["r1"]);
    read(&sup, "r1").await;
    let key = RunKey::new("t", "r1");
    let newer = view("r1", JobState::Working, 5);
    let older = view("r1", JobState::Loading, 4);
    let event = |v: &Arc<SignalView>| {
        let env = NewEnvelope {
            event_id: new_ulid(),
            event_type: types::SIGNAL_CHANGED,
            tenant_id: "t",
            run_id: "r1",
            job_id: None,
            seq: v.seq,
            occurred_at: "2026-11-22T08:00:00.000Z".into(),
            correlation_id: "c",
            payload: serde_json::json!({}),
        }
        .seal();
        Published::new(env, Some(v.clone()))
    };
    sup.publish(&key, vec![event(&newer)].into());
    sup.publish(&key, vec![event(&older)].into());
    assert_eq!(etag(&read(&sup, "r1").await), newer.etag);
    assert_eq!(
        loader.loads.load(Ordering::SeqCst),
        1,
        "no reload for published events"
    );
}
