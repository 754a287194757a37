//! `tessera-chunkserver`: the chunkserver binary.

use clap::Parser;
use tessera_chunkserver::cli::ChunkserverArgs;

#[derive(Parser)]
#[command(name = "tessera-chunkserver", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: ChunkserverArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    Cli::parse().args.run().await
}
