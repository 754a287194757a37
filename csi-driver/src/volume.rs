//! What a volume names: a fileset version (a root volume).
//!
//! Static PersistentVolumes give it as the volume handle (`models@3`,
//! `models@latest`, or `models` for the latest); ephemeral inline volumes
//! as volumeAttributes (`fileset`, `version`, `kind`). Dynamically created
//! root volumes get `models@3#<suffix>` so each name has its own id.

use std::collections::HashMap;

/// The id of the leaf volume CreateVolume makes for `name`: the same name
/// always gives the same id, so creating twice is creating once.
pub fn leaf_id(name: &str) -> String {
    use sha2::Digest;
    format!("leaf-{}", hex::encode(&sha2::Sha256::digest(name.as_bytes())[..8]))
}

/// Whether a volume id names a leaf (`leaf-` and 16 hex digits).
pub fn is_leaf(id: &str) -> bool {
    id.strip_prefix("leaf-").is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Id(u64),
}

/// A root volume: a version of a fileset, read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRef {
    pub fileset: String,
    pub version: VersionSpec,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("volume id {id:?}: {reason}")]
    BadId { id: String, reason: String },
    #[error("volume attribute {key}: {reason}")]
    BadAttribute { key: &'static str, reason: String },
}

fn check_fileset(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{name:?} is not a fileset name (lowercase letters, digits and '-')")) }
}

fn version_spec(v: &str) -> Result<VersionSpec, String> {
    match v {
        "" | "latest" => Ok(VersionSpec::Latest),
        n => match n.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!("{n:?} is not a version (a number from 1, or latest)")),
            Ok(id) => Ok(VersionSpec::Id(id)),
        },
    }
}

impl RootRef {
    /// Parses a volume handle: `FILESET[@VERSION|@latest][#SUFFIX]`.
    pub fn parse_id(id: &str) -> Result<Self, VolumeError> {
        let bad = |reason: String| VolumeError::BadId { id: id.to_string(), reason };
        let base = id.split_once('#').map_or(id, |(b, _)| b);
        let (fileset, version) = base.split_once('@').unwrap_or((base, ""));
        check_fileset(fileset).map_err(bad)?;
        Ok(Self { fileset: fileset.to_string(), version: version_spec(version).map_err(bad)? })
    }

    /// From volume attributes (inline volumes) or StorageClass parameters.
    pub fn from_attributes(attrs: &HashMap<String, String>) -> Result<Self, VolumeError> {
        let fileset = attrs
            .get("fileset")
            .ok_or_else(|| VolumeError::BadAttribute { key: "fileset", reason: "missing".into() })?;
        check_fileset(fileset).map_err(|reason| VolumeError::BadAttribute { key: "fileset", reason })?;
        let version = version_spec(attrs.get("version").map(String::as_str).unwrap_or(""))
            .map_err(|reason| VolumeError::BadAttribute { key: "version", reason })?;
        Ok(Self { fileset: fileset.clone(), version })
    }

    /// The version to ask the master for (0: the latest).
    pub fn version_id(&self) -> u64 {
        match self.version {
            VersionSpec::Latest => 0,
            VersionSpec::Id(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_name_a_fileset_and_a_version() {
        let r = RootRef::parse_id("models@3").unwrap();
        assert_eq!((r.fileset.as_str(), r.version), ("models", VersionSpec::Id(3)));
        assert_eq!(RootRef::parse_id("models").unwrap().version, VersionSpec::Latest);
        assert_eq!(RootRef::parse_id("models@latest").unwrap().version_id(), 0);
        assert_eq!(RootRef::parse_id("models@3#pvc-1234").unwrap().version, VersionSpec::Id(3));
        for bad in ["", "Models@1", "models@0", "models@x", "../etc@1", "models@-1"] {
            assert!(matches!(RootRef::parse_id(bad), Err(VolumeError::BadId { .. })), "{bad}");
        }
    }

    #[test]
    fn leaf_ids_are_stable_and_recognised() {
        let id = leaf_id("pvc-1234");
        assert_eq!(id, leaf_id("pvc-1234"));
        assert_ne!(id, leaf_id("pvc-1235"));
        assert!(is_leaf(&id) && !is_leaf("models@3") && !is_leaf("leaf-xyz"));
    }

    #[test]
    fn inline_attributes_are_checked_by_name() {
        let attrs = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let r = RootRef::from_attributes(&attrs(&[("fileset", "models"), ("version", "2")])).unwrap();
        assert_eq!(r.version, VersionSpec::Id(2));
        let e = RootRef::from_attributes(&attrs(&[("version", "2")])).unwrap_err();
        assert_eq!(e, VolumeError::BadAttribute { key: "fileset", reason: "missing".into() });
        let e = RootRef::from_attributes(&attrs(&[("fileset", "models"), ("version", "two")])).unwrap_err();
        assert!(matches!(e, VolumeError::BadAttribute { key: "version", .. }));
    }
}
