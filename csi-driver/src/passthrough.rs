//! FUSE passthrough for root files (Linux 6.9+): once a file's bytes sit
//! whole in the node's file store, an open of it is answered with that file
//! as its backing file and the kernel reads it directly, at the speed of the
//! node's own disk and page cache, without a request reaching the plugin.
//!
//! Three parts:
//! - [`FileStore`]: whole files, named by their SHA-256 (so versions and
//!   filesets that share a file share one copy and its page cache), written
//!   from verified blocks, checked against the manifest's digest, fsynced and
//!   renamed into place; least recently used ones go past a size threshold.
//! - backing registration on the connection (`FUSE_DEV_IOC_BACKING_OPEN`).
//! - [`IoTable`]: how each large file of a mount is open right now. The
//!   kernel refuses (ETXTBSY/EBUSY) an open whose mode differs from opens of
//!   the same inode still alive, or that names another backing file, so
//!   while an inode is open every new open must match. The table is a file
//!   written with one `pwrite` per change: it must outlive the plugin process
//!   (a successor serves the same connection), not the node (a reboot ends
//!   the connection too), so it is not fsynced.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::io::Errno;
use tracing::{debug, info, warn};

/// Files smaller than this are not stored whole or passed through: they are
/// read in one or two requests and kept in the page cache anyway.
pub const MIN_SIZE: u64 = 1 << 20;

/// `struct fuse_backing_map`.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// `FUSE_DEV_IOC_BACKING_OPEN`: registers a file on a connection; the
/// ioctl's return value is its backing id.
struct BackingOpen(BackingMap);

// SAFETY: the opcode is `_IOW(229, 1, struct fuse_backing_map)`, the pointer
// is to a live `BackingMap` of exactly that layout (repr(C): i32, u32, u64),
// which the kernel only reads, and the output is the ioctl's return value.
unsafe impl rustix::ioctl::Ioctl for BackingOpen {
    type Output = u32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> rustix::ioctl::Opcode {
        rustix::ioctl::opcode::write::<BackingMap>(229, 1)
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (&mut self.0 as *mut BackingMap).cast()
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<Self::Output> {
        u32::try_from(out).map_err(|_| Errno::INVAL)
    }
}

/// Registers `file` as a backing file on the connection `dev`.
pub fn open_backing(dev: BorrowedFd<'_>, file: BorrowedFd<'_>) -> rustix::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let map = BackingMap { fd: file.as_raw_fd(), flags: 0, padding: 0 };
    // SAFETY: `BackingOpen` describes the ioctl exactly (see its impl) and
    // `file` stays open for the duration of the call.
    unsafe { rustix::ioctl::ioctl(dev, BackingOpen(map)) }
}

/// Drops the connection's reference to a backing file; files opened with it
/// keep their own.
pub fn close_backing(dev: BorrowedFd<'_>, id: u32) -> rustix::io::Result<()> {
    type Close = rustix::ioctl::Setter<{ rustix::ioctl::opcode::write::<u32>(229, 2) }, u32>;
    // SAFETY: `FUSE_DEV_IOC_BACKING_CLOSE` is `_IOW(229, 2, uint32_t)` and
    // reads one u32, which the Setter passes by pointer.
    unsafe { rustix::ioctl::ioctl(dev, Close::new(id)) }
}

#[derive(Debug, Default)]
struct StoreState {
    /// Stored files: digest -> (bytes, last use).
    files: HashMap<String, (u64, u64)>,
    bytes: u64,
    tick: u64,
    /// Digests being written now.
    busy: HashSet<String>,
}

/// Whole root files on the node's disk, by SHA-256.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    threshold: u64,
    state: Mutex<StoreState>,
    /// Bumped on every file stored, for whoever waits for one.
    stored: tokio::sync::watch::Sender<u64>,
}

/// A reservation to write one file into the store; dropping it without
/// [`FileStore::commit`] gives the reservation up.
pub struct Pending {
    store: std::sync::Arc<FileStore>,
    sha: String,
    pub path: PathBuf,
    pub file: File,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.store.state.lock().unwrap().busy.remove(&self.sha);
    }
}

fn is_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl FileStore {
    /// Opens (or creates) the store in `dir`: files already there are kept
    /// (oldest first evicted past `threshold`), leftovers of interrupted
    /// writes removed.
    pub fn open(dir: &Path, threshold: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata()?;
            if is_digest(&name) && meta.is_file() {
                found.push((meta.modified().ok(), name, meta.len()));
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
        found.sort();
        let mut st = StoreState::default();
        for (_, name, len) in found {
            st.tick += 1;
            st.bytes += len;
            st.files.insert(name, (len, st.tick));
        }
        let store = Self { dir: dir.to_path_buf(), threshold, state: Mutex::new(st), stored: Default::default() };
        store.make_room(0);
        Ok(store)
    }

    pub fn bytes(&self) -> u64 {
        self.state.lock().unwrap().bytes
    }

    pub fn contains(&self, sha: &str) -> bool {
        self.state.lock().unwrap().files.contains_key(sha)
    }

    /// The stored file with this digest, opened for reading; its use is
    /// recorded for eviction.
    pub fn get(&self, sha: &str) -> Option<File> {
        {
            let mut st = self.state.lock().unwrap();
            st.tick += 1;
            let tick = st.tick;
            st.files.get_mut(sha)?.1 = tick;
        }
        match File::open(self.dir.join(sha)) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(sha, error = %e, "a stored file went missing");
                let mut st = self.state.lock().unwrap();
                if let Some((len, _)) = st.files.remove(sha) {
                    st.bytes -= len;
                }
                None
            }
        }
    }

    /// Reserves the writing of a file of `size` bytes, unless it is stored,
    /// being written, or larger than the whole store.
    pub fn begin(self: &std::sync::Arc<Self>, sha: &str, size: u64) -> Option<Pending> {
        if size > self.threshold || !is_digest(sha) {
            return None;
        }
        {
            let mut st = self.state.lock().unwrap();
            if st.files.contains_key(sha) || !st.busy.insert(sha.to_string()) {
                return None;
            }
        }
        let path = self.dir.join(format!(".partial-{sha}"));
        match File::create(&path) {
            Ok(file) => Some(Pending { store: self.clone(), sha: sha.to_string(), path, file }),
            Err(e) => {
                warn!(sha, error = %e, "cannot write into the file store");
                self.state.lock().unwrap().busy.remove(sha);
                None
            }
        }
    }

    /// Makes a fully written, verified file visible: fsynced, then renamed
    /// (a crash leaves either nothing or the whole file).
    pub fn commit(&self, mut p: Pending, size: u64) -> std::io::Result<()> {
        p.file.flush()?;
        p.file.sync_all()?;
        self.make_room(size);
        std::fs::rename(&p.path, self.dir.join(&p.sha))?;
        File::open(&self.dir)?.sync_all()?;
        let mut st = self.state.lock().unwrap();
        st.tick += 1;
        let tick = st.tick;
        st.bytes += size;
        st.files.insert(p.sha.clone(), (size, tick));
        drop(st);
        self.stored.send_modify(|n| *n += 1);
        debug!(sha = %p.sha, size, "file stored whole for passthrough");
        Ok(())
    }

    /// Waits until the file with this digest is stored.
    pub async fn stored(&self, sha: &str) {
        let mut rx = self.stored.subscribe();
        while !self.contains(sha) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Evicts least recently used files until `incoming` more bytes fit.
    /// A file a kernel still reads through passthrough stays readable: the
    /// open backing file holds it.
    fn make_room(&self, incoming: u64) {
        let mut st = self.state.lock().unwrap();
        while st.bytes + incoming > self.threshold {
            let Some(oldest) = st.files.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone()) else { break };
            let (len, _) = st.files.remove(&oldest).expect("just found");
            st.bytes -= len;
            let _ = std::fs::remove_file(self.dir.join(&oldest));
            info!(sha = %oldest, len, "evicted a stored file");
        }
    }
}

/// How one inode is open: counts per mode, the backing id its passthrough
/// opens share, and the request ids of the last OPEN and RELEASE counted.
/// A plugin that dies after counting a request but before answering it has
/// the kernel resend it to its successor with the same id, which is then
/// answered without being counted twice.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InodeIo {
    pub cached: u32,
    pub passthrough: u32,
    pub backing: u32,
    pub last_open: u64,
    pub last_release: u64,
}

impl InodeIo {
    /// Nothing open: the record can go.
    fn is_idle(&self) -> bool {
        self.cached == 0 && self.passthrough == 0
    }
}

const RECORD: u64 = 32;

/// The open state of a mount's large files, indexed by node id, kept in a
/// file for a successor on the same connection.
#[derive(Debug)]
pub struct IoTable {
    file: File,
    state: Mutex<HashMap<u64, InodeIo>>,
}

impl IoTable {
    /// Opens the table at `path`: kept when the connection is taken over,
    /// emptied for a new one.
    pub fn open(path: &Path, adopted: bool) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(!adopted).open(path)?;
        let bytes = if adopted { std::fs::read(path)? } else { Vec::new() };
        let mut state = HashMap::new();
        for (i, r) in bytes.chunks_exact(RECORD as usize).enumerate() {
            let word = |k: usize| u32::from_ne_bytes(r[k * 4..k * 4 + 4].try_into().expect("4 bytes"));
            let long = |at: usize| u64::from_ne_bytes(r[at..at + 8].try_into().expect("8 bytes"));
            let io = InodeIo {
                cached: word(0),
                passthrough: word(1),
                backing: word(2),
                last_open: long(16),
                last_release: long(24),
            };
            if io != InodeIo::default() {
                state.insert(i as u64, io);
            }
        }
        Ok(Self { file, state: Mutex::new(state) })
    }

    /// Applies `change` to one inode's state and records the result before
    /// returning it.
    pub fn update<T>(&self, nodeid: u64, change: impl FnOnce(&mut InodeIo) -> T) -> std::io::Result<(InodeIo, T)> {
        let mut st = self.state.lock().unwrap();
        let mut io = st.get(&nodeid).copied().unwrap_or_default();
        let out = change(&mut io);
        let mut rec = [0u8; RECORD as usize];
        rec[0..4].copy_from_slice(&io.cached.to_ne_bytes());
        rec[4..8].copy_from_slice(&io.passthrough.to_ne_bytes());
        rec[8..12].copy_from_slice(&io.backing.to_ne_bytes());
        rec[16..24].copy_from_slice(&io.last_open.to_ne_bytes());
        rec[24..32].copy_from_slice(&io.last_release.to_ne_bytes());
        self.file.write_all_at(&rec, nodeid * RECORD)?;
        st.insert(nodeid, io);
        Ok((io, out))
    }

    pub fn get(&self, nodeid: u64) -> InodeIo {
        self.state.lock().unwrap().get(&nodeid).copied().unwrap_or_default()
    }

    /// How many inodes are open in either mode (for tests and metrics).
    pub fn open_inodes(&self) -> usize {
        self.state.lock().unwrap().values().filter(|io| !io.is_idle()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn the_store_keeps_whole_files_under_its_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileStore::open(dir.path(), 10).unwrap());
        for (c, n) in [('a', 4), ('b', 4)] {
            let mut p = store.begin(&sha(c), n).unwrap();
            p.file.write_all(&vec![c as u8; n as usize]).unwrap();
            store.commit(p, n).unwrap();
        }
        assert!(store.begin(&sha('a'), 4).is_none(), "already stored");
        assert!(store.begin(&sha('c'), 11).is_none(), "larger than the store");
        assert!(store.get(&sha('a')).is_some(), "a is now the most recently used");
        let mut p = store.begin(&sha('c'), 4).unwrap();
        assert!(store.begin(&sha('c'), 4).is_none(), "being written");
        p.file.write_all(b"cccc").unwrap();
        store.commit(p, 4).unwrap();
        assert!(store.contains(&sha('a')) && store.contains(&sha('c')) && !store.contains(&sha('b')));
        assert_eq!(store.bytes(), 8);
        // An abandoned write leaves nothing; a reopened store keeps the rest.
        drop(store.begin(&sha('d'), 1).unwrap());
        drop(store);
        let names: HashSet<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, [sha('a'), sha('c')].into());
        let again = std::sync::Arc::new(FileStore::open(dir.path(), 10).unwrap());
        assert_eq!(again.bytes(), 8);
        assert_eq!(std::io::read_to_string(again.get(&sha('c')).unwrap()).unwrap(), "cccc");
    }

    #[test]
    fn the_io_table_outlives_its_process_but_not_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("io/models@1");
        let t = IoTable::open(&path, false).unwrap();
        t.update(7, |io| io.cached += 2).unwrap();
        t.update(9, |io| {
            io.passthrough = 1;
            io.backing = 3
        })
        .unwrap();
        t.update(7, |io| io.cached -= 1).unwrap();
        drop(t);
        let adopted = IoTable::open(&path, true).unwrap();
        assert_eq!(adopted.get(7), InodeIo { cached: 1, ..Default::default() });
        assert_eq!(adopted.get(9), InodeIo { passthrough: 1, backing: 3, ..Default::default() });
        adopted
            .update(9, |io| {
                io.passthrough = 0;
                io.last_release = 77
            })
            .unwrap();
        assert_eq!(adopted.get(9).last_release, 77);
        assert_eq!(adopted.open_inodes(), 1);
        drop(adopted);
        assert_eq!(IoTable::open(&path, false).unwrap().open_inodes(), 0, "a new connection starts empty");
    }
}
