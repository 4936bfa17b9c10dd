//! Prometheus metrics, rendered as text at `/metrics`.
//!
//! Latencies are histograms in seconds. The label sets are small and fixed
//! (a signal kind, a cache status, a wire format, a webhook outcome): never an
//! id, a tenant or a raw path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use runsignal_actors::RunKey;

/// Buckets for request and delivery latencies: 0.5 ms to 10 s.
const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Accepted jobs whose run has not published a new signal yet, at most this
/// many (the oldest is dropped past it: a run whose signal never changes
/// must not grow memory).
const PENDING_FIRST_SIGNALS: usize = 4096;

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub resident_actors: IntGauge,
    pub first_signal_cache: IntCounterVec,
    pub cold_path_seconds: Histogram,
    pub store_queries: IntGauge,
    /// Job accepted (`POST /jobs` reached the store) → its run's next
    /// `signal.changed` published to the run's actor, by the signal's kind.
    pub time_to_first_signal: HistogramVec,
    /// `GET|HEAD …/first-signal` latency by `Cache-Status` (`none` when the
    /// answer had no signal: 204, 4xx, 5xx).
    pub first_signal_request: HistogramVec,
    /// Event committed (for another node's event: received here) → its
    /// frames handed to the connection, by wire (`sse`, `websocket`).
    pub stream_delivery_lag: HistogramVec,
    /// One webhook attempt (request and answer), by outcome.
    pub webhook_attempt: HistogramVec,
    /// Attempts a delivery took, observed when it is settled (delivered,
    /// failed or gone).
    pub webhook_attempts: Histogram,
    /// Open SSE streams and WebSocket subscriptions.
    pub open_streams: IntGauge,
    /// Connections held by SSE streams and WebSockets.
    pub streaming_connections: IntGauge,
    pub open_connections: IntGauge,
    /// Runs with an accepted job waiting for their next signal change.
    pending: Mutex<PendingFirstSignals>,
    /// The first-signal read's series, resolved once: a hit is the hottest
    /// route, and a label lookup hashes its values on every call.
    pub first_signal: FirstSignalSeries,
}

/// `first_signal_cache{result}` and `first_signal_request{cache_status}`
/// children, looked up once at start-up.
pub struct FirstSignalSeries {
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    pub request_hit: Histogram,
    pub request_miss: Histogram,
    pub request_none: Histogram,
}

impl FirstSignalSeries {
    fn new(cache: &IntCounterVec, request: &HistogramVec) -> FirstSignalSeries {
        FirstSignalSeries {
            cache_hit: cache.with_label_values(&["hit"]),
            cache_miss: cache.with_label_values(&["miss"]),
            request_hit: request.with_label_values(&["hit"]),
            request_miss: request.with_label_values(&["miss"]),
            request_none: request.with_label_values(&["none"]),
        }
    }

    /// The cache counter for a served signal.
    pub fn cache(&self, hit: bool) -> &IntCounter {
        if hit {
            &self.cache_hit
        } else {
            &self.cache_miss
        }
    }
}

#[derive(Default)]
struct PendingFirstSignals {
    since: HashMap<RunKey, Instant>,
}

fn histogram_vec(name: &str, help: &str, label: &str, buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &[label],
    )
    .expect("valid metric")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Metric names and labels are static and valid, and each is
        // registered once on a fresh registry: these cannot fail.
        let http_requests = IntCounterVec::new(
            Opts::new(
                "runsignal_http_requests_total",
                "HTTP requests by route pattern, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let resident_actors = IntGauge::new(
            "runsignal_resident_run_actors",
            "Run actors resident in memory",
        )
        .expect("valid metric");
        let first_signal_cache = IntCounterVec::new(
            Opts::new(
                "runsignal_first_signal_cache_total",
                "First-signal reads by cache result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let cold_path_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "runsignal_first_signal_cold_path_seconds",
                "Cold first-signal computations",
            )
            .buckets(LATENCY.to_vec()),
        )
        .expect("valid metric");
        let store_queries = IntGauge::new(
            "runsignal_store_calls_total",
            "Calls into the store since start",
        )
        .expect("valid metric");
        let time_to_first_signal = histogram_vec(
            "runsignal_time_to_first_signal_seconds",
            "Job accepted to its run's next signal change published, by signal kind",
            "kind",
            LATENCY,
        );
        let first_signal_request = histogram_vec(
            "runsignal_first_signal_request_seconds",
            "First-signal request latency by Cache-Status (none: no signal served)",
            "cache_status",
            LATENCY,
        );
        let stream_delivery_lag = histogram_vec(
            "runsignal_stream_delivery_lag_seconds",
            "Event commit (another node's: its arrival) to its frames handed to the connection, by wire",
            "wire",
            LATENCY,
        );
        let webhook_attempt = histogram_vec(
            "runsignal_webhook_attempt_seconds",
            "One webhook attempt, by outcome (delivered, retry, failed, gone)",
            "outcome",
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        );
        let webhook_attempts = Histogram::with_opts(
            HistogramOpts::new(
                "runsignal_webhook_delivery_attempts",
                "Attempts a webhook delivery took until it was delivered or given up",
            )
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]),
        )
        .expect("valid metric");
        let open_streams = IntGauge::new(
            "runsignal_open_streams",
            "Open SSE streams and WebSocket subscriptions",
        )
        .expect("valid metric");
        let streaming_connections = IntGauge::new(
            "runsignal_streaming_connections",
            "Connections held by SSE streams and WebSockets",
        )
        .expect("valid metric");
        let open_connections = IntGauge::new(
            "runsignal_open_connections",
            "Open client connections (against Limits.MaxConnections)",
        )
        .expect("valid metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(resident_actors.clone()),
            Box::new(first_signal_cache.clone()),
            Box::new(cold_path_seconds.clone()),
            Box::new(store_queries.clone()),
            Box::new(time_to_first_signal.clone()),
            Box::new(first_signal_request.clone()),
            Box::new(stream_delivery_lag.clone()),
            Box::new(webhook_attempt.clone()),
            Box::new(webhook_attempts.clone()),
            Box::new(open_streams.clone()),
            Box::new(streaming_connections.clone()),
            Box::new(open_connections.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        let first_signal = FirstSignalSeries::new(&first_signal_cache, &first_signal_request);
        Metrics {
            first_signal,
            registry,
            http_requests,
            resident_actors,
            first_signal_cache,
            cold_path_seconds,
            store_queries,
            time_to_first_signal,
            first_signal_request,
            stream_delivery_lag,
            webhook_attempt,
            webhook_attempts,
            open_streams,
            streaming_connections,
            open_connections,
            pending: Mutex::new(PendingFirstSignals::default()),
        }
    }

    /// A job of `run` was accepted at `at`; `changed`: the kind of the
    /// signal its own commit published, if it changed the signal. Otherwise
    /// the run's next signal change settles it ([`Metrics::signal_changed`]).
    pub fn job_accepted(&self, run: &RunKey, at: Instant, changed: Option<&str>) {
        if let Some(kind) = changed {
            self.time_to_first_signal
                .with_label_values(&[kind])
                .observe(at.elapsed().as_secs_f64());
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.since.len() >= PENDING_FIRST_SIGNALS && !pending.since.contains_key(run) {
            if let Some(oldest) = pending
                .since
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                pending.since.remove(&oldest);
            }
        }
        // The earliest waiting job of the run is the one that waited longest.
        pending.since.entry(run.clone()).or_insert(at);
    }

    /// `run` published a new signal of `kind`.
    pub fn signal_changed(&self, run: &RunKey, kind: &str) {
        let since = match self.pending.lock() {
            Ok(mut pending) if !pending.since.is_empty() => pending.since.remove(run),
            _ => None,
        };
        if let Some(at) = since {
            self.time_to_first_signal
                .with_label_values(&[kind])
                .observe(at.elapsed().as_secs_f64());
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, kind: &str) -> u64 {
        m.time_to_first_signal
            .with_label_values(&[kind])
            .get_sample_count()
    }

    #[test]
    fn a_job_that_does_not_change_the_signal_is_timed_at_the_runs_next_change() {
        let m = Metrics::new();
        let run = RunKey::new("t", "r");
        let other = RunKey::new("t", "other");
        m.job_accepted(&run, Instant::now(), None);
        m.signal_changed(&other, "phase");
        assert_eq!(
            count(&m, "phase"),
            0,
            "another run's change settles nothing"
        );
        m.signal_changed(&run, "queued");
        assert_eq!(count(&m, "queued"), 1);
        m.signal_changed(&run, "started");
        assert_eq!(count(&m, "started"), 0, "observed once per accepted job");
        m.job_accepted(&run, Instant::now(), Some("queued"));
        assert_eq!(count(&m, "queued"), 2, "its own commit changed the signal");
    }

    #[test]
    fn waiting_runs_are_bounded() {
        let m = Metrics::new();
        for i in 0..PENDING_FIRST_SIGNALS + 10 {
            m.job_accepted(&RunKey::new("t", &i.to_string()), Instant::now(), None);
        }
        assert_eq!(m.pending.lock().unwrap().since.len(), PENDING_FIRST_SIGNALS);
    }
}
