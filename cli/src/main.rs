//! `tessera`: the command-line tool of Tessera.

use clap::{Parser, Subcommand};
use tessera_chunkserver::cli::ChunkserverArgs;
use tessera_cli::{bench, demo, fault, files, job, local_up, promote, sim};
use tessera_master::cli::MasterArgs;

/// Tessera stores immutable filesets erasure-coded across chunkservers and reads
/// them back fast even when a server is slow, hung, dead or corrupt.
#[derive(Parser)]
#[command(name = "tessera", version, propagate_version = true)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. info or tessera_client=debug.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// The master (host:port); by default the local cluster's.
    #[arg(long, global = true, env = "TESSERA_MASTER")]
    master: Option<String>,
    /// How long to wait for each answer of the master (e.g. 10s, 500ms);
    /// a command fails naming the master when it does not answer in time.
    #[arg(long, global = true, env = "TESSERA_MASTER_TIMEOUT", default_value = "10s", value_parser = tessera_core::units::parse_positive_duration)]
    master_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start local chunkservers, store a sample, and read it back under an
    /// injected slow chunkserver, comparing the read modes.
    Demo(demo::DemoArgs),
    /// A local cluster on this machine.
    #[command(subcommand)]
    Local(LocalCommand),
    /// Upload a directory (or file) as a new version of a fileset.
    Put(files::PutArgs),
    /// List filesets, or the entries of a version (NAME[@VERSION][/PATH]).
    Ls(files::LsArgs),
    /// Print a file of a version (NAME[@VERSION]/PATH).
    Cat(files::CatArgs),
    /// Copy a version into a local directory, checking every file.
    Get(files::GetArgs),
    /// List the versions of a fileset.
    Versions(files::VersionsArgs),
    /// Chunkservers and the redundancy of the filesets.
    Status(files::StatusArgs),
    /// Delete a version (NAME@VERSION) or a fileset (NAME).
    Rm(files::RmArgs),
    /// Store a leaf volume's files as a new version of a fileset (asks the
    /// CSI node plugin on the leaf's node).
    Promote(promote::PromoteArgs),
    /// Jobs over a fileset version (the Job kind's manifests).
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Benchmarks, each beside a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Simulators that drive Tessera's decision code at scales one machine
    /// cannot run for real.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Inject faults, or stop and start parts of the local cluster.
    #[command(subcommand)]
    Fault(fault::FaultCommand),
    /// Run a chunkserver (the same program as tessera-chunkserver).
    Chunkserver(ChunkserverArgs),
    /// Run the master.
    Master(MasterArgs),
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Run a master and chunkservers on loopback in the foreground.
    Up(local_up::UpArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let r = files::Remote { master: cli.master.clone(), timeout: cli.master_timeout };
    let master = &r;
    let result = match cli.command {
        Command::Demo(a) => demo::run(&a).await,
        Command::Local(LocalCommand::Up(a)) => local_up::up(&a).await,
        Command::Put(a) => files::put(master, &a).await,
        Command::Ls(a) => files::ls(master, &a).await,
        Command::Cat(a) => files::cat(master, &a).await,
        Command::Get(a) => files::get(master, &a).await,
        Command::Versions(a) => files::versions(master, &a).await,
        Command::Status(a) => files::status(master, &a).await,
        Command::Rm(a) => files::rm(master, &a).await,
        Command::Promote(a) => promote::run(&a).await,
        Command::Job(j) => job::run(master, &j).await,
        Command::Bench(b) => bench::run(b).await,
        Command::Sim(s) => sim::run(s),
        Command::Fault(f) => fault::run(&f).await,
        Command::Chunkserver(a) => a.run().await,
        Command::Master(a) => {
            tessera_cli::local::exit_with_parent();
            a.run().await
        }
    };
    if let Err(e) = result {
        // `tessera cat big | head`: the reader went away, which is no error.
        if e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
        {
            std::process::exit(0);
        }
        eprintln!("error: {}", files::explain(&r, &e));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // Catches, among others, a global flag whose name a subcommand reuses.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
