//! The ingest of each Fileset's current source, as a state machine: idle,
//! running, done (the version is stored) or failed (tried again after
//! [`INGEST_RETRY`]). http and leaf sources run as tasks of this replica
//! ([`crate::ingest`], [`crate::promote`]); a PVC source runs as a pod
//! ([`crate::ingest_pod`]) whose phase is the state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tessera_api::crd::Fileset;
use tessera_client::fileset::FilesetClient;
use tracing::{info, warn};

use crate::error::{ReconcileError, is_status};
use crate::fileset::{master_name, namespace_of};
use crate::ingest;
use crate::ingest_pod::{self, IngestPodConfig, PodIngest};
use crate::metrics::{OperatorMetrics, ResultLabels};
use crate::promote;
use crate::reconcile::Ingest;

#[derive(Debug, Clone)]
enum IngestState {
    Running,
    Failed { reason: String, at: Instant },
    Done,
}

/// A failed ingest is tried again after this long.
const INGEST_RETRY: Duration = Duration::from_secs(30);

/// The ingests of every fileset this replica reconciles: http and leaf
/// sources run here as tasks, PVC sources as pods.
pub struct Ingests {
    client: Client,
    /// A client of this replica's own master.
    files: FilesetClient,
    /// Ingests by fileset: the source key and how it went.
    runs: Mutex<HashMap<String, (String, IngestState)>>,
    /// Where ingests unpack their sources.
    scratch: PathBuf,
    pods: IngestPodConfig,
    metrics: Arc<OperatorMetrics>,
}

impl Ingests {
    pub fn new(client: Client, files: FilesetClient, pods: IngestPodConfig, metrics: Arc<OperatorMetrics>) -> Self {
        Self { client, files, runs: Mutex::default(), scratch: std::env::temp_dir(), pods, metrics }
    }

    /// What the decision should know of the ingest of `key` for `f`.
    pub async fn ingest_of(&self, f: &Fileset, key: &str) -> Result<Ingest, ReconcileError> {
        let name = master_name(f);
        let recorded = match self.runs.lock().unwrap().get(&name) {
            Some((k, state)) if k == key => Some(state.clone()),
            _ => None,
        };
        if f.spec.source.pvc.is_some() {
            // A failure before any pod (a missing claim) is remembered here;
            // everything else is the pod's phase.
            if let Some(IngestState::Failed { reason, at }) = &recorded
                && at.elapsed() < INGEST_RETRY
            {
                return Ok(Ingest::Failed { reason: reason.clone() });
            }
            let pods = Api::<Pod>::namespaced(self.client.clone(), &namespace_of(f));
            let Some(pod) = pods.get_opt(&ingest_pod::pod_name(&name, key)).await? else { return Ok(Ingest::Idle) };
            return Ok(match ingest_pod::state_of(&pod) {
                PodIngest::Running => Ingest::Running,
                PodIngest::Succeeded => Ingest::Done { source_key: key.to_string() },
                PodIngest::Failed { reason, finished } => {
                    let age = finished.map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0).unsigned_abs());
                    if age.is_some_and(|a| a >= INGEST_RETRY) {
                        // Tried again with a new pod of the same name.
                        pods.delete(&pod.name_any(), &DeleteParams::background()).await?;
                        Ingest::Idle
                    } else {
                        Ingest::Failed { reason }
                    }
                }
            });
        }
        Ok(match recorded {
            Some(IngestState::Running) => Ingest::Running,
            Some(IngestState::Failed { reason, at }) if at.elapsed() < INGEST_RETRY => Ingest::Failed { reason },
            Some(IngestState::Done) => Ingest::Done { source_key: key.to_string() },
            Some(IngestState::Failed { .. }) | None => Ingest::Idle,
        })
    }

    fn record(&self, name: &str, key: &str, state: IngestState) {
        if let IngestState::Failed { .. } = state {
            self.metrics.ingests.get_or_create(&ResultLabels { result: "failed" }).inc();
        }
        self.runs.lock().unwrap().insert(name.to_string(), (key.to_string(), state));
    }

    /// Starts an ingest of the source with `key`.
    pub async fn start(self: &Arc<Self>, f: &Fileset, key: &str) -> Result<(), ReconcileError> {
        let name = master_name(f);
        if let Some(pvc) = &f.spec.source.pvc {
            let ns = namespace_of(f);
            let claims = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &ns);
            if claims.get_opt(&pvc.claim_name).await?.is_none() {
                let reason =
                    format!("spec.source.pvc.claimName: persistentvolumeclaim {ns}/{} not found", pvc.claim_name);
                self.record(&name, key, IngestState::Failed { reason, at: Instant::now() });
                return Ok(());
            }
            let pod = ingest_pod::pod_for(f, pvc, key, &self.pods);
            match Api::<Pod>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &pod).await {
                Ok(_) => info!(fileset = %name, pod = %pod.name_any(), "started an ingest pod"),
                // Already started (by this replica before a restart, or one that led before).
                Err(e) if is_status(&e, StatusCode::CONFLICT) => {}
                Err(e) => return Err(e.into()),
            }
            self.runs.lock().unwrap().remove(&name);
            return Ok(());
        }
        let (ctx, ns) = (self.clone(), namespace_of(f));
        let work: futures::future::BoxFuture<'static, Result<(u64, u64), String>> =
            if let Some(leaf) = f.spec.source.leaf.clone() {
                let name = name.clone();
                Box::pin(async move {
                    let (volume, node) = promote::locate(&ctx.client, &ns, &leaf).await.map_err(|e| e.to_string())?;
                    let addr = promote::node_plugin(&ctx.client, &node).await.map_err(|e| e.to_string())?;
                    info!(fileset = %name, volume = %volume, node = %node, plugin = %addr, "promoting a leaf");
                    let v = promote::promote(&addr, &volume, &name).await.map_err(|e| e.to_string())?;
                    Ok((v.version, v.files))
                })
            } else if let Some(http) = f.spec.source.http.clone() {
                let name = name.clone();
                Box::pin(async move {
                    let v = ingest::ingest_http(&ctx.files, &name, &http.url, http.sha256.as_deref(), &ctx.scratch)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok((v.id, v.files))
                })
            } else {
                return Ok(());
            };
        self.record(&name, key, IngestState::Running);
        let (ctx, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            let state = match work.await {
                Ok((version, files)) => {
                    info!(fileset = %name, version, files, "ingest stored a new version");
                    ctx.metrics.ingests.get_or_create(&ResultLabels { result: "ok" }).inc();
                    IngestState::Done
                }
                Err(reason) => {
                    warn!(fileset = %name, error = %reason, "ingest failed");
                    IngestState::Failed { reason, at: Instant::now() }
                }
            };
            ctx.record(&name, &key, state);
        });
        Ok(())
    }

    /// Deletes the ingest pods of `f` that are done with: the one whose
    /// version is recorded, and any for a source that is no longer current.
    pub async fn tidy_pods(&self, f: &Fileset, current: &str, ingested: Option<&str>) -> Result<(), ReconcileError> {
        let name = master_name(f);
        let pods = Api::<Pod>::namespaced(self.client.clone(), &namespace_of(f));
        let selector = format!("{}={}", ingest_pod::COMPONENT_LABEL.0, ingest_pod::COMPONENT_LABEL.1);
        for pod in pods.list(&ListParams::default().labels(&selector)).await? {
            let a = pod.annotations();
            if a.get(ingest_pod::FILESET_ANNOTATION) != Some(&name) {
                continue;
            }
            let key = a.get(ingest_pod::SOURCE_KEY_ANNOTATION).map(String::as_str);
            if key != Some(current) || key == ingested {
                if key == ingested {
                    self.metrics.ingests.get_or_create(&ResultLabels { result: "ok" }).inc();
                }
                info!(fileset = %name, pod = %pod.name_any(), "deleting a finished ingest pod");
                match pods.delete(&pod.name_any(), &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, StatusCode::NOT_FOUND) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}
