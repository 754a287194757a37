//! The provisioner's watches and writes: a controller over claims that makes
//! leaves and their PersistentVolumes, and one over volumes that deletes
//! released leaves. What to do is decided in the parent module.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tonic::Request;
use tracing::{Instrument, info, info_span, warn};

use super::{ClaimPlan, FINALIZER, VolumePlan, plan_claim, plan_volume, volume_for};
use crate::csi;
use crate::csi::controller_server::Controller as _;
use crate::metrics::{Metrics, ProvisionLabels};
use crate::node::NodePlugin;
use crate::service::ControllerService;

/// How soon a claim or volume whose step failed is tried again.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("CreateVolume: {0}")]
    Create(tonic::Status),
    #[error("DeleteVolume of {leaf}: {status}")]
    Delete { leaf: String, status: tonic::Status },
    #[error("{action} {object}: {source}")]
    Kube { action: &'static str, object: String, source: kube::Error },
}

struct Ctx {
    client: Client,
    node: String,
    controller: ControllerService,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl Ctx {
    fn count(&self, outcome: &'static str) {
        self.metrics.leaf_claims.get_or_create(&ProvisionLabels { outcome }).inc();
    }

    async fn event(&self, claim: &PersistentVolumeClaim, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: "Provision".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &claim.object_ref(&())).await {
            warn!(error = %e, "recording an event failed");
        }
    }
}

/// Runs both controllers for `plugin`'s node until the process ends.
pub async fn run(client: Client, plugin: Arc<NodePlugin>) {
    let node = plugin.node_id().to_string();
    let reporter = Reporter { controller: "tessera-csi".into(), instance: Some(node.clone()) };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        metrics: plugin.metrics.clone(),
        controller: ControllerService { plugin },
        client: client.clone(),
        node,
    });
    info!(node = %ctx.node, "provisioning leaf claims placed on this node");
    let claims = Controller::new(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        .run(reconcile_claim, retry_claim, ctx.clone())
        .for_each(|_| async {});
    let volumes = Controller::new(Api::<PersistentVolume>::all(client), watcher::Config::default())
        .run(reconcile_volume, retry_volume, ctx)
        .for_each(|_| async {});
    futures::join!(claims, volumes);
}

async fn reconcile_claim(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, ProvisionError> {
    let name = claim.name_any();
    let namespace = claim.namespace().unwrap_or_default();
    let class_name = claim.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
    if class_name.is_empty() {
        return Ok(Action::await_change());
    }
    let class = Api::<StorageClass>::all(ctx.client.clone()).get_opt(&class_name).await.map_err(|e| {
        ProvisionError::Kube { action: "reading", object: format!("storageclass {class_name}"), source: e }
    })?;
    let (volume, request) = match plan_claim(&claim, class.as_ref(), &ctx.node) {
        ClaimPlan::Ignore => return Ok(Action::await_change()),
        ClaimPlan::Refuse(why) => {
            warn!(claim = %format!("{namespace}/{name}"), %why, "refusing to provision");
            ctx.count("refused");
            ctx.event(&claim, true, "ProvisioningFailed", why).await;
            return Ok(Action::await_change());
        }
        ClaimPlan::Provision { volume, request } => (volume, request),
    };
    let class = class.expect("planned with a class");
    let span = info_span!("provision", claim = %format!("{namespace}/{name}"), volume = %volume);
    async {
        let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let object = format!("persistentvolume {volume}");
        if volumes
            .get_opt(&volume)
            .await
            .map_err(|e| ProvisionError::Kube { action: "reading", object: object.clone(), source: e })?
            .is_some()
        {
            // Made already; the controller-manager binds it.
            return Ok(Action::await_change());
        }
        let made = match ctx.controller.create_volume(Request::new(*request)).await {
            Ok(r) => r.into_inner().volume.unwrap_or_default(),
            Err(status) => {
                ctx.count("failed");
                ctx.event(&claim, true, "ProvisioningFailed", format!("making the leaf: {}", status.message())).await;
                return Err(ProvisionError::Create(status));
            }
        };
        let pv = volume_for(&claim, &class, &ctx.node, &volume, &made);
        match volumes.create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(ProvisionError::Kube { action: "creating", object, source: e }),
        }
        let context = &made.volume_context;
        let note = format!(
            "leaf {} of {}@{} on node {}",
            made.volume_id,
            context.get("fileset").map(String::as_str).unwrap_or("?"),
            context.get("version").map(String::as_str).unwrap_or("?"),
            ctx.node
        );
        info!(leaf = %made.volume_id, "provisioned");
        ctx.count("provisioned");
        ctx.event(&claim, false, "ProvisioningSucceeded", note).await;
        Ok(Action::await_change())
    }
    .instrument(span)
    .await
}

async fn reconcile_volume(volume: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, ProvisionError> {
    let VolumePlan::Delete { leaf } = plan_volume(&volume, &ctx.node) else { return Ok(Action::await_change()) };
    let name = volume.name_any();
    let span = info_span!("delete", volume = %name, leaf = %leaf);
    async {
        let request = csi::DeleteVolumeRequest { volume_id: leaf.clone(), ..Default::default() };
        if let Err(status) = ctx.controller.delete_volume(Request::new(request)).await {
            // In use (the kubelet has not unstaged it yet) or the master
            // unreachable: tried again.
            return Err(ProvisionError::Delete { leaf, status });
        }
        let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let object = format!("persistentvolume {name}");
        let kept: Vec<String> = volume.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
        if kept.len() != volume.finalizers().len() {
            // Guarded by the resourceVersion: a volume changed meanwhile is
            // looked at again.
            let patch = serde_json::json!({
                "metadata": {"finalizers": kept, "resourceVersion": volume.resource_version()},
            });
            match volumes.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
                Err(e) => return Err(ProvisionError::Kube { action: "releasing", object, source: e }),
            }
        }
        match volumes.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(ProvisionError::Kube { action: "deleting", object, source: e }),
        }
        info!("deleted the leaf and its volume");
        ctx.count("deleted");
        Ok(Action::await_change())
    }
    .instrument(span)
    .await
}

fn retry_claim(claim: Arc<PersistentVolumeClaim>, e: &ProvisionError, _: Arc<Ctx>) -> Action {
    warn!(claim = %claim.name_any(), error = %e, retry_in = ?RETRY, "provisioning failed");
    Action::requeue(RETRY)
}

fn retry_volume(volume: Arc<PersistentVolume>, e: &ProvisionError, _: Arc<Ctx>) -> Action {
    warn!(volume = %volume.name_any(), error = %e, retry_in = ?RETRY, "deleting a leaf failed");
    Action::requeue(RETRY)
}
