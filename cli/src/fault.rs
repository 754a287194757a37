//! `tessera fault`: set or clear the injected faults of a chunkserver started
//! with `--enable-fault-injection`.

use clap::Args;
use tessera_proto::cs;
use tessera_proto::cs::fault_injection_client::FaultInjectionClient;

/// Inject faults into a chunkserver (it must run with --enable-fault-injection).
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// The chunkserver's gRPC address (host:port).
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

pub async fn run(a: &FaultArgs) -> anyhow::Result<()> {
    let mut c = FaultInjectionClient::connect(format!("http://{}", a.server)).await?;
    let now = if a.show {
        c.get_faults(cs::GetFaultsRequest {}).await?.into_inner()
    } else {
        let f = cs::Faults {
            latency_ms: a.latency_ms,
            bandwidth_bytes_per_sec: a.bandwidth,
            hang: a.hang,
            error_rate: a.error_rate,
            corrupt_rate: a.corrupt_rate,
        };
        c.set_faults(f).await?.into_inner()
    };
    println!(
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
