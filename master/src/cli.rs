//! Command-line arguments of the master (`tessera master`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::MasterConfig;
use crate::server::{self, Config};

/// Run the master: fileset records, placement, stripe locations and repair.
#[derive(Debug, Clone, Args)]
pub struct MasterArgs {
    /// gRPC address. Port 0 picks a free port, printed when ready.
    #[arg(long, default_value = "0.0.0.0:7300")]
    pub listen: SocketAddr,
    /// Address of the HTTP endpoint with /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:7301")]
    pub metrics_listen: SocketAddr,
    /// Directory of the metadata store.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A chunkserver not heard from for this long is not live (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// How long lost stripes of low-availability filesets may come back
    /// before they are rebuilt.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub repair_grace: Duration,
    /// How long stripes nobody owns are kept before they are deleted.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub orphan_grace: Duration,
    /// A write session not used for this long ends.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub session_lease: Duration,
    /// Repair read bandwidth, in MiB/s (0: unlimited).
    #[arg(long, default_value_t = 256)]
    pub repair_mib_per_sec: u64,
    /// Items rebuilt at once.
    #[arg(long, default_value_t = 4)]
    pub repair_parallelism: usize,
}

pub use tessera_core::units::parse_duration;

impl MasterArgs {
    pub fn config(&self) -> Config {
        Config {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            metrics_listen: Some(self.metrics_listen),
            master: MasterConfig {
                heartbeat_timeout: self.heartbeat_timeout,
                // Servers register again within a heartbeat or two; the
                // window ends with the first timeout they could miss.
                relearn_window: self.heartbeat_timeout,
                repair_grace: self.repair_grace,
                orphan_grace: self.orphan_grace,
                session_lease: self.session_lease,
                repair_bytes_per_sec: self.repair_mib_per_sec << 20,
                repair_parallelism: self.repair_parallelism,
                ..Default::default()
            },
        }
    }

    /// Runs until SIGINT or SIGTERM. Prints one JSON line when ready.
    pub async fn run(self) -> anyhow::Result<()> {
        let running = server::start(self.config()).await?;
        let ready = serde_json::json!({
            "event": "ready",
            "grpc": running.addr.to_string(),
            "metrics": running.metrics_addr.map(|a| a.to_string()),
        });
        println!("{ready}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await
    }
}
