//! Two nodes on one PostgreSQL database and one Redis (SPEC §12): events
//! committed through one node reach subscribers on the other, in seq order,
//! without duplicates. Runs in the PostgreSQL binary only, against
//! `RUNSIGNAL_TEST_REDIS_URL` (skipped, with the reason printed, when it is
//! unset; failing when it is set and Redis does not answer).
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

fn redis_url() -> Option<String> {
    let url = std::env::var("RUNSIGNAL_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        println!("two-node tests skipped: RUNSIGNAL_TEST_REDIS_URL is unset");
    }
    url
}

/// Two nodes joined by Redis, on a channel of this test's own.
async fn two_nodes() -> Option<(TestApp, TestApp)> {
    let url = redis_url()?;
    let client = redis::Client::open(url.as_str()).expect("RUNSIGNAL_TEST_REDIS_URL parses");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("RUNSIGNAL_TEST_REDIS_URL is set but Redis does not answer");
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let settings = [
        ("messaging__transport", "redis"),
        ("Redis__Url", url.as_str()),
        ("FirstSignal__Cache__KeyPrefix", prefix.as_str()),
    ];
    let a = spawn_with(&settings).await;
    let b = a.another_node(&settings).await;
    // Both subscribed before anything is written.
    for node in [&a, &b] {
        wait_ready(node).await;
    }
    Some((a, b))
}

async fn wait_ready(node: &TestApp) {
    for _ in 0..300 {
        let res = node.get("/readyz").send().await.unwrap();
        let body: Value = res.json().await.unwrap();
        if body["status"] == "ready" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node never became ready");
}

/// (id, event) of every SSE event until `completed` (30 s without one ends it).
async fn read_to_completed(res: reqwest::Response) -> Vec<(u64, String)> {
    let mut events = res.bytes_stream().eventsource();
    let mut got = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(30), events.next()).await {
        let done = e.event == "completed";
        got.push((e.id.parse().unwrap_or(0), e.event));
        if done {
            break;
        }
    }
    got
}

#[actix_web::test]
async fn a_subscriber_on_b_sees_what_is_written_through_a_in_order_once() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let (job, run, lease) = started_job(&a).await;
    let stream = b
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let reader = actix_rt::spawn(read_to_completed(stream));
    // Let B's stream attach before writing through A.
    tokio::time::sleep(Duration::from_millis(300)).await;
    progress_direct(&a, &job, &lease, 300, 0, 0, 0).await;
    let done = a.worker(&job, "complete", json!({"leaseId": lease})).await;
    assert_eq!(done.status(), 200);
    let got = reader.await.unwrap();
    assert_eq!(got.last().map(|(_, e)| e.as_str()), Some("completed"));
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in seq order, no duplicate: {ids:?}"
    );
    let progress = got.iter().filter(|(_, e)| e == "progress").count();
    assert_eq!(progress, 300, "every progress event written through A");
    // B's first signal is A's: same ETag on both nodes.
    let (sa, sb) = (a.first_signal(&run).await, b.first_signal(&run).await);
    assert_eq!(header(&sa, "etag"), header(&sb, "etag"));
}

#[actix_web::test]
async fn a_subscriber_that_moves_from_a_to_b_with_its_last_id_loses_nothing() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let (job, run, lease) = started_job(&a).await;
    progress_direct(&a, &job, &lease, 50, 0, 0, 0).await;
    // On A: read up to some progress event, then leave.
    let res = a
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .send()
        .await
        .unwrap();
    let mut events = res.bytes_stream().eventsource();
    let mut last = 0u64;
    let mut seen = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(30), events.next()).await {
        last = e.id.parse().unwrap();
        seen.push(last);
        if e.event == "first_signal" {
            break;
        }
    }
    drop(events);
    // Written through both nodes while the client is away.
    progress_direct(&a, &job, &lease, 25, 0, 0, 0).await;
    progress_direct(&b, &job, &lease, 25, 0, 0, 0).await;
    // Back, on B, with its last id.
    let res = b
        .get(&format!("{ORCH}/stream/runs/{run}"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let reader = actix_rt::spawn(read_to_completed(res));
    tokio::time::sleep(Duration::from_millis(200)).await;
    progress_direct(&b, &job, &lease, 10, 0, 0, 0).await;
    assert_eq!(
        a.worker(&job, "complete", json!({"leaseId": lease}))
            .await
            .status(),
        200
    );
    let got = reader.await.unwrap();
    assert_eq!(got.last().map(|(_, e)| e.as_str()), Some("completed"));
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert!(ids[0] > last, "nothing the client had seen comes again");
    // Every progress event after `last`, by the timeline, reached the client.
    let want: Vec<u64> = a
        .timeline(&run)
        .await
        .iter()
        .filter(|e| e["type"] == "job.progress" && e["seq"].as_u64().unwrap() > last)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let have: Vec<u64> = got
        .iter()
        .filter(|(_, e)| e == "progress")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(have, want, "no progress event lost across the move");
    assert!(want.len() >= 60, "at least the 60 written after it left");
    assert!(!seen.is_empty());
}
