//! The integration suite on PostgreSQL: the same modules as `api`
//! (`suite.rs`), each test in a schema of its own on
//! `RUNSIGNAL_TEST_DATABASE_URL`. Built only when that variable is set
//! (see `build.rs`, which prints why it is skipped otherwise).
#![cfg(pg_tests)]

const BACKEND: testdb::Backend = testdb::Backend::Postgres;

include!("suite.rs");

mod cluster;
