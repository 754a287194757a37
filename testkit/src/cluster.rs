//! A cluster in this process: a master (or none, or one started elsewhere)
//! and chunkservers on loopback gRPC, each with a data directory of its own.

use std::path::Path;
use std::sync::Arc;

use tessera_chunkserver::registrar::Identity;
use tessera_chunkserver::server::{self as cs_server, Config as CsConfig, Running as CsRunning};
use tessera_client::fileset::{FilesetClient, PutOptions};
use tessera_client::{ClientConfig, StripeClient};
use tessera_master::MasterConfig;
use tessera_master::server::{self as master_server, Config as MasterServerConfig, Running as MasterRunning};
use tessera_proto::cs::chunkserver_client::ChunkserverClient;
use tessera_proto::cs::fault_injection_client::FaultInjectionClient;
use tessera_proto::ms;

use crate::until;

/// How many chunkservers, in how many zones: server `i` is `cs<i>`, in zone
/// `z<i % zones>`, on a rack and node of its own.
#[derive(Debug, Clone, Copy)]
pub struct Servers {
    pub count: usize,
    pub zones: usize,
}

impl Servers {
    pub fn new(count: usize, zones: usize) -> Self {
        Self { count, zones: zones.max(1) }
    }
}

/// Chunkservers (with fault injection on: tests may set faults; nothing is
/// injected until they do) and, unless made without, their master.
pub struct Cluster {
    pub master: Option<MasterRunning>,
    master_addr: Option<String>,
    pub servers: Vec<CsRunning>,
    files: Option<FilesetClient>,
    /// The master's and the servers' data directories are under it.
    /// (Last: fields drop in order, so it is removed after the servers are
    /// told to stop; tests that must know them stopped call their
    /// `shutdown` first.)
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A master and `servers`, returned once every server is live in it.
    pub async fn start(servers: Servers) -> Self {
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
        let mut cluster = Self::with_servers(dir, Some(addr), servers).await;
        cluster.master = Some(master);
        cluster
    }

    /// `servers` registering with the master at `master` (the operator's,
    /// say), returned once every one is live there.
    pub async fn joining(master: &str, servers: Servers) -> Self {
        Self::with_servers(tempfile::tempdir().unwrap(), Some(master.to_string()), servers).await
    }

    /// Chunkservers alone, for tests of the stripe client.
    pub async fn servers_only(count: usize) -> Self {
        Self::with_servers(tempfile::tempdir().unwrap(), None, Servers::new(count, 1)).await
    }

    async fn with_servers(dir: tempfile::TempDir, master: Option<String>, servers: Servers) -> Self {
        let mut running = Vec::new();
        for i in 0..servers.count {
            let id = format!("cs{i}");
            let identity = Identity {
                server_id: id.clone(),
                address: String::new(),
                topology: ms::Topology {
                    region: "r".into(),
                    zone: format!("z{}", i % servers.zones),
                    rack: id.clone(),
                    node: id.clone(),
                },
            };
            let config = CsConfig {
                node_id: id.clone(),
                listen: "127.0.0.1:0".parse().unwrap(),
                unix_socket: None,
                metrics_listen: None,
                data_dirs: vec![dir.path().join(&id)],
                limits: Default::default(),
                quotas: Default::default(),
                enable_fault_injection: true,
                scrub: Default::default(),
                master: master.clone().map(|m| (m, identity)),
            };
            running.push(cs_server::start(config).await.unwrap());
        }
        let files =
            master.as_deref().map(|m| FilesetClient::new(m, StripeClient::new(ClientConfig::default())).unwrap());
        if let Some(files) = &files {
            // These servers, by id: a joined master may know others too.
            until("every chunkserver to be live in the master", async || {
                let st = files.master().status(ms::StatusRequest::default()).await.ok()?.into_inner();
                let live = |id: &str| st.servers.iter().any(|s| s.live && s.server_id == id);
                (0..servers.count).all(|i| live(&format!("cs{i}"))).then_some(())
            })
            .await;
        }
        Self { dir, master: None, master_addr: master, servers: running, files }
    }

    /// The master's address; panics for a cluster made without one.
    pub fn master_addr(&self) -> String {
        self.master_addr.clone().expect("a cluster with a master")
    }

    /// A client of the cluster's filesets; panics for a cluster without a master.
    pub fn files(&self) -> &FilesetClient {
        self.files.as_ref().expect("a cluster with a master")
    }

    pub fn stripes(&self) -> Arc<StripeClient> {
        self.files().stripes().clone()
    }

    /// The chunkservers' gRPC addresses, in server order.
    pub fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.grpc_addr.to_string()).collect()
    }

    /// Stores `tree` as the next version of `fileset`, created if new with
    /// RS(4,2), 64 KiB stripe units and blocks, at most two stripes of an
    /// item per zone (so six servers in three zones hold every item).
    pub async fn put(&self, fileset: &str, tree: &Path) -> ms::Version {
        self.put_with(fileset, tree, ms::FilesetSpec::default()).await
    }

    /// As [`Cluster::put`], the fileset created with the policies of `spec`
    /// (its name, layout and placement are the harness's).
    pub async fn put_with(&self, fileset: &str, tree: &Path, spec: ms::FilesetSpec) -> ms::Version {
        let spec = ms::FilesetSpec {
            name: fileset.into(),
            layout: Some(ms::Layout { k: 4, m: 2, stripe_unit: 65536, block_size: 65536 }),
            placement: Some(ms::PlacementPolicy { level: "zone".into(), max_per_domain: 2 }),
            ..spec
        };
        self.files().create_fileset(spec, true).await.unwrap();
        self.files().put(fileset, tree, &PutOptions::default(), &|_| {}).await.unwrap()
    }

    /// Makes every chunkserver hold reads unanswered (or answer again).
    pub async fn hang(&self, hang: bool) {
        for i in 0..self.servers.len() {
            self.set_faults(i, tessera_proto::cs::Faults { hang, ..Default::default() }).await;
        }
    }

    /// Sets chunkserver `server`'s injected faults (latency, errors,
    /// blocks damaged in transit, ...), replacing any it had.
    pub async fn set_faults(&self, server: usize, faults: tessera_proto::cs::Faults) {
        let addr = self.servers[server].grpc_addr;
        let mut c = FaultInjectionClient::connect(format!("http://{addr}")).await.unwrap();
        c.set_faults(faults).await.unwrap();
    }

    /// The master's status of every fileset and server.
    pub async fn status(&self) -> ms::StatusResponse {
        self.files().master().status(ms::StatusRequest::default()).await.unwrap().into_inner()
    }

    /// Requests the chunkservers have answered, all classes.
    pub async fn served(&self) -> u64 {
        self.stats().await.iter().map(|c| c.served).sum()
    }

    /// Requests the chunkservers are working on.
    pub async fn in_flight(&self) -> u32 {
        self.stats().await.iter().map(|c| c.in_flight).sum()
    }

    async fn stats(&self) -> Vec<tessera_proto::cs::ClassStats> {
        let mut classes = Vec::new();
        for s in &self.servers {
            let mut c = ChunkserverClient::connect(format!("http://{}", s.grpc_addr)).await.unwrap();
            classes.extend(c.stats(tessera_proto::cs::StatsRequest::default()).await.unwrap().into_inner().classes);
        }
        classes
    }
}
