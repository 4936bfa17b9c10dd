//! The embedded SQLite backend.
//!
//! One WAL database: the write connection, which the writer's one lane
//! holds and drives (one transaction at a time, so no `SQLITE_BUSY` and no
//! row locks needed: a job leaves `queued` inside the only write
//! transaction that can run; ADR 0053), a reader pool for concurrent
//! reads, and a checkpointer connection (ADR 0059).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use runsignal_actors::Signal;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool};

use super::lane::{LaneConn, LaneTx};
use super::sql::sql_backend;
use super::tx::{NewDelivery, RunRow, WriteTx};
use super::*;

pub struct SqliteBackend {
    reader: SqlitePool,
    /// The one write connection, held (ADR 0053).
    writer: LaneConn<SqliteConnection>,
    /// Alive while the backend is: the checkpointer stops when it is gone.
    _alive: std::sync::Arc<()>,
    /// Set by the checkpointer after a checkpoint of a WAL of at least
    /// `FINISH_FROM_FRAMES`: the writer finishes it before its next batch
    /// (ADR 0059).
    finish: std::sync::Arc<AtomicBool>,
}

/// How often the WAL is checkpointed, off the write path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// From this many WAL frames on (4 MiB of 4 KiB pages), the writer finishes
/// a checkpoint the checkpointer did, so that the WAL starts over.
const FINISH_FROM_FRAMES: i64 = 1024;
/// What the writer sends instead of its `BEGIN` to finish a checkpoint.
const CHECKPOINT_THEN_BEGIN: &str = "PRAGMA wal_checkpoint(PASSIVE); BEGIN IMMEDIATE";
/// The size the WAL file is cut back to when it starts over after a burst.
const WAL_SIZE_LIMIT: &str = "67108864";

impl SqliteBackend {
    /// Open (creating the file and its directory when missing) and migrate.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<SqliteBackend> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash (the contract);
            // only an OS crash or power loss can drop the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Statement journals (a multi-row upsert may need to undo
            // itself) spill past 64 KiB to temporary files: created,
            // written and deleted per batch. Kept in memory instead.
            .pragma("temp_store", "memory");
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
            }
        }
        // The writer never checkpoints on commit (that would put the copy
        // to the database file and its fsync on the write path); a
        // checkpointer connection does, every `CHECKPOINT_EVERY`.
        // Nor does the checkpointer alone keep the WAL short: under steady
        // writes it never catches up with the last frame, so the log would
        // never start over and grew by every page written. The writer
        // finishes the checkpointer's work when the WAL is long, between
        // two batches, and the log starts over (ADR 0059).
        let writer_options = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT);
        let mut writer = SqliteConnection::connect_with(&writer_options).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.read_only(true))
            .await?;
        let alive = std::sync::Arc::new(());
        let finish = std::sync::Arc::new(AtomicBool::new(false));
        tokio::spawn(checkpoint(
            checkpointer,
            std::sync::Arc::downgrade(&alive),
            finish.clone(),
        ));
        Ok(SqliteBackend {
            reader,
            writer: LaneConn::new(writer, writer_options, "BEGIN IMMEDIATE"),
            _alive: alive,
            finish,
        })
    }
}

/// Checkpoint the WAL in the background (PASSIVE: never waits for readers
/// or the writer) until the backend is dropped. It copies what the WAL held
/// when it started; under steady writes the writer has committed more by
/// then, so the WAL could never start over and would grow by every page
/// written. When the WAL is long, the writer is asked to finish: a second
/// checkpoint, on its own connection between two batches, that copies only
/// what came in meanwhile (ADR 0059).
async fn checkpoint(
    pool: SqlitePool,
    alive: std::sync::Weak<()>,
    finish: std::sync::Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            pool.close().await;
            return;
        }
        let done: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await;
        match done {
            // (busy, frames in the WAL, frames copied back)
            Ok((_, frames, _)) if frames >= FINISH_FROM_FRAMES => {
                finish.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

pub struct SqliteTx {
    tx: LaneTx<SqliteConnection>,
    /// Write statements so far (the writer's isolation check).
    writes: u64,
    isolation: super::tx::Isolation,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn lanes(&self) -> usize {
        1
    }

    fn statement_errors_abort(&self) -> bool {
        false
    }

    fn row_locks(&self) -> bool {
        false
    }

    async fn begin(&self, _lane: usize) -> StoreResult<Box<dyn WriteTx>> {
        // Runs a submit creates are inserted at the end of the batch, after
        // their jobs: the key is `DEFERRABLE INITIALLY DEFERRED` (checked at
        // commit). Not `PRAGMA defer_foreign_keys`: it expires every
        // prepared statement of the connection (ADR 0049).
        let opening = self
            .finish
            .swap(false, Ordering::Relaxed)
            .then_some(CHECKPOINT_THEN_BEGIN);
        let tx = self.writer.begin(opening).await?;
        Ok(Box::new(SqliteTx {
            tx,
            writes: 0,
            isolation: Default::default(),
        }))
    }
}

sql_backend! {
    db: Sqlite,
    backend: SqliteBackend,
    tx: SqliteTx,
    lock: "",
    skip_locked: "",
    multi_statement: true,
}
