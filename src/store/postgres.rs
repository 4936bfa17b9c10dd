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
use sqlx::{PgPool, Postgres, Transaction};

use super::sql::sql_backend;
use super::tx::{NewDelivery, RunRow, WriteTx};
use super::*;

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub struct PgBackend {
    reader: PgPool,
    writer: PgPool,
    lanes: usize,
}

impl PgBackend {
    /// Connect and migrate (`migrations/postgres/`).
    pub async fn open(url: &str, max_connections: u32, lanes: u32) -> StoreResult<PgBackend> {
        let options = PgConnectOptions::from_str(url)?;
        let lanes = lanes.max(1);
        let writer = PgPoolOptions::new()
            .max_connections(lanes)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        migrate(&writer).await?;
        let reader = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(PgBackend {
            reader,
            writer,
            lanes: lanes as usize,
        })
    }
}

/// Apply `migrations/postgres/` (several nodes starting at once take
/// turns: sqlx holds an advisory lock while it migrates).
pub async fn migrate(pool: &PgPool) -> StoreResult<()> {
    sqlx::migrate!("./migrations/postgres").run(pool).await?;
    Ok(())
}

pub struct PgTx {
    tx: Transaction<'static, Postgres>,
    /// Write statements so far (the writer's isolation check).
    writes: u64,
}

#[async_trait]
impl Backend for PgBackend {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn lanes(&self) -> usize {
        self.lanes
    }

    fn statement_errors_abort(&self) -> bool {
        true
    }

    async fn begin(&self, _lane: usize) -> StoreResult<Box<dyn WriteTx>> {
        let tx = self.writer.begin().await?;
        Ok(Box::new(PgTx { tx, writes: 0 }))
    }
}

sql_backend! {
    db: Postgres,
    backend: PgBackend,
    tx: PgTx,
    lock: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
}
