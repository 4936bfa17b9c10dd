//! Runtime behaviour with an in-memory loader standing in for the store.
use super::*;
use crate::envelope::{new_ulid, types, NewEnvelope};
use crate::loader::{LoadError, LoadedRun, Source};
use crate::run::{Crash, FirstSignalReply, GetFirstSignal, Subscribe, SubscribeReply, WhichThread};
use crate::signal::{derive, JobFacts, JobState, SignalView};
use crate::subscriber::{Delivery, Filter, StreamKind, Wire};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// Runs, their current signals and timelines; counts every load.
#[derive(Default)]
struct MemLoader {
    runs: Mutex<HashMap<RunKey, Option<Arc<SignalView>>>>,
    timeline: Mutex<Vec<Arc<Published>>>,
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
            completed_seq: None,
            signal: signal.clone(),
            source: Source::ColdStart,
        }))
    }

    async fn events_after(
        &self,
        _key: &RunKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Arc<Published>>, LoadError> {
        let timeline = self.timeline.lock().unwrap();
        Ok(timeline
            .iter()
            .filter(|e| e.envelope.seq > after)
            .take(limit as usize)
            .cloned()
            .collect())
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

/// Two threads spawning actors for many runs while a third counts them:
/// the count never passes `MaxResident`, not even between a spawn and the
/// eviction that makes room for it.
#[test]
fn the_resident_count_never_passes_max_resident_under_concurrent_spawns() {
    const MAX: usize = 20;
    let runs: Vec<String> = (0..400).map(|i| format!("r{i}")).collect();
    let names: Vec<&str> = runs.iter().map(String::as_str).collect();
    let (sup, _) = setup(
        ActorConfig {
            max_resident: MAX,
            ..Default::default()
        },
        &names,
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (sup, done) = (sup.clone(), done.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                most = most.max(sup.len());
            }
            most
        })
    };
    let spawners: Vec<_> = (0..2)
        .map(|t| {
            let (sup, runs) = (sup.clone(), runs.clone());
            std::thread::spawn(move || {
                actix::System::new().block_on(async move {
                    for round in 0..5 {
                        for (i, run) in runs.iter().enumerate() {
                            if (i + round + t) % 2 == 0 {
                                sup.lookup(&RunKey::new("t", run));
                                // Let the new actor start (and evicted
                                // ones stop) on this thread's system.
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                });
            })
        })
        .collect();
    for s in spawners {
        s.join().expect("spawner thread");
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let most = sampler.join().expect("sampler thread");
    assert!(sup.spawned() > 400, "actors were spawned and evicted");
    assert!(most <= MAX, "at most {MAX} resident, saw {most}");
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
    let newer = view("r1", JobState::Working, 4);
    let older = view("r1", JobState::Loading, 3);
    sup.publish(&key, vec![signal_event(&newer)].into());
    sup.publish(&key, vec![signal_event(&older)].into());
    assert_eq!(etag(&read(&sup, "r1").await), newer.etag);
    assert_eq!(
        loader.loads.load(Ordering::SeqCst),
        1,
        "no reload for published events"
    );
}

fn event(run: &str, seq: u64, ty: &'static str, job: Option<&str>, corr: &str) -> Arc<Published> {
    let env = NewEnvelope {
        event_id: new_ulid(),
        event_type: ty,
        tenant_id: "t",
        run_id: run,
        job_id: job,
        seq,
        occurred_at: "2026-11-22T08:00:00.000Z".into(),
        correlation_id: corr,
        payload: serde_json::json!({"n": seq}),
    }
    .seal();
    Published::new(env, None)
}

async fn subscribe(
    sup: &Supervisor,
    run: &str,
    filter: Filter,
    capacity: usize,
) -> crate::queue::Receiver {
    let (tx, rx) = crate::queue::channel(capacity);
    let addr = sup.lookup(&RunKey::new("t", run)).addr;
    match addr
        .send(Subscribe {
            filter,
            wire: Wire::Sse,
            tx,
        })
        .await
        .unwrap()
    {
        SubscribeReply::Subscribed { live_from, .. } => assert_eq!(live_from, 2),
        other => panic!("{other:?}"),
    }
    rx
}

fn seqs(rx: &mut crate::queue::Receiver) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(d) = rx.try_recv() {
        out.push(d.seq);
    }
    out
}

#[actix_rt::test]
async fn out_of_order_publishes_are_delivered_in_seq_order() {
    let (sup, _) = setup(ActorConfig::default(), &["r1"]);
    let mut rx = subscribe(&sup, "r1", Filter::new(StreamKind::Run), 64).await;
    let key = RunKey::new("t", "r1");
    for seq in [5, 3, 4, 4, 2] {
        sup.publish(
            &key,
            vec![event("r1", seq, types::JOB_PROGRESS, Some("j"), "c")].into(),
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        seqs(&mut rx),
        vec![3, 4, 5],
        "in order, once each, nothing at or below live_from"
    );
}

#[actix_rt::test]
async fn a_gap_that_persists_is_filled_from_the_store() {
    tokio::time::pause();
    let (sup, loader) = setup(ActorConfig::default(), &["r1"]);
    loader
        .timeline
        .lock()
        .unwrap()
        .push(event("r1", 3, types::JOB_PROGRESS, Some("j"), "c"));
    let mut rx = subscribe(&sup, "r1", Filter::new(StreamKind::Run), 64).await;
    let key = RunKey::new("t", "r1");
    sup.publish(
        &key,
        vec![
            event("r1", 4, types::JOB_PROGRESS, Some("j"), "c"),
            event("r1", 5, types::JOB_QUEUED, Some("j"), "c"),
        ]
        .into(),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(seqs(&mut rx).is_empty(), "held back behind the gap");
    tokio::time::sleep(crate::run::GAP_WAIT + Duration::from_millis(50)).await;
    assert_eq!(seqs(&mut rx), vec![3, 4, 5]);
}

#[actix_rt::test]
async fn a_full_queue_drops_only_that_subscriber_and_frames_are_shared() {
    let (sup, _) = setup(ActorConfig::default(), &["r1"]);
    let mut slow = subscribe(&sup, "r1", Filter::new(StreamKind::Run), 2).await;
    let mut fast = subscribe(&sup, "r1", Filter::new(StreamKind::Run), 64).await;
    let mut other = subscribe(&sup, "r1", Filter::new(StreamKind::Run), 64).await;
    let key = RunKey::new("t", "r1");
    let events: Vec<_> = (3..13)
        .map(|s| event("r1", s, types::JOB_PROGRESS, Some("j"), "c"))
        .collect();
    sup.publish(&key, events.into());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let a: Vec<Delivery> = std::iter::from_fn(|| fast.try_recv().ok()).collect();
    let b: Vec<Delivery> = std::iter::from_fn(|| other.try_recv().ok()).collect();
    assert_eq!(
        a.iter().map(|d| d.seq).collect::<Vec<_>>(),
        (3..13).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x.frames[0].as_ptr(),
            y.frames[0].as_ptr(),
            "one encoding shared by every subscriber"
        );
    }
    assert_eq!(seqs(&mut slow), vec![3, 4], "what fit in its queue");
    assert!(slow.recv().await.is_none(), "then its stream ends");
}

#[actix_rt::test]
async fn filters_select_by_job_event_name_and_correlation() {
    let (sup, _) = setup(ActorConfig::default(), &["r1"]);
    let mut job = Filter::new(StreamKind::Job);
    job.job_id = Some("j1".into());
    let mut job_rx = subscribe(&sup, "r1", job, 64).await;
    let mut only_progress = Filter::new(StreamKind::Run);
    only_progress.events = Some(vec!["progress".into()]);
    only_progress.correlation_id = Some("c1".into());
    let mut run_rx = subscribe(&sup, "r1", only_progress, 64).await;
    let mut pack = Filter::new(StreamKind::PackRun);
    pack.job_id = Some("j1".into());
    let mut pack_rx = subscribe(&sup, "r1", pack, 64).await;
    let key = RunKey::new("t", "r1");
    let events = vec![
        event("r1", 3, types::JOB_PROGRESS, Some("j1"), "c1"),
        event("r1", 4, types::JOB_PROGRESS, Some("j2"), "c2"),
        event("r1", 5, types::LOG, Some("j1"), "c1"),
        event("r1", 6, types::STEP_STARTED, Some("j1"), "c1"),
        event("r1", 7, types::JOB_DONE, Some("j1"), "c1"),
    ];
    sup.publish(&key, events.into());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(seqs(&mut job_rx), vec![3, 5, 6, 7]);
    assert_eq!(seqs(&mut run_rx), vec![3]);
    let pack_frames: Vec<Delivery> = std::iter::from_fn(|| pack_rx.try_recv().ok()).collect();
    assert_eq!(
        pack_frames.iter().map(|d| d.seq).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(
        pack_frames.last().unwrap().closes,
        "the job's end closes its pack-run stream"
    );
    let text = String::from_utf8(pack_frames[1].frames[0].to_vec()).unwrap();
    assert!(
        text.starts_with("id: 6\nevent: step\ndata: {") && text.ends_with("}\n\n"),
        "{text}"
    );
}

#[actix_rt::test]
async fn the_end_is_delivered_whatever_the_filter() {
    let (sup, _) = setup(ActorConfig::default(), &["r1"]);
    let mut run = Filter::new(StreamKind::Run);
    run.events = Some(vec!["first_signal".into()]);
    run.correlation_id = Some("c1".into());
    let mut run_rx = subscribe(&sup, "r1", run, 64).await;
    let mut job = Filter::new(StreamKind::Job);
    job.job_id = Some("j1".into());
    job.events = Some(vec!["log".into()]);
    job.correlation_id = Some("c1".into());
    let mut job_rx = subscribe(&sup, "r1", job, 64).await;
    let key = RunKey::new("t", "r1");
    let events = vec![
        event("r1", 3, types::JOB_PROGRESS, Some("j1"), "c1"),
        event("r1", 4, types::JOB_DONE, Some("j1"), "c2"),
        event("r1", 5, types::RUN_COMPLETED, None, "c2"),
    ];
    sup.publish(&key, events.into());
    for (rx, end) in [(&mut run_rx, 5), (&mut job_rx, 4)] {
        // Nothing before the end passes the filters: the first delivery is it.
        let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("delivered")
            .expect("queue open");
        assert_eq!(got.seq, end);
        assert!(got.closes);
        let text = String::from_utf8(got.frames[0].to_vec()).unwrap();
        assert!(
            text.starts_with(&format!("id: {end}\nevent: completed\n")),
            "the end comes as a `completed` frame with its seq: {text}"
        );
    }
}

#[actix_rt::test]
async fn subscribers_keep_an_idle_actor_resident() {
    tokio::time::pause();
    let config = ActorConfig {
        idle_evict: Duration::from_secs(10),
        ..Default::default()
    };
    let (sup, _) = setup(config, &["r1"]);
    let rx = subscribe(&sup, "r1", Filter::new(StreamKind::Run), 8).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(sup.len(), 1, "a watched run is not evicted");
    drop(rx);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(sup.len(), 0, "evicted once its last subscriber left");
}

/// A `signal.changed` of run r1 carrying `v`.
fn signal_event(v: &Arc<SignalView>) -> Arc<Published> {
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
}

#[actix_rt::test]
async fn a_loaded_actors_signal_is_read_without_a_message() {
    let (sup, loader) = setup(ActorConfig::default(), &["r1"]);
    let key = RunKey::new("t", "r1");
    assert!(sup.warm_signal(&key).is_none(), "no actor yet");
    let loaded = etag(&read(&sup, "r1").await);
    let warm = sup
        .warm_signal(&key)
        .expect("a loaded run is read directly");
    assert_eq!(warm.etag, loaded);
    // A run that does not exist, or exists without a signal, is never
    // answered from the published view.
    loader
        .runs
        .lock()
        .unwrap()
        .insert(RunKey::new("t", "empty"), None);
    assert!(matches!(
        read(&sup, "empty").await,
        FirstSignalReply::NoSignal
    ));
    assert!(sup.warm_signal(&RunKey::new("t", "empty")).is_none());
    read(&sup, "nope").await;
    assert!(sup.warm_signal(&RunKey::new("t", "nope")).is_none());
}

#[actix_rt::test]
async fn a_read_after_publish_returns_never_sees_the_signal_before_it() {
    let (sup, _) = setup(ActorConfig::default(), &["r1"]);
    let key = RunKey::new("t", "r1");
    read(&sup, "r1").await;
    for seq in 3..200 {
        let next = view(
            "r1",
            if seq % 2 == 0 {
                JobState::Working
            } else {
                JobState::Loading
            },
            seq,
        );
        sup.publish(&key, vec![signal_event(&next)].into());
        // Right after `publish` returned (a write's caller is answered
        // then), a direct read either declines or has the new signal.
        if let Some(warm) = sup.warm_signal(&key) {
            assert_eq!(warm.seq, seq, "a stale signal was served directly");
        }
        // Through the actor, it is always the new one.
        let FirstSignalReply::Signal { view: got, .. } = read(&sup, "r1").await else {
            panic!("expected a signal");
        };
        assert_eq!(got.seq, seq);
        // Once the actor has handled it, the direct read has it too.
        assert_eq!(sup.warm_signal(&key).map(|v| v.seq), Some(seq));
    }
}

#[actix_rt::test]
async fn direct_reads_keep_a_read_run_resident() {
    tokio::time::pause();
    let config = ActorConfig {
        idle_evict: Duration::from_secs(10),
        ..Default::default()
    };
    let (sup, loader) = setup(config, &["r1"]);
    let key = RunKey::new("t", "r1");
    read(&sup, "r1").await;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(sup.warm_signal(&key).is_some());
    }
    assert_eq!(sup.len(), 1, "read every 5 s for 60 s: not idle");
    assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(sup.len(), 0, "evicted once nobody read it");
    assert!(sup.warm_signal(&key).is_none());
}

#[actix_rt::test]
async fn a_run_waiting_for_a_missing_event_is_not_read_without_a_message() {
    let (sup, _) = setup(ActorConfig::default(), &["r1"]);
    let key = RunKey::new("t", "r1");
    read(&sup, "r1").await;
    // Seq 4 arrives before seq 3 (two writers, or another node). Until seq
    // 3 is there (or fetched from the store after `GAP_WAIT`), the actor
    // holds seq 4 back and answers with the signal of seq 2; a direct read
    // must not be answered from the view meanwhile, so that it is never
    // behind the actor's own answer once the gap closes.
    let newer = view("r1", JobState::Working, 4);
    sup.publish(&key, vec![signal_event(&newer)].into());
    tokio::task::yield_now().await;
    read(&sup, "r1").await;
    assert!(sup.warm_signal(&key).is_none(), "seq 3 is missing");
    sup.publish(
        &key,
        vec![event("r1", 3, types::JOB_QUEUED, None, "c")].into(),
    );
    let FirstSignalReply::Signal { view: got, .. } = read(&sup, "r1").await else {
        panic!("expected a signal");
    };
    assert_eq!(got.seq, 4);
    assert_eq!(sup.warm_signal(&key).map(|v| v.seq), Some(4));
}

#[actix_rt::test]
async fn an_actor_whose_mailbox_is_full_is_retired_and_reloads() {
    let config = ActorConfig {
        mailbox_capacity: 4,
        ..Default::default()
    };
    let (sup, _) = setup(config, &["r1"]);
    let key = RunKey::new("t", "r1");
    // Spawned and not yet run: nothing leaves its mailbox meanwhile.
    sup.lookup(&key);
    for seq in 3..13 {
        sup.publish(
            &key,
            vec![event("r1", seq, types::JOB_QUEUED, None, "c")].into(),
        );
    }
    assert_eq!(sup.len(), 0, "10 events for a mailbox of 4: retired");
    assert!(sup.resident(&key).is_none());
    // Nothing is lost: the next reader loads the run again.
    assert!(matches!(
        read(&sup, "r1").await,
        FirstSignalReply::Signal { .. }
    ));
    assert_eq!(sup.spawned(), 2, "a new actor");
    assert_eq!(sup.len(), 1);
}

#[actix_rt::test]
async fn actors_run_on_their_own_threads_round_robin() {
    let runs = ["r1", "r2", "r3", "r4"];
    let config = ActorConfig {
        threads: 2,
        ..ActorConfig::default()
    };
    let (sup, _) = setup(config, &runs);
    let mut threads = Vec::new();
    for run in runs {
        // Served as before, from the actor's own thread.
        assert!(matches!(
            read(&sup, run).await,
            FirstSignalReply::Signal { .. }
        ));
        let addr = sup.lookup(&RunKey::new("t", run)).addr;
        threads.push(addr.send(WhichThread).await.unwrap());
    }
    let caller = std::thread::current().id();
    assert!(threads.iter().all(|t| *t != caller), "{threads:?}");
    let mut distinct = threads.clone();
    distinct.sort_by_key(|t| format!("{t:?}"));
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "{threads:?}");
    // Four spawns over two threads: alternating.
    assert_eq!(threads[0], threads[2]);
    assert_eq!(threads[1], threads[3]);

    // Without threads of their own, an actor runs where it was looked up.
    let (sup, _) = setup(ActorConfig::default(), &["r1"]);
    let addr = sup.lookup(&RunKey::new("t", "r1")).addr;
    assert_eq!(addr.send(WhichThread).await.unwrap(), caller);
}

#[actix_rt::test]
async fn an_actor_on_a_busy_thread_takes_its_whole_mailbox_before_it_starts() {
    let config = ActorConfig {
        threads: 1,
        ..ActorConfig::default()
    };
    let (sup, _) = setup(config, &["r1"]);
    // The actor thread is busy (a fan-out, say) while the actor is spawned
    // on it and events are published to it.
    let (busy_tx, busy_rx) = std::sync::mpsc::channel::<()>();
    let thread = sup.inner.threads.pick(0).unwrap();
    thread.spawn_fn(move || {
        let _ = busy_rx.recv_timeout(Duration::from_secs(10));
    });
    let key = RunKey::new("t", "r1");
    let addr = sup.lookup(&key).addr;
    for seq in 1..=40 {
        sup.publish(
            &key,
            vec![event("r1", seq, types::JOB_PROGRESS, Some("j"), "c")].into(),
        );
    }
    // Forty messages, more than actix's default mailbox of 16: all queued,
    // none refused, so the actor was not retired as full.
    assert!(addr.connected());
    assert_eq!(sup.resident(&key).map(|a| a == addr), Some(true));
    busy_tx.send(()).unwrap();
    assert!(matches!(
        read(&sup, "r1").await,
        FirstSignalReply::Signal { .. }
    ));
    assert_eq!(sup.spawned(), 1);
}

#[actix_rt::test]
async fn shutdown_stops_the_actor_threads_and_their_actors() {
    let config = ActorConfig {
        threads: 2,
        ..ActorConfig::default()
    };
    let (sup, _) = setup(config, &["r1"]);
    let addr = sup.lookup(&RunKey::new("t", "r1")).addr;
    let on = addr.send(WhichThread).await.unwrap();
    assert_ne!(on, std::thread::current().id());
    sup.shutdown();
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while addr.connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the actor outlived its thread");
    // A later lookup spawns a successor where it is looked up.
    let addr = sup.lookup(&RunKey::new("t", "r1")).addr;
    assert_eq!(
        addr.send(WhichThread).await.unwrap(),
        std::thread::current().id()
    );
}
