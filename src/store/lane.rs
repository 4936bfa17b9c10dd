//! The connection a write lane holds for its life (ADR 0053).
//!
//! A lane runs one transaction at a time, so it needs one connection, and
//! borrowing it from a pool for every batch cost a round trip per batch:
//! sqlx pings a connection it takes back (on SQLite, a hop to the
//! connection's thread and back; on PostgreSQL, a round trip to the
//! server), in a task of its own that the next `begin` waits for. A
//! [`LaneConn`] keeps the connection instead, opens it again when it
//! breaks, and rolls back a transaction a dropped batch left open.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::{Connection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{StoreError, StoreResult};

/// How long opening a write connection again may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One lane's connection, opened with the backend and again after a failure.
pub struct LaneConn<C: Connection> {
    slot: Arc<Mutex<Slot<C>>>,
    options: C::Options,
    begin: &'static str,
}

struct Slot<C> {
    conn: Option<C>,
    /// A transaction is open: its batch was dropped before its end.
    open: bool,
}

/// A lane's transaction: the connection, inside `begin`, until
/// [`LaneTx::end`].
pub struct LaneTx<C: Connection> {
    slot: OwnedMutexGuard<Slot<C>>,
}

impl<C> LaneConn<C>
where
    C: Connection,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
{
    /// `conn`, already open (migrated with it, say); `begin` is the
    /// statement that opens a write transaction.
    pub fn new(conn: C, options: C::Options, begin: &'static str) -> LaneConn<C> {
        let slot = Slot {
            conn: Some(conn),
            open: false,
        };
        LaneConn {
            slot: Arc::new(Mutex::new(slot)),
            options,
            begin,
        }
    }

    /// Open a transaction; waits while the lane's previous one runs.
    /// `opening`, when given, is sent instead of the lane's `begin`: work
    /// the connection does outside any transaction, in the same round trip,
    /// ending with that `begin` (SQLite's WAL checkpoint, ADR 0059).
    pub async fn begin(&self, opening: Option<&'static str>) -> StoreResult<LaneTx<C>> {
        let mut slot = self.slot.clone().lock_owned().await;
        if slot.open {
            if let Some(conn) = slot.conn.as_mut() {
                if let Err(e) = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await {
                    tracing::warn!(error = %e, "rolling back an abandoned write transaction; reconnecting");
                    slot.conn = None;
                }
            }
            // Only now: a `begin` dropped during the rollback leaves the
            // transaction marked open for the next one.
            slot.open = false;
        }
        // A held connection may have died while the lane was idle (a
        // server restart, an idle timeout): nothing has run on it yet, so
        // `BEGIN` once more on a fresh one before failing the batch.
        let first = opening.unwrap_or(self.begin);
        if let Some(conn) = slot.conn.as_mut() {
            match sqlx::raw_sql(first).execute(&mut *conn).await {
                Ok(_) => {
                    slot.open = true;
                    return Ok(LaneTx { slot });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a held write connection failed; opening it again");
                    slot.conn = None;
                }
            }
        }
        let conn = self.connect().await?;
        let conn = slot.conn.insert(conn);
        if let Err(e) = sqlx::raw_sql(self.begin).execute(&mut *conn).await {
            slot.conn = None;
            return Err(e.into());
        }
        slot.open = true;
        Ok(LaneTx { slot })
    }

    /// Bounded as the pool's `acquire` was: a server that does not answer
    /// fails this batch, not the lane forever.
    async fn connect(&self) -> StoreResult<C> {
        match tokio::time::timeout(CONNECT_TIMEOUT, C::connect_with(&self.options)).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(StoreError::Unavailable(
                "the write connection did not open within 10 s".into(),
            )),
        }
    }
}

impl<C> LaneTx<C>
where
    C: Connection,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
{
    /// `COMMIT` or `ROLLBACK`. After a failure the transaction counts as
    /// open: the next `begin` rolls it back (or reconnects).
    pub async fn end(mut self, commit: bool) -> StoreResult<()> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        sqlx::raw_sql(sql).execute(&mut *self).await?;
        self.slot.open = false;
        Ok(())
    }
}

impl<C: Connection> Deref for LaneTx<C> {
    type Target = C;

    fn deref(&self) -> &C {
        // `begin` put a connection in the slot, and nothing takes it out
        // while this transaction holds the lock.
        self.slot
            .conn
            .as_ref()
            .expect("a lane transaction holds its connection")
    }
}

impl<C: Connection> DerefMut for LaneTx<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.slot
            .conn
            .as_mut()
            .expect("a lane transaction holds its connection")
    }
}
