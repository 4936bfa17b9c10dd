-- Job artifacts (SPEC §7): the bytes live as files under `Artifacts.Dir`
-- (`<tenant>/<job_id>/<name>`); these rows are inserted in the transaction
-- of the job's `done` transition, so `done` is never visible without them.
CREATE TABLE artifacts (
    tenant_id    TEXT    NOT NULL,
    job_id       TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    size         BIGINT  NOT NULL,
    sha256       TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    -- The file as written (prune deletes it after its commit).
    path         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE INDEX artifacts_by_run ON artifacts (tenant_id, run_id);
