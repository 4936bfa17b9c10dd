//! Integration tests against a real server on port 0 with a fresh SQLite
//! database per test. One module per feature.

mod helpers;

mod artifacts;
mod bad_input;
mod executor;
mod first_signal;
mod jobs;
mod ops;
mod prune;
mod runs;
mod streams;
mod tenants;
mod webhooks;
mod workers;
mod ws;
