//! `tessera bench put`, `tessera bench get` and `tessera bench repair`:
//! filesets through a local cluster (a master and chunkserver processes),
//! beside `cp -r` of the same tree to tmpfs measured in the same run.
//!
//! Two generated trees: a small-file mix (thousands of files from a few bytes
//! to 64 KiB in nested directories, the shape of a software environment) and
//! a large-file mix (a few files of hundreds of MiB, the shape of a model).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tessera_client::fileset::{FilesetClient, PutOptions};
use tessera_client::{ClientConfig, StripeClient};
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;

use crate::local::{ClusterSpec, Launcher, LocalCluster};
use crate::units::ByteSize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    Small,
    Large,
    Both,
}

impl Mix {
    fn each(self) -> Vec<Mix> {
        match self {
            Mix::Both => vec![Mix::Small, Mix::Large],
            m => vec![m],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mix::Small => "small",
            Mix::Large => "large",
            Mix::Both => "both",
        }
    }
}

/// The generated trees.
#[derive(Debug, Clone, Args)]
pub struct TreeArgs {
    /// Files in the small-file mix (1 B to 64 KiB each, in nested directories).
    #[arg(long, default_value_t = 5000)]
    pub small_files: usize,
    /// Files in the large-file mix.
    #[arg(long, default_value_t = 4)]
    pub large_files: usize,
    /// Size of each file of the large-file mix.
    #[arg(long, default_value = "128MiB")]
    pub large_size: ByteSize,
    /// Where the trees and their copies are made (a tmpfs, so the baseline
    /// measures the copy and not a disk).
    #[arg(long, default_value = "/dev/shm")]
    pub scratch: PathBuf,
}

/// The local cluster the benchmark runs against.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Chunkserver processes to start.
    #[arg(long, default_value_t = 9)]
    pub servers: usize,
    /// Zones they are spread over.
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Where chunkservers keep their stripes (default: a temporary
    /// directory under $TMPDIR, usually a disk; stripes are fsynced).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Stripe unit of the benchmark's filesets (RS(6,3)).
    #[arg(long, default_value = "1MiB")]
    pub unit: ByteSize,
    /// Items written at once by a put.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

/// Measure `tessera put` (or `get`) of generated trees against `cp -r` to tmpfs.
#[derive(Debug, Clone, Args)]
pub struct FilesArgs {
    /// Which tree: small, large or both.
    #[arg(long, value_enum, default_value = "both")]
    pub mix: Mix,
    #[command(flatten)]
    pub tree: TreeArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Read mode of `get`.
    #[arg(long, default_value = "hedged")]
    pub mode: ReadMode,
    /// Print one JSON object per mix.
    #[arg(long)]
    pub json: bool,
}

/// Measure repair after a chunkserver is lost for good.
#[derive(Debug, Clone, Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub tree: TreeArgs,
    /// Chunkserver processes (spares in every zone to rebuild into).
    #[arg(long, default_value_t = 12)]
    pub servers: usize,
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    #[arg(long, default_value = "1MiB")]
    pub unit: ByteSize,
    /// The master's repair bandwidth limit in MiB/s (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub repair_mib_per_sec: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct FilesReport {
    pub op: &'static str,
    pub mix: Mix,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub files_per_sec: f64,
    pub mb_per_sec: f64,
    /// `cp -r` of the same tree, tmpfs to tmpfs.
    pub cp_seconds: f64,
    pub cp_files_per_sec: f64,
    pub cp_mb_per_sec: f64,
    /// Tessera's MB/s over cp's.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub lost_server: String,
    pub lost_stripes: u64,
    pub repaired_stripes: u64,
    pub repaired_bytes: u64,
    /// From the kill until the master marked the server lost (heartbeat timeout).
    pub detect_seconds: f64,
    /// From then until every item was back at full redundancy.
    pub repair_seconds: f64,
    pub repair_mb_per_sec: f64,
    pub repair_limit_mib_per_sec: u64,
    pub placement_violations: u64,
    /// `cp -r` of the fileset's tree, tmpfs to tmpfs, for scale.
    pub cp_mb_per_sec: f64,
}

/// Writes a tree of the given mix; returns (files, bytes).
pub fn generate(root: &Path, mix: Mix, t: &TreeArgs, seed: u64) -> anyhow::Result<(u64, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root)?;
    let (mut files, mut bytes) = (0u64, 0u64);
    match mix {
        Mix::Small => {
            let mut buf = vec![0u8; 64 << 10];
            for i in 0..t.small_files {
                // Directories three deep, ~50 files each, like a package tree.
                let dir = root.join(format!("d{}/e{}/f{}", i / 2500, (i / 250) % 10, (i / 50) % 5));
                std::fs::create_dir_all(&dir)?;
                // Mostly small, a few near the top: sizes skewed toward 0.
                let r: f64 = rng.random();
                let len = ((r * r * r) * (64 << 10) as f64) as usize + 1;
                rng.fill(&mut buf[..len]);
                std::fs::write(dir.join(format!("file{i}.dat")), &buf[..len])?;
                files += 1;
                bytes += len as u64;
            }
        }
        Mix::Large => {
            let mut buf = vec![0u8; 1 << 20];
            for i in 0..t.large_files {
                use std::io::Write;
                let mut f = std::io::BufWriter::new(std::fs::File::create(root.join(format!("weights-{i}.bin")))?);
                let mut left = t.large_size.0;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    rng.fill(&mut buf[..n]);
                    f.write_all(&buf[..n])?;
                    left -= n as u64;
                }
                f.flush()?;
                files += 1;
                bytes += t.large_size.0;
            }
        }
        Mix::Both => bail!("generate one mix at a time"),
    }
    Ok((files, bytes))
}

/// `cp -r src dst`, timed.
fn cp_r(src: &Path, dst: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let status = Command::new("cp").arg("-r").arg(src).arg(dst).status().context("running cp -r")?;
    anyhow::ensure!(status.success(), "cp -r {} {} failed", src.display(), dst.display());
    Ok(t.elapsed().as_secs_f64())
}

/// A local cluster with a master, and a client of it, for the benchmarks.
pub(crate) struct Bench {
    pub(crate) cluster: LocalCluster,
    pub(crate) client: FilesetClient,
    pub(crate) scratch: tempfile::TempDir,
}

impl Bench {
    pub(crate) async fn start(
        servers: usize,
        zones: usize,
        data_root: Option<&Path>,
        scratch: &Path,
        master_args: Vec<String>,
        chunkserver_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("tessera-bench-")
            .tempdir_in(scratch)
            .with_context(|| format!("making a scratch dir in {}", scratch.display()))?;
        let spec = ClusterSpec { servers, zones, master: true, master_args, chunkserver_args };
        let cluster = LocalCluster::start_spec(Launcher::from_env()?, &spec, data_root).await?;
        let addr = cluster.master_addr().expect("started with a master");
        let client = FilesetClient::new(&addr, StripeClient::new(ClientConfig::default()))?;
        let b = Self { cluster, client, scratch };
        b.until("every chunkserver to register", Duration::from_secs(60), |st| {
            st.servers.iter().filter(|s| s.live).count() == servers
        })
        .await?;
        Ok(b)
    }

    pub(crate) async fn status(&self) -> anyhow::Result<ms::StatusResponse> {
        Ok(self.client.master().status(ms::StatusRequest::default()).await?.into_inner())
    }

    /// Polls the master until `cond` holds; returns the status that satisfied it.
    pub(crate) async fn until(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&ms::StatusResponse) -> bool,
    ) -> anyhow::Result<ms::StatusResponse> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status().await?;
            if cond(&st) {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("gave up waiting for {what} after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn fileset(&self, name: &str, unit: ByteSize, availability: &str) -> anyhow::Result<()> {
        let spec = ms::FilesetSpec {
            name: name.to_string(),
            layout: Some(ms::Layout { k: 6, m: 3, stripe_unit: unit.0, block_size: 64 << 10 }),
            placement: Some(ms::PlacementPolicy { level: "zone".into(), max_per_domain: 3 }),
            availability: availability.to_string(),
            keep_versions: 1,
            ..Default::default()
        };
        self.client.create_fileset(spec, false).await?;
        Ok(())
    }

    pub(crate) async fn put(&self, fileset: &str, src: &Path, parallel: usize) -> anyhow::Result<(ms::Version, f64)> {
        let options = PutOptions { parallel_items: parallel, ..Default::default() };
        let t = Instant::now();
        let v = self.client.put(fileset, src, &options, &|_| {}).await?;
        Ok((v, t.elapsed().as_secs_f64()))
    }
}

fn report(op: &'static str, mix: Mix, files: u64, bytes: u64, seconds: f64, cp_seconds: f64) -> FilesReport {
    let mb = bytes as f64 / 1e6;
    FilesReport {
        op,
        mix,
        files,
        bytes,
        seconds,
        files_per_sec: files as f64 / seconds,
        mb_per_sec: mb / seconds,
        cp_seconds,
        cp_files_per_sec: files as f64 / cp_seconds,
        cp_mb_per_sec: mb / cp_seconds,
        ratio: cp_seconds / seconds,
    }
}

/// `tessera bench put` (`get == false`) or `tessera bench get`.
pub async fn run_files(
    a: &FilesArgs,
    get: bool,
    mut emit: impl FnMut(&FilesReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let c = &a.cluster;
    let b = Bench::start(c.servers, c.zones, c.data_root.as_deref(), &a.tree.scratch, vec![], vec![]).await?;
    for (i, mix) in a.mix.each().into_iter().enumerate() {
        let src = b.scratch.path().join(format!("src-{}", mix.name()));
        let (files, bytes) = generate(&src, mix, &a.tree, 42 + i as u64)?;
        let cp_seconds = cp_r(&src, &b.scratch.path().join(format!("cp-{}", mix.name())))?;
        std::fs::remove_dir_all(b.scratch.path().join(format!("cp-{}", mix.name())))?;
        let fileset = format!("bench-{}", mix.name());
        b.fileset(&fileset, c.unit, "low").await?;
        let (v, put_seconds) = b.put(&fileset, &src, c.parallel).await?;
        anyhow::ensure!(v.files == files && v.bytes == bytes, "the version holds {} files, {} bytes", v.files, v.bytes);
        let r = if get {
            let dst = b.scratch.path().join(format!("get-{}", mix.name()));
            let open = b.client.open(&fileset, v.id).await?;
            let t = Instant::now();
            let stats = open.get(b.client.stripes(), &dst, a.mode, &|_| {}).await?;
            let seconds = t.elapsed().as_secs_f64();
            anyhow::ensure!(stats.files == files, "get wrote {} files of {files}", stats.files);
            std::fs::remove_dir_all(&dst)?;
            report("get", mix, files, bytes, seconds, cp_seconds)
        } else {
            report("put", mix, files, bytes, put_seconds, cp_seconds)
        };
        std::fs::remove_dir_all(&src)?;
        emit(&r)?;
    }
    drop(b.cluster);
    Ok(())
}

/// `tessera bench repair`.
pub async fn run_repair(a: &RepairArgs) -> anyhow::Result<RepairReport> {
    let master_args =
        vec!["--heartbeat-timeout=2s".to_string(), format!("--repair-mib-per-sec={}", a.repair_mib_per_sec)];
    let mut b = Bench::start(a.servers, a.zones, a.data_root.as_deref(), &a.tree.scratch, master_args, vec![]).await?;
    let src = b.scratch.path().join("src-large");
    generate(&src, Mix::Large, &a.tree, 7)?;
    let cp_seconds = cp_r(&src, &b.scratch.path().join("cp-large"))?;
    b.fileset("bench-repair", a.unit, "high").await?;
    let (v, _) = b.put("bench-repair", &src, 4).await?;
    let cp_mb_per_sec = v.bytes as f64 / 1e6 / cp_seconds;
    std::fs::remove_dir_all(&src)?;
    std::fs::remove_dir_all(b.scratch.path().join("cp-large"))?;

    let before = b.status().await?;
    let victim = before.servers.iter().max_by_key(|s| s.stripes).context("no chunkservers")?;
    let (lost_server, lost_stripes) = (victim.server_id.clone(), victim.stripes);
    let i = b.cluster.servers.iter().position(|s| s.node_id == lost_server).context("the victim is not local")?;
    let fileset_of = |st: &ms::StatusResponse| st.filesets.iter().find(|f| f.name == "bench-repair").cloned();
    let killed = Instant::now();
    b.cluster.servers[i].kill().await?;
    // Noticed when the master marks the server lost (a small repair can
    // finish between two polls, so degraded counts may never be seen).
    b.until("the loss to be noticed", Duration::from_secs(60), |st| {
        st.servers.iter().any(|s| s.server_id == lost_server && !s.live)
    })
    .await?;
    let detect_seconds = killed.elapsed().as_secs_f64();
    let detected = Instant::now();
    let done = b
        .until("the repair to finish", Duration::from_secs(3600), |st| {
            fileset_of(st).is_some_and(|f| f.degraded == 0 && f.repairing == 0)
        })
        .await?;
    let repair_seconds = detected.elapsed().as_secs_f64();
    let f = fileset_of(&done).context("the fileset vanished")?;
    let full = f.items_by_redundancy.last().copied().unwrap_or(0);
    anyhow::ensure!(full == f.items, "{} of {} items at full redundancy after the repair", full, f.items);
    let repaired_bytes = done.repaired_bytes - before.repaired_bytes;
    Ok(RepairReport {
        lost_server,
        lost_stripes,
        repaired_stripes: done.repaired_stripes - before.repaired_stripes,
        repaired_bytes,
        detect_seconds,
        repair_seconds,
        repair_mb_per_sec: repaired_bytes as f64 / 1e6 / repair_seconds,
        repair_limit_mib_per_sec: a.repair_mib_per_sec,
        placement_violations: f.placement_violations,
        cp_mb_per_sec,
    })
}

pub fn print_files_header() {
    crate::outln!(
        "{:<4} {:<6} {:>7} {:>10} {:>9} {:>10} {:>9} {:>10} {:>9} {:>7}",
        "op",
        "mix",
        "files",
        "MB",
        "seconds",
        "files/s",
        "MB/s",
        "cp files/s",
        "cp MB/s",
        "ratio"
    );
}

pub fn print_files_row(r: &FilesReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string(r)?);
    } else {
        crate::outln!(
            "{:<4} {:<6} {:>7} {:>10.1} {:>9.2} {:>10.0} {:>9.1} {:>10.0} {:>9.1} {:>6.2}x",
            r.op,
            r.mix.name(),
            r.files,
            r.bytes as f64 / 1e6,
            r.seconds,
            r.files_per_sec,
            r.mb_per_sec,
            r.cp_files_per_sec,
            r.cp_mb_per_sec,
            r.ratio
        );
    }
    Ok(())
}

pub fn print_repair(r: &RepairReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let limit = match r.repair_limit_mib_per_sec {
        0 => "unlimited".to_string(),
        n => format!("limit {n} MiB/s"),
    };
    crate::outln!("lost {} holding {} stripes", r.lost_server, r.lost_stripes);
    crate::outln!("noticed after {:.1} s (heartbeat timeout)", r.detect_seconds);
    crate::outln!(
        "rebuilt {} stripes, {:.1} MB in {:.2} s: {:.1} MB/s ({limit}); cp -r to tmpfs {:.1} MB/s",
        r.repaired_stripes,
        r.repaired_bytes as f64 / 1e6,
        r.repair_seconds,
        r.repair_mb_per_sec,
        r.cp_mb_per_sec
    );
    crate::outln!("placement violations afterwards: {}", r.placement_violations);
    Ok(())
}
