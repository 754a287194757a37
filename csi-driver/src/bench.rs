//! `tessera-csi bench`: volume figures on this machine, each beside a
//! baseline measured in the same run (the same bytes on tmpfs).
//!
//! It stores a sample fileset through a running master (`tessera local up`),
//! then mounts it as real FUSE volumes: sequential reads of a large file
//! cold (from the chunkservers), warm through passthrough from the node file
//! store (a second mount), warm from the node cache through the plugin
//! (a third mount, passthrough off) and warm from the page cache (the same
//! mount again); open+read of
//! many small files; sequential writes into a leaf; and the time to create
//! a leaf over a large and a small root.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tessera_client::fileset::{FilesetClient, PutOptions};
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;

use crate::cache::NodeCache;
use crate::fuse::mount::{mount_fuse, unmount};
use crate::fuse::session::{self, Connection, Filesystem};
use crate::leaffs::LeafFs;
use crate::metrics::Metrics;
use crate::passthrough::{FileStore, IoTable};
use crate::rootfs::RootFs;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub master: String,
    pub dir: PathBuf,
    pub big_bytes: u64,
    pub small_files: usize,
    pub small_bytes: usize,
    pub write_bytes: u64,
    /// Sizes of the roots leaves are created over (each stored, used, deleted).
    pub leaf_roots: Vec<u64>,
}

/// A mounted filesystem served on a thread; unmounted when dropped.
struct Mounted {
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mounted {
    fn new<F: Filesystem>(fs: Arc<F>, dir: &Path, read_only: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dev = mount_fuse(dir, "tessera:bench", read_only)?;
        let rt = tokio::runtime::Handle::current();
        let target = dir.to_path_buf();
        let thread = std::thread::spawn(move || {
            let on_ready = || crate::fuse::mount::set_readahead(&target, crate::fuse::mount::READAHEAD_KB);
            let _ = session::serve(Connection { dev, init: None, adopted: false }, fs, rt, |_| {}, on_ready);
        });
        Ok(Self { dir: dir.to_path_buf(), thread: Some(thread) })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.dir);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes per second reading `path` start to end with 1 MiB reads.
fn read_rate(path: &Path) -> anyhow::Result<f64> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Files per second opening and reading every file in `dir`.
fn small_rate(dir: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut n = 0;
    let mut buf = Vec::new();
    for e in std::fs::read_dir(dir)? {
        buf.clear();
        std::fs::File::open(e?.path())?.read_to_end(&mut buf)?;
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Bytes per second writing `bytes` to a new file with 1 MiB writes, then fsync.
fn write_rate(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let buf = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(bytes as f64 / t.elapsed().as_secs_f64())
}

fn make_tree(root: &Path, c: &BenchConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("small"))?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(root.join("big.bin"))?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = c.big_bytes;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    for i in 0..c.small_files {
        std::fs::write(root.join(format!("small/{i:05}.bin")), vec![(i % 251) as u8; c.small_bytes])?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

async fn store(files: &FilesetClient, name: &str, tree: &Path) -> anyhow::Result<u64> {
    files.create_fileset(ms::FilesetSpec { name: name.into(), ..Default::default() }, true).await?;
    Ok(files.put(name, tree, &PutOptions::default(), &|_| {}).await?.id)
}

fn gbs(rate: f64) -> String {
    format!("{:.2} GB/s", rate / 1e9)
}

/// Runs the benchmark; prints a table and returns it as JSON.
pub async fn run(c: BenchConfig) -> anyhow::Result<serde_json::Value> {
    let files = FilesetClient::new(&c.master, tessera_client::StripeClient::new(Default::default()))?;
    let work = c.dir.join(format!("run-{}", std::process::id()));
    let src = work.join("src");
    make_tree(&src, &c)?;
    let name = format!("csi-bench-{}", std::process::id());
    let version = store(&files, &name, &src).await.context("storing the sample fileset")?;

    // Baseline: the same tree on tmpfs.
    let tmpfs = work.join("tmpfs");
    std::fs::create_dir_all(&tmpfs)?;
    rustix::mount::mount("tmpfs", &tmpfs, "tmpfs", rustix::mount::MountFlags::empty(), None)
        .context("mounting a tmpfs for the baseline (run as root)")?;
    let result = async {
        copy_dir(&src, &tmpfs.join("tree"))?;
        let tmpfs_seq = read_rate(&tmpfs.join("tree/big.bin"))?;
        let tmpfs_small = small_rate(&tmpfs.join("tree/small"))?;
        let tmpfs_write = write_rate(&tmpfs.join("write.bin"), c.write_bytes)?;
        std::fs::remove_file(tmpfs.join("write.bin"))?;

        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(NodeCache::open(&work.join("cache"), 4 * c.big_bytes + (1 << 30), metrics.clone())?);
        let root = |volume: &'static str, name: String, v: u64| {
            let (files, cache, metrics) = (files.clone(), cache.clone(), metrics.clone());
            async move {
                let open = files.open(&name, v).await?;
                anyhow::Ok(Arc::new(RootFs::new(volume, open, files.stripes().clone(), cache, metrics, ReadMode::Hedged)))
            }
        };
        let file_store = Arc::new(FileStore::open(&work.join("files"), 4 * c.big_bytes)?);
        let pass = |fs: &Arc<RootFs>, volume: &str| -> anyhow::Result<()> {
            fs.enable_passthrough(Some(file_store.clone()), IoTable::open(&work.join("io").join(volume), false)?);
            Ok(())
        };
        let r1 = root("cold", name.clone(), version).await?;
        pass(&r1, "cold")?;
        let m1 = Mounted::new(r1.clone(), &work.join("root1"), true)?;
        let p1 = m1.dir.clone();
        let (cold_seq, cold_small) =
            tokio::task::spawn_blocking(move || anyhow::Ok((read_rate(&p1.join("big.bin"))?, small_rate(&p1.join("small"))?)))
                .await??;
        let p1 = m1.dir.clone();
        let warm_page = tokio::task::spawn_blocking(move || read_rate(&p1.join("big.bin"))).await??;
        // The first open stored big.bin whole in the background.
        let big_sha = hex::encode(Sha256::digest(std::fs::read(src.join("big.bin"))?));
        tokio::time::timeout(Duration::from_secs(120), file_store.stored(&big_sha))
            .await
            .context("big.bin was not stored whole within 2 minutes")?;
        let r2 = root("warm", name.clone(), version).await?;
        pass(&r2, "warm")?;
        let m2 = Mounted::new(r2.clone(), &work.join("root2"), true)?;
        let p2 = m2.dir.clone();
        let (warm_pass, warm_small) =
            tokio::task::spawn_blocking(move || anyhow::Ok((read_rate(&p2.join("big.bin"))?, small_rate(&p2.join("small"))?)))
                .await??;
        anyhow::ensure!(r2.passes_through(), "the kernel did not agree to passthrough (Linux 6.9+ is needed)");
        let m3 = Mounted::new(root("plugin", name.clone(), version).await?, &work.join("root3"), true)?;
        let p3 = m3.dir.clone();
        let warm_cache = tokio::task::spawn_blocking(move || read_rate(&p3.join("big.bin"))).await??;

        let leaf = Arc::new(LeafFs::open(&work.join("leaf"), r1.clone(), 4 * c.write_bytes)?);
        let ml = Mounted::new(leaf, &work.join("leafmnt"), false)?;
        let pl = ml.dir.clone();
        let bytes = c.write_bytes;
        let leaf_write = tokio::task::spawn_blocking(move || write_rate(&pl.join("write.bin"), bytes)).await??;
        drop((ml, m3, m2, m1));

        let rows = [
            ("sequential read, cold (chunkservers)", gbs(cold_seq), cold_seq / tmpfs_seq),
            ("sequential read, warm (passthrough, 2nd mount)", gbs(warm_pass), warm_pass / tmpfs_seq),
            ("sequential read, warm (node cache via plugin)", gbs(warm_cache), warm_cache / tmpfs_seq),
            ("sequential read, warm (page cache, same mount)", gbs(warm_page), warm_page / tmpfs_seq),
            ("small files open+read, cold", format!("{cold_small:.0} files/s"), cold_small / tmpfs_small),
            ("small files open+read, warm (node cache)", format!("{warm_small:.0} files/s"), warm_small / tmpfs_small),
            ("leaf sequential write + fsync", gbs(leaf_write), leaf_write / tmpfs_write),
        ];
        println!("{:<48} {:>16} {:>10}", "volume", "rate", "vs tmpfs");
        for (what, rate, ratio) in &rows {
            println!("{what:<48} {rate:>16} {ratio:>9.2}x");
        }
        println!(
            "tmpfs baseline: read {}, {:.0} small files/s, write {}",
            gbs(tmpfs_seq),
            tmpfs_small,
            gbs(tmpfs_write)
        );

        // Leaf creation over roots of each size: stored (one sparse file, so
        // the source costs no disk), a leaf created five times, deleted.
        let mut creation = Vec::new();
        for &size in &c.leaf_roots {
            let tree = work.join(format!("leafroot-{size}"));
            std::fs::create_dir_all(&tree)?;
            std::fs::File::create(tree.join("data.bin"))?.set_len(size)?;
            let fname = format!("{name}-leafroot-{size}");
            let stored = store(&files, &fname, &tree).await;
            std::fs::remove_dir_all(&tree)?;
            let measured = async {
                let base = root("leafroot", fname.clone(), stored?).await?;
                let mut times = Vec::new();
                for i in 0..5 {
                    let t = Instant::now();
                    let leaf = LeafFs::open(&work.join(format!("leaf-{size}-{i}")), base.clone(), 1 << 30)?;
                    times.push(t.elapsed().as_secs_f64());
                    drop(leaf);
                }
                times.sort_by(f64::total_cmp);
                anyhow::Ok(times[times.len() / 2])
            }
            .await;
            let _ = files.master().delete_fileset(ms::DeleteFilesetRequest { name: fname }).await;
            let median = measured?;
            println!("leaf creation over a {} MiB root: {:.2} ms (median of 5)", size >> 20, median * 1e3);
            creation.push(serde_json::json!({"root_bytes": size, "seconds": median}));
        }
        anyhow::Ok(serde_json::json!({
            "tmpfs": {"seq_read_bytes_per_sec": tmpfs_seq, "small_files_per_sec": tmpfs_small, "write_bytes_per_sec": tmpfs_write},
            "cold_seq_read_bytes_per_sec": cold_seq, "warm_cache_seq_read_bytes_per_sec": warm_cache,
            "warm_passthrough_seq_read_bytes_per_sec": warm_pass,
            "warm_page_seq_read_bytes_per_sec": warm_page, "cold_small_files_per_sec": cold_small,
            "warm_small_files_per_sec": warm_small, "leaf_write_bytes_per_sec": leaf_write,
            "leaf_create": creation,
        }))
    }
    .await;
    let _ = unmount(&tmpfs);
    let _ = files.master().delete_fileset(ms::DeleteFilesetRequest { name: name.clone() }).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}
