//! The operator process, wired: leader election, the embedded master on the
//! Kubernetes metadata store, the watches that drive the Fileset and
//! Priority controllers ([`crate::fileset`], [`crate::priority`]) and the
//! node watcher ([`crate::nodes`]), and the HTTP endpoint with `/healthz`,
//! `/readyz` (the leader only) and `/metrics`.
//!
//! Only the leader runs the master and the controller. A replica that loses
//! the lease stops them at once; the Deployment's readiness probe then sends
//! the master Service's traffic to the new leader.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tessera_api::crd::{Fileset, Priority};
use tessera_client::fileset::FilesetClient;
use tessera_client::{ClientConfig, StripeClient};
use tessera_master::server::{self, Config as MasterServerConfig};
use tessera_master::{Master, MasterConfig};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::Backoff;
use crate::fileset::{self, Ctx, MANAGER};
use crate::ingest_pod::{self, IngestPodConfig};
use crate::ingests::Ingests;
use crate::kube_store::KubeStore;
use crate::leader::Elector;
use crate::metrics::OperatorMetrics;
use crate::{nodes, priority};

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

/// How long a leader that could not start serving waits to try again, at
/// first and at most.
const LEAD_RETRY: Duration = Duration::from_secs(1);
const LEAD_RETRY_MAX: Duration = Duration::from_secs(30);

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
    let mut retry = LEAD_RETRY;
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => { r?; }
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        if let Err(e) = serve_as_leader(&kube, &client, &config, &shared, &metrics, &mut leading, &mut stop).await {
            // The apiserver unreachable for a moment, or the master's
            // records not readable yet (their CRD not installed): a leader
            // that gave up here would hold the lease and serve nothing, so
            // it tries again while it leads, backing off so that a lasting
            // fault (missing RBAC, say) is not hammered.
            warn!(error = %format!("{e:#}"), retry_s = retry.as_secs(), "serving as the leader failed; trying again");
            {
                let mut s = shared.lock().unwrap();
                s.master = None;
                s.master_addr = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            retry = (retry * 2).min(LEAD_RETRY_MAX);
        } else {
            retry = LEAD_RETRY;
        }
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
    let files = FilesetClient::new(&own_master, StripeClient::new(ClientConfig::default()))?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        master: running.master.clone(),
        chores: running.chores.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        resync: config.resync,
        ingests: Arc::new(Ingests::new(client.clone(), files, config.ingest_pods.clone(), metrics.clone())),
        metrics: metrics.clone(),
        backoff: Backoff::default(),
    });
    let nodes = tokio::spawn(nodes::watch(Api::all(client.clone()), running.master.clone()));
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
        .run(fileset::reconcile, fileset::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "fileset reconcile failed");
            }
        });
    let priorities = Controller::new(Api::<Priority>::all(client.clone()), watcher::Config::default())
        .watches(Api::<Fileset>::all(client), watcher::Config::default(), |f: Fileset| {
            f.spec.priority.map(|p| ObjectRef::<Priority>::new(&p))
        })
        .run(priority::reconcile, priority::error_policy, Arc::new((ctx, known)))
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
