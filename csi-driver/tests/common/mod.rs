//! A cluster in this process for the driver's tests: a master and six
//! chunkservers in three zones on loopback, and trees to store.

#![allow(dead_code)]

pub mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_chunkserver::registrar::Identity;
use tessera_chunkserver::server::{self as cs_server, Config as CsConfig, Running as CsRunning};
use tessera_client::fileset::{FilesetClient, PutOptions};
use tessera_client::{ClientConfig, StripeClient};
use tessera_master::MasterConfig;
use tessera_master::server::{self as master_server, Config as MasterServerConfig, Running as MasterRunning};
use tessera_proto::ms;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub master: MasterRunning,
    pub servers: Vec<CsRunning>,
    pub files: FilesetClient,
}

impl Cluster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = master_server::start(MasterServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("master"),
            metrics_listen: None,
            master: MasterConfig::default(),
        })
        .await
        .unwrap();
        let addr = master.addr.to_string();
        let mut servers = Vec::new();
        for i in 0..6 {
            let id = format!("cs{i}");
            servers.push(
                cs_server::start(CsConfig {
                    node_id: id.clone(),
                    listen: "127.0.0.1:0".parse().unwrap(),
                    unix_socket: None,
                    metrics_listen: None,
                    data_dirs: vec![dir.path().join(&id)],
                    limits: Default::default(),
                    quotas: Default::default(),
                    enable_fault_injection: true,
                    scrub: Default::default(),
                    master: Some((
                        addr.clone(),
                        Identity {
                            server_id: id.clone(),
                            address: String::new(),
                            topology: ms::Topology {
                                region: "r".into(),
                                zone: format!("z{}", i % 3),
                                rack: id.clone(),
                                node: id.clone(),
                            },
                        },
                    )),
                })
                .await
                .unwrap(),
            );
        }
        let files = FilesetClient::new(&addr, StripeClient::new(ClientConfig::default())).unwrap();
        loop {
            let st = files.master().status(ms::StatusRequest::default()).await.unwrap().into_inner();
            if st.servers.iter().filter(|s| s.live).count() == 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Self { dir, master, servers, files }
    }

    pub fn master_addr(&self) -> String {
        self.master.addr.to_string()
    }

    /// Stores `tree` as the next version of `fileset` (RS(4,2), 64 KiB units).
    pub async fn put(&self, fileset: &str, tree: &Path) -> ms::Version {
        self.put_with_read_mode(fileset, tree, "").await
    }

    /// As [`Cluster::put`], the fileset created with a default read mode (as
    /// the operator sets from its Priority).
    pub async fn put_with_read_mode(&self, fileset: &str, tree: &Path, read_mode: &str) -> ms::Version {
        self.put_with(fileset, tree, ms::FilesetSpec { read_mode: read_mode.into(), ..Default::default() }).await
    }

    /// As [`Cluster::put`], the fileset created with the policies of `spec`
    /// (its name, layout and placement are this cluster's).
    pub async fn put_with(&self, fileset: &str, tree: &Path, spec: ms::FilesetSpec) -> ms::Version {
        let spec = ms::FilesetSpec {
            name: fileset.into(),
            layout: Some(ms::Layout { k: 4, m: 2, stripe_unit: 65536, block_size: 65536 }),
            placement: Some(ms::PlacementPolicy { level: "zone".into(), max_per_domain: 2 }),
            ..spec
        };
        self.files.create_fileset(spec, true).await.unwrap();
        self.files.put(fileset, tree, &PutOptions::default(), &|_| {}).await.unwrap()
    }

    /// Makes every chunkserver hold reads unanswered (or answer again).
    pub async fn hang(&self, hang: bool) {
        use tessera_proto::cs::fault_injection_client::FaultInjectionClient;
        for s in &self.servers {
            let mut c = FaultInjectionClient::connect(format!("http://{}", s.grpc_addr)).await.unwrap();
            c.set_faults(tessera_proto::cs::Faults { hang, ..Default::default() }).await.unwrap();
        }
    }

    /// Requests the chunkservers have answered, all classes.
    pub async fn served(&self) -> u64 {
        use tessera_proto::cs::chunkserver_client::ChunkserverClient;
        let mut n = 0;
        for s in &self.servers {
            let mut c = ChunkserverClient::connect(format!("http://{}", s.grpc_addr)).await.unwrap();
            let st = c.stats(tessera_proto::cs::StatsRequest::default()).await.unwrap().into_inner();
            n += st.classes.iter().map(|c| c.served).sum::<u64>();
        }
        n
    }

    /// Requests the chunkservers are working on.
    pub async fn in_flight(&self) -> u32 {
        use tessera_proto::cs::chunkserver_client::ChunkserverClient;
        let mut n = 0;
        for s in &self.servers {
            let mut c = ChunkserverClient::connect(format!("http://{}", s.grpc_addr)).await.unwrap();
            let st = c.stats(tessera_proto::cs::StatsRequest::default()).await.unwrap().into_inner();
            n += st.classes.iter().map(|c| c.in_flight).sum::<u32>();
        }
        n
    }

    pub fn stripes(&self) -> Arc<StripeClient> {
        self.files.stripes().clone()
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

/// A process killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tessera-csi` with `args`, its output in `log`.
pub fn tessera_csi(args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera-csi"))
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}
