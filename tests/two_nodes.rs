//! Two real `runsignal` processes on one PostgreSQL schema and one Redis
//! (SPEC §12, issue 10 point 3): what a client of either node sees when the
//! other one writes, leases and sends webhooks.
//!
//! Each test starts the binary cargo built twice, with
//! `messaging.transport=redis`, `FirstSignal.Cache.Backend=redis` and a
//! `KeyPrefix` of its own, on free ports, and waits for both `/readyz`; the
//! processes are killed when the test ends, a panic included. Skipped (the
//! reason printed) when `RUNSIGNAL_TEST_DATABASE_URL` or
//! `RUNSIGNAL_TEST_REDIS_URL` is unset; failing when either is set and its
//! server does not answer.

#[path = "common/testdb.rs"]
mod testdb;

#[allow(dead_code)]
#[path = "api/webhooks/receiver.rs"]
mod receiver;

#[path = "two_nodes/cluster.rs"]
mod cluster;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster::{carried, read_sse, read_sse_idle, read_ws, Cluster, Node};
use futures_util::future::join_all;
use futures_util::StreamExt;

#[actix_web::test]
async fn a_subscriber_on_b_sees_what_is_written_through_a_in_order_once() {
    let Some(c) = Cluster::start(&[]).await else {
        return;
    };
    let (a, b) = (&c.a, &c.b);
    let run = a.create_run().await;
    // On B: an SSE stream and a WebSocket subscription to the run.
    let sse = b.sse(&run, None).await;
    let mut ws = b.ws().await;
    ws.subscribe_run(&run).await;
    let before = a.last_seq(&run).await;
    let sse = actix_rt::spawn(read_sse(sse));
    let ws = actix_rt::spawn(async move { read_ws(&mut ws).await });

    // Everything written through A.
    let job = a.submit(&run, None).await;
    let lease = a.lease_only(&job).await;
    for i in 0..100 {
        a.progress(&job, &lease, i).await;
    }
    a.complete(&job, &lease).await;

    let want: Vec<(u64, String)> = carried(&a.timeline(&run).await)
        .into_iter()
        .filter(|(seq, _)| *seq > before)
        .collect();
    assert_eq!(want.iter().filter(|(_, e)| e == "progress").count(), 100);
    for (how, got) in [
        ("SSE", sse.await.unwrap()),
        ("WebSocket", ws.await.unwrap()),
    ] {
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{how} on B: in seq order, no duplicate: {ids:?}"
        );
        let after: Vec<(u64, String)> = got.into_iter().filter(|(id, _)| *id > before).collect();
        assert_eq!(after, want, "{how} on B: every event written through A");
    }
}

/// Jobs, submitters and workers of the leasing test.
const JOBS: usize = 10_000;
const SUBMITTERS: usize = 16;
const WORKERS: usize = 8;

/// Each job is in a run of its own: several jobs of one run leased and
/// completed at once through two nodes deadlock in PostgreSQL (reported with
/// issue 10; the writer retries, but a lease can still answer 503).
#[actix_web::test]
async fn eight_workers_on_both_nodes_lease_each_of_10000_jobs_exactly_once() {
    let Some(c) = Cluster::start(&[]).await else {
        return;
    };
    let nodes = Rc::new([c.a.clone(), c.b.clone()]);
    let started = Instant::now();
    let submitted_all = Rc::new(AtomicBool::new(false));
    let completed = Rc::new(AtomicUsize::new(0));
    let unavailable = Rc::new(AtomicUsize::new(0));

    // Workers first: they long-poll both nodes while the jobs arrive.
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (nodes, submitted_all, completed, unavailable) = (
                nodes.clone(),
                submitted_all.clone(),
                completed.clone(),
                unavailable.clone(),
            );
            actix_rt::spawn(async move {
                let mut leased: Vec<String> = Vec::new();
                let (mut turn, mut idle) = (w, 0);
                loop {
                    // Alternate: lease through one node, complete through the other.
                    let (via, then) = (&nodes[turn % 2], &nodes[(turn + 1) % 2]);
                    turn += 1;
                    let Ok(jobs) = via.try_lease(&format!("worker-{w}"), 25, 1).await else {
                        unavailable.fetch_add(1, Ordering::AcqRel);
                        continue;
                    };
                    if jobs.is_empty() {
                        let all = submitted_all.load(Ordering::Acquire);
                        if completed.load(Ordering::Acquire) == JOBS || (all && idle >= 5) {
                            return leased;
                        }
                        idle += usize::from(all);
                        continue;
                    }
                    idle = 0;
                    // The batch's jobs are finished side by side.
                    join_all(jobs.iter().map(|job| {
                        then.complete(
                            job["jobId"].as_str().unwrap(),
                            job["leaseId"].as_str().unwrap(),
                        )
                    }))
                    .await;
                    completed.fetch_add(jobs.len(), Ordering::AcqRel);
                    leased.extend(jobs.iter().map(|j| j["jobId"].as_str().unwrap().to_owned()));
                }
            })
        })
        .collect();

    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let nodes = nodes.clone();
            actix_rt::spawn(async move {
                let mut mine = Vec::new();
                for i in (s..JOBS).step_by(SUBMITTERS) {
                    mine.push(nodes[i % 2].submit_job(None, None).await);
                }
                mine
            })
        })
        .collect();
    let mut submitted: HashMap<String, String> = HashMap::new();
    for s in join_all(submitters).await {
        submitted.extend(s.unwrap());
    }
    submitted_all.store(true, Ordering::Release);
    let submit_time = started.elapsed();
    let mut leased: Vec<String> = Vec::new();
    for w in join_all(workers).await {
        leased.extend(w.unwrap());
    }
    println!(
        "{JOBS} jobs: submitted in {submit_time:?}, all leased and completed in {:?}; {} leases answered 503",
        started.elapsed(),
        unavailable.load(Ordering::Acquire)
    );

    assert_eq!(submitted.len(), JOBS, "every submission a new job");
    let unique: HashSet<&String> = leased.iter().collect();
    assert_eq!(unique.len(), leased.len(), "no job leased twice");
    let never: Vec<&String> = submitted.keys().filter(|j| !unique.contains(j)).collect();
    assert!(
        never.is_empty(),
        "{} jobs never leased: {never:?}",
        never.len()
    );

    // The store's own account, read through both nodes: each run's timeline
    // is 1..=n, and its job went queued → loading → done once.
    let checks = futures_util::stream::iter(submitted.iter().enumerate())
        .map(|(i, (job, run))| {
            let node = Node::clone(&nodes[i % 2]);
            async move {
                let events = node.timeline(run).await;
                let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
                let want: Vec<u64> = (1..=seqs.len() as u64).collect();
                assert_eq!(seqs, want, "run {run}: a gap-free timeline");
                let states: Vec<&str> = events
                    .iter()
                    .filter(|e| e["jobId"] == job.as_str())
                    .filter_map(|e| e["type"].as_str())
                    .filter(|t| matches!(*t, "job.queued" | "job.loading" | "job.done"))
                    .collect();
                assert_eq!(
                    states,
                    ["job.queued", "job.loading", "job.done"],
                    "job {job}: leased once, done"
                );
            }
        })
        .buffer_unordered(16);
    checks.collect::<Vec<()>>().await;
}

/// Hooked jobs in the webhook test; each has four transitions.
const HOOKED: usize = 50;

/// Run `HOOKED` hooked jobs through both nodes; returns the idempotency keys
/// the outbox holds for them, once every delivery is recorded `delivered`.
async fn hooked_jobs(c: &Cluster, hook: &str) -> Vec<String> {
    let nodes = [&c.a, &c.b];
    let jobs: Vec<String> = join_all((0..HOOKED).map(|i| async move {
        let run = nodes[i % 2].create_run().await;
        nodes[i % 2].submit(&run, Some(hook)).await
    }))
    .await;
    // Four workers, each alternating between the nodes, until none is left.
    join_all((0..4).map(|w| async move {
        for turn in w.. {
            let (via, then) = (nodes[turn % 2], nodes[(turn + 1) % 2]);
            let Some(job) = via.lease(&format!("hook-worker-{w}"), 1, 0).await.pop() else {
                return;
            };
            let (id, lease) = (
                job["jobId"].as_str().unwrap(),
                job["leaseId"].as_str().unwrap(),
            );
            then.progress(id, lease, 1).await;
            via.complete(id, lease).await;
        }
    }))
    .await;
    let mut keys = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let ds = nodes[i % 2]
            .wait_deliveries(job, |ds| {
                ds.len() == 4 && ds.iter().all(|d| d["status"] == "delivered")
            })
            .await;
        keys.extend(
            ds.iter()
                .map(|d| d["idempotency_key"].as_str().unwrap().to_owned()),
        );
    }
    keys
}

/// Every key delivered once: none missing, none twice. Waits for the
/// receiver to have every key, then lets late duplicates arrive.
async fn assert_each_delivered_once(rx: &receiver::Receiver, keys: &[String]) {
    let want: HashSet<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(want.len(), keys.len(), "the outbox's keys are distinct");
    rx.wait("every transition", |hits| {
        let got: HashSet<&str> = hits.iter().map(receiver::Hit::id).collect();
        want.is_subset(&got)
    })
    .await;
    // A second send of a row already recorded `delivered` would be on its way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for hit in rx.hits() {
        *count.entry(hit.id().to_owned()).or_default() += 1;
    }
    let twice: Vec<(&String, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let stray: Vec<&String> = count
        .keys()
        .filter(|k| !want.contains(k.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "deliveries the outbox does not hold: {stray:?}"
    );
}

#[actix_web::test]
async fn two_dispatchers_deliver_each_transition_once() {
    let Some(c) = Cluster::start(&[("Webhooks__AllowedNetworks__0", "127.0.0.0/8")]).await else {
        return;
    };
    let rx = receiver::Receiver::start(Vec::new()).await;
    let keys = hooked_jobs(&c, &rx.url()).await;
    assert_eq!(keys.len(), HOOKED * 4);
    assert_each_delivered_once(&rx, &keys).await;
}

/// Subscribers and runs of the fan-out test.
const SUBSCRIBERS: usize = 1000;
const FANOUT_RUNS: usize = 4;
const WRITES_PER_NODE: usize = 20;

#[actix_web::test]
async fn a_thousand_subscribers_on_both_nodes_get_every_event_once_in_order() {
    let Some(c) = Cluster::start(&[]).await else {
        return;
    };
    let nodes = [&c.a, &c.b];
    let mut runs = Vec::new();
    for i in 0..FANOUT_RUNS {
        let run = nodes[i % 2].create_run().await;
        let job = nodes[i % 2].submit(&run, None).await;
        let lease = nodes[(i + 1) % 2].lease_only(&job).await;
        runs.push((run, job, lease));
    }
    // Half the subscribers on each node, spread over the runs; each follows
    // its run to `completed`, resuming with its last id if it is dropped.
    let mut before = HashMap::new();
    for (run, _, _) in &runs {
        before.insert(run.clone(), c.a.last_seq(run).await);
    }
    let subscribers: Vec<_> = join_all((0..SUBSCRIBERS).map(|s| {
        let node = Node::clone(nodes[s % 2]);
        let run = runs[(s / 2) % FANOUT_RUNS].0.clone();
        async move {
            let first = node.sse(&run, None).await;
            (s, run.clone(), actix_rt::spawn(node.follow(run, first)))
        }
    }))
    .await;
    // Written through both nodes, interleaved.
    for i in 0..WRITES_PER_NODE * 2 {
        for (run, job, lease) in &runs {
            let _ = run;
            nodes[i % 2].progress(job, lease, i).await;
        }
    }
    for (i, (_, job, lease)) in runs.iter().enumerate() {
        nodes[i % 2].complete(job, lease).await;
    }
    let mut want = HashMap::new();
    for (run, _, _) in &runs {
        let events: Vec<(u64, String)> = carried(&c.a.timeline(run).await)
            .into_iter()
            .filter(|(seq, _)| *seq > before[run])
            .collect();
        assert_eq!(
            events.iter().filter(|(_, e)| e == "progress").count(),
            WRITES_PER_NODE * 2
        );
        want.insert(run.clone(), events);
    }
    for (s, run, task) in subscribers {
        let got = task.await.unwrap();
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "subscriber {s}: in order, once: {ids:?}"
        );
        let after: Vec<(u64, String)> = got
            .into_iter()
            .filter(|(id, _)| *id > before[&run])
            .collect();
        assert_eq!(
            after, want[&run],
            "subscriber {s} of run {run}: every event"
        );
    }
}

impl Node {
    /// Follow a run's SSE stream to `completed`, reconnecting with the last
    /// id (as EventSource does) when the server ends it early, e.g. because
    /// the subscriber's queue overflowed. A stream that goes silent is not
    /// resumed: the events it missed would come from the store, not from the
    /// other node.
    async fn follow(self, run: String, first: reqwest::Response) -> Vec<(u64, String)> {
        let (mut got, mut idle) = read_sse_idle(first).await;
        for _ in 0..5 {
            if idle || got.last().is_some_and(|(_, e)| e == "completed") {
                break;
            }
            let last = got.last().map(|(id, _)| *id);
            let res = self.sse(&run, last).await;
            if res.status() == 204 {
                break;
            }
            let (more, silent) = read_sse_idle(res).await;
            got.extend(more);
            idle = silent;
        }
        got
    }
}

#[actix_web::test]
async fn a_node_that_joins_does_not_resend_what_another_node_is_sending() {
    let Some(mut c) = Cluster::start(&[("Webhooks__AllowedNetworks__0", "127.0.0.0/8")]).await
    else {
        return;
    };
    use receiver::Answer::Hold;
    let rx = receiver::Receiver::start(vec![Hold, Hold, Hold]).await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(c.a.submit_job(None, Some(&rx.url())).await.0);
    }
    // The three `queued` deliveries are in flight, held by the receiver.
    rx.wait_count(3).await;
    let _c = c.join().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rx.release(3);
    let mut keys = Vec::new();
    for job in &jobs {
        let ds =
            c.a.wait_deliveries(job, |ds| ds.len() == 1 && ds[0]["status"] == "delivered")
                .await;
        keys.push(ds[0]["idempotency_key"].as_str().unwrap().to_owned());
    }
    assert_each_delivered_once(&rx, &keys).await;
}
