//! Fileset sources of kind leaf: a Tessera leaf volume promoted to the next
//! version. The leaf lives on one node, so the operator finds that node from
//! the claim's PersistentVolume (the topology the CSI driver reported), finds
//! the CSI node plugin's pod there, and asks its control API to promote; the
//! plugin reads the leaf as its pod sees it and writes the version through
//! the master.

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, ListParams};

use tessera_api::control::Promoted;
use tessera_api::crd::LeafSource;
use tessera_api::keys::{CSI_DRIVER, NODE_PLUGIN_SELECTOR, TOPOLOGY_NODE};

/// The node plugin's control port unless its pod names one `metrics`.
const DEFAULT_CONTROL_PORT: i32 = 7501;
/// A promotion stores the whole leaf; past this the plugin is taken to be
/// stuck and the ingest fails (and is retried).
const PROMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("spec.source.leaf.claimName: persistentvolumeclaim {0} not found")]
    NoClaim(String),
    #[error("spec.source.leaf.claimName: persistentvolumeclaim {0} is not bound to a volume yet")]
    Unbound(String),
    #[error(
        "spec.source.leaf.claimName: persistentvolumeclaim {claim} is bound to {volume}, which is not a Tessera leaf volume"
    )]
    NotALeaf { claim: String, volume: String },
    #[error("persistentvolume {0} names no node ({TOPOLOGY_NODE}) for its leaf")]
    NoNode(String),
    #[error("no running Tessera CSI node plugin on node {0} to promote the leaf")]
    NoPlugin(String),
    #[error("the CSI node plugin at {addr}: {reason}")]
    Plugin { addr: String, reason: String },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// The leaf volume behind a claim and the node it lives on.
pub async fn locate(client: &Client, namespace: &str, leaf: &LeafSource) -> Result<(String, String), PromoteError> {
    let claim_ref = format!("{namespace}/{}", leaf.claim_name);
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get_opt(&leaf.claim_name)
        .await?
        .ok_or_else(|| PromoteError::NoClaim(claim_ref.clone()))?;
    let volume = claim
        .spec
        .and_then(|s| s.volume_name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| PromoteError::Unbound(claim_ref.clone()))?;
    let not_leaf = || PromoteError::NotALeaf { claim: claim_ref.clone(), volume: volume.clone() };
    let pv = Api::<PersistentVolume>::all(client.clone()).get_opt(&volume).await?.ok_or_else(not_leaf)?;
    let spec = pv.spec.unwrap_or_default();
    let csi =
        spec.csi.filter(|c| c.driver == CSI_DRIVER && c.volume_handle.starts_with("leaf-")).ok_or_else(not_leaf)?;
    let node = spec
        .node_affinity
        .and_then(|a| a.required)
        .into_iter()
        .flat_map(|r| r.node_selector_terms)
        .flat_map(|t| t.match_expressions.unwrap_or_default())
        .find(|e| e.key == TOPOLOGY_NODE && e.operator == "In")
        .and_then(|e| e.values.unwrap_or_default().into_iter().next())
        .ok_or_else(|| PromoteError::NoNode(volume.clone()))?;
    Ok((csi.volume_handle, node))
}

/// The control address (ip:port) of the running node plugin on `node`.
pub async fn node_plugin(client: &Client, node: &str) -> Result<String, PromoteError> {
    let params = ListParams::default().labels(NODE_PLUGIN_SELECTOR).fields(&format!("spec.nodeName={node}"));
    let pods = Api::<Pod>::all(client.clone()).list(&params).await?;
    pods.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| {
            let status = p.status?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip = status.pod_ip.filter(|ip| !ip.is_empty())?;
            let port = p
                .spec?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|port| port.name.as_deref() == Some("metrics"))
                .map_or(DEFAULT_CONTROL_PORT, |port| port.container_port);
            Some(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") })
        })
        .ok_or_else(|| PromoteError::NoPlugin(node.to_string()))
}

/// Asks the node plugin at `addr` to promote leaf `volume` into `fileset`.
pub async fn promote(addr: &str, volume: &str, fileset: &str) -> Result<Promoted, PromoteError> {
    let failed = |reason: String| PromoteError::Plugin { addr: addr.to_string(), reason };
    let uri: http::Uri = format!("http://{addr}/volumes/{volume}/promote")
        .parse()
        .map_err(|e: http::uri::InvalidUri| failed(e.to_string()))?;
    let client: HttpClient<_, http_body_util::Full<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from(fileset.to_string())))
        .map_err(|e| failed(e.to_string()))?;
    let answer = async {
        let resp = client.request(req).await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| failed(e.to_string()))?.to_bytes();
        Ok::<_, PromoteError>((status, body))
    };
    let (status, body) = tokio::time::timeout(PROMOTE_TIMEOUT, answer)
        .await
        .map_err(|_| failed(format!("no answer within {} s", PROMOTE_TIMEOUT.as_secs())))??;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(failed(format!("HTTP {}: {}", status.as_u16(), text.trim())));
    }
    serde_json::from_slice(&body).map_err(|e| failed(format!("an answer that is not a version ({e}): {text}")))
}
