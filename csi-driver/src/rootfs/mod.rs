//! A root volume's filesystem: one fileset version, read-only, served from
//! the node cache and the chunkservers.
//!
//! Node ids are derived from the version's manifest (the root directory is
//! 1, the manifest's i-th entry is i + 2) and file handles are node ids, so
//! the kernel's ids mean the same to any process that opens the same
//! version: a successor taking over the connection needs no table of them.
//!
//! Everything about a root is immutable, so the kernel may cache names,
//! attributes and pages for as long as it likes (the page cache is kept
//! across opens). Each file's SHA-256 from the manifest is the read-only
//! extended attribute `user.tessera.sha256`: the index is made once, at
//! ingest, and every pod reads it instead of hashing again.

mod files;
mod read;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use rustix::io::Errno;
use tessera_client::StripeClient;
use tessera_client::fileset::OpenVersion;
use tessera_core::manifest::{Entry, EntryKind};
use tessera_core::quota::UsageMeter;
use tessera_core::read_plan::ReadMode;
use tracing::debug;

use crate::cache::{NodeCache, UnitKey};
use crate::fuse::abi::{self, Attr, InHeader, InitState, Op, Out, S_IFDIR, S_IFLNK, S_IFREG, Ttl};
use crate::fuse::session::{Filesystem, Reply, Result, xattr_reply};
use crate::metrics::{Metrics, VolumeLabels};
use crate::passthrough::{FileStore, IoTable};
use crate::peers::Peers;
use tessera_core::latency::HedgePolicy;

pub use tessera_core::manifest::SHA256_XATTR;
/// The window [`RootFs::read_rate`] reports over.
pub const THROUGHPUT_WINDOW_MS: u64 = 10_000;
/// Names and attributes never change: cache them for a day.
const TTL: Ttl = Ttl::secs(86_400);

type Fetch = Shared<BoxFuture<'static, std::result::Result<Bytes, Errno>>>;

/// Directory structure of a manifest, by entry index.
struct Tree {
    /// Children of the root (index 0) and of entry i (index i + 1), in name order.
    children: Vec<Vec<u32>>,
    /// Parent node id of each entry.
    parent: Vec<u64>,
}

impl Tree {
    fn new(entries: &[Entry]) -> Self {
        let mut children = vec![Vec::new(); entries.len() + 1];
        let mut parent = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let p = match e.path.rsplit_once('/') {
                None => 0,
                // Manifests list every parent directory (checked when built).
                Some((dir, _)) => entries.binary_search_by(|x| x.path.as_str().cmp(dir)).map_or(0, |j| j + 1),
            };
            children[p].push(i as u32);
            parent.push(if p == 0 { abi::ROOT_ID } else { p as u64 + 1 });
        }
        Self { children, parent }
    }
}

/// One version of a fileset, mounted read-only.
pub struct RootFs {
    volume: String,
    version: OpenVersion,
    tree: Tree,
    client: Arc<StripeClient>,
    cache: Arc<NodeCache>,
    metrics: Arc<Metrics>,
    mode: AtomicU8,
    inflight: Arc<Mutex<std::collections::HashMap<UnitKey, Fetch>>>,
    /// Bytes read through this mount over the last seconds.
    meter: Mutex<UsageMeter<1>>,
    started: std::time::Instant,
    created: (i64, u32),
    passthrough: OnceLock<Passthrough>,
    /// Other nodes' caches, asked before the chunkservers.
    peers: Option<Arc<Peers>>,
    /// The fileset's hedge policy; the client's when none.
    hedge: Option<HedgePolicy>,
    /// Reports of damaged blocks on their way to the master, a few at a
    /// time: past that, further reports are left out (reads go on; a
    /// stripe left out is reported by a later read that meets it again).
    reporting: Arc<tokio::sync::Semaphore>,
}

/// Reports of damaged blocks in flight per root at most.
const REPORTS_IN_FLIGHT: usize = 4;

/// What a mount needs to pass large files through to the file store.
struct Passthrough {
    me: Weak<RootFs>,
    /// Where large files are stored whole; `None` only joins opens a
    /// previous plugin passed through (the store was turned off since).
    store: Option<Arc<FileStore>>,
    table: IoTable,
    /// The connection, once served, and whether it negotiated passthrough.
    dev: OnceLock<(Arc<OwnedFd>, bool)>,
}

/// File handle bits: how a large file was opened, so its release is
/// counted against the right mode. Small files carry neither.
const FH_CACHED: u64 = 1 << 62;
const FH_PASSTHROUGH: u64 = 1 << 63;

fn mode_code(m: ReadMode) -> u8 {
    match m {
        ReadMode::Normal => 0,
        ReadMode::Hedged => 1,
        ReadMode::Accelerated => 2,
    }
}

fn mode_of(code: u8) -> ReadMode {
    match code {
        0 => ReadMode::Normal,
        2 => ReadMode::Accelerated,
        _ => ReadMode::Hedged,
    }
}

impl RootFs {
    pub fn new(
        volume: &str,
        version: OpenVersion,
        client: Arc<StripeClient>,
        cache: Arc<NodeCache>,
        metrics: Arc<Metrics>,
        mode: ReadMode,
    ) -> Self {
        let tree = Tree::new(version.manifest.entries());
        let created = (version.version.created_unix as i64, 0);
        Self {
            volume: volume.to_string(),
            version,
            tree,
            client,
            cache,
            metrics,
            mode: AtomicU8::new(mode_code(mode)),
            inflight: Arc::default(),
            meter: Mutex::new(UsageMeter::new(THROUGHPUT_WINDOW_MS, 10)),
            started: std::time::Instant::now(),
            created,
            passthrough: OnceLock::new(),
            peers: None,
            hedge: None,
            reporting: Arc::new(tokio::sync::Semaphore::new(REPORTS_IN_FLIGHT)),
        }
    }

    /// Hedges by `hedge` (its fileset's read policy) instead of the
    /// client's own policy.
    pub fn with_hedge(mut self, hedge: HedgePolicy) -> Self {
        self.hedge = Some(hedge);
        self
    }

    /// How this root's hedged reads hedge.
    pub fn hedge(&self) -> HedgePolicy {
        self.hedge.unwrap_or(self.client.config().hedge)
    }

    /// Asks `peers` for blocks before the chunkservers.
    pub fn with_peers(mut self, peers: Option<Arc<Peers>>) -> Self {
        self.peers = peers;
        self
    }

    pub fn fileset(&self) -> &str {
        &self.version.version.fileset
    }

    pub fn version_id(&self) -> u64 {
        self.version.id()
    }

    /// Bytes per second read through this mount over the last
    /// [`THROUGHPUT_WINDOW_MS`].
    pub fn read_rate(&self) -> f64 {
        let now = self.started.elapsed().as_millis() as u64;
        self.meter.lock().unwrap().rate(0, now)
    }

    fn count_read(&self, n: u64) {
        let now = self.started.elapsed().as_millis() as u64;
        self.meter.lock().unwrap().record(0, n, now);
        self.metrics.volume_bytes_read.get_or_create(&VolumeLabels { volume: self.volume.clone() }).inc_by(n);
    }

    pub fn read_mode(&self) -> ReadMode {
        mode_of(self.mode.load(Ordering::Relaxed))
    }

    /// Switches how later reads fetch stripes.
    pub fn set_read_mode(&self, mode: ReadMode) {
        self.mode.store(mode_code(mode), Ordering::Relaxed);
    }

    pub(crate) fn entry(&self, nodeid: u64) -> Result<&Entry> {
        nodeid.checked_sub(2).and_then(|i| self.version.manifest.entries().get(i as usize)).ok_or(Errno::NOENT)
    }

    pub(crate) fn attr(&self, nodeid: u64) -> Result<Attr> {
        if nodeid == abi::ROOT_ID {
            let dirs = self.tree.children[0].len() as u32;
            return Ok(Attr {
                ino: nodeid,
                mode: S_IFDIR | 0o755,
                nlink: 2 + dirs,
                atime: self.created,
                mtime: self.created,
                ctime: self.created,
                ..Default::default()
            });
        }
        let e = self.entry(nodeid)?;
        let t = (e.mtime_secs, e.mtime_nanos);
        let (kind, nlink) = match e.kind {
            EntryKind::File { .. } => (S_IFREG, 1),
            EntryKind::Dir => (S_IFDIR, 2),
            EntryKind::Symlink { .. } => (S_IFLNK, 1),
        };
        Ok(Attr {
            ino: nodeid,
            size: e.size,
            blocks: e.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            mode: kind | (e.mode & 0o7777),
            nlink,
            ..Default::default()
        })
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64> {
        let name = name.to_str().ok_or(Errno::NOENT)?;
        let path = if parent == abi::ROOT_ID {
            name.to_string()
        } else {
            let dir = self.entry(parent)?;
            if !dir.is_dir() {
                return Err(Errno::NOTDIR);
            }
            format!("{}/{name}", dir.path)
        };
        let entries = self.version.manifest.entries();
        entries.binary_search_by(|e| e.path.as_str().cmp(&path)).map(|i| i as u64 + 2).map_err(|_| Errno::NOENT)
    }

    /// The names and node ids directly inside a directory.
    pub(crate) fn children(&self, nodeid: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        let slot = if nodeid == abi::ROOT_ID {
            0
        } else {
            if !self.entry(nodeid)?.is_dir() {
                return Err(Errno::NOTDIR);
            }
            nodeid as usize - 1
        };
        Ok(self.tree.children[slot]
            .iter()
            .map(|&i| {
                let path = &self.version.manifest.entries()[i as usize].path;
                (path.rsplit('/').next().unwrap_or(path).as_bytes().to_vec(), i as u64 + 2)
            })
            .collect())
    }

    /// How many node ids the version uses (the root and every entry).
    pub(crate) fn max_nodeid(&self) -> u64 {
        self.version.manifest.entries().len() as u64 + 1
    }

    fn readdir(&self, nodeid: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let slot = if nodeid == abi::ROOT_ID {
            0
        } else {
            if !self.entry(nodeid)?.is_dir() {
                return Err(Errno::NOTDIR);
            }
            nodeid as usize - 1
        };
        let children = &self.tree.children[slot];
        let parent = if nodeid == abi::ROOT_ID { abi::ROOT_ID } else { self.tree.parent[nodeid as usize - 2] };
        let mut out = Out::default();
        let limit = size as usize;
        // Offsets: 0 ".", 1 "..", 2 + k the k-th child.
        for off in offset..(children.len() as u64 + 2) {
            let (ino, name): (u64, &[u8]) = match off {
                0 => (nodeid, b"."),
                1 => (parent, b".."),
                _ => {
                    let i = children[off as usize - 2] as usize;
                    let path = &self.version.manifest.entries()[i].path;
                    (i as u64 + 2, path.rsplit('/').next().unwrap_or(path).as_bytes())
                }
            };
            let kind = self.attr(ino)?.dirent_type();
            if !abi::push_dirent(&mut out, limit, ino, off + 1, kind, name) {
                break;
            }
        }
        Ok(out.0)
    }

    pub(crate) fn sha256_hex(&self, nodeid: u64) -> Option<String> {
        match self.entry(nodeid).ok()?.kind {
            EntryKind::File { sha256, .. } => Some(hex::encode(sha256)),
            _ => None,
        }
    }
}

impl RootFs {
    /// Everything but reads that must wait for the chunkservers.
    fn answer(&self, h: &InHeader, op: &Op<'_>) -> Option<Result<Reply>> {
        Some(match *op {
            Op::Lookup { name } => (|| {
                let id = self.lookup(h.nodeid, name)?;
                let mut o = Out::default();
                abi::entry_out(&mut o, &self.attr(id)?, TTL);
                Ok(Reply::Data(o.0))
            })(),
            Op::GetAttr => self.attr(h.nodeid).map(|a| Reply::Data(abi::attr_out(&a, TTL))),
            Op::ReadLink => match self.entry(h.nodeid).map(|e| &e.kind) {
                Ok(EntryKind::Symlink { target }) => Ok(Reply::Data(target.as_bytes().to_vec())),
                Ok(_) => Err(Errno::INVAL),
                Err(e) => Err(e),
            },
            Op::Open { flags } => {
                if flags & abi::O_ACCMODE != 0 {
                    Err(Errno::ROFS)
                } else {
                    self.entry(h.nodeid).and_then(|e| self.open_file(h.nodeid, e, h.unique))
                }
            }
            Op::Release { fh, .. } => {
                self.release_file(fh, h.unique);
                Ok(Reply::Empty)
            }
            Op::Read { offset, size, .. } => {
                return self.read_cached(h.nodeid, offset, size).map(|r| r.map(Reply::Parts));
            }
            Op::ReleaseDir { .. } | Op::Flush { .. } | Op::Fsync { .. } | Op::FsyncDir { .. } => Ok(Reply::Empty),
            Op::OpenDir { .. } => self
                .attr(h.nodeid)
                .map(|_| Reply::Data(abi::open_out(h.nodeid, abi::fopen::KEEP_CACHE | abi::fopen::CACHE_DIR))),
            Op::ReadDir { offset, size, .. } => self.readdir(h.nodeid, offset, size).map(Reply::Data),
            Op::StatFs => {
                let m = &self.version.manifest;
                Ok(Reply::Data(abi::statfs_out(m.packed_len().div_ceil(4096), 0, m.entries().len() as u64 + 1, 0)))
            }
            Op::GetXattr { name, size } => {
                if name != OsStr::new(SHA256_XATTR) {
                    Err(Errno::NODATA)
                } else {
                    match self.sha256_hex(h.nodeid) {
                        Some(v) => xattr_reply(v.as_bytes(), size),
                        None => Err(Errno::NODATA),
                    }
                }
            }
            Op::ListXattr { size } => {
                let names = if self.sha256_hex(h.nodeid).is_some() {
                    let mut n = SHA256_XATTR.as_bytes().to_vec();
                    n.push(0);
                    n
                } else {
                    Vec::new()
                };
                xattr_reply(&names, size)
            }
            // W_OK: nothing here is writable.
            Op::Access { mask } => {
                if mask & 2 != 0 {
                    Err(Errno::ROFS)
                } else {
                    Ok(Reply::Empty)
                }
            }
            Op::Lseek { .. } => Err(Errno::NOSYS),
            Op::SetAttr(_)
            | Op::Symlink { .. }
            | Op::Mknod { .. }
            | Op::Mkdir { .. }
            | Op::Unlink { .. }
            | Op::Rmdir { .. }
            | Op::Rename { .. }
            | Op::Link { .. }
            | Op::Write { .. }
            | Op::SetXattr { .. }
            | Op::RemoveXattr { .. }
            | Op::Create { .. }
            | Op::Fallocate { .. } => Err(Errno::ROFS),
            _ => Err(Errno::NOSYS),
        })
    }
}

impl Filesystem for RootFs {
    async fn handle<'a>(&'a self, h: &'a InHeader, op: Op<'a>) -> Result<Reply> {
        match op {
            Op::Read { offset, size, .. } => Ok(Reply::Parts(self.read(h.nodeid, offset, size).await?)),
            op => self.answer(h, &op).unwrap_or(Err(Errno::NOSYS)),
        }
    }

    fn handle_now(&self, h: &InHeader, op: &Op<'_>) -> Option<Result<Reply>> {
        self.answer(h, op)
    }

    fn attach(&self, dev: &Arc<OwnedFd>, init: &InitState) {
        if let Some(p) = self.passthrough.get() {
            let _ = p.dev.set((dev.clone(), init.passthrough()));
            if !init.passthrough() {
                debug!(volume = %self.volume, "this kernel does not pass files through; every read reaches the plugin");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry { path: path.into(), kind, mode: 0o755, size: 0, mtime_secs: 0, mtime_nanos: 0 }
    }

    #[test]
    fn the_tree_links_children_to_parents() {
        let es = vec![
            entry("a", EntryKind::Dir),
            entry("a/b", EntryKind::Dir),
            entry("a/b/c", EntryKind::Symlink { target: "x".into() }),
            entry("a/d", EntryKind::Symlink { target: "y".into() }),
            entry("e", EntryKind::Symlink { target: "z".into() }),
        ];
        let t = Tree::new(&es);
        assert_eq!(t.children[0], vec![0, 4], "root: a, e");
        assert_eq!(t.children[1], vec![1, 3], "a: b, d");
        assert_eq!(t.children[2], vec![2], "a/b: c");
        assert_eq!(t.parent, vec![1, 2, 3, 2, 1], "node ids of parents");
    }
}
