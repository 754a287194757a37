//! The node block cache: root blocks that any volume on the node has read,
//! kept on local disk under a size threshold with least-recently-used
//! eviction (seed 004, FIG. 4: evict before inserting until the new block
//! fits, so the cache never exceeds its threshold).
//!
//! Blocks are keyed by fileset, version, item and block number, so a new
//! version never meets an old version's blocks. Each block is a file
//! written to a temporary name and renamed, so a crash leaves whole blocks
//! or none; on start the cache adopts what is on disk, oldest first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::metrics::Metrics;

/// Bytes per cached block (of an item's data). Reads fetch whole blocks.
pub const BLOCK: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub fileset: String,
    pub version: u64,
    pub item: u64,
    pub block: u64,
}

impl BlockKey {
    fn file(&self) -> PathBuf {
        PathBuf::from(format!("{}@{}", self.fileset, self.version)).join(format!("{}-{}", self.item, self.block))
    }

    fn parse(dir: &str, name: &str) -> Option<Self> {
        let (fileset, version) = dir.rsplit_once('@')?;
        let (item, block) = name.split_once('-')?;
        Some(Self {
            fileset: fileset.to_string(),
            version: version.parse().ok()?,
            item: item.parse().ok()?,
            block: block.parse().ok()?,
        })
    }
}

#[derive(Debug, Default)]
struct Lru {
    /// key -> (last use, length)
    entries: HashMap<BlockKey, (u64, u64)>,
    by_use: BTreeMap<u64, BlockKey>,
    bytes: u64,
    clock: u64,
}

impl Lru {
    fn touch(&mut self, key: &BlockKey) -> bool {
        self.clock += 1;
        let clock = self.clock;
        let Some((used, _)) = self.entries.get_mut(key) else { return false };
        self.by_use.remove(used);
        *used = clock;
        self.by_use.insert(clock, key.clone());
        true
    }

    fn insert(&mut self, key: BlockKey, len: u64) {
        self.clock += 1;
        if let Some((used, old)) = self.entries.insert(key.clone(), (self.clock, len)) {
            self.by_use.remove(&used);
            self.bytes -= old;
        }
        self.by_use.insert(self.clock, key);
        self.bytes += len;
    }

    fn remove(&mut self, key: &BlockKey) -> Option<u64> {
        let (used, len) = self.entries.remove(key)?;
        self.by_use.remove(&used);
        self.bytes -= len;
        Some(len)
    }

    fn oldest(&self) -> Option<BlockKey> {
        self.by_use.values().next().cloned()
    }
}

/// A node's cache of root blocks.
#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    threshold: u64,
    lru: Mutex<Lru>,
    metrics: Arc<Metrics>,
    /// Open block files, so a read is one pread rather than open, read, close.
    files: Mutex<HashMap<BlockKey, Arc<std::fs::File>>>,
}

/// Block files kept open at most.
const OPEN_FILES: usize = 256;

impl BlockCache {
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
            let dname = d.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(d.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                let meta = f.metadata()?;
                match BlockKey::parse(&dname, &name) {
                    Some(key) => found.push((meta.modified().ok(), key, meta.len())),
                    // Leftovers of an interrupted write.
                    None => {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        found.sort();
        let cache = Self {
            dir: dir.to_path_buf(),
            threshold,
            lru: Mutex::new(Lru::default()),
            metrics,
            files: Mutex::default(),
        };
        {
            let mut lru = cache.lru.lock().unwrap();
            for (_, key, len) in found {
                lru.insert(key, len);
            }
        }
        cache.make_room(0);
        cache.metrics.cache_bytes.set(cache.bytes() as i64);
        Ok(cache)
    }

    pub fn bytes(&self) -> u64 {
        self.lru.lock().unwrap().bytes
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.lru.lock().unwrap().entries.contains_key(key)
    }

    /// The whole block, if cached.
    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.get_range(key, 0..BLOCK)
    }

    /// Bytes `range` of a cached block (reading only those), if cached.
    /// Shorter than asked where the block ends.
    pub fn get_range(&self, key: &BlockKey, range: std::ops::Range<u64>) -> Option<Bytes> {
        use std::os::unix::fs::FileExt;
        if !self.lru.lock().unwrap().touch(key) {
            self.metrics.cache_misses.inc();
            return None;
        }
        let read = self.file(key).and_then(|f| {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            let mut at = 0;
            while at < buf.len() {
                match f.read_at(&mut buf[at..], range.start + at as u64)? {
                    0 => break,
                    n => at += n,
                }
            }
            buf.truncate(at);
            Ok(buf)
        });
        match read {
            Ok(data) => {
                self.metrics.cache_hits.inc();
                Some(Bytes::from(data))
            }
            Err(_) => {
                self.lru.lock().unwrap().remove(key);
                self.files.lock().unwrap().remove(key);
                self.metrics.cache_misses.inc();
                None
            }
        }
    }

    fn file(&self, key: &BlockKey) -> std::io::Result<Arc<std::fs::File>> {
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

    /// Stores a block, evicting the least recently used first so the cache
    /// stays within its threshold. A block larger than the whole cache is
    /// not stored. Failures (a full disk) only mean the block is not cached.
    pub fn put(&self, key: &BlockKey, data: &[u8]) {
        let len = data.len() as u64;
        if len > self.threshold || self.contains(key) {
            return;
        }
        // Written aside first; eviction, the rename and the count change
        // together, so the files on disk never exceed the threshold.
        let path = self.dir.join(key.file());
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| std::fs::write(&tmp, data));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let mut lru = self.lru.lock().unwrap();
        self.evict(&mut lru, len);
        if std::fs::rename(&tmp, &path).is_ok() {
            lru.insert(key.clone(), len);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
        self.metrics.cache_bytes.set(lru.bytes as i64);
    }

    fn make_room(&self, incoming: u64) {
        let mut lru = self.lru.lock().unwrap();
        self.evict(&mut lru, incoming);
        self.metrics.cache_bytes.set(lru.bytes as i64);
    }

    /// Evicts least recently used blocks until `incoming` more bytes fit.
    fn evict(&self, lru: &mut Lru, incoming: u64) {
        while lru.bytes + incoming > self.threshold {
            let Some(victim) = lru.oldest() else { return };
            lru.remove(&victim);
            self.files.lock().unwrap().remove(&victim);
            let _ = std::fs::remove_file(self.dir.join(victim.file()));
            self.metrics.cache_evictions.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(item: u64, block: u64) -> BlockKey {
        BlockKey { fileset: "models".into(), version: 3, item, block }
    }

    #[test]
    fn blocks_come_back_and_versions_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlockCache::open(dir.path(), 1 << 20, Arc::new(Metrics::new())).unwrap();
        c.put(&key(0, 0), b"v3 block");
        assert_eq!(c.get(&key(0, 0)).unwrap(), Bytes::from_static(b"v3 block"));
        let v4 = BlockKey { version: 4, ..key(0, 0) };
        assert!(c.get(&v4).is_none(), "another version's block is another block");
    }

    #[test]
    fn the_least_recently_used_block_goes_first_and_the_cache_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let c = BlockCache::open(dir.path(), 300, metrics.clone()).unwrap();
        c.put(&key(0, 0), &[0; 100]);
        c.put(&key(0, 1), &[1; 100]);
        c.put(&key(0, 2), &[2; 100]);
        assert!(c.get(&key(0, 0)).is_some(), "0 is now the most recently used");
        c.put(&key(0, 3), &[3; 100]);
        assert!(!c.contains(&key(0, 1)), "1 was the least recently used");
        assert!(c.contains(&key(0, 0)) && c.contains(&key(0, 2)) && c.contains(&key(0, 3)));
        assert_eq!(metrics.cache_evictions.get(), 1);
        assert_eq!(std::fs::read_dir(dir.path().join("models@3")).unwrap().count(), 3, "evicted files are deleted");
        drop(c);
        // Reopened with a smaller threshold: the oldest go.
        let c = BlockCache::open(dir.path(), 150, Arc::new(Metrics::new())).unwrap();
        assert_eq!(c.bytes(), 100);
    }

    proptest! {
        /// Whatever the sequence of puts and gets, the cache never holds
        /// more than its threshold, on disk or in its count.
        #[test]
        fn the_cache_stays_under_its_threshold(ops in proptest::collection::vec((0u64..12, 1usize..200, any::<bool>()), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let c = BlockCache::open(dir.path(), 500, Arc::new(Metrics::new())).unwrap();
            for (block, len, read) in ops {
                if read {
                    if let Some(b) = c.get(&key(1, block)) {
                        prop_assert!(b.iter().all(|x| *x == block as u8));
                    }
                } else {
                    c.put(&key(1, block), &vec![block as u8; len]);
                }
                prop_assert!(c.bytes() <= 500);
                let on_disk: u64 = std::fs::read_dir(dir.path().join("models@3")).map(|d| d.map(|f| f.unwrap().metadata().unwrap().len()).sum()).unwrap_or(0);
                prop_assert_eq!(on_disk, c.bytes());
            }
        }
    }
}
