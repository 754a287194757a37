//! Names: making, removing and renaming inodes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;
use tessera_core::leaf::{Inode, Kind, Record};

use crate::fuse::abi::InHeader;
use crate::fuse::session::Result;

use super::{LeafFs, RENAME_NOREPLACE, State, now};

impl LeafFs {
    /// Makes a new inode named `name` in `parent`.
    pub(super) fn make(
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
        let mut records = self.materialize(&st, parent)?;
        for r in &records {
            st.leaf.apply(&*self.root, r);
        }
        if st.leaf.listing(parent).is_some_and(|d| d.contains_key(name.as_bytes())) {
            return Err(Errno::EXIST);
        }
        if kind == Kind::File && st.leaf.used() >= self.capacity {
            return Err(Errno::NOSPC);
        }
        let ino = st.leaf.next_ino();
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
    pub(super) fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        let ino = self.child(&st, parent, name)?;
        let inode = self.inode(&st, ino)?;
        match (dir, inode.kind == Kind::Dir) {
            (true, false) => return Err(Errno::NOTDIR),
            (false, true) => return Err(Errno::ISDIR),
            (true, true) if !self.listing(&st, ino)?.is_empty() => return Err(Errno::NOTEMPTY),
            _ => {}
        }
        let mut records = self.materialize(&st, parent)?;
        records.push(Record::Unlink { dir: parent, name: name.as_bytes().to_vec() });
        records.extend(self.drop_link(&st, ino, inode));
        self.commit(&mut st, &records)?;
        self.forget_data(&st, ino);
        Ok(())
    }

    /// Records for one fewer link to `ino`; the last one (with the file
    /// not open) forgets it.
    pub(super) fn drop_link(&self, st: &State, ino: u64, mut inode: Inode) -> Vec<Record> {
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
    pub(super) fn forget_data(&self, st: &State, ino: u64) {
        if st.leaf.inode(ino).is_none() {
            self.files.lock().unwrap().remove(&ino);
            let _ = std::fs::remove_file(self.data_path(ino));
        }
    }

    pub(super) fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> Result<()> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(Errno::INVAL);
        }
        let mut st = self.state.lock().unwrap();
        let ino = self.child(&st, parent, name)?;
        let inode = self.inode(&st, ino)?;
        let mut records = self.materialize(&st, parent)?;
        records.extend(self.materialize(&st, newparent)?);
        for r in &records {
            st.leaf.apply(&*self.root, r);
        }
        let replaced = st.leaf.listing(newparent).and_then(|d| d.get(newname.as_bytes()).copied());
        if let Some(old) = replaced {
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
        let mut moved = inode;
        moved.ctime = now();
        records.push(Record::Inode { ino, inode: moved });
        self.commit(&mut st, &records)?;
        if let Some(old) = replaced {
            self.forget_data(&st, old);
        }
        Ok(())
    }
}
