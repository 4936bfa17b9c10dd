-- A job's run key is checked at commit, as on PostgreSQL (ADR 0049): a
-- submit's new run is inserted after its job, with the batch's run rows.
-- It was `PRAGMA defer_foreign_keys = ON` at every write transaction, and a
-- pragma of that kind expires every prepared statement of the connection,
-- so each batch prepared all its statements again. SQLite cannot change a
-- constraint in place: the table is copied (nothing references `jobs`).
CREATE TABLE jobs_new (
    job_id           TEXT    PRIMARY KEY,
    tenant_id        TEXT    NOT NULL,
    run_id           TEXT    NOT NULL,
    pack             TEXT    NOT NULL,
    inputs           TEXT    NOT NULL DEFAULT '{}',
    state            TEXT    NOT NULL,
    blocked_reason   TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_id         TEXT,
    lease_worker     TEXT,
    lease_until      BIGINT,
    lease_seconds    INTEGER,
    stage            TEXT,
    step             TEXT,
    step_index       INTEGER,
    message          TEXT,
    percent          DOUBLE PRECISION,
    log_lines        BIGINT  NOT NULL DEFAULT 0,
    result           TEXT,
    error_code       TEXT,
    error_message    TEXT,
    failure_start    BIGINT,
    failure_end      BIGINT,
    correlation_id   TEXT    NOT NULL,
    idempotency_key  TEXT,
    webhook_url      TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    state_changed_at BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    step_started_at  BIGINT,
    retry_of         TEXT,
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, run_id) DEFERRABLE INITIALLY DEFERRED
);
INSERT INTO jobs_new (job_id, tenant_id, run_id, pack, inputs, state, blocked_reason, attempt,
    max_attempts, lease_id, lease_worker, lease_until, lease_seconds, stage, step, step_index,
    message, percent, log_lines, result, error_code, error_message, failure_start, failure_end,
    correlation_id, idempotency_key, webhook_url, created_at, updated_at, state_changed_at,
    started_at, finished_at, step_started_at, retry_of)
SELECT job_id, tenant_id, run_id, pack, inputs, state, blocked_reason, attempt,
    max_attempts, lease_id, lease_worker, lease_until, lease_seconds, stage, step, step_index,
    message, percent, log_lines, result, error_code, error_message, failure_start, failure_end,
    correlation_id, idempotency_key, webhook_url, created_at, updated_at, state_changed_at,
    started_at, finished_at, step_started_at, retry_of
FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_by_run ON jobs (tenant_id, run_id, created_at);
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, job_id);
CREATE INDEX jobs_queued ON jobs (tenant_id, state, pack, job_id);
CREATE INDEX jobs_leases ON jobs (state, lease_until);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_finished_by_pack ON jobs (tenant_id, pack, finished_at);
