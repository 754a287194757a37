//! A leaf volume's metadata (seed 004): its inodes, its directory listings
//! and the leaf units it holds of root-backed files, kept as a journal of
//! [`Record`]s.
//!
//! Unchanged files and directories are the root's, under the root's node
//! ids; the leaf holds only what the pod changed. The first change to a
//! directory copies the root's listing (names and node ids) into the leaf;
//! the first write to a leaf unit of a root file copies that unit up, and
//! the unit goes into the file's [`UnitMap`]; new files live wholly in the
//! leaf, from [`FIRST_LEAF_INO`] up.
//!
//! Everything here is pure: the CSI driver's leaf filesystem appends the
//! encoded records to its journal file, writes the data files and answers
//! FUSE; this module says what a journal means ([`LeafState::apply`],
//! [`journal::replay`]), what a compacted journal holds
//! ([`LeafState::compacted`]), and what a write or a truncation must record
//! ([`LeafState::plan_write`], [`LeafState::resize`]).

pub mod journal;
mod state;
#[cfg(test)]
mod tests;
pub mod unit_map;

pub use journal::Record;
pub use state::{Inode, Kind, LeafError, LeafState, RootView, Time};
pub use unit_map::UnitMap;

/// The leaf unit: a write into a root file copies up and stores whole
/// units of this size (one 64 KiB checksum block by default).
pub const LEAF_UNIT: u64 = 64 << 10;

/// Node ids of inodes made in the leaf start here (the root's are below).
pub const FIRST_LEAF_INO: u64 = 1 << 40;
