//! Wiring: binds the gRPC listeners (TCP and optionally a unix socket) and the
//! HTTP endpoint for `/metrics` and `/healthz`, and runs them until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use tessera_proto::cs::{chunkserver_server::ChunkserverServer, fault_injection_server::FaultInjectionServer};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::classes::{Admission, ClassLimits};
use crate::fast_read::FastReads;
use crate::quotas::QuotaConfig;
use crate::registrar;
use crate::scrub::{self, ScrubConfig};
use crate::service::{ChunkserverService, FaultService, Shared};
use crate::store::StripeStore;

/// Largest gRPC message accepted: a read or write chunk plus framing.
pub const MAX_MESSAGE: usize = 64 << 20;
/// HTTP/2 flow-control windows: large enough that a 1 MiB chunk never waits
/// for a window update on loopback or a LAN.
pub const STREAM_WINDOW: u32 = 16 << 20;
pub const CONNECTION_WINDOW: u32 = 64 << 20;
pub const MAX_FRAME: u32 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub listen: SocketAddr,
    pub unix_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dirs: Vec<PathBuf>,
    pub limits: ClassLimits,
    /// Usage quotas and the per-stripe queues.
    pub quotas: QuotaConfig,
    pub enable_fault_injection: bool,
    pub scrub: ScrubConfig,
    /// Report to this master (host:port) as this identity.
    pub master: Option<(String, registrar::Identity)>,
}

/// A started chunkserver.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stops accepting, lets running requests finish, and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

/// Opens the store and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    anyhow::ensure!(!config.data_dirs.is_empty(), "at least one --data-dir is required");
    let dirs = config.data_dirs.clone();
    let store = tokio::task::spawn_blocking(move || StripeStore::open(&dirs)).await??;
    let shared = Arc::new(Shared::new(
        config.node_id.clone(),
        store,
        Admission::new(config.limits),
        config.quotas,
        config.scrub.bytes_per_sec,
    ));
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let grpc_addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tasks.push(tokio::spawn(serve(router(&shared, config.enable_fault_injection), incoming, stop_rx.clone())));

    if let Some(path) = &config.unix_socket {
        // A socket left by a previous run would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tasks.push(tokio::spawn(serve(router(&shared, config.enable_fault_injection), incoming, stop_rx.clone())));
    }

    let mut metrics_addr = None;
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        metrics_addr = Some(listener.local_addr()?);
        let app = axum::Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(shared.clone());
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .context("metrics endpoint")
        }));
    }
    if let Some((master, mut identity)) = config.master.clone() {
        if identity.address.is_empty() {
            identity.address = grpc_addr.to_string();
        }
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            registrar::run(shared, master, identity, stop).await;
            Ok(())
        }));
    }
    {
        let (shared, stop, cfg) = (shared.clone(), stop_rx.clone(), config.scrub);
        tasks.push(tokio::spawn(async move {
            scrub::run(shared, cfg, stop).await;
            Ok(())
        }));
    }
    info!(node = %config.node_id, grpc = %grpc_addr, metrics = ?metrics_addr, fault_injection = config.enable_fault_injection, "chunkserver started");
    Ok(Running { grpc_addr, metrics_addr, unix_socket: config.unix_socket, shared, stop, tasks })
}

fn router(shared: &Arc<Shared>, faults: bool) -> tonic::transport::server::Router {
    let cs = ChunkserverServer::new(ChunkserverService::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let cs = FastReads::new(cs, shared.clone());
    let fi = faults.then(|| FaultInjectionServer::new(FaultService::new(shared.clone())));
    Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(cs)
        .add_optional_service(fi)
}

async fn serve<I, IO, IE>(
    router: tonic::transport::server::Router,
    incoming: I,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    router
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("gRPC server")
}

async fn metrics(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> impl axum::response::IntoResponse {
    shared.refresh_gauges();
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &shared.metrics.registry) {
        Ok(()) => (
            axum::http::StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            out,
        ),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(axum::http::header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}
