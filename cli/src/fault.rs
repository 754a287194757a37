//! `tessera fault`: inject faults into a chunkserver (started with
//! `--enable-fault-injection`), and stop or start servers, zones or the
//! master of the local cluster.

use clap::{Args, Subcommand};
use tessera_proto::cs;
use tessera_proto::cs::fault_injection_client::FaultInjectionClient;

use crate::target::LocalState;

#[derive(Debug, Clone, Subcommand)]
pub enum FaultCommand {
    /// Set (or show) the injected faults of one chunkserver.
    Inject(InjectArgs),
    /// Stop the master, a chunkserver or a zone of the local cluster (SIGKILL).
    Stop(TargetArgs),
    /// Start again what `stop` stopped, on the same ports and data.
    Start(TargetArgs),
}

/// Set or show the injected faults of a chunkserver.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// The chunkserver: its gRPC address, or its id in the local cluster (cs3).
    #[arg(long)]
    pub server: String,
    /// Added latency per read or write, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Cap on the bytes per second reads send (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub bandwidth: u64,
    /// Accept requests and never answer them.
    #[arg(long)]
    pub hang: bool,
    /// Fraction of requests failed with UNAVAILABLE (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction of read responses with one byte flipped (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub corrupt_rate: f64,
    /// Print the faults in force and change nothing.
    #[arg(long)]
    pub show: bool,
}

/// What to stop or start in the local cluster.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// `master`, a chunkserver id (`cs3`), or a zone (`zone:z1`).
    pub target: String,
}

fn resolve(server: &str) -> anyhow::Result<String> {
    if server.contains(':') {
        return Ok(server.to_string());
    }
    let state = LocalState::load()?;
    state
        .servers
        .iter()
        .find(|s| s.id == server)
        .map(|s| s.grpc.clone())
        .ok_or_else(|| anyhow::anyhow!("no chunkserver {server:?} in the local cluster"))
}

pub async fn run(cmd: &FaultCommand) -> anyhow::Result<()> {
    match cmd {
        FaultCommand::Inject(a) => inject(a).await,
        FaultCommand::Stop(t) => control("stop", t).await,
        FaultCommand::Start(t) => control("start", t).await,
    }
}

async fn inject(a: &InjectArgs) -> anyhow::Result<()> {
    let addr = resolve(&a.server)?;
    // The chunkserver's own words, naming it (not the master's).
    let said = |s: tonic::Status| anyhow::anyhow!("chunkserver {addr}: {}", s.message());
    let mut c = FaultInjectionClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach chunkserver {addr}: {e}"))?;
    let now = if a.show {
        c.get_faults(cs::GetFaultsRequest {}).await.map_err(said)?.into_inner()
    } else {
        let f = cs::Faults {
            latency_ms: a.latency_ms,
            bandwidth_bytes_per_sec: a.bandwidth,
            hang: a.hang,
            error_rate: a.error_rate,
            corrupt_rate: a.corrupt_rate,
        };
        c.set_faults(f).await.map_err(said)?.into_inner()
    };
    crate::outln!(
        "{}: latency {} ms, bandwidth cap {}, hang {}, error rate {}, corrupt rate {}",
        a.server,
        now.latency_ms,
        if now.bandwidth_bytes_per_sec == 0 {
            "none".to_string()
        } else {
            format!("{} B/s", now.bandwidth_bytes_per_sec)
        },
        now.hang,
        now.error_rate,
        now.corrupt_rate
    );
    Ok(())
}

async fn control(verb: &str, t: &TargetArgs) -> anyhow::Result<()> {
    let target = &t.target;
    let state = LocalState::load()?;
    // A tiny HTTP/1.1 POST: the control API lives on loopback.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&state.control).await?;
    s.write_all(
        format!("POST /{verb}/{target} HTTP/1.1\r\nHost: local\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let ok = head.starts_with("HTTP/1.1 200");
    crate::out!("{body}");
    anyhow::ensure!(ok, "the local cluster refused: {}", body.trim());
    Ok(())
}
