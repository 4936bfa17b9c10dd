//! The embedded SQLite store.
//!
//! Two pools over one WAL database: a single-connection writer pool, so
//! writes are serialized by the pool's bounded wait queue instead of failing
//! with `SQLITE_BUSY`, and a reader pool for concurrent reads. One writer is
//! also what makes leasing race-free here: a job is moved out of `queued`
//! inside the only write transaction that can run.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runsignal_actors::envelope::{types, NewEnvelope};
use runsignal_actors::signal::derive;
use runsignal_actors::{new_ulid, JobState, Published, RunKey, Signal, SignalView};
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

use super::*;

pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
    queries: Arc<QueryCounter>,
}

impl SqliteStore {
    /// Open (creating the file and its directory when missing) and migrate.
    pub async fn open(
        url: &str,
        max_connections: u32,
        queries: Arc<QueryCounter>,
    ) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash (the contract);
            // only an OS crash or power loss can drop the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            reader,
            writer,
            queries,
        })
    }

    async fn begin(&self, correlation_id: &str) -> StoreResult<WriteTx> {
        self.queries.hit();
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx {
            tx,
            now: now_ms(),
            correlation_id: correlation_id.to_owned(),
            committed: Committed::default(),
        })
    }

    /// Lease queued jobs of `req.packs`: of one tenant, or of all (`None`).
    async fn lease_where(
        &self,
        tenant: Option<&str>,
        req: &LeaseRequest,
    ) -> StoreResult<Written<Vec<(String, LeasedJob)>>> {
        let mut w = self.begin(&req.correlation_id).await?;
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM jobs WHERE ");
        if let Some(tenant) = tenant {
            q.push("tenant_id = ").push_bind(tenant).push(" AND ");
        }
        q.push("state = 'queued' AND pack IN (");
        let mut packs = q.separated(", ");
        for pack in &req.packs {
            packs.push_bind(pack.clone());
        }
        q.push(") ORDER BY job_id LIMIT ")
            .push_bind(i64::from(req.max));
        let candidates: Vec<JobRecord> = q.build_query_as().fetch_all(&mut *w.tx).await?;
        let until = w.now + i64::from(req.lease_seconds) * 1000;
        let mut leased = Vec::with_capacity(candidates.len());
        let mut runs: Vec<(String, String)> = Vec::new();
        for job in candidates {
            let lease_id = new_ulid();
            sqlx::query(
                "UPDATE jobs SET attempt = attempt + 1, lease_id = $1, lease_worker = $2, lease_until = $3,
                     lease_seconds = $4, started_at = COALESCE(started_at, $5)
                 WHERE job_id = $6 AND state = 'queued'",
            )
            .bind(&lease_id)
            .bind(&req.worker_id)
            .bind(until)
            .bind(i64::from(req.lease_seconds))
            .bind(w.now)
            .bind(&job.job_id)
            .execute(&mut *w.tx)
            .await?;
            let attempt = job.attempt + 1;
            sqlx::query("UPDATE jobs SET state = 'loading', updated_at = $1, state_changed_at = $1, blocked_reason = NULL WHERE job_id = $2")
                .bind(w.now)
                .bind(&job.job_id)
                .execute(&mut *w.tx)
                .await?;
            let payload = json!({"state": "loading", "previousState": "queued", "attempt": attempt,
                                 "workerId": req.worker_id, "leaseUntil": rfc3339(until)});
            w.enqueue_webhook(&job, "loading", Some("queued"), attempt, &payload)
                .await?;
            w.append(
                &job.tenant_id,
                &job.run_id,
                Some(&job.job_id),
                types::JOB_LOADING,
                payload,
            )
            .await?;
            let run = (job.tenant_id.clone(), job.run_id.clone());
            if !runs.contains(&run) {
                runs.push(run);
            }
            leased.push((
                job.tenant_id.clone(),
                LeasedJob {
                    inputs: serde_json::from_str(&job.inputs).unwrap_or(Value::Null),
                    job_id: job.job_id,
                    run_id: job.run_id,
                    pack: job.pack,
                    lease_id,
                    lease_until: rfc3339(until),
                    attempt,
                },
            ));
        }
        for (tenant, run) in runs {
            w.refresh_run(&tenant, &run).await?;
        }
        Ok(Written {
            value: leased,
            committed: w.commit().await?,
        })
    }

    async fn job_in(&self, tenant: &str, job_id: &str) -> StoreResult<JobRecord> {
        sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND job_id = $2")
            .bind(tenant)
            .bind(job_id)
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::JobNotFound)
    }
}

/// One write transaction and the events it appends.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    now: i64,
    correlation_id: String,
    committed: Committed,
}

impl WriteTx {
    /// Append one event to the run's timeline with the next seq.
    async fn append(
        &mut self,
        tenant: &str,
        run: &str,
        job: Option<&str>,
        ty: &str,
        payload: Value,
    ) -> StoreResult<u64> {
        self.append_with(tenant, run, job, ty, |_| (payload, None))
            .await
    }

    /// Append an event whose payload depends on its seq (`signal.changed`).
    async fn append_with(
        &mut self,
        tenant: &str,
        run: &str,
        job: Option<&str>,
        ty: &str,
        make: impl FnOnce(u64) -> (Value, Option<Arc<SignalView>>),
    ) -> StoreResult<u64> {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE runs SET last_seq = last_seq + 1, updated_at = $1 WHERE tenant_id = $2 AND run_id = $3 RETURNING last_seq",
        )
        .bind(self.now)
        .bind(tenant)
        .bind(run)
        .fetch_optional(&mut *self.tx)
        .await?
        .ok_or(StoreError::RunNotFound)?;
        let seq = seq as u64;
        let (payload, signal) = make(seq);
        let envelope = NewEnvelope {
            event_id: new_ulid(),
            event_type: ty,
            tenant_id: tenant,
            run_id: run,
            job_id: job,
            seq,
            occurred_at: rfc3339(self.now),
            correlation_id: &self.correlation_id,
            payload,
        }
        .seal();
        let published = Published::new(envelope, signal);
        sqlx::query(
            "INSERT INTO events (tenant_id, run_id, seq, event_id, type, job_id, correlation_id, occurred_at, envelope)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tenant)
        .bind(run)
        .bind(seq as i64)
        .bind(&published.envelope.event_id)
        .bind(ty)
        .bind(job)
        .bind(&self.correlation_id)
        .bind(self.now)
        .bind(std::str::from_utf8(&published.json).unwrap_or_default())
        .execute(&mut *self.tx)
        .await?;
        let key = RunKey::new(tenant, run);
        match self.committed.runs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, events)) => events.push(published),
            None => self.committed.runs.push((key, vec![published])),
        }
        Ok(seq)
    }

    async fn job(&mut self, tenant: &str, job_id: &str) -> StoreResult<JobRecord> {
        sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND job_id = $2")
            .bind(tenant)
            .bind(job_id)
            .fetch_optional(&mut *self.tx)
            .await?
            .ok_or(StoreError::JobNotFound)
    }

    /// Re-derive the run's signal and status; append `signal.changed` and
    /// `run.completed` when they changed.
    async fn refresh_run(&mut self, tenant: &str, run: &str) -> StoreResult<()> {
        let jobs: Vec<JobRecord> =
            sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND run_id = $2")
                .bind(tenant)
                .bind(run)
                .fetch_all(&mut *self.tx)
                .await?;
        let (old_etag, old_status): (Option<String>, String) = sqlx::query_as(
            "SELECT signal_etag, status FROM runs WHERE tenant_id = $1 AND run_id = $2",
        )
        .bind(tenant)
        .bind(run)
        .fetch_one(&mut *self.tx)
        .await?;
        let facts: Vec<_> = jobs.iter().map(JobRecord::facts).collect();
        if let Some(signal) = derive(run, &facts) {
            let etag = signal.etag();
            if old_etag.as_deref() != Some(etag.as_str()) {
                let seq = self
                    .append_with(tenant, run, None, types::SIGNAL_CHANGED, |seq| {
                        let view = Arc::new(SignalView::new(signal.clone(), seq));
                        (json!({"etag": etag, "signal": signal}), Some(view))
                    })
                    .await?;
                sqlx::query("UPDATE runs SET signal_etag = $1, signal_seq = $2 WHERE tenant_id = $3 AND run_id = $4")
                    .bind(&etag)
                    .bind(seq as i64)
                    .bind(tenant)
                    .bind(run)
                    .execute(&mut *self.tx)
                    .await?;
            }
        }
        let status = run_status(&jobs);
        if status != old_status {
            let completed_seq = if matches!(status, "succeeded" | "failed" | "canceled") {
                let payload = json!({"status": status});
                Some(
                    self.append(tenant, run, None, types::RUN_COMPLETED, payload)
                        .await? as i64,
                )
            } else {
                None
            };
            sqlx::query("UPDATE runs SET status = $1, completed_seq = $2 WHERE tenant_id = $3 AND run_id = $4")
                .bind(status)
                .bind(completed_seq)
                .bind(tenant)
                .bind(run)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Move a job to `to`, clearing its lease, and append the state event.
    async fn transition(&mut self, job: &JobRecord, to: JobState, extra: Value) -> StoreResult<()> {
        let terminal = to.is_terminal();
        sqlx::query(
            "UPDATE jobs SET state = $1, lease_id = NULL, lease_worker = NULL, lease_until = NULL,
                 blocked_reason = CASE WHEN $2 THEN NULL ELSE blocked_reason END,
                 updated_at = $3, state_changed_at = $3,
                 finished_at = CASE WHEN $2 THEN $3 ELSE finished_at END
             WHERE job_id = $4",
        )
        .bind(to.as_str())
        .bind(terminal)
        .bind(self.now)
        .bind(&job.job_id)
        .execute(&mut *self.tx)
        .await?;
        let mut payload =
            json!({"state": to.as_str(), "previousState": job.state, "attempt": job.attempt});
        merge_into(&mut payload, extra);
        let ty = match to {
            JobState::Queued => types::JOB_QUEUED,
            JobState::Loading => types::JOB_LOADING,
            JobState::Working => types::JOB_WORKING,
            JobState::Done => types::JOB_DONE,
            JobState::Failed => types::JOB_FAILED,
            JobState::Canceled => types::JOB_CANCELED,
        };
        self.enqueue_webhook(job, to.as_str(), Some(&job.state), job.attempt, &payload)
            .await?;
        self.append(&job.tenant_id, &job.run_id, Some(&job.job_id), ty, payload)
            .await?;
        Ok(())
    }

    /// Queue the state webhook of a job that has a `state_webhook_url`, in
    /// this transaction: the outbox row commits with the transition or not
    /// at all (SPEC §7.2). `event` is the state event's payload (`result`,
    /// `error`).
    async fn enqueue_webhook(
        &mut self,
        job: &JobRecord,
        state: &str,
        previous: Option<&str>,
        attempt: i64,
        event: &Value,
    ) -> StoreResult<()> {
        let Some(url) = &job.webhook_url else {
            return Ok(());
        };
        let key = format!("{}:{}", job.job_id, state);
        let mut body = json!({
            "job_id": job.job_id, "run_id": job.run_id, "state": state, "previous_state": previous,
            "occurred_at": rfc3339(self.now), "idempotency_key": key, "attempt": attempt,
        });
        for field in ["result", "error", "artifacts"] {
            if let Some(v) = event.get(field) {
                body[field] = v.clone();
            }
        }
        sqlx::query(
            "INSERT INTO webhook_deliveries (tenant_id, job_id, state, idempotency_key, url, body, next_attempt_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&job.tenant_id)
        .bind(&job.job_id)
        .bind(state)
        .bind(&key)
        .bind(url)
        .bind(body.to_string())
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        self.committed.webhooks = true;
        Ok(())
    }

    /// Close the job's running step, if one is running (`step.finished`).
    async fn finish_step(
        &mut self,
        job: &JobRecord,
        status: &str,
        exit_code: Option<i64>,
    ) -> StoreResult<()> {
        let (Some(index), Some(started)) = (job.step_index, job.step_started_at) else {
            return Ok(());
        };
        sqlx::query("UPDATE jobs SET step_started_at = NULL WHERE job_id = $1")
            .bind(&job.job_id)
            .execute(&mut *self.tx)
            .await?;
        let payload = json!({"stepIndex": index, "stepName": job.step, "status": status, "exitCode": exit_code,
                             "startedAt": rfc3339(started), "finishedAt": rfc3339(self.now)});
        self.append(
            &job.tenant_id,
            &job.run_id,
            Some(&job.job_id),
            types::STEP_FINISHED,
            payload,
        )
        .await?;
        Ok(())
    }

    /// Start step `index` (`step.started`), closing the previous one as succeeded.
    async fn start_step(
        &mut self,
        job: &JobRecord,
        index: i64,
        name: Option<&str>,
    ) -> StoreResult<()> {
        self.finish_step(job, "succeeded", None).await?;
        sqlx::query("UPDATE jobs SET step_started_at = $1 WHERE job_id = $2")
            .bind(self.now)
            .bind(&job.job_id)
            .execute(&mut *self.tx)
            .await?;
        let payload = json!({"stepIndex": index, "stepName": name, "status": "running", "exitCode": null,
                             "startedAt": rfc3339(self.now), "finishedAt": null});
        self.append(
            &job.tenant_id,
            &job.run_id,
            Some(&job.job_id),
            types::STEP_STARTED,
            payload,
        )
        .await?;
        Ok(())
    }

    /// A failure with attempts left requeues the job; otherwise it fails.
    async fn fail_or_retry(
        &mut self,
        job: &JobRecord,
        retryable: bool,
        code: &str,
        message: &str,
        range: Option<(i64, i64)>,
        exit_code: Option<i64>,
    ) -> StoreResult<()> {
        self.finish_step(job, "failed", exit_code).await?;
        let error = json!({"code": code, "message": message});
        if retryable && job.attempt < job.max_attempts {
            let payload =
                json!({"attempt": job.attempt, "maxAttempts": job.max_attempts, "error": error});
            self.append(
                &job.tenant_id,
                &job.run_id,
                Some(&job.job_id),
                types::JOB_RETRY_SCHEDULED,
                payload,
            )
            .await?;
            return self.transition(job, JobState::Queued, json!({})).await;
        }
        sqlx::query("UPDATE jobs SET error_code = $1, error_message = $2, failure_start = $3, failure_end = $4 WHERE job_id = $5")
            .bind(code)
            .bind(message)
            .bind(range.map(|r| r.0))
            .bind(range.map(|r| r.1))
            .bind(&job.job_id)
            .execute(&mut *self.tx)
            .await?;
        self.transition(job, JobState::Failed, json!({"error": error}))
            .await
    }

    /// The job, if `lease_id` is its current lease and it is still running.
    async fn leased_job(
        &mut self,
        tenant: &str,
        job_id: &str,
        lease_id: &str,
    ) -> StoreResult<JobRecord> {
        let job = self.job(tenant, job_id).await?;
        let running = matches!(job.job_state(), JobState::Loading | JobState::Working);
        if !running || job.lease_id.as_deref() != Some(lease_id) {
            return Err(StoreError::LeaseLost);
        }
        Ok(job)
    }

    /// The end of every job write: re-derive the run, read the job back,
    /// commit.
    async fn settle_job(
        mut self,
        tenant: &str,
        run_id: &str,
        job_id: &str,
    ) -> StoreResult<Written<JobRecord>> {
        self.refresh_run(tenant, run_id).await?;
        let job = self.job(tenant, job_id).await?;
        Ok(Written {
            value: job,
            committed: self.commit().await?,
        })
    }

    async fn commit(self) -> StoreResult<Committed> {
        self.tx.commit().await?;
        Ok(self.committed)
    }
}

fn merge_into(target: &mut Value, extra: Value) {
    if let (Value::Object(t), Value::Object(e)) = (target, extra) {
        t.extend(e);
    }
}

/// Run status from its jobs: pending, running, or the terminal outcome.
fn run_status(jobs: &[JobRecord]) -> &'static str {
    let states: Vec<JobState> = jobs.iter().map(JobRecord::job_state).collect();
    if states.is_empty() {
        "pending"
    } else if states.iter().any(|s| !s.is_terminal()) {
        "running"
    } else if states.contains(&JobState::Failed) {
        "failed"
    } else if states.contains(&JobState::Canceled) {
        "canceled"
    } else {
        "succeeded"
    }
}

async fn insert_run(
    w: &mut WriteTx,
    tenant: &str,
    run_id: &str,
    name: Option<&str>,
    labels: &Value,
) -> StoreResult<()> {
    let inserted = sqlx::query(
        "INSERT INTO runs (tenant_id, run_id, name, labels, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(run_id)
    .bind(name)
    .bind(labels.to_string())
    .bind(w.now)
    .execute(&mut *w.tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::RunExists);
    }
    w.append(
        tenant,
        run_id,
        None,
        types::RUN_CREATED,
        json!({"name": name, "labels": labels}),
    )
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn create_run(&self, tenant: &str, new: NewRun) -> StoreResult<Written<RunRecord>> {
        let mut w = self.begin(&new.correlation_id).await?;
        insert_run(
            &mut w,
            tenant,
            &new.run_id,
            new.name.as_deref(),
            &new.labels,
        )
        .await?;
        let run = sqlx::query_as("SELECT * FROM runs WHERE tenant_id = $1 AND run_id = $2")
            .bind(tenant)
            .bind(&new.run_id)
            .fetch_one(&mut *w.tx)
            .await?;
        Ok(Written {
            value: run,
            committed: w.commit().await?,
        })
    }

    async fn get_run(&self, tenant: &str, run_id: &str) -> StoreResult<RunRecord> {
        self.queries.hit();
        sqlx::query_as("SELECT * FROM runs WHERE tenant_id = $1 AND run_id = $2")
            .bind(tenant)
            .bind(run_id)
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::RunNotFound)
    }

    async fn list_runs(&self, tenant: &str, query: &RunQuery) -> StoreResult<Page<RunRecord>> {
        self.queries.hit();
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM runs WHERE tenant_id = ");
        q.push_bind(tenant);
        if let Some(status) = &query.status {
            q.push(" AND status = ").push_bind(status.clone());
        }
        if let Some((at, id)) = query.cursor.as_deref().and_then(parse_run_cursor) {
            q.push(" AND (created_at < ").push_bind(at);
            q.push(" OR (created_at = ")
                .push_bind(at)
                .push(" AND run_id < ")
                .push_bind(id)
                .push("))");
        }
        q.push(" ORDER BY created_at DESC, run_id DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);
        let mut items: Vec<RunRecord> = q.build_query_as().fetch_all(&self.reader).await?;
        let next = (items.len() > query.limit as usize).then(|| {
            items.truncate(query.limit as usize);
            // Non-empty: limit >= 1 and more rows than the limit came back.
            let last = items.last().expect("page is not empty");
            format!("{}_{}", last.created_at, last.run_id)
        });
        Ok(Page { items, next })
    }

    async fn submit_job(
        &self,
        tenant: &str,
        new: NewJob,
    ) -> StoreResult<Written<(JobRecord, bool)>> {
        let mut w = self.begin(&new.correlation_id).await?;
        if let Some(key) = &new.idempotency_key {
            let existing: Option<JobRecord> =
                sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2")
                    .bind(tenant)
                    .bind(key)
                    .fetch_optional(&mut *w.tx)
                    .await?;
            if let Some(job) = existing {
                if job.created_at > w.now - new.idempotency_window_ms {
                    return Ok(Written {
                        value: (job, false),
                        committed: w.commit().await?,
                    });
                }
                // Past the window the key is free again.
                sqlx::query("UPDATE jobs SET idempotency_key = NULL WHERE job_id = $1")
                    .bind(&job.job_id)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }
        let run_id = match &new.run_id {
            Some(run_id) => {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM runs WHERE tenant_id = $1 AND run_id = $2")
                        .bind(tenant)
                        .bind(run_id)
                        .fetch_optional(&mut *w.tx)
                        .await?;
                exists.ok_or(StoreError::RunNotFound)?;
                run_id.clone()
            }
            None => {
                let run_id = uuid::Uuid::new_v4().to_string();
                insert_run(&mut w, tenant, &run_id, None, &json!({})).await?;
                run_id
            }
        };
        let job_id = new_ulid();
        sqlx::query(
            "INSERT INTO jobs (job_id, tenant_id, run_id, pack, inputs, state, max_attempts, correlation_id,
                               idempotency_key, webhook_url, created_at, updated_at, state_changed_at)
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, $10, $10)",
        )
        .bind(&job_id)
        .bind(tenant)
        .bind(&run_id)
        .bind(&new.pack)
        .bind(new.inputs.to_string())
        .bind(i64::from(new.max_attempts))
        .bind(&new.correlation_id)
        .bind(&new.idempotency_key)
        .bind(&new.webhook_url)
        .bind(w.now)
        .execute(&mut *w.tx)
        .await?;
        let payload =
            json!({"state": "queued", "previousState": null, "attempt": 0, "pack": new.pack});
        let job = w.job(tenant, &job_id).await?;
        w.enqueue_webhook(&job, "queued", None, 0, &payload).await?;
        w.append(tenant, &run_id, Some(&job_id), types::JOB_QUEUED, payload)
            .await?;
        w.refresh_run(tenant, &run_id).await?;
        let job = w.job(tenant, &job_id).await?;
        Ok(Written {
            value: (job, true),
            committed: w.commit().await?,
        })
    }

    async fn get_job(&self, tenant: &str, job_id: &str) -> StoreResult<JobRecord> {
        self.queries.hit();
        self.job_in(tenant, job_id).await
    }

    async fn list_jobs(&self, tenant: &str, query: &JobQuery) -> StoreResult<Page<JobRecord>> {
        self.queries.hit();
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM jobs WHERE tenant_id = ");
        q.push_bind(tenant);
        if let Some(state) = query.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(run_id) = &query.run_id {
            q.push(" AND run_id = ").push_bind(run_id.clone());
        }
        if let Some(cursor) = &query.cursor {
            q.push(" AND job_id < ").push_bind(cursor.clone());
        }
        q.push(" ORDER BY job_id DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);
        let mut items: Vec<JobRecord> = q.build_query_as().fetch_all(&self.reader).await?;
        let next = (items.len() > query.limit as usize).then(|| {
            items.truncate(query.limit as usize);
            // Non-empty: limit >= 1 and more rows than the limit came back.
            items.last().expect("page is not empty").job_id.clone()
        });
        Ok(Page { items, next })
    }

    async fn cancel_job(
        &self,
        tenant: &str,
        job_id: &str,
        correlation_id: &str,
    ) -> StoreResult<Written<JobRecord>> {
        let mut w = self.begin(correlation_id).await?;
        let job = w.job(tenant, job_id).await?;
        if job.job_state().is_terminal() {
            return Err(StoreError::InvalidState(job.state));
        }
        w.finish_step(&job, "failed", None).await?;
        w.transition(&job, JobState::Canceled, json!({})).await?;
        w.settle_job(tenant, &job.run_id, job_id).await
    }

    async fn lease_jobs(
        &self,
        tenant: &str,
        req: &LeaseRequest,
    ) -> StoreResult<Written<Vec<LeasedJob>>> {
        let written = self.lease_where(Some(tenant), req).await?;
        Ok(Written {
            value: written.value.into_iter().map(|(_, job)| job).collect(),
            committed: written.committed,
        })
    }

    async fn lease_any_tenant(
        &self,
        req: &LeaseRequest,
    ) -> StoreResult<Written<Vec<(String, LeasedJob)>>> {
        // A cheap read first: an idle executor neither takes the write lock
        // nor counts as a store call.
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND pack IN (",
        );
        let mut packs = q.separated(", ");
        for pack in &req.packs {
            packs.push_bind(pack.clone());
        }
        q.push("))");
        let any: bool = q.build_query_scalar().fetch_one(&self.reader).await?;
        if !any {
            return Ok(Written {
                value: Vec::new(),
                committed: Committed::default(),
            });
        }
        self.lease_where(None, req).await
    }

    async fn expire_worker_leases(&self, worker_id: &str) -> StoreResult<u64> {
        self.queries.hit();
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = $1 WHERE lease_worker = $2 AND state IN ('loading', 'working')",
        )
        .bind(now_ms() - 1)
        .bind(worker_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn report_progress(
        &self,
        tenant: &str,
        job_id: &str,
        r: &ProgressReport,
    ) -> StoreResult<Written<JobRecord>> {
        let mut w = self.begin(&r.correlation_id).await?;
        let job = w.leased_job(tenant, job_id, &r.lease_id).await?;
        if job.job_state() == JobState::Loading {
            w.transition(&job, JobState::Working, json!({})).await?;
        }
        // Steps are keyed by `stepIndex`: a new index starts a step (and ends
        // the one before it as succeeded).
        if let Some(index) = r.step_index {
            if job.step_started_at.is_none() || job.step_index != Some(index) {
                w.start_step(&job, index, r.step.as_deref()).await?;
            }
        }
        // The transition cleared the lease columns: restore and extend them.
        let until = w.now + job.lease_seconds.unwrap_or(60) * 1000;
        sqlx::query(
            "UPDATE jobs SET lease_id = $1, lease_worker = $2, lease_until = $3,
                 stage = COALESCE($4, stage), step = COALESCE($5, step), step_index = COALESCE($6, step_index),
                 message = COALESCE($7, message), percent = COALESCE($8, percent), updated_at = $9
             WHERE job_id = $10",
        )
        .bind(&job.lease_id)
        .bind(&job.lease_worker)
        .bind(until)
        .bind(&r.stage)
        .bind(&r.step)
        .bind(r.step_index)
        .bind(&r.message)
        .bind(r.percent)
        .bind(w.now)
        .bind(job_id)
        .execute(&mut *w.tx)
        .await?;
        // A report that says nothing about progress is a heartbeat (or a log
        // batch): it extends the lease but is no `job.progress` event, so a
        // long quiet step does not fill the timeline and the streams.
        let says_something = r.stage.is_some()
            || r.step.is_some()
            || r.step_index.is_some()
            || r.message.is_some()
            || r.percent.is_some();
        if says_something {
            let payload = json!({"stage": r.stage, "step": r.step, "stepIndex": r.step_index,
                                 "message": r.message, "percent": r.percent, "leaseUntil": rfc3339(until)});
            w.append(
                tenant,
                &job.run_id,
                Some(job_id),
                types::JOB_PROGRESS,
                payload,
            )
            .await?;
        }
        let blocked = match &r.blocked {
            BlockedChange::Unchanged => None,
            BlockedChange::Set(reason) => Some(Some(reason.as_str())),
            BlockedChange::Clear => Some(None),
        };
        if let Some(reason) = blocked {
            if reason.map(str::to_owned) != job.blocked_reason {
                sqlx::query("UPDATE jobs SET blocked_reason = $1 WHERE job_id = $2")
                    .bind(reason)
                    .bind(job_id)
                    .execute(&mut *w.tx)
                    .await?;
                let payload = json!({"blocked": reason.is_some(), "reason": reason});
                w.append(
                    tenant,
                    &job.run_id,
                    Some(job_id),
                    types::JOB_BLOCKED,
                    payload,
                )
                .await?;
            }
        }
        if !r.log.is_empty() {
            let first = job.log_lines + 1;
            let lines: Vec<Value> = r
                .log
                .iter()
                .enumerate()
                .map(|(i, l)| json!({"lineNo": first + i as i64, "stream": l.stream, "line": l.line}))
                .collect();
            sqlx::query("UPDATE jobs SET log_lines = log_lines + $1 WHERE job_id = $2")
                .bind(r.log.len() as i64)
                .bind(job_id)
                .execute(&mut *w.tx)
                .await?;
            let step_index = r.step_index.or(job.step_index);
            w.append(
                tenant,
                &job.run_id,
                Some(job_id),
                types::LOG,
                json!({"stepIndex": step_index, "lines": lines}),
            )
            .await?;
        }
        w.settle_job(tenant, &job.run_id, job_id).await
    }

    async fn complete_job(
        &self,
        tenant: &str,
        job_id: &str,
        done: &Completion,
    ) -> StoreResult<Written<JobRecord>> {
        let mut w = self.begin(&done.correlation_id).await?;
        let job = w.leased_job(tenant, job_id, &done.lease_id).await?;
        sqlx::query("UPDATE jobs SET result = $1, percent = 100 WHERE job_id = $2")
            .bind(done.result.as_ref().map(Value::to_string))
            .bind(job_id)
            .execute(&mut *w.tx)
            .await?;
        let result = done.result.clone().unwrap_or(Value::Null);
        let mut artifacts = Vec::new();
        for a in &done.artifacts {
            sqlx::query(
                "INSERT OR REPLACE INTO artifacts (tenant_id, job_id, run_id, name, size, sha256, content_type, path, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(tenant)
            .bind(job_id)
            .bind(&job.run_id)
            .bind(&a.name)
            .bind(a.size as i64)
            .bind(&a.sha256)
            .bind(&a.content_type)
            .bind(&a.path)
            .bind(w.now)
            .execute(&mut *w.tx)
            .await?;
            artifacts.push(a.event_json(job_id));
        }
        w.finish_step(&job, "succeeded", None).await?;
        let mut payload = json!({"result": result});
        if !artifacts.is_empty() {
            payload["artifacts"] = Value::Array(artifacts);
        }
        w.transition(&job, JobState::Done, payload).await?;
        w.settle_job(tenant, &job.run_id, job_id).await
    }

    async fn fail_job(
        &self,
        tenant: &str,
        job_id: &str,
        f: &Failure,
    ) -> StoreResult<Written<JobRecord>> {
        let mut w = self.begin(&f.correlation_id).await?;
        let job = w.leased_job(tenant, job_id, &f.lease_id).await?;
        w.fail_or_retry(
            &job,
            f.retryable,
            &f.code,
            &f.message,
            f.log_range,
            f.exit_code,
        )
        .await?;
        w.settle_job(tenant, &job.run_id, job_id).await
    }

    async fn list_artifacts(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<ArtifactRecord>> {
        self.queries.hit();
        Ok(sqlx::query_as(
            "SELECT * FROM artifacts WHERE tenant_id = $1 AND job_id = $2 ORDER BY name",
        )
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
        self.queries.hit();
        Ok(sqlx::query_as(
            "SELECT * FROM artifacts WHERE tenant_id = $1 AND job_id = $2 AND name = $3",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(name)
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn sweep_expired_leases(&self, now: i64) -> StoreResult<Written<usize>> {
        let mut w = self.begin(&new_ulid()).await?;
        let expired: Vec<JobRecord> = sqlx::query_as(
            "SELECT * FROM jobs WHERE state IN ('loading', 'working') AND lease_until IS NOT NULL AND lease_until < $1
             ORDER BY job_id LIMIT 500",
        )
        .bind(now)
        .fetch_all(&mut *w.tx)
        .await?;
        for job in &expired {
            let message = format!(
                "lease held by {} expired",
                job.lease_worker.as_deref().unwrap_or("a worker")
            );
            w.fail_or_retry(job, true, "lease_expired", &message, None, None)
                .await?;
            w.refresh_run(&job.tenant_id, &job.run_id).await?;
        }
        Ok(Written {
            value: expired.len(),
            committed: w.commit().await?,
        })
    }

    async fn timeline(
        &self,
        tenant: &str,
        run_id: &str,
        query: &TimelineQuery,
    ) -> StoreResult<Vec<String>> {
        self.queries.hit();
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM runs WHERE tenant_id = $1 AND run_id = $2")
                .bind(tenant)
                .bind(run_id)
                .fetch_optional(&self.reader)
                .await?;
        exists.ok_or(StoreError::RunNotFound)?;
        let mut q = QueryBuilder::<Sqlite>::new("SELECT envelope FROM events WHERE tenant_id = ");
        q.push_bind(tenant).push(" AND run_id = ").push_bind(run_id);
        q.push(" AND seq > ").push_bind(query.after as i64);
        if let Some(corr) = &query.correlation_id {
            q.push(" AND correlation_id = ").push_bind(corr.clone());
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(query.limit));
        Ok(q.build_query_scalar().fetch_all(&self.reader).await?)
    }

    async fn cold_run(&self, tenant: &str, run_id: &str) -> StoreResult<Option<ColdRun>> {
        self.queries.hit();
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
        let jobs: Vec<JobRecord> =
            sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND run_id = $2")
                .bind(tenant)
                .bind(run_id)
                .fetch_all(&self.reader)
                .await?;
        let facts: Vec<_> = jobs.iter().map(JobRecord::facts).collect();
        let signal = derive(run_id, &facts).map(|s| (s, signal_seq.unwrap_or(last_seq) as u64));
        Ok(Some(ColdRun {
            last_seq: last_seq as u64,
            completed_seq: completed_seq.map(|s| s as u64),
            signal,
        }))
    }

    async fn job_terminal_seq(&self, tenant: &str, job_id: &str) -> StoreResult<Option<u64>> {
        self.queries.hit();
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

    async fn claim_webhooks(&self, now_ms: i64, limit: u32) -> StoreResult<Vec<WebhookDelivery>> {
        let mut w = self.begin("webhooks").await?;
        // A 410 from a job's receiver ends every later delivery of that job.
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'gone' WHERE status = 'pending'
               AND job_id IN (SELECT job_id FROM webhook_deliveries WHERE status = 'gone')",
        )
        .execute(&mut *w.tx)
        .await?;
        let due: Vec<WebhookDelivery> = sqlx::query_as(
            "SELECT d.* FROM webhook_deliveries d
              WHERE d.status = 'pending' AND d.next_attempt_at <= $1
                AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                                 WHERE e.job_id = d.job_id AND e.id < d.id AND e.status IN ('pending', 'sending'))
              ORDER BY d.next_attempt_at, d.id LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *w.tx)
        .await?;
        for d in &due {
            sqlx::query("UPDATE webhook_deliveries SET status = 'sending', attempts = attempts + 1 WHERE id = $1")
                .bind(d.id)
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await?;
        Ok(due
            .into_iter()
            .map(|d| WebhookDelivery {
                status: "sending".into(),
                attempts: d.attempts + 1,
                ..d
            })
            .collect())
    }

    async fn finish_webhook(&self, id: i64, outcome: &WebhookOutcome) -> StoreResult<()> {
        let mut w = self.begin("webhooks").await?;
        let (status, next, code, error, delivered): (
            &str,
            Option<i64>,
            Option<u16>,
            Option<&str>,
            Option<i64>,
        ) = match outcome {
            WebhookOutcome::Delivered { status } => {
                ("delivered", None, Some(*status), None, Some(w.now))
            }
            WebhookOutcome::Retry {
                at_ms,
                status,
                error,
            } => ("pending", Some(*at_ms), *status, Some(error), None),
            WebhookOutcome::Failed { status, error } => {
                ("failed", None, *status, Some(error), None)
            }
            WebhookOutcome::Gone { status } => (
                "gone",
                None,
                Some(*status),
                Some("receiver answered 410 Gone"),
                None,
            ),
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
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(())
    }

    async fn next_webhook_due(&self) -> StoreResult<Option<i64>> {
        self.queries.hit();
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.reader)
        .await?)
    }

    async fn reset_sending_webhooks(&self) -> StoreResult<u64> {
        let mut w = self.begin("webhooks").await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending' WHERE status = 'sending'",
        )
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(done.rows_affected())
    }

    async fn job_webhooks(&self, tenant: &str, job_id: &str) -> StoreResult<Vec<WebhookDelivery>> {
        self.queries.hit();
        Ok(sqlx::query_as(
            "SELECT * FROM webhook_deliveries WHERE tenant_id = $1 AND job_id = $2 ORDER BY id",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn prune(&self, cutoff_ms: i64, limit: u32) -> StoreResult<Vec<RunKey>> {
        let mut w = self.begin("prune").await?;
        let runs: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant_id, run_id FROM jobs GROUP BY tenant_id, run_id
             HAVING SUM(CASE WHEN state IN ('done', 'failed', 'canceled') THEN 0 ELSE 1 END) = 0
                AND MAX(finished_at) < $1
             LIMIT $2",
        )
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *w.tx)
        .await?;
        let mut files = Vec::new();
        for (tenant, run) in &runs {
            let paths: Vec<String> = sqlx::query_scalar(
                "DELETE FROM artifacts WHERE tenant_id = $1 AND run_id = $2 RETURNING path",
            )
            .bind(tenant)
            .bind(run)
            .fetch_all(&mut *w.tx)
            .await?;
            files.extend(paths);
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE job_id IN (SELECT job_id FROM jobs WHERE tenant_id = $1 AND run_id = $2)",
            )
            .bind(tenant)
            .bind(run)
            .execute(&mut *w.tx)
            .await?;
            for table in ["events", "jobs", "first_signal_snapshots", "runs"] {
                let sql = format!("DELETE FROM {table} WHERE tenant_id = $1 AND run_id = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(run)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }
        w.commit().await?;
        crate::artifacts::remove_files(files).await;
        Ok(runs.iter().map(|(t, r)| RunKey::new(t, r)).collect())
    }

    async fn run_head(&self, tenant: &str, run_id: &str) -> StoreResult<Option<RunHead>> {
        self.queries.hit();
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT last_seq, completed_seq FROM runs WHERE tenant_id = $1 AND run_id = $2",
        )
        .bind(tenant)
        .bind(run_id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|(last, completed)| RunHead {
            last_seq: last as u64,
            completed_seq: completed.map(|s| s as u64),
        }))
    }

    async fn get_snapshot(&self, tenant: &str, run_id: &str) -> StoreResult<Option<(Signal, u64)>> {
        self.queries.hit();
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT signal, seq FROM first_signal_snapshots WHERE tenant_id = $1 AND run_id = $2",
        )
        .bind(tenant)
        .bind(run_id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.and_then(|(json, seq)| serde_json::from_str(&json).ok().map(|s| (s, seq as u64))))
    }

    async fn write_snapshots(
        &self,
        since_ms: i64,
        tenant: Option<&str>,
        max: u32,
    ) -> StoreResult<usize> {
        self.queries.hit();
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT tenant_id, run_id FROM runs WHERE updated_at >= ");
        q.push_bind(since_ms);
        if let Some(t) = tenant {
            q.push(" AND tenant_id = ").push_bind(t.to_owned());
        }
        q.push(" ORDER BY updated_at DESC LIMIT ")
            .push_bind(i64::from(max));
        let runs: Vec<(String, String)> = q.build_query_as().fetch_all(&self.reader).await?;
        let mut written = 0;
        for (tenant, run) in runs {
            let Some(ColdRun {
                signal: Some((signal, seq)),
                ..
            }) = self.cold_run(&tenant, &run).await?
            else {
                continue;
            };
            sqlx::query(
                "INSERT INTO first_signal_snapshots (tenant_id, run_id, seq, signal, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant_id, run_id) DO UPDATE SET seq = excluded.seq, signal = excluded.signal, updated_at = excluded.updated_at",
            )
            .bind(&tenant)
            .bind(&run)
            .bind(seq as i64)
            .bind(serde_json::to_string(&signal).unwrap_or_default())
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
            written += 1;
        }
        Ok(written)
    }
}
