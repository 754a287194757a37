//! `tessera sim …`: deterministic simulators that drive Tessera's own
//! decision code at scales one machine cannot run for real.

pub mod jobs;

use clap::Subcommand;

#[derive(Debug, Clone, Subcommand)]
pub enum SimCommand {
    /// A job's tasks on many nodes with slow disks and slow nodes: the
    /// makespan of each straggler policy, beside published anchors.
    Jobs(jobs::SimJobsArgs),
}

pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Jobs(a) => jobs::print(&a, &jobs::run(&a)?),
    }
}
