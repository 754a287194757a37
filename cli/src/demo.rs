//! `tessera demo`: the one-command tour. Starts chunkservers on loopback,
//! stores a sample, reads it back in every read mode on a healthy cluster and
//! with one chunkserver slowed down, and says what hedging did.

use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_core::read_plan::ReadMode;
use tessera_proto::cs;

use crate::bench::read_tail::{self, TailResult, bench_client_config, measure};
use crate::local::{Launcher, LocalCluster};
use crate::units::{ByteSize, human};

/// Run a local cluster, store a sample, read it back under a slow chunkserver.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Chunkserver processes to start.
    #[arg(long, default_value_t = 9)]
    pub servers: usize,
    #[command(flatten)]
    pub layout: crate::bench::LayoutArgs,
    /// Size of the sample stored (rounded up to whole items).
    #[arg(long, default_value = "96MiB")]
    pub size: ByteSize,
    /// Reads per read mode and scenario.
    #[arg(long, default_value_t = 100)]
    pub reads: usize,
    /// Latency injected into the slow chunkserver.
    #[arg(long, default_value_t = 50)]
    pub slow_latency_ms: u64,
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let layout = args.layout.layout()?;
    let items = args.size.0.div_ceil(layout.item_capacity()).max(1) as usize;
    println!(
        "Tessera demo: {} chunkservers on loopback, RS({},{}) with {} stripe units.\n",
        args.servers,
        layout.k(),
        layout.m(),
        ByteSize(layout.stripe_unit() as u64)
    );

    print!("[1/4] Starting {} chunkserver processes ... ", args.servers);
    let t = Instant::now();
    let cluster = LocalCluster::start(Launcher::from_env()?, args.servers, None).await?;
    println!("done in {:.1} s", t.elapsed().as_secs_f64());

    let bytes = items as u64 * layout.item_capacity();
    println!(
        "[2/4] Storing a {} sample as {items} items of {} ({} stripes, each with a CRC32C per {} block)",
        human(bytes),
        human(layout.item_capacity()),
        items * layout.n(),
        human(layout.block_size() as u64)
    );
    let bar =
        ProgressBar::new(items as u64).with_style(ProgressStyle::with_template("      {bar:40} {pos}/{len} items")?);
    let t = Instant::now();
    let ds = read_tail::write_dataset(&cluster.addrs(), layout, items, 2026, || bar.inc(1)).await?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "      stored in {secs:.2} s ({:.0} MB/s, durable: fsync + rename on every chunkserver)",
        bytes as f64 / secs / 1e6
    );

    let config = bench_client_config(Duration::from_millis(200));
    let budget = Duration::from_secs(30);
    println!("[3/4] Reading every item back, {} reads per mode, healthy cluster", args.reads);
    let mut healthy = Vec::new();
    for mode in ReadMode::ALL {
        let r = measure("healthy", &ds, mode, config.clone(), 10, args.reads, budget).await?;
        line(&r);
        healthy.push(r);
    }

    let slow = &cluster.servers[0];
    println!(
        "[4/4] Slowing {} down by {} ms per request (fault injection) and reading again",
        slow.node_id, args.slow_latency_ms
    );
    slow.set_faults(cs::Faults { latency_ms: args.slow_latency_ms, ..Default::default() }).await?;
    let mut slowed = Vec::new();
    for mode in ReadMode::ALL {
        let r = measure("slow", &ds, mode, config.clone(), 10, args.reads, budget).await?;
        line(&r);
        slowed.push(r);
    }
    slow.clear_faults().await?;

    let base = healthy[0].p99_ms;
    let (n, h, a) = (&slowed[0], &slowed[1], &slowed[2]);
    println!("\nWhat hedging did with {} slowed by {} ms:", slow.node_id, args.slow_latency_ms);
    println!(
        "  normal reads wait for every data stripe: p99 {:.1} ms, {:.1}x the healthy p99 of {:.1} ms.",
        n.p99_ms,
        n.p99_ms / base,
        base
    );
    println!(
        "  hedged reads rebuilt the slow stripe from parity in {} of {} reads: p99 {:.1} ms ({:.2}x healthy),",
        h.hedges_won,
        h.reads,
        h.p99_ms,
        h.p99_ms / base
    );
    println!("    fetching {:.2} bytes per byte returned.", h.amplification);
    println!(
        "  accelerated reads asked all {} stripes at once and kept the first {}: p99 {:.1} ms ({:.2}x healthy),",
        layout.n(),
        layout.k(),
        a.p99_ms,
        a.p99_ms / base
    );
    println!(
        "    fetching {:.2} bytes per byte returned (at most n/k = {:.2}).",
        a.amplification,
        layout.n() as f64 / layout.k() as f64
    );
    println!("Every read was checked byte for byte against the sample, and every block against its CRC32C.");
    Ok(())
}

fn line(r: &TailResult) {
    println!(
        "      {:<12} p50 {:>6.1} ms   p99 {:>6.1} ms   {:>5.0} MB/s   amplification {:.2}   hedges {} (won {})",
        r.mode, r.p50_ms, r.p99_ms, r.mb_per_s, r.amplification, r.hedges, r.hedges_won
    );
}
