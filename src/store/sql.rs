//! The SQL both backends share, written once.
//!
//! SQLite and PostgreSQL accept the same statements here (`$N`
//! placeholders, `ON CONFLICT`, `RETURNING`); what differs is the driver
//! type and the row-lock clauses, which [`sql_backend!`] takes as
//! parameters: PostgreSQL locks the rows a write will change (`FOR UPDATE`)
//! and lets concurrent lessees skip each other's (`SKIP LOCKED`); SQLite's
//! single writer needs neither. A macro rather than generics: sqlx's
//! executor bounds over two databases would say less than the SQL does.
//! Two reads run on SQLite only and use its JSON functions: the batch's
//! read-ahead, packed into one value ([`PACKED_ROW`], ADR 0064).
//!
//! `LIMIT`s are integer literals written by the code, never bound
//! parameters: SQLite plans with a bound `LIMIT`'s value and then
//! re-prepares the statement every time that parameter is bound (ADR 0050).

use super::{StoreError, StoreResult};

/// Decode one stored timeline event (the only place this happens). An
/// event that does not decode is a store failure, as a typed read of the
/// row would be: skipping it would break "no gap", and passing it on would
/// break the answer's JSON.
pub fn decode_event(json: &str) -> StoreResult<runsignal_actors::Envelope> {
    serde_json::from_str(json).map_err(|e| {
        tracing::error!(error = %e, "a stored event is not an envelope");
        StoreError::Database(sqlx::Error::Decode(Box::new(e)))
    })
}

/// A run's key, its row and every job of it, oldest first.
pub type RunJobs = (
    runsignal_actors::RunKey,
    super::tx::RunRow,
    Vec<super::JobRecord>,
);

/// A job row and its run's columns as one JSON array, `[[job…], [run…],
/// candidate]` (SQLite's `json_array`, in [`super::JobRecord`]'s field
/// order), up to the candidate flag: the caller writes that expression and
/// the closing parenthesis. The packed reads return all their rows in one
/// value. `percent` goes as text with 17 significant digits: SQLite's JSON
/// writes a REAL with 15, which does not give back every double.
macro_rules! PACKED_ROW {
    () => {
        "json_array(json_array(j.job_id, j.tenant_id, j.run_id, j.pack, j.inputs, j.state,
            j.blocked_reason, j.attempt, j.max_attempts, j.lease_id, j.lease_worker, j.lease_until,
            j.lease_seconds, j.stage, j.step, j.step_index, j.message,
            iif(j.percent IS NULL, NULL, printf('%!.17g', j.percent)), j.log_lines,
            j.result, j.error_code, j.error_message, j.failure_start, j.failure_end,
            j.correlation_id, j.idempotency_key, j.webhook_url, j.created_at, j.updated_at,
            j.state_changed_at, j.started_at, j.finished_at, j.step_started_at, j.retry_of),
          json_array(r.last_seq, r.signal_etag, r.signal_seq, r.status, r.completed_seq,
            r.updated_at, r.created_at), "
    };
}
pub(crate) use PACKED_ROW;

/// One row of a packed read (see [`PACKED_ROW`]): the job, its run's row,
/// and whether it is a lease's candidate (0 or 1).
type PackedRow = (super::JobRecord, super::tx::RunRow, i64);

/// Group the rows of a packed read (ordered by run) into runs, and pick out
/// the rows flagged as candidates. Every row comes in one JSON array: the
/// SQLite driver hands over one value instead of a message (and a wake-up
/// of the writer's thread) per row (load/README.md, eleventh pass).
pub fn runs_of_packed(json: &str) -> StoreResult<(Vec<RunJobs>, Vec<super::JobRecord>)> {
    let rows: Vec<PackedRow> = serde_json::from_str(json)
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?;
    let mut runs: Vec<RunJobs> = Vec::new();
    let mut candidates = Vec::new();
    for (job, run, candidate) in rows {
        let same = runs
            .last()
            .is_some_and(|(k, _, _)| *k.tenant == *job.tenant_id && *k.run_id == *job.run_id);
        if !same {
            let key = runsignal_actors::RunKey::new(&job.tenant_id, &job.run_id);
            runs.push((key, run, Vec::new()));
        }
        if candidate != 0 {
            candidates.push(job.clone());
        }
        if let Some((_, _, jobs)) = runs.last_mut() {
            jobs.push(job);
        }
    }
    Ok((runs, candidates))
}

macro_rules! sql_backend {
    (db: $db:ty, backend: $backend:ident, tx: $tx:ident, lock: $lock:literal, skip_locked: $skip:literal, multi_statement: $multi:literal $(,)?) => {
        impl $tx {
            /// The connection, inside the current write's savepoint when it
            /// wants one: taken here, before its first statement.
            async fn conn(&mut self) -> StoreResult<&mut <$db as sqlx::Database>::Connection> {
                if std::mem::take(&mut self.isolation.wanted) {
                    let sql = if self.isolation.open {
                        "RELEASE SAVEPOINT op; SAVEPOINT op"
                    } else {
                        "SAVEPOINT op"
                    };
                    if let Err(e) = sqlx::raw_sql(sql).execute(&mut *self.tx).await {
                        // The transaction is aborted now: the batch is lost.
                        self.isolation.failed = true;
                        return Err(e.into());
                    }
                    self.isolation.open = true;
                }
                Ok(&mut *self.tx)
            }

            /// One write: `rows` in statements of at most `size` rows each,
            /// built by `push` (one round trip a statement).
            async fn write_chunks<T: Sync>(
                &mut self,
                rows: &[T],
                size: usize,
                push: fn(&mut sqlx::QueryBuilder<$db>, &[T]),
            ) -> StoreResult<()> {
                self.writes += 1;
                for chunk in rows.chunks(size) {
                    let mut q = sqlx::QueryBuilder::<$db>::new("");
                    push(&mut q, chunk);
                    q.build().execute(self.conn().await?).await?;
                }
                Ok(())
            }

            async fn queued_jobs(
                &mut self,
                tenant: Option<&str>,
                packs: &[String],
                limit: u32,
            ) -> StoreResult<Vec<JobRecord>> {
                // Every writer locks a run's row before its jobs; so does
                // this: the candidates' run rows are locked (runs another
                // writer holds are skipped), and the lease then locks the
                // jobs. Locking the jobs first here deadlocked with writers
                // of other jobs of the same run.
                let mut q = sqlx::QueryBuilder::<$db>::new("");
                Self::push_queued(&mut q, "j.*", tenant, packs, limit);
                if !$skip.is_empty() {
                    q.push(" FOR UPDATE OF r SKIP LOCKED");
                }
                Ok(q.build_query_as().fetch_all(self.conn().await?).await?)
            }


            /// Write back runs (one statement): an upsert so that many rows
            /// go in one statement: the runs a submit created (no name, no
            /// labels) are inserted here, the others exist and only their
            /// changed columns are set.
            fn push_save_runs(q: &mut sqlx::QueryBuilder<$db>, chunk: &[(runsignal_actors::RunKey, RunRow)]) {
                q.push(
                    "INSERT INTO runs (tenant_id, run_id, last_seq, signal_etag, signal_seq, status, completed_seq, updated_at, created_at) ",
                );
                q.push_values(chunk, |mut b, (key, row)| {
                    b.push_bind(key.tenant.to_string())
                        .push_bind(key.run_id.to_string())
                        .push_bind(row.last_seq)
                        .push_bind(row.signal_etag.clone())
                        .push_bind(row.signal_seq)
                        .push_bind(row.status.clone())
                        .push_bind(row.completed_seq)
                        .push_bind(row.updated_at)
                        .push_bind(row.created_at);
                });
                q.push(
                    " ON CONFLICT (tenant_id, run_id) DO UPDATE SET last_seq = excluded.last_seq,
                         signal_etag = excluded.signal_etag, signal_seq = excluded.signal_seq,
                         status = excluded.status, completed_seq = excluded.completed_seq,
                         updated_at = excluded.updated_at",
                );
            }

            /// Insert jobs that are new, write back every column of the
            /// others (one statement).
            fn push_upsert_jobs(q: &mut sqlx::QueryBuilder<$db>, chunk: &[JobRecord]) {
                q.push("INSERT INTO jobs (job_id, tenant_id, run_id, pack, inputs, state, blocked_reason, attempt, max_attempts, lease_id, lease_worker, lease_until, lease_seconds, stage, step, step_index, message, percent, log_lines, result, error_code, error_message, failure_start, failure_end, correlation_id, idempotency_key, webhook_url, created_at, updated_at, state_changed_at, started_at, finished_at, step_started_at, retry_of) ");
                q.push_values(chunk, |mut b, j| {
                    b.push_bind(j.job_id.clone())
                        .push_bind(j.tenant_id.clone())
                        .push_bind(j.run_id.clone())
                        .push_bind(j.pack.clone())
                        .push_bind(j.inputs.clone())
                        .push_bind(j.state.clone())
                        .push_bind(j.blocked_reason.clone())
                        .push_bind(j.attempt)
                        .push_bind(j.max_attempts)
                        .push_bind(j.lease_id.clone())
                        .push_bind(j.lease_worker.clone())
                        .push_bind(j.lease_until)
                        .push_bind(j.lease_seconds)
                        .push_bind(j.stage.clone())
                        .push_bind(j.step.clone())
                        .push_bind(j.step_index)
                        .push_bind(j.message.clone())
                        .push_bind(j.percent)
                        .push_bind(j.log_lines)
                        .push_bind(j.result.clone())
                        .push_bind(j.error_code.clone())
                        .push_bind(j.error_message.clone())
                        .push_bind(j.failure_start)
                        .push_bind(j.failure_end)
                        .push_bind(j.correlation_id.clone())
                        .push_bind(j.idempotency_key.clone())
                        .push_bind(j.webhook_url.clone())
                        .push_bind(j.created_at)
                        .push_bind(j.updated_at)
                        .push_bind(j.state_changed_at)
                        .push_bind(j.started_at)
                        .push_bind(j.finished_at)
                        .push_bind(j.step_started_at)
                        .push_bind(j.retry_of.clone());
                });
                q.push(" ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, blocked_reason = excluded.blocked_reason, attempt = excluded.attempt, lease_id = excluded.lease_id, lease_worker = excluded.lease_worker, lease_until = excluded.lease_until, lease_seconds = excluded.lease_seconds, stage = excluded.stage, step = excluded.step, step_index = excluded.step_index, message = excluded.message, percent = excluded.percent, log_lines = excluded.log_lines, result = excluded.result, error_code = excluded.error_code, error_message = excluded.error_message, failure_start = excluded.failure_start, failure_end = excluded.failure_end, idempotency_key = excluded.idempotency_key, updated_at = excluded.updated_at, state_changed_at = excluded.state_changed_at, started_at = excluded.started_at, finished_at = excluded.finished_at, step_started_at = excluded.step_started_at");
            }

            /// The changed-column indexes of `columns` (bits of
            /// [`JOB_UPDATE_COLUMNS`](crate::store::JOB_UPDATE_COLUMNS)).
            fn update_set(columns: u32) -> Vec<usize> {
                (0..$crate::store::JOB_UPDATE_COLUMNS.len())
                    .filter(|i| columns & (1 << i) != 0)
                    .collect()
            }

            /// Set the columns `set` of existing jobs (one statement).
            fn push_update_jobs(q: &mut sqlx::QueryBuilder<$db>, set: &[usize], chunk: &[&JobRecord]) {
                // `UPDATE … FROM (VALUES …)`: both backends name the
                // columns of an unaliased VALUES list column1, column2, …
                q.push("UPDATE jobs SET ");
                for (n, i) in set.iter().enumerate() {
                    if n > 0 {
                        q.push(", ");
                    }
                    q.push($crate::store::JOB_UPDATE_COLUMNS[*i])
                        .push(" = v.column")
                        .push(n + 2);
                }
                q.push(" FROM (");
                q.push_values(chunk, |mut b, j| {
                    b.push_bind(j.job_id.clone());
                    for i in set {
                        match i {
                            0 => b.push_bind(j.state.clone()),
                            1 => b.push_bind(j.blocked_reason.clone()),
                            2 => b.push_bind(j.attempt),
                            3 => b.push_bind(j.lease_id.clone()),
                            4 => b.push_bind(j.lease_worker.clone()),
                            5 => b.push_bind(j.lease_until),
                            6 => b.push_bind(j.lease_seconds),
                            7 => b.push_bind(j.stage.clone()),
                            8 => b.push_bind(j.step.clone()),
                            9 => b.push_bind(j.step_index),
                            10 => b.push_bind(j.message.clone()),
                            11 => b.push_bind(j.percent),
                            12 => b.push_bind(j.log_lines),
                            13 => b.push_bind(j.result.clone()),
                            14 => b.push_bind(j.error_code.clone()),
                            15 => b.push_bind(j.error_message.clone()),
                            16 => b.push_bind(j.failure_start),
                            17 => b.push_bind(j.failure_end),
                            18 => b.push_bind(j.idempotency_key.clone()),
                            19 => b.push_bind(j.updated_at),
                            20 => b.push_bind(j.state_changed_at),
                            21 => b.push_bind(j.started_at),
                            22 => b.push_bind(j.finished_at),
                            _ => b.push_bind(j.step_started_at),
                        };
                    }
                });
                q.push(") AS v WHERE jobs.job_id = v.column1");
            }

            /// Insert or replace artifact rows (one statement).
            fn push_upsert_artifacts(q: &mut sqlx::QueryBuilder<$db>, chunk: &[ArtifactRecord]) {
                q.push(
                    "INSERT INTO artifacts (tenant_id, job_id, run_id, name, size, sha256, content_type, path, created_at, content) ",
                );
                q.push_values(chunk, |mut b, a| {
                    b.push_bind(a.tenant_id.clone())
                        .push_bind(a.job_id.clone())
                        .push_bind(a.run_id.clone())
                        .push_bind(a.name.clone())
                        .push_bind(a.size)
                        .push_bind(a.sha256.clone())
                        .push_bind(a.content_type.clone())
                        .push_bind(a.path.clone())
                        .push_bind(a.created_at)
                        .push_bind(a.content.clone());
                });
                q.push(
                    " ON CONFLICT (job_id, name) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,
                         content_type = excluded.content_type, path = excluded.path, created_at = excluded.created_at,
                         content = excluded.content",
                );
            }

            /// Insert events (one statement).
            fn push_insert_events(q: &mut sqlx::QueryBuilder<$db>, chunk: &[std::sync::Arc<runsignal_actors::Published>]) {
                q.push(
                    "INSERT INTO events (tenant_id, run_id, seq, event_id, type, job_id, correlation_id, occurred_at, envelope) ",
                );
                q.push_values(chunk, |mut row, p| {
                    let e = &p.envelope;
                    let at = chrono::DateTime::parse_from_rfc3339(&e.occurred_at)
                        .map(|t| t.timestamp_millis())
                        .unwrap_or_default();
                    row.push_bind(e.tenant_id.clone())
                        .push_bind(e.run_id.clone())
                        .push_bind(e.seq as i64)
                        .push_bind(e.event_id.clone())
                        .push_bind(e.event_type.clone())
                        .push_bind(e.job_id.clone())
                        .push_bind(e.correlation_id.clone())
                        .push_bind(at)
                        .push_bind(String::from_utf8_lossy(&p.json).into_owned());
                });
            }

            /// [`WriteTx::jobs_and_runs`] in one statement, for a backend
            /// without row locks: every job of the runs of `job_ids`, each
            /// with its run's columns.
            async fn jobs_with_runs(&mut self, job_ids: &[String]) -> StoreResult<Vec<$crate::store::sql::RunJobs>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT json_group_array(",
                    $crate::store::sql::PACKED_ROW!(),
                    "0) ORDER BY j.tenant_id, j.run_id, j.created_at, j.job_id)
                       FROM runs r JOIN jobs j ON j.tenant_id = r.tenant_id AND j.run_id = r.run_id
                      WHERE (r.tenant_id, r.run_id) IN (SELECT tenant_id, run_id FROM jobs WHERE job_id IN ("
                ));
                let mut list = q.separated(", ");
                for id in job_ids {
                    list.push_bind(id.clone());
                }
                q.push("))");
                let packed: String = q.build_query_scalar().fetch_one(self.conn().await?).await?;
                Ok($crate::store::sql::runs_of_packed(&packed)?.0)
            }

            /// `SELECT <columns>` of up to `limit` queued jobs of `packs` (of
            /// one tenant, or all) that have their run row, oldest first.
            fn push_queued(
                q: &mut sqlx::QueryBuilder<$db>,
                columns: &'static str,
                tenant: Option<&str>,
                packs: &[String],
                limit: u32,
            ) {
                q.push("SELECT ").push(columns).push(
                    " FROM jobs j JOIN runs r ON r.tenant_id = j.tenant_id AND r.run_id = j.run_id WHERE ",
                );
                if let Some(tenant) = tenant {
                    q.push("j.tenant_id = ").push_bind(tenant.to_owned()).push(" AND ");
                }
                q.push("j.state = 'queued' AND j.pack IN (");
                let mut list = q.separated(", ");
                for pack in packs {
                    list.push_bind(pack.clone());
                }
                q.push(") ORDER BY j.job_id LIMIT ").push(limit);
            }

            /// [`WriteTx::queued_jobs_and_runs`] in one statement, for a
            /// backend without row locks: the candidates (flagged in the packed row)
            /// and every job of their runs, each with its run's columns.
            async fn queued_with_runs(
                &mut self,
                tenant: Option<&str>,
                packs: &[String],
                limit: u32,
            ) -> StoreResult<(Vec<JobRecord>, Vec<$crate::store::sql::RunJobs>)> {
                let mut q = sqlx::QueryBuilder::<$db>::new("WITH c AS (");
                Self::push_queued(&mut q, "j.job_id, j.tenant_id, j.run_id", tenant, packs, limit);
                q.push(concat!(
                    ") SELECT json_group_array(",
                    $crate::store::sql::PACKED_ROW!(),
                    "j.job_id IN (SELECT job_id FROM c)) ORDER BY j.tenant_id, j.run_id, j.created_at, j.job_id)
                       FROM runs r JOIN jobs j ON j.tenant_id = r.tenant_id AND j.run_id = r.run_id
                      WHERE (r.tenant_id, r.run_id) IN (SELECT tenant_id, run_id FROM c)"
                ));
                let packed: String = q.build_query_scalar().fetch_one(self.conn().await?).await?;
                let (runs, mut candidates) = $crate::store::sql::runs_of_packed(&packed)?;
                candidates.sort_by(|a, b| a.job_id.cmp(&b.job_id));
                Ok((candidates, runs))
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::tx::WriteTx for $tx {
            fn isolate(&mut self) {
                self.isolation.wanted = true;
            }

            async fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
                if self.isolation.failed {
                    return Err(StoreError::NotCommitted(
                        "a savepoint could not be taken; the transaction is aborted".into(),
                    ));
                }
                if std::mem::take(&mut self.isolation.wanted) {
                    // This write sent no statement: nothing to undo (a
                    // savepoint still open is the previous write's).
                    return Ok(());
                }
                if std::mem::take(&mut self.isolation.open) {
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
                        .execute(&mut *self.tx)
                        .await?;
                }
                Ok(())
            }

            fn writes(&self) -> u64 {
                self.writes
            }

            async fn commit(self: Box<Self>) -> StoreResult<()> {
                self.tx.end(true).await
            }

            async fn rollback(self: Box<Self>) -> StoreResult<()> {
                self.tx.end(false).await
            }

            async fn run_row(&mut self, tenant: &str, run_id: &str) -> StoreResult<Option<RunRow>> {
                type Row = (i64, Option<String>, Option<i64>, String, Option<i64>, i64, i64);
                let row: Option<Row> = sqlx::query_as(concat!(
                    "SELECT last_seq, signal_etag, signal_seq, status, completed_seq, updated_at, created_at
                       FROM runs WHERE tenant_id = $1 AND run_id = $2",
                    $lock
                ))
                .bind(tenant)
                .bind(run_id)
                .fetch_optional(self.conn().await?)
                .await?;
                Ok(row.map(
                    |(last_seq, signal_etag, signal_seq, status, completed_seq, updated_at, created_at)| RunRow {
                        last_seq,
                        signal_etag,
                        signal_seq,
                        status,
                        completed_seq,
                        updated_at,
                        created_at,
                    },
                ))
            }

            async fn insert_run(&mut self, run: &RunRecord) -> StoreResult<bool> {
                let done = sqlx::query(
                    "INSERT INTO runs (tenant_id, run_id, name, labels, status, last_seq, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(&run.tenant_id)
                .bind(&run.run_id)
                .bind(&run.name)
                .bind(&run.labels)
                .bind(&run.status)
                .bind(run.last_seq)
                .bind(run.created_at)
                .bind(run.updated_at)
                .execute(self.conn().await?)
                .await?;
                let inserted = done.rows_affected() == 1;
                if inserted {
                    self.writes += 1;
                }
                Ok(inserted)
            }

            async fn job_and_run(
                &mut self,
                tenant: &str,
                job_id: &str,
            ) -> StoreResult<Option<(RunRow, Vec<JobRecord>)>> {
                let found = self.jobs_and_runs(&[job_id.to_owned()]).await?;
                Ok(found
                    .into_iter()
                    .find(|(key, _, _)| &*key.tenant == tenant)
                    .map(|(_, run, jobs)| (run, jobs)))
            }

            async fn jobs_and_runs(
                &mut self,
                job_ids: &[String],
            ) -> StoreResult<Vec<(runsignal_actors::RunKey, RunRow, Vec<JobRecord>)>> {
                if $skip.is_empty() {
                    // No row locks (SQLite's single writer): one statement,
                    // each job with its run's columns.
                    return self.jobs_with_runs(job_ids).await;
                }
                // Two statements, in this order: the run rows first (locked
                // on PostgreSQL), then their jobs. A jobs read that waited
                // for a run's lock in the same statement would miss a job
                // another writer of the run committed meanwhile.
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT tenant_id, run_id, last_seq, signal_etag, signal_seq, status, completed_seq,
                            updated_at, created_at
                       FROM runs
                      WHERE (tenant_id, run_id) IN (SELECT tenant_id, run_id FROM jobs WHERE job_id IN (",
                );
                let mut list = q.separated(", ");
                for id in job_ids {
                    list.push_bind(id.clone());
                }
                q.push(")) ORDER BY tenant_id, run_id").push($lock);
                type Row = (String, String, i64, Option<String>, Option<i64>, String, Option<i64>, i64, i64);
                let runs: Vec<Row> = q.build_query_as().fetch_all(self.conn().await?).await?;
                if runs.is_empty() {
                    return Ok(Vec::new());
                }
                // (PostgreSQL only: SQLite, without table statistics, walks
                // the whole jobs index for this row-value list; it reads
                // through the run rows instead, in `jobs_with_runs`.)
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM jobs WHERE (tenant_id, run_id) IN (");
                let mut list = q.separated(", ");
                for (tenant, run, ..) in &runs {
                    list.push("(")
                        .push_bind_unseparated(tenant.clone())
                        .push_unseparated(", ")
                        .push_bind_unseparated(run.clone())
                        .push_unseparated(")");
                }
                q.push(") ORDER BY tenant_id, run_id, created_at, job_id").push($lock);
                let jobs: Vec<JobRecord> = q.build_query_as().fetch_all(self.conn().await?).await?;
                let mut out: Vec<(runsignal_actors::RunKey, RunRow, Vec<JobRecord>)> = runs
                    .into_iter()
                    .map(|(tenant, run, last_seq, signal_etag, signal_seq, status, completed_seq, updated_at, created_at)| {
                        let row = RunRow {
                            last_seq,
                            signal_etag,
                            signal_seq,
                            status,
                            completed_seq,
                            updated_at,
                            created_at,
                        };
                        (runsignal_actors::RunKey::new(&tenant, &run), row, Vec::new())
                    })
                    .collect();
                for job in jobs {
                    if let Some((_, _, list)) = out
                        .iter_mut()
                        .find(|(k, _, _)| *k.tenant == *job.tenant_id && *k.run_id == *job.run_id)
                    {
                        list.push(job);
                    }
                }
                Ok(out)
            }

            async fn job_by_idempotency_key(
                &mut self,
                tenant: &str,
                key: &str,
            ) -> StoreResult<Option<JobRecord>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT * FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2",
                    $lock
                ))
                .bind(tenant)
                .bind(key)
                .fetch_optional(self.conn().await?)
                .await?)
            }

            async fn run_jobs(&mut self, tenant: &str, run_id: &str) -> StoreResult<Vec<JobRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM jobs WHERE tenant_id = $1 AND run_id = $2 ORDER BY created_at, job_id",
                )
                .bind(tenant)
                .bind(run_id)
                .fetch_all(self.conn().await?)
                .await?)
            }

            async fn pack_history(
                &mut self,
                tenant: &str,
                pack: &str,
            ) -> StoreResult<$crate::store::history::PackRecord> {
                use $crate::store::history::{Outcome, PackRecord, OUTCOMES, WINDOW};
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT job_id, finished_at, finished_at - started_at FROM jobs WHERE tenant_id = ",
                );
                q.push_bind(tenant.to_owned())
                    .push(" AND pack = ")
                    .push_bind(pack.to_owned())
                    .push(
                        " AND state = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL
                          ORDER BY finished_at DESC, job_id DESC LIMIT ",
                    )
                    .push(WINDOW);
                let samples: Vec<(String, i64, i64)> =
                    q.build_query_as().fetch_all(self.conn().await?).await?;
                // A finished run is written last by the write that
                // finished it (`updated_at` is then its end).
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT run_id, status, updated_at FROM runs r WHERE tenant_id = ",
                );
                q.push_bind(tenant.to_owned())
                    .push(
                        " AND status IN ('succeeded', 'failed', 'canceled')
                          AND EXISTS (SELECT 1 FROM jobs j WHERE j.tenant_id = r.tenant_id
                                        AND j.run_id = r.run_id AND j.pack = ",
                    )
                    .push_bind(pack.to_owned())
                    .push(") ORDER BY updated_at DESC, run_id DESC LIMIT ")
                    .push(OUTCOMES);
                let outcomes: Vec<(String, String, i64)> =
                    q.build_query_as().fetch_all(self.conn().await?).await?;
                Ok(PackRecord {
                    samples,
                    outcomes: outcomes
                        .into_iter()
                        .map(|(run_id, status, finished_at)| Outcome { run_id, status, finished_at })
                        .collect(),
                })
            }

            async fn artifact_names(&mut self, tenant: &str, job_id: &str) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT name FROM artifacts WHERE tenant_id = $1 AND job_id = $2 ORDER BY name",
                )
                .bind(tenant)
                .bind(job_id)
                .fetch_all(self.conn().await?)
                .await?)
            }

            async fn insert_job(&mut self, job: &JobRecord) -> StoreResult<()> {
                self.upsert_jobs(std::slice::from_ref(job)).await
            }

            async fn upsert_jobs(&mut self, jobs: &[JobRecord]) -> StoreResult<()> {
                // 34 parameters a row: 500 rows stay under both backends' limits.
                self.write_chunks(jobs, 500, Self::push_upsert_jobs).await
            }

            async fn update_jobs(&mut self, columns: u32, jobs: &[&JobRecord]) -> StoreResult<()> {
                self.writes += 1;
                let set = Self::update_set(columns);
                if set.is_empty() {
                    return Ok(());
                }
                for chunk in jobs.chunks(16_000 / (set.len() + 1)) {
                    let mut q = sqlx::QueryBuilder::<$db>::new("");
                    Self::push_update_jobs(&mut q, &set, chunk);
                    let updated = q.build().execute(self.conn().await?).await?.rows_affected();
                    if updated != chunk.len() as u64 {
                        return Err(StoreError::NotCommitted(format!(
                            "{} of {} job rows to update were missing",
                            chunk.len() as u64 - updated.min(chunk.len() as u64),
                            chunk.len()
                        )));
                    }
                }
                Ok(())
            }

            async fn queued_jobs_and_runs(
                &mut self,
                tenant: Option<&str>,
                packs: &[String],
                limit: u32,
            ) -> StoreResult<(Vec<JobRecord>, Vec<$crate::store::sql::RunJobs>)> {
                if $skip.is_empty() {
                    return self.queued_with_runs(tenant, packs, limit).await;
                }
                // The candidates (their run rows locked), then their runs
                // and jobs read again under the locks (another lessee may
                // have taken one meanwhile): the same statements for any number.
                let candidates = self.queued_jobs(tenant, packs, limit).await?;
                if candidates.is_empty() {
                    return Ok((candidates, Vec::new()));
                }
                let ids: Vec<String> = candidates.iter().map(|j| j.job_id.clone()).collect();
                let runs = self.jobs_and_runs(&ids).await?;
                Ok((candidates, runs))
            }

            async fn expired_jobs(&mut self, now: i64, limit: u32) -> StoreResult<Vec<JobRecord>> {
                // Run rows first, as every writer locks them (see `queued_jobs`).
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT j.* FROM jobs j JOIN runs r ON r.tenant_id = j.tenant_id AND r.run_id = j.run_id
                      WHERE j.state IN ('loading', 'working') AND j.lease_until IS NOT NULL AND j.lease_until < ",
                );
                q.push_bind(now)
                    .push(" ORDER BY j.job_id LIMIT ")
                    .push(limit);
                if !$skip.is_empty() {
                    q.push(" FOR UPDATE OF r SKIP LOCKED");
                }
                Ok(q.build_query_as().fetch_all(self.conn().await?).await?)
            }

            async fn expire_worker_leases(&mut self, worker_id: &str, now: i64) -> StoreResult<u64> {
                self.writes += 1;
                let done = sqlx::query(
                    "UPDATE jobs SET lease_until = $1 WHERE lease_worker = $2 AND state IN ('loading', 'working')",
                )
                .bind(now)
                .bind(worker_id)
                .execute(self.conn().await?)
                .await?;
                Ok(done.rows_affected())
            }

            async fn write_rows(&mut self, rows: &$crate::store::tx::BatchRows<'_>) -> StoreResult<()> {
                // The batch's rows belong to no one write: outside any
                // write's savepoint (one that wants one has sent nothing).
                self.isolation.wanted = false;
                if !$multi {
                    for (columns, jobs) in &rows.updates {
                        self.update_jobs(*columns, jobs).await?;
                    }
                    if !rows.upserts.is_empty() {
                        self.upsert_jobs(&rows.upserts).await?;
                    }
                    // At most 10 parameters a row: 1,000 rows stay under
                    // both backends' limits.
                    if !rows.artifacts.is_empty() {
                        self.write_chunks(rows.artifacts, 1000, Self::push_upsert_artifacts).await?;
                    }
                    if !rows.events.is_empty() {
                        self.write_chunks(rows.events, 1000, Self::push_insert_events).await?;
                    }
                    if !rows.runs.is_empty() {
                        self.write_chunks(&rows.runs, 1000, Self::push_save_runs).await?;
                    }
                    return Ok(());
                }
                // Every statement in one round trip, in the order above.
                // Each writes exactly one row per row it is given (an
                // update of a missing job writes none): the total says
                // whether all of them were written.
                self.writes += 1;
                let mut q = sqlx::QueryBuilder::<$db>::new("");
                let mut expected = 0u64;
                let next = |q: &mut sqlx::QueryBuilder<$db>, expected: &mut u64, rows: usize| {
                    if *expected > 0 {
                        q.push("; ");
                    }
                    *expected += rows as u64;
                };
                for (columns, jobs) in &rows.updates {
                    let set = Self::update_set(*columns);
                    if set.is_empty() {
                        continue;
                    }
                    for chunk in jobs.chunks(16_000 / (set.len() + 1)) {
                        next(&mut q, &mut expected, chunk.len());
                        Self::push_update_jobs(&mut q, &set, chunk);
                    }
                }
                for chunk in rows.upserts.chunks(500) {
                    next(&mut q, &mut expected, chunk.len());
                    Self::push_upsert_jobs(&mut q, chunk);
                }
                for chunk in rows.artifacts.chunks(1000) {
                    next(&mut q, &mut expected, chunk.len());
                    Self::push_upsert_artifacts(&mut q, chunk);
                }
                for chunk in rows.events.chunks(1000) {
                    next(&mut q, &mut expected, chunk.len());
                    Self::push_insert_events(&mut q, chunk);
                }
                for chunk in rows.runs.chunks(1000) {
                    next(&mut q, &mut expected, chunk.len());
                    Self::push_save_runs(&mut q, chunk);
                }
                if expected == 0 {
                    return Ok(());
                }
                // Not kept in the connection's statement cache: the text is
                // new with nearly every batch (its row counts), and would
                // push out the statements that do repeat.
                let written = q.build().persistent(false).execute(self.conn().await?).await?.rows_affected();
                if written != expected {
                    return Err(StoreError::NotCommitted(format!(
                        "{written} of the batch's {expected} rows were written (a job row to update was missing)"
                    )));
                }
                Ok(())
            }

            async fn insert_delivery(&mut self, d: &NewDelivery) -> StoreResult<()> {
                self.writes += 1;
                sqlx::query(
                    "INSERT INTO webhook_deliveries (tenant_id, job_id, state, idempotency_key, url, body, next_attempt_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                )
                .bind(&d.tenant_id)
                .bind(&d.job_id)
                .bind(&d.state)
                .bind(&d.idempotency_key)
                .bind(&d.url)
                .bind(&d.body)
                .bind(d.at)
                .execute(self.conn().await?)
                .await?;
                Ok(())
            }

            async fn claim_deliveries(
                &mut self,
                now: i64,
                limit: u32,
                share: &ClaimShare,
            ) -> StoreResult<Vec<WebhookDelivery>> {
                self.writes += 1;
                // A 410 from a job's receiver ends every later delivery of that job.
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'gone' WHERE status = 'pending'
                       AND job_id IN (SELECT job_id FROM webhook_deliveries WHERE status = 'gone')",
                )
                .execute(self.conn().await?)
                .await?;
                // Round robin (ADR 0025): `rn` numbers each tenant's claimable
                // rows in due order; a row's slot is `rn` plus the tenant's
                // deliveries in flight. Lower slots go first, and within a
                // slot the tenants after `after` (then from the first id).
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT d.* FROM webhook_deliveries d JOIN (
                       SELECT x.id, ROW_NUMBER() OVER (PARTITION BY x.tenant_id ORDER BY x.next_attempt_at, x.id) AS rn
                         FROM webhook_deliveries x
                        WHERE x.status = 'pending' AND x.next_attempt_at <= ",
                );
                q.push_bind(now).push(
                    " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                                       WHERE e.job_id = x.job_id AND e.id < x.id AND e.status IN ('pending', 'sending'))
                      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries g
                                       WHERE g.job_id = x.job_id AND g.status = 'gone')
                     ) r ON r.id = d.id WHERE d.status = 'pending' AND ",
                );
                let slot = |q: &mut sqlx::QueryBuilder<$db>| {
                    q.push("(r.rn");
                    if !share.busy.is_empty() {
                        q.push(" + CASE d.tenant_id");
                        for (tenant, n) in &share.busy {
                            q.push(" WHEN ").push_bind(tenant.clone());
                            q.push(" THEN ").push_bind(i64::from(*n));
                        }
                        q.push(" ELSE 0 END");
                    }
                    q.push(")");
                };
                slot(&mut q);
                q.push(" <= ").push_bind(i64::from(share.per_tenant.max(1)));
                q.push(" ORDER BY ");
                slot(&mut q);
                q.push(", CASE WHEN d.tenant_id > ")
                    .push_bind(share.after.clone().unwrap_or_default())
                    .push(" THEN 0 ELSE 1 END, d.tenant_id, r.rn LIMIT ")
                    .push(limit);
                // The window function is in the subquery: lock only `d`.
                // `d.status = 'pending'` above is what makes this safe across
                // nodes: PostgreSQL rechecks only the locked table's own
                // conditions on a row another transaction changed after this
                // statement's snapshot, so without it a row another node had
                // just claimed (and committed) would be claimed and sent again.
                if !$skip.is_empty() {
                    q.push(" FOR UPDATE OF d SKIP LOCKED");
                }
                let due: Vec<WebhookDelivery> = q.build_query_as().fetch_all(self.conn().await?).await?;
                // While `sending`, `next_attempt_at` is when the claim runs out.
                for d in &due {
                    sqlx::query("UPDATE webhook_deliveries SET status = 'sending', attempts = attempts + 1, next_attempt_at = $1 WHERE id = $2")
                        .bind(now + share.claim_ms)
                        .bind(d.id)
                        .execute(self.conn().await?)
                        .await?;
                }
                Ok(due
                    .into_iter()
                    .map(|d| WebhookDelivery {
                        status: "sending".into(),
                        attempts: d.attempts + 1,
                        ..d
                    })
                    .collect())
            }

            async fn finish_delivery(&mut self, id: i64, outcome: &WebhookOutcome, now: i64) -> StoreResult<()> {
                self.writes += 1;
                let (status, next, code, error, delivered): (&str, Option<i64>, Option<u16>, Option<&str>, Option<i64>) =
                    match outcome {
                        WebhookOutcome::Delivered { status } => ("delivered", None, Some(*status), None, Some(now)),
                        WebhookOutcome::Retry { at_ms, status, error } => ("pending", Some(*at_ms), *status, Some(error), None),
                        WebhookOutcome::Failed { status, error } => ("failed", None, *status, Some(error), None),
                        WebhookOutcome::Gone { status } => {
                            ("gone", None, Some(*status), Some("receiver answered 410 Gone"), None)
                        }
                    };
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = $1, next_attempt_at = COALESCE($2, next_attempt_at),
                         last_status_code = $3, last_error = $4, delivered_at = $5 WHERE id = $6",
                )
                .bind(status)
                .bind(next)
                .bind(code.map(i64::from))
                .bind(error)
                .bind(delivered)
                .bind(id)
                .execute(self.conn().await?)
                .await?;
                Ok(())
            }

            async fn reset_sending(&mut self, now: i64, only_expired: bool) -> StoreResult<u64> {
                self.writes += 1;
                // Due at once (while `sending`, `next_attempt_at` was the
                // claim's end, not a retry time).
                let done = sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1
                      WHERE status = 'sending' AND (NOT $2 OR next_attempt_at <= $1)",
                )
                .bind(now)
                .bind(only_expired)
                .execute(self.conn().await?)
                .await?;
                Ok(done.rows_affected())
            }

            async fn put_snapshot(
                &mut self,
                tenant: &str,
                run_id: &str,
                seq: i64,
                signal: &str,
                now: i64,
            ) -> StoreResult<()> {
                self.writes += 1;
                sqlx::query(
                    "INSERT INTO first_signal_snapshots (tenant_id, run_id, seq, signal, updated_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (tenant_id, run_id) DO UPDATE SET seq = excluded.seq, signal = excluded.signal,
                         updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(run_id)
                .bind(seq)
                .bind(signal)
                .bind(now)
                .execute(self.conn().await?)
                .await?;
                Ok(())
            }

            async fn prunable_runs(&mut self, cutoff: i64, limit: u32) -> StoreResult<Vec<(String, String)>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT tenant_id, run_id FROM jobs GROUP BY tenant_id, run_id
                     HAVING SUM(CASE WHEN state IN ('done', 'failed', 'canceled') THEN 0 ELSE 1 END) = 0
                        AND MAX(finished_at) < ",
                );
                q.push_bind(cutoff).push(" LIMIT ").push(limit);
                Ok(q.build_query_as().fetch_all(self.conn().await?).await?)
            }

            async fn delete_run(&mut self, tenant: &str, run_id: &str) -> StoreResult<Vec<String>> {
                self.writes += 1;
                let paths: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM artifacts WHERE tenant_id = $1 AND run_id = $2 RETURNING path",
                )
                .bind(tenant)
                .bind(run_id)
                .fetch_all(self.conn().await?)
                .await?;
                sqlx::query(
                    "DELETE FROM webhook_deliveries WHERE job_id IN (SELECT job_id FROM jobs WHERE tenant_id = $1 AND run_id = $2)",
                )
                .bind(tenant)
                .bind(run_id)
                .execute(self.conn().await?)
                .await?;
                for sql in [
                    "DELETE FROM events WHERE tenant_id = $1 AND run_id = $2",
                    "DELETE FROM jobs WHERE tenant_id = $1 AND run_id = $2",
                    "DELETE FROM first_signal_snapshots WHERE tenant_id = $1 AND run_id = $2",
                    "DELETE FROM runs WHERE tenant_id = $1 AND run_id = $2",
                ] {
                    sqlx::query(sql).bind(tenant).bind(run_id).execute(self.conn().await?).await?;
                }
                // Artifacts their rows held (ADR 0061) have no file.
                Ok(paths.into_iter().filter(|p| !p.is_empty()).collect())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::RunReads for $backend {
            async fn get_run(&self, tenant: &str, run_id: &str) -> StoreResult<RunRecord> {
                sqlx::query_as("SELECT * FROM runs WHERE tenant_id = $1 AND run_id = $2")
                    .bind(tenant)
                    .bind(run_id)
                    .fetch_optional(&self.reader)
                    .await?
                    .ok_or(StoreError::RunNotFound)
            }

            async fn list_runs(&self, tenant: &str, query: &RunQuery) -> StoreResult<Page<RunRecord>> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM runs WHERE tenant_id = ");
                q.push_bind(tenant.to_owned());
                if let Some(status) = &query.status {
                    q.push(" AND status = ").push_bind(status.clone());
                }
                if let Some((at, id)) = query.cursor.as_deref().and_then(parse_run_cursor) {
                    q.push(" AND (created_at < ").push_bind(at);
                    q.push(" OR (created_at = ").push_bind(at).push(" AND run_id < ").push_bind(id).push("))");
                }
                q.push(" ORDER BY created_at DESC, run_id DESC LIMIT ").push(i64::from(query.limit) + 1);
                let mut items: Vec<RunRecord> = q.build_query_as().fetch_all(&self.reader).await?;
                let next = (items.len() > query.limit as usize).then(|| {
                    items.truncate(query.limit as usize);
                    // Non-empty: limit >= 1 and more rows than the limit came back.
                    let last = items.last().expect("page is not empty");
                    format!("{}_{}", last.created_at, last.run_id)
                });
                Ok(Page { items, next })
            }

            async fn cold_run(&self, tenant: &str, run_id: &str) -> StoreResult<Option<ColdRun>> {
                let row: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                    "SELECT last_seq, signal_seq, completed_seq FROM runs WHERE tenant_id = $1 AND run_id = $2",
                )
                .bind(tenant)
                .bind(run_id)
                .fetch_optional(&self.reader)
                .await?;
                let Some((last_seq, signal_seq, completed_seq)) = row else {
                    return Ok(None);
                };
                // The signal as the writer derived it from the jobs, with
                // what it knew then of the tenant's other runs
                // (`lastKnownOutcome`, `etaSeconds`): re-deriving now could
                // give another ETag for the same state (ADR 0028).
                let signal = match signal_seq {
                    None => None,
                    Some(seq) => {
                        let stored: Option<String> = sqlx::query_scalar(
                            "SELECT envelope FROM events WHERE tenant_id = $1 AND run_id = $2 AND seq = $3",
                        )
                        .bind(tenant)
                        .bind(run_id)
                        .bind(seq)
                        .fetch_optional(&self.reader)
                        .await?;
                        match stored {
                            Some(json) => {
                                let mut envelope = $crate::store::sql::decode_event(&json)?;
                                let signal: Signal = serde_json::from_value(envelope.payload["signal"].take())
                                    .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?;
                                Some((signal, seq as u64))
                            }
                            None => None,
                        }
                    }
                };
                Ok(Some(ColdRun {
                    last_seq: last_seq as u64,
                    completed_seq: completed_seq.map(|s| s as u64),
                    signal,
                }))
            }

            async fn run_head(&self, tenant: &str, run_id: &str) -> StoreResult<Option<RunHead>> {
                let row: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                    "SELECT last_seq, completed_seq, signal_seq FROM runs WHERE tenant_id = $1 AND run_id = $2",
                )
                .bind(tenant)
                .bind(run_id)
                .fetch_optional(&self.reader)
                .await?;
                Ok(row.map(|(last, completed, signal)| RunHead {
                    last_seq: last as u64,
                    completed_seq: completed.map(|s| s as u64),
                    // As `cold_run` dates the signal it derives.
                    signal_seq: signal.unwrap_or(last) as u64,
                }))
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::JobReads for $backend {
            async fn get_job(&self, tenant: &str, job_id: &str) -> StoreResult<JobRecord> {
                sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND job_id = $2")
                    .bind(tenant)
                    .bind(job_id)
                    .fetch_optional(&self.reader)
                    .await?
                    .ok_or(StoreError::JobNotFound)
            }

            async fn list_jobs(&self, tenant: &str, query: &JobQuery) -> StoreResult<Page<JobRecord>> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM jobs WHERE tenant_id = ");
                q.push_bind(tenant.to_owned());
                if let Some(state) = query.state {
                    q.push(" AND state = ").push_bind(state.as_str());
                }
                if let Some(run_id) = &query.run_id {
                    q.push(" AND run_id = ").push_bind(run_id.clone());
                }
                if let Some(cursor) = &query.cursor {
                    q.push(" AND job_id < ").push_bind(cursor.clone());
                }
                q.push(" ORDER BY job_id DESC LIMIT ").push(i64::from(query.limit) + 1);
                let mut items: Vec<JobRecord> = q.build_query_as().fetch_all(&self.reader).await?;
                let next = (items.len() > query.limit as usize).then(|| {
                    items.truncate(query.limit as usize);
                    // Non-empty: limit >= 1 and more rows than the limit came back.
                    items.last().expect("page is not empty").job_id.clone()
                });
                Ok(Page { items, next })
            }

            async fn job_terminal_seq(&self, tenant: &str, job_id: &str) -> StoreResult<Option<u64>> {
                let seq: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(seq) FROM events WHERE tenant_id = $1 AND job_id = $2
                       AND type IN ('job.done', 'job.failed', 'job.canceled')",
                )
                .bind(tenant)
                .bind(job_id)
                .fetch_one(&self.reader)
                .await?;
                Ok(seq.map(|s| s as u64))
            }

            async fn queued_tenants(&self, packs: &[String]) -> StoreResult<Vec<(String, String)>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT tenant_id, MIN(job_id) FROM jobs WHERE state = 'queued' AND pack IN (",
                );
                let mut list = q.separated(", ");
                for pack in packs {
                    list.push_bind(pack.clone());
                }
                q.push(") GROUP BY tenant_id");
                Ok(q.build_query_as().fetch_all(&self.reader).await?)
            }

            async fn queued_since(
                &self,
                cutoff_ms: i64,
                after_job_id: &str,
                limit: u32,
            ) -> StoreResult<Vec<JobRecord>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT * FROM jobs WHERE state = 'queued' AND (state_changed_at <= ",
                );
                q.push_bind(cutoff_ms)
                    .push(" OR blocked_reason IS NOT NULL) AND job_id > ")
                    .push_bind(after_job_id.to_owned())
                    .push(" ORDER BY job_id LIMIT ")
                    .push(limit);
                Ok(q.build_query_as().fetch_all(&self.reader).await?)
            }

            async fn any_queued(&self, packs: &[String]) -> StoreResult<bool> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT job_id FROM jobs WHERE state = 'queued' AND pack IN (",
                );
                let mut list = q.separated(", ");
                for pack in packs {
                    list.push_bind(pack.clone());
                }
                q.push(") LIMIT 1");
                let found: Option<String> = q.build_query_scalar().fetch_optional(&self.reader).await?;
                Ok(found.is_some())
            }

            async fn list_artifacts(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<ArtifactRecord>> {
                Ok(sqlx::query_as("SELECT tenant_id, job_id, run_id, name, size, sha256, content_type, path, created_at
                                  FROM artifacts WHERE tenant_id = $1 AND job_id = $2 ORDER BY name")
                    .bind(tenant)
                    .bind(job_id)
                    .fetch_all(&self.reader)
                    .await?)
            }

            async fn get_artifact(
                &self,
                tenant: &str,
                job_id: &str,
                name: &str,
            ) -> StoreResult<Option<ArtifactRecord>> {
                Ok(sqlx::query_as("SELECT * FROM artifacts WHERE tenant_id = $1 AND job_id = $2 AND name = $3")
                    .bind(tenant)
                    .bind(job_id)
                    .bind(name)
                    .fetch_optional(&self.reader)
                    .await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::TimelineReads for $backend {
            async fn timeline(
                &self,
                tenant: &str,
                run_id: &str,
                query: &TimelineQuery,
            ) -> StoreResult<Vec<runsignal_actors::Envelope>> {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT last_seq FROM runs WHERE tenant_id = $1 AND run_id = $2")
                        .bind(tenant)
                        .bind(run_id)
                        .fetch_optional(&self.reader)
                        .await?;
                exists.ok_or(StoreError::RunNotFound)?;
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT envelope FROM events WHERE tenant_id = ");
                q.push_bind(tenant.to_owned()).push(" AND run_id = ").push_bind(run_id.to_owned());
                q.push(" AND seq > ").push_bind(query.after as i64);
                if let Some(corr) = &query.correlation_id {
                    q.push(" AND correlation_id = ").push_bind(corr.clone());
                }
                q.push(" ORDER BY seq LIMIT ").push(query.limit);
                let rows: Vec<String> = q.build_query_scalar().fetch_all(&self.reader).await?;
                rows.iter().map(|json| $crate::store::sql::decode_event(json)).collect()
            }

            async fn job_steps(
                &self,
                tenant: &str,
                job_id: &str,
                upto: u64,
            ) -> StoreResult<(Vec<runsignal_actors::Envelope>, Option<u64>)> {
                let rows: Vec<String> = sqlx::query_scalar(
                    "SELECT envelope FROM events WHERE job_id = $1 AND tenant_id = $2 AND seq <= $3
                       AND type IN ('job.loading', 'step.started', 'step.finished') ORDER BY seq",
                )
                .bind(job_id)
                .bind(tenant)
                .bind(upto as i64)
                .fetch_all(&self.reader)
                .await?;
                let latest: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(seq) FROM events WHERE job_id = $1 AND tenant_id = $2 AND seq <= $3",
                )
                .bind(job_id)
                .bind(tenant)
                .bind(upto as i64)
                .fetch_one(&self.reader)
                .await?;
                let events = rows
                    .iter()
                    .map(|json| $crate::store::sql::decode_event(json))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok((events, latest.map(|s| s as u64)))
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::OutboxReads for $backend {
            async fn next_webhook_due(&self) -> StoreResult<Option<i64>> {
                Ok(sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'")
                    .fetch_one(&self.reader)
                    .await?)
            }

            async fn job_webhooks(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<WebhookDelivery>> {
                Ok(sqlx::query_as("SELECT * FROM webhook_deliveries WHERE tenant_id = $1 AND job_id = $2 ORDER BY id")
                    .bind(tenant)
                    .bind(job_id)
                    .fetch_all(&self.reader)
                    .await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::SnapshotReads for $backend {
            async fn get_snapshot(&self, tenant: &str, run_id: &str) -> StoreResult<Option<(Signal, u64)>> {
                let row: Option<(String, i64)> = sqlx::query_as(
                    "SELECT signal, seq FROM first_signal_snapshots WHERE tenant_id = $1 AND run_id = $2",
                )
                .bind(tenant)
                .bind(run_id)
                .fetch_optional(&self.reader)
                .await?;
                Ok(row.and_then(|(json, seq)| serde_json::from_str(&json).ok().map(|s| (s, seq as u64))))
            }

            async fn recent_runs(
                &self,
                since_ms: i64,
                tenant: Option<&str>,
                max: u32,
            ) -> StoreResult<Vec<(String, String)>> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT tenant_id, run_id FROM runs WHERE updated_at >= ");
                q.push_bind(since_ms);
                if let Some(t) = tenant {
                    q.push(" AND tenant_id = ").push_bind(t.to_owned());
                }
                q.push(" ORDER BY updated_at DESC LIMIT ").push(max);
                Ok(q.build_query_as().fetch_all(&self.reader).await?)
            }
        }
    };
}

pub(crate) use sql_backend;
