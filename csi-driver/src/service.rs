//! The CSI gRPC services: Identity and Node, over the [`NodePlugin`].
//!
//! Requests are checked here (missing fields are InvalidArgument, naming
//! the field, as the spec and csi-sanity expect); what they do is the
//! plugin's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::csi;
use crate::csi::identity_server::Identity;
use crate::csi::node_server::Node;
use crate::node::NodePlugin;

/// The driver's name in CSIDriver objects and PersistentVolumes.
pub const DRIVER_NAME: &str = "csi.tessera.dev";
/// The topology key a node reports (leaf volumes live on one node).
pub const TOPOLOGY_NODE: &str = "topology.tessera.dev/node";
/// The volume context key kubelet sets on inline (ephemeral) volumes.
const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

pub struct IdentityService;

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::{Service, Type, service};
        let service =
            |t: service::Type| csi::PluginCapability { r#type: Some(Type::Service(Service { r#type: t as i32 })) };
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![service(service::Type::VolumeAccessibilityConstraints)],
        }))
    }

    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

pub struct NodeService {
    pub plugin: Arc<NodePlugin>,
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() { Err(Status::invalid_argument(format!("{field} is required"))) } else { Ok(value) }
}

/// Root volumes are read-only filesystems: a mount access type and a
/// reader access mode.
fn check_capability(cap: Option<&csi::VolumeCapability>) -> Result<(), Status> {
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::{AccessType, access_mode};
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    match &cap.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => {
            return Err(Status::invalid_argument("volume_capability: block access is not supported; use mount"));
        }
        None => return Err(Status::invalid_argument("volume_capability.access_type is required")),
    }
    let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or(access_mode::Mode::Unknown as i32);
    match Mode::try_from(mode) {
        Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly) => Ok(()),
        Ok(Mode::Unknown) | Err(_) => Err(Status::invalid_argument("volume_capability.access_mode is required")),
        Ok(other) => Err(Status::invalid_argument(format!(
            "volume_capability.access_mode {}: root volumes are read-only (use a reader mode, or a leaf volume to write)",
            other.as_str_name()
        ))),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        let volume = required(&r.volume_id, "volume_id")?;
        let staging = required(&r.staging_target_path, "staging_target_path")?;
        check_capability(r.volume_capability.as_ref())?;
        self.plugin.stage(volume, Path::new(staging)).await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        let volume = required(&r.volume_id, "volume_id")?;
        let staging = required(&r.staging_target_path, "staging_target_path")?;
        self.plugin.unstage(volume, Path::new(staging)).await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let volume = required(&r.volume_id, "volume_id")?;
        let target = required(&r.target_path, "target_path")?;
        check_capability(r.volume_capability.as_ref())?;
        let inline = r.volume_context.get(EPHEMERAL).is_some_and(|v| v == "true").then_some(&r.volume_context);
        let staging = (!r.staging_target_path.is_empty()).then(|| Path::new(&r.staging_target_path));
        self.plugin.publish(volume, Path::new(target), staging, inline).await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let volume = required(&r.volume_id, "volume_id")?;
        let target = required(&r.target_path, "target_path")?;
        self.plugin.unpublish(volume, Path::new(target)).await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("volume stats are not reported (not advertised)"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("volumes cannot be expanded (not advertised)"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::{Rpc, Type, rpc};
        let rpc = |t: rpc::Type| csi::NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) };
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities: vec![rpc(rpc::Type::StageUnstageVolume)] }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.plugin.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology: Some(csi::Topology {
                segments: [(TOPOLOGY_NODE.to_string(), self.plugin.node_id().to_string())].into(),
            }),
        }))
    }
}
