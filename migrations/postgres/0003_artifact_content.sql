-- A small artifact's bytes, held in its row instead of a file (ADR 0061);
-- its `path` is then empty.
ALTER TABLE artifacts ADD COLUMN content BYTEA;
