//! Connection and stream limits (SPEC §11, ADR 0026): one client or tenant
//! never takes the server from the others.
//!
//! - [`ConnectionLimit`] counts open connections (`Limits.MaxConnections`)
//!   from `HttpServer::on_connect`; past the cap a new connection gets a
//!   canned 503 and is shut down at once, so the process never runs out of
//!   file descriptors.
//! - [`StreamLimits`] caps what holds a connection or an actor open for long:
//!   SSE streams plus WebSocket subscriptions per tenant
//!   (`Limits.MaxStreamsPerTenant`) and per credential
//!   (`Limits.MaxStreamsPerCredential`), and the connections held by streams
//!   and sockets together (90% of `MaxConnections`, so that short requests
//!   such as `/healthz` and `POST /jobs` always find room). Each admission
//!   is an RAII permit, released however the stream ends.
//! - [`Connection`] lets a stream whose client stopped reading abort its
//!   own connection (the HTTP layer stops polling a response whose socket
//!   is full, so the stream cannot end it by finishing its body).

use std::any::Any;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::errors::{ApiError, ErrorCode};
use crate::config::LimitsConfig;

/// Seconds a refused client is told to wait (`Retry-After`): streams end
/// and connections close continually, so a short wait usually finds room.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// The soft `RLIMIT_NOFILE` of this process (1024 if it cannot be read).
pub fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return if rc != 0 { 1024 } else { 1 << 20 };
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// The name of the credential a request authenticated with (the token's
/// name or the JWT's `sub`, never the secret), the key of
/// `Limits.MaxStreamsPerCredential`; `None` with `Auth.Mode=none`.
pub fn credential(req: &HttpRequest) -> Option<String> {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<crate::auth::Principal>()
        .map(|p| p.credential.clone())
}

/// Open connections against `Limits.MaxConnections`.
pub struct ConnectionLimit {
    max: usize,
    open: AtomicUsize,
}

/// Held in the connection's extensions: dropped with the connection.
struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket a request arrived on (stored by [`ConnectionLimit::on_connect`]).
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    fd: RawFd,
}

impl Connection {
    /// The connection of `req`, when it is a TCP connection.
    pub fn of(req: &HttpRequest) -> Option<Connection> {
        req.conn_data::<Connection>().copied()
    }

    /// Reset the connection now: its response cannot make progress because
    /// the client stopped reading. `body` is the sender feeding the
    /// response's body; it proves the connection still exists.
    ///
    /// The HTTP layer owns the socket and the response body together and
    /// drops them together, on this same worker thread: while the body's
    /// receiver is alive (`!body.is_closed()`), the descriptor is still this
    /// connection's and cannot have been reused for another one.
    pub fn abort<T>(self, body: &tokio::sync::mpsc::Sender<T>) {
        if body.is_closed() {
            return;
        }
        // SAFETY: the descriptor is open and ours (see above); the borrow
        // does not outlive this call and closes nothing.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let socket = socket2::SockRef::from(&fd);
        // Linger 0: the close that follows sends a reset and frees the
        // socket at once instead of waiting for unread data to drain.
        let _ = socket.set_linger(Some(std::time::Duration::ZERO));
        // Wakes the HTTP layer's pending write, which fails and closes.
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            max,
            open: AtomicUsize::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// `HttpServer::on_connect`: count the connection, or refuse it at once
    /// with a 503 `too_many_connections` and close it.
    pub fn on_connect(self: &Arc<Self>, io: &dyn Any, ext: &mut Extensions) {
        let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            refuse(stream, self.max);
            return;
        }
        ext.insert(ConnectionSlot(self.clone()));
        ext.insert(Connection {
            fd: stream.as_raw_fd(),
        });
    }
}

/// Write a 503 (the socket's send buffer is empty: it fits) and shut the
/// socket down both ways: the HTTP layer then reads end-of-file and drops
/// the connection without reading, let alone serving, a request.
fn refuse(stream: &actix_web::rt::net::TcpStream, max: usize) {
    let detail = format!(
        "the server holds its maximum of {max} connections (Limits.MaxConnections); retry later"
    );
    let problem = ApiError::new(ErrorCode::TooManyConnections, detail).problem();
    // A struct of strings and a number: serializing cannot fail.
    let body = serde_json::to_string(&problem).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: {RETRY_AFTER_SECONDS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.try_write(format!("{head}{body}").as_bytes());
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
    tracing::warn!(max, "connection refused: Limits.MaxConnections reached");
}

/// Admission of long-lived streams (see the module doc).
pub struct StreamLimits {
    per_tenant: usize,
    per_credential: usize,
    /// Connections that streams and sockets may hold together.
    max_held: usize,
    held: AtomicUsize,
    /// Open streams per tenant / credential; keys leave at zero, so the maps
    /// hold only what is open.
    tenants: DashMap<String, usize>,
    credentials: DashMap<String, usize>,
}

/// One open stream (an SSE stream or a WebSocket subscription); dropping it
/// frees its place.
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    tenant: String,
    credential: Option<String>,
}

/// A connection held by a stream or a socket; dropping it frees its place.
pub struct HeldConnection(Arc<StreamLimits>);

impl StreamLimits {
    /// `max_connections`: the resolved `Limits.MaxConnections`.
    pub fn new(config: &LimitsConfig, max_connections: usize) -> Arc<StreamLimits> {
        let reserve = (max_connections / 10).max(1);
        Arc::new(StreamLimits {
            per_tenant: config.max_streams_per_tenant,
            per_credential: config.max_streams_per_credential,
            max_held: max_connections.saturating_sub(reserve),
            held: AtomicUsize::new(0),
            tenants: DashMap::new(),
            credentials: DashMap::new(),
        })
    }

    /// Admit one stream of `tenant`. `credential`: the authenticated
    /// credential's name when there is one (authentication passes it; with
    /// `Auth.Mode=none` there is none and only the tenant cap applies).
    pub fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        credential: Option<&str>,
    ) -> Result<StreamPermit, ApiError> {
        if !take(&self.tenants, tenant, self.per_tenant) {
            return Err(too_many(format!(
                "tenant `{tenant}` has {} streams open (Limits.MaxStreamsPerTenant)",
                self.per_tenant
            )));
        }
        if let Some(c) = credential {
            if !take(&self.credentials, c, self.per_credential) {
                give_back(&self.tenants, tenant);
                return Err(too_many(format!(
                    "this credential has {} streams open (Limits.MaxStreamsPerCredential)",
                    self.per_credential
                )));
            }
        }
        Ok(StreamPermit {
            limits: self.clone(),
            tenant: tenant.to_owned(),
            credential: credential.map(str::to_owned),
        })
    }

    /// Admit one more connection held open by a stream or a socket.
    pub fn hold_connection(self: &Arc<Self>) -> Result<HeldConnection, ApiError> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(too_many(format!(
                "the server holds its maximum of {} streaming connections (90% of Limits.MaxConnections)",
                self.max_held
            )));
        }
        Ok(HeldConnection(self.clone()))
    }

    /// Streams open now, every tenant's (SSE streams and WebSocket
    /// subscriptions).
    pub fn open_total(&self) -> usize {
        self.tenants.iter().map(|e| *e.value()).sum()
    }

    /// Connections held by streams and sockets now.
    pub fn held_connections(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Streams of `tenant` open now.
    pub fn open_streams(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |n| *n)
    }
}

/// One more for `key` unless it is at `cap` (atomic under the shard lock).
fn take(map: &DashMap<String, usize>, key: &str, cap: usize) -> bool {
    let mut n = map.entry(key.to_owned()).or_insert(0);
    if *n >= cap {
        return false;
    }
    *n += 1;
    true
}

/// One less for `key`; the key leaves at zero.
fn give_back(map: &DashMap<String, usize>, key: &str) {
    if let Entry::Occupied(mut e) = map.entry(key.to_owned()) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

fn too_many(detail: String) -> ApiError {
    ApiError::new(ErrorCode::TooManyStreams, detail)
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        give_back(&self.limits.tenants, &self.tenant);
        if let Some(c) = &self.credential {
            give_back(&self.limits.credentials, c);
        }
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tenant: usize, credential: usize, connections: usize) -> Arc<StreamLimits> {
        StreamLimits::new(
            &LimitsConfig {
                max_connections: connections,
                max_streams_per_tenant: tenant,
                max_streams_per_credential: credential,
            },
            connections,
        )
    }

    #[test]
    fn a_tenant_is_capped_and_a_dropped_permit_frees_its_place() {
        let l = limits(2, 100, 100);
        let a = l.acquire("t", None).unwrap();
        let _b = l.acquire("t", None).unwrap();
        let e = l.acquire("t", None).err().unwrap();
        assert_eq!(e.code, ErrorCode::TooManyStreams);
        assert!(
            l.acquire("other", None).is_ok(),
            "other tenants are not affected"
        );
        drop(a);
        assert!(l.acquire("t", None).is_ok());
    }

    #[test]
    fn a_credential_is_capped_across_tenants_and_a_refusal_takes_nothing() {
        let l = limits(100, 2, 100);
        let _a = l.acquire("t1", Some("dash")).unwrap();
        let _b = l.acquire("t2", Some("dash")).unwrap();
        assert!(l.acquire("t3", Some("dash")).is_err());
        assert_eq!(
            l.open_streams("t3"),
            0,
            "the refused stream gave its tenant place back"
        );
        assert!(l.acquire("t3", Some("other")).is_ok());
    }

    #[test]
    fn counters_leave_the_map_at_zero() {
        let l = limits(5, 5, 100);
        drop(l.acquire("t", Some("c")).unwrap());
        assert!(l.tenants.is_empty() && l.credentials.is_empty());
    }

    #[test]
    fn held_connections_keep_a_tenth_of_max_connections_free() {
        let l = limits(100, 100, 20);
        let held: Vec<_> = (0..18).map(|_| l.hold_connection().unwrap()).collect();
        assert!(l.hold_connection().is_err());
        drop(held);
        assert!(l.hold_connection().is_ok());
    }
}
