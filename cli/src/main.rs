//! `tessera`: the command-line tool of Tessera.

use clap::{Parser, Subcommand};
use tessera_chunkserver::cli::ChunkserverArgs;
use tessera_cli::{bench, demo, fault};

/// Tessera stores immutable filesets erasure-coded across chunkservers and reads
/// them back fast even when a server is slow, hung, dead or corrupt.
#[derive(Parser)]
#[command(name = "tessera", version, propagate_version = true)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. info or tessera_client=debug.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start local chunkservers, store a sample, and read it back under an
    /// injected slow chunkserver, comparing the read modes.
    Demo(demo::DemoArgs),
    /// Benchmarks, each beside a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run a chunkserver (the same program as tessera-chunkserver).
    Chunkserver(ChunkserverArgs),
    /// Set or show the injected faults of a chunkserver.
    Fault(fault::FaultArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Demo(a) => demo::run(&a).await,
        Command::Bench(b) => bench::run(b).await,
        Command::Chunkserver(a) => a.run().await,
        Command::Fault(a) => fault::run(&a).await,
    }
}
