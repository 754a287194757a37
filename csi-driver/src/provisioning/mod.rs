//! Leaf PersistentVolumeClaims provisioned by the node plugin itself, as the
//! external-provisioner sidecar does in its node deployment: each node's
//! plugin takes the claims the scheduler placed on its node (the
//! `volume.kubernetes.io/selected-node` annotation of a
//! `WaitForFirstConsumer` class), makes the leaf with its own CreateVolume
//! and creates the PersistentVolume bound to the claim; when a released
//! volume's reclaim policy is `Delete` it deletes the leaf and the volume.
//!
//! This module decides; [`controllers`] watches and acts. See
//! docs/decisions/0021-builtin-leaf-provisioning.md.

pub mod controllers;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tessera_api::keys::{CSI_DRIVER, TOPOLOGY_NODE};

use crate::csi;

/// The scheduler's choice of node for a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Which provisioner made a PersistentVolume (the name Kubernetes uses).
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Keeps a volume whose reclaim policy is `Delete` until its leaf is gone,
/// whoever deletes the PersistentVolume object.
pub const FINALIZER: &str = "csi.tessera.dev/leaf";
/// StorageClass parameters meant for the provisioner, not the driver.
const PROVISIONER_PARAMETERS: &str = "csi.storage.k8s.io/";

/// What to do with a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimPlan {
    /// Not this node's to provision (another driver, another node, bound).
    Ignore,
    /// Make the leaf with this CreateVolume, then the volume named `volume`.
    Provision { volume: String, request: Box<csi::CreateVolumeRequest> },
    /// This node's, but it cannot be provisioned as it is; the reason names
    /// the field.
    Refuse(String),
}

/// Whether `node`'s plugin provisions `claim` (of `class`, if it has one),
/// and how.
pub fn plan_claim(claim: &PersistentVolumeClaim, class: Option<&StorageClass>, node: &str) -> ClaimPlan {
    let Some(spec) = &claim.spec else { return ClaimPlan::Ignore };
    let Some(class) = class else { return ClaimPlan::Ignore };
    if class.provisioner != CSI_DRIVER
        || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || claim.metadata.deletion_timestamp.is_some()
    {
        return ClaimPlan::Ignore;
    }
    let selected = claim.metadata.annotations.as_ref().and_then(|a| a.get(SELECTED_NODE));
    if selected.map(String::as_str) != Some(node) {
        return ClaimPlan::Ignore;
    }
    let Some(uid) = claim.metadata.uid.as_deref() else { return ClaimPlan::Ignore };
    if spec.volume_mode.as_deref() == Some("Block") {
        return ClaimPlan::Refuse("spec.volumeMode Block: a leaf is a filesystem (use Filesystem)".into());
    }
    if spec.data_source.is_some() || spec.data_source_ref.is_some() {
        return ClaimPlan::Refuse("spec.dataSource: a leaf starts from its root fileset, not from a volume".into());
    }
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes.is_empty() {
        return ClaimPlan::Refuse("spec.accessModes is required".into());
    }
    let mut capabilities = Vec::new();
    for mode in &modes {
        match access_mode(mode) {
            Some(m) => capabilities.push(mount_capability(m)),
            None => {
                return ClaimPlan::Refuse(format!(
                    "spec.accessModes {mode}: a leaf lives on one node (use ReadWriteOnce or ReadWriteOncePod)"
                ));
            }
        }
    }
    let resources = spec.resources.as_ref();
    let bytes = |list: Option<&BTreeMap<String, Quantity>>, field: &str| -> Result<i64, String> {
        match list.and_then(|l| l.get("storage")) {
            None => Ok(0),
            Some(q) => parse_quantity(&q.0)
                .and_then(|b| i64::try_from(b).ok())
                .ok_or_else(|| format!("{field} {:?} is not a size in bytes (e.g. 10Gi)", q.0)),
        }
    };
    let required = match bytes(resources.and_then(|r| r.requests.as_ref()), "spec.resources.requests.storage") {
        Ok(b) => b,
        Err(e) => return ClaimPlan::Refuse(e),
    };
    let limit = match bytes(resources.and_then(|r| r.limits.as_ref()), "spec.resources.limits.storage") {
        Ok(b) => b,
        Err(e) => return ClaimPlan::Refuse(e),
    };
    let parameters = class
        .parameters
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(PROVISIONER_PARAMETERS))
        .collect();
    let volume = format!("pvc-{uid}");
    ClaimPlan::Provision {
        request: Box::new(csi::CreateVolumeRequest {
            name: volume.clone(),
            capacity_range: Some(csi::CapacityRange { required_bytes: required, limit_bytes: limit }),
            volume_capabilities: capabilities,
            parameters,
            ..Default::default()
        }),
        volume,
    }
}

fn access_mode(mode: &str) -> Option<csi::volume_capability::access_mode::Mode> {
    use csi::volume_capability::access_mode::Mode;
    match mode {
        "ReadWriteOnce" => Some(Mode::SingleNodeWriter),
        "ReadWriteOncePod" => Some(Mode::SingleNodeSingleWriter),
        _ => None,
    }
}

fn mount_capability(mode: csi::volume_capability::access_mode::Mode) -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// The PersistentVolume for a leaf CreateVolume made for `claim` on
/// `node`: bound to the claim (the controller-manager completes the
/// binding), on that node only, with the class's reclaim policy.
pub fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    name: &str,
    made: &csi::Volume,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let reclaim = class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into());
    let node_term = NodeSelectorTerm {
        match_expressions: Some(vec![NodeSelectorRequirement {
            key: TOPOLOGY_NODE.into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        ..Default::default()
    };
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some([(PROVISIONED_BY.to_string(), CSI_DRIVER.to_string())].into()),
            // Only a volume whose leaf goes with it waits for that.
            finalizers: (reclaim == "Delete").then(|| vec![FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some([("storage".to_string(), Quantity(made.capacity_bytes.to_string()))].into()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                ..Default::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: CSI_DRIVER.into(),
                volume_handle: made.volume_id.clone(),
                volume_attributes: Some(made.volume_context.clone().into_iter().collect()),
                ..Default::default()
            }),
            mount_options: class.mount_options.clone(),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector { node_selector_terms: vec![node_term] }),
            }),
            persistent_volume_reclaim_policy: Some(reclaim),
            storage_class_name: claim.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
            volume_mode: Some(spec.volume_mode.unwrap_or_else(|| "Filesystem".into())),
            ..Default::default()
        }),
        status: None,
    }
}

/// What to do with a PersistentVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePlan {
    Ignore,
    /// DeleteVolume of the leaf, then drop the finalizer and the object.
    Delete {
        leaf: String,
    },
}

/// Whether `node`'s plugin deletes `volume`'s leaf: a volume this driver
/// provisioned on this node whose claim is gone (released, policy
/// `Delete`), or whose object is being deleted while it is not bound.
pub fn plan_volume(volume: &PersistentVolume, node: &str) -> VolumePlan {
    let provisioned = volume.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY));
    let Some(spec) = &volume.spec else { return VolumePlan::Ignore };
    let Some(csi) = &spec.csi else { return VolumePlan::Ignore };
    if provisioned.map(String::as_str) != Some(CSI_DRIVER) || csi.driver != CSI_DRIVER || node_of(volume) != Some(node)
    {
        return VolumePlan::Ignore;
    }
    let phase = volume.status.as_ref().and_then(|s| s.phase.as_deref());
    let delete_policy = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let released = phase == Some("Released") && delete_policy;
    let has_finalizer = volume.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    let deleting = volume.metadata.deletion_timestamp.is_some() && has_finalizer && phase != Some("Bound");
    if released || deleting { VolumePlan::Delete { leaf: csi.volume_handle.clone() } } else { VolumePlan::Ignore }
}

/// The node a volume of this driver lives on (its node affinity).
pub fn node_of(volume: &PersistentVolume) -> Option<&str> {
    let terms = &volume.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_expressions.iter().flatten()).find_map(|e| {
        (e.key == TOPOLOGY_NODE && e.operator == "In").then(|| e.values.as_ref()?.first().map(String::as_str)).flatten()
    })
}

/// A Kubernetes quantity as whole bytes, rounded up: `10Gi`, `500M`,
/// `1.5Gi`, `1e9`, `4096`. `None` for what is not a non-negative size
/// (milli-units, negative numbers, unknown suffixes) or overflows.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // Exact: the number is its digits over 10^(digits after the point).
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = 10u128.checked_pow(fraction.len() as u32)?;
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..].parse().ok()?;
            10u128.checked_pow(exp)?
        }
        _ => return None,
    };
    let bytes = digits.checked_mul(multiplier)?.div_ceil(scale);
    u64::try_from(bytes).ok()
}

#[cfg(test)]
mod tests;
