-- runsignal schema for PostgreSQL: the same tables and columns as the
-- SQLite migrations 0001-0004 (one SQL body serves both backends), with
-- every integer a BIGINT. Times are Unix epoch milliseconds.

CREATE TABLE runs (
    tenant_id     TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    name          TEXT,
    labels        TEXT    NOT NULL DEFAULT '{}',
    -- pending | running | succeeded | failed | canceled
    status        TEXT    NOT NULL DEFAULT 'pending',
    last_seq      BIGINT  NOT NULL DEFAULT 0,
    signal_etag   TEXT,
    signal_seq    BIGINT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    completed_seq BIGINT,
    PRIMARY KEY (tenant_id, run_id)
);
CREATE INDEX runs_by_created ON runs (tenant_id, created_at, run_id);
CREATE INDEX runs_by_updated ON runs (updated_at);

CREATE TABLE jobs (
    job_id           TEXT    PRIMARY KEY,
    tenant_id        TEXT    NOT NULL,
    run_id           TEXT    NOT NULL,
    pack             TEXT    NOT NULL,
    inputs           TEXT    NOT NULL DEFAULT '{}',
    state            TEXT    NOT NULL,
    blocked_reason   TEXT,
    attempt          BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL,
    lease_id         TEXT,
    lease_worker     TEXT,
    lease_until      BIGINT,
    lease_seconds    BIGINT,
    stage            TEXT,
    step             TEXT,
    step_index       BIGINT,
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
    -- Checked at commit: a submit's new run is inserted after its job,
    -- with the batch's run rows (ADR 0020).
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, run_id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX jobs_by_run ON jobs (tenant_id, run_id, created_at);
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, job_id);
-- Queued jobs only (partial): leases of one tenant, and of any tenant (the
-- built-in executor), find them without walking other states or tenants.
CREATE INDEX jobs_queued ON jobs (tenant_id, pack, job_id) WHERE state = 'queued';
CREATE INDEX jobs_queued_any ON jobs (pack, job_id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (state, lease_until);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE events (
    tenant_id      TEXT   NOT NULL,
    run_id         TEXT   NOT NULL,
    seq            BIGINT NOT NULL,
    event_id       TEXT   NOT NULL UNIQUE,
    type           TEXT   NOT NULL,
    job_id         TEXT,
    correlation_id TEXT   NOT NULL,
    occurred_at    BIGINT NOT NULL,
    envelope       TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, run_id, seq)
);
CREATE INDEX events_by_job ON events (job_id, seq);

CREATE TABLE first_signal_snapshots (
    tenant_id  TEXT   NOT NULL,
    run_id     TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    signal     TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, run_id)
);

-- Durable webhook outbox: one row per job state transition with a
-- `state_webhook_url`, written in the transition's own transaction.
CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    tenant_id        TEXT    NOT NULL,
    job_id           TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    url              TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    -- pending | sending | delivered | failed | gone
    status           TEXT    NOT NULL DEFAULT 'pending',
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    last_status_code BIGINT,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id, id);

-- Job artifacts: the bytes are files under `Artifacts.Dir`; these rows
-- commit with the job's `done` transition.
CREATE TABLE artifacts (
    tenant_id    TEXT    NOT NULL,
    job_id       TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    size         BIGINT  NOT NULL,
    sha256       TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    path         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE INDEX artifacts_by_run ON artifacts (tenant_id, run_id);
