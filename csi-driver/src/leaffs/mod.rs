//! A leaf volume's filesystem: a private, writable view over a root that
//! stores only what the pod changed (seed 004).
//!
//! What the leaf's metadata means (inodes, listings copied from the root,
//! the unit map of copied-up leaf units, the journal and its replay) is
//! `tessera_core::leaf`, pure and tested there; this module keeps it on
//! disk and answers FUSE with it. Creating a leaf writes an empty journal,
//! whatever the size of the root.
//!
//! Records are appended to the journal before each reply, so an
//! acknowledged change survives the plugin being killed (the kernel keeps
//! the written pages); `fsync` makes data and journal durable, as on any
//! filesystem. On open the journal is replayed and rewritten compactly.
//! File data lives in sparse files under `data/`, one per inode.

mod data;
mod names;
mod ops;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::io::Errno;

use crate::fuse::abi::{self, Attr, Out, S_IFDIR, S_IFLNK, S_IFREG, Ttl};
use crate::fuse::session::Result;
use crate::rootfs::{RootFs, THROUGHPUT_WINDOW_MS};
pub use tessera_core::leaf::LEAF_UNIT;
use tessera_core::leaf::{Inode, Kind, LeafError, LeafState, Record, RootView, journal};
use tessera_core::quota::UsageMeter;

/// Attributes change only through this mount, but other leaves' kernels
/// never see them; keep the kernel's copy briefly.
const TTL: Ttl = Ttl::secs(1);

const RENAME_NOREPLACE: u32 = 1;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;

/// The journal's state and what only this process knows: open counts.
#[derive(Debug, Default)]
struct State {
    leaf: LeafState,
    open: HashMap<u64, u32>,
}

impl RootView for RootFs {
    fn listing(&self, dir: u64) -> Vec<(Vec<u8>, u64)> {
        self.children(dir).unwrap_or_default()
    }
}

fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

fn leaf_errno(e: LeafError) -> Errno {
    match e {
        LeafError::NotAFile => Errno::ISDIR,
        LeafError::NoSpace => Errno::NOSPC,
        LeafError::TooBig => Errno::FBIG,
    }
}

/// A leaf over a root, mounted read-write.
pub struct LeafFs {
    root: Arc<RootFs>,
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    journal: Mutex<File>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Writes to one inode one at a time (copy-up reads, then writes).
    writers: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Taken over from a previous plugin: files may be open that this
    /// process never saw opened.
    adopted: bool,
    /// Bytes read (0) and written (1) through the mount lately.
    meter: Mutex<UsageMeter<2>>,
    started: std::time::Instant,
}

impl LeafFs {
    /// Opens the leaf in `dir` (an empty or missing directory makes a new
    /// leaf) over `root`, replaying and compacting its journal.
    pub fn open(dir: &Path, root: Arc<RootFs>, capacity: u64) -> std::io::Result<Self> {
        Self::open_with(dir, root, capacity, true)
    }

    /// Opens a leaf whose FUSE connection is being taken over: files a
    /// process may still hold open (unlinked, not yet released) are kept.
    pub fn adopt(dir: &Path, root: Arc<RootFs>, capacity: u64) -> std::io::Result<Self> {
        Self::open_with(dir, root, capacity, false)
    }

    /// The root this leaf is over (shared with the node's root mount of
    /// the same version, if any).
    pub fn root(&self) -> &Arc<RootFs> {
        &self.root
    }

    /// Bytes per second read and written through the mount over the last
    /// [`THROUGHPUT_WINDOW_MS`].
    pub fn rates(&self) -> (f64, f64) {
        let now = self.started.elapsed().as_millis() as u64;
        let m = self.meter.lock().unwrap();
        (m.rate(0, now), m.rate(1, now))
    }

    fn count(&self, kind: usize, bytes: u64) {
        let now = self.started.elapsed().as_millis() as u64;
        self.meter.lock().unwrap().record(kind, bytes, now);
    }

    fn open_with(dir: &Path, root: Arc<RootFs>, capacity: u64, purge: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("data"))?;
        let path = dir.join("journal");
        // A journal that exists but cannot be read must not be taken for
        // an empty leaf (the compaction below would overwrite it).
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // A torn last record (power loss mid-append) ends the replay.
        let (records, _) = journal::replay(&bytes);
        let mut leaf = LeafState::from_records(&*root, &records);
        if purge {
            // Unlinked files are kept while open; on a fresh mount none is.
            for ino in leaf.unlinked() {
                leaf.apply(&*root, &Record::Forget { ino });
                let _ = std::fs::remove_file(dir.join("data").join(ino.to_string()));
            }
        }
        let compacted = journal::encode(&leaf.compacted());
        let fs = Self {
            root,
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(State { leaf, open: HashMap::new() }),
            journal: Mutex::new(std::fs::OpenOptions::new().append(true).create(true).open(&path)?),
            files: Mutex::default(),
            writers: Mutex::default(),
            adopted: !purge,
            meter: Mutex::new(UsageMeter::new(THROUGHPUT_WINDOW_MS, 10)),
            started: std::time::Instant::now(),
        };
        fs.compact(&compacted)?;
        Ok(fs)
    }

    /// Replaces the journal with `compacted` (the state's records), atomically.
    fn compact(&self, compacted: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join("journal.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(compacted)?;
        f.sync_all()?;
        let path = self.dir.join("journal");
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        *self.journal.lock().unwrap() = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }

    /// Applies records and appends them to the journal, before the reply.
    fn commit(&self, st: &mut State, records: &[Record]) -> Result<()> {
        let buf = journal::encode(records);
        // Journaled first, applied after: a failed append (a full disk)
        // changes nothing, and a partial one is cut off so later records
        // are not lost behind a torn line.
        let mut journal = self.journal.lock().unwrap();
        let before = journal.metadata().map_err(errno)?.len();
        if let Err(e) = journal.write_all(&buf) {
            let _ = journal.set_len(before);
            return Err(errno(e));
        }
        for r in records {
            st.leaf.apply(&*self.root, r);
        }
        Ok(())
    }

    /// Bytes of data the leaf holds (what its capacity limits).
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().unwrap().leaf.used()
    }

    fn inode(&self, st: &State, ino: u64) -> Result<Inode> {
        if let Some(i) = st.leaf.inode(ino) {
            return Ok(i.clone());
        }
        if ino > self.root.max_nodeid() {
            return Err(Errno::NOENT);
        }
        let a = self.root.attr(ino)?;
        let kind = match a.mode & abi::S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            _ => Kind::File,
        };
        let target = match kind {
            Kind::Symlink => match &self.root.entry(ino)?.kind {
                tessera_core::manifest::EntryKind::Symlink { target } => Some(target.as_bytes().to_vec()),
                _ => None,
            },
            _ => None,
        };
        Ok(Inode {
            kind,
            perm: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            nlink: a.nlink,
            origin: (kind == Kind::File).then_some(ino),
            origin_limit: a.size,
            target,
            xattrs: BTreeMap::new(),
            changed: false,
        })
    }

    fn attr(&self, st: &State, ino: u64) -> Result<Attr> {
        let i = self.inode(st, ino)?;
        let kind = match i.kind {
            Kind::File => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink => S_IFLNK,
        };
        Ok(Attr {
            ino,
            size: i.size,
            blocks: i.size.div_ceil(512),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            mode: kind | i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
        })
    }

    fn listing(&self, st: &State, dir: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        if let Some(d) = st.leaf.listing(dir) {
            return Ok(d.iter().map(|(n, i)| (n.clone(), *i)).collect());
        }
        if self.inode(st, dir)?.kind != Kind::Dir {
            return Err(Errno::NOTDIR);
        }
        self.root.children(dir)
    }

    fn child(&self, st: &State, dir: u64, name: &OsStr) -> Result<u64> {
        if let Some(d) = st.leaf.listing(dir) {
            return d.get(name.as_bytes()).copied().ok_or(Errno::NOENT);
        }
        if self.inode(st, dir)?.kind != Kind::Dir {
            return Err(Errno::NOTDIR);
        }
        self.root.lookup(dir, name)
    }

    /// Records that make `dir` a listing of its own, if it is not yet.
    fn materialize(&self, st: &State, dir: u64) -> Result<Vec<Record>> {
        if st.leaf.listing(dir).is_some() {
            return Ok(Vec::new());
        }
        if self.inode(st, dir)?.kind != Kind::Dir {
            return Err(Errno::NOTDIR);
        }
        Ok(vec![Record::Materialize { dir }])
    }

    fn entry_reply(&self, st: &State, ino: u64) -> Result<Vec<u8>> {
        let mut o = Out::default();
        abi::entry_out(&mut o, &self.attr(st, ino)?, TTL);
        Ok(o.0)
    }

    fn readdir(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let st = self.state.lock().unwrap();
        let children = self.listing(&st, ino)?;
        let mut out = Out::default();
        for off in offset..(children.len() as u64 + 2) {
            let (child, name): (u64, &[u8]) = match off {
                0 => (ino, b"."),
                1 => (ino, b".."),
                _ => {
                    let (n, i) = &children[off as usize - 2];
                    (*i, n)
                }
            };
            let kind = self.attr(&st, child).map(|a| a.dirent_type()).unwrap_or(0);
            if !abi::push_dirent(&mut out, size as usize, child, off + 1, kind, name) {
                break;
            }
        }
        Ok(out.0)
    }
}
