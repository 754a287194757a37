//! The state a leaf's journal describes, and the records a change needs.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::journal::Record;
use super::unit_map::{UnitMap, runs};
use super::{FIRST_LEAF_INO, LEAF_UNIT};
use crate::manifest::SHA256_XATTR;

/// Seconds and nanoseconds since the Unix epoch.
pub type Time = (i64, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// An inode's attributes as the leaf records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub nlink: u32,
    /// The root file whose bytes show where the leaf holds no unit.
    pub origin: Option<u64>,
    /// Root bytes at or past this offset are no longer the file's (it was
    /// truncated below them).
    pub origin_limit: u64,
    pub target: Option<Vec<u8>>,
    /// Extended attributes (names are UTF-8; JSON keys must be strings).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The content differs from the root's (its digest must be computed).
    pub changed: bool,
}

/// What a leaf needs of its root to replay a journal: a directory's
/// listing, to copy when the leaf first changes it.
pub trait RootView {
    /// The root's entries of `dir` (name, node id); empty if it has none.
    fn listing(&self, dir: u64) -> Vec<(Vec<u8>, u64)>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("not a regular file")]
    NotAFile,
    #[error("the leaf's capacity would be exceeded")]
    NoSpace,
    #[error("the write ends past the largest file offset")]
    TooBig,
}

/// What a write of `offset..end` into a file needs done before its data
/// is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    pub end: u64,
    /// Leaf units of a root-backed file the write makes the leaf's.
    pub new_units: Vec<u64>,
    /// Root bytes to copy into the leaf's data file first, at the same
    /// offsets: the parts of new units the write does not cover.
    pub copy_up: Vec<Range<u64>>,
}

/// A leaf's inodes, listings and units, as replayed from its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafState {
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    dirs: HashMap<u64, BTreeMap<Vec<u8>, u64>>,
    units: HashMap<u64, UnitMap>,
    /// Bytes of data held (what the capacity limits), kept as records
    /// apply rather than summed over every inode on each write.
    used: u64,
}

impl Default for LeafState {
    fn default() -> Self {
        Self { next_ino: FIRST_LEAF_INO, inodes: HashMap::new(), dirs: HashMap::new(), units: HashMap::new(), used: 0 }
    }
}

impl LeafState {
    /// The state `records` describe, applied in order to an empty leaf.
    pub fn from_records<'a>(root: &impl RootView, records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut st = Self::default();
        for r in records {
            st.apply(root, r);
        }
        st
    }

    /// The node id the next new inode gets.
    pub fn next_ino(&self) -> u64 {
        self.next_ino
    }

    /// The leaf's own record of an inode (none: unchanged from the root).
    pub fn inode(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// The leaf's own listing of a directory (none: the root's).
    pub fn listing(&self, dir: u64) -> Option<&BTreeMap<Vec<u8>, u64>> {
        self.dirs.get(&dir)
    }

    pub fn units(&self, ino: u64) -> Option<&UnitMap> {
        self.units.get(&ino)
    }

    /// Bytes of data the leaf holds.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Inodes no name links to (kept while a process holds them open).
    pub fn unlinked(&self) -> Vec<u64> {
        let mut gone: Vec<u64> = self.inodes.iter().filter(|(_, i)| i.nlink == 0).map(|(ino, _)| *ino).collect();
        gone.sort_unstable();
        gone
    }

    /// The bytes one inode holds: a leaf-only file its size, a root-backed
    /// one the units it copied up.
    fn held(&self, ino: u64) -> u64 {
        match self.inodes.get(&ino) {
            Some(i) if i.kind == Kind::File && i.origin.is_none() => i.size,
            Some(i) if i.kind == Kind::File => self.units.get(&ino).map_or(0, UnitMap::bytes),
            _ => 0,
        }
    }

    pub fn apply(&mut self, root: &impl RootView, r: &Record) {
        let touched = match r {
            Record::Inode { ino, .. } | Record::Forget { ino } | Record::Units { ino, .. } => Some(*ino),
            _ => None,
        };
        let before = touched.map_or(0, |ino| self.held(ino));
        self.apply_record(root, r);
        if let Some(ino) = touched {
            self.used = self.used - before + self.held(ino);
        }
    }

    fn apply_record(&mut self, root: &impl RootView, r: &Record) {
        match r {
            Record::Inode { ino, inode } => {
                self.inodes.insert(*ino, inode.clone());
            }
            Record::Forget { ino } => {
                self.inodes.remove(ino);
                self.units.remove(ino);
                self.dirs.remove(ino);
            }
            Record::Materialize { dir } => self.materialize(root, *dir),
            Record::Listing { dir, entries } => {
                self.dirs.insert(*dir, entries.iter().cloned().collect());
            }
            Record::Link { dir, name, ino } => {
                self.materialize(root, *dir);
                self.dirs.entry(*dir).or_default().insert(name.clone(), *ino);
            }
            Record::Unlink { dir, name } => {
                self.materialize(root, *dir);
                if let Some(d) = self.dirs.get_mut(dir) {
                    d.remove(name);
                }
            }
            Record::Units { ino, first, last } => self.units.entry(*ino).or_default().insert(*first..=*last),
            Record::NextIno { next } => self.next_ino = self.next_ino.max(*next),
        }
    }

    /// Gives `dir` a listing of its own, copied from the root, if it has
    /// none. Every record that changes a listing does this first, so a
    /// journal whose Materialize record was never written replays right.
    fn materialize(&mut self, root: &impl RootView, dir: u64) {
        self.dirs.entry(dir).or_insert_with(|| root.listing(dir).into_iter().collect());
    }

    /// Records that describe this state and nothing else (a compacted
    /// journal), in a stable order.
    pub fn compacted(&self) -> Vec<Record> {
        let mut out = vec![Record::NextIno { next: self.next_ino }];
        let mut inodes: Vec<_> = self.inodes.iter().collect();
        inodes.sort_unstable_by_key(|(ino, _)| **ino);
        out.extend(inodes.into_iter().map(|(ino, inode)| Record::Inode { ino: *ino, inode: inode.clone() }));
        let mut dirs: Vec<_> = self.dirs.iter().collect();
        dirs.sort_unstable_by_key(|(dir, _)| **dir);
        out.extend(dirs.into_iter().map(|(dir, entries)| Record::Listing {
            dir: *dir,
            entries: entries.iter().map(|(n, i)| (n.clone(), *i)).collect(),
        }));
        let mut units: Vec<_> = self.units.iter().collect();
        units.sort_unstable_by_key(|(ino, _)| **ino);
        for (ino, map) in units {
            out.extend(unit_records(*ino, map.runs()));
        }
        out
    }

    /// What writing `len` bytes at `offset` into file `ino` (attributes
    /// `inode`) needs, or why it cannot be done within `capacity`.
    pub fn plan_write(
        &self,
        ino: u64,
        inode: &Inode,
        offset: u64,
        len: u64,
        capacity: u64,
    ) -> Result<WritePlan, LeafError> {
        if inode.kind != Kind::File {
            return Err(LeafError::NotAFile);
        }
        let end = offset.checked_add(len).ok_or(LeafError::TooBig)?;
        let new_units = match (inode.origin, self.units.get(&ino)) {
            (None, _) => Vec::new(),
            (Some(_), Some(held)) => held.missing(offset, end),
            (Some(_), None) => UnitMap::default().missing(offset, end),
        };
        let growth = end.saturating_sub(inode.size) + new_units.len() as u64 * LEAF_UNIT;
        if self.used + growth > capacity {
            return Err(LeafError::NoSpace);
        }
        // The root's bytes still the file's: below the origin limit and the size.
        let root_end = inode.origin_limit.min(inode.size);
        let copy_up = new_units
            .iter()
            .map(|u| (u * LEAF_UNIT, (u + 1) * LEAF_UNIT))
            .filter(|&(start, stop)| !(offset <= start && end >= stop) && start < root_end)
            .map(|(start, stop)| start..stop.min(root_end))
            .collect();
        Ok(WritePlan { end, new_units, copy_up })
    }

    /// The records of a write that ended at `end` and made `new_units` the
    /// leaf's; `inode` is the file's attributes as they are now.
    pub fn written(ino: u64, mut inode: Inode, end: u64, new_units: &[u64], now: Time) -> Vec<Record> {
        inode.size = inode.size.max(end);
        content_changed(&mut inode, now);
        let mut records = vec![Record::Inode { ino, inode }];
        records.extend(unit_records(ino, runs(new_units.iter().copied())));
        records
    }

    /// Cuts or extends file `ino` to `size`: updates `inode` and returns
    /// the records for the units that go (the caller records the inode and
    /// cuts its data file).
    pub fn resize(
        &self,
        ino: u64,
        inode: &mut Inode,
        size: u64,
        capacity: u64,
        now: Time,
    ) -> Result<Vec<Record>, LeafError> {
        if inode.kind != Kind::File {
            return Err(LeafError::NotAFile);
        }
        // Leaf-only files count their whole size; a root-backed one counts
        // only the units it holds, so extending it is charged one unit at
        // most (what it reads past its old end is zeros, held by nobody).
        let growth = match inode.origin {
            None => size.saturating_sub(inode.size),
            Some(_) => size.saturating_sub(inode.size).min(LEAF_UNIT),
        };
        if size > inode.size && self.used + growth > capacity {
            return Err(LeafError::NoSpace);
        }
        let mut records = Vec::new();
        if size < inode.size {
            inode.origin_limit = inode.origin_limit.min(size);
            // Units wholly past the end go from the unit map.
            if let Some(held) = self.units.get(&ino) {
                let keep = size.div_ceil(LEAF_UNIT);
                if held.any_from(keep) {
                    let mut kept = held.clone();
                    kept.keep_below(keep);
                    records.push(Record::Forget { ino });
                    records.push(Record::Inode { ino, inode: inode.clone() });
                    records.extend(unit_records(ino, kept.runs()));
                }
            }
        }
        inode.size = size;
        content_changed(inode, now);
        Ok(records)
    }
}

/// The content of `inode` changed at `now`: its digest is no longer known.
fn content_changed(inode: &mut Inode, now: Time) {
    inode.changed = true;
    inode.xattrs.remove(SHA256_XATTR);
    (inode.mtime, inode.ctime) = (now, now);
}

fn unit_records(ino: u64, runs: Vec<(u64, u64)>) -> impl Iterator<Item = Record> {
    runs.into_iter().map(move |(first, last)| Record::Units { ino, first, last })
}
