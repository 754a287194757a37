//! `tessera-operator`: the Kubernetes operator of Tessera.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tessera_master::MasterConfig;
use tessera_master::cli::parse_duration;
use tessera_operator::ingest_pod::IngestPodConfig;
use tessera_operator::runtime::{self, OperatorConfig};

/// The Tessera operator: the master and the Fileset controller, one leader at a time.
#[derive(Parser)]
#[command(name = "tessera-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (in a pod, or anywhere with a kubeconfig).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions (YAML) for `kubectl apply -f -`.
    Crds,
}

#[derive(Args)]
struct RunArgs {
    /// The master's gRPC address (chunkservers and the tessera command use it).
    #[arg(long, default_value = "0.0.0.0:7300")]
    listen: SocketAddr,
    /// HTTP address of /healthz, /readyz (ready only while leading) and /metrics.
    #[arg(long, default_value = "0.0.0.0:7301")]
    metrics_listen: SocketAddr,
    /// Namespace of the leader Lease and of the master's records.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tessera-system")]
    lease_namespace: String,
    /// This replica's name in the Lease (default: the pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a leader that stops renewing keeps the lease.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// A chunkserver not heard from for this long is not live.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat_timeout: Duration,
    /// How long lost stripes of low-availability filesets may come back before they are rebuilt.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    repair_grace: Duration,
    /// Repair read bandwidth, in MiB/s (0: unlimited).
    #[arg(long, default_value_t = 256)]
    repair_mib_per_sec: u64,
    /// How often each Fileset's status is refreshed from the master.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    resync: Duration,
    /// Image of the pods that ingest PersistentVolumeClaim sources (it must
    /// hold the `tessera` command; default: this release's image).
    #[arg(long, env = "TESSERA_IMAGE")]
    ingest_image: Option<String>,
    /// The master's address as pods reach it, given to ingest pods
    /// (default: tessera-master.<lease namespace>.svc:<listen port>).
    #[arg(long, env = "TESSERA_MASTER_SERVICE")]
    master_service: Option<String>,
    /// Log filter (also RUST_LOG).
    #[arg(long, default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", tessera_api::crd::render_yaml()?),
        Command::Run(a) => run(*a).await?,
    }
    Ok(())
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or(a.log.clone());
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    let kube = kube::Config::infer().await?;
    let identity =
        a.identity.clone().unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned());
    let config = OperatorConfig {
        listen: a.listen,
        http_listen: a.metrics_listen,
        namespace: a.lease_namespace.clone(),
        identity,
        lease_duration: a.lease_duration,
        master: MasterConfig {
            heartbeat_timeout: a.heartbeat_timeout,
            relearn_window: a.heartbeat_timeout,
            repair_grace: a.repair_grace,
            repair_bytes_per_sec: a.repair_mib_per_sec << 20,
            ..Default::default()
        },
        resync: a.resync,
        ingest_pods: IngestPodConfig {
            image: a
                .ingest_image
                .clone()
                .unwrap_or_else(|| format!("ghcr.io/tessera-dev/tessera:{}", env!("CARGO_PKG_VERSION"))),
            master_address: a
                .master_service
                .clone()
                .unwrap_or_else(|| format!("tessera-master.{}.svc:{}", a.lease_namespace, a.listen.port())),
        },
    };
    let op = runtime::start(kube, config).await?;
    println!("{}", serde_json::json!({"event": "ready", "http": op.http_addr.to_string()}));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    op.shutdown().await
}
