//! Prometheus metrics of a chunkserver, served at `/metrics`.
//!
//! Counters are bumped where things happen; gauges (queues, space, bandwidth)
//! are refreshed from their sources at scrape time so they are never stale.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    pub class: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub data_dir: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub kind: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub read_bytes: Family<DirLabels, Counter>,
    pub written_bytes: Family<DirLabels, Counter>,
    pub checksum_failures: Family<DirLabels, Counter>,
    pub faults_injected: Family<FaultLabels, Counter>,
    pub queued: Family<ClassLabels, Gauge>,
    pub in_flight: Family<ClassLabels, Gauge>,
    pub stripes: Family<DirLabels, Gauge>,
    pub stored_bytes: Family<DirLabels, Gauge>,
    pub free_bytes: Family<DirLabels, Gauge>,
    pub read_bandwidth: Family<DirLabels, Gauge<f64, AtomicU64>>,
    pub usage_rate: Family<ClassLabels, Gauge<f64, AtomicU64>>,
    pub quota_exceeded: Family<ClassLabels, Gauge>,
    /// A running total kept by the stripe queues, published at scrape time.
    pub quota_bypassed: Family<ClassLabels, Gauge>,
    pub stripe_waiting: Family<ClassLabels, Gauge>,
    /// Stripes taken out of service, by what found them (read, scrub, verify).
    pub quarantined: Family<FoundLabels, Counter>,
    pub scrubbed_bytes: Counter,
    pub scrub_errors: Counter,
    pub scrub_passes: Counter,
    pub scrub_last_pass: Gauge<f64, AtomicU64>,
    pub scrub_pass_seconds: Gauge<f64, AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FoundLabels {
    pub found_by: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 us to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tessera_chunkserver");
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            read_bytes: Family::default(),
            written_bytes: Family::default(),
            checksum_failures: Family::default(),
            faults_injected: Family::default(),
            queued: Family::default(),
            in_flight: Family::default(),
            stripes: Family::default(),
            stored_bytes: Family::default(),
            free_bytes: Family::default(),
            read_bandwidth: Family::default(),
            usage_rate: Family::default(),
            quota_exceeded: Family::default(),
            quota_bypassed: Family::default(),
            stripe_waiting: Family::default(),
            quarantined: Family::default(),
            scrubbed_bytes: Counter::default(),
            scrub_errors: Counter::default(),
            scrub_passes: Counter::default(),
            scrub_last_pass: Gauge::default(),
            scrub_pass_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Data requests by operation, class and gRPC code", m.requests.clone());
        registry.register("request_seconds", "Time to serve a data request", m.request_seconds.clone());
        registry.register("read_bytes", "Bytes read from a data dir", m.read_bytes.clone());
        registry.register("written_bytes", "Bytes written to a data dir", m.written_bytes.clone());
        registry.register(
            "checksum_failures",
            "Blocks whose bytes on disk did not match their checksum",
            m.checksum_failures.clone(),
        );
        registry.register("faults_injected", "Faults injected into requests, by kind", m.faults_injected.clone());
        registry.register("queued_requests", "Requests waiting for a slot of their class", m.queued.clone());
        registry.register("in_flight_requests", "Requests running, by class", m.in_flight.clone());
        registry.register("stripes", "Stripes stored per data dir", m.stripes.clone());
        registry.register("stored_bytes", "Stripe bytes stored per data dir", m.stored_bytes.clone());
        registry.register("free_bytes", "Free bytes of the filesystem of each data dir", m.free_bytes.clone());
        registry.register(
            "read_bandwidth_bytes_per_second",
            "Read bandwidth of each data dir over the last 10 seconds",
            m.read_bandwidth.clone(),
        );
        registry.register(
            "usage_bytes_per_second",
            "Bytes moved per request class over the quota window",
            m.usage_rate.clone(),
        );
        registry.register(
            "quota_exceeded",
            "1 while a request class is above its usage quota",
            m.quota_exceeded.clone(),
        );
        registry.register(
            "quota_overtaken_requests",
            "Requests that a request of another class overtook on a stripe while theirs was over quota",
            m.quota_bypassed.clone(),
        );
        registry.register(
            "stripe_waiting_requests",
            "Requests waiting for a turn on a busy stripe",
            m.stripe_waiting.clone(),
        );
        registry.register(
            "quarantined_stripes",
            "Stripes taken out of service because a block failed its checksum, by what found it",
            m.quarantined.clone(),
        );
        registry.register("scrubbed_bytes", "Stripe bytes the scrubber verified", m.scrubbed_bytes.clone());
        registry.register("scrub_errors", "Corrupt stripes the scrubber found", m.scrub_errors.clone());
        registry.register("scrub_passes", "Full scrub passes over every stored stripe", m.scrub_passes.clone());
        registry.register(
            "scrub_last_pass_timestamp_seconds",
            "Unix time at which the last full scrub pass ended (0: none yet)",
            m.scrub_last_pass.clone(),
        );
        registry.register("scrub_pass_seconds", "How long the last full scrub pass took", m.scrub_pass_seconds.clone());
        Self { registry, ..m }
    }
}
