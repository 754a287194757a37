//! A root volume as a real FUSE mount: it reads back exactly the fileset,
//! carries each file's digest as an xattr, refuses writes, and a second
//! mount of the same version reads from the node cache.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tessera_core::read_plan::ReadMode;
use tessera_csi::cache::NodeCache;
use tessera_csi::fuse::mount::{mount_fuse, mounts_at, unmount};
use tessera_csi::fuse::session::{self, Connection};
use tessera_csi::metrics::Metrics;
use tessera_csi::rootfs::{RootFs, SHA256_XATTR};

/// Mounts `fs` at `dir` and serves it on a thread; returns the thread.
fn mount(fs: Arc<RootFs>, dir: &Path) -> std::thread::JoinHandle<Result<(), session::SessionError>> {
    let dev = mount_fuse(dir, "tessera:test", true).unwrap();
    let rt = tokio::runtime::Handle::current();
    let target = dir.to_path_buf();
    std::thread::spawn(move || {
        let on_ready = || tessera_csi::fuse::mount::set_readahead(&target, 4096);
        session::serve(Connection { dev, init: None, adopted: false }, fs, rt, |_| {}, on_ready)
    })
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn digest(p: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(p).unwrap()).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_volume_reads_back_the_fileset_and_refuses_writes() {
    let c = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    let files = common::sample_tree(src.path());
    let v = c.put("models", src.path()).await;
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(NodeCache::open(&c.dir.path().join("cache"), 64 << 20, metrics.clone()).unwrap());
    let root = |volume: &'static str| {
        let (c, cache, metrics) = (&c, cache.clone(), metrics.clone());
        async move {
            let open = c.files().open("models", v.id).await.unwrap();
            Arc::new(RootFs::new(volume, open, c.stripes(), cache, metrics, ReadMode::Hedged))
        }
    };
    let mnt = tempfile::tempdir().unwrap();
    let served = mount(root("vol-a").await, mnt.path());
    let (m, s) = (mnt.path().to_path_buf(), src.path().to_path_buf());
    let fetched_first = tokio::task::spawn_blocking(move || {
        let info = mounts_at(&m);
        assert_eq!(info.last().map(|i| (i.fs_type.as_str(), i.read_only)), Some(("fuse.tessera", true)));
        let bdi = format!("/sys/class/bdi/{}/read_ahead_kb", info.last().unwrap().device);
        for f in &files {
            assert_eq!(digest(&m.join(f)), digest(&s.join(f)), "{}", f.display());
            let meta = std::fs::metadata(m.join(f)).unwrap();
            let want = std::fs::metadata(s.join(f)).unwrap();
            assert_eq!((meta.len(), meta.permissions().mode()), (want.len(), want.permissions().mode()));
            let mut buf = [0u8; 64];
            let n = rustix::fs::getxattr(m.join(f), SHA256_XATTR, &mut buf[..]).unwrap();
            assert_eq!(&buf[..n], hex::encode(digest(&s.join(f))).as_bytes(), "the index, once");
        }
        // Raised once the kernel took INIT (its first request came).
        assert_eq!(std::fs::read_to_string(&bdi).unwrap().trim(), "4096", "readahead raised after INIT");
        assert_eq!(std::fs::read_link(m.join("latest.json")).unwrap(), Path::new("models/config-01.json"));
        assert_eq!(
            std::fs::read(m.join("latest.json")).unwrap(),
            std::fs::read(s.join("models/config-01.json")).unwrap()
        );
        let mut names: Vec<String> =
            std::fs::read_dir(&m).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["empty-dir", "empty.txt", "latest.json", "models"]);
        assert_eq!(std::fs::read_dir(m.join("models")).unwrap().count(), 41);
        assert!(std::fs::read_dir(m.join("empty-dir")).unwrap().next().is_none());
        // Reads at odd offsets and sizes, across cache blocks.
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(m.join("models/llama/weights.bin")).unwrap();
        let whole = std::fs::read(s.join("models/llama/weights.bin")).unwrap();
        for (off, len) in [(0u64, 1usize), (1_048_570, 20), (3_000_001, 1_500_000), (4_999_990, 100)] {
            f.seek(SeekFrom::Start(off)).unwrap();
            let mut got = vec![0u8; len];
            let n = f.read(&mut got).unwrap();
            let end = (off as usize + len).min(whole.len());
            assert_eq!(&got[..n], &whole[off as usize..off as usize + n]);
            assert!(n > 0 && off as usize + n <= end);
        }
        // Nothing can be written.
        for e in [
            std::fs::write(m.join("new.txt"), b"x").unwrap_err(),
            std::fs::OpenOptions::new().write(true).open(m.join("empty.txt")).unwrap_err(),
            std::fs::create_dir(m.join("d")).unwrap_err(),
            std::fs::remove_file(m.join("empty.txt")).unwrap_err(),
        ] {
            assert_eq!(e.raw_os_error(), Some(Errno::ROFS.raw_os_error()), "{e}");
        }
        assert_eq!(
            rustix::fs::setxattr(m.join("empty.txt"), SHA256_XATTR, b"0", rustix::fs::XattrFlags::empty()).unwrap_err(),
            Errno::ROFS
        );
        assert_eq!(std::fs::read(m.join("missing")).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    })
    .await;
    fetched_first.unwrap();
    assert!(c.stripes().stats().bytes_fetched > 5_000_000, "the first mount read from the chunkservers");

    // A second mount of the same version (another pod's volume) reads the
    // same bytes from the node cache: the chunkservers see no new reads.
    let second = root("vol-b").await;
    let from_chunkservers = c.stripes().stats().bytes_fetched;
    let hits_before = metrics.cache_hits.get();
    let mnt2 = tempfile::tempdir().unwrap();
    let served2 = mount(second, mnt2.path());
    let (m2, s) = (mnt2.path().to_path_buf(), src.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        assert_eq!(digest(&m2.join("models/llama/weights.bin")), digest(&s.join("models/llama/weights.bin")));
    })
    .await
    .unwrap();
    assert_eq!(c.stripes().stats().bytes_fetched, from_chunkservers, "no backend reads for a cached version");
    assert!(metrics.cache_hits.get() > hits_before);
    let page = metrics.render();
    assert!(page.contains("tessera_csi_served_bytes_total{source=\"cache\"}"), "{page}");

    for (dir, thread) in [(mnt.path(), served), (mnt2.path(), served2)] {
        unmount(dir).unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap().unwrap()).await.unwrap();
        assert!(mounts_at(dir).is_empty());
    }
}

/// A chunkserver that damages blocks in transit: the root's reads come back
/// exact (the reader's checks catch every damaged block and read other
/// stripes) and the plugin reports the stripes to the master. (What the
/// master does with a report, a verify that finds the disk copy intact, is
/// cli/tests/no_silent_loss.rs's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_damaged_in_transit_are_reported_and_reads_stay_exact() {
    let c = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let v = c.put("models", src.path()).await;
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(NodeCache::open(&c.dir.path().join("cache"), 64 << 20, metrics.clone()).unwrap());
    let open = c.files().open("models", v.id).await.unwrap();
    // Damaged from now on, after the manifest was read (its reader reports
    // on its own): only the root's reads can report.
    c.set_faults(0, tessera_proto::cs::Faults { corrupt_rate: 1.0, ..Default::default() }).await;
    assert_eq!(c.status().await.corrupt_reports, 0);
    // Accelerated: every read asks all stripes, so cs0 is always among them.
    let fs = Arc::new(RootFs::new("vol-a", open, c.stripes(), cache, metrics, ReadMode::Accelerated));
    let mnt = tempfile::tempdir().unwrap();
    let served = mount(fs, mnt.path());
    let (m, s) = (mnt.path().to_path_buf(), src.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        let f = "models/llama/weights.bin";
        assert_eq!(digest(&m.join(f)), digest(&s.join(f)), "exact despite the damaged blocks");
    })
    .await
    .unwrap();
    tessera_testkit::until("the master to hear of the damaged blocks", async || {
        (c.status().await.corrupt_reports > 0).then_some(())
    })
    .await;
    unmount(mnt.path()).unwrap();
    tokio::task::spawn_blocking(move || served.join().unwrap().unwrap()).await.unwrap();
}

/// Large files are stored whole after their first open; later opens are
/// passed through (the kernel reads the stored file and no read reaches the
/// plugin), and opens of one inode never mix modes while any is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_pass_through_once_stored_whole() {
    use tessera_csi::metrics::VolumeLabels;
    use tessera_csi::passthrough::{FileStore, IoTable};
    let c = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let v = c.put("models", src.path()).await;
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(NodeCache::open(&c.dir.path().join("cache"), 64 << 20, metrics.clone()).unwrap());
    let store = Arc::new(FileStore::open(&c.dir.path().join("files"), 64 << 20).unwrap());
    let open = c.files().open("models", v.id).await.unwrap();
    let fs = Arc::new(RootFs::new("vol-p", open, c.stripes(), cache, metrics.clone(), ReadMode::Hedged));
    fs.enable_passthrough(Some(store.clone()), IoTable::open(&c.dir.path().join("io/vol-p"), false).unwrap());
    let mnt = tempfile::tempdir().unwrap();
    let served = mount(fs.clone(), mnt.path());
    let (big, want) = (
        mnt.path().join("models/llama/weights.bin"),
        std::fs::read(src.path().join("models/llama/weights.bin")).unwrap(),
    );
    let sha = hex::encode(Sha256::digest(&want));
    let plugin_reads = || metrics.volume_bytes_read.get_or_create(&VolumeLabels { volume: "vol-p".into() }).get();

    // First open: through the plugin, and the file is stored whole meanwhile.
    let (b, w) = (big.clone(), want.clone());
    let first = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), w);
        f
    })
    .await
    .unwrap();
    assert!(fs.passes_through(), "this kernel negotiates passthrough (6.9+)");
    assert!(plugin_reads() >= want.len() as u64, "the first reads came through the plugin");
    tokio::time::timeout(std::time::Duration::from_secs(60), store.stored(&sha)).await.expect("stored whole");
    assert_eq!(std::fs::read(c.dir.path().join("files").join(&sha)).unwrap(), want, "stored bit-exact");

    // Opened again while the first open lives: the same (plugin) mode, or
    // the kernel would refuse the open.
    let (b, w) = (big.clone(), want.clone());
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut again = std::fs::File::open(&b).expect("an open while another is alive succeeds");
        let mut got = Vec::new();
        again.read_to_end(&mut got).unwrap();
        assert_eq!(got, w);
    })
    .await
    .unwrap();
    drop(first);
    // The kernel sends RELEASE after close returns: wait until the plugin
    // has counted both.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while fs.open_large_files() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both releases arrive");

    // Every open closed: the next ones pass through. Dropping the page cache
    // first makes the kernel read again, from the stored file, not the plugin.
    let before = plugin_reads();
    let (b, w) = (big.clone(), want.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        let one = std::fs::File::open(&b).unwrap();
        let two = std::fs::File::open(&b).unwrap();
        use std::io::Read;
        for mut f in [&one, &two] {
            let mut got = Vec::new();
            f.read_to_end(&mut got).unwrap();
            assert_eq!(got, w);
        }
    })
    .await
    .unwrap();
    assert_eq!(plugin_reads(), before, "passed-through reads never reach the plugin");

    unmount(mnt.path()).unwrap();
    served.join().unwrap().unwrap();
}

/// A second node reads the units the first node's cache holds from that
/// node's plugin, not from the chunkservers; a unit damaged on the first
/// node's disk is rejected by its checksums and read from the chunkservers;
/// an unreachable peer only means the chunkservers are asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_caches_serve_blocks_before_the_chunkservers() {
    use tessera_csi::metrics::SourceLabels;
    use tessera_csi::peers::{Discovery, Peers};
    let c = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let v = c.put("models", src.path()).await;
    let want = std::fs::read(src.path().join("models/llama/weights.bin")).unwrap();
    let node = |name: &str, peers: Option<Discovery>| {
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(NodeCache::open(&c.dir.path().join(name), 64 << 20, metrics.clone()).unwrap());
        let c = &c;
        async move {
            let open = c.files().open("models", v.id).await.unwrap();
            let fs = RootFs::new("models@1", open, c.stripes(), cache.clone(), metrics.clone(), ReadMode::Hedged);
            // A long head start: on this shared machine a debug build's peer
            // may take longer than the default, and the race is not tested here.
            let peers = peers.map(|d| Peers::with_head_start(d, std::time::Duration::from_secs(5), metrics.clone()));
            (Arc::new(fs.with_peers(peers)), cache, metrics)
        }
    };
    let served = |m: &Metrics, source: &'static str| m.bytes_served.get_or_create(&SourceLabels { source }).get();
    let read_all = |fs: Arc<RootFs>| {
        let want = want.clone();
        async move {
            let mnt = tempfile::tempdir().unwrap();
            let thread = mount(fs, mnt.path());
            let p = mnt.path().join("models/llama/weights.bin");
            let got = tokio::task::spawn_blocking(move || std::fs::read(p).unwrap()).await.unwrap();
            assert!(got == want, "the file read back differs from what was stored");
            unmount(mnt.path()).unwrap();
            thread.join().unwrap().unwrap();
        }
    };

    // Node A reads from the chunkservers and serves its cache.
    let (a, a_cache, a_metrics) = node("cache-a", None).await;
    read_all(a).await;
    assert!(served(&a_metrics, "chunkservers") >= want.len() as u64);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, tessera_csi::control::units_router(a_cache)).await });

    // Node B asks A first: every block of the file comes from A.
    let (b, _, b_metrics) = node("cache-b", Some(Discovery::Static(vec![addr.clone()]))).await;
    read_all(b).await;
    assert!(served(&b_metrics, "peers") >= want.len() as u64, "B read A's cache");
    assert!(
        served(&b_metrics, "chunkservers") < want.len() as u64 / 2,
        "only blocks A never had (B's read-ahead past the file) came from the chunkservers"
    );

    // A unit in A's cache rots on A's disk. Node E asks A for it, finds it
    // fails its checksums, counts it and reads it from the chunkservers: the
    // file still comes back exact.
    let unit_files = |dir: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = walk(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "unit")).collect();
        v.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
        v
    };
    let victim = unit_files(&c.dir.path().join("cache-a")).into_iter().next().expect("A cached units");
    let mut raw = std::fs::read(&victim).unwrap();
    let at = raw.len() / 2;
    raw[at] ^= 0xff;
    std::fs::write(&victim, &raw).unwrap();
    let (e, _, e_metrics) = node("cache-e", Some(Discovery::Static(vec![addr.clone()]))).await;
    read_all(e).await;
    assert!(e_metrics.peer_units_rejected.get() >= 1, "E rejected A's damaged unit");
    assert!(served(&e_metrics, "peers") > 0, "E still read A's good units");
    assert!(served(&e_metrics, "chunkservers") > 0, "the damaged unit came from the chunkservers");

    // Node C's only peer is gone: the chunkservers serve it.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let (cc, _, c_metrics) = node("cache-c", Some(Discovery::Static(vec![dead]))).await;
    read_all(cc).await;
    assert_eq!(served(&c_metrics, "peers"), 0);
    assert!(served(&c_metrics, "chunkservers") >= want.len() as u64);

    // Node D's peer takes requests and never answers: after the (default)
    // head start the chunkservers race it and win.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hung.accept().await {
            held.push(conn);
        }
    });
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(NodeCache::open(&c.dir.path().join("cache-d"), 64 << 20, metrics.clone()).unwrap());
    let open = c.files().open("models", v.id).await.unwrap();
    let d = RootFs::new("models@1", open, c.stripes(), cache, metrics.clone(), ReadMode::Hedged)
        .with_peers(Some(Peers::new(Discovery::Static(vec![hung_addr]), metrics.clone())));
    read_all(Arc::new(d)).await;
    assert_eq!(served(&metrics, "peers"), 0);
    assert!(served(&metrics, "chunkservers") >= want.len() as u64);
}
