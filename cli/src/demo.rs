//! `tessera demo`: the one-command tour. Starts a master and chunkservers in
//! three zones on loopback, puts a sample fileset (many small files and a
//! model-sized one), reads its items back in every read mode on a healthy
//! cluster and with one chunkserver slowed down, says what hedging did, then
//! copies the whole version out with a zone stopped.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_client::fileset::{FilesetClient, PutOptions};
use tessera_client::{ClientConfig, StripeClient};
use tessera_core::read_plan::ReadMode;
use tessera_proto::{cs, ms};

use crate::bench::files::{Mix, TreeArgs, generate};
use crate::bench::read_tail::{Dataset, TailResult, bench_client_config, measure};
use crate::local::{ClusterSpec, Launcher, LocalCluster};
use crate::units::{ByteSize, human};

/// Run a local cluster, put a sample fileset, read it back under a slow
/// chunkserver and with a zone down.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Chunkserver processes to start (spread over three zones).
    #[arg(long, default_value_t = 9)]
    pub servers: usize,
    /// Small files in the sample (a software environment's worth).
    #[arg(long, default_value_t = 2000)]
    pub small_files: usize,
    /// Size of the sample's one large file (a model's weights).
    #[arg(long, default_value = "64MiB")]
    pub large_size: ByteSize,
    /// Stripe unit of the sample fileset (RS(6,3)).
    #[arg(long, default_value = "1MiB")]
    pub unit: ByteSize,
    /// Reads per read mode and scenario.
    #[arg(long, default_value_t = 100)]
    pub reads: usize,
    /// Latency injected into the slow chunkserver.
    #[arg(long, default_value_t = 50)]
    pub slow_latency_ms: u64,
}

const FILESET: &str = "demo";

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.servers >= 9, "--servers: RS(6,3) over three zones needs at least 9 chunkservers");
    crate::outln!("Tessera demo: a master and {} chunkservers in 3 zones on loopback.\n", args.servers);

    crate::out!("[1/6] Starting the master and {} chunkserver processes ... ", args.servers);
    let t = Instant::now();
    let spec =
        ClusterSpec { servers: args.servers, zones: 3, master: true, master_args: vec![], chunkserver_args: vec![] };
    let mut cluster = LocalCluster::start_spec(Launcher::from_env()?, &spec, None).await?;
    let fc = FilesetClient::new(
        &cluster.master_addr().expect("started with a master"),
        StripeClient::new(ClientConfig::default()),
    )?;
    wait_registered(&fc, args.servers).await?;
    crate::outln!("done in {:.1} s", t.elapsed().as_secs_f64());

    let scratch = tempfile::Builder::new().prefix("tessera-demo-").tempdir()?;
    let src = scratch.path().join("sample");
    let tree = TreeArgs {
        small_files: args.small_files,
        large_files: 1,
        large_size: args.large_size,
        scratch: scratch.path().into(),
    };
    let (small, small_bytes) = generate(&src.join("env"), Mix::Small, &tree, 1)?;
    let (large, large_bytes) = generate(&src.join("model"), Mix::Large, &tree, 2)?;
    crate::outln!(
        "[2/6] A sample fileset: {small} small files ({}) and {large} large one ({}) in {}",
        human(small_bytes),
        human(large_bytes),
        src.display()
    );

    fc.create_fileset(
        ms::FilesetSpec {
            name: FILESET.into(),
            layout: Some(ms::Layout { k: 6, m: 3, stripe_unit: args.unit.0, block_size: 64 << 10 }),
            placement: Some(ms::PlacementPolicy { level: "zone".into(), max_per_domain: 3 }),
            availability: "high".into(),
            keep_versions: 2,
            ..Default::default()
        },
        true,
    )
    .await?;
    let bar = ProgressBar::new(small_bytes + large_bytes)
        .with_style(ProgressStyle::with_template("      {bar:40} {bytes}/{total_bytes}")?);
    let t = Instant::now();
    let bb = bar.clone();
    let v = fc.put(FILESET, &src, &PutOptions::default(), &move |n| bb.inc(n)).await?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let status = fc.master().status(ms::StatusRequest { fileset: FILESET.into() }).await?.into_inner();
    let per_zone: Vec<String> =
        status.filesets[0].stripes_per_domain.iter().map(|d| format!("{} {}", d.domain, d.stripes)).collect();
    crate::outln!(
        "[3/6] put {FILESET}@{}: {} files, {} in {} items of RS(6,3) in {secs:.2} s ({:.0} MB/s, fsync on every chunkserver)",
        v.id,
        v.files,
        human(v.bytes),
        v.items.len(),
        v.bytes as f64 / secs / 1e6
    );
    crate::outln!(
        "      stripes per zone: {} (at most 3 of an item's 9 in one zone, so any zone can go down)",
        per_zone.join(", ")
    );

    // The version's items, read once as the reference every later read is checked against.
    let open = fc.open(FILESET, v.id).await?;
    let mut contents = Vec::new();
    for loc in open.items() {
        let (data, _) = fc.stripes().read(loc, 0..loc.item_len, ReadMode::Normal).await?;
        let mut whole = Vec::with_capacity(loc.item_len as usize);
        for p in data.parts() {
            whole.extend_from_slice(p);
        }
        contents.push(Bytes::from(whole));
    }
    let ds = Dataset { locations: open.items().to_vec(), contents };

    let config = bench_client_config(Duration::from_millis(200));
    let budget = Duration::from_secs(30);
    crate::outln!("[4/6] Reading the items back, {} reads per mode, healthy cluster", args.reads);
    let mut healthy = Vec::new();
    for mode in ReadMode::ALL {
        let r = measure("healthy", &ds, mode, config.clone(), 10, args.reads, budget).await?;
        line(&r);
        healthy.push(r);
    }

    let slow = &cluster.servers[0];
    crate::outln!(
        "[5/6] Slowing {} down by {} ms per request (fault injection) and reading again",
        slow.node_id,
        args.slow_latency_ms
    );
    slow.set_faults(cs::Faults { latency_ms: args.slow_latency_ms, ..Default::default() }).await?;
    let mut slowed = Vec::new();
    for mode in ReadMode::ALL {
        let r = measure("slow", &ds, mode, config.clone(), 10, args.reads, budget).await?;
        line(&r);
        slowed.push(r);
    }
    slow.clear_faults().await?;
    let slow_name = slow.node_id.clone();

    let zone = cluster.zone("z1");
    crate::outln!("[6/6] Stopping zone z1 ({} chunkservers) and copying {FILESET}@{} out with get", zone.len(), v.id);
    for &i in &zone {
        cluster.servers[i].kill().await?;
    }
    let dest = scratch.path().join("copy");
    let t = Instant::now();
    let got = open.get(fc.stripes(), &dest, ReadMode::Hedged, &|_| {}).await?;
    crate::outln!(
        "      {} files, {} directories, {} in {:.2} s, every file checked against its SHA-256 from the manifest",
        got.files,
        got.dirs,
        human(got.bytes),
        t.elapsed().as_secs_f64()
    );
    for &i in &zone {
        cluster.restart(i).await?;
    }

    let base = healthy[0].p99_ms;
    let (n, h, a) = (&slowed[0], &slowed[1], &slowed[2]);
    crate::outln!("\nWhat hedging did with {slow_name} slowed by {} ms:", args.slow_latency_ms);
    crate::outln!(
        "  normal reads wait for every data stripe: p99 {:.1} ms, {:.1}x the healthy p99 of {:.1} ms.",
        n.p99_ms,
        n.p99_ms / base,
        base
    );
    crate::outln!(
        "  hedged reads rebuilt the slow stripe from parity in {} of {} reads: p99 {:.1} ms ({:.2}x healthy),",
        h.hedges_won,
        h.reads,
        h.p99_ms,
        h.p99_ms / base
    );
    crate::outln!("    fetching {:.2} bytes per byte returned.", h.amplification);
    crate::outln!(
        "  accelerated reads asked all 9 stripes at once and kept the first 6: p99 {:.1} ms ({:.2}x healthy),",
        a.p99_ms,
        a.p99_ms / base
    );
    crate::outln!("    fetching {:.2} bytes per byte returned (at most n/k = 1.50).", a.amplification);
    crate::outln!("Every read was checked byte for byte, and every block against its CRC32C.");
    crate::outln!(
        "Next: `tessera local up` keeps a cluster running; `tessera put DIR --fileset NAME` stores your own."
    );
    Ok(())
}

async fn wait_registered(fc: &FilesetClient, servers: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = fc.master().status(ms::StatusRequest::default()).await?.into_inner();
        if st.servers.iter().filter(|s| s.live).count() == servers {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "chunkservers did not register with the master within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn line(r: &TailResult) {
    crate::outln!(
        "      {:<12} p50 {:>6.1} ms   p99 {:>6.1} ms   {:>5.0} MB/s   amplification {:.2}   hedges {} (won {})",
        r.mode,
        r.p50_ms,
        r.p99_ms,
        r.mb_per_s,
        r.amplification,
        r.hedges,
        r.hedges_won
    );
}
