//! `tessera-csi`: Tessera's CSI plugin, and the keeper that holds its FUSE
//! connections across restarts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tessera_client::fileset::FilesetClient;
use tessera_client::{ClientConfig, StripeClient};
use tessera_core::read_plan::ReadMode;
use tessera_csi::csi::controller_server::ControllerServer;
use tessera_csi::csi::identity_server::IdentityServer;
use tessera_csi::csi::node_server::NodeServer;
use tessera_csi::node::{NodeConfig, NodePlugin};
use tessera_csi::peers::Discovery;
use tessera_csi::registration::Registrar;
use tessera_csi::service::{ControllerService, IdentityService, NodeService};
use tracing::info;

/// Tessera's CSI plugin: filesets as read-only root volumes, shared per node,
/// over FUSE mounts that survive restarts of this plugin.
#[derive(Parser)]
#[command(name = "tessera-csi", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Hold the plugin's FUSE connections so mounts outlive it (run it as
    /// its own DaemonSet, updated only on delete).
    Keeper {
        /// Unix socket the plugin deposits connections on.
        #[arg(long, default_value = "/run/tessera-csi/keeper.sock")]
        socket: PathBuf,
    },
    /// Measure volumes (cold, node-cache and page-cache reads, small files,
    /// leaf writes, leaf creation) beside tmpfs, through a running master
    /// (`tessera local up`). Mounts FUSE and tmpfs: run as root.
    Bench {
        /// The master (host:port).
        #[arg(long, env = "TESSERA_MASTER", default_value = "127.0.0.1:7300")]
        master: String,
        /// Scratch space for the sample tree, the cache and the leaves.
        #[arg(long, default_value = "/var/tmp/tessera-csi-bench")]
        dir: PathBuf,
        /// Size of the large file read sequentially.
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        big: u64,
        /// Number of small files read.
        #[arg(long, default_value_t = 2000)]
        small_files: usize,
        /// Size of each small file.
        #[arg(long, default_value = "16KiB", value_parser = parse_size)]
        small_size: u64,
        /// Bytes written sequentially into a leaf.
        #[arg(long, default_value = "512MiB", value_parser = parse_size)]
        write: u64,
        /// Sizes of the roots a leaf is created over (comma-separated). Each
        /// is stored for the measurement: 10 GiB needs 15 GiB free on the
        /// chunkservers' disk for a minute.
        #[arg(long, default_value = "100MiB,10GiB", value_delimiter = ',', value_parser = parse_size)]
        leaf_roots: Vec<u64>,
        /// Also print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Where the CSI gRPC services listen (unix:///path/csi.sock).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name (the Kubernetes node).
    #[arg(long, env = "NODE_NAME")]
    node_id: Option<String>,
    /// The master (host:port).
    #[arg(long, env = "TESSERA_MASTER")]
    master: Option<String>,
    /// Node state and root mounts (a hostPath that survives the plugin).
    #[arg(long, default_value = "/var/lib/tessera-csi")]
    state_dir: PathBuf,
    /// The keeper's socket.
    #[arg(long, default_value = "/run/tessera-csi/keeper.sock")]
    keeper_socket: PathBuf,
    /// The node cache of root data (default: <state-dir>/cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Most bytes the node cache holds; least recently used units go first.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    cache_size: u64,
    /// Whole root files of 1 MiB and more, kept so the kernel reads them
    /// directly (FUSE passthrough, Linux 6.9+) (default: <state-dir>/files).
    #[arg(long)]
    file_store_dir: Option<PathBuf>,
    /// Most bytes the file store holds; 0 turns passthrough off.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    file_store_size: u64,
    /// Other nodes' plugins (host:port of their control port, comma-separated)
    /// asked for blocks before the chunkservers.
    #[arg(long, value_delimiter = ',', conflicts_with = "peer_service")]
    peers: Vec<String>,
    /// A name resolving to every node plugin (a headless Service, host:port),
    /// asked for blocks before the chunkservers; resolved every 30 s.
    #[arg(long)]
    peer_service: Option<String>,
    /// This pod's address, left out of --peer-service's answers.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,
    /// How root volumes read stripes: normal, hedged or accelerated.
    #[arg(long, default_value = "hedged")]
    read_mode: ReadMode,
    /// Stripes beyond k an accelerated read asks for at once (default: all
    /// m). One or two cost the chunkservers less where they share CPUs.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    accelerated_extra: Option<u16>,
    /// The kubelet's plugin registry directory (usually
    /// /var/lib/kubelet/plugins_registry): the plugin registers the driver
    /// there itself, as node-driver-registrar would. Without it, nothing
    /// registers (a registrar sidecar may).
    #[arg(long)]
    kubelet_registration_dir: Option<PathBuf>,
    /// The CSI socket's path on the node, as the kubelet opens it (default:
    /// the --endpoint path; differs when the plugin sees the host's
    /// directory mounted elsewhere).
    #[arg(long)]
    kubelet_csi_path: Option<PathBuf>,
    /// Provision leaf PersistentVolumeClaims placed on this node (their
    /// StorageClass names this driver and binds WaitForFirstConsumer), as
    /// the external-provisioner sidecar would; needs the in-cluster
    /// service account (or KUBECONFIG) with the chart's provisioner role.
    #[arg(long)]
    provision_leaves: bool,
    /// HTTP address of /metrics, /healthz and the control API (/volumes).
    #[arg(long, default_value = "0.0.0.0:7501")]
    metrics_listen: SocketAddr,
    /// Log filter (also RUST_LOG).
    #[arg(long, default_value = "info")]
    log: String,
}

/// `10GiB`, `512MiB`, `4096`.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a size (e.g. 10GiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        u => return Err(format!("unknown unit {u:?} (B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.run.log.clone());
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    match cli.command {
        Some(Command::Keeper { socket }) => Ok(tessera_csi::keeper::run(&socket)?),
        Some(Command::Bench { master, dir, big, small_files, small_size, write, leaf_roots, json }) => {
            let config = tessera_csi::bench::BenchConfig {
                master,
                dir,
                big_bytes: big,
                small_files,
                small_bytes: small_size as usize,
                write_bytes: write,
                leaf_roots,
            };
            let report = tokio::runtime::Runtime::new()?.block_on(tessera_csi::bench::run(config))?;
            if json {
                println!("{report}");
            }
            Ok(())
        }
        None => tokio::runtime::Runtime::new()?.block_on(run(cli.run)),
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let socket = a
        .endpoint
        .strip_prefix("unix://")
        .with_context(|| format!("--endpoint {}: only unix:// endpoints are served", a.endpoint))?;
    let node_id = a.node_id.clone().context("--node-id (or NODE_NAME) is required")?;
    let master = a.master.clone().context("--master (or TESSERA_MASTER) is required")?;
    let stripes = StripeClient::new(ClientConfig {
        accelerated_extra: a.accelerated_extra.map(usize::from),
        ..Default::default()
    });
    let files = FilesetClient::new(&master, stripes)?;
    let config = NodeConfig {
        node_id,
        master,
        cache_dir: a.cache_dir.clone().unwrap_or_else(|| a.state_dir.join("cache")),
        state_dir: a.state_dir.clone(),
        keeper_socket: a.keeper_socket.clone(),
        cache_bytes: a.cache_size,
        file_store: (a.file_store_size > 0)
            .then(|| (a.file_store_dir.clone().unwrap_or_else(|| a.state_dir.join("files")), a.file_store_size)),
        read_mode: a.read_mode,
        peers: match (&a.peer_service, a.peers.is_empty()) {
            (Some(name), _) => Some(Discovery::Dns { name: name.clone(), me: a.pod_ip }),
            (None, false) => Some(Discovery::Static(a.peers.clone())),
            (None, true) => None,
        },
    };
    let plugin = NodePlugin::start(config, files).await?;

    let metrics = plugin.metrics.clone();
    let listener = tokio::net::TcpListener::bind(a.metrics_listen)
        .await
        .with_context(|| format!("binding {}", a.metrics_listen))?;
    let metrics_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/metrics", axum::routing::get(move || async move { metrics.render() }))
        .merge(tessera_csi::control::router(plugin.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut provisioner = None;
    if a.provision_leaves {
        let client = kube::Client::try_default().await.context("--provision-leaves: connecting to Kubernetes")?;
        provisioner = Some(tokio::spawn(tessera_csi::provisioning::controllers::run(client, plugin.clone())));
    }
    // The provisioner runs for as long as the plugin; if it ends (a panic),
    // the plugin stops with an error so that the kubelet restarts it rather
    // than serving on without provisioning.
    let provisioner_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended = provisioner_ended.clone();
    let provisioner_done = async move {
        match provisioner {
            Some(task) => {
                let r = task.await;
                tracing::error!(result = ?r.map(|_| ()), "the leaf provisioner ended; stopping");
                ended.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            None => std::future::pending::<()>().await,
        }
    };

    let path = PathBuf::from(socket);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let uds = tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    println!("{}", serde_json::json!({"event": "ready", "endpoint": a.endpoint, "metrics": metrics_addr.to_string()}));
    info!(endpoint = %a.endpoint, "serving CSI");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut registration = None;
    if let Some(registry) = &a.kubelet_registration_dir {
        let endpoint = a.kubelet_csi_path.clone().unwrap_or_else(|| path.clone());
        let registrar =
            Registrar::new(tessera_api::keys::CSI_DRIVER, &endpoint, plugin.metrics.kubelet_registered.clone());
        let mut stopped = stopped.clone();
        let served = registrar.serve(registry, async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        registration = Some(served.await?);
    }
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService))
        .add_service(NodeServer::new(NodeService { plugin: Arc::clone(&plugin) }))
        .add_service(ControllerServer::new(ControllerService { plugin: Arc::clone(&plugin) }))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(uds), async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = provisioner_done => {}
            }
            let _ = stopping.send(true);
        })
        .await?;
    // The registration server stops too and removes its socket, so the
    // kubelet deregisters the driver until the next plugin registers it.
    if let Some(task) = registration
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "the registration server failed");
    }
    // Mounts stay: the keeper holds them for the next plugin.
    info!("stopping; mounts stay with the keeper");
    if provisioner_ended.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("the leaf provisioner ended (see the log above)");
    }
    Ok(())
}
