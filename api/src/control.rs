//! The messages of the CSI node plugin's control API (JSON over HTTP on its
//! metrics port): what the plugin answers and what its callers (the
//! operator's leaf promotion, `tessera promote`, tests) parse.

use serde::{Deserialize, Serialize};

/// Whether a volume is a shared read-only root or a private leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Root,
    Leaf,
}

/// One volume on the node, as `GET /volumes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub volume: String,
    pub kind: VolumeKind,
    /// The root it reads: `fileset@version`.
    pub root: Option<String>,
    /// How its root mount reads stripes (`normal`, `hedged`, `accelerated`).
    pub read_mode: Option<String>,
    pub read_bytes_per_sec: Option<f64>,
    /// Leaves only: bytes per second written through the leaf's mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes_per_sec: Option<f64>,
}

/// The answer of `GET /volumes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeList {
    pub volumes: Vec<VolumeInfo>,
}

/// The answer of `GET /volumes/{volume}/throughput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub volume: String,
    /// The rates are averages over this window.
    pub window_secs: u64,
    pub read_bytes_per_sec: f64,
    /// Leaves only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes_per_sec: Option<f64>,
}

/// The answer of `POST /volumes/{volume}/promote`: the version stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub fileset: String,
    pub version: u64,
    pub files: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_json_names() {
        let leaf = VolumeInfo {
            volume: "v1".into(),
            kind: VolumeKind::Leaf,
            root: Some("models@3".into()),
            read_mode: Some("hedged".into()),
            read_bytes_per_sec: Some(1.0),
            write_bytes_per_sec: Some(2.0),
        };
        let text = serde_json::to_string(&VolumeList { volumes: vec![leaf.clone()] }).unwrap();
        assert!(text.contains(r#""kind":"leaf""#) && text.contains(r#""write_bytes_per_sec":2.0"#), "{text}");
        assert_eq!(serde_json::from_str::<VolumeList>(&text).unwrap().volumes, vec![leaf]);
        let root =
            Throughput { volume: "v2".into(), window_secs: 10, read_bytes_per_sec: 5.0, write_bytes_per_sec: None };
        let text = serde_json::to_string(&root).unwrap();
        assert!(!text.contains("write"), "{text}");
        let p: Promoted = serde_json::from_str(r#"{"fileset":"a","version":2,"files":3,"bytes":4}"#).unwrap();
        assert_eq!(p.version, 2);
    }
}
