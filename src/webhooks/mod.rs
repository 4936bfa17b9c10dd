//! State webhooks (SPEC §7.2): the durable outbox's dispatcher, signatures
//! and the SSRF guard. The outbox rows themselves are written by the store
//! in each job transition's transaction (ADR 0014); this module only sends
//! them. See ADR 0015 for the guard.

pub mod body;
pub mod dispatcher;
pub mod policy;
pub mod ranges;
pub mod send;
pub mod signing;
pub mod ssrf;

pub use dispatcher::Dispatcher;
