//! The durable records: filesets and their published versions.
//!
//! These are what survives a master restart (in the embedded store locally,
//! in custom resources on Kubernetes). Stripe locations are not here: they
//! are soft state rebuilt from chunkserver reports.

use serde::{Deserialize, Serialize};
use tessera_core::ids::ItemId;
use tessera_core::layout::Layout;
use tessera_core::placement::{Level, PlacementPolicy};
use tessera_core::read_plan::ReadMode;
use tessera_core::repair::Availability;
use tessera_proto::ms;

use crate::MasterError;

/// Longest fileset name, in bytes.
pub const MAX_NAME: usize = 63;

/// What a fileset is and how its versions are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesetRecord {
    pub name: String,
    pub k: usize,
    pub m: usize,
    pub stripe_unit: usize,
    pub block_size: usize,
    pub level: String,
    pub max_per_domain: usize,
    pub availability: String,
    pub keep_versions: usize,
    pub created_unix: u64,
    /// How readers fetch stripes unless a volume says otherwise (`normal`,
    /// `hedged` or `accelerated`); empty leaves it to the reader. Records
    /// written before it existed read as empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub read_mode: String,
    /// Stripes of an item that must be durable for a write to succeed when
    /// fewer than k + m servers can take them; 0 (records written before it
    /// existed) means k + 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_write_stripes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl FilesetRecord {
    /// Checks a spec from a client and fills in the defaults; errors name the
    /// offending field.
    pub fn from_spec(spec: &ms::FilesetSpec, now_unix: u64) -> Result<Self, MasterError> {
        validate_name(&spec.name)?;
        let bad = |field: &'static str, reason: String| MasterError::InvalidSpec { field, reason };
        let l = spec.layout.unwrap_or_default();
        let k = if l.k == 0 { 6 } else { l.k as usize };
        let m = if l.m == 0 { 3 } else { l.m as usize };
        let unit = if l.stripe_unit == 0 { tessera_core::layout::DEFAULT_STRIPE_UNIT } else { l.stripe_unit as usize };
        let block = if l.block_size == 0 { tessera_core::layout::DEFAULT_BLOCK_SIZE } else { l.block_size as usize };
        Layout::new(k, m, unit, block).map_err(|e| bad("layout", e.to_string()))?;
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
            String::new()
        } else {
            spec.read_mode.parse::<ReadMode>().map_err(|e| bad("read_mode", e.to_string()))?.to_string()
        };
        let record = Self {
            min_write_stripes: spec.min_write_stripes as usize,
            name: spec.name.clone(),
            k,
            m,
            stripe_unit: unit,
            block_size: block,
            level: level.to_string(),
            max_per_domain,
            availability: availability.as_str().to_string(),
            keep_versions: (spec.keep_versions as usize).max(1),
            created_unix: now_unix,
            read_mode,
        };
        record.validate_min_write_stripes()?;
        Ok(record)
    }

    /// `min_write_stripes` is 0 (k + 1) or within k..=k+m.
    pub fn validate_min_write_stripes(&self) -> Result<(), MasterError> {
        let (k, n, v) = (self.k, self.k + self.m, self.min_write_stripes);
        if v != 0 && !(k..=n).contains(&v) {
            return Err(MasterError::InvalidSpec {
                field: "min_write_stripes",
                reason: format!("{v} is outside {k}..={n} (k..=k+m): fewer than k stripes cannot be read back"),
            });
        }
        Ok(())
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self.k, self.m, self.stripe_unit, self.block_size).expect("records hold validated layouts")
    }

    pub fn policy(&self) -> PlacementPolicy {
        PlacementPolicy {
            level: self.level.parse().expect("records hold validated levels"),
            max_per_domain: self.max_per_domain,
        }
    }

    /// Stripes of an item a write must store: the fileset's setting, or
    /// k + 1 (one stripe of margin, as Ceph's min_size), never more than n.
    pub fn min_write_stripes(&self) -> usize {
        match self.min_write_stripes {
            0 => (self.k + 1).min(self.k + self.m),
            v => v,
        }
    }

    pub fn availability(&self) -> Availability {
        self.availability.parse().expect("records hold validated availability")
    }

    pub fn spec(&self) -> ms::FilesetSpec {
        ms::FilesetSpec {
            name: self.name.clone(),
            layout: Some(layout_to_wire(&self.layout())),
            placement: Some(ms::PlacementPolicy {
                level: self.level.clone(),
                max_per_domain: self.max_per_domain as u32,
            }),
            availability: self.availability.clone(),
            keep_versions: self.keep_versions as u32,
            read_mode: self.read_mode.clone(),
            min_write_stripes: self.min_write_stripes as u32,
        }
    }

    /// Whether a create request asks for the same fileset as this one.
    pub fn same_as(&self, other: &FilesetRecord) -> bool {
        let mut a = self.clone();
        a.created_unix = other.created_unix;
        &a == other
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

/// Names are DNS labels, as Kubernetes object names will be.
pub fn validate_name(name: &str) -> Result<(), MasterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(MasterError::InvalidSpec {
            field: "name",
            reason: format!(
                "{name:?} is not a valid fileset name: 1 to {MAX_NAME} lowercase letters, digits and '-', not starting or ending with '-'"
            ),
        })
    }
}

/// An item of a version: id and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    #[serde(with = "hex_item")]
    pub id: ItemId,
    pub len: u64,
}

mod hex_item {
    use serde::{Deserialize, Deserializer, Serializer};
    use tessera_core::ids::ItemId;

    pub fn serialize<S: Serializer>(id: &ItemId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ItemId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub fileset: String,
    pub id: u64,
    pub created_unix: u64,
    pub files: u64,
    pub bytes: u64,
    pub items: Vec<ItemRecord>,
    pub manifest_items: Vec<ItemRecord>,
    pub manifest_len: u64,
    pub manifest_sha256: String,
    #[serde(default)]
    pub pins: Vec<String>,
}

impl VersionRecord {
    pub fn to_wire(&self) -> ms::Version {
        let refs = |v: &[ItemRecord]| {
            v.iter()
                .map(|i| ms::ItemRef { item: i.id.as_bytes().to_vec().into(), length: i.len, ..Default::default() })
                .collect()
        };
        ms::Version {
            fileset: self.fileset.clone(),
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

    /// Every item the version owns: its manifest's and its data's.
    pub fn all_items(&self) -> impl Iterator<Item = &ItemRecord> {
        self.manifest_items.iter().chain(self.items.iter())
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
        assert_eq!(r.level, "zone");
        assert_eq!(r.availability, "low");

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
        let ok = FilesetRecord::from_spec(
            &ms::FilesetSpec { name: "x".into(), read_mode: "accelerated".into(), ..Default::default() },
            0,
        )
        .unwrap();
        assert_eq!(ok.spec().read_mode, "accelerated");
    }

    #[test]
    fn version_records_round_trip_through_json() {
        let v = VersionRecord {
            fileset: "a".into(),
            id: 3,
            created_unix: 9,
            files: 2,
            bytes: 10,
            items: vec![ItemRecord { id: ItemId([1; 16]), len: 10 }],
            manifest_items: vec![ItemRecord { id: ItemId([2; 16]), len: 99 }],
            manifest_len: 99,
            manifest_sha256: "00".repeat(32),
            pins: vec!["vol-1".into()],
        };
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.contains(&"01".repeat(16)));
        assert_eq!(serde_json::from_str::<VersionRecord>(&text).unwrap(), v);
    }
}
