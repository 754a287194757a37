//! The node plugin as a process, for the tests that start, kill and talk
//! to it: its flags, its CSI client, its control API.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use tessera_csi::csi;
use tessera_csi::csi::identity_client::IdentityClient;
use tessera_csi::csi::node_client::NodeClient;

use super::{Proc, csi_channel, tessera_csi};

pub struct Node {
    pub dir: PathBuf,
    pub master: String,
}

/// A test ends with its plugin and keeper gone but its mounts (dead FUSE
/// connections and binds of them) still there; detach them so that nothing
/// of the test stays mounted on the machine and its directory can go.
impl Drop for Node {
    fn drop(&mut self) {
        let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
        let mut mounts: Vec<PathBuf> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|m| m.starts_with(&self.dir))
            .collect();
        // Deepest first, so a bind over a mount goes before the mount.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

impl Node {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("csi.sock")
    }

    /// Starts the keeper that holds the plugin's FUSE connections.
    pub fn start_keeper(&self) -> Proc {
        tessera_csi(
            &["keeper".into(), format!("--socket={}", self.dir.join("keeper.sock").display())],
            &self.dir.join("keeper.log"),
        )
    }

    pub fn start_plugin(&self, generation: u32) -> Proc {
        self.start_plugin_with(generation, &[])
    }

    pub fn start_plugin_with(&self, generation: u32, extra: &[&str]) -> Proc {
        let mut args = vec![
            format!("--endpoint=unix://{}", self.socket().display()),
            "--node-id=node-a".into(),
            format!("--master={}", self.master),
            format!("--state-dir={}", self.dir.join("state").display()),
            format!("--keeper-socket={}", self.dir.join("keeper.sock").display()),
            "--cache-size=64MiB".into(),
            "--metrics-listen=127.0.0.1:0".into(),
            "--log=debug".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        tessera_csi(&args, &self.dir.join(format!("plugin-{generation}.log")))
    }

    pub async fn client(&self) -> NodeClient<tonic::transport::Channel> {
        // Generous: two test suites may share these two cores.
        for _ in 0..1200 {
            if let Ok(channel) = csi_channel(&self.socket()).await
                && IdentityClient::new(channel.clone()).probe(csi::ProbeRequest {}).await.is_ok()
            {
                return NodeClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the plugin never answered:\n{}", self.log());
    }

    /// The control/metrics address a plugin generation printed when ready.
    pub fn metrics_addr(&self, generation: u32) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("plugin-{generation}.log"))).unwrap();
        let line = log.lines().find(|l| l.contains("\"event\":\"ready\"")).expect("a ready line");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["metrics"].as_str().unwrap().to_string()
    }

    pub fn log(&self) -> String {
        let mut out = String::new();
        for g in 0..3 {
            out += &std::fs::read_to_string(self.dir.join(format!("plugin-{g}.log"))).unwrap_or_default();
        }
        out
    }
}

pub fn reader() -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: Mode::MultiNodeReaderOnly as i32 }),
    }
}

/// One HTTP/1.1 request; the whole response.
pub async fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

pub fn writer() -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

pub fn read_at(f: &mut std::fs::File, off: u64, len: usize) -> Vec<u8> {
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Provisions a 64 MiB leaf over the latest version of `fileset` through the
/// plugin's Controller service, as the external provisioner would.
pub async fn create_leaf(node: &Node, name: &str, fileset: &str) -> csi::Volume {
    use tessera_csi::csi::controller_client::ControllerClient;
    let mut controller = ControllerClient::new(csi_channel(&node.socket()).await.unwrap());
    controller
        .create_volume(csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 64 << 20, limit_bytes: 0 }),
            volume_capabilities: vec![writer()],
            parameters: [("fileset".to_string(), fileset.to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}
