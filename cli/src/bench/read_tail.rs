//! `tessera bench read-tail`: read latency percentiles of every read mode on
//! real chunkserver processes, healthy and with injected slow or hung servers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use tessera_client::{ClientConfig, ItemLocation, StripeClient};
use tessera_core::ids::ItemId;
use tessera_core::latency::HedgePolicy;
use tessera_core::layout::Layout;
use tessera_core::read_plan::ReadMode;
use tessera_proto::cs;
use tessera_proto::cs::fault_injection_client::FaultInjectionClient;

use crate::local::{ClusterSpec, Launcher, LocalCluster};

/// Measure read latency of every read mode, healthy and under injected faults.
#[derive(Debug, Clone, Args)]
pub struct ReadTailArgs {
    /// Chunkserver processes to start.
    #[arg(long, default_value_t = 9)]
    pub servers: usize,
    /// The layout; each read is one whole item of k x unit bytes.
    #[command(flatten)]
    pub layout: super::LayoutArgs,
    /// Items written before reading.
    #[arg(long, default_value_t = 18)]
    pub items: usize,
    /// Reads measured per scenario and mode.
    #[arg(long, default_value_t = 2000)]
    pub reads: usize,
    /// Unmeasured reads per run first, so the client knows the servers.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Slow down this many chunkservers...
    #[arg(long, default_value_t = 0, conflicts_with = "hang")]
    pub slow: usize,
    /// ...by this much per request.
    #[arg(long, default_value_t = 50)]
    pub slow_latency_ms: u64,
    /// Hang this many chunkservers (they accept requests and never answer).
    #[arg(long, default_value_t = 0)]
    pub hang: usize,
    /// A stripe fetch that takes longer fails (normal reads then rebuild).
    #[arg(long, default_value_t = 200)]
    pub timeout_ms: u64,
    /// Stop a run early after this many seconds (its reads count is reported).
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// Read modes to measure.
    #[arg(long, value_delimiter = ',', default_value = "normal,hedged,accelerated")]
    pub modes: Vec<ReadMode>,
    /// Stripes beyond k an accelerated read asks for at once (default: all m).
    /// Fewer costs the servers less when they share CPUs with each other.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub accelerated_extra: Option<u16>,
    /// Also measure healthy reads with every chunkserver scrubbing at this
    /// rate (e.g. 8MiB/s, the chunkserver's default) beside the same reads
    /// with the scrubbers paused, in alternating rounds on the same servers.
    #[arg(long, value_parser = tessera_core::units::parse_rate)]
    pub scrub_bandwidth: Option<u64>,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// One (scenario, mode) run.
#[derive(Debug, Clone, Serialize)]
pub struct TailResult {
    pub scenario: &'static str,
    pub mode: String,
    pub reads: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mb_per_s: f64,
    /// Bytes fetched from chunkservers / bytes returned.
    pub amplification: f64,
    pub hedges: u64,
    pub hedges_won: u64,
    pub rebuilt: u64,
    pub k: usize,
    pub m: usize,
    pub unit: u64,
    pub servers: usize,
    /// Stripes each accelerated read asked for (accelerated runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerated_stripes: Option<usize>,
    /// Bytes per second the scrubbers verified during the run (scrubbing
    /// runs only), over all servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_mb_per_s: Option<f64>,
}

/// The items a run reads, with their bytes for verification.
pub struct Dataset {
    pub locations: Vec<ItemLocation>,
    pub contents: Vec<Bytes>,
}

/// Writes `items` full items, stripe i of item j on server (i + j) mod S so
/// every server holds data and parity stripes.
pub async fn write_dataset(
    addrs: &[String],
    layout: Layout,
    items: usize,
    seed: u64,
    mut progress: impl FnMut(),
) -> anyhow::Result<Dataset> {
    let client = StripeClient::new(ClientConfig::default());
    let n = layout.n();
    anyhow::ensure!(
        addrs.len() >= n,
        "RS({},{}) needs at least {n} chunkservers, have {}",
        layout.k(),
        layout.m(),
        addrs.len()
    );
    let mut locations = Vec::new();
    let mut contents = Vec::new();
    let len = layout.item_capacity() as usize;
    for j in 0..items {
        let data = Bytes::from(pattern(len, seed ^ (j as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let servers: Vec<String> = (0..n).map(|i| addrs[(i + j) % addrs.len()].clone()).collect();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&seed.to_le_bytes());
        id[8..].copy_from_slice(&(j as u64).to_le_bytes());
        locations.push(client.write_item(ItemId(id), layout, data.clone(), &servers).await?);
        contents.push(data);
        progress();
    }
    Ok(Dataset { locations, contents })
}

/// Deterministic pseudo-random bytes, fast enough for gigabytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Client settings of the benchmarks: fetches time out after `timeout`, and
/// hedges wait at least 1 ms and at most `timeout` / 2.
pub fn bench_client_config(timeout: Duration) -> ClientConfig {
    ClientConfig {
        fetch_timeout: timeout,
        hedge: HedgePolicy { floor: Duration::from_millis(1), ceiling: timeout / 2, ..Default::default() },
        ..Default::default()
    }
}

/// Reads whole items round-robin in `mode` with a fresh client; the first
/// `warmup` reads are not measured. Every read is checked against the
/// dataset.
pub async fn measure(
    scenario: &'static str,
    ds: &Dataset,
    mode: ReadMode,
    config: ClientConfig,
    warmup: usize,
    reads: usize,
    budget: Duration,
) -> anyhow::Result<TailResult> {
    let layout = ds.locations[0].layout;
    let asked = config.accelerated_stripes(layout.k(), layout.m());
    let client = StripeClient::new(config);
    let samples = sample(&client, ds, mode, warmup, reads, budget).await?;
    Ok(samples.summary(scenario, mode, layout, asked))
}

/// What a run of reads measured, mergeable across runs.
#[derive(Debug, Default)]
pub struct Samples {
    lat: Vec<Duration>,
    busy: Duration,
    fetched: u64,
    returned: u64,
    hedges: u64,
    won: u64,
    rebuilt: u64,
}

impl Samples {
    fn absorb(&mut self, o: Samples) {
        self.lat.extend(o.lat);
        self.busy += o.busy;
        self.fetched += o.fetched;
        self.returned += o.returned;
        self.hedges += o.hedges;
        self.won += o.won;
        self.rebuilt += o.rebuilt;
    }

    fn summary(mut self, scenario: &'static str, mode: ReadMode, layout: Layout, asked: usize) -> TailResult {
        let lat = &mut self.lat;
        lat.sort_unstable();
        let q = |p: f64| ms(lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1]);
        TailResult {
            scenario,
            mode: mode.to_string(),
            reads: lat.len(),
            p50_ms: q(0.50),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: ms(*lat.last().unwrap()),
            mb_per_s: self.returned as f64 / self.busy.as_secs_f64() / 1e6,
            amplification: self.fetched as f64 / self.returned as f64,
            hedges: self.hedges,
            hedges_won: self.won,
            rebuilt: self.rebuilt,
            k: layout.k(),
            m: layout.m(),
            unit: layout.stripe_unit() as u64,
            servers: 0,
            accelerated_stripes: (mode == ReadMode::Accelerated).then_some(asked),
            scrub_mb_per_s: None,
        }
    }
}

/// Reads with `client`; the first `warmup` reads are not measured, and the
/// run stops early past `budget` once it has 100 samples.
async fn sample(
    client: &StripeClient,
    ds: &Dataset,
    mode: ReadMode,
    warmup: usize,
    reads: usize,
    budget: Duration,
) -> anyhow::Result<Samples> {
    let mut s = Samples { lat: Vec::with_capacity(reads), ..Default::default() };
    let started = Instant::now();
    for i in 0..warmup + reads {
        let j = i % ds.locations.len();
        let loc = &ds.locations[j];
        let t = Instant::now();
        let (data, report) = client.read(loc, 0..loc.item_len, mode).await?;
        let took = t.elapsed();
        let mut at = 0;
        for p in data.parts() {
            anyhow::ensure!(
                p[..] == ds.contents[j][at..at + p.len()],
                "read of item {j} in {mode} returned wrong bytes"
            );
            at += p.len();
        }
        anyhow::ensure!(at == ds.contents[j].len(), "read of item {j} returned {at} bytes");
        if i >= warmup {
            s.lat.push(took);
            s.busy += took;
            s.fetched += report.bytes_fetched;
            s.returned += report.bytes_returned;
            s.hedges += report.hedges as u64;
            s.won += report.hedges_won as u64;
            s.rebuilt += report.rebuilt as u64;
            if started.elapsed() > budget && s.lat.len() >= 100 {
                break;
            }
        }
    }
    Ok(s)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub async fn run(
    args: &ReadTailArgs,
    launcher: Launcher,
    mut out: impl FnMut(&TailResult),
) -> anyhow::Result<Vec<TailResult>> {
    let layout = args.layout.layout()?;
    anyhow::ensure!(args.slow + args.hang <= args.servers, "cannot fault more servers than are started");
    // With --scrub-bandwidth the servers can scrub (continuously, a pass a
    // second); they are paused except where a run says otherwise.
    let chunkserver_args = match args.scrub_bandwidth {
        Some(rate) => vec![format!("--scrub-bandwidth={rate}"), "--scrub-period=1s".into()],
        None => vec![],
    };
    let spec = ClusterSpec { servers: args.servers, zones: 1, master: false, master_args: vec![], chunkserver_args };
    let cluster = LocalCluster::start_spec(launcher, &spec, None).await?;
    set_scrub_rate(&cluster, 0).await?;
    let ds = write_dataset(&cluster.addrs(), layout, args.items.max(1), 42, || {}).await?;
    let config = ClientConfig {
        accelerated_extra: args.accelerated_extra.map(usize::from),
        ..bench_client_config(Duration::from_millis(args.timeout_ms))
    };
    let budget = Duration::from_secs(args.max_seconds);
    let mut results = Vec::new();
    let mut scenarios: Vec<(&'static str, cs::Faults, usize)> = vec![("healthy", cs::Faults::default(), 0)];
    if args.slow > 0 {
        scenarios.push(("slow", cs::Faults { latency_ms: args.slow_latency_ms, ..Default::default() }, args.slow));
    }
    if args.hang > 0 {
        scenarios.push(("hang", cs::Faults { hang: true, ..Default::default() }, args.hang));
    }
    for (scenario, faults, count) in scenarios {
        for s in &cluster.servers[..count] {
            s.set_faults(faults).await?;
        }
        for &mode in &args.modes {
            let mut r = measure(scenario, &ds, mode, config.clone(), args.warmup, args.reads, budget).await?;
            r.servers = args.servers;
            out(&r);
            results.push(r);
        }
        for s in &cluster.servers[..count] {
            s.clear_faults().await?;
        }
    }
    if let Some(rate) = args.scrub_bandwidth {
        // The same servers and data with the scrubbers paused and running,
        // in alternating rounds, so the machine's drift falls on both.
        const ROUNDS: usize = 5;
        let per_round = args.reads.div_ceil(ROUNDS);
        for &mode in &args.modes {
            let client = StripeClient::new(config.clone());
            let (mut off, mut on) = (Samples::default(), Samples::default());
            let (mut scrubbed, mut scrubbing) = (0, Duration::ZERO);
            // Off, on, on, off, off, on...: neither side always goes first.
            sample(&client, &ds, mode, args.warmup, 0, budget).await?;
            for half in 0..2 * ROUNDS {
                let scrub = half % 4 == 1 || half % 4 == 2;
                set_scrub_rate(&cluster, if scrub { rate } else { 0 }).await?;
                let (before, t) = (scrubbed_bytes(&cluster).await?, Instant::now());
                if scrub {
                    scrubbing_started(&cluster).await?;
                }
                let got = sample(&client, &ds, mode, 0, per_round, budget).await?;
                if scrub {
                    on.absorb(got);
                    scrubbing += t.elapsed();
                    scrubbed += scrubbed_bytes(&cluster).await? - before;
                } else {
                    off.absorb(got);
                }
            }
            set_scrub_rate(&cluster, 0).await?;
            anyhow::ensure!(scrubbed > 0, "the scrubbers did not run during the measurement");
            let asked = config.accelerated_stripes(layout.k(), layout.m());
            let mut without = off.summary("no-scrub", mode, layout, asked);
            let mut with = on.summary("scrubbing", mode, layout, asked);
            with.scrub_mb_per_s = Some(scrubbed as f64 / scrubbing.as_secs_f64() / 1e6);
            for r in [&mut without, &mut with] {
                r.servers = args.servers;
                out(r);
            }
            results.extend([without, with]);
        }
    }
    Ok(results)
}

/// Waits until the scrubbers, just resumed, have verified something.
async fn scrubbing_started(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (before, t) = (scrubbed_bytes(cluster).await?, Instant::now());
    while scrubbed_bytes(cluster).await? == before {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "the scrubbers did not resume within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Sets every server's scrub rate (0 pauses the scrubbers).
pub(crate) async fn set_scrub_rate(cluster: &LocalCluster, bytes_per_sec: u64) -> anyhow::Result<()> {
    for s in &cluster.servers {
        let mut c = FaultInjectionClient::connect(format!("http://{}", s.grpc)).await?;
        c.set_scrub_rate(cs::ScrubRate { bytes_per_sec }).await?;
    }
    Ok(())
}

/// Bytes the cluster's scrubbers have verified so far, from their /metrics.
async fn scrubbed_bytes(cluster: &LocalCluster) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut total = 0;
    for s in &cluster.servers {
        let addr = s.metrics.ok_or_else(|| anyhow::anyhow!("{} has no metrics endpoint", s.node_id))?;
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut text = String::new();
        conn.read_to_string(&mut text).await?;
        let line = text.lines().find(|l| l.starts_with("tessera_chunkserver_scrubbed_bytes_total "));
        total += line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

pub fn print_header() {
    crate::outln!(
        "{:<9} {:<16} {:>6} {:>8} {:>8} {:>9} {:>8} {:>7} {:>12}",
        "scenario",
        "mode (stripes)",
        "reads",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "MB/s",
        "amplif",
        "hedges (won)"
    );
}

pub fn print_row(r: &TailResult, json: bool) {
    if json {
        crate::outln!("{}", serde_json::to_string(r).expect("results serialize"));
    } else {
        crate::outln!(
            "{:<9} {:<16} {:>6} {:>8.2} {:>8.2} {:>9.2} {:>8.0} {:>7.3} {:>12}",
            r.scenario,
            match r.accelerated_stripes {
                Some(n) => format!("{} ({n})", r.mode),
                None => r.mode.clone(),
            },
            r.reads,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.mb_per_s,
            r.amplification,
            format!("{} ({})", r.hedges, r.hedges_won)
        );
        if let Some(rate) = r.scrub_mb_per_s {
            crate::outln!("{:<9} (the scrubbers verified {rate:.1} MB/s meanwhile)", "");
        }
    }
}
