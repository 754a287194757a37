//! `tessera bench …`: system figures, each beside a baseline measured in the
//! same run.

pub mod codec;
pub mod files;
pub mod jobs;
pub mod read_tail;
pub mod seq_read;
pub mod soak;

use clap::{Args, Subcommand};
use tessera_core::layout::{Layout, LayoutError};

use crate::local::Launcher;
use crate::units::ByteSize;

/// The erasure code's shape and stripe unit.
#[derive(Debug, Clone, Args)]
pub struct CodeArgs {
    /// Data stripes per item (k).
    #[arg(long, default_value_t = 6)]
    pub k: usize,
    /// Parity stripes per item (m).
    #[arg(long, default_value_t = 3)]
    pub m: usize,
    /// Stripe unit (bytes per stripe per item).
    #[arg(long, default_value = "1MiB")]
    pub unit: ByteSize,
}

/// The erasure layout a command stores its data with.
#[derive(Debug, Clone, Args)]
pub struct LayoutArgs {
    #[command(flatten)]
    pub code: CodeArgs,
    /// Checksum block size.
    #[arg(long, default_value = "64KiB")]
    pub block: ByteSize,
}

impl LayoutArgs {
    pub fn layout(&self) -> Result<Layout, LayoutError> {
        Layout::new(self.code.k, self.code.m, self.code.unit.0 as usize, self.block.0 as usize)
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Encode and decode throughput of the erasure codec, beside memcpy.
    Codec(codec::CodecArgs),
    /// Read latency percentiles of every read mode, healthy and with slow or hung servers.
    ReadTail(read_tail::ReadTailArgs),
    /// Sequential read throughput of one client, beside raw loopback TCP.
    SeqRead(seq_read::SeqReadArgs),
    /// `put` of generated trees (small files, large files) beside `cp -r` to tmpfs.
    Put(files::FilesArgs),
    /// `get` of generated trees, every file verified, beside `cp -r` to tmpfs.
    Get(files::FilesArgs),
    /// Repair throughput after a chunkserver is lost for good.
    Repair(files::RepairArgs),
    /// Job makespans under each straggler policy (none, accelerate, backup,
    /// default), healthy, with a slowed chunkserver and with a slowed task
    /// node, each beside "none" in the same run.
    Jobs(jobs::JobsArgs),
    /// Kill, freeze and corrupt at random during puts and gets; check that
    /// every listed version reads back exact and redundancy returns.
    Soak(soak::SoakArgs),
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
        BenchCommand::Put(a) => bench_files(&a, false).await,
        BenchCommand::Get(a) => bench_files(&a, true).await,
        BenchCommand::Repair(a) => files::print_repair(&files::run_repair(&a).await?, a.json),
        BenchCommand::Jobs(a) => {
            if !a.json {
                jobs::print_header();
            }
            jobs::run(&a, |r| jobs::print_row(r, a.json)).await?;
            Ok(())
        }
        BenchCommand::Soak(a) => soak::print(&soak::run(&a).await?, a.json),
        BenchCommand::SeqRead(a) => seq_read::print(&seq_read::run(&a, Launcher::from_env()?).await?, a.json),
    }
}

async fn bench_files(a: &files::FilesArgs, get: bool) -> anyhow::Result<()> {
    if !a.json {
        files::print_files_header();
    }
    files::run_files(a, get, |r| files::print_files_row(r, a.json)).await
}
