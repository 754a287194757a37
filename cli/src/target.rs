//! Where the master is, and what `NAME[@VERSION][/PATH]` names.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `$TESSERA_HOME`, by default `~/.tessera`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("TESSERA_HOME") {
        return h.into();
    }
    let base = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    base.join(".tessera")
}

/// The default data dir of `tessera local up`.
pub fn default_local_dir() -> PathBuf {
    home().join("local")
}

/// What `tessera local up` writes for the other commands to find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalState {
    pub master: String,
    pub control: String,
    pub servers: Vec<LocalServerState>,
    /// The `tessera local up` process, and the master's process (0: not
    /// running), so a later `local up` can clean up after a killed one.
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub master_pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalServerState {
    pub id: String,
    pub grpc: String,
    pub zone: String,
    pub running: bool,
    /// Its process id while it runs.
    #[serde(default)]
    pub pid: u32,
    /// How it ended, if it exited without being asked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<String>,
}

impl LocalState {
    pub fn path(dir: &std::path::Path) -> PathBuf {
        dir.join("local.json")
    }

    /// The running local cluster's state, from the default data dir.
    pub fn load() -> anyhow::Result<Self> {
        let p = Self::path(&default_local_dir());
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!("no master given (--master or TESSERA_MASTER) and no local cluster found at {}; start one with `tessera local up`", p.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))
    }
}

/// The master's address: `--master`, `TESSERA_MASTER`, or the local cluster.
pub fn master_addr(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(m) = flag {
        return Ok(m.to_string());
    }
    Ok(LocalState::load()?.master)
}

/// `NAME`, `NAME@VERSION` or `NAME@latest`, optionally followed by `/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub fileset: String,
    /// 0: the latest.
    pub version: u64,
    pub path: String,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (head, path) = match s.split_once('/') {
            Some((h, p)) => (h, p.trim_end_matches('/').to_string()),
            None => (s, String::new()),
        };
        let (fileset, version) = match head.split_once('@') {
            Some((f, "latest")) => (f, 0),
            Some((f, v)) => {
                let n: u64 =
                    v.parse().map_err(|_| format!("{v:?} in {s:?} is not a version number (or \"latest\")"))?;
                if n == 0 {
                    return Err(format!("versions count from 1 (in {s:?})"));
                }
                (f, n)
            }
            None => (head, 0),
        };
        if fileset.is_empty() {
            return Err(format!("{s:?} names no fileset (NAME[@VERSION][/PATH])"));
        }
        if !path.is_empty() {
            tessera_core::manifest::validate_path(&path).map_err(|e| e.to_string())?;
        }
        Ok(Self { fileset: fileset.to_string(), version, path })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.fileset)?;
        if self.version != 0 {
            write!(f, "@{}", self.version)?;
        }
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: Target = "models@3/bert/config.json".parse().unwrap();
        assert_eq!(t, Target { fileset: "models".into(), version: 3, path: "bert/config.json".into() });
        assert_eq!("models".parse::<Target>().unwrap().version, 0);
        assert_eq!("models@latest/".parse::<Target>().unwrap().path, "");
        assert!("models@x".parse::<Target>().unwrap_err().contains("not a version number"));
        assert!("models@0".parse::<Target>().is_err());
        assert!("models/../etc".parse::<Target>().unwrap_err().contains(".."));
        assert!("@2".parse::<Target>().is_err());
        assert_eq!(t.to_string(), "models@3/bert/config.json");
    }
}
