//! The durable records: filesets and their published versions.
//!
//! These are what survives a master restart (in the embedded store locally,
//! in custom resources on Kubernetes). Stripe locations are not here: they
//! are soft state rebuilt from chunkserver reports.

use serde::{Deserialize, Serialize};
use tessera_core::ids::{FilesetName, ItemId};
use tessera_core::layout::Layout;
use tessera_core::placement::{Level, PlacementPolicy};
use tessera_core::read_plan::ReadMode;
use tessera_core::repair::Availability;

use crate::MasterError;

/// Seconds since the Unix epoch, as records keep times.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a fileset is and how its versions are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesetRecord {
    pub name: FilesetName,
    pub k: usize,
    pub m: usize,
    pub stripe_unit: usize,
    pub block_size: usize,
    #[serde(with = "as_text")]
    pub level: Level,
    pub max_per_domain: usize,
    #[serde(with = "as_text")]
    pub availability: Availability,
    pub keep_versions: usize,
    pub created_unix: u64,
    /// How readers fetch stripes unless a volume says otherwise; none leaves
    /// it to the reader. Stored as its name (`normal`, `hedged`,
    /// `accelerated`) or absent, as records written before it existed are.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_text")]
    pub read_mode: Option<ReadMode>,
    /// Stripes of an item that must be durable for a write to succeed when
    /// fewer than k + m servers can take them; 0 (records written before it
    /// existed) means k + 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_write_stripes: usize,
    /// How its readers hedge (from its Priority's read policy); none leaves
    /// it to the readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeTuning>,
    /// The object it mirrors (the operator's Fileset: `namespace/uid`);
    /// empty when made directly.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// Bounds of the adaptive hedge delay and the parity stripes asked for up
/// front, for a fileset's hedged readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HedgeTuning {
    pub delay_min_ms: u32,
    pub delay_max_ms: u32,
    pub extra_stripes: u32,
}

/// Longest hedge delay a fileset may ask for.
pub const MAX_HEDGE_DELAY_MS: u32 = 60_000;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A field kept as its name in the records (what `Display` writes and
/// `FromStr` reads), so the stored form stays the words users know.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// As [`as_text`], absent or empty for none.
mod optional_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        if text.is_empty() { Ok(None) } else { text.parse().map(Some).map_err(serde::de::Error::custom) }
    }
}

impl FilesetRecord {
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
        PlacementPolicy { level: self.level, max_per_domain: self.max_per_domain }
    }

    /// Stripes of an item a write must store: the fileset's setting, or
    /// k + 1 (one stripe of margin, as Ceph's min_size), never more than n.
    pub fn min_write_stripes(&self) -> usize {
        match self.min_write_stripes {
            0 => (self.k + 1).min(self.k + self.m),
            v => v,
        }
    }

    /// A hedge tuning fits: min <= max <= a minute, at most m extra stripes.
    pub fn validate_hedge(&self) -> Result<(), MasterError> {
        let Some(h) = self.hedge else { return Ok(()) };
        let bad = |reason: String| MasterError::InvalidSpec { field: "hedge", reason };
        if h.delay_min_ms > h.delay_max_ms || h.delay_max_ms > MAX_HEDGE_DELAY_MS {
            return Err(bad(format!(
                "delay {}..{} ms: the minimum must not exceed the maximum, nor the maximum {MAX_HEDGE_DELAY_MS} ms",
                h.delay_min_ms, h.delay_max_ms
            )));
        }
        if h.extra_stripes as usize > self.m {
            return Err(bad(format!(
                "{} extra stripes: an item has only m = {} parity stripes",
                h.extra_stripes, self.m
            )));
        }
        Ok(())
    }

    /// Whether a create request asks for the same fileset as this one.
    pub fn same_as(&self, other: &FilesetRecord) -> bool {
        let mut a = self.clone();
        a.created_unix = other.created_unix;
        &a == other
    }
}

/// A fileset name from input, or an error naming the field.
pub fn fileset_name(name: &str) -> Result<FilesetName, MasterError> {
    FilesetName::new(name).map_err(|e| MasterError::InvalidSpec { field: "name", reason: e.to_string() })
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
    pub fileset: FilesetName,
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
    /// Every item the version owns: its manifest's and its data's.
    pub fn all_items(&self) -> impl Iterator<Item = &ItemRecord> {
        self.manifest_items.iter().chain(self.items.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_records_round_trip_through_json() {
        let v = VersionRecord {
            fileset: "a".parse().unwrap(),
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

    #[test]
    fn fileset_records_keep_their_words_and_read_older_forms() {
        let mut f = FilesetRecord {
            name: "a".parse().unwrap(),
            k: 6,
            m: 3,
            stripe_unit: 4096,
            block_size: 4096,
            level: Level::Rack,
            max_per_domain: 2,
            availability: Availability::High,
            keep_versions: 1,
            created_unix: 1,
            read_mode: Some(ReadMode::Hedged),
            min_write_stripes: 0,
            hedge: Some(HedgeTuning { delay_min_ms: 1, delay_max_ms: 50, extra_stripes: 1 }),
            owner: String::new(),
        };
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains(r#""level":"rack""#) && text.contains(r#""availability":"high""#), "{text}");
        assert!(text.contains(r#""read_mode":"hedged""#), "{text}");
        assert_eq!(serde_json::from_str::<FilesetRecord>(&text).unwrap(), f);
        f.read_mode = None;
        let text = serde_json::to_string(&f).unwrap();
        assert!(!text.contains("read_mode"), "{text}");
        // Records written by earlier masters: no read mode, or an empty one.
        let old = text.replace(r#""created_unix":1"#, r#""created_unix":1,"read_mode":"""#);
        assert_eq!(serde_json::from_str::<FilesetRecord>(&old).unwrap(), f);
        let bad = text.replace(r#""level":"rack""#, r#""level":"floor""#);
        let e = serde_json::from_str::<FilesetRecord>(&bad).unwrap_err().to_string();
        assert!(e.contains("floor"), "{e}");
    }
}
