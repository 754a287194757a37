//! Runs a master: opens the store, serves gRPC, runs the maintenance loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tessera_client::{ClientConfig, RequestClass, StripeClient};
use tessera_proto::ms::{master_server::MasterServer, registry_server::RegistryServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use super::maintenance;
use super::service::MasterService;
use super::store::RedbStore;
use super::{Master, MasterConfig};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the metadata store lives.
    pub data_dir: PathBuf,
    pub master: MasterConfig,
}

/// A running master.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub master: Arc<Master>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let path = config.data_dir.join("meta.redb");
    let store = tokio::task::spawn_blocking(move || RedbStore::open(&path)).await??;
    let master = Master::new(Arc::new(store), config.master.clone())?;
    let client = StripeClient::new(ClientConfig { class: RequestClass::Repair, ..Default::default() });
    let (deleter, deletions) = maintenance::deleter();
    let (stop, stop_rx) = watch::channel(false);
    let svc = MasterService::new(master.clone(), deleter);
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut rx = stop_rx.clone();
    let router = Server::builder().add_service(MasterServer::new(svc.clone())).add_service(RegistryServer::new(svc));
    let mut tasks = vec![tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .context("master gRPC server")
    })];
    let m = master.clone();
    tasks.push(tokio::spawn(async move {
        maintenance::run(m, client, deletions, stop_rx).await;
        Ok(())
    }));
    info!(%addr, data_dir = %config.data_dir.display(), "master started");
    Ok(Running { addr, master, stop, tasks })
}
