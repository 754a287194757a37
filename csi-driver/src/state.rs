//! What the node plugin has mounted, kept on the host so a restarted plugin
//! knows it: each root mount (a fileset version served over FUSE, with the
//! INIT it negotiated) and who uses it, and each volume's staging and
//! target paths. Written to a temporary file, fsynced and renamed over the
//! old one, so a crash leaves the old state or the new, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fuse::abi::InitState;

/// A fileset version mounted once on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    pub fileset: String,
    pub version: u64,
    pub mountpoint: PathBuf,
    /// Staging paths and inline volumes' target paths bound to it.
    pub users: BTreeSet<PathBuf>,
    /// Set once the kernel's INIT is answered.
    pub init: Option<InitState>,
}

/// A volume as the CO knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VolumeRecord {
    /// The root mount it uses (`fileset@version`).
    pub root: String,
    pub staging: Option<PathBuf>,
    pub targets: BTreeSet<PathBuf>,
    /// An inline volume: published without staging, gone with the pod.
    pub ephemeral: bool,
}

/// A leaf volume mounted on this node (its own FUSE connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRecord {
    pub fileset: String,
    pub version: u64,
    /// The leaf's journal and data.
    pub dir: PathBuf,
    /// Where its FUSE filesystem is mounted (staging or, inline, target).
    pub mountpoint: PathBuf,
    pub capacity: u64,
    pub init: Option<InitState>,
    /// Inline: discarded with the pod.
    pub ephemeral: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeState {
    pub roots: BTreeMap<String, RootRecord>,
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// By volume id.
    #[serde(default)]
    pub leaves: BTreeMap<String, LeafRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("node state {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("node state {path} is corrupt: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

impl NodeState {
    /// The state in `dir`, or an empty one on first start.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join("state.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Replaces the state in `dir` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join("state.json");
        let io = |source| StateError::Io { path: path.clone(), source };
        let tmp = dir.join("state.json.tmp");
        let body = serde_json::to_vec_pretty(self).expect("state serializes");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&body).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeState::load(dir.path()).unwrap(), NodeState::default());
        let mut s = NodeState::default();
        s.roots.insert(
            "models@3".into(),
            RootRecord {
                fileset: "models".into(),
                version: 3,
                mountpoint: "/var/lib/tessera-csi/roots/models@3".into(),
                users: ["/stage/a".into()].into(),
                init: Some(InitState { minor: 40, flags: 1, max_write: 1 << 20, max_readahead: 1 << 17 }),
            },
        );
        s.volumes.insert("models@3".into(), VolumeRecord { root: "models@3".into(), ..Default::default() });
        s.save(dir.path()).unwrap();
        assert_eq!(NodeState::load(dir.path()).unwrap(), s);
        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        assert!(matches!(NodeState::load(dir.path()), Err(StateError::Corrupt { .. })));
    }
}
