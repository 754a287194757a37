//! A leaf volume's filesystem: a private, writable view over a root that
//! stores only what the pod changed (seed 004).
//!
//! Unchanged files and directories are the root's, under the root's node
//! ids. The first change to a directory copies its listing (names and node
//! ids only) into the leaf; the first write to a block of a root file
//! copies that block up, merges the write, and records the block in the
//! leaf's block map; new files live wholly in the leaf. Creating a leaf
//! writes an empty journal, whatever the size of the root.
//!
//! Metadata is a journal of records appended before each reply, so an
//! acknowledged change survives the plugin being killed (the kernel keeps
//! the written pages); `fsync` makes data and journal durable, as on any
//! filesystem. On open the journal is replayed and rewritten compactly.
//! File data lives in sparse files under `data/`, one per inode.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fuse::abi::{self, Attr, InHeader, Op, Out, S_IFDIR, S_IFLNK, S_IFREG, SetAttr, Ttl, fattr};
use crate::fuse::session::{Filesystem, Reply, Result, xattr_reply};
use crate::rootfs::{RootFs, SHA256_XATTR, THROUGHPUT_WINDOW_MS};
use tessera_core::quota::UsageMeter;

/// The unit of copy-up: a write into a root file stores whole blocks.
pub const LEAF_BLOCK: u64 = 64 << 10;
/// Node ids of inodes made in the leaf start here (the root's are below).
const FIRST_LEAF_INO: u64 = 1 << 40;
/// Attributes change only through this mount, but other leaves' kernels
/// never see them; keep the kernel's copy briefly.
const TTL: Ttl = Ttl::secs(1);

const O_ACCMODE: u32 = 0o3;
const O_TRUNC: u32 = 0o1000;
const RENAME_NOREPLACE: u32 = 1;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Inode {
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    atime: (i64, u32),
    mtime: (i64, u32),
    ctime: (i64, u32),
    nlink: u32,
    /// The root file whose bytes show where the leaf has none.
    origin: Option<u64>,
    /// Root bytes at or past this offset are no longer the file's (it was
    /// truncated below them).
    origin_limit: u64,
    target: Option<Vec<u8>>,
    /// Extended attributes (names are UTF-8; JSON keys must be strings).
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The content differs from the root's (its digest must be computed).
    changed: bool,
}

/// A journal record. Replaying them in order gives the leaf's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Record {
    Inode {
        ino: u64,
        inode: Inode,
    },
    Forget {
        ino: u64,
    },
    /// A directory's listing copied from the root.
    Materialize {
        dir: u64,
    },
    /// A whole listing (compacted journals).
    Listing {
        dir: u64,
        entries: Vec<(Vec<u8>, u64)>,
    },
    Link {
        dir: u64,
        name: Vec<u8>,
        ino: u64,
    },
    Unlink {
        dir: u64,
        name: Vec<u8>,
    },
    /// The leaf holds blocks first..=last of a root-backed file.
    Blocks {
        ino: u64,
        first: u64,
        last: u64,
    },
    NextIno {
        next: u64,
    },
}

#[derive(Debug, Default)]
struct State {
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    dirs: HashMap<u64, BTreeMap<Vec<u8>, u64>>,
    blocks: HashMap<u64, BTreeSet<u64>>,
    open: HashMap<u64, u32>,
    /// Bytes of data held (what the capacity limits), kept as records
    /// apply rather than summed over every inode on each write.
    used: u64,
}

fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
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
        let mut st = State { next_ino: FIRST_LEAF_INO, ..Default::default() };
        let path = dir.join("journal");
        if let Ok(f) = File::open(&path) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                // A torn last line (power loss mid-append) ends the replay.
                let Ok(record) = serde_json::from_str::<Record>(&line) else { break };
                apply(&mut st, &root, &record);
            }
        }
        if purge {
            // Unlinked files are kept while open; on a fresh mount none is.
            let gone: Vec<u64> = st.inodes.iter().filter(|(_, i)| i.nlink == 0).map(|(ino, _)| *ino).collect();
            for ino in gone {
                apply(&mut st, &root, &Record::Forget { ino });
                let _ = std::fs::remove_file(dir.join("data").join(ino.to_string()));
            }
        }
        let fs = Self {
            root,
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(st),
            journal: Mutex::new(std::fs::OpenOptions::new().append(true).create(true).open(&path)?),
            files: Mutex::default(),
            writers: Mutex::default(),
            adopted: !purge,
            meter: Mutex::new(UsageMeter::new(THROUGHPUT_WINDOW_MS, 10)),
            started: std::time::Instant::now(),
        };
        fs.compact()?;
        Ok(fs)
    }

    /// Rewrites the journal as the current state, atomically.
    fn compact(&self) -> std::io::Result<()> {
        let st = self.state.lock().unwrap();
        let tmp = self.dir.join("journal.tmp");
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        let mut put = |r: &Record| -> std::io::Result<()> {
            serde_json::to_writer(&mut out, r).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        };
        put(&Record::NextIno { next: st.next_ino })?;
        for (ino, inode) in &st.inodes {
            put(&Record::Inode { ino: *ino, inode: inode.clone() })?;
        }
        for (dir, entries) in &st.dirs {
            put(&Record::Listing { dir: *dir, entries: entries.iter().map(|(n, i)| (n.clone(), *i)).collect() })?;
        }
        for (ino, blocks) in &st.blocks {
            for (first, last) in runs(blocks) {
                put(&Record::Blocks { ino: *ino, first, last })?;
            }
        }
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let path = self.dir.join("journal");
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        *self.journal.lock().unwrap() = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }

    /// Applies records and appends them to the journal, before the reply.
    fn commit(&self, st: &mut State, records: &[Record]) -> Result<()> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|_| Errno::IO)?;
            buf.push(b'\n');
        }
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
            apply(st, &self.root, r);
        }
        Ok(())
    }

    /// Bytes of data the leaf holds (what its capacity limits).
    pub fn used_bytes(&self) -> u64 {
        let st = self.state.lock().unwrap();
        used(&st)
    }

    fn inode(&self, st: &State, ino: u64) -> Result<Inode> {
        if let Some(i) = st.inodes.get(&ino) {
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
        if let Some(d) = st.dirs.get(&dir) {
            return Ok(d.iter().map(|(n, i)| (n.clone(), *i)).collect());
        }
        if self.inode(st, dir)?.kind != Kind::Dir {
            return Err(Errno::NOTDIR);
        }
        self.root.children(dir)
    }

    fn child(&self, st: &State, dir: u64, name: &OsStr) -> Result<u64> {
        if let Some(d) = st.dirs.get(&dir) {
            return d.get(name.as_bytes()).copied().ok_or(Errno::NOENT);
        }
        if self.inode(st, dir)?.kind != Kind::Dir {
            return Err(Errno::NOTDIR);
        }
        self.root.lookup(dir, name)
    }

    /// Records that make `dir` a listing of its own, if it is not yet.
    fn materialize(&self, st: &mut State, dir: u64) -> Result<Vec<Record>> {
        if st.dirs.contains_key(&dir) {
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

    /// Makes a new inode named `name` in `parent`.
    fn make(
        &self,
        h: &InHeader,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        target: Option<Vec<u8>>,
    ) -> Result<u64> {
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG);
        }
        let mut st = self.state.lock().unwrap();
        let mut records = self.materialize(&mut st, parent)?;
        for r in &records {
            apply(&mut st, &self.root, r);
        }
        if st.dirs[&parent].contains_key(name.as_bytes()) {
            return Err(Errno::EXIST);
        }
        if kind == Kind::File && used(&st) >= self.capacity {
            return Err(Errno::NOSPC);
        }
        let ino = st.next_ino;
        let t = now();
        let inode = Inode {
            kind,
            perm: perm & 0o7777,
            uid: h.uid,
            gid: h.gid,
            size: target.as_ref().map_or(0, |t| t.len() as u64),
            atime: t,
            mtime: t,
            ctime: t,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            origin: None,
            origin_limit: 0,
            target,
            xattrs: BTreeMap::new(),
            changed: true,
        };
        records.extend([
            Record::NextIno { next: ino + 1 },
            Record::Inode { ino, inode },
            Record::Link { dir: parent, name: name.as_bytes().to_vec(), ino },
        ]);
        if kind == Kind::Dir {
            records.push(Record::Listing { dir: ino, entries: Vec::new() });
        }
        // Materialize was applied above; applying it again is harmless.
        self.commit(&mut st, &records)?;
        Ok(ino)
    }

    /// Removes `name` from `parent`: a directory (`dir`) or anything else.
    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        let ino = self.child(&st, parent, name)?;
        let inode = self.inode(&st, ino)?;
        match (dir, inode.kind == Kind::Dir) {
            (true, false) => return Err(Errno::NOTDIR),
            (false, true) => return Err(Errno::ISDIR),
            (true, true) if !self.listing(&st, ino)?.is_empty() => return Err(Errno::NOTEMPTY),
            _ => {}
        }
        let mut records = self.materialize(&mut st, parent)?;
        records.push(Record::Unlink { dir: parent, name: name.as_bytes().to_vec() });
        records.extend(self.drop_link(&st, ino, inode));
        self.commit(&mut st, &records)?;
        self.forget_data(&st, ino);
        Ok(())
    }

    /// Records for one fewer link to `ino`; the last one (with the file
    /// not open) forgets it.
    fn drop_link(&self, st: &State, ino: u64, mut inode: Inode) -> Vec<Record> {
        inode.nlink = if inode.kind == Kind::Dir { 0 } else { inode.nlink.saturating_sub(1) };
        inode.ctime = now();
        // Unlinked but open here: kept until released. (Files opened before
        // a takeover are not counted; they are kept until the next fresh
        // mount, which purges unlinked inodes.)
        if inode.nlink == 0 && st.open.get(&ino).copied().unwrap_or(0) == 0 && !self.adopted {
            vec![Record::Forget { ino }]
        } else {
            vec![Record::Inode { ino, inode }]
        }
    }

    /// Deletes the data of an inode that is gone.
    fn forget_data(&self, st: &State, ino: u64) {
        if !st.inodes.contains_key(&ino) {
            self.files.lock().unwrap().remove(&ino);
            let _ = std::fs::remove_file(self.data_path(ino));
        }
    }

    fn data_path(&self, ino: u64) -> PathBuf {
        self.dir.join("data").join(ino.to_string())
    }

    fn data_file(&self, ino: u64) -> Result<Arc<File>> {
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(&ino) {
            return Ok(f.clone());
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.data_path(ino))
            .map_err(errno)?;
        let f = Arc::new(f);
        files.insert(ino, f.clone());
        Ok(f)
    }

    fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> Result<()> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(Errno::INVAL);
        }
        let mut st = self.state.lock().unwrap();
        let ino = self.child(&st, parent, name)?;
        let inode = self.inode(&st, ino)?;
        let mut records = self.materialize(&mut st, parent)?;
        records.extend(self.materialize(&mut st, newparent)?);
        for r in &records {
            apply(&mut st, &self.root, r);
        }
        if let Some(&old) = st.dirs[&newparent].get(newname.as_bytes()) {
            if old == ino {
                return Ok(());
            }
            if flags & RENAME_NOREPLACE != 0 {
                return Err(Errno::EXIST);
            }
            let replaced = self.inode(&st, old)?;
            match (inode.kind == Kind::Dir, replaced.kind == Kind::Dir) {
                (true, false) => return Err(Errno::NOTDIR),
                (false, true) => return Err(Errno::ISDIR),
                (true, true) if !self.listing(&st, old)?.is_empty() => return Err(Errno::NOTEMPTY),
                _ => {}
            }
            records.extend(self.drop_link(&st, old, replaced));
        }
        records.push(Record::Unlink { dir: parent, name: name.as_bytes().to_vec() });
        records.push(Record::Link { dir: newparent, name: newname.as_bytes().to_vec(), ino });
        let replaced = st.dirs[&newparent].get(newname.as_bytes()).copied();
        let mut moved = inode;
        moved.ctime = now();
        records.push(Record::Inode { ino, inode: moved });
        self.commit(&mut st, &records)?;
        if let Some(old) = replaced {
            self.forget_data(&st, old);
        }
        Ok(())
    }

    /// Cuts or extends a file to `size` (records only; data files follow).
    fn resize(&self, st: &State, ino: u64, inode: &mut Inode, size: u64) -> Result<Vec<Record>> {
        if inode.kind != Kind::File {
            return Err(Errno::ISDIR);
        }
        // Leaf-only files count their whole size; root-backed ones the
        // blocks they hold (see `used`).
        let growth = match inode.origin {
            None => size.saturating_sub(inode.size),
            Some(_) => size.saturating_sub(inode.size).min(LEAF_BLOCK),
        };
        if size > inode.size && used(st) + growth > self.capacity {
            return Err(Errno::NOSPC);
        }
        let mut records = Vec::new();
        if size < inode.size {
            inode.origin_limit = inode.origin_limit.min(size);
            // Blocks wholly past the end go from the block map.
            if let Some(blocks) = st.blocks.get(&ino) {
                let keep = size.div_ceil(LEAF_BLOCK);
                if blocks.range(keep..).next().is_some() {
                    let mut inode_blocks = blocks.clone();
                    inode_blocks.retain(|b| *b < keep);
                    records.push(Record::Forget { ino });
                    records.push(Record::Inode { ino, inode: inode.clone() });
                    records.extend(runs(&inode_blocks).into_iter().map(|(first, last)| Record::Blocks {
                        ino,
                        first,
                        last,
                    }));
                }
            }
            let f = self.data_file(ino)?;
            if f.metadata().map_err(errno)?.len() > size {
                f.set_len(size).map_err(errno)?;
            }
        }
        inode.size = size;
        inode.changed = true;
        inode.xattrs.remove(SHA256_XATTR);
        let t = now();
        (inode.mtime, inode.ctime) = (t, t);
        Ok(records)
    }

    fn setattr(&self, ino: u64, sa: SetAttr) -> Result<Attr> {
        let mut st = self.state.lock().unwrap();
        let mut inode = self.inode(&st, ino)?;
        let mut records = Vec::new();
        if sa.valid & fattr::SIZE != 0 {
            records = self.resize(&st, ino, &mut inode, sa.size)?;
        }
        if sa.valid & fattr::MODE != 0 {
            inode.perm = sa.mode & 0o7777;
        }
        if sa.valid & fattr::UID != 0 {
            inode.uid = sa.uid;
        }
        if sa.valid & fattr::GID != 0 {
            inode.gid = sa.gid;
        }
        let t = now();
        if sa.valid & fattr::ATIME_NOW != 0 {
            inode.atime = t;
        } else if sa.valid & fattr::ATIME != 0 {
            inode.atime = sa.atime;
        }
        if sa.valid & fattr::MTIME_NOW != 0 {
            inode.mtime = t;
        } else if sa.valid & fattr::MTIME != 0 {
            inode.mtime = sa.mtime;
        }
        inode.ctime = t;
        records.push(Record::Inode { ino, inode });
        self.commit(&mut st, &records)?;
        self.attr(&st, ino)
    }

    fn writer(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.writers.lock().unwrap().entry(ino).or_default().clone()
    }

    /// The root's bytes of `ino` in `range` (clipped to what is still the
    /// file's), zeros past them.
    async fn base(&self, origin: u64, limit: u64, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let mut out = vec![0u8; (range.end - range.start) as usize];
        let end = range.end.min(limit);
        if end > range.start {
            let parts = self.root.read(origin, range.start, (end - range.start) as u32).await?;
            let mut at = 0;
            for p in parts {
                out[at..at + p.len()].copy_from_slice(&p);
                at += p.len();
            }
        }
        Ok(out)
    }

    async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let lock = self.writer(ino);
        let _one = lock.lock().await;
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::FBIG)?;
        let (inode, absent) = {
            let st = self.state.lock().unwrap();
            let inode = self.inode(&st, ino)?;
            if inode.kind != Kind::File {
                return Err(Errno::ISDIR);
            }
            let present = st.blocks.get(&ino);
            let absent: Vec<u64> = match inode.origin {
                Some(_) if end > offset => (offset / LEAF_BLOCK..=(end - 1) / LEAF_BLOCK)
                    .filter(|b| !present.is_some_and(|p| p.contains(b)))
                    .collect(),
                _ => Vec::new(),
            };
            let growth = end.saturating_sub(inode.size) + absent.len() as u64 * LEAF_BLOCK;
            if used(&st) + growth > self.capacity {
                return Err(Errno::NOSPC);
            }
            (inode, absent)
        };
        let f = self.data_file(ino)?;
        // Copy up the root's part of blocks this write only partly covers.
        if let Some(origin) = inode.origin {
            for &b in &absent {
                let (bs, be) = (b * LEAF_BLOCK, (b + 1) * LEAF_BLOCK);
                let covered = offset <= bs && end >= be;
                let has_root_bytes = bs < inode.origin_limit.min(inode.size);
                if !covered && has_root_bytes {
                    let upto = be.min(inode.origin_limit).min(inode.size);
                    let base = self.base(origin, inode.origin_limit, bs..upto).await?;
                    f.write_all_at(&base, bs).map_err(errno)?;
                }
            }
        }
        f.write_all_at(data, offset).map_err(errno)?;
        let mut st = self.state.lock().unwrap();
        let mut inode = self.inode(&st, ino)?;
        inode.size = inode.size.max(end);
        inode.changed = true;
        inode.xattrs.remove(SHA256_XATTR);
        let t = now();
        (inode.mtime, inode.ctime) = (t, t);
        let mut records = vec![Record::Inode { ino, inode }];
        records.extend(runs(&absent.into_iter().collect()).into_iter().map(|(first, last)| Record::Blocks {
            ino,
            first,
            last,
        }));
        self.commit(&mut st, &records)?;
        Ok(data.len() as u32)
    }

    async fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<Bytes>> {
        let (inode, present) = {
            let st = self.state.lock().unwrap();
            (self.inode(&st, ino)?, st.blocks.get(&ino).cloned().unwrap_or_default())
        };
        if inode.kind != Kind::File {
            return Err(Errno::ISDIR);
        }
        let end = (offset + len as u64).min(inode.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let leaf = |range: std::ops::Range<u64>| -> Result<Bytes> {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            if let Ok(f) = std::fs::File::open(self.data_path(ino)) {
                let mut at = 0;
                while at < buf.len() {
                    match f.read_at(&mut buf[at..], range.start + at as u64) {
                        Ok(0) => break, // past the data file's end: zeros
                        Ok(n) => at += n,
                        Err(e) => return Err(errno(e)),
                    }
                }
            }
            Ok(Bytes::from(buf))
        };
        let Some(origin) = inode.origin else { return Ok(vec![leaf(offset..end)?]) };
        let mut parts = Vec::new();
        let mut at = offset;
        while at < end {
            let b = at / LEAF_BLOCK;
            let seg_end = ((b + 1) * LEAF_BLOCK).min(end);
            if present.contains(&b) {
                parts.push(leaf(at..seg_end)?);
            } else {
                parts.push(Bytes::from(self.base(origin, inode.origin_limit, at..seg_end).await?));
            }
            at = seg_end;
        }
        Ok(parts)
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

    /// The file's SHA-256: the root's if unchanged, else computed (once
    /// per change) from the content.
    async fn digest(&self, ino: u64) -> Result<Option<String>> {
        let inode = {
            let st = self.state.lock().unwrap();
            self.inode(&st, ino)?
        };
        if inode.kind != Kind::File {
            return Ok(None);
        }
        if let Some(d) = inode.xattrs.get(SHA256_XATTR) {
            return Ok(Some(String::from_utf8_lossy(d).into_owned()));
        }
        if !inode.changed
            && let Some(origin) = inode.origin
        {
            return Ok(self.root.sha256_hex(origin));
        }
        let mut h = Sha256::new();
        let mut at = 0;
        while at < inode.size {
            let n = (inode.size - at).min(4 << 20) as u32;
            for p in self.read(ino, at, n).await? {
                h.update(&p);
            }
            at += n as u64;
        }
        let hex = hex::encode(h.finalize());
        let mut st = self.state.lock().unwrap();
        if let Ok(mut now) = self.inode(&st, ino)
            && now.size == inode.size
            && now.mtime == inode.mtime
        {
            now.xattrs.insert(SHA256_XATTR.to_string(), hex.clone().into_bytes());
            self.commit(&mut st, &[Record::Inode { ino, inode: now }])?;
        }
        Ok(Some(hex))
    }

    fn sync(&self, ino: Option<u64>) -> Result<()> {
        if let Some(ino) = ino
            && let Ok(f) = self.data_file(ino)
        {
            f.sync_data().map_err(errno)?;
        }
        self.journal.lock().unwrap().sync_data().map_err(errno)
    }
}

fn used(st: &State) -> u64 {
    st.used
}

/// The bytes one inode holds: a leaf-only file its size, a root-backed one
/// the blocks it copied up.
fn held(st: &State, ino: u64) -> u64 {
    match st.inodes.get(&ino).map(|i| (i.kind, i.origin)) {
        Some((Kind::File, None)) => st.inodes[&ino].size,
        Some((Kind::File, Some(_))) => st.blocks.get(&ino).map_or(0, |b| b.len() as u64 * LEAF_BLOCK),
        _ => 0,
    }
}

/// Runs of consecutive block numbers.
fn runs(blocks: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == b => *last = b,
            _ => out.push((b, b)),
        }
    }
    out
}

/// Gives `dir` a listing of its own, copied from the root, if it has none.
/// Every record that changes a listing does this first, so a journal whose
/// Materialize record was never written still replays right.
fn materialize(st: &mut State, root: &RootFs, dir: u64) {
    st.dirs.entry(dir).or_insert_with(|| root.children(dir).unwrap_or_default().into_iter().collect());
}

fn apply(st: &mut State, root: &RootFs, r: &Record) {
    let touched = match r {
        Record::Inode { ino, .. } | Record::Forget { ino } | Record::Blocks { ino, .. } => Some(*ino),
        _ => None,
    };
    let before = touched.map_or(0, |ino| held(st, ino));
    apply_record(st, root, r);
    if let Some(ino) = touched {
        st.used = st.used - before + held(st, ino);
    }
}

fn apply_record(st: &mut State, root: &RootFs, r: &Record) {
    match r {
        Record::Inode { ino, inode } => {
            st.inodes.insert(*ino, inode.clone());
        }
        Record::Forget { ino } => {
            st.inodes.remove(ino);
            st.blocks.remove(ino);
            st.dirs.remove(ino);
        }
        Record::Materialize { dir } => materialize(st, root, *dir),
        Record::Listing { dir, entries } => {
            st.dirs.insert(*dir, entries.iter().cloned().collect());
        }
        Record::Link { dir, name, ino } => {
            materialize(st, root, *dir);
            st.dirs.entry(*dir).or_default().insert(name.clone(), *ino);
        }
        Record::Unlink { dir, name } => {
            materialize(st, root, *dir);
            if let Some(d) = st.dirs.get_mut(dir) {
                d.remove(name);
            }
        }
        Record::Blocks { ino, first, last } => {
            st.blocks.entry(*ino).or_default().extend(*first..=*last);
        }
        Record::NextIno { next } => st.next_ino = st.next_ino.max(*next),
    }
}

impl Filesystem for LeafFs {
    async fn handle<'a>(&'a self, h: &'a InHeader, op: Op<'a>) -> Result<Reply> {
        let ino = h.nodeid;
        match op {
            Op::Lookup { name } => {
                let st = self.state.lock().unwrap();
                let child = self.child(&st, ino, name)?;
                Ok(Reply::Data(self.entry_reply(&st, child)?))
            }
            Op::GetAttr => {
                let st = self.state.lock().unwrap();
                Ok(Reply::Data(abi::attr_out(&self.attr(&st, ino)?, TTL)))
            }
            Op::SetAttr(sa) => Ok(Reply::Data(abi::attr_out(&self.setattr(ino, sa)?, TTL))),
            Op::ReadLink => {
                let st = self.state.lock().unwrap();
                self.inode(&st, ino)?.target.map(Reply::Data).ok_or(Errno::INVAL)
            }
            Op::Mknod { mode, umask, name, .. } => {
                if mode & abi::S_IFMT != S_IFREG {
                    return Err(Errno::PERM);
                }
                let child = self.make(h, ino, name, Kind::File, mode & !umask, None)?;
                Ok(Reply::Data(self.entry_reply(&self.state.lock().unwrap(), child)?))
            }
            Op::Mkdir { mode, umask, name } => {
                let child = self.make(h, ino, name, Kind::Dir, mode & !umask, None)?;
                Ok(Reply::Data(self.entry_reply(&self.state.lock().unwrap(), child)?))
            }
            Op::Symlink { name, target } => {
                let child = self.make(h, ino, name, Kind::Symlink, 0o777, Some(target.as_bytes().to_vec()))?;
                Ok(Reply::Data(self.entry_reply(&self.state.lock().unwrap(), child)?))
            }
            Op::Create { mode, umask, name, .. } => {
                let child = self.make(h, ino, name, Kind::File, mode & !umask, None)?;
                let mut st = self.state.lock().unwrap();
                *st.open.entry(child).or_default() += 1;
                let mut body = self.entry_reply(&st, child)?;
                body.extend(abi::open_out(child, abi::fopen::NOFLUSH));
                Ok(Reply::Data(body))
            }
            Op::Unlink { name } => self.remove(ino, name, false).map(|_| Reply::Empty),
            Op::Rmdir { name } => self.remove(ino, name, true).map(|_| Reply::Empty),
            Op::Rename { newdir, flags, name, newname } => {
                self.rename(ino, name, newdir, newname, flags).map(|_| Reply::Empty)
            }
            Op::Link { .. } => Err(Errno::PERM),
            Op::Open { flags } => {
                let mut st = self.state.lock().unwrap();
                let mut inode = self.inode(&st, ino)?;
                if inode.kind == Kind::Dir {
                    return Err(Errno::ISDIR);
                }
                if flags & O_TRUNC != 0 && flags & O_ACCMODE != 0 && inode.size > 0 {
                    let mut records = self.resize(&st, ino, &mut inode, 0)?;
                    records.push(Record::Inode { ino, inode });
                    self.commit(&mut st, &records)?;
                }
                *st.open.entry(ino).or_default() += 1;
                Ok(Reply::Data(abi::open_out(ino, abi::fopen::NOFLUSH)))
            }
            Op::Read { offset, size, .. } => {
                let parts = self.read(ino, offset, size).await?;
                self.count(0, parts.iter().map(|p| p.len() as u64).sum());
                Ok(Reply::Parts(parts))
            }
            Op::Write { offset, data, .. } => {
                let n = self.write(ino, offset, data).await?;
                self.count(1, n as u64);
                Ok(Reply::Data(abi::write_out(n)))
            }
            Op::Release { .. } => {
                let mut st = self.state.lock().unwrap();
                let Some(n) = st.open.get_mut(&ino) else { return Ok(Reply::Empty) };
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.open.remove(&ino);
                    if st.inodes.get(&ino).is_some_and(|i| i.nlink == 0) {
                        self.commit(&mut st, &[Record::Forget { ino }])?;
                        self.forget_data(&st, ino);
                    }
                }
                Ok(Reply::Empty)
            }
            Op::Flush { .. } | Op::ReleaseDir { .. } => Ok(Reply::Empty),
            Op::Fsync { .. } => self.sync(Some(ino)).map(|_| Reply::Empty),
            Op::FsyncDir { .. } => self.sync(None).map(|_| Reply::Empty),
            Op::OpenDir { .. } => {
                let st = self.state.lock().unwrap();
                if self.inode(&st, ino)?.kind != Kind::Dir {
                    return Err(Errno::NOTDIR);
                }
                Ok(Reply::Data(abi::open_out(ino, 0)))
            }
            Op::ReadDir { offset, size, .. } => Ok(Reply::Data(self.readdir(ino, offset, size)?)),
            Op::StatFs => {
                let used = self.used_bytes();
                let blocks = self.capacity / 4096;
                let free = self.capacity.saturating_sub(used) / 4096;
                Ok(Reply::Data(abi::statfs_out(blocks, free, 1 << 20, 1 << 20)))
            }
            Op::GetXattr { name, size } => {
                if name == OsStr::new(SHA256_XATTR) {
                    let d = self.digest(ino).await?.ok_or(Errno::NODATA)?;
                    return xattr_reply(d.as_bytes(), size);
                }
                let st = self.state.lock().unwrap();
                let inode = self.inode(&st, ino)?;
                let v = inode.xattrs.get(name.to_str().ok_or(Errno::NODATA)?).ok_or(Errno::NODATA)?;
                xattr_reply(v, size)
            }
            Op::ListXattr { size } => {
                let st = self.state.lock().unwrap();
                let inode = self.inode(&st, ino)?;
                let mut names = Vec::new();
                if inode.kind == Kind::File {
                    names.extend_from_slice(SHA256_XATTR.as_bytes());
                    names.push(0);
                }
                for k in inode.xattrs.keys().filter(|k| k.as_str() != SHA256_XATTR) {
                    names.extend_from_slice(k.as_bytes());
                    names.push(0);
                }
                xattr_reply(&names, size)
            }
            Op::SetXattr { name, value, flags } => {
                if name == OsStr::new(SHA256_XATTR) {
                    return Err(Errno::PERM);
                }
                let mut st = self.state.lock().unwrap();
                let mut inode = self.inode(&st, ino)?;
                let name = name.to_str().ok_or(Errno::INVAL)?;
                let exists = inode.xattrs.contains_key(name);
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(Errno::EXIST);
                }
                if flags & XATTR_REPLACE != 0 && !exists {
                    return Err(Errno::NODATA);
                }
                inode.xattrs.insert(name.to_string(), value.to_vec());
                inode.ctime = now();
                self.commit(&mut st, &[Record::Inode { ino, inode }])?;
                Ok(Reply::Empty)
            }
            Op::RemoveXattr { name } => {
                if name == OsStr::new(SHA256_XATTR) {
                    return Err(Errno::PERM);
                }
                let mut st = self.state.lock().unwrap();
                let mut inode = self.inode(&st, ino)?;
                inode.xattrs.remove(name.to_str().ok_or(Errno::NODATA)?).ok_or(Errno::NODATA)?;
                self.commit(&mut st, &[Record::Inode { ino, inode }])?;
                Ok(Reply::Empty)
            }
            Op::Access { .. } => Ok(Reply::Empty),
            Op::Fallocate { .. } => Err(Errno::OPNOTSUPP),
            _ => Err(Errno::NOSYS),
        }
    }
}
