//! Leaf volumes as real FUSE mounts over one root: each sees only its own
//! writes, the root's stored data never changes, only changed leaf units are
//! stored, changes survive a remount, and random operation sequences end
//! with the same tree as on tmpfs.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tessera_core::read_plan::ReadMode;
use tessera_csi::cache::NodeCache;
use tessera_csi::fuse::mount::{mount_fuse, unmount};
use tessera_csi::fuse::session::{self, Connection};
use tessera_csi::leaffs::{LEAF_UNIT, LeafFs};
use tessera_csi::metrics::Metrics;
use tessera_csi::rootfs::{RootFs, SHA256_XATTR};

struct Mounted {
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mounted {
    fn new(fs: Arc<LeafFs>, dir: &Path, rt: tokio::runtime::Handle) -> Self {
        let dev = mount_fuse(dir, "tessera:leaf", false).unwrap();
        let thread = std::thread::spawn(move || {
            session::serve(Connection { dev, init: None, adopted: false }, fs, rt, |_| {}, || {}).unwrap();
        });
        Self { dir: dir.to_path_buf(), thread: Some(thread) }
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

/// Bytes a directory's files occupy on disk (allocated blocks).
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { allocated(&e.path()) } else { m.blocks() * 512 };
    }
    total
}

fn digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn xattr(path: &Path) -> String {
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(path, SHA256_XATTR, &mut buf[..]).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    cluster: common::Cluster,
    src: tempfile::TempDir,
    root: Arc<RootFs>,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let (cluster, root) = rt.block_on(async {
        let cluster = common::Cluster::start().await;
        let v = cluster.put("models", src.path()).await;
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(NodeCache::open(&cluster.dir.path().join("cache"), 256 << 20, metrics.clone()).unwrap());
        let open = cluster.files().open("models", v.id).await.unwrap();
        let root = Arc::new(RootFs::new("root", open, cluster.stripes(), cache, metrics, ReadMode::Hedged));
        (cluster, root)
    });
    Fixture { rt, cluster, src, root }
}

#[test]
fn leaves_are_private_store_only_changed_units_and_survive_a_remount() {
    let f = fixture();
    let weights = "models/llama/weights.bin";
    let original = std::fs::read(f.src.path().join(weights)).unwrap();
    let (leaf_a, leaf_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mnt_a, mnt_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Creation copies nothing (its time is measured by tessera-csi bench).
    let fs_a = Arc::new(LeafFs::open(leaf_a.path(), f.root.clone(), 1 << 30).unwrap());
    let fs_b = Arc::new(LeafFs::open(leaf_b.path(), f.root.clone(), 1 << 30).unwrap());
    let a = Mounted::new(fs_a.clone(), mnt_a.path(), f.rt.handle().clone());
    let b = Mounted::new(fs_b, mnt_b.path(), f.rt.handle().clone());
    let (pa, pb) = (mnt_a.path(), mnt_b.path());
    let baseline = allocated(leaf_a.path());

    // Leaf A: 4 KiB into the large file, two small new files, and the rest
    // of what pods do.
    use std::io::{Seek, SeekFrom, Write};
    let mut w = std::fs::OpenOptions::new().write(true).open(pa.join(weights)).unwrap();
    w.seek(SeekFrom::Start(2_000_000)).unwrap();
    w.write_all(&[0xAB; 4096]).unwrap();
    w.sync_all().unwrap();
    drop(w);
    std::fs::write(pa.join("notes.txt"), vec![b'n'; 1000]).unwrap();
    std::fs::write(pa.join("models/extra.json"), vec![b'e'; 3000]).unwrap();
    let stored = allocated(&leaf_a.path().join("data"));
    let journal = std::fs::metadata(leaf_a.path().join("journal")).unwrap().len();
    assert!(stored <= LEAF_UNIT + 2 * 4096, "only the changed leaf unit and the new data: {stored} bytes");
    assert!(stored >= 4096 + 2 * 1000, "{stored}");
    assert!(journal < 8 << 10, "metadata stays small: {journal} bytes");
    assert!(allocated(leaf_a.path()) - baseline < LEAF_UNIT + (24 << 10), "all of the leaf");

    std::fs::create_dir(pa.join("runs")).unwrap();
    std::fs::rename(pa.join("models/config-03.json"), pa.join("runs/config.json")).unwrap();
    std::fs::remove_file(pa.join("models/config-04.json")).unwrap();
    std::fs::set_permissions(pa.join("models/config-05.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("../notes.txt", pa.join("runs/notes")).unwrap();
    rustix::fs::setxattr(pa.join("notes.txt"), "user.owner", b"team-a", rustix::fs::XattrFlags::empty()).unwrap();
    let f6 = std::fs::OpenOptions::new().write(true).open(pa.join("models/config-06.json")).unwrap();
    f6.set_len(5).unwrap();
    drop(f6);

    let mut expected = original.clone();
    expected[2_000_000..2_004_096].fill(0xAB);
    assert_eq!(std::fs::read(pa.join(weights)).unwrap(), expected);
    assert_eq!(xattr(&pa.join(weights)), digest(&expected), "the digest of a changed file is recomputed");
    assert_eq!(
        xattr(&pa.join("models/config-01.json")),
        digest(&std::fs::read(f.src.path().join("models/config-01.json")).unwrap())
    );
    assert_eq!(std::fs::read_to_string(pa.join("runs/notes")).unwrap(), "n".repeat(1000));
    assert_eq!(
        std::fs::read(pa.join("runs/config.json")).unwrap(),
        std::fs::read(f.src.path().join("models/config-03.json")).unwrap()
    );
    assert!(!pa.join("models/config-04.json").exists() && !pa.join("models/config-03.json").exists());
    assert_eq!(std::fs::metadata(pa.join("models/config-05.json")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(pa.join("models/config-06.json")).unwrap().len(), 5);
    let mut owner = [0u8; 16];
    let n = rustix::fs::getxattr(pa.join("notes.txt"), "user.owner", &mut owner[..]).unwrap();
    assert_eq!(&owner[..n], b"team-a");
    assert_eq!(
        std::fs::remove_dir(pa.join("models")).unwrap_err().raw_os_error(),
        Some(rustix::io::Errno::NOTEMPTY.raw_os_error())
    );

    // Leaf B sees the root, not A's changes.
    assert_eq!(std::fs::read(pb.join(weights)).unwrap(), original);
    assert!(!pb.join("notes.txt").exists() && pb.join("models/config-04.json").exists());
    assert_eq!(std::fs::read_dir(pb.join("models")).unwrap().count(), 41);
    // The root's stored data is unchanged.
    let stored_root = f.rt.block_on(async {
        let v = f.cluster.files().open("models", 0).await.unwrap();
        let parts = v.read_file(f.cluster.files().stripes(), weights, ReadMode::Normal).await.unwrap();
        parts.concat()
    });
    assert_eq!(stored_root, original);

    // Unmounted and opened again (a restart): everything is still there.
    drop(a);
    drop(fs_a);
    let fs_a = Arc::new(LeafFs::open(leaf_a.path(), f.root.clone(), 1 << 30).unwrap());
    let _a = Mounted::new(fs_a, mnt_a.path(), f.rt.handle().clone());
    assert_eq!(std::fs::read(pa.join(weights)).unwrap(), expected);
    assert_eq!(std::fs::read(pa.join("models/extra.json")).unwrap(), vec![b'e'; 3000]);
    assert_eq!(std::fs::read_link(pa.join("runs/notes")).unwrap(), Path::new("../notes.txt"));
    assert!(!pa.join("models/config-04.json").exists());
    assert_eq!(std::fs::read_dir(pa.join("models")).unwrap().count(), 40, "-03 -04 moved or gone, extra.json new");
    drop(b);
}

#[test]
fn a_full_leaf_refuses_writes_cleanly() {
    let f = fixture();
    let (leaf, mnt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fs = Arc::new(LeafFs::open(leaf.path(), f.root.clone(), 256 << 10).unwrap());
    let m = Mounted::new(fs, mnt.path(), f.rt.handle().clone());
    let p = mnt.path();
    std::fs::write(p.join("fits.bin"), vec![1u8; 100 << 10]).unwrap();
    let e = std::fs::write(p.join("too-big.bin"), vec![1u8; 512 << 10]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::NOSPC.raw_os_error()), "{e}");
    assert_eq!(std::fs::read(p.join("fits.bin")).unwrap(), vec![1u8; 100 << 10], "nothing lost");
    let e = std::fs::OpenOptions::new().write(true).open(p.join("too-big.bin")).unwrap().set_len(10 << 30).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::NOSPC.raw_os_error()), "a sparse extension counts too");
    // A refused change to a root directory (EEXIST), then an accepted one:
    // the root's entries are all still there after a remount.
    let e = std::fs::create_dir(p.join("models/config-00.json")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    std::fs::create_dir(p.join("models/sub")).unwrap();
    drop(m);
    let fs = Arc::new(LeafFs::open(leaf.path(), f.root.clone(), 256 << 10).unwrap());
    let _m = Mounted::new(fs, mnt.path(), f.rt.handle().clone());
    assert_eq!(std::fs::read_dir(p.join("models")).unwrap().count(), 42, "40 configs, llama, sub");
}

// ---- Random operation sequences, leaf against tmpfs ----

#[derive(Debug, Clone)]
enum FsOp {
    Write { path: &'static str, offset: u64, len: usize, byte: u8 },
    Truncate { path: &'static str, size: u64 },
    Rename { from: &'static str, to: &'static str },
    Unlink { path: &'static str },
    Mkdir { path: &'static str },
    Rmdir { path: &'static str },
}

const FILES: &[&str] = &[
    "models/llama/weights.bin",
    "models/config-00.json",
    "models/config-01.json",
    "empty.txt",
    "new-a",
    "models/new-b",
    "d1/new-c",
    "empty-dir/x",
];
const DIRS: &[&str] = &["d1", "d2", "empty-dir", "models/llama", "d1/sub"];

fn op() -> impl Strategy<Value = FsOp> {
    let file = proptest::sample::select(FILES);
    let dir = proptest::sample::select(DIRS);
    let any_path = proptest::sample::select([FILES, DIRS].concat());
    // Small offsets and sizes as often as large ones: small files and the
    // edges of blocks are where copy-on-write goes wrong.
    let place = || prop_oneof![0u64..300, 60_000u64..70_000, 0u64..5_200_000];
    prop_oneof![
        4 => (file.clone(), place(), 1usize..200_000, any::<u8>())
            .prop_map(|(path, offset, len, byte)| FsOp::Write { path, offset, len, byte }),
        3 => (file.clone(), place()).prop_map(|(path, size)| FsOp::Truncate { path, size }),
        2 => (any_path.clone(), any_path).prop_map(|(from, to)| FsOp::Rename { from, to }),
        1 => file.prop_map(|path| FsOp::Unlink { path }),
        1 => dir.clone().prop_map(|path| FsOp::Mkdir { path }),
        1 => dir.prop_map(|path| FsOp::Rmdir { path }),
    ]
}

/// Applies an op under `base`; the error number if it failed.
fn run(base: &Path, op: &FsOp) -> Option<i32> {
    use std::os::unix::fs::FileExt;
    let r = match op {
        FsOp::Write { path, offset, len, byte } => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(base.join(path))
            .and_then(|f| f.write_all_at(&vec![*byte; *len], *offset)),
        FsOp::Truncate { path, size } => {
            std::fs::OpenOptions::new().write(true).open(base.join(path)).and_then(|f| f.set_len(*size))
        }
        FsOp::Rename { from, to } => std::fs::rename(base.join(from), base.join(to)),
        FsOp::Unlink { path } => std::fs::remove_file(base.join(path)),
        FsOp::Mkdir { path } => std::fs::create_dir(base.join(path)),
        FsOp::Rmdir { path } => std::fs::remove_dir(base.join(path)),
    };
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// Every path under `base`: what it is and its content.
fn tree(base: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                out.insert(rel, "dir".into());
                walk(base, &e.path(), out);
            } else if t.is_symlink() {
                out.insert(rel, format!("link {}", std::fs::read_link(e.path()).unwrap().display()));
            } else {
                let data = std::fs::read(e.path()).unwrap();
                out.insert(rel, format!("file {} {}", data.len(), digest(&data)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(base, base, &mut out);
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type().unwrap();
        if t.is_dir() {
            std::fs::create_dir(&dst).unwrap();
            copy_tree(&src, &dst);
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn random_operations_end_like_tmpfs() {
    let f = fixture();
    let tmpfs = tempfile::tempdir().unwrap();
    rustix::mount::mount("tmpfs", tmpfs.path(), "tmpfs", rustix::mount::MountFlags::empty(), None).unwrap();
    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(), 1..25), |ops| {
        let reference = tempfile::tempdir_in(tmpfs.path()).unwrap();
        copy_tree(f.src.path(), reference.path());
        let (leaf, mnt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fs = Arc::new(LeafFs::open(leaf.path(), f.root.clone(), 1 << 30).unwrap());
        let _m = Mounted::new(fs, mnt.path(), f.rt.handle().clone());
        for op in &ops {
            let (want, got) = (run(reference.path(), op), run(mnt.path(), op));
            prop_assert_eq!(got, want, "{:?}", op);
        }
        prop_assert_eq!(tree(mnt.path()), tree(reference.path()));
        Ok(())
    });
    let _ = unmount(tmpfs.path());
    if let Err(e) = result {
        panic!("{e}");
    }
}
