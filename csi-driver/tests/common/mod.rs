//! A cluster in this process for the driver's tests: a master and six
//! chunkservers in three zones on loopback, and trees to store.

#![allow(dead_code)]

pub mod plugin;

use std::path::{Path, PathBuf};

use tessera_proto::ms;
pub use tessera_testkit::Proc;

/// A master and six chunkservers in three zones.
pub struct Cluster(pub tessera_testkit::Cluster);

impl std::ops::Deref for Cluster {
    type Target = tessera_testkit::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Cluster {
    pub async fn start() -> Self {
        Self(tessera_testkit::Cluster::start(tessera_testkit::Servers::new(6, 3)).await)
    }

    /// As [`tessera_testkit::Cluster::put`], the fileset created with a
    /// default read mode (as the operator sets from its Priority).
    pub async fn put_with_read_mode(&self, fileset: &str, tree: &Path, read_mode: &str) -> ms::Version {
        self.put_with(fileset, tree, ms::FilesetSpec { read_mode: read_mode.into(), ..Default::default() }).await
    }
}

/// A tree with a large file, small files, nested directories, a symlink and
/// an empty file.
pub fn sample_tree(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    std::fs::create_dir_all(root.join("models/llama")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(root.join("models/llama/weights.bin"), &big).unwrap();
    files.push(PathBuf::from("models/llama/weights.bin"));
    for i in 0..40 {
        let name = format!("models/config-{i:02}.json");
        std::fs::write(root.join(&name), format!("{{\"layer\": {i}, \"pad\": \"{}\"}}", "x".repeat(i * 37))).unwrap();
        files.push(PathBuf::from(name));
    }
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    files.push(PathBuf::from("empty.txt"));
    std::os::unix::fs::symlink("models/config-01.json", root.join("latest.json")).unwrap();
    files
}

/// A CSI client over the plugin's unix socket.
pub async fn csi_channel(socket: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tessera_csi::service::channel(socket).await
}

/// Starts `tessera-csi` with `args`, its output in `log`.
pub fn tessera_csi(args: &[String], log: &Path) -> Proc {
    let name = log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Proc::spawn_logged(&name, Path::new(env!("CARGO_BIN_EXE_tessera-csi")), args, &[], log).unwrap()
}
