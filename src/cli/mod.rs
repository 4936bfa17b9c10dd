//! The binary's own modules: clients of a running server, outside the
//! library (`runsignal::…`), which is the server.

pub mod token;
pub mod watch;
