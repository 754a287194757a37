//! The operator's own metrics, on the page the master's follow.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `fileset` or `priority`.
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    /// [`crate::error::ErrorKind`]: `invalid`, `apiserver` or `master`.
    pub kind: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 30 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Debug)]
pub struct OperatorMetrics {
    registry: Registry,
    pub leader: Gauge,
    /// Fileset reconciles by result (`ok`, `error`).
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    pub failures: Family<FailureLabels, Counter>,
    pub ingests: Family<ResultLabels, Counter>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OperatorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera_operator");
        let m = Self {
            leader: Gauge::default(),
            reconciles: Family::default(),
            reconcile_seconds: Family::new_with_constructor(duration_histogram),
            failures: Family::default(),
            ingests: Family::default(),
            registry: Registry::default(),
        };
        registry.register("leader", "1 while this replica holds the lease", m.leader.clone());
        registry.register("reconciles", "Fileset reconciles by result (ok, error)", m.reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile took, by controller",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciles by controller and kind (invalid: the object, waits for a change; apiserver or master: retried with back-off)",
            m.failures.clone(),
        );
        registry.register("ingests", "Source ingests by result (ok, failed)", m.ingests.clone());
        Self { registry, ..m }
    }

    /// This page without its end marker, so the master's can follow.
    pub fn render_head(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out.strip_suffix("# EOF\n").map(str::to_string).unwrap_or(out)
    }
}
