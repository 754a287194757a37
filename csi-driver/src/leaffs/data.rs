//! File data: reads through the unit map, copy-up writes, sizes and digests.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tessera_core::leaf::{Inode, Kind, LEAF_UNIT, LeafState, Record};

use crate::fuse::abi::{Attr, SetAttr, fattr};
use crate::fuse::session::Result;
use crate::rootfs::SHA256_XATTR;

use super::{LeafFs, State, errno, leaf_errno, now};

impl LeafFs {
    pub(super) fn data_path(&self, ino: u64) -> PathBuf {
        self.dir.join("data").join(ino.to_string())
    }

    pub(super) fn data_file(&self, ino: u64) -> Result<Arc<File>> {
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

    /// Cuts or extends a file to `size`: the records of the units that go
    /// (the caller appends the inode's), its data file already cut.
    pub(super) fn resize(&self, st: &State, ino: u64, inode: &mut Inode, size: u64) -> Result<Vec<Record>> {
        let old = inode.size;
        let records = st.leaf.resize(ino, inode, size, self.capacity, now()).map_err(leaf_errno)?;
        if size < old {
            let f = self.data_file(ino)?;
            if f.metadata().map_err(errno)?.len() > size {
                f.set_len(size).map_err(errno)?;
            }
        }
        Ok(records)
    }

    pub(super) fn setattr(&self, ino: u64, sa: SetAttr) -> Result<Attr> {
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

    pub(super) fn writer(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.writers.lock().unwrap().entry(ino).or_default().clone()
    }

    /// The root's bytes of `ino` in `range` (clipped to what is still the
    /// file's), zeros past them.
    pub(super) async fn base(&self, origin: u64, limit: u64, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
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

    pub(super) async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let lock = self.writer(ino);
        let _one = lock.lock().await;
        let (inode, plan) = {
            let st = self.state.lock().unwrap();
            let inode = self.inode(&st, ino)?;
            let plan = st.leaf.plan_write(ino, &inode, offset, data.len() as u64, self.capacity).map_err(leaf_errno)?;
            (inode, plan)
        };
        let f = self.data_file(ino)?;
        // Copy up the root's part of units this write only partly covers.
        if let Some(origin) = inode.origin {
            for range in &plan.copy_up {
                let base = self.base(origin, inode.origin_limit, range.clone()).await?;
                f.write_all_at(&base, range.start).map_err(errno)?;
            }
        }
        f.write_all_at(data, offset).map_err(errno)?;
        let mut st = self.state.lock().unwrap();
        let inode = self.inode(&st, ino)?;
        let records = LeafState::written(ino, inode, plan.end, &plan.new_units, now());
        self.commit(&mut st, &records)?;
        Ok(data.len() as u32)
    }

    pub(super) async fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<Bytes>> {
        let (inode, present) = {
            let st = self.state.lock().unwrap();
            (self.inode(&st, ino)?, st.leaf.units(ino).cloned().unwrap_or_default())
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
            let unit = at / LEAF_UNIT;
            let seg_end = ((unit + 1) * LEAF_UNIT).min(end);
            if present.contains(unit) {
                parts.push(leaf(at..seg_end)?);
            } else {
                parts.push(Bytes::from(self.base(origin, inode.origin_limit, at..seg_end).await?));
            }
            at = seg_end;
        }
        Ok(parts)
    }

    /// The file's SHA-256: the root's if unchanged, else computed (once
    /// per change) from the content.
    pub(super) async fn digest(&self, ino: u64) -> Result<Option<String>> {
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

    pub(super) fn sync(&self, ino: Option<u64>) -> Result<()> {
        if let Some(ino) = ino
            && let Ok(f) = self.data_file(ino)
        {
            f.sync_data().map_err(errno)?;
        }
        self.journal.lock().unwrap().sync_data().map_err(errno)
    }
}
