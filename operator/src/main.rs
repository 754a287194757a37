//! `tessera-operator`: the Kubernetes operator of Tessera.

use clap::{Parser, Subcommand};

/// The Tessera operator: Fileset and Priority controllers around the master.
#[derive(Parser)]
#[command(name = "tessera-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML) for `kubectl apply -f -`.
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", tessera_operator::crd::render_yaml()?),
    }
    Ok(())
}
