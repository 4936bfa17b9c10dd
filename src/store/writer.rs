//! Group commit: every write goes through here (ADR 0020).
//!
//! A write is a [`Cmd`] sent to one of the backend's lanes (SQLite: one;
//! PostgreSQL: `Database.WriteLanes`). A lane takes whatever is waiting (at
//! most [`MAX_BATCH`]) and applies it in one transaction: on PostgreSQL each
//! write that sends statements inside its own savepoint, taken before its
//! first one (ADR 0060), so one failing write rolls back only itself. After the
//! commit it publishes what the batch committed (to the [`CommitSink`], in
//! batch order) and only then answers each caller: a 2xx still means
//! committed. A lone write is not delayed waiting for company: the lane
//! starts as soon as one write is there, and the batch grows with the load
//! (what arrived while the previous batch committed).
//!
//! Publishing happens here and nowhere else, so no caller can forget it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use runsignal_actors::{RunKey, Signal};
use tokio::sync::{mpsc, oneshot};

use super::history::PackHistory;
use super::lifecycle::{self, Pending};
use super::*;
use crate::packs::DeclaredSteps;

/// Before `declare_steps` (tests that open a bare store): no plans.
static NO_STEPS: DeclaredSteps = DeclaredSteps::NONE;

/// Most writes one transaction takes.
pub const MAX_BATCH: usize = 128;
/// Writes waiting per lane before callers wait to enqueue (back-pressure).
const LANE_QUEUE: usize = 4096;
/// How often a write that lost a race with another transaction is retried.
const MAX_TRIES: u8 = 5;

/// Where committed events go: the engine (cache, run actors, wake-ups).
pub trait CommitSink: Send + Sync {
    fn publish(&self, committed: Committed);
}

/// One write, with what it needs (borrowed by the rules, so a write that
/// lost a race can run again).
#[derive(Debug)]
pub enum Cmd {
    CreateRun {
        tenant: String,
        new: NewRun,
    },
    Submit {
        tenant: String,
        new: NewJob,
    },
    Cancel {
        tenant: String,
        job_id: String,
        correlation_id: String,
    },
    /// A new job repeating a failed or canceled one, in its run.
    Retry {
        tenant: String,
        job_id: String,
        correlation_id: String,
    },
    /// A lease of one tenant's jobs (`None`: the built-in executor, any tenant).
    Lease {
        tenant: Option<String>,
        req: LeaseRequest,
    },
    Progress {
        tenant: String,
        job_id: String,
        report: ProgressReport,
    },
    Complete {
        tenant: String,
        job_id: String,
        done: Completion,
    },
    Fail {
        tenant: String,
        job_id: String,
        failure: Failure,
    },
    SweepLeases {
        now_ms: i64,
    },
    /// Flag a queued job blocked with a reason, or clear the flag (`None`).
    SetBlocked {
        tenant: String,
        job_id: String,
        reason: Option<String>,
    },
    ExpireWorkerLeases {
        worker_id: String,
    },
    ClaimWebhooks {
        now_ms: i64,
        limit: u32,
        share: ClaimShare,
    },
    FinishWebhook {
        id: i64,
        outcome: WebhookOutcome,
    },
    ResetSendingWebhooks {
        now_ms: i64,
        only_expired: bool,
    },
    PutSnapshot {
        tenant: String,
        run_id: String,
        seq: u64,
        signal: String,
    },
    Prune {
        cutoff_ms: i64,
        limit: u32,
    },
}

impl Cmd {
    pub fn correlation_id(&self) -> &str {
        match self {
            Cmd::CreateRun { new, .. } => &new.correlation_id,
            Cmd::Submit { new, .. } => &new.correlation_id,
            Cmd::Cancel { correlation_id, .. } | Cmd::Retry { correlation_id, .. } => {
                correlation_id
            }
            Cmd::Lease { req, .. } => &req.correlation_id,
            Cmd::Progress { report, .. } => &report.correlation_id,
            Cmd::Complete { done, .. } => &done.correlation_id,
            Cmd::Fail { failure, .. } => &failure.correlation_id,
            Cmd::SweepLeases { .. } | Cmd::ExpireWorkerLeases { .. } => "lease-sweeper",
            Cmd::SetBlocked { .. } => "blocked-check",
            Cmd::ClaimWebhooks { .. }
            | Cmd::FinishWebhook { .. }
            | Cmd::ResetSendingWebhooks { .. } => "webhooks",
            Cmd::PutSnapshot { .. } => "snapshot-writer",
            Cmd::Prune { .. } => "prune",
        }
    }

    /// The job a job write names (read ahead for the batch).
    fn job_id(&self) -> Option<String> {
        match self {
            Cmd::Cancel { job_id, .. }
            | Cmd::Retry { job_id, .. }
            | Cmd::Progress { job_id, .. }
            | Cmd::Complete { job_id, .. }
            | Cmd::Fail { job_id, .. }
            | Cmd::SetBlocked { job_id, .. } => Some(job_id.clone()),
            _ => None,
        }
    }

    /// Which lane: writes of one run or job share a lane where the key
    /// says so, so they queue instead of contending for row locks.
    fn route(&self) -> Option<&str> {
        match self {
            Cmd::CreateRun { new, .. } => Some(&new.run_id),
            Cmd::Submit { new, .. } => new.run_id.as_deref(),
            Cmd::Cancel { job_id, .. }
            | Cmd::Retry { job_id, .. }
            | Cmd::Progress { job_id, .. }
            | Cmd::Complete { job_id, .. }
            | Cmd::Fail { job_id, .. }
            | Cmd::SetBlocked { job_id, .. } => Some(job_id),
            Cmd::PutSnapshot { run_id, .. } => Some(run_id),
            // The outbox's claims and outcomes in one lane, one at a time.
            Cmd::ClaimWebhooks { .. }
            | Cmd::FinishWebhook { .. }
            | Cmd::ResetSendingWebhooks { .. } => Some("outbox"),
            _ => None,
        }
    }
}

/// What a write produced.
#[derive(Debug)]
pub enum Done {
    Run(RunRecord),
    Job(JobRecord),
    Submitted(JobRecord, bool),
    Leased(Vec<(String, LeasedJob)>),
    Count(u64),
    Claimed(Vec<WebhookDelivery>),
    /// Deleted runs, and the artifact files the pruning task deletes.
    Pruned(Vec<RunKey>, Vec<String>),
    Unit,
}

struct Request {
    cmd: Cmd,
    reply: oneshot::Sender<StoreResult<Done>>,
    tries: u8,
    /// A job submission: when it reached the writer.
    accepted: Option<std::time::Instant>,
}

type Sink = Arc<OnceLock<Arc<dyn CommitSink>>>;
/// The packs' declared steps, set once at start-up (the lifecycle names
/// steps and reports the ones a failed or canceled job never reached).
type Steps = Arc<OnceLock<DeclaredSteps>>;

/// What the writer has done (for `/metrics` and the tests).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (or tried).
    pub batches: AtomicU64,
    /// Writes applied in them.
    pub writes: AtomicU64,
    /// The largest batch so far.
    pub largest: AtomicU64,
    /// Time spent applying and committing batches, in microseconds.
    pub busy_us: AtomicU64,
    /// Writes queued again after losing a race (a deadlock, a serialization
    /// failure, a unique violation): each costs its whole batch a retry.
    pub retried: AtomicU64,
}

/// The handle writers send to.
pub struct Writer {
    lanes: Vec<mpsc::Sender<Request>>,
    next: AtomicUsize,
    sink: Sink,
    steps: Steps,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Start one task per lane of the backend, on a thread of their own
    /// (`runsignal-writer`): the writer's round trips to the database are
    /// the write path's latency, so they do not queue behind HTTP work or
    /// background tasks on a shared runtime. The thread ends when the
    /// `Writer` is dropped (its lanes' channels close).
    pub fn start(backend: Arc<dyn Backend>) -> StoreResult<Writer> {
        let sink: Sink = Arc::new(OnceLock::new());
        let steps: Steps = Arc::new(OnceLock::new());
        let stats = Arc::new(WriterStats::default());
        let history = Arc::new(PackHistory::default());
        let mut lanes = Vec::new();
        let mut tasks = Vec::new();
        for lane in 0..backend.lanes().max(1) {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            tasks.push(run_lane(
                backend.clone(),
                lane,
                rx,
                sink.clone(),
                steps.clone(),
                stats.clone(),
                history.clone(),
            ));
            lanes.push(tx);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("the writer's runtime: {e}")))?;
        std::thread::Builder::new()
            .name("runsignal-writer".into())
            .spawn(move || runtime.block_on(futures_util::future::join_all(tasks)))
            .map_err(|e| StoreError::Unavailable(format!("the writer's thread: {e}")))?;
        Ok(Writer {
            lanes,
            next: AtomicUsize::new(0),
            sink,
            steps,
            stats,
        })
    }

    /// The packs' declared steps; set once at start-up (none: every pack
    /// has an empty plan).
    pub fn declare_steps(&self, steps: DeclaredSteps) {
        if self.steps.set(steps).is_err() {
            tracing::warn!("declared steps were set twice; keeping the first");
        }
    }

    pub fn attach(&self, sink: Arc<dyn CommitSink>) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("a commit sink was attached twice; keeping the first");
        }
    }

    /// Apply one write; answered after its batch committed.
    pub async fn call(&self, cmd: Cmd) -> StoreResult<Done> {
        let lane = match cmd.route() {
            Some(key) if self.lanes.len() > 1 => hash(key) % self.lanes.len(),
            _ => self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len(),
        };
        let (reply, answer) = oneshot::channel();
        let accepted =
            matches!(cmd, Cmd::Submit { .. } | Cmd::Retry { .. }).then(std::time::Instant::now);
        let request = Request {
            cmd,
            reply,
            tries: 0,
            accepted,
        };
        self.lanes[lane]
            .send(request)
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub async fn put_snapshot(
        &self,
        tenant: String,
        run_id: String,
        seq: u64,
        signal: &Signal,
    ) -> StoreResult<()> {
        let signal = serde_json::to_string(signal).unwrap_or_default();
        self.call(Cmd::PutSnapshot {
            tenant,
            run_id,
            seq,
            signal,
        })
        .await
        .map(drop)
    }
}

fn hash(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() as usize
}

async fn run_lane(
    backend: Arc<dyn Backend>,
    lane: usize,
    mut rx: mpsc::Receiver<Request>,
    sink: Sink,
    steps: Steps,
    stats: Arc<WriterStats>,
    history: Arc<PackHistory>,
) {
    let mut retry: VecDeque<Request> = VecDeque::new();
    loop {
        let mut batch: Vec<Request> = Vec::new();
        while batch.len() < MAX_BATCH {
            match retry.pop_front() {
                Some(r) => batch.push(r),
                None => break,
            }
        }
        if batch.is_empty() {
            match rx.recv().await {
                Some(r) => batch.push(r),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .largest
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let declared = steps.get().unwrap_or(&NO_STEPS);
        let queued_again = retry.len();
        apply_batch(
            &*backend, lane, batch, &mut retry, &sink, declared, &history,
        )
        .await;
        stats.retried.fetch_add(
            retry.len().saturating_sub(queued_again) as u64,
            Ordering::Relaxed,
        );
        let busy = started.elapsed().as_micros() as u64;
        stats.busy_us.fetch_add(busy, Ordering::Relaxed);
    }
}

/// One transaction for the whole batch; each write isolated by a savepoint
/// where statement errors abort the transaction, taken only if it sends a
/// statement (skipped for a lone write: its transaction is its isolation). The
/// batch's run rows and events are written once, just before the commit.
async fn apply_batch(
    backend: &dyn Backend,
    lane: usize,
    batch: Vec<Request>,
    retry: &mut VecDeque<Request>,
    sink: &Sink,
    declared: &DeclaredSteps,
    history: &Arc<PackHistory>,
) {
    let mut tx = match backend.begin(lane).await {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            for r in batch {
                let _ = r.reply.send(Err(StoreError::NotCommitted(message.clone())));
            }
            return;
        }
    };
    // Savepoints where a failed statement would abort the transaction
    // (PostgreSQL). Elsewhere (SQLite) a write refused by a rule before it
    // wrote anything leaves nothing to undo; any other failure rolls the
    // batch back and the other writes run again in the next one.
    let savepoints = batch.len() > 1 && backend.statement_errors_abort();
    let mut pending = Pending::new(history.clone());
    let mut applied: Vec<(Request, Done, Committed)> = Vec::new();
    let mut broken: Option<String> = None;
    // The runs of the jobs the batch's writes name, in one read.
    let job_ids: Vec<String> = batch.iter().filter_map(|r| r.cmd.job_id()).collect();
    if job_ids.len() > 1 {
        if let Err(e) = pending.prefetch(&mut *tx, &job_ids).await {
            let _ = tx.rollback().await;
            give_back(batch, &e, retry);
            return;
        }
    }
    // Several leases of the same packs: their candidates in one read
    // (ADR 0062). Not where writers lock rows: the pool's run locks would
    // come before the locks the batch's earlier writes take, an order
    // other lanes do not follow (a deadlock, broken after a second).
    let leases: Vec<(Option<&str>, &[String], u32)> = batch
        .iter()
        .filter_map(|r| match &r.cmd {
            Cmd::Lease { tenant, req } => Some((tenant.as_deref(), req.packs.as_slice(), req.max)),
            _ => None,
        })
        .collect();
    if leases.len() > 1 && !backend.row_locks() {
        if let Err(e) = pending.pool_leases(&mut *tx, &leases).await {
            let _ = tx.rollback().await;
            give_back(batch, &e, retry);
            return;
        }
    }
    let mut queue: VecDeque<Request> = batch.into();
    while let Some(r) = queue.pop_front() {
        if let Some(message) = &broken {
            let _ = r.reply.send(Err(StoreError::NotCommitted(message.clone())));
            continue;
        }
        // Writes that select rows by state in SQL (the expiry sweep, a
        // worker's leases) or delete runs (prune) need the batch's rows in
        // the tables first: written here, outside their savepoint. (Leases
        // merge the batch's jobs into their candidates instead.)
        let barrier = matches!(
            r.cmd,
            Cmd::Prune { .. } | Cmd::SweepLeases { .. } | Cmd::ExpireWorkerLeases { .. }
        );
        if barrier {
            // They change rows behind the batch's back: read them again.
            pending.forget_prefetched();
            if let Err(e) = pending.flush(&mut *tx).await {
                let _ = tx.rollback().await;
                let mut all: Vec<Request> = applied.into_iter().map(|(r, _, _)| r).collect();
                all.push(r);
                all.extend(queue);
                give_back(all, &e, retry);
                return;
            }
        }
        if savepoints {
            tx.isolate();
        }
        let writes_before = tx.writes();
        match lifecycle::apply(&mut *tx, &mut pending, declared, &r.cmd).await {
            Ok((done, committed)) => applied.push((r, done, committed)),
            Err(e) => {
                let clean = e.is_refusal() && tx.writes() == writes_before;
                if savepoints {
                    if let Err(e) = tx.rollback_to_savepoint().await {
                        broken = Some(e.to_string());
                    }
                } else if !clean {
                    // No savepoint to go back to: give up this batch; the
                    // writes that had succeeded in it run again next time
                    // (nothing of theirs was published or answered yet).
                    if let Err(e) = tx.rollback().await {
                        tracing::warn!(error = %e, "rolling back a batch");
                    }
                    for other in applied.into_iter().map(|(r, _, _)| r).rev() {
                        queue.push_front(other);
                    }
                    finish_failed(r, e, retry);
                    for other in queue.into_iter().rev() {
                        retry.push_front(other);
                    }
                    return;
                }
                finish_failed(r, e, retry);
            }
        }
    }
    // The last savepoint needs no release: the commit takes it along.
    if broken.is_none() {
        if let Err(e) = pending.flush(&mut *tx).await {
            // A lost race (deadlock, …) here is the whole batch's: try it
            // again; anything else fails it.
            if e.is_retryable() {
                let _ = tx.rollback().await;
                give_back(applied.into_iter().map(|(r, _, _)| r).collect(), &e, retry);
                return;
            }
            broken = Some(e.to_string());
        }
    }
    if let Some(message) = broken {
        // Rolled back now (not left idle in a transaction, holding locks,
        // until the connection's next use); writes that had succeeded
        // inside it are lost with it: tell their callers.
        if let Err(e) = tx.rollback().await {
            tracing::warn!(error = %e, "rolling back a failed batch");
        }
        for (r, _, _) in applied {
            let _ = r.reply.send(Err(StoreError::NotCommitted(message.clone())));
        }
        return;
    }
    if let Err(e) = tx.commit().await {
        let message = e.to_string();
        for (r, _, _) in applied {
            let _ = r.reply.send(Err(StoreError::NotCommitted(message.clone())));
        }
        return;
    }
    let sink = sink.get();
    for (r, done, mut committed) in applied {
        history.record(&committed.history);
        if let Some(sink) = sink {
            committed.accepted = r.accepted;
            sink.publish(committed);
        }
        let _ = r.reply.send(Ok(done));
    }
}

/// A batch that could not go on: its writes are queued again (counting a
/// try) when it lost a race, else answered with the error.
fn give_back(requests: Vec<Request>, e: &StoreError, retry: &mut VecDeque<Request>) {
    let message = e.to_string();
    for mut r in requests {
        if e.is_retryable() && r.tries < MAX_TRIES {
            r.tries += 1;
            retry.push_back(r);
        } else {
            let _ = r.reply.send(Err(StoreError::NotCommitted(message.clone())));
        }
    }
}

/// A write that failed: answered, or queued again when it lost a race.
fn finish_failed(mut r: Request, e: StoreError, retry: &mut VecDeque<Request>) {
    if e.is_retryable() && r.tries < MAX_TRIES {
        r.tries += 1;
        retry.push_back(r);
    } else {
        let _ = r.reply.send(Err(e));
    }
}
