// The integration suite's modules, shared by the SQLite (`api`) and the
// PostgreSQL (`api_postgres`) test binaries: the same tests on both.

#[path = "../common/testdb.rs"]
mod testdb;

mod helpers;

mod artifacts;
mod auth;
mod blocked;
mod conformance;
mod bad_input;
mod executor;
mod first_signal;
mod jobs;
mod limits;
mod ops;
mod pack_runs;
mod prune;
mod runs;
mod signal_fields;
mod streams;
mod tenants;
mod webhooks;
mod workers;
mod ws;
