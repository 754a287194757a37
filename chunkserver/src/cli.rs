//! Command-line arguments of the chunkserver, shared by the
//! `tessera-chunkserver` binary and `tessera chunkserver`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tessera_core::units::{parse_positive_duration, parse_rate};

use crate::classes::{ClassLimits, RequestClass};
use crate::quotas::QuotaConfig;
use crate::scrub::ScrubConfig;
use crate::server::{self, Config};

/// Run a chunkserver: store stripes on local data directories and serve them over gRPC.
#[derive(Debug, Clone, Args)]
pub struct ChunkserverArgs {
    /// Name of this chunkserver in logs, metrics and stats (default: the host name).
    #[arg(long, env = "TESSERA_NODE_ID")]
    pub node_id: Option<String>,
    /// gRPC address (TCP). Port 0 picks a free port, printed when ready.
    #[arg(long, default_value = "0.0.0.0:7400")]
    pub listen: SocketAddr,
    /// Also serve gRPC on this unix socket.
    #[arg(long)]
    pub unix_socket: Option<PathBuf>,
    /// Address of the HTTP endpoint with /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:7401")]
    pub metrics_listen: SocketAddr,
    /// A directory to store stripes in, usually one per device. Repeat for several.
    #[arg(long = "data-dir", required = true)]
    pub data_dirs: Vec<PathBuf>,
    /// Concurrent requests of class serving (pods reading volumes).
    #[arg(long, default_value_t = ClassLimits::default().serving)]
    pub serving_limit: u32,
    /// Concurrent requests of class job.
    #[arg(long, default_value_t = ClassLimits::default().job)]
    pub job_limit: u32,
    /// Concurrent requests of class repair.
    #[arg(long, default_value_t = ClassLimits::default().repair)]
    pub repair_limit: u32,
    /// Concurrent requests of class distribution.
    #[arg(long, default_value_t = ClassLimits::default().distribution)]
    pub distribution_limit: u32,
    /// Requests that may work on one stripe at once; more wait in its queue,
    /// where usage quotas decide the order.
    #[arg(long, default_value_t = QuotaConfig::default().per_stripe)]
    pub per_stripe_limit: u32,
    /// Usage quota of a request class, as CLASS=RATE (e.g. repair=200MiB/s).
    /// While a class moves more than its quota, requests of other classes
    /// waiting on the same stripe go first. Repeat for several classes.
    #[arg(long = "quota", value_parser = parse_quota)]
    pub quotas: Vec<(RequestClass, u64)>,
    /// Serve the FaultInjection API (latency, bandwidth cap, hang, errors,
    /// corruption). For tests, demos and benchmarks only.
    #[arg(long)]
    pub enable_fault_injection: bool,
    /// Register with this master (host:port) and report stripes to it.
    #[arg(long, env = "TESSERA_MASTER")]
    pub master: Option<String>,
    /// The address clients use to reach this server (default: the listen
    /// address once bound; required in practice when listening on 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Region of this server's node (failure domain, outermost).
    #[arg(long, default_value = "default")]
    pub region: String,
    /// Zone of this server's node (failure domain).
    #[arg(long, default_value = "default")]
    pub zone: String,
    /// Rack of this server's node (failure domain; the node is --node-id).
    #[arg(long, default_value = "default")]
    pub rack: String,
    /// Most bytes per second the background scrubber reads to check every
    /// stored block against its checksum (e.g. 8MiB/s); 0 turns it off. It
    /// runs in the repair class, so serving reads go first.
    #[arg(long, default_value = "8MiB/s", value_parser = parse_rate)]
    pub scrub_bandwidth: u64,
    /// Time from the start of one full scrub pass to the start of the next
    /// (e.g. 7d); a pass that takes longer is followed at once.
    #[arg(long, default_value = "7d", value_parser = parse_positive_duration)]
    pub scrub_period: Duration,
}

/// Names the process that started a local cluster's child.
pub const PARENT_ENV: &str = "TESSERA_LOCAL_PARENT";

/// In a child of a local cluster (`tessera local up`, the demo, tests; they
/// set `PARENT_ENV`): asks the kernel to send SIGTERM when the parent dies,
/// and exits at once if it already has. A killed supervisor leaves nothing.
pub fn exit_with_parent() {
    let Some(parent) = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // The parent may have died before the request took effect.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        std::process::exit(1);
    }
}

/// The line printed on stdout once the server is ready, for whoever started it.
#[derive(Debug, Serialize)]
struct Ready<'a> {
    event: &'static str,
    node_id: &'a str,
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl ChunkserverArgs {
    pub fn config(&self) -> Config {
        let node_id =
            self.node_id.clone().unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned());
        Config {
            node_id: node_id.clone(),
            listen: self.listen,
            unix_socket: self.unix_socket.clone(),
            metrics_listen: Some(self.metrics_listen),
            data_dirs: self.data_dirs.clone(),
            limits: ClassLimits {
                serving: self.serving_limit,
                job: self.job_limit,
                repair: self.repair_limit,
                distribution: self.distribution_limit,
            },
            quotas: {
                let mut q = QuotaConfig { per_stripe: self.per_stripe_limit, ..Default::default() };
                for (class, rate) in &self.quotas {
                    q.set_quota(*class, Some(*rate));
                }
                q
            },
            enable_fault_injection: self.enable_fault_injection,
            scrub: ScrubConfig { bytes_per_sec: self.scrub_bandwidth, period: self.scrub_period },
            master: self.master.clone().map(|m| {
                let identity = crate::registrar::Identity {
                    server_id: node_id.clone(),
                    address: self.advertise.clone().unwrap_or_default(),
                    topology: tessera_proto::ms::Topology {
                        region: self.region.clone(),
                        zone: self.zone.clone(),
                        rack: self.rack.clone(),
                        node: node_id.clone(),
                    },
                };
                (m, identity)
            }),
        }
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> anyhow::Result<()> {
        exit_with_parent();
        let config = self.config();
        let running = server::start(config.clone()).await?;
        let ready =
            Ready { event: "ready", node_id: &config.node_id, grpc: running.grpc_addr, metrics: running.metrics_addr };
        println!("{}", serde_json::to_string(&ready)?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await
    }
}

/// Parses CLASS=RATE, RATE in bytes per second with an optional binary or
/// decimal unit and an optional "/s": `repair=200MiB/s`, `job=1G`.
fn parse_quota(s: &str) -> Result<(RequestClass, u64), String> {
    let (class, rate) = s.split_once('=').ok_or_else(|| format!("quota {s:?}: expected CLASS=RATE"))?;
    let class = RequestClass::ALL.into_iter().find(|c| c.as_str() == class).ok_or_else(|| {
        let names: Vec<_> = RequestClass::ALL.iter().map(|c| c.as_str()).collect();
        format!("quota {s:?}: unknown class {class:?} (one of {})", names.join(", "))
    })?;
    let rate = parse_rate(rate).map_err(|e| format!("quota {s:?}: {e}"))?;
    Ok((class, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_with_units_and_name_what_is_wrong() {
        assert_eq!(parse_quota("repair=200MiB/s"), Ok((RequestClass::Repair, 200 << 20)));
        assert_eq!(parse_quota("job=3G"), Ok((RequestClass::Job, 3_000_000_000)));
        assert_eq!(parse_quota("serving=10"), Ok((RequestClass::Serving, 10)));
        assert!(parse_quota("repair").unwrap_err().contains("CLASS=RATE"));
        assert!(parse_quota("scrub=1M").unwrap_err().contains("unknown class \"scrub\""));
        assert!(parse_quota("repair=fast").unwrap_err().contains("whole number"));
        assert!(parse_quota("repair=5PB").unwrap_err().contains("unknown unit \"PB\""));
        let args = |extra: &[&str]| {
            #[derive(clap::Parser)]
            struct T {
                #[command(flatten)]
                a: ChunkserverArgs,
            }
            let base = ["t", "--data-dir", "/tmp/x"];
            <T as clap::Parser>::try_parse_from(base.iter().chain(extra)).map(|t| t.a)
        };
        let a = args(&["--scrub-bandwidth", "64MiB/s", "--scrub-period", "1d"]).unwrap();
        assert_eq!(a.config().scrub, ScrubConfig { bytes_per_sec: 64 << 20, period: Duration::from_secs(86_400) });
        assert_eq!(args(&[]).unwrap().config().scrub, ScrubConfig::default());
        let e = args(&["--scrub-period", "0s"]).err().unwrap().to_string();
        assert!(e.contains("--scrub-period"), "{e}");
    }
}
