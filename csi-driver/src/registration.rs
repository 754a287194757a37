//! Registration with the kubelet, the job node-driver-registrar does beside
//! other drivers.
//!
//! The kubelet watches its plugin registry directory for sockets. For a new
//! one it asks `GetInfo` (the driver's name and its CSI endpoint as the
//! kubelet sees the path), calls `NodeGetInfo` on that endpoint, records the
//! driver in the node's CSINode object, and reports the outcome with
//! `NotifyRegistrationStatus`. A restarted plugin binds a fresh socket, so
//! the kubelet registers it again.

use std::path::{Path, PathBuf};

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::DuplexStream;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::pluginregistration::registration_server::{Registration, RegistrationServer};
use crate::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};

/// The plugin type the kubelet hands CSI drivers to.
const CSI_PLUGIN: &str = "CSIPlugin";
/// The CSI versions the driver speaks, in the kubelet's terms.
const VERSIONS: &[&str] = &["1.0.0"];
/// Bytes in flight each way between a connection and the server.
const RELAY_BUFFER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("kubelet plugin registry {dir}: {source}")]
    Registry { dir: PathBuf, source: std::io::Error },
    #[error("binding the registration socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

/// What the kubelet is told, and what it said back.
#[derive(Debug, Clone)]
pub struct Registrar {
    driver: String,
    /// The CSI socket's path on the node, as the kubelet opens it.
    endpoint: String,
    /// 1 once the kubelet reports the driver registered, 0 after it reports
    /// a failure.
    registered: Gauge,
}

impl Registrar {
    pub fn new(driver: &str, endpoint: &Path, registered: Gauge) -> Self {
        Self { driver: driver.into(), endpoint: endpoint.display().to_string(), registered }
    }

    /// The socket's path in `registry`: `<driver>-reg.sock`, the name the
    /// kubelet's documentation uses.
    pub fn socket_in(&self, registry: &Path) -> PathBuf {
        registry.join(format!("{}-reg.sock", self.driver))
    }

    /// Binds the registration socket in the kubelet's `registry`, replacing
    /// one a previous plugin left (the kubelet sees a new socket and asks
    /// again), and serves it until `shutdown`; the task then removes the
    /// socket unless a newer plugin has replaced it.
    pub async fn serve(
        self,
        registry: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, RegistrationError> {
        std::fs::create_dir_all(registry)
            .map_err(|source| RegistrationError::Registry { dir: registry.into(), source })?;
        let path = self.socket_in(registry);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RegistrationError::Bind { path, source }),
        }
        let listener =
            UnixListener::bind(&path).map_err(|source| RegistrationError::Bind { path: path.clone(), source })?;
        info!(socket = %path.display(), driver = %self.driver, endpoint = %self.endpoint, "waiting for the kubelet to register the driver");
        // Each connection reaches the server through the authority relay
        // (the kubelet names the socket's path as the authority).
        let (connections, incoming) = mpsc::channel::<std::io::Result<DuplexStream>>(8);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = connections.closed() => return,
                };
                let client = match accepted {
                    Ok((client, _)) => client,
                    Err(e) => {
                        warn!(error = %e, "accepting a registration connection");
                        continue;
                    }
                };
                let (relayed, server) = tokio::io::duplex(RELAY_BUFFER);
                if connections.send(Ok(server)).await.is_err() {
                    return;
                }
                tokio::spawn(async move {
                    if let Err(e) = crate::authority::relay(client, relayed).await {
                        warn!(error = %e, "a registration connection ended badly");
                    }
                });
            }
        });
        // The socket we bound, told apart from one a newer plugin made since.
        let bound = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
        let server = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(self))
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown);
        Ok(tokio::spawn(async move {
            let served = server.await;
            // Gone with the plugin: the kubelet deregisters the driver when
            // its socket is removed, so pods fail fast instead of waiting on
            // a socket nobody serves.
            let ours = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
            if bound.is_some()
                && ours == bound
                && let Err(e) = std::fs::remove_file(&path)
            {
                warn!(socket = %path.display(), error = %e, "removing the registration socket");
            }
            served
        }))
    }
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: CSI_PLUGIN.into(),
            name: self.driver.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!(driver = %self.driver, "the kubelet registered the driver");
            self.registered.set(1);
        } else {
            // The kubelet tries again when the socket is made anew; a
            // restart of the plugin does that.
            warn!(driver = %self.driver, error = %status.error, "the kubelet refused the driver");
            self.registered.set(0);
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pluginregistration::registration_client::RegistrationClient;

    async fn client(path: &Path) -> RegistrationClient<tonic::transport::Channel> {
        RegistrationClient::new(crate::service::channel(path).await.unwrap())
    }

    #[tokio::test]
    async fn the_kubelet_learns_name_and_endpoint_and_its_verdict_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("plugins_registry");
        let gauge = Gauge::default();
        let registrar =
            Registrar::new("csi.example", Path::new("/var/lib/kubelet/plugins/csi.example/csi.sock"), gauge.clone());
        let socket = registrar.socket_in(&registry);
        // A socket a previous plugin left is replaced.
        std::fs::create_dir_all(&registry).unwrap();
        std::fs::write(&socket, b"stale").unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = registrar
            .serve(&registry, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();

        let mut kubelet = client(&socket).await;
        let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, "csi.example");
        assert_eq!(info.endpoint, "/var/lib/kubelet/plugins/csi.example/csi.sock");
        assert_eq!(info.supported_versions, ["1.0.0"]);
        kubelet
            .notify_registration_status(RegistrationStatus { plugin_registered: true, error: String::new() })
            .await
            .unwrap();
        assert_eq!(gauge.get(), 1);
        kubelet
            .notify_registration_status(RegistrationStatus { plugin_registered: false, error: "version".into() })
            .await
            .unwrap();
        assert_eq!(gauge.get(), 0);
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
        assert!(!socket.exists(), "the socket goes with the plugin, so the kubelet deregisters it");
    }

    #[tokio::test]
    async fn a_registry_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let registrar = Registrar::new("csi.example", Path::new("/csi.sock"), Gauge::default());
        let err = registrar.serve(&file.join("registry"), async {}).await.unwrap_err();
        assert!(err.to_string().contains("not-a-dir/registry"), "{err}");
    }
}
