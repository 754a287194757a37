//! The operator process: leader election, the embedded master on the
//! Kubernetes metadata store, the Fileset controller, and the HTTP endpoint
//! with `/healthz`, `/readyz` (the leader only) and `/metrics`.
//!
//! Only the leader runs the master and the controller. A replica that loses
//! the lease stops them at once; the Deployment's readiness probe then sends
//! the master Service's traffic to the new leader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_client::fileset::FilesetClient;
use tessera_client::{ClientConfig, StripeClient};
use tessera_core::repair::Availability;
use tessera_proto::ms;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ingest;
use crate::ingest_pod::{self, IngestPodConfig, PodIngest};
use crate::kube_store::KubeStore;
use crate::leader::Elector;
use crate::promote;
use crate::reconcile::{self, Action, FINALIZER, Ingest, MasterFileset, MasterVersion, Observed, PriorityRef};
use crate::topology::{LabelKeys, NodeState, node_state, topology_of};
use tessera_api::crd::{DomainLevel, Fileset, FilesetSpec, Priority, PriorityStatus};
use tessera_master::maintenance::Chores;
use tessera_master::records::{FilesetRecord, now_unix};
use tessera_master::server::{self, Config as MasterServerConfig};
use tessera_master::state::NodeInfo;
use tessera_master::{Master, MasterConfig, MasterError};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "tessera-operator";

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The master's gRPC address.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_listen: SocketAddr,
    /// Where the Lease and the master's records live.
    pub namespace: String,
    /// This replica's name in the Lease.
    pub identity: String,
    pub lease_duration: Duration,
    pub master: MasterConfig,
    /// How often a Fileset's status is refreshed from the master.
    pub resync: Duration,
    /// The pods that ingest PersistentVolumeClaim sources.
    pub ingest_pods: IngestPodConfig,
}

#[derive(Default)]
struct Shared {
    master: Option<Arc<Master>>,
    master_addr: Option<SocketAddr>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The operator's own metrics (the master's follow them on the same page).
#[derive(Debug)]
struct OperatorMetrics {
    registry: Registry,
    leader: Gauge,
    reconciles: Family<ResultLabels, Counter>,
    ingests: Family<ResultLabels, Counter>,
}

impl OperatorMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera_operator");
        let (leader, reconciles, ingests) = (Gauge::default(), Family::default(), Family::default());
        registry.register("leader", "1 while this replica holds the lease", leader.clone());
        registry.register("reconciles", "Fileset reconciles by result (ok, error)", reconciles.clone());
        registry.register("ingests", "Source ingests by result (ok, failed)", ingests.clone());
        Self { registry, leader, reconciles, ingests }
    }

    /// This page without its end marker, so the master's can follow.
    fn render_head(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out.strip_suffix("# EOF\n").map(str::to_string).unwrap_or(out)
    }
}

/// A started operator replica.
pub struct Operator {
    pub http_addr: SocketAddr,
    /// Whether this replica leads.
    pub leading: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Operator {
    /// The master's gRPC address once this replica leads.
    pub fn master_addr(&self) -> Option<SocketAddr> {
        self.shared.lock().unwrap().master_addr
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        self.task.await?
    }
}

/// Starts a replica talking to the cluster `kube` describes.
pub async fn start(kube: kube::Config, config: OperatorConfig) -> anyhow::Result<Operator> {
    let client = Client::try_from(kube.clone())?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let metrics = Arc::new(OperatorMetrics::new());
    let (stop, stop_rx) = watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let elector = Elector::new(leases, "tessera-operator", &config.identity, config.lease_duration);
    let leading = elector.campaign(stop_rx.clone());

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding {}", config.http_listen))?;
    let http_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get({
                let shared = shared.clone();
                move || async move {
                    if shared.lock().unwrap().master.is_some() {
                        (StatusCode::OK, "leading\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "standby\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get({
                let (shared, metrics) = (shared.clone(), metrics.clone());
                move || async move {
                    let master = shared.lock().unwrap().master.clone();
                    metrics.leader.set(i64::from(master.is_some()));
                    let tail = match master {
                        Some(m) => tessera_master::metrics::render(&m, Instant::now()).unwrap_or_default(),
                        None => String::from("# EOF\n"),
                    };
                    metrics.render_head() + &tail
                }
            }),
        );
    let mut http_stop = stop_rx.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
    });

    let task = tokio::spawn(lead(kube, client, config, shared.clone(), metrics, leading.clone(), stop_rx));
    Ok(Operator { http_addr, leading, shared, stop, task })
}

/// Waits to lead, then runs the master and the controller until leadership
/// is lost or the operator stops.
async fn lead(
    kube: kube::Config,
    client: Client,
    config: OperatorConfig,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<OperatorMetrics>,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // A replica that loses the lease stands by again, and may lead again.
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => { r?; }
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        serve_as_leader(&kube, &client, &config, &shared, &metrics, &mut leading, &mut stop).await?;
        if *stop.borrow() {
            return Ok(());
        }
    }
}

/// Runs the master and the controllers until leadership is lost or the
/// operator stops.
async fn serve_as_leader(
    kube: &kube::Config,
    client: &Client,
    config: &OperatorConfig,
    shared: &Arc<Mutex<Shared>>,
    metrics: &Arc<OperatorMetrics>,
    leading: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (kube, client) = (kube.clone(), client.clone());
    info!(identity = %config.identity, "leading: starting the master");
    let store = Arc::new(KubeStore::new(kube, &config.namespace)?);
    let running = server::start_with_store(
        MasterServerConfig {
            listen: config.listen,
            data_dir: std::path::PathBuf::new(),
            metrics_listen: None,
            master: config.master.clone(),
        },
        store,
    )
    .await?;
    {
        let mut s = shared.lock().unwrap();
        s.master = Some(running.master.clone());
        s.master_addr = Some(running.addr);
    }
    let reporter = Reporter { controller: MANAGER.into(), instance: Some(config.identity.clone()) };
    let own_master = format!("127.0.0.1:{}", running.addr.port());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        master: running.master.clone(),
        chores: running.chores.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        resync: config.resync,
        files: FilesetClient::new(&own_master, StripeClient::new(ClientConfig::default()))?,
        ingests: Mutex::new(HashMap::new()),
        scratch: std::env::temp_dir(),
        ingest_pods: config.ingest_pods.clone(),
        metrics: metrics.clone(),
    });
    let nodes = tokio::spawn(watch_nodes(Api::all(client.clone()), running.master.clone()));
    let filesets = Controller::new(Api::<Fileset>::all(client.clone()), watcher::Config::default());
    let known = filesets.store();
    // A changed Priority reconciles the filesets that name it, and a Fileset
    // that names a priority refreshes that priority's count.
    let naming = {
        let known = known.clone();
        move |p: Priority| {
            let name = p.name_any();
            known
                .state()
                .into_iter()
                .filter(|f| f.spec.priority.as_deref() == Some(name.as_str()))
                .map(|f| ObjectRef::from_obj(&*f))
                .collect::<Vec<_>>()
        }
    };
    let ingest_pods = format!("{}={}", ingest_pod::COMPONENT_LABEL.0, ingest_pod::COMPONENT_LABEL.1);
    let filesets = filesets
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default().labels(&ingest_pods))
        .watches(Api::<Priority>::all(client.clone()), watcher::Config::default(), naming)
        .run(reconcile_fileset, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "fileset reconcile failed");
            }
        });
    let priorities = Controller::new(Api::<Priority>::all(client.clone()), watcher::Config::default())
        .watches(Api::<Fileset>::all(client), watcher::Config::default(), |f: Fileset| {
            f.spec.priority.map(|p| ObjectRef::<Priority>::new(&p))
        })
        .run(reconcile_priority, priority_error_policy, Arc::new((ctx, known)))
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "priority reconcile failed");
            }
        });
    tokio::select! {
        _ = futures::future::join(filesets, priorities) => {}
        _ = leading.wait_for(|l| !*l) => warn!("lost the lease: stopping the master"),
        _ = stop.wait_for(|s| *s) => {}
    }
    nodes.abort();
    {
        let mut s = shared.lock().unwrap();
        s.master = None;
        s.master_addr = None;
    }
    running.shutdown().await
}

/// Feeds the master what the cluster says of each node: failure domains from
/// its labels, and maintenance while it is cordoned or not ready.
async fn watch_nodes(nodes: Api<Node>, master: Arc<Master>) {
    let keys = LabelKeys::default();
    let mut events = watcher(nodes, watcher::Config::default()).applied_objects().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(node) => {
                let name = node.name_any();
                let topology = topology_of(&name, node.labels(), &keys);
                let maintenance = node_state(&node) != NodeState::Ready;
                master.set_node(&name, NodeInfo { topology, maintenance });
            }
            Err(e) => warn!(error = %e, "watching nodes"),
        }
    }
}

struct Ctx {
    client: Client,
    master: Arc<Master>,
    chores: Chores,
    recorder: Recorder,
    resync: Duration,
    /// A client of this replica's own master, for ingests.
    files: FilesetClient,
    /// Ingests by fileset: the source key and how it went.
    ingests: Mutex<HashMap<String, (String, IngestState)>>,
    /// Where ingests unpack their sources.
    scratch: std::path::PathBuf,
    ingest_pods: IngestPodConfig,
    metrics: Arc<OperatorMetrics>,
}

#[derive(Debug, Clone)]
enum IngestState {
    Running,
    Failed { reason: String, at: Instant },
    Done,
}

/// A failed ingest is tried again after this long.
const INGEST_RETRY: Duration = Duration::from_secs(30);

impl Ctx {
    /// What the decision should know of the ingest of `key` for `f`.
    async fn ingest_of(&self, f: &Fileset, key: &str) -> Result<Ingest, ReconcileError> {
        let name = master_name(f);
        let recorded = match self.ingests.lock().unwrap().get(&name) {
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

    fn record_ingest(&self, name: &str, key: &str, state: IngestState) {
        if let IngestState::Failed { .. } = state {
            self.metrics.ingests.get_or_create(&ResultLabels { result: "failed" }).inc();
        }
        self.ingests.lock().unwrap().insert(name.to_string(), (key.to_string(), state));
    }

    /// Starts an ingest of the source with `key`.
    async fn start_ingest(self: &Arc<Self>, f: &Fileset, key: &str) -> Result<(), ReconcileError> {
        let name = master_name(f);
        if let Some(pvc) = &f.spec.source.pvc {
            let ns = namespace_of(f);
            let claims = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &ns);
            if claims.get_opt(&pvc.claim_name).await?.is_none() {
                let reason =
                    format!("spec.source.pvc.claimName: persistentvolumeclaim {ns}/{} not found", pvc.claim_name);
                self.record_ingest(&name, key, IngestState::Failed { reason, at: Instant::now() });
                return Ok(());
            }
            let pod = ingest_pod::pod_for(f, pvc, key, &self.ingest_pods);
            match Api::<Pod>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &pod).await {
                Ok(_) => info!(fileset = %name, pod = %pod.name_any(), "started an ingest pod"),
                // Already started (by this replica before a restart, or one that led before).
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            self.ingests.lock().unwrap().remove(&name);
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
        self.record_ingest(&name, key, IngestState::Running);
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
            ctx.record_ingest(&name, &key, state);
        });
        Ok(())
    }

    /// Deletes the ingest pods of `f` that are done with: the one whose
    /// version is recorded, and any for a source that is no longer current.
    async fn tidy_ingest_pods(&self, f: &Fileset, current: &str, ingested: Option<&str>) -> Result<(), ReconcileError> {
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
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

fn namespace_of(f: &Fileset) -> String {
    f.namespace().unwrap_or_else(|| "default".into())
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("master: {0}")]
    Master(#[from] MasterError),
}

type PriorityCtx = (Arc<Ctx>, Store<Fileset>);

/// A Priority's status: how many filesets name it. What it means for them
/// is applied by the Fileset controller, which every change of it triggers.
async fn reconcile_priority(p: Arc<Priority>, ctx: Arc<PriorityCtx>) -> Result<Requeue, ReconcileError> {
    let (ctx, known) = &*ctx;
    let name = p.name_any();
    let filesets = known.state().iter().filter(|f| f.spec.priority.as_deref() == Some(name.as_str())).count();
    let status = PriorityStatus { observed_generation: p.metadata.generation, filesets: filesets as u32 };
    if p.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({
            "apiVersion": "tessera.dev/v1alpha1",
            "kind": "Priority",
            "status": status,
        });
        Api::<Priority>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await?;
    }
    Ok(Requeue::requeue(ctx.resync))
}

fn priority_error_policy(_p: Arc<Priority>, _e: &ReconcileError, _ctx: Arc<PriorityCtx>) -> Requeue {
    Requeue::requeue(Duration::from_secs(5))
}

fn error_policy(_f: Arc<Fileset>, _e: &ReconcileError, ctx: Arc<Ctx>) -> Requeue {
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: "error" }).inc();
    Requeue::requeue(Duration::from_secs(5))
}

/// The master's name of a Fileset. Names are cluster-wide in the master
/// (documented): two namespaces cannot both have a fileset `models`.
fn master_name(f: &Fileset) -> String {
    f.name_any()
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
        },
        None => PriorityRef::Missing { name },
    })
}

fn master_spec(f: &Fileset, availability: &str, read_mode: &str, priority: &PriorityRef) -> ms::FilesetSpec {
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
        availability: availability.into(),
        keep_versions: s.retention.keep_versions,
        read_mode: read_mode.into(),
        min_write_stripes: crate::reconcile::min_write_stripes(s, priority),
    }
}

fn master_view(m: &Master, name: &str) -> Result<Option<MasterFileset>, MasterError> {
    let versions = match m.list_versions(name) {
        Ok(v) => v,
        Err(MasterError::FilesetNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let record = m.get_fileset(name)?.record;
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
        availability: record.availability.to_string(),
        read_mode: record.read_mode.map(|m| m.to_string()).unwrap_or_default(),
        min_write_stripes: record.min_write_stripes as u32,
        relearning: st.relearning,
        corrupt_stripes_found: f.corrupt_stripes_found,
        corrupt_stripes_rebuilt: f.corrupt_stripes_rebuilt,
        degraded_writes: f.degraded_writes,
    }))
}

async fn reconcile_fileset(f: Arc<Fileset>, ctx: Arc<Ctx>) -> Result<Requeue, ReconcileError> {
    let result = reconcile_once(&f, &ctx).await;
    if result.is_ok() {
        ctx.metrics.reconciles.get_or_create(&ResultLabels { result: "ok" }).inc();
    }
    result
}

async fn reconcile_once(f: &Arc<Fileset>, ctx: &Arc<Ctx>) -> Result<Requeue, ReconcileError> {
    let api: Api<Fileset> = Api::namespaced(ctx.client.clone(), &namespace_of(f));
    let name = master_name(f);
    let finalizers = f.finalizers().to_vec();
    let key = reconcile::source_key(&f.spec.source);
    let observed = Observed {
        generation: f.metadata.generation.unwrap_or(0),
        deleting: f.metadata.deletion_timestamp.is_some(),
        has_finalizer: finalizers.iter().any(|x| x == FINALIZER),
        spec: f.spec.clone(),
        status: f.status.clone().unwrap_or_default(),
        master: master_view(&ctx.master, &name)?,
        priority: priority_of(&ctx.client, f).await?,
        ingest: ctx.ingest_of(f, &key).await?,
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let decision = reconcile::decide(&observed);
    let availability = observed.priority.availability();
    for action in &decision.actions {
        match action {
            Action::AddFinalizer => {
                let mut list = finalizers.clone();
                list.push(FINALIZER.into());
                let patch = serde_json::json!({"metadata": {"finalizers": list}});
                api.patch(&f.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            Action::CreateInMaster => {
                let spec = master_spec(f, availability, observed.priority.read_mode(), &observed.priority);
                let record = FilesetRecord::from_spec(&spec, now_unix())?;
                ctx.master.create_fileset(record, true).await?;
            }
            Action::SetAvailability { availability } => {
                let a = if *availability == "high" { Availability::High } else { Availability::Low };
                ctx.master.set_availability(&name, a).await?;
            }
            Action::SetReadMode { read_mode } => {
                ctx.master.set_read_mode(&name, read_mode.parse().ok()).await?;
            }
            Action::SetMinWriteStripes { stripes } => {
                ctx.master.set_min_write_stripes(&name, *stripes as usize).await?;
            }
            Action::StartIngest { source_key } => ctx.start_ingest(f, source_key).await?,
            Action::DeleteData => {
                let (versions, deletions) = ctx.master.delete_fileset(&name).await?;
                info!(fileset = %name, versions, stripes = deletions.len(), "deleting a fileset's data");
                ctx.chores.delete(deletions);
            }
            Action::RemoveFinalizer => {
                let list: Vec<String> = finalizers.iter().filter(|x| *x != FINALIZER).cloned().collect();
                let patch = serde_json::json!({"metadata": {"finalizers": list}});
                api.patch(&f.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
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
            "apiVersion": "tessera.dev/v1alpha1",
            "kind": "Fileset",
            "status": status,
        });
        api.patch_status(&f.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        // Only once the status says which source is stored may its pod go.
        if f.spec.source.pvc.is_some() {
            ctx.tidy_ingest_pods(f, &key, ingested.as_deref()).await?;
        }
    }
    if decision.actions.contains(&Action::DeleteData) {
        // The data is going; let the next pass remove the finalizer.
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    Ok(Requeue::requeue(ctx.resync))
}
