//! `tessera bench …`: system figures, each beside a baseline measured in the
//! same run.

pub mod codec;
pub mod read_tail;
pub mod seq_read;

use clap::Subcommand;

use crate::local::Launcher;

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Encode and decode throughput of the erasure codec, beside memcpy.
    Codec(codec::CodecArgs),
    /// Read latency percentiles of every read mode, healthy and with slow or hung servers.
    ReadTail(read_tail::ReadTailArgs),
    /// Sequential read throughput of one client, beside raw loopback TCP.
    SeqRead(seq_read::SeqReadArgs),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Codec(a) => codec::print(&codec::run(&a)?, a.json),
        BenchCommand::ReadTail(a) => {
            if !a.json {
                read_tail::print_header();
            }
            let json = a.json;
            read_tail::run(&a, Launcher::from_env()?, |r| read_tail::print_row(r, json)).await?;
            Ok(())
        }
        BenchCommand::SeqRead(a) => seq_read::print(&seq_read::run(&a, Launcher::from_env()?).await?, a.json),
    }
}
