//! The stripe store: stripes as files on one or more data directories.
//!
//! Each stripe is one file, `<data dir>/stripes/<2 hex>/<item>.<index>`, with a
//! header (length, block size, a CRC32C per block) followed by the bytes at a
//! 4 KiB-aligned offset. A write goes to `<data dir>/tmp/`, is preallocated,
//! checked block by block against the writer's checksums, fsynced, renamed into
//! place and its directory fsynced, so a stripe is either wholly visible and
//! durable or absent. Leftovers in `tmp/` are interrupted writes and are removed
//! at start-up. All methods block; the gRPC layer calls them off the runtime.
//!
//! This module owns the on-disk format and the in-memory index of what is
//! stored. It does not know about request classes, faults or the network.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tessera_core::checksum::{self, ChecksumMismatch};
use tessera_core::ids::{ItemId, StripeId};
use tessera_core::layout::STRIPE_ALIGN;
use tracing::{info, warn};

const MAGIC: &[u8; 8] = b"TESSTRP1";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
/// Data starts on a page boundary so reads of whole blocks stay page-aligned.
const DATA_ALIGN: u64 = 4096;
/// Largest stripe a chunkserver accepts (a stripe unit is typically 1 MiB).
pub const MAX_STRIPE_LEN: u64 = 1 << 30;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stripe {0} not found")]
    NotFound(StripeId),
    #[error("stripe {stripe} already exists with different {what}")]
    Conflict { stripe: StripeId, what: &'static str },
    #[error("stripe {0} is being written by another request")]
    WriteInProgress(StripeId),
    #[error("stripe {stripe}: invalid header: {reason}")]
    InvalidHeader { stripe: StripeId, reason: String },
    #[error("stripe {stripe}: received {got} bytes, the header announced {expected}")]
    SizeMismatch { stripe: StripeId, expected: u64, got: u64 },
    #[error("stripe {stripe}: block {block} does not match the checksum in the header (stored nothing)")]
    WriteChecksum { stripe: StripeId, block: usize },
    #[error("stripe {stripe}: no space for {needed} bytes in data dir {dir}")]
    NoSpace { stripe: StripeId, dir: PathBuf, needed: u64 },
    #[error("stripe {stripe}: block {} checksum mismatch in {path} (stored {:08x}, read {:08x})", .mismatch.block, .mismatch.expected, .mismatch.actual)]
    Corrupt { stripe: StripeId, path: PathBuf, mismatch: ChecksumMismatch },
    #[error("stripe {stripe}: range {offset}+{length} is invalid: {reason}")]
    BadRange { stripe: StripeId, offset: u64, length: u64, reason: RangeProblem },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

/// What is wrong with a requested range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeProblem {
    StartsPastEnd,
    EndsPastEnd,
    Overflows,
    UnalignedStart,
    UnalignedEnd,
}

impl RangeProblem {
    /// Whether the range is well-formed but outside the stripe.
    pub fn is_out_of_range(self) -> bool {
        matches!(self, RangeProblem::StartsPastEnd | RangeProblem::EndsPastEnd | RangeProblem::Overflows)
    }
}

impl std::fmt::Display for RangeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RangeProblem::StartsPastEnd => "starts past the end of the stripe",
            RangeProblem::EndsPastEnd => "ends past the end of the stripe",
            RangeProblem::Overflows => "overflows",
            RangeProblem::UnalignedStart => "offset is not block-aligned",
            RangeProblem::UnalignedEnd => "end is neither block-aligned nor the stripe's end",
        })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// What the store knows of one stored stripe.
#[derive(Debug, Clone)]
pub struct StripeMeta {
    pub dir: usize,
    pub length: u64,
    pub block_size: u32,
    pub crcs: Arc<[u32]>,
    data_offset: u64,
}

/// The header a writer sends before the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeHeader {
    pub stripe: StripeId,
    pub length: u64,
    pub block_size: u32,
    pub crcs: Vec<u32>,
}

impl StripeHeader {
    fn validate(&self) -> Result<(), StoreError> {
        let bad = |reason: String| StoreError::InvalidHeader { stripe: self.stripe, reason };
        if self.block_size == 0 || !(self.block_size as usize).is_multiple_of(STRIPE_ALIGN) {
            return Err(bad(format!("block_size {} is not a positive multiple of {STRIPE_ALIGN}", self.block_size)));
        }
        if self.block_size > MAX_BLOCK_SIZE {
            return Err(bad(format!("block_size {} exceeds {MAX_BLOCK_SIZE}", self.block_size)));
        }
        if self.length > MAX_STRIPE_LEN {
            return Err(bad(format!("length {} exceeds {MAX_STRIPE_LEN}", self.length)));
        }
        let blocks = self.length.div_ceil(self.block_size as u64) as usize;
        if self.crcs.len() != blocks {
            return Err(bad(format!("{} block checksums for {blocks} blocks", self.crcs.len())));
        }
        Ok(())
    }

    fn data_offset(&self) -> u64 {
        ((HEADER_LEN + 4 * self.crcs.len()) as u64).div_ceil(DATA_ALIGN) * DATA_ALIGN
    }

    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(self.data_offset() as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        h.extend_from_slice(&self.block_size.to_le_bytes());
        h.extend_from_slice(&self.length.to_le_bytes());
        h.extend_from_slice(self.stripe.item.as_bytes());
        h.extend_from_slice(&self.stripe.index.to_le_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        let crc_pos = h.len();
        h.extend_from_slice(&[0u8; 4]);
        h.resize(HEADER_LEN, 0);
        for c in &self.crcs {
            h.extend_from_slice(&c.to_le_bytes());
        }
        let sum = checksum::crc32c(&h);
        h[crc_pos..crc_pos + 4].copy_from_slice(&sum.to_le_bytes());
        h.resize(self.data_offset() as usize, 0);
        h
    }

    /// Parses and checks a stripe file's header.
    fn decode(file: &File, path: &Path) -> Result<Self, String> {
        let mut fixed = [0u8; HEADER_LEN];
        file.read_exact_at(&mut fixed, 0).map_err(|e| format!("reading header: {e}"))?;
        if &fixed[0..8] != MAGIC {
            return Err("not a stripe file (bad magic)".into());
        }
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = u32_at(&fixed, 8);
        if version != FORMAT_VERSION {
            return Err(format!("unknown format version {version}"));
        }
        let block_size = u32_at(&fixed, 12);
        let length = u64::from_le_bytes(fixed[16..24].try_into().unwrap());
        let item = ItemId::from_bytes(&fixed[24..40]).map_err(|e| e.to_string())?;
        let index = u16::from_le_bytes(fixed[40..42].try_into().unwrap());
        let blocks = u32_at(&fixed, 44) as usize;
        let stored_sum = u32_at(&fixed, 48);
        if blocks > (MAX_STRIPE_LEN / STRIPE_ALIGN as u64) as usize {
            return Err(format!("implausible block count {blocks}"));
        }
        let mut table = vec![0u8; 4 * blocks];
        file.read_exact_at(&mut table, HEADER_LEN as u64).map_err(|e| format!("reading checksums: {e}"))?;
        fixed[48..52].fill(0);
        let sum = crc32c::crc32c_append(checksum::crc32c(&fixed), &table);
        if sum != stored_sum {
            return Err(format!("header checksum mismatch in {}", path.display()));
        }
        let crcs = table.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        let h = Self { stripe: StripeId::new(item, index), length, block_size, crcs };
        h.validate().map_err(|e| e.to_string())?;
        Ok(h)
    }
}

/// One data directory, usually one device.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    fn stripes(&self) -> PathBuf {
        self.path.join("stripes")
    }
    fn tmp(&self) -> PathBuf {
        self.path.join("tmp")
    }
    fn quarantine(&self) -> PathBuf {
        self.path.join("quarantine")
    }
    fn stripe_path(&self, id: &StripeId) -> PathBuf {
        let name = id.to_string();
        self.stripes().join(&name[..2]).join(name)
    }

    /// Free and total bytes of the filesystem holding this directory.
    pub fn space(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.path)?;
        Ok((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
    }
}

/// Whether a write stored new bytes or found them already there.
#[derive(Debug)]
pub enum WriteStart {
    AlreadyPresent { dir: usize },
    New(StripeWriter),
}

/// What happened to a stripe, as the master's heartbeats report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Stored,
    Removed,
    /// Taken out of service because a block failed its checksum: lost here
    /// for good, the file kept under `quarantine/` for inspection.
    Quarantined,
}

#[derive(Debug, Default)]
struct Index {
    stripes: HashMap<StripeId, StripeMeta>,
    /// Stripes stored, removed or quarantined since the last
    /// [`StripeStore::take_changes`], for the master's heartbeats.
    changes: Vec<(StripeId, Change)>,
    /// The change log overflowed: only a full inventory is accurate now.
    overflowed: bool,
}

/// Changes kept between two heartbeats before a full inventory is needed.
const MAX_CHANGES: usize = 100_000;

impl Index {
    fn changed(&mut self, id: StripeId, change: Change) {
        // Quarantines are rare and only the change log carries them to the
        // master (an inventory just omits the stripe): never dropped.
        if self.changes.len() < MAX_CHANGES || change == Change::Quarantined {
            self.changes.push((id, change));
        } else {
            self.overflowed = true;
        }
    }
}

/// Stripes on a set of data directories.
#[derive(Debug)]
pub struct StripeStore {
    dirs: Vec<DataDir>,
    index: RwLock<Index>,
    writing: Mutex<HashSet<StripeId>>,
}

impl StripeStore {
    /// Opens (creating if needed) the data directories, removes interrupted
    /// writes and indexes what is stored.
    pub fn open(paths: &[PathBuf]) -> Result<Arc<Self>, StoreError> {
        let dirs: Vec<DataDir> = paths.iter().map(|p| DataDir { path: p.clone() }).collect();
        let mut index = Index::default();
        for (di, dir) in dirs.iter().enumerate() {
            for sub in [dir.stripes(), dir.tmp()] {
                fs::create_dir_all(&sub).map_err(io_err("create", &sub))?;
            }
            let tmp = dir.tmp();
            for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
                let p = entry.map_err(io_err("list", &tmp))?.path();
                warn!(path = %p.display(), "removing an interrupted write");
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
            let found = scan(dir, di, &mut index)?;
            info!(data_dir = %dir.path.display(), stripes = found, "indexed data dir");
        }
        Ok(Arc::new(Self { dirs, index: RwLock::new(index), writing: Mutex::new(HashSet::new()) }))
    }

    pub fn dirs(&self) -> &[DataDir] {
        &self.dirs
    }

    pub fn get(&self, id: &StripeId) -> Option<StripeMeta> {
        self.index.read().unwrap().stripes.get(id).cloned()
    }

    /// Every stored stripe with its length and data dir.
    pub fn inventory(&self) -> Vec<(StripeId, u64, usize)> {
        let idx = self.index.read().unwrap();
        let mut v: Vec<_> = idx.stripes.iter().map(|(id, m)| (*id, m.length, m.dir)).collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// Stripe count and stored bytes per data dir.
    pub fn usage(&self) -> Vec<(u64, u64)> {
        let mut out = vec![(0u64, 0u64); self.dirs.len()];
        for m in self.index.read().unwrap().stripes.values() {
            out[m.dir].0 += 1;
            out[m.dir].1 += m.length;
        }
        out
    }

    /// Starts a write. An identical stored stripe makes the write a no-op (a
    /// retry); a different one is a conflict.
    pub fn begin_write(self: &Arc<Self>, header: StripeHeader) -> Result<WriteStart, StoreError> {
        header.validate()?;
        let id = header.stripe;
        if let Some(existing) = self.get(&id) {
            if existing.length != header.length || existing.block_size != header.block_size {
                return Err(StoreError::Conflict { stripe: id, what: "length or block size" });
            }
            if existing.crcs[..] != header.crcs[..] {
                return Err(StoreError::Conflict { stripe: id, what: "contents" });
            }
            return Ok(WriteStart::AlreadyPresent { dir: existing.dir });
        }
        if !self.writing.lock().unwrap().insert(id) {
            return Err(StoreError::WriteInProgress(id));
        }
        // From here on the writer's Drop releases the claim.
        let total = header.data_offset() + header.length;
        let dir = match self.pick_dir(total) {
            Some(d) => d,
            None => {
                self.writing.lock().unwrap().remove(&id);
                let dir = self.dirs.first().map(|d| d.path.clone()).unwrap_or_default();
                return Err(StoreError::NoSpace { stripe: id, dir, needed: total });
            }
        };
        StripeWriter::create(self.clone(), dir, header).map(WriteStart::New)
    }

    /// The data dir with the most free space that can hold `bytes`.
    fn pick_dir(&self, bytes: u64) -> Option<usize> {
        self.dirs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.space().ok().map(|(free, _)| (i, free)))
            .filter(|(_, free)| *free >= bytes)
            .max_by_key(|(_, free)| *free)
            .map(|(i, _)| i)
    }

    /// Reads `[offset, offset + length)` of a stripe (block-aligned start; end
    /// block-aligned or the stripe's end; length 0 reads to the end) and checks
    /// every block against its stored checksum. Returns the bytes and the
    /// checksums of the blocks they span.
    pub fn read(&self, id: &StripeId, offset: u64, length: u64) -> Result<(Bytes, StripeMeta), StoreError> {
        let (meta, range) = self.resolve(id, offset, length)?;
        let path = self.dirs[meta.dir].stripe_path(id);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(*id),
            _ => StoreError::Io { op: "open", path: path.clone(), source: e },
        })?;
        let len = (range.end - range.start) as usize;
        let mut buf = Vec::with_capacity(len);
        let mut filled = 0;
        while filled < len {
            // Read into uninitialised capacity: zero-filling first would cost a
            // memory pass on the hot path.
            let (done, _) = rustix::io::pread(
                &file,
                &mut buf.spare_capacity_mut()[..len - filled],
                meta.data_offset + range.start + filled as u64,
            )
            .map_err(|e| StoreError::Io { op: "read", path: path.clone(), source: e.into() })?;
            if done.is_empty() {
                return Err(StoreError::Io {
                    op: "read",
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "stripe file is shorter than its header says"),
                });
            }
            filled += done.len();
            // SAFETY: pread initialised `done.len()` more bytes directly after
            // the `filled` bytes already initialised.
            unsafe { buf.set_len(filled) };
        }
        check_blocks(id, &meta, &range, &buf, &path)?;
        Ok((Bytes::from(buf), meta))
    }

    /// The stripe's metadata and the byte range `offset`/`length` denotes,
    /// after checking that the range is readable.
    pub fn resolve(
        &self,
        id: &StripeId,
        offset: u64,
        length: u64,
    ) -> Result<(StripeMeta, std::ops::Range<u64>), StoreError> {
        let meta = self.get(id).ok_or(StoreError::NotFound(*id))?;
        let range = check_range(id, &meta, offset, length)?;
        Ok((meta, range))
    }

    /// Deletes a stripe; `false` if it was not stored.
    pub fn delete(&self, id: &StripeId) -> Result<bool, StoreError> {
        let meta = {
            let mut idx = self.index.write().unwrap();
            let Some(meta) = idx.stripes.remove(id) else {
                return Ok(false);
            };
            idx.changed(*id, Change::Removed);
            meta
        };
        let path = self.dirs[meta.dir].stripe_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Io { op: "remove", path, source: e });
            }
        }
        if let Some(parent) = path.parent() {
            fsync_dir(parent)?;
        }
        Ok(true)
    }

    /// Moves a stripe whose bytes fail their checksums out of service, so it
    /// is reported lost (and rebuilt elsewhere) rather than served. The file
    /// is kept under `quarantine/` with a unique suffix for inspection.
    /// Returns whether this call took it out (`false`: it was not in service).
    pub fn quarantine(&self, id: &StripeId) -> Result<bool, StoreError> {
        let meta = {
            let mut idx = self.index.write().unwrap();
            let Some(meta) = idx.stripes.remove(id) else {
                return Ok(false);
            };
            idx.changed(*id, Change::Quarantined);
            meta
        };
        let dir = &self.dirs[meta.dir];
        let from = dir.stripe_path(id);
        let qdir = dir.quarantine();
        fs::create_dir_all(&qdir).map_err(io_err("create", &qdir))?;
        let to = qdir.join(format!("{id}.{:016x}", rand::random::<u64>()));
        fs::rename(&from, &to).map_err(io_err("rename", &from))?;
        fsync_dir(&qdir)?;
        if let Some(parent) = from.parent() {
            fsync_dir(parent)?;
        }
        warn!(stripe = %id, to = %to.display(), "quarantined a corrupt stripe");
        Ok(true)
    }

    /// Checks `[offset, offset + length)` of a stripe (as [`Self::read`]
    /// takes ranges) against its block checksums, reading the device rather
    /// than the page cache where the filesystem allows it (O_DIRECT), so a
    /// scrub finds what is on disk and does not evict what serving reads
    /// keep cached. Returns the bytes checked.
    pub fn verify(&self, id: &StripeId, offset: u64, length: u64) -> Result<u64, StoreError> {
        let (meta, range) = self.resolve(id, offset, length)?;
        let path = self.dirs[meta.dir].stripe_path(id);
        let (at, len) = (meta.data_offset + range.start, (range.end - range.start) as usize);
        let open_failed = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(*id),
            _ => StoreError::Io { op: "open", path: path.clone(), source: e },
        };
        let read_failed = |e: io::Error| StoreError::Io { op: "read", path: path.clone(), source: e };
        // EINVAL, at the open or the first read, is a filesystem without
        // O_DIRECT (tmpfs, some FUSE and network ones): read it through the
        // cache instead.
        let einval = |e: &io::Error| e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error());
        let direct = OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32).open(&path);
        let buf = match direct.map(|file| read_direct(&file, at, len)) {
            Ok(Ok(buf)) => buf,
            Ok(Err(e)) | Err(e) if einval(&e) => {
                let file = File::open(&path).map_err(open_failed)?;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, at).map_err(read_failed)?;
                buf
            }
            Ok(Err(e)) => return Err(read_failed(e)),
            Err(e) => return Err(open_failed(e)),
        };
        check_blocks(id, &meta, &range, &buf, &path)?;
        Ok(range.end - range.start)
    }

    fn publish(&self, id: StripeId, meta: StripeMeta) {
        let mut idx = self.index.write().unwrap();
        idx.stripes.insert(id, meta);
        idx.changed(id, Change::Stored);
    }

    /// The stripes stored, removed and quarantined since the last call, and
    /// whether the log overflowed (too many changes to keep: send a full
    /// inventory instead; quarantines are kept even then).
    pub fn take_changes(&self) -> (Vec<(StripeId, Change)>, bool) {
        let mut idx = self.index.write().unwrap();
        let changes = std::mem::take(&mut idx.changes);
        (changes, std::mem::take(&mut idx.overflowed))
    }
}

fn check_range(id: &StripeId, meta: &StripeMeta, offset: u64, length: u64) -> Result<std::ops::Range<u64>, StoreError> {
    let bad = |reason| StoreError::BadRange { stripe: *id, offset, length, reason };
    let bs = meta.block_size as u64;
    if offset > meta.length {
        return Err(bad(RangeProblem::StartsPastEnd));
    }
    let end = if length == 0 {
        meta.length
    } else {
        offset.checked_add(length).ok_or_else(|| bad(RangeProblem::Overflows))?
    };
    if end > meta.length {
        return Err(bad(RangeProblem::EndsPastEnd));
    }
    if !offset.is_multiple_of(bs) {
        return Err(bad(RangeProblem::UnalignedStart));
    }
    if !end.is_multiple_of(bs) && end != meta.length {
        return Err(bad(RangeProblem::UnalignedEnd));
    }
    Ok(offset..end)
}

/// Indexes one data dir's stripe files; unreadable ones are quarantined.
fn scan(dir: &DataDir, di: usize, index: &mut Index) -> Result<usize, StoreError> {
    let root = dir.stripes();
    let mut found = 0;
    for shard in fs::read_dir(&root).map_err(io_err("list", &root))? {
        let shard = shard.map_err(io_err("list", &root))?.path();
        if !shard.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&shard).map_err(io_err("list", &shard))? {
            let path = entry.map_err(io_err("list", &shard))?.path();
            let file = File::open(&path).map_err(io_err("open", &path))?;
            let named: Option<StripeId> = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok());
            let checked = StripeHeader::decode(&file, &path).and_then(|h| {
                let size = file.metadata().map_err(|e| e.to_string())?.len();
                if Some(h.stripe) != named {
                    Err("file name does not match the header".to_string())
                } else if size != h.data_offset() + h.length {
                    Err(format!("file holds {size} bytes, the header says {}", h.data_offset() + h.length))
                } else {
                    Ok(h)
                }
            });
            match checked {
                Ok(h) => {
                    let meta = StripeMeta {
                        dir: di,
                        length: h.length,
                        block_size: h.block_size,
                        data_offset: h.data_offset(),
                        crcs: h.crcs.into(),
                    };
                    if index.stripes.insert(h.stripe, meta).is_some() {
                        warn!(stripe = %h.stripe, path = %path.display(), "stripe stored twice; keeping the last one found");
                    }
                    found += 1;
                }
                Err(reason) => {
                    let qdir = dir.quarantine();
                    fs::create_dir_all(&qdir).map_err(io_err("create", &qdir))?;
                    let to = qdir.join(path.file_name().unwrap_or_default());
                    warn!(path = %path.display(), %reason, "quarantining an unreadable stripe file");
                    fs::rename(&path, &to).map_err(io_err("rename", &path))?;
                }
            }
        }
    }
    Ok(found)
}

/// Checks the bytes of `range` of a stripe against their blocks' stored CRCs.
fn check_blocks(
    id: &StripeId,
    meta: &StripeMeta,
    range: &std::ops::Range<u64>,
    buf: &[u8],
    path: &Path,
) -> Result<(), StoreError> {
    let bs = meta.block_size as usize;
    let first = (range.start / bs as u64) as usize;
    let last = (range.end as usize).div_ceil(bs);
    checksum::verify_blocks(buf, first, bs, &meta.crcs[first..last]).map_err(|mismatch| StoreError::Corrupt {
        stripe: *id,
        path: path.to_path_buf(),
        mismatch,
    })
}

/// Reads `len` bytes at `at` from a file opened with O_DIRECT: the range is
/// widened to whole 4 KiB pages into a page-aligned buffer, and the part
/// asked for is returned.
fn read_direct(file: &File, at: u64, len: usize) -> io::Result<Vec<u8>> {
    const PAGE: usize = 4096;
    let start = at / PAGE as u64 * PAGE as u64;
    let skip = (at - start) as usize;
    let span = (skip + len).div_ceil(PAGE) * PAGE;
    // An over-allocated buffer whose aligned window is used: no unsafe.
    let mut raw = vec![0u8; span + PAGE];
    let pad = raw.as_ptr().align_offset(PAGE);
    let window = &mut raw[pad..pad + span];
    let mut filled = 0;
    while filled < skip + len {
        let n = file.read_at(&mut window[filled..], start + filled as u64)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stripe file is shorter than its header says"));
        }
        filled += n;
        if !filled.is_multiple_of(PAGE) {
            // Only the end of the file ends a direct read off a page boundary.
            break;
        }
    }
    if filled < skip + len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stripe file is shorter than its header says"));
    }
    Ok(window[skip..skip + len].to_vec())
}

fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io_err("fsync", path))
}

/// A stripe being written. Dropping it before [`StripeWriter::finish`]
/// removes the temporary file: nothing half-written ever becomes visible.
#[derive(Debug)]
pub struct StripeWriter {
    store: Arc<StripeStore>,
    dir: usize,
    header: StripeHeader,
    tmp: PathBuf,
    file: Option<File>,
    received: u64,
    block_crc: u32,
    block_fill: usize,
    block: usize,
}

impl StripeWriter {
    fn create(store: Arc<StripeStore>, dir: usize, header: StripeHeader) -> Result<Self, StoreError> {
        let tmp = store.dirs[dir].tmp().join(format!("{}.{:016x}", header.stripe, rand::random::<u64>()));
        let mut w = Self { store, dir, header, tmp, file: None, received: 0, block_crc: 0, block_fill: 0, block: 0 };
        let file = OpenOptions::new().write(true).create_new(true).open(&w.tmp).map_err(|e| w.classify("create", e))?;
        let total = w.header.data_offset() + w.header.length;
        // Reserve the space up front so a full disk fails here, before any
        // bytes move, rather than halfway through the stream.
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, total) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {}
            Err(e) => return Err(w.classify("allocate", e.into())),
        }
        w.file = Some(file);
        let head = w.header.encode();
        w.write_all(&head)?;
        Ok(w)
    }

    pub fn stripe(&self) -> StripeId {
        self.header.stripe
    }

    /// Index of the data dir receiving the stripe.
    pub fn dir(&self) -> usize {
        self.dir
    }

    fn classify(&self, op: &'static str, e: io::Error) -> StoreError {
        if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            StoreError::NoSpace {
                stripe: self.header.stripe,
                dir: self.store.dirs[self.dir].path.clone(),
                needed: self.header.data_offset() + self.header.length,
            }
        } else {
            StoreError::Io { op, path: self.tmp.clone(), source: e }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let res = self.file.as_mut().expect("file is open while writing").write_all(bytes);
        res.map_err(|e| self.classify("write", e))
    }

    /// Appends bytes, checking each completed block against the header.
    pub fn append(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        let id = self.header.stripe;
        if self.received + data.len() as u64 > self.header.length {
            return Err(StoreError::SizeMismatch {
                stripe: id,
                expected: self.header.length,
                got: self.received + data.len() as u64,
            });
        }
        self.write_all(data)?;
        self.received += data.len() as u64;
        let bs = self.header.block_size as usize;
        while !data.is_empty() {
            let take = (bs - self.block_fill).min(data.len());
            self.block_crc = crc32c::crc32c_append(self.block_crc, &data[..take]);
            self.block_fill += take;
            data = &data[take..];
            if self.block_fill == bs {
                self.close_block()?;
            }
        }
        Ok(())
    }

    fn close_block(&mut self) -> Result<(), StoreError> {
        if self.header.crcs.get(self.block) != Some(&self.block_crc) {
            return Err(StoreError::WriteChecksum { stripe: self.header.stripe, block: self.block });
        }
        self.block += 1;
        self.block_crc = 0;
        self.block_fill = 0;
        Ok(())
    }

    /// Makes the stripe durable and visible.
    pub fn finish(mut self) -> Result<usize, StoreError> {
        let id = self.header.stripe;
        if self.received != self.header.length {
            return Err(StoreError::SizeMismatch { stripe: id, expected: self.header.length, got: self.received });
        }
        if self.block_fill > 0 {
            self.close_block()?;
        }
        let file = self.file.take().expect("file is open until finish");
        file.sync_all().map_err(|e| self.classify("fsync", e))?;
        drop(file);
        let dir = &self.store.dirs[self.dir];
        let dest = dir.stripe_path(&id);
        let shard = dest.parent().expect("stripe paths have a parent");
        let new_shard = !shard.exists();
        fs::create_dir_all(shard).map_err(io_err("create", shard))?;
        fs::rename(&self.tmp, &dest).map_err(io_err("rename", &self.tmp))?;
        fsync_dir(shard)?;
        if new_shard {
            fsync_dir(&dir.stripes())?;
        }
        let meta = StripeMeta {
            dir: self.dir,
            length: self.header.length,
            block_size: self.header.block_size,
            data_offset: self.header.data_offset(),
            crcs: std::mem::take(&mut self.header.crcs).into(),
        };
        self.store.publish(id, meta);
        // The temporary file is now the stripe; Drop must not remove it.
        self.tmp = PathBuf::new();
        Ok(self.dir)
    }
}

impl Drop for StripeWriter {
    fn drop(&mut self) {
        self.file.take();
        if !self.tmp.as_os_str().is_empty()
            && let Err(e) = fs::remove_file(&self.tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.tmp.display(), error = %e, "could not remove an abandoned write");
        }
        self.store.writing.lock().unwrap().remove(&self.header.stripe);
    }
}

#[cfg(test)]
mod tests;
