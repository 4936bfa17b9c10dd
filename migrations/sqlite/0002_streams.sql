-- Streams: where a complete run's `run.completed` sits, and step timing for
-- `step.*` events derived from worker progress reports.
ALTER TABLE runs ADD COLUMN completed_seq BIGINT;
ALTER TABLE jobs ADD COLUMN step_started_at BIGINT;
