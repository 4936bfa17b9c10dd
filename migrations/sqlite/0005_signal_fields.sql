-- Signal fields (SPEC §4.3, ADR 0028): the job a retry replaces, and what
-- the writer reads once per tenant and pack for `etaSeconds` (the last
-- successful jobs' durations) and `lastKnownOutcome` (the latest finished
-- runs).
ALTER TABLE jobs ADD COLUMN retry_of TEXT;
CREATE INDEX jobs_finished_by_pack ON jobs (tenant_id, pack, finished_at);
CREATE INDEX runs_finished ON runs (tenant_id, status, updated_at);
