//! The master's gRPC messages, to and from its domain types: everything a
//! client sends is checked here, and errors name the field.

use tessera_core::ids::{ItemId, ServerId, StripeId};
use tessera_core::layout::Layout;
use tessera_core::placement::{Level, Topology};
use tessera_core::read_plan::ReadMode;
use tessera_core::repair::Availability;
use tessera_proto::{cs, ms};

use crate::MasterError;
use crate::records::{FilesetRecord, HedgeTuning, VersionRecord, fileset_name};
use crate::state::{
    Commit, FilesetView, Heartbeat, ItemPlacement, ManifestRef, Registration, Status, VersionView, WrittenItem,
};

fn bad(field: &'static str, reason: impl ToString) -> MasterError {
    MasterError::InvalidSpec { field, reason: reason.to_string() }
}

impl FilesetRecord {
    /// Checks a spec from a client and fills in the defaults; errors name the
    /// offending field.
    pub fn from_spec(spec: &ms::FilesetSpec, now_unix: u64) -> Result<Self, MasterError> {
        let name = fileset_name(&spec.name)?;
        let l = spec.layout.unwrap_or_default();
        let k = if l.k == 0 { 6 } else { l.k as usize };
        let m = if l.m == 0 { 3 } else { l.m as usize };
        let unit = if l.stripe_unit == 0 { tessera_core::layout::DEFAULT_STRIPE_UNIT } else { l.stripe_unit as usize };
        let block = if l.block_size == 0 { tessera_core::layout::DEFAULT_BLOCK_SIZE } else { l.block_size as usize };
        Layout::new(k, m, unit, block).map_err(|e| bad("layout", e))?;
        let p = spec.placement.clone().unwrap_or_default();
        let level =
            if p.level.is_empty() { Level::Zone } else { p.level.parse().map_err(|e| bad("placement.level", e))? };
        let max_per_domain = if p.max_per_domain == 0 { m } else { p.max_per_domain as usize };
        if max_per_domain > m {
            return Err(bad(
                "placement.max_per_domain",
                format!(
                    "{max_per_domain} stripes per {level} would leave fewer than k readable when one {level} is down (m = {m})"
                ),
            ));
        }
        let availability = if spec.availability.is_empty() {
            Availability::Low
        } else {
            spec.availability.parse().map_err(|e| bad("availability", e))?
        };
        let read_mode = if spec.read_mode.is_empty() {
            None
        } else {
            Some(spec.read_mode.parse::<ReadMode>().map_err(|e| bad("read_mode", e))?)
        };
        let record = Self {
            min_write_stripes: spec.min_write_stripes as usize,
            name,
            k,
            m,
            stripe_unit: unit,
            block_size: block,
            level,
            max_per_domain,
            availability,
            keep_versions: (spec.keep_versions as usize).max(1),
            created_unix: now_unix,
            read_mode,
            hedge: spec.hedge.map(|h| HedgeTuning {
                delay_min_ms: h.delay_min_ms,
                delay_max_ms: h.delay_max_ms,
                extra_stripes: h.extra_stripes,
            }),
            owner: spec.owner.clone(),
        };
        record.validate_min_write_stripes()?;
        record.validate_hedge()?;
        Ok(record)
    }

    pub fn spec(&self) -> ms::FilesetSpec {
        ms::FilesetSpec {
            name: self.name.to_string(),
            layout: Some(layout_to_wire(&self.layout())),
            placement: Some(ms::PlacementPolicy {
                level: self.level.to_string(),
                max_per_domain: self.max_per_domain as u32,
            }),
            availability: self.availability.to_string(),
            keep_versions: self.keep_versions as u32,
            read_mode: self.read_mode.map(|m| m.to_string()).unwrap_or_default(),
            min_write_stripes: self.min_write_stripes as u32,
            hedge: self.hedge.map(|h| ms::HedgeTuning {
                delay_min_ms: h.delay_min_ms,
                delay_max_ms: h.delay_max_ms,
                extra_stripes: h.extra_stripes,
            }),
            owner: self.owner.clone(),
        }
    }
}

pub fn layout_to_wire(l: &Layout) -> ms::Layout {
    ms::Layout {
        k: l.k() as u32,
        m: l.m() as u32,
        stripe_unit: l.stripe_unit() as u64,
        block_size: l.block_size() as u64,
    }
}

impl VersionRecord {
    pub fn to_wire(&self) -> ms::Version {
        let refs = |v: &[crate::records::ItemRecord]| {
            v.iter()
                .map(|i| ms::ItemRef { item: i.id.as_bytes().to_vec().into(), length: i.len, ..Default::default() })
                .collect()
        };
        ms::Version {
            fileset: self.fileset.to_string(),
            id: self.id,
            created_unix: self.created_unix,
            files: self.files,
            bytes: self.bytes,
            items: refs(&self.items),
            manifest: Some(ms::ManifestRef {
                items: refs(&self.manifest_items),
                length: self.manifest_len,
                sha256: hex::decode(&self.manifest_sha256).unwrap_or_default().into(),
            }),
            pins: self.pins.clone(),
        }
    }
}

pub fn stripe_from_wire(r: &cs::StripeRef) -> Option<StripeId> {
    Some(StripeId::new(ItemId::from_bytes(&r.item).ok()?, u16::try_from(r.index).ok()?))
}

fn topology_from_wire(t: Option<&ms::Topology>) -> Topology {
    let t = t.cloned().unwrap_or_default();
    Topology { region: t.region, zone: t.zone, rack: t.rack, node: t.node }
}

fn topology_to_wire(t: &Topology) -> ms::Topology {
    ms::Topology { region: t.region.clone(), zone: t.zone.clone(), rack: t.rack.clone(), node: t.node.clone() }
}

pub fn registration(r: &ms::RegisterRequest) -> Result<Registration, MasterError> {
    let server_id = server_id(&r.server_id)?;
    if r.address.is_empty() {
        return Err(bad("address", "a chunkserver registers with the address it serves on"));
    }
    Ok(Registration {
        server_id,
        address: r.address.clone(),
        topology: topology_from_wire(r.topology.as_ref()),
        free_bytes: r.free_bytes,
        total_bytes: r.total_bytes,
    })
}

/// A server id from a request, or an error naming the field.
pub fn server_id(id: &str) -> Result<ServerId, MasterError> {
    ServerId::new(id).map_err(|e| bad("server_id", e))
}

/// Stripe references that do not parse are left out (a newer server may
/// report what this master cannot name).
pub fn heartbeat(h: &ms::HeartbeatRequest) -> Result<Heartbeat, MasterError> {
    let stripes = |refs: &[cs::StripeRef]| refs.iter().filter_map(stripe_from_wire).collect();
    Ok(Heartbeat {
        server_id: server_id(&h.server_id)?,
        epoch: h.master_epoch.clone(),
        free_bytes: h.free_bytes,
        total_bytes: h.total_bytes,
        read_bytes_per_sec: h.read_bytes_per_sec,
        device_bytes_per_sec: (h.device_bytes_per_sec.is_finite() && h.device_bytes_per_sec > 0.0)
            .then_some(h.device_bytes_per_sec),
        added: stripes(&h.added),
        removed: stripes(&h.removed),
        quarantined: stripes(&h.quarantined),
    })
}

pub fn fileset_to_wire(f: &FilesetView) -> ms::Fileset {
    ms::Fileset {
        spec: Some(f.record.spec()),
        created_unix: f.record.created_unix,
        latest_version: f.latest_version,
        versions: f.versions,
    }
}

fn written_items(refs: &[ms::ItemRef], field: &'static str) -> Result<Vec<WrittenItem>, MasterError> {
    refs.iter()
        .map(|r| {
            let id = ItemId::from_bytes(&r.item).map_err(|e| bad(field, e))?;
            let missing_stripes = r
                .missing_stripes
                .iter()
                .map(|&i| {
                    u16::try_from(i).map_err(|_| bad("items.missing_stripes", format!("item {id} has no stripe {i}")))
                })
                .collect::<Result<_, _>>()?;
            Ok(WrittenItem { id, len: r.length, missing_stripes })
        })
        .collect()
}

pub fn commit(c: &ms::CommitVersionRequest) -> Result<Commit, MasterError> {
    let items = written_items(&c.items, "items")?;
    let manifest = c.manifest.as_ref().ok_or_else(|| bad("manifest", "a version needs its manifest"))?;
    let sha256 =
        <[u8; 32]>::try_from(manifest.sha256.as_ref()).map_err(|_| bad("manifest.sha256", "must be 32 bytes"))?;
    Ok(Commit {
        session: c.session.clone(),
        items,
        manifest: ManifestRef {
            items: written_items(&manifest.items, "manifest.items")?,
            len: manifest.length,
            sha256,
        },
        files: c.files,
        bytes: c.bytes,
    })
}

pub fn placement_to_wire(p: &ItemPlacement) -> ms::ItemLocation {
    ms::ItemLocation {
        item: p.item.as_bytes().to_vec().into(),
        servers: p.addresses.iter().map(|a| a.clone().unwrap_or_default()).collect(),
    }
}

pub fn version_view_to_wire(v: &VersionView) -> ms::GetVersionResponse {
    ms::GetVersionResponse {
        version: Some(v.version.to_wire()),
        layout: Some(layout_to_wire(&v.layout)),
        locations: v.locations.iter().map(placement_to_wire).collect(),
    }
}

pub fn status_to_wire(s: Status) -> ms::StatusResponse {
    ms::StatusResponse {
        relearning: s.relearning,
        corrupt_stripes_found: s.corrupt_stripes_found,
        corrupt_stripes_rebuilt: s.corrupt_stripes_rebuilt,
        corrupt_reports: s.corrupt_reports,
        servers: s
            .servers
            .into_iter()
            .map(|h| ms::ServerStatus {
                topology: Some(topology_to_wire(&h.topology)),
                server_id: h.server_id.into(),
                address: h.address,
                live: h.live,
                down: h.down,
                free_bytes: h.free_bytes,
                total_bytes: h.total_bytes,
                read_bytes_per_sec: h.read_bytes_per_sec,
                device_bytes_per_sec: h.device_bytes_per_sec.unwrap_or(0.0),
                stripes: h.stripes,
                failure_count: h.failure_count,
            })
            .collect(),
        filesets: s
            .filesets
            .into_iter()
            .map(|f| ms::FilesetStatus {
                name: f.name,
                items: f.items,
                items_by_redundancy: f.items_by_redundancy,
                degraded: f.degraded,
                unrecoverable: f.unrecoverable,
                repairing: f.repairing,
                stripes_per_domain: f
                    .stripes_per_domain
                    .into_iter()
                    .map(|d| ms::DomainCount { domain: d.domain, stripes: d.stripes })
                    .collect(),
                level: f.level.to_string(),
                placement_violations: f.placement_violations,
                corrupt_stripes_found: f.corrupt_stripes_found,
                corrupt_stripes_rebuilt: f.corrupt_stripes_rebuilt,
                corrupt_stripes_pending: f.corrupt_stripes_pending,
                degraded_writes: f.degraded_writes,
            })
            .collect(),
        repaired_stripes: s.repaired_stripes,
        repaired_bytes: s.repaired_bytes,
        collected_stripes: s.collected_stripes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_get_defaults_and_bad_fields_are_named() {
        let spec = ms::FilesetSpec { name: "models".into(), ..Default::default() };
        let r = FilesetRecord::from_spec(&spec, 1).unwrap();
        assert_eq!((r.k, r.m, r.max_per_domain, r.keep_versions), (6, 3, 3, 1));
        assert_eq!(r.level, Level::Zone);
        assert_eq!(r.availability, Availability::Low);

        let bad = |spec: ms::FilesetSpec| FilesetRecord::from_spec(&spec, 1).unwrap_err().to_string();
        assert!(bad(ms::FilesetSpec { name: "Bad_Name".into(), ..Default::default() }).contains("name"));
        let e = bad(ms::FilesetSpec {
            name: "x".into(),
            layout: Some(ms::Layout { k: 6, m: 3, stripe_unit: 100, block_size: 0 }),
            ..Default::default()
        });
        assert!(e.contains("layout") && e.contains("stripe unit 100"), "{e}");
        let e = bad(ms::FilesetSpec {
            name: "x".into(),
            placement: Some(ms::PlacementPolicy { level: "floor".into(), max_per_domain: 0 }),
            ..Default::default()
        });
        assert!(e.contains("placement.level"), "{e}");
        let e = bad(ms::FilesetSpec {
            name: "x".into(),
            placement: Some(ms::PlacementPolicy { level: "zone".into(), max_per_domain: 4 }),
            ..Default::default()
        });
        assert!(e.contains("placement.max_per_domain"), "{e}");
        let e = bad(ms::FilesetSpec { name: "x".into(), availability: "medium".into(), ..Default::default() });
        assert!(e.contains("availability"), "{e}");
        let e = bad(ms::FilesetSpec { name: "x".into(), read_mode: "fastest".into(), ..Default::default() });
        assert!(e.contains("read_mode"), "{e}");
        let hedge = |min, max, extra| ms::FilesetSpec {
            name: "x".into(),
            hedge: Some(ms::HedgeTuning { delay_min_ms: min, delay_max_ms: max, extra_stripes: extra }),
            ..Default::default()
        };
        assert!(bad(hedge(50, 10, 0)).contains("hedge"));
        assert!(bad(hedge(1, 70_000, 0)).contains("hedge"));
        assert!(bad(hedge(1, 10, 4)).contains("m = 3"));
        let ok = FilesetRecord::from_spec(&hedge(1, 10, 3), 0).unwrap();
        assert_eq!(ok.spec().hedge.unwrap().extra_stripes, 3, "kept on the way back");
        let ok = FilesetRecord::from_spec(
            &ms::FilesetSpec { name: "x".into(), read_mode: "accelerated".into(), ..Default::default() },
            0,
        )
        .unwrap();
        assert_eq!(ok.spec().read_mode, "accelerated");
    }

    #[test]
    fn server_ids_are_checked_where_they_come_in() {
        let reg = |id: &str| ms::RegisterRequest {
            server_id: id.into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        };
        assert_eq!(registration(&reg("cs0")).unwrap().server_id, ServerId::new("cs0").unwrap());
        for bad in ["", "cs 0"] {
            let e = registration(&reg(bad)).unwrap_err();
            assert!(matches!(e, MasterError::InvalidSpec { field: "server_id", .. }), "{bad:?}: {e}");
            let hb = ms::HeartbeatRequest { server_id: bad.into(), ..Default::default() };
            assert!(matches!(heartbeat(&hb), Err(MasterError::InvalidSpec { field: "server_id", .. })), "{bad:?}");
        }
    }
}
