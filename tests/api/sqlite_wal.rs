//! SQLite's write-ahead log under steady writes (ADR 0059). Without the
//! writer finishing the checkpointer's work, the log never started over
//! while writes kept coming and grew by every page written (a gigabyte in
//! ten seconds at full speed, 50 MB/s at 500 submits/s).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runsignal::store::{NewJob, Store};

/// The WAL header's checkpoint sequence number: SQLite adds one each time
/// the log starts over from its beginning.
fn wal_restarts(wal: &Path) -> u32 {
    let mut header = [0u8; 16];
    let read = std::fs::File::open(wal).and_then(|mut f| f.read_exact(&mut header));
    match read {
        Ok(()) => u32::from_be_bytes([header[12], header[13], header[14], header[15]]),
        Err(_) => 0,
    }
}

fn new_job() -> NewJob {
    NewJob {
        pack: "external".into(),
        inputs: serde_json::json!({"payload": "x".repeat(512)}),
        run_id: None,
        correlation_id: "c".into(),
        webhook_url: None,
        idempotency_key: None,
        max_attempts: 3,
        idempotency_window_ms: 24 * 3_600_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_writes_the_wal_starts_over_and_stays_short() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("wal.db");
    let wal = dir.path().join("wal.db-wal");
    let store = Store::open(
        &format!("sqlite://{}", db.display()),
        8,
        4,
        Default::default(),
    )
    .await
    .expect("store opens");
    let store = Arc::new(store);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // 32 writers that never pause: the lane always has the next batch.
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    store.submit_job("acme", new_job()).await.expect("submit");
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while written.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "the writers did not get going");
        assert!(writers.iter().all(|w| !w.is_finished()), "a writer stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = wal_restarts(&wal);
    let mut largest = 0;
    let restarts = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        let now = wal_restarts(&wal);
        if now >= first + 3 || Instant::now() > deadline || writers.iter().any(|w| w.is_finished())
        {
            break now - first;
        }
    };
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let total = written.load(Ordering::Relaxed);
    assert!(
        restarts >= 3,
        "the WAL started over {restarts} times during steady writes ({total} submits; largest WAL {largest} bytes)"
    );
    // The writer cuts a log that grew past 64 MiB back when it starts over.
    assert!(
        largest <= 80 << 20,
        "the WAL grew to {largest} bytes ({total} submits)"
    );
}
