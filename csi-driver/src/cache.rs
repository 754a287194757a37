//! The node cache: units of root data that any volume on the node has read,
//! kept on local disk under a size threshold. The policy (least recently
//! used, evicted before a new unit goes in) and the unit file's layout are
//! `tessera_core::cache`; this module keeps the files.
//!
//! A *unit* ([`UNIT`], 1 MiB of an item's data) is what a root fetches and
//! caches at once. Each unit keeps the CRC32C of every *block* ([`BLOCK`],
//! 64 KiB) in it, computed when the bytes arrive checked from the
//! chunkservers (or checked from a peer), stored in the unit's file before
//! the data, and checked on every read of the unit from the disk: a unit
//! whose block fails is dropped and fetched again. Units served to other
//! nodes carry their checksums, which the reader checks ([`crate::peers`]),
//! so every byte a pod reads was verified, whichever cache it came from.
//!
//! Units are keyed by fileset, version, item index and unit number, so a
//! new version never meets an old version's units. Each unit is a file
//! written to a temporary name and renamed, so a crash leaves whole units or
//! none; on start the cache adopts what is on disk, oldest first.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
pub use tessera_core::cache::{BLOCK, UNIT};
use tessera_core::cache::{Lru, unit_file};
use tessera_core::checksum::ChecksumMismatch;
use tessera_core::ids::ItemId;
use tracing::warn;

use crate::metrics::Metrics;

/// File names of units end so; files of the format before checksums (or
/// anything else) are removed when the cache opens.
const SUFFIX: &str = ".unit";

/// A unit: its item (by id, which no other item of any version ever has,
/// so a unit cached for one version is never taken for another's) and its
/// number in the item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitKey {
    pub item: ItemId,
    pub unit: u64,
}

impl UnitKey {
    /// `<first two hex digits of the item>/<item>-<unit>.unit`.
    fn file(&self) -> PathBuf {
        let item = self.item.to_string();
        PathBuf::from(&item[..2]).join(format!("{item}-{}{SUFFIX}", self.unit))
    }

    fn parse(name: &str) -> Option<Self> {
        let (item, unit) = name.strip_suffix(SUFFIX)?.split_once('-')?;
        Some(Self { item: item.parse().ok()?, unit: unit.parse().ok()? })
    }
}

/// A unit as another node's cache holds it: its data and the checksum of
/// each of its blocks, as stored (checked by whoever uses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUnit {
    pub data: Bytes,
    pub checksums: Vec<u32>,
}

impl StoredUnit {
    /// Whether the data is what its checksums say.
    pub fn verify(&self) -> Result<(), ChecksumMismatch> {
        unit_file::verify(&self.data, 0, &self.checksums)
    }
}

/// A node's cache of root units.
#[derive(Debug)]
pub struct NodeCache {
    dir: PathBuf,
    lru: Mutex<Lru<UnitKey>>,
    metrics: Arc<Metrics>,
    /// Open unit files, so a read is one pread rather than open, read, close.
    files: Mutex<HashMap<UnitKey, Arc<std::fs::File>>>,
    /// Numbers the temporary files of writes.
    writes: AtomicU64,
}

/// Block files kept open at most.
const OPEN_FILES: usize = 256;

impl NodeCache {
    /// Opens (or creates) the cache in `dir`, adopting blocks already there
    /// and evicting the oldest if they exceed `threshold` bytes.
    pub fn open(dir: &Path, threshold: u64, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for d in std::fs::read_dir(dir)? {
            let d = d?;
            if !d.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                let meta = f.metadata()?;
                match UnitKey::parse(&name).filter(|k| k.file() == f.path().strip_prefix(dir).unwrap_or(&f.path())) {
                    Some(key) if unit_file::data_len(meta.len()).is_some() => {
                        found.push((meta.modified().ok(), key, meta.len()))
                    }
                    // Leftovers of an interrupted write, a file of another
                    // format, or one no unit could be.
                    _ => {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
            // Directories of an older layout are left empty: remove them.
            let _ = std::fs::remove_dir(d.path());
        }
        found.sort();
        let cache = Self {
            dir: dir.to_path_buf(),
            lru: Mutex::new(Lru::new(threshold)),
            metrics,
            files: Mutex::default(),
            writes: AtomicU64::new(0),
        };
        {
            // Oldest first: past the threshold, the oldest go.
            let mut lru = cache.lru.lock().unwrap();
            for (_, key, len) in found {
                if lru.admits(len) {
                    let victims = lru.insert(key, len);
                    cache.evicted(victims);
                } else {
                    cache.evicted(vec![key]);
                }
            }
            cache.metrics.cache_bytes.set(lru.bytes() as i64);
        }
        Ok(cache)
    }

    pub fn bytes(&self) -> u64 {
        self.lru.lock().unwrap().bytes()
    }

    pub fn threshold(&self) -> u64 {
        self.lru.lock().unwrap().threshold()
    }

    pub fn contains(&self, key: &UnitKey) -> bool {
        self.lru.lock().unwrap().contains(key)
    }

    /// The whole unit, if cached (and whole on disk).
    pub fn get(&self, key: &UnitKey) -> Option<Bytes> {
        self.get_range(key, 0..UNIT)
    }

    /// Bytes `range` of a cached unit, if cached: the blocks covering the
    /// range are read and checked against their checksums. Shorter than
    /// asked where the unit ends. A unit failing its check is dropped (and
    /// counted): the caller fetches it again.
    pub fn get_range(&self, key: &UnitKey, range: std::ops::Range<u64>) -> Option<Bytes> {
        let Some(file_len) = self.lru.lock().unwrap().touch(key) else {
            self.metrics.cache_misses.inc();
            return None;
        };
        let len = unit_file::data_len(file_len).expect("adopted and stored units have unit lengths");
        let (start, end) = (range.start.min(len), range.end.min(len));
        if start >= end {
            self.metrics.cache_hits.inc();
            return Some(Bytes::new());
        }
        let (first, last) = (start / BLOCK, unit_file::blocks_in(end));
        let read = self.file(key).and_then(|f| {
            let sums = read_exact_at(&f, 4 * (last - first) as usize, 4 * first)?;
            let from = first * BLOCK;
            let to = (last * BLOCK).min(len);
            let data = read_exact_at(&f, (to - from) as usize, unit_file::data_offset(len) + from)?;
            Ok((sums, data, from))
        });
        match read {
            Ok((sums, data, from)) => {
                let sums = unit_file::checksums(&sums);
                let whole = data.len() as u64 == (last * BLOCK).min(len) - from && sums.len() as u64 == last - first;
                let checked = if whole {
                    unit_file::verify(&data, first, &sums).map_err(|e| e.to_string())
                } else {
                    Err(format!("its file ends early ({} bytes of data read)", data.len()))
                };
                if let Err(e) = checked {
                    warn!(item = %key.item, unit = key.unit, error = %e, "a cached unit failed its check on disk; dropping it");
                    self.metrics.cache_units_corrupt.inc();
                    self.drop_unit(key);
                    self.metrics.cache_misses.inc();
                    return None;
                }
                self.metrics.cache_hits.inc();
                let data = Bytes::from(data);
                Some(data.slice((start - from) as usize..(end - from) as usize))
            }
            Err(_) => {
                self.drop_unit(key);
                self.metrics.cache_misses.inc();
                None
            }
        }
    }

    /// A whole unit with its checksums as stored, unchecked, for another
    /// node (which checks it: end to end, across this disk and the network).
    pub fn get_stored(&self, key: &UnitKey) -> Option<StoredUnit> {
        let file_len = self.lru.lock().unwrap().touch(key)?;
        let len = unit_file::data_len(file_len).expect("adopted and stored units have unit lengths");
        let n = unit_file::blocks_in(len);
        let raw = self.file(key).and_then(|f| read_exact_at(&f, file_len as usize, 0));
        let Ok(raw) = raw.and_then(|r| {
            if r.len() as u64 == file_len {
                Ok(r)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the unit's file ends early"))
            }
        }) else {
            self.drop_unit(key);
            return None;
        };
        let raw = Bytes::from(raw);
        let checksums = unit_file::checksums(&raw[..4 * n as usize]);
        Some(StoredUnit { data: raw.slice(4 * n as usize..), checksums })
    }

    fn drop_unit(&self, key: &UnitKey) {
        let mut lru = self.lru.lock().unwrap();
        if lru.remove(key).is_some() {
            let _ = std::fs::remove_file(self.dir.join(key.file()));
        }
        self.files.lock().unwrap().remove(key);
        self.metrics.cache_bytes.set(lru.bytes() as i64);
    }

    fn file(&self, key: &UnitKey) -> std::io::Result<Arc<std::fs::File>> {
        if let Some(f) = self.files.lock().unwrap().get(key) {
            return Ok(f.clone());
        }
        let f = Arc::new(std::fs::File::open(self.dir.join(key.file()))?);
        let mut files = self.files.lock().unwrap();
        if files.len() >= OPEN_FILES {
            files.clear();
        }
        files.insert(key.clone(), f.clone());
        Ok(f)
    }

    /// Stores a unit whose bytes were checked, evicting the least recently
    /// used first so the cache stays within its threshold. A unit larger
    /// than the whole cache is not stored. Failures (a full disk) only mean
    /// the unit is not cached.
    pub fn put(&self, key: &UnitKey, data: &[u8]) {
        let file = unit_file::encode(data);
        let len = file.len() as u64;
        {
            let lru = self.lru.lock().unwrap();
            if !lru.admits(len) || lru.contains(key) {
                return;
            }
        }
        // Written aside under a name of its own (two roots may fetch the same
        // unit at once) and fsynced, then renamed: a crash leaves the whole
        // unit or none. Eviction, the rename and the count change together,
        // so the files on disk never exceed the threshold.
        let path = self.dir.join(key.file());
        let tmp =
            path.with_extension(format!("tmp{}-{}", std::process::id(), self.writes.fetch_add(1, Ordering::Relaxed)));
        let write = |tmp: &Path| -> std::io::Result<()> {
            if let Some(parent) = tmp.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(tmp)?;
            f.write_all(&file)?;
            f.sync_all()
        };
        let written = write(&tmp);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let mut lru = self.lru.lock().unwrap();
        let victims = lru.make_room(len);
        self.evicted(victims);
        if std::fs::rename(&tmp, &path).is_ok() {
            let none = lru.insert(key.clone(), len);
            debug_assert!(none.is_empty(), "room was made");
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
        self.metrics.cache_bytes.set(lru.bytes() as i64);
    }

    /// Deletes the files of units the policy no longer keeps.
    fn evicted(&self, victims: Vec<UnitKey>) {
        for victim in victims {
            self.files.lock().unwrap().remove(&victim);
            let _ = std::fs::remove_file(self.dir.join(victim.file()));
            self.metrics.cache_evictions.inc();
        }
    }
}

/// `len` bytes at `offset`, or fewer where the file ends.
fn read_exact_at(f: &std::fs::File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < buf.len() {
        match f.read_at(&mut buf[at..], offset + at as u64)? {
            0 => break,
            n => at += n,
        }
    }
    buf.truncate(at);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(item: u8, unit: u64) -> UnitKey {
        UnitKey { item: ItemId([item; 16]), unit }
    }

    /// Bytes of every unit file under the cache.
    fn on_disk(dir: &Path) -> (usize, u64) {
        let mut files = (0, 0);
        for d in std::fs::read_dir(dir).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).into_iter().flatten() {
                files.0 += 1;
                files.1 += f.unwrap().metadata().unwrap().len();
            }
        }
        files
    }

    #[test]
    fn units_come_back_and_items_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let c = NodeCache::open(dir.path(), 1 << 20, Arc::new(Metrics::new())).unwrap();
        c.put(&key(0, 0), b"a unit");
        assert_eq!(c.get(&key(0, 0)).unwrap(), Bytes::from_static(b"a unit"));
        assert!(c.get(&key(1, 0)).is_none(), "another item's unit is another unit");
    }

    #[test]
    fn the_least_recently_used_unit_goes_first_and_the_cache_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        // Each unit's file: 100 bytes and the checksum of its one block.
        let c = NodeCache::open(dir.path(), 3 * 104, metrics.clone()).unwrap();
        c.put(&key(0, 0), &[0; 100]);
        c.put(&key(0, 1), &[1; 100]);
        c.put(&key(0, 2), &[2; 100]);
        assert!(c.get(&key(0, 0)).is_some(), "0 is now the most recently used");
        c.put(&key(0, 3), &[3; 100]);
        assert!(!c.contains(&key(0, 1)), "1 was the least recently used");
        assert!(c.contains(&key(0, 0)) && c.contains(&key(0, 2)) && c.contains(&key(0, 3)));
        assert_eq!(metrics.cache_evictions.get(), 1);
        assert_eq!(on_disk(dir.path()).0, 3, "evicted files are deleted");
        drop(c);
        // Reopened with a smaller threshold: the oldest go.
        let c = NodeCache::open(dir.path(), 150, Arc::new(Metrics::new())).unwrap();
        assert_eq!(c.bytes(), 104);
    }

    /// A unit of three blocks, the last short.
    fn three_blocks() -> Vec<u8> {
        (0..2 * BLOCK + 100).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn ranges_come_back_checked_and_a_unit_damaged_on_disk_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let c = NodeCache::open(dir.path(), 1 << 20, metrics.clone()).unwrap();
        let data = three_blocks();
        c.put(&key(0, 0), &data);
        for range in [0..10, BLOCK - 5..BLOCK + 5, 2 * BLOCK..2 * BLOCK + 100, 0..UNIT, 7..7] {
            let want = &data[(range.start as usize).min(data.len())..(range.end as usize).min(data.len())];
            assert_eq!(&c.get_range(&key(0, 0), range.clone()).unwrap()[..], want, "{range:?}");
        }
        // Old-format and stray files are not adopted.
        // An older layout's directory and file, a unit of an impossible
        // length, and an empty one (a crash before the data was synced).
        std::fs::create_dir_all(dir.path().join("models@3")).unwrap();
        std::fs::write(dir.path().join("models@3/0-9"), b"no checksums").unwrap();
        let odd = dir.path().join(key(5, 0).file());
        std::fs::create_dir_all(odd.parent().unwrap()).unwrap();
        std::fs::write(&odd, [1, 2, 3]).unwrap();
        let empty = dir.path().join(key(6, 0).file());
        std::fs::create_dir_all(empty.parent().unwrap()).unwrap();
        std::fs::write(&empty, []).unwrap();
        drop(c);
        let c = NodeCache::open(dir.path(), 1 << 20, metrics.clone()).unwrap();
        assert!(!dir.path().join("models@3").exists() && !odd.exists() && !empty.exists());
        assert!(!c.contains(&key(5, 0)) && !c.contains(&key(6, 0)));
        // Flip a byte of the second block on disk.
        let path = dir.path().join(key(0, 0).file());
        let mut raw = std::fs::read(&path).unwrap();
        let at = 4 * 3 + BLOCK as usize + 17;
        raw[at] ^= 0x40;
        std::fs::write(&path, &raw).unwrap();
        assert_eq!(&c.get_range(&key(0, 0), 0..10).unwrap()[..], &data[..10], "the first block is intact");
        assert!(c.get_range(&key(0, 0), BLOCK..BLOCK + 1).is_none(), "the damaged block is not served");
        assert_eq!(metrics.cache_units_corrupt.get(), 1);
        assert!(!c.contains(&key(0, 0)) && !path.exists(), "the unit is dropped, to be fetched again");
    }

    #[test]
    fn stored_units_carry_their_checksums_and_damage_shows() {
        let dir = tempfile::tempdir().unwrap();
        let c = NodeCache::open(dir.path(), 1 << 20, Arc::new(Metrics::new())).unwrap();
        let data = three_blocks();
        c.put(&key(0, 1), &data);
        let stored = c.get_stored(&key(0, 1)).unwrap();
        assert_eq!(&stored.data[..], &data[..]);
        assert_eq!(stored.checksums.len(), 3);
        stored.verify().unwrap();
        let mut bad = stored.data.to_vec();
        bad[2 * BLOCK as usize] ^= 1;
        let e = StoredUnit { data: bad.into(), checksums: stored.checksums.clone() }.verify().unwrap_err();
        assert_eq!(e.block, 2);
        let short = StoredUnit { data: stored.data.clone(), checksums: stored.checksums[..2].to_vec() };
        assert!(short.verify().is_err(), "a checksum missing is a failure, not a pass");
        assert!(StoredUnit { data: Bytes::new(), checksums: vec![] }.verify().is_ok());
    }

    proptest! {
        /// Whatever the sequence of puts and gets, the cache never holds
        /// more than its threshold, on disk or in its count.
        #[test]
        fn the_cache_stays_under_its_threshold(ops in proptest::collection::vec((0u64..12, 1usize..200, any::<bool>()), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let c = NodeCache::open(dir.path(), 500, Arc::new(Metrics::new())).unwrap();
            for (block, len, read) in ops {
                if read {
                    if let Some(b) = c.get(&key(1, block)) {
                        prop_assert!(b.iter().all(|x| *x == block as u8));
                    }
                } else {
                    c.put(&key(1, block), &vec![block as u8; len]);
                }
                prop_assert!(c.bytes() <= 500);
                prop_assert_eq!(on_disk(dir.path()).1, c.bytes());
            }
        }
    }
}
