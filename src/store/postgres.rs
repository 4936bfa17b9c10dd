//! The PostgreSQL backend (`Database.Url=postgres://…`), for several
//! writers and several nodes on one database.
//!
//! The writer runs `Database.WriteLanes` transactions at once, each a
//! group-commit batch. Rows a write changes are locked (`FOR UPDATE`): the
//! run row orders seq allocation per run, the job row orders its
//! transitions; leases and the expiry sweep take queued or expired jobs
//! `FOR UPDATE SKIP LOCKED`, so concurrent lessees (on any node) never get
//! the same job. A write that loses a race (deadlock, serialization
//! failure, a unique key filled first) is retried by the writer.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use runsignal_actors::Signal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use super::lane::{LaneConn, LaneTx};
use super::sql::sql_backend;
use super::tx::{NewDelivery, RunRow, WriteTx};
use super::*;

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub struct PgBackend {
    reader: PgPool,
    /// One connection per write lane, held (ADR 0053).
    writers: Vec<LaneConn<PgConnection>>,
}

impl PgBackend {
    /// Connect and migrate (`migrations/postgres/`).
    pub async fn open(url: &str, max_connections: u32, lanes: u32) -> StoreResult<PgBackend> {
        let options = PgConnectOptions::from_str(url)?;
        let lanes = lanes.max(1);
        let reader = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        migrate(&reader).await?;
        let mut writers = Vec::new();
        for _ in 0..lanes {
            let conn = PgConnection::connect_with(&options).await?;
            writers.push(LaneConn::new(conn, options.clone(), "BEGIN"));
        }
        Ok(PgBackend { reader, writers })
    }
}

/// Apply `migrations/postgres/` (several nodes starting at once take
/// turns: sqlx holds an advisory lock while it migrates).
pub async fn migrate(pool: &PgPool) -> StoreResult<()> {
    sqlx::migrate!("./migrations/postgres").run(pool).await?;
    Ok(())
}

pub struct PgTx {
    tx: LaneTx<PgConnection>,
    /// Write statements so far (the writer's isolation check).
    writes: u64,
    isolation: super::tx::Isolation,
}

#[async_trait]
impl Backend for PgBackend {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn lanes(&self) -> usize {
        self.writers.len()
    }

    fn statement_errors_abort(&self) -> bool {
        true
    }

    fn row_locks(&self) -> bool {
        true
    }

    async fn begin(&self, lane: usize) -> StoreResult<Box<dyn WriteTx>> {
        let tx = self.writers[lane % self.writers.len()].begin(None).await?;
        Ok(Box::new(PgTx {
            tx,
            writes: 0,
            isolation: Default::default(),
        }))
    }
}

sql_backend! {
    db: Postgres,
    backend: PgBackend,
    tx: PgTx,
    lock: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    multi_statement: false,
}
