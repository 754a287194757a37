//! The node cache's policy and the layout of a cached unit (seed 004,
//! FIG. 4): least recently used units are evicted *before* a new one goes
//! in, until it fits, so the bytes kept never exceed the threshold.
//!
//! A *unit* ([`UNIT`], 1 MiB of an item's data) is what a root fetches and
//! caches at once. Its file keeps the CRC32C of each of its blocks
//! ([`BLOCK`]) ahead of the data, so whoever reads it back, on this node or
//! another, can check every block ([`unit_file`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Bytes per cache unit (of an item's data). Roots fetch whole units.
pub const UNIT: u64 = 1 << 20;

/// Bytes per block: the unit of the CRC32C a cached unit keeps. Part of the
/// unit file's format and of what peers send, so fixed here rather than
/// following any layout default.
pub const BLOCK: u64 = 64 << 10;

/// Least-recently-used accounting of cached entries of known sizes under a
/// threshold. It decides; the caller deletes what it names.
#[derive(Debug, Clone)]
pub struct Lru<K> {
    threshold: u64,
    /// key -> (last use, bytes)
    entries: HashMap<K, (u64, u64)>,
    by_use: BTreeMap<u64, K>,
    bytes: u64,
    clock: u64,
}

impl<K: Clone + Eq + Hash> Lru<K> {
    pub fn new(threshold: u64) -> Self {
        Self { threshold, entries: HashMap::new(), by_use: BTreeMap::new(), bytes: 0, clock: 0 }
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Bytes of the entries kept.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Whether an entry of `len` bytes can be kept at all.
    pub fn admits(&self, len: u64) -> bool {
        len > 0 && len <= self.threshold
    }

    /// Marks an entry used now; its size if it is kept.
    pub fn touch(&mut self, key: &K) -> Option<u64> {
        self.clock += 1;
        let clock = self.clock;
        let (used, len) = self.entries.get_mut(key)?;
        self.by_use.remove(used);
        *used = clock;
        self.by_use.insert(clock, key.clone());
        Some(*len)
    }

    /// The entries to evict, least recently used first, so that `incoming`
    /// more bytes fit; they are no longer counted.
    pub fn make_room(&mut self, incoming: u64) -> Vec<K> {
        let mut victims = Vec::new();
        while self.bytes + incoming > self.threshold {
            let Some((_, victim)) = self.by_use.pop_first() else { break };
            let (_, len) = self.entries.remove(&victim).expect("by_use and entries agree");
            self.bytes -= len;
            victims.push(victim);
        }
        victims
    }

    /// Keeps `key` (`len` bytes, used now), evicting first as
    /// [`Self::make_room`] does; the victims are returned. An entry the
    /// threshold does not admit is not kept (and evicts nothing).
    pub fn insert(&mut self, key: K, len: u64) -> Vec<K> {
        if !self.admits(len) {
            return Vec::new();
        }
        self.remove(&key);
        let victims = self.make_room(len);
        self.clock += 1;
        self.entries.insert(key.clone(), (self.clock, len));
        self.by_use.insert(self.clock, key);
        self.bytes += len;
        victims
    }

    /// Forgets an entry; its size if it was kept.
    pub fn remove(&mut self, key: &K) -> Option<u64> {
        let (used, len) = self.entries.remove(key)?;
        self.by_use.remove(&used);
        self.bytes -= len;
        Some(len)
    }
}

/// A cached unit's file: the little-endian CRC32C of each block of the
/// data, then the data.
pub mod unit_file {
    use super::BLOCK;
    use crate::checksum::{ChecksumMismatch, block_checksums, verify_blocks};

    /// Blocks in `len` bytes of data.
    pub fn blocks_in(len: u64) -> u64 {
        len.div_ceil(BLOCK)
    }

    /// Where a unit's data starts in its file.
    pub fn data_offset(data_len: u64) -> u64 {
        4 * blocks_in(data_len)
    }

    /// The file for `data`.
    pub fn encode(data: &[u8]) -> Vec<u8> {
        let mut file = Vec::with_capacity(data.len() + data_offset(data.len() as u64) as usize);
        for sum in block_checksums(data, BLOCK as usize) {
            file.extend_from_slice(&sum.to_le_bytes());
        }
        file.extend_from_slice(data);
        file
    }

    /// The data length of a unit file of `file_len` bytes; `None` if no
    /// non-empty unit has that length.
    pub fn data_len(file_len: u64) -> Option<u64> {
        let len = file_len.checked_sub(4 * file_len.div_ceil(BLOCK + 4))?;
        (len > 0 && len + data_offset(len) == file_len).then_some(len)
    }

    /// Checksums from their stored bytes.
    pub fn checksums(raw: &[u8]) -> Vec<u32> {
        raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
    }

    /// Whether `data`, which starts at block `first`, is what `sums` say.
    /// A checksum missing or left over is a failure.
    pub fn verify(data: &[u8], first: u64, sums: &[u32]) -> Result<(), ChecksumMismatch> {
        if sums.len() as u64 != blocks_in(data.len() as u64) {
            return Err(ChecksumMismatch { block: first as usize + sums.len(), expected: 0, actual: 0 });
        }
        verify_blocks(data, first as usize, BLOCK as usize, sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a naive oracle (a list in order of use): the same
        /// victims, in the same order, and never more bytes than the
        /// threshold.
        #[test]
        fn lru_evicts_what_a_naive_list_would(
            threshold in 1u64..600,
            ops in prop::collection::vec((0u8..10, 0u64..250, 0u8..3), 1..80),
        ) {
            let mut lru = Lru::new(threshold);
            let mut list: Vec<(u8, u64)> = Vec::new(); // least recent first
            for (key, len, op) in ops {
                match op {
                    0 => {
                        let got = lru.insert(key, len);
                        let mut want = Vec::new();
                        if len > 0 && len <= threshold {
                            list.retain(|(k, _)| *k != key);
                            while list.iter().map(|(_, l)| l).sum::<u64>() + len > threshold {
                                want.push(list.remove(0).0);
                            }
                            list.push((key, len));
                        }
                        prop_assert_eq!(got, want);
                    }
                    1 => {
                        let got = lru.touch(&key);
                        let at = list.iter().position(|(k, _)| *k == key);
                        prop_assert_eq!(got, at.map(|i| list[i].1));
                        if let Some(i) = at {
                            let e = list.remove(i);
                            list.push(e);
                        }
                    }
                    _ => {
                        let at = list.iter().position(|(k, _)| *k == key);
                        prop_assert_eq!(lru.remove(&key), at.map(|i| list.remove(i).1));
                    }
                }
                prop_assert_eq!(lru.bytes(), list.iter().map(|(_, l)| l).sum::<u64>());
                prop_assert!(lru.bytes() <= threshold);
            }
        }

        #[test]
        fn a_unit_file_gives_back_its_data_length_and_checks(len in 1usize..(3 * BLOCK as usize)) {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let file = unit_file::encode(&data);
            prop_assert_eq!(unit_file::data_len(file.len() as u64), Some(len as u64));
            let off = unit_file::data_offset(len as u64) as usize;
            prop_assert_eq!(&file[off..], &data[..]);
            let sums = unit_file::checksums(&file[..off]);
            prop_assert!(unit_file::verify(&data, 0, &sums).is_ok());
            let mut bad = data.clone();
            bad[len / 2] ^= 1;
            prop_assert!(unit_file::verify(&bad, 0, &sums).is_err());
            prop_assert!(unit_file::verify(&data, 0, &sums[1..]).is_err());
        }
    }

    #[test]
    fn no_file_length_is_taken_for_an_empty_or_impossible_unit() {
        assert_eq!(unit_file::data_len(0), None);
        assert_eq!(unit_file::data_len(3), None);
        assert_eq!(unit_file::data_len(4), None);
        assert_eq!(unit_file::data_len(5), Some(1));
        // One whole block and its checksum; one byte more is a second block.
        assert_eq!(unit_file::data_len(BLOCK + 4), Some(BLOCK));
        assert_eq!(unit_file::data_len(BLOCK + 5), None);
        assert_eq!(unit_file::data_len(BLOCK + 9), Some(BLOCK + 1));
    }
}
