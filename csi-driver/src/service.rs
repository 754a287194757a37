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
use crate::csi::controller_server::Controller;
use crate::csi::identity_server::Identity;
use crate::csi::node_server::Node;
use crate::node::NodePlugin;
use crate::volume::{RootRef, is_leaf};
use tessera_api::keys::{CSI_DRIVER as DRIVER_NAME, TOPOLOGY_NODE};

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
            capabilities: vec![
                service(service::Type::ControllerService),
                service(service::Type::VolumeAccessibilityConstraints),
            ],
        }))
    }

    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

pub struct NodeService {
    pub plugin: Arc<NodePlugin>,
}

/// The read mode a volume asks for in its attributes (`readMode`), if any.
fn read_mode(context: &HashMap<String, String>) -> Result<Option<tessera_core::read_plan::ReadMode>, Status> {
    context
        .get("readMode")
        .map(|m| {
            m.parse().map_err(|_| {
                Status::invalid_argument(format!("volume attribute readMode {m:?}: use normal, hedged or accelerated"))
            })
        })
        .transpose()
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() { Err(Status::invalid_argument(format!("{field} is required"))) } else { Ok(value) }
}

/// Volumes are filesystems (a mount access type); root volumes are
/// read-only (a reader access mode), leaves take any single-node mode.
fn check_capability(cap: Option<&csi::VolumeCapability>, leaf: bool) -> Result<(), Status> {
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
        Ok(Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter) if leaf => Ok(()),
        Ok(Mode::Unknown) | Err(_) => Err(Status::invalid_argument("volume_capability.access_mode is required")),
        Ok(other) => Err(Status::invalid_argument(format!(
            "volume_capability.access_mode {}: root volumes are read-only (use a reader mode, or a leaf volume to write)",
            other.as_str_name()
        ))),
    }
}

/// A publish's capability: as [`check_capability`], except that an inline
/// root may come with a writer mode, because the kubelet asks every inline
/// volume for SINGLE_NODE_WRITER whatever the pod says; for those the pod's
/// `readOnly` is what says the volume is only read, and a root requires it.
fn check_publish(cap: Option<&csi::VolumeCapability>, leaf: bool, inline: bool, readonly: bool) -> Result<(), Status> {
    if inline && !leaf && !readonly {
        return Err(Status::invalid_argument(
            "readonly is false: an inline root volume is read-only, so the pod's csi volume must set readOnly: true",
        ));
    }
    check_capability(cap, leaf || inline)
}

impl NodeService {
    /// A root volume's `readMode` attribute, applied to its (shared) mount.
    fn apply_read_mode(&self, volume: &str, mode: Option<tessera_core::read_plan::ReadMode>) {
        if let Some(mode) = mode
            && let Some(root) = self.plugin.volume_root(volume)
        {
            root.set_read_mode(mode);
        }
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
        check_capability(r.volume_capability.as_ref(), is_leaf(volume))?;
        let mode = read_mode(&r.volume_context)?;
        self.plugin.stage(volume, Path::new(staging)).await?;
        self.apply_read_mode(volume, mode);
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
        let inline = r.volume_context.get(EPHEMERAL).is_some_and(|v| v == "true").then_some(&r.volume_context);
        let leaf = is_leaf(volume) || inline.is_some_and(|a| a.get("kind").is_some_and(|k| k == "leaf"));
        check_publish(r.volume_capability.as_ref(), leaf, inline.is_some(), r.readonly)?;
        let mode = read_mode(&r.volume_context)?;
        let staging = (!r.staging_target_path.is_empty()).then(|| Path::new(&r.staging_target_path));
        self.plugin.publish(volume, Path::new(target), staging, inline, r.readonly).await?;
        self.apply_read_mode(volume, mode);
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

pub struct ControllerService {
    pub plugin: Arc<NodePlugin>,
}

/// A leaf without a requested size.
const DEFAULT_CAPACITY: u64 = 1 << 30;

fn check_capabilities(caps: &[csi::VolumeCapability]) -> Result<(), Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is required"));
    }
    caps.iter().try_for_each(|c| check_capability(Some(c), true))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        let name = required(&r.name, "name")?;
        check_capabilities(&r.volume_capabilities)?;
        if r.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volume_content_source: leaves start from their root, not from a snapshot or volume",
            ));
        }
        let kind = r.parameters.get("kind").map(String::as_str).unwrap_or("leaf");
        if kind != "leaf" {
            return Err(Status::invalid_argument(format!(
                "parameters.kind {kind:?}: CreateVolume makes leaves; root volumes are static or inline"
            )));
        }
        let root = RootRef::from_attributes(&r.parameters)
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let range = r.capacity_range.unwrap_or_default();
        let (required_bytes, limit) = (range.required_bytes.max(0) as u64, range.limit_bytes.max(0) as u64);
        if limit > 0 && required_bytes > limit {
            return Err(Status::invalid_argument("capacity_range: required_bytes exceeds limit_bytes"));
        }
        let capacity = match (required_bytes, limit) {
            (0, 0) => DEFAULT_CAPACITY,
            (0, l) => l.min(DEFAULT_CAPACITY),
            (r, _) => r,
        };
        let (id, meta) = self.plugin.create_leaf(name, &root, capacity).await?;
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(csi::Volume {
                volume_id: id,
                capacity_bytes: meta.capacity as i64,
                volume_context: [
                    ("kind".to_string(), "leaf".to_string()),
                    ("fileset".to_string(), meta.fileset),
                    ("version".to_string(), meta.version.to_string()),
                ]
                .into(),
                content_source: None,
                accessible_topology: vec![csi::Topology {
                    segments: [(TOPOLOGY_NODE.to_string(), self.plugin.node_id().to_string())].into(),
                }],
            }),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        let volume = required(&r.volume_id, "volume_id")?;
        if is_leaf(volume) {
            self.plugin.delete_leaf(volume).await?;
        }
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        let volume = required(&r.volume_id, "volume_id")?;
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let leaf = is_leaf(volume);
        if !self.plugin.volume_exists(volume).await? {
            return Err(Status::not_found(format!("volume {volume} does not exist")));
        }
        let supported = r.volume_capabilities.iter().all(|c| check_capability(Some(c), leaf).is_ok());
        Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: supported.then(|| csi::validate_volume_capabilities_response::Confirmed {
                volume_context: r.volume_context.clone(),
                volume_capabilities: r.volume_capabilities.clone(),
                parameters: r.parameters.clone(),
                mutable_parameters: Default::default(),
            }),
            message: if supported { String::new() } else { "only mount access; roots only for readers".into() },
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::{Rpc, Type, rpc};
        let rpc = |t: rpc::Type| csi::ControllerServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) };
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![rpc(rpc::Type::CreateDeleteVolume)],
        }))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented("no attach step (not advertised)"))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("no attach step (not advertised)"))
    }

    async fn list_volumes(
        &self,
        _: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }

    async fn get_capacity(
        &self,
        _: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }

    async fn create_snapshot(
        &self,
        _: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots: promote a leaf to a fileset version instead"))
    }

    async fn delete_snapshot(
        &self,
        _: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }

    async fn list_snapshots(
        &self,
        _: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }

    async fn get_snapshot(
        &self,
        _: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }

    async fn controller_expand_volume(
        &self,
        _: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }

    async fn controller_get_volume(
        &self,
        _: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("not advertised"))
    }
}

/// A gRPC channel to a CSI plugin's unix socket (for tools and tests).
pub async fn channel(socket: &std::path::Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};

    fn cap(mode: Mode) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn an_inline_root_is_published_read_only_whatever_mode_the_kubelet_sends() {
        // What the kubelet sends for `csi: {readOnly: true}` in a pod.
        assert!(check_publish(Some(&cap(Mode::SingleNodeWriter)), false, true, true).is_ok());
        let err = check_publish(Some(&cap(Mode::SingleNodeWriter)), false, true, false).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("readOnly: true"), "{}", err.message());
        // A root through a PersistentVolume keeps to reader modes.
        let err = check_publish(Some(&cap(Mode::SingleNodeWriter)), false, false, true).unwrap_err();
        assert!(err.message().contains("root volumes are read-only"), "{}", err.message());
        assert!(check_publish(Some(&cap(Mode::MultiNodeReaderOnly)), false, false, false).is_ok());
        // Leaves write, inline or not.
        assert!(check_publish(Some(&cap(Mode::SingleNodeWriter)), true, true, false).is_ok());
        assert!(check_publish(Some(&cap(Mode::SingleNodeWriter)), true, false, false).is_ok());
    }
}
