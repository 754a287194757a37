//! The Fileset controller: each reconcile reads top to bottom as fetch
//! (the object, the master's view, the Priority it names, the ingest),
//! decide ([`reconcile::decide`], pure), apply (the actions, in order:
//! finalizer by server-side apply, the master, the ingest), then status
//! (server-side apply of the status, events). Failures go to
//! [`error_policy`]: an invalid object waits for its next change, anything
//! else backs off ([`crate::error`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use tessera_api::crd::{DomainLevel, Fileset, FilesetSpec, Priority};
use tessera_api::keys::API_VERSION;
use tessera_master::maintenance::Chores;
use tessera_master::records::{FilesetRecord, now_unix};
use tessera_master::{Master, MasterError};
use tessera_proto::ms;
use tracing::{Instrument, info, info_span, warn};

use crate::error::{Backoff, ReconcileError};
use crate::ingests::Ingests;
use crate::metrics::{ControllerLabels, FailureLabels, OperatorMetrics, ResultLabels};
use crate::reconcile::{self, Action, FINALIZER, HedgeTuning, MasterFileset, MasterVersion, Observed, PriorityRef};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "tessera-operator";

/// What the Fileset controller works with.
pub struct Ctx {
    pub client: Client,
    pub master: Arc<Master>,
    pub chores: Chores,
    pub recorder: Recorder,
    /// How often a Fileset's status is refreshed from the master.
    pub resync: Duration,
    pub ingests: Arc<Ingests>,
    pub metrics: Arc<OperatorMetrics>,
    pub backoff: Backoff,
}

/// What `spec.priority` names, looked up in the cluster.
async fn priority_of(client: &Client, f: &Fileset) -> Result<PriorityRef, ReconcileError> {
    let Some(name) = f.spec.priority.clone() else { return Ok(PriorityRef::Unset) };
    Ok(match Api::<Priority>::all(client.clone()).get_opt(&name).await? {
        Some(p) => PriorityRef::Found {
            name,
            repair_class: p.spec.repair_class,
            read_mode: p.spec.read_policy.mode,
            min_write_redundancy: p.spec.write_policy.min_write_redundancy,
            hedge: HedgeTuning {
                delay_min_ms: p.spec.read_policy.hedge_delay_min_ms,
                delay_max_ms: p.spec.read_policy.hedge_delay_max_ms,
                extra_stripes: p.spec.read_policy.extra_stripes,
            },
        },
        None => PriorityRef::Missing { name },
    })
}

/// The master's fileset spec of a Fileset (checked by the master, which
/// names any field it refuses).
fn master_spec(f: &Fileset, priority: &PriorityRef) -> ms::FilesetSpec {
    let s: &FilesetSpec = &f.spec;
    let level = match s.placement.level {
        DomainLevel::Region => "region",
        DomainLevel::Zone => "zone",
        DomainLevel::Rack => "rack",
        DomainLevel::Node => "node",
    };
    ms::FilesetSpec {
        name: master_name(f),
        layout: Some(ms::Layout {
            k: s.erasure.k,
            m: s.erasure.m,
            stripe_unit: s.erasure.stripe_unit,
            block_size: s.erasure.block_size,
        }),
        placement: Some(ms::PlacementPolicy {
            level: level.into(),
            max_per_domain: s.placement.max_per_domain.unwrap_or(0),
        }),
        availability: priority.availability().to_string(),
        keep_versions: s.retention.keep_versions,
        read_mode: priority.read_mode().map(|m| m.to_string()).unwrap_or_default(),
        owner: owner_of(f),
        min_write_stripes: reconcile::min_write_stripes(s, priority),
        hedge: reconcile::hedge_for(s, priority).map(|h| ms::HedgeTuning {
            delay_min_ms: h.delay_min_ms,
            delay_max_ms: h.delay_max_ms,
            extra_stripes: h.extra_stripes,
        }),
    }
}

/// What the master holds for `f`: its fileset, or the owner of another
/// object's fileset of that name. A record without an owner (made before
/// owners were recorded) is taken to be `f`'s.
fn master_view(m: &Master, f: &Fileset) -> Result<(Option<MasterFileset>, Option<String>), MasterError> {
    let name = master_name(f);
    let record = match m.get_fileset(&name) {
        Ok(v) => v.record,
        Err(MasterError::FilesetNotFound(_)) => return Ok((None, None)),
        Err(e) => return Err(e),
    };
    if !record.owner.is_empty() && record.owner != owner_of(f) {
        return Ok((None, Some(record.owner)));
    }
    Ok((master_fileset(m, &name, record)?, None))
}

/// The owner the master records for `f`.
fn owner_of(f: &Fileset) -> String {
    format!("{}/{}", namespace_of(f), f.uid().unwrap_or_default())
}

fn master_fileset(m: &Master, name: &str, record: FilesetRecord) -> Result<Option<MasterFileset>, MasterError> {
    let versions = match m.list_versions(name) {
        Ok(v) => v,
        Err(MasterError::FilesetNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = m.status(name, Instant::now())?;
    let f = st.filesets.first().cloned().ok_or_else(|| MasterError::FilesetNotFound(name.into()))?;
    let full = f.items_by_redundancy.last().copied().unwrap_or(0);
    Ok(Some(MasterFileset {
        versions: versions
            .iter()
            .map(|v| MasterVersion {
                id: v.id,
                created: Time(
                    k8s_openapi::jiff::Timestamp::from_second(v.created_unix as i64)
                        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                ),
                files: v.files,
                bytes: v.bytes,
                items: v.items.len() as u64,
            })
            .collect(),
        items_full: full,
        items_reduced: f.items.saturating_sub(full).saturating_sub(f.unrecoverable),
        items_unrecoverable: f.unrecoverable,
        repairing: f.repairing,
        stripes_per_domain: f.stripes_per_domain.iter().map(|d| (d.domain.clone(), d.stripes)).collect(),
        availability: record.availability,
        read_mode: record.read_mode,
        min_write_stripes: record.min_write_stripes as u32,
        hedge: record.hedge,
        relearning: st.relearning,
        corrupt_stripes_found: f.corrupt_stripes_found,
        corrupt_stripes_rebuilt: f.corrupt_stripes_rebuilt,
        degraded_writes: f.degraded_writes,
    }))
}

/// Reconciles one Fileset, in a span naming it, timed and counted.
pub async fn reconcile(f: Arc<Fileset>, ctx: Arc<Ctx>) -> Result<Requeue, ReconcileError> {
    let span = info_span!("reconcile", controller = "fileset", namespace = %namespace_of(&f), name = %f.name_any());
    let started = Instant::now();
    let result = reconcile_once(&f, &ctx).instrument(span).await;
    let m = &ctx.metrics;
    m.reconcile_seconds
        .get_or_create(&ControllerLabels { controller: "fileset" })
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        m.reconciles.get_or_create(&ResultLabels { result: "ok" }).inc();
        ctx.backoff.succeeded(&object_key(&f));
    }
    result
}

/// A failed reconcile: an invalid object gets a Warning event and waits for
/// its next change; anything else is retried with a back-off.
pub fn error_policy(f: Arc<Fileset>, e: &ReconcileError, ctx: Arc<Ctx>) -> Requeue {
    let kind = e.kind();
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: "error" }).inc();
    ctx.metrics.failures.get_or_create(&FailureLabels { controller: "fileset", kind: kind.as_str() }).inc();
    let key = object_key(&f);
    match ctx.backoff.failed(&key, kind) {
        Some(wait) => {
            warn!(fileset = %key, error = %e, kind = kind.as_str(), retry_in = ?wait, "fileset reconcile failed");
            Requeue::requeue(wait)
        }
        None => {
            warn!(fileset = %key, error = %e, "the fileset cannot be applied as it is; waiting for it to change");
            let (recorder, reference, note) = (ctx.recorder.clone(), f.object_ref(&()), e.to_string());
            tokio::spawn(async move {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "InvalidSpec".into(),
                    note: Some(note),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(err) = recorder.publish(&event, &reference).await {
                    warn!(error = %err, "recording an event failed");
                }
            });
            Requeue::await_change()
        }
    }
}

fn object_key(f: &Fileset) -> String {
    format!("fileset:{}/{}", namespace_of(f), f.name_any())
}

async fn reconcile_once(f: &Arc<Fileset>, ctx: &Arc<Ctx>) -> Result<Requeue, ReconcileError> {
    let api: Api<Fileset> = Api::namespaced(ctx.client.clone(), &namespace_of(f));
    let name = master_name(f);
    let finalizers = f.finalizers().to_vec();
    let key = reconcile::source_key(&f.spec.source);
    let (master, name_taken_by) = master_view(&ctx.master, f)?;
    let observed = Observed {
        generation: f.metadata.generation.unwrap_or(0),
        deleting: f.metadata.deletion_timestamp.is_some(),
        has_finalizer: finalizers.iter().any(|x| x == FINALIZER),
        spec: f.spec.clone(),
        status: f.status.clone().unwrap_or_default(),
        master,
        name_taken_by,
        priority: priority_of(&ctx.client, f).await?,
        ingest: ctx.ingests.ingest_of(f, &key).await?,
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let decision = reconcile::decide(&observed);
    for action in &decision.actions {
        match action {
            // Added by server-side apply (other finalizers are untouched);
            // removed by a patch guarded by the resourceVersion, so it goes
            // whoever added it (an operator before server-side apply too).
            Action::AddFinalizer => apply_finalizers(&api, f, &[FINALIZER]).await?,
            Action::CreateInMaster => {
                let record = FilesetRecord::from_spec(&master_spec(f, &observed.priority), now_unix())?;
                ctx.master.create_fileset(record, true).await?;
            }
            Action::SetAvailability { availability } => ctx.master.set_availability(&name, *availability).await?,
            Action::SetReadMode { read_mode } => ctx.master.set_read_mode(&name, *read_mode).await?,
            Action::SetHedge { hedge } => ctx.master.set_hedge(&name, *hedge).await?,
            Action::SetMinWriteStripes { stripes } => {
                ctx.master.set_min_write_stripes(&name, *stripes as usize).await?;
            }
            Action::StartIngest { source_key } => ctx.ingests.start(f, source_key).await?,
            Action::DeleteData => {
                let (versions, deletions) = ctx.master.delete_fileset(&name).await?;
                info!(fileset = %name, versions, stripes = deletions.len(), "deleting a fileset's data");
                ctx.chores.delete(deletions);
            }
            Action::RemoveFinalizer => remove_finalizer(&api, f).await?,
        }
    }
    let reference = f.object_ref(&());
    for e in &decision.events {
        let event = Event {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.into(),
            note: Some(e.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %err, "recording an event failed");
        }
    }
    if let Some(status) = decision.status {
        let ingested = status.ingested_source.clone();
        let patch = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "Fileset",
            "status": status,
        });
        api.patch_status(&f.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        // Only once the status says which source is stored may its pod go.
        if f.spec.source.pvc.is_some() {
            ctx.ingests.tidy_pods(f, &key, ingested.as_deref()).await?;
        }
    }
    if decision.actions.contains(&Action::DeleteData) {
        // The data is going; let the next pass remove the finalizer.
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    Ok(Requeue::requeue(ctx.resync))
}

/// Applies this operator's finalizers of `f` (server-side, as [`MANAGER`]).
async fn apply_finalizers(api: &Api<Fileset>, f: &Fileset, finalizers: &[&str]) -> Result<(), ReconcileError> {
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "Fileset",
        "metadata": {"name": f.name_any(), "finalizers": finalizers},
    });
    api.patch(&f.name_any(), &PatchParams::apply(MANAGER), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Removes [`FINALIZER`] from `f`, whoever added it, by a merge patch of
/// the rest of the list that names the resourceVersion read: if the list
/// changed since, the apiserver refuses (Conflict) and the next pass retries.
async fn remove_finalizer(api: &Api<Fileset>, f: &Fileset) -> Result<(), ReconcileError> {
    if !f.finalizers().iter().any(|x| x == FINALIZER) {
        return Ok(());
    }
    let rest: Vec<&String> = f.finalizers().iter().filter(|x| *x != FINALIZER).collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": rest, "resourceVersion": f.resource_version()},
    });
    api.patch(&f.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

pub fn namespace_of(f: &Fileset) -> String {
    f.namespace().unwrap_or_else(|| "default".into())
}

/// The master's name of a Fileset. Names are cluster-wide in the master
/// (documented): two namespaces cannot both have a fileset `models`.
pub fn master_name(f: &Fileset) -> String {
    f.name_any()
}
