-- runsignal schema v1. Times are Unix epoch milliseconds (INTEGER).
-- Kept to SQL that PostgreSQL also accepts, so its migration can mirror it.

CREATE TABLE runs (
    tenant_id   TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    name        TEXT,
    labels      TEXT    NOT NULL DEFAULT '{}',
    -- pending | running | succeeded | failed | canceled
    status      TEXT    NOT NULL DEFAULT 'pending',
    last_seq    BIGINT  NOT NULL DEFAULT 0,
    signal_etag TEXT,
    signal_seq  BIGINT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
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
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, run_id)
);
CREATE INDEX jobs_by_run ON jobs (tenant_id, run_id, created_at);
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, job_id);
CREATE INDEX jobs_queued ON jobs (tenant_id, state, pack, job_id);
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
