//! The node plugin's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cache`, `peers` or `chunkservers`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProvisionLabels {
    /// `provisioned`, `refused`, `failed` (retried) or `deleted`.
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_evictions: Counter,
    pub cache_units_corrupt: Counter,
    pub peer_units_rejected: Counter,
    pub cache_bytes: Gauge,
    pub bytes_served: Family<SourceLabels, Counter>,
    pub hedges: Family<VolumeLabels, Counter>,
    pub volume_bytes_read: Family<VolumeLabels, Counter>,
    pub mounts: Gauge,
    pub kubelet_registered: Gauge,
    pub leaf_claims: Family<ProvisionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera_csi");
        let m = Self {
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            cache_units_corrupt: Counter::default(),
            peer_units_rejected: Counter::default(),
            cache_bytes: Gauge::default(),
            bytes_served: Family::default(),
            hedges: Family::default(),
            volume_bytes_read: Family::default(),
            mounts: Gauge::default(),
            kubelet_registered: Gauge::default(),
            leaf_claims: Family::default(),
            registry: Registry::default(),
        };
        registry.register("cache_hits", "Reads of root units answered by the node cache", m.cache_hits.clone());
        registry.register("cache_misses", "Reads of root units the node cache did not have", m.cache_misses.clone());
        registry.register(
            "cache_evictions",
            "Units evicted to keep the cache under its size",
            m.cache_evictions.clone(),
        );
        registry.register(
            "cache_units_corrupt",
            "Cached units dropped because a block failed its CRC32C on this node's disk",
            m.cache_units_corrupt.clone(),
        );
        registry.register(
            "peer_units_rejected",
            "Units another node's cache served that failed their CRC32C (the peer was skipped)",
            m.peer_units_rejected.clone(),
        );
        registry.register("cache_bytes", "Bytes held by the node cache", m.cache_bytes.clone());
        registry.register("served_bytes", "Bytes read by volumes, by where they came from", m.bytes_served.clone());
        registry.register("hedges", "Hedged stripe reads, by volume", m.hedges.clone());
        registry.register("volume_read_bytes", "Bytes read through each volume", m.volume_bytes_read.clone());
        registry.register("fuse_mounts", "Filesystems this node plugin serves", m.mounts.clone());
        registry.register(
            "kubelet_registered",
            "1 once the kubelet has registered the driver through the plugin registry, 0 after it refused",
            m.kubelet_registered.clone(),
        );
        registry.register(
            "leaf_claims",
            "Leaf claims and volumes the built-in provisioner handled, by outcome",
            m.leaf_claims.clone(),
        );
        Self { registry, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
