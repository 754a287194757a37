//! Ingest pods: how a Fileset whose source is a PersistentVolumeClaim gets
//! its versions.
//!
//! The operator cannot mount a claim itself (it may live in any namespace and
//! on any node), so it starts a pod in the fileset's namespace that mounts
//! the claim read-only and runs `tessera put --existing` against the master.
//! The pod's name carries the source key, so each source is ingested by one
//! pod whatever the number of reconciles or operator restarts, and the pod's
//! phase is the state of the ingest. This module builds the pod and reads its
//! state; it does no I/O.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PersistentVolumeClaimVolumeSource, Pod, PodSpec, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::{Resource, ResourceExt};

use tessera_api::crd::{Fileset, PvcSource};

/// Where the claim is mounted in the pod.
pub const SOURCE_MOUNT: &str = "/source";
pub use tessera_api::keys::{FILESET_ANNOTATION, SOURCE_KEY_ANNOTATION};
/// Label on every ingest pod, to list them.
pub const COMPONENT_LABEL: (&str, &str) = ("app.kubernetes.io/component", "tessera-ingest");

/// What ingest pods run and how they reach the master.
#[derive(Debug, Clone)]
pub struct IngestPodConfig {
    /// The image with the `tessera` command.
    pub image: String,
    /// The master's address as pods see it (the master Service).
    pub master_address: String,
}

/// The name of the pod that ingests `key` for `fileset`.
pub fn pod_name(fileset: &str, key: &str) -> String {
    // Fileset names are at most 63 characters (the master's limit), so
    // this is always a valid pod name.
    format!("{fileset}-ingest-{}", &key[..key.len().min(10)])
}

/// The pod that stores the claim's directory as a new version of `f`.
pub fn pod_for(f: &Fileset, pvc: &PvcSource, key: &str, config: &IngestPodConfig) -> Pod {
    let name = f.name_any();
    let dir = if pvc.path.is_empty() { SOURCE_MOUNT.to_string() } else { format!("{SOURCE_MOUNT}/{}", pvc.path) };
    let owner = OwnerReference {
        api_version: Fileset::api_version(&()).into_owned(),
        kind: Fileset::kind(&()).into_owned(),
        name: name.clone(),
        uid: f.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name, key)),
            namespace: f.namespace(),
            labels: Some([(COMPONENT_LABEL.0.to_string(), COMPONENT_LABEL.1.to_string())].into()),
            annotations: Some(
                [(FILESET_ANNOTATION.to_string(), name.clone()), (SOURCE_KEY_ANNOTATION.to_string(), key.to_string())]
                    .into(),
            ),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            // It only talks gRPC to the master.
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "ingest".into(),
                image: Some(config.image.clone()),
                command: Some(vec!["tessera".into()]),
                args: Some(vec!["put".into(), "--existing".into(), "--fileset".into(), name, dir]),
                env: Some(vec![EnvVar {
                    name: "TESSERA_MASTER".into(),
                    value: Some(config.master_address.clone()),
                    ..Default::default()
                }]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "source".into(),
                    mount_path: SOURCE_MOUNT.into(),
                    read_only: Some(true),
                    ..Default::default()
                }]),
                // The last lines of output say why an ingest failed.
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "source".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc.claim_name.clone(),
                    read_only: Some(true),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Where an ingest pod stands.
#[derive(Debug, Clone, PartialEq)]
pub enum PodIngest {
    /// Waiting to be scheduled, pulling its image, or running.
    Running,
    Succeeded,
    Failed {
        reason: String,
        /// When it stopped, if the kubelet said.
        finished: Option<Time>,
    },
}

/// Reads the state of an ingest from its pod.
pub fn state_of(pod: &Pod) -> PodIngest {
    let status = pod.status.clone().unwrap_or_default();
    let terminated =
        status.container_statuses.unwrap_or_default().into_iter().find_map(|c| c.state.and_then(|s| s.terminated));
    match status.phase.as_deref() {
        Some("Succeeded") => PodIngest::Succeeded,
        Some("Failed") => {
            let why = terminated
                .as_ref()
                .and_then(|t| t.message.clone().or_else(|| t.reason.clone()))
                .or(status.message)
                .unwrap_or_else(|| "no reason given".into());
            PodIngest::Failed {
                reason: format!("ingest pod {} failed: {}", pod.name_any(), why.trim()),
                finished: terminated.and_then(|t| t.finished_at),
            }
        }
        _ => PodIngest::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use tessera_api::crd::FilesetSpec;

    fn fileset() -> Fileset {
        let spec: FilesetSpec = serde_json::from_value(serde_json::json!({
            "source": {"pvc": {"claimName": "raw", "path": "exports/v3"}},
        }))
        .unwrap();
        let mut f = Fileset::new("images", spec);
        f.metadata.namespace = Some("ml".into());
        f.metadata.uid = Some("u-1".into());
        f
    }

    fn config() -> IngestPodConfig {
        IngestPodConfig { image: "tessera:1".into(), master_address: "tessera-master.tessera-system.svc:7300".into() }
    }

    #[test]
    fn the_pod_mounts_the_claim_read_only_and_puts_its_directory_into_the_existing_fileset() {
        let f = fileset();
        let pvc = f.spec.source.pvc.clone().unwrap();
        let pod = pod_for(&f, &pvc, "0123456789abcdef", &config());
        assert_eq!(pod.metadata.name.as_deref(), Some("images-ingest-0123456789"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ml"), "the claim's namespace");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Fileset", "u-1", Some(true)));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let c = &spec.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["put", "--existing", "--fileset", "images", "/source/exports/v3"].map(String::from)
        );
        assert_eq!(c.env.as_ref().unwrap()[0].value.as_deref(), Some("tessera-master.tessera-system.svc:7300"));
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].read_only, Some(true));
        let claim = spec.volumes.unwrap()[0].persistent_volume_claim.clone().unwrap();
        assert_eq!((claim.claim_name.as_str(), claim.read_only), ("raw", Some(true)));
    }

    #[test]
    fn the_pod_phase_is_the_ingest_state_and_a_failure_says_why() {
        let mut pod =
            Pod { metadata: ObjectMeta { name: Some("p".into()), ..Default::default() }, ..Default::default() };
        assert_eq!(state_of(&pod), PodIngest::Running, "not scheduled yet");
        pod.status = Some(PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        assert_eq!(state_of(&pod), PodIngest::Succeeded);
        let at = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        pod.status = Some(PodStatus {
            phase: Some("Failed".into()),
            container_statuses: Some(vec![ContainerStatus {
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 1,
                        message: Some("error: /source/x: No such file or directory\n".into()),
                        finished_at: Some(at.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let PodIngest::Failed { reason, finished } = state_of(&pod) else { panic!("failed") };
        assert_eq!(reason, "ingest pod p failed: error: /source/x: No such file or directory");
        assert_eq!(finished, Some(at));
    }
}
