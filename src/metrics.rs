//! Prometheus metrics, rendered as text at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub resident_actors: IntGauge,
    pub first_signal_cache: IntCounterVec,
    pub cold_path_seconds: Histogram,
    pub store_queries: IntGauge,
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
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let store_queries = IntGauge::new(
            "runsignal_store_calls_total",
            "Calls into the store since start",
        )
        .expect("valid metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(resident_actors.clone()),
            Box::new(first_signal_cache.clone()),
            Box::new(cold_path_seconds.clone()),
            Box::new(store_queries.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            http_requests,
            resident_actors,
            first_signal_cache,
            cold_path_seconds,
            store_queries,
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
