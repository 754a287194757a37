//! The Priority controller: a Priority's status says how many Filesets
//! name it. What a Priority means for its Filesets (repair class, read and
//! write policy) is applied by the Fileset controller, which every change
//! of a Priority triggers.

use std::sync::Arc;
use std::time::Instant;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::Store;
use tessera_api::crd::{Fileset, Priority, PriorityStatus};
use tessera_api::keys::API_VERSION;
use tracing::{Instrument, info_span, warn};

use crate::error::ReconcileError;
use crate::fileset::{Ctx, MANAGER};
use crate::metrics::{ControllerLabels, FailureLabels};

/// The Fileset controller's context and its store of Filesets.
pub type PriorityCtx = (Arc<Ctx>, Store<Fileset>);

/// A Priority's status: how many filesets name it. What it means for them
/// is applied by the Fileset controller, which every change of it triggers.
pub async fn reconcile(p: Arc<Priority>, ctx: Arc<PriorityCtx>) -> Result<Requeue, ReconcileError> {
    let span = info_span!("reconcile", controller = "priority", name = %p.name_any());
    let started = Instant::now();
    let result = reconcile_once(&p, &ctx).instrument(span).await;
    let seconds = started.elapsed().as_secs_f64();
    ctx.0.metrics.reconcile_seconds.get_or_create(&ControllerLabels { controller: "priority" }).observe(seconds);
    if result.is_ok() {
        ctx.0.backoff.succeeded(&key_of(&p));
    }
    result
}

fn key_of(p: &Priority) -> String {
    format!("priority:{}", p.name_any())
}

async fn reconcile_once(p: &Priority, ctx: &PriorityCtx) -> Result<Requeue, ReconcileError> {
    let (ctx, known) = ctx;
    let name = p.name_any();
    let filesets = known.state().iter().filter(|f| f.spec.priority.as_deref() == Some(name.as_str())).count();
    let status = PriorityStatus { observed_generation: p.metadata.generation, filesets: filesets as u32 };
    if p.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "Priority",
            "status": status,
        });
        Api::<Priority>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await?;
    }
    Ok(Requeue::requeue(ctx.resync))
}

/// As the Fileset controller's: an invalid object waits for a change,
/// anything else backs off.
pub fn error_policy(p: Arc<Priority>, e: &ReconcileError, ctx: Arc<PriorityCtx>) -> Requeue {
    let kind = e.kind();
    ctx.0.metrics.failures.get_or_create(&FailureLabels { controller: "priority", kind: kind.as_str() }).inc();
    match ctx.0.backoff.failed(&key_of(&p), kind) {
        Some(wait) => {
            warn!(priority = %p.name_any(), error = %e, retry_in = ?wait, "priority reconcile failed");
            Requeue::requeue(wait)
        }
        None => {
            warn!(priority = %p.name_any(), error = %e, "the priority cannot be applied as it is; waiting for it to change");
            Requeue::await_change()
        }
    }
}
