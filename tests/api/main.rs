//! Integration tests against a real server on port 0 with a fresh SQLite
//! database per test. One module per feature (`suite.rs`); the same suite
//! runs on PostgreSQL as the `api_postgres` test binary.

const BACKEND: testdb::Backend = testdb::Backend::Sqlite;

include!("suite.rs");

/// Node's `EventSource` against the server: once, on SQLite only.
mod eventsource;

/// The dashboard's embedded files: once, on SQLite only (no store involved).
mod dashboard;

/// SQLite's write-ahead log under steady writes: SQLite only.
mod sqlite_wal;
