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

use axum::http::{StatusCode, header};
use axum::routing::get;

use crate::maintenance;
use crate::service::MasterService;
use crate::store::{MetaStore, RedbStore};
use crate::{Master, MasterConfig};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the metadata store lives.
    pub data_dir: PathBuf,
    /// Address of the HTTP endpoint with /metrics and /healthz.
    pub metrics_listen: Option<SocketAddr>,
    pub master: MasterConfig,
}

/// A running master.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub master: Arc<Master>,
    /// Deletes stripes in the background (what the master's decisions release).
    pub chores: maintenance::Chores,
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
    start_with_store(config, Arc::new(store)).await
}

/// Starts a master on `store` (the operator passes its Kubernetes store).
pub async fn start_with_store(config: Config, store: Arc<dyn MetaStore>) -> anyhow::Result<Running> {
    let master = tokio::task::spawn_blocking({
        let c = config.master.clone();
        move || Master::new(store, c)
    })
    .await??;
    let client = StripeClient::new(ClientConfig { class: RequestClass::Repair, ..Default::default() });
    let (chores, queue) = maintenance::chores();
    let (stop, stop_rx) = watch::channel(false);
    let svc = MasterService::new(master.clone(), chores.clone());
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
    let mut metrics_addr = None;
    if let Some(listen) = config.metrics_listen {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        metrics_addr = Some(listener.local_addr()?);
        let app = axum::Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(master.clone());
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .context("master metrics endpoint")
        }));
    }
    let m = master.clone();
    tasks.push(tokio::spawn(async move {
        maintenance::run(m, client, queue, stop_rx).await;
        Ok(())
    }));
    info!(%addr, metrics = ?metrics_addr, data_dir = %config.data_dir.display(), "master started");
    Ok(Running { addr, metrics_addr, master, chores, stop, tasks })
}

async fn metrics(axum::extract::State(master): axum::extract::State<Arc<Master>>) -> impl axum::response::IntoResponse {
    match crate::metrics::render(&master, std::time::Instant::now()) {
        Ok(page) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            page,
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_master_serves_metrics_and_health_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let running = start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            master: MasterConfig::default(),
        })
        .await
        .unwrap();
        let addr = running.metrics_addr.unwrap();
        assert!(http_get(addr, "/healthz").await.ends_with("ok\n"));
        let page = http_get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("tessera_master_repaired_stripes_total 0"), "{page}");
        running.shutdown().await.unwrap();
    }
}
