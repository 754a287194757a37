//! The master's Prometheus metrics, served at `/metrics` beside `/healthz`.
//!
//! Everything here is derived from the master's status at scrape time (the
//! same figures `tessera status` shows), so the page can never disagree with
//! the model: chunkservers live and down, items per redundancy level,
//! degraded, repairing and unrecoverable items, placement violations, and the
//! running totals of repair and garbage collection.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Master;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilesetLabels {
    fileset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedundancyLabels {
    fileset: String,
    /// Stripes reachable beyond k.
    redundancy: u32,
}

/// Renders the metrics page in the OpenMetrics text format.
pub fn render(master: &Master, now: Instant) -> Result<String, std::fmt::Error> {
    let st = master.status("", now).map_err(|_| std::fmt::Error)?;
    let mut registry = Registry::with_prefix("tessera_master");

    let servers = Family::<ServerLabels, Gauge>::default();
    for s in &st.servers {
        let state = match (s.live, s.down) {
            (false, _) => "lost",
            (true, true) => "down",
            (true, false) => "up",
        };
        servers.get_or_create(&ServerLabels { state }).inc();
    }
    registry.register("chunkservers", "Chunkservers by state (up, down: too many failures, lost: silent)", servers);
    let free = Gauge::<u64, AtomicU64>::default();
    free.set(st.servers.iter().filter(|s| s.live).map(|s| s.free_bytes).sum());
    registry.register("free_bytes", "Free bytes on live chunkservers", free);

    let items = Family::<FilesetLabels, Gauge>::default();
    let by_redundancy = Family::<RedundancyLabels, Gauge>::default();
    let degraded = Family::<FilesetLabels, Gauge>::default();
    let repairing = Family::<FilesetLabels, Gauge>::default();
    let unrecoverable = Family::<FilesetLabels, Gauge>::default();
    let violations = Family::<FilesetLabels, Gauge>::default();
    let corrupt_found = Family::<FilesetLabels, Counter>::default();
    let corrupt_rebuilt = Family::<FilesetLabels, Counter>::default();
    let degraded_writes = Family::<FilesetLabels, Counter>::default();
    for f in &st.filesets {
        let l = FilesetLabels { fileset: f.name.clone() };
        corrupt_found.get_or_create(&l).inc_by(f.corrupt_stripes_found);
        corrupt_rebuilt.get_or_create(&l).inc_by(f.corrupt_stripes_rebuilt);
        degraded_writes.get_or_create(&l).inc_by(f.degraded_writes);
        items.get_or_create(&l).set(f.items as i64);
        degraded.get_or_create(&l).set(f.degraded as i64);
        repairing.get_or_create(&l).set(f.repairing as i64);
        unrecoverable.get_or_create(&l).set(f.unrecoverable as i64);
        violations.get_or_create(&l).set(f.placement_violations as i64);
        for (r, n) in f.items_by_redundancy.iter().enumerate() {
            by_redundancy
                .get_or_create(&RedundancyLabels { fileset: f.name.clone(), redundancy: r as u32 })
                .set(*n as i64);
        }
    }
    registry.register("items", "Items of the kept versions of each fileset", items);
    registry.register("items_by_redundancy", "Items by stripes reachable beyond k", by_redundancy);
    registry.register("degraded_items", "Items with a stripe unreachable", degraded);
    registry.register("repairing_items", "Items being rebuilt now", repairing);
    registry.register("unrecoverable_items", "Items with fewer than k stripes reachable", unrecoverable);
    registry.register(
        "placement_violations",
        "Items with more stripes in one failure domain than the policy allows",
        violations,
    );

    registry.register(
        "corrupt_stripes_found",
        "Stripes quarantined as corrupt by their chunkservers since the master started",
        corrupt_found,
    );
    registry.register("corrupt_stripes_rebuilt", "Corrupt stripes rebuilt since the master started", corrupt_rebuilt);
    registry.register(
        "degraded_writes",
        "Items written with fewer than k + m stripes since the master started",
        degraded_writes,
    );
    let reports = Counter::<u64>::default();
    reports.inc_by(st.corrupt_reports);
    registry.register("corrupt_block_reports", "Readers' reports of blocks failing their checksum", reports);
    let relearning = Gauge::<i64>::default();
    relearning.set(st.relearning as i64);
    registry.register("relearning", "1 while the master relearns stripe locations after its start", relearning);

    let repaired_stripes = Counter::<u64>::default();
    repaired_stripes.inc_by(st.repaired_stripes);
    registry.register("repaired_stripes", "Stripes rebuilt since the master started", repaired_stripes);
    let repaired_bytes = Counter::<u64>::default();
    repaired_bytes.inc_by(st.repaired_bytes);
    registry.register("repaired_bytes", "Stripe bytes rebuilt since the master started", repaired_bytes);
    let collected = Counter::<u64>::default();
    collected.inc_by(st.collected_stripes);
    registry.register("collected_stripes", "Unowned stripes deleted since the master started", collected);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterConfig;
    use crate::store::MemStore;
    use std::sync::Arc;
    use tessera_proto::ms;

    #[tokio::test]
    async fn the_page_shows_servers_and_filesets_from_the_model() {
        let m = Master::new(Arc::new(MemStore::default()), MasterConfig::default()).unwrap();
        let now = Instant::now();
        for i in 0..3 {
            m.register(
                &crate::wire::registration(&ms::RegisterRequest {
                    server_id: format!("cs{i}"),
                    address: format!("127.0.0.1:{}", 7000 + i),
                    topology: Some(ms::Topology { zone: format!("z{i}"), ..Default::default() }),
                    free_bytes: 1000,
                    total_bytes: 2000,
                })
                .unwrap(),
                now,
            );
        }
        let spec = ms::FilesetSpec { name: "models".into(), ..Default::default() };
        m.create_fileset(crate::records::FilesetRecord::from_spec(&spec, 1).unwrap(), false).await.unwrap();
        let page = render(&m, now).unwrap();
        for line in [
            "tessera_master_chunkservers{state=\"up\"} 3",
            "tessera_master_free_bytes 3000",
            "tessera_master_items{fileset=\"models\"} 0",
            "tessera_master_degraded_items{fileset=\"models\"} 0",
            "tessera_master_repaired_bytes_total 0",
        ] {
            assert!(page.lines().any(|l| l == line), "{line:?} missing from\n{page}");
        }
        // Silent for longer than the heartbeat timeout: lost.
        let later = now + MasterConfig::default().heartbeat_timeout * 2;
        m.expire_servers(later);
        let page = render(&m, later).unwrap();
        assert!(page.contains("tessera_master_chunkservers{state=\"lost\"} 3"), "{page}");
    }
}
