//! Tessera's core: the domain logic every component shares, with no I/O.
//!
//! This crate owns the erasure codec, the arithmetic that maps bytes to items,
//! stripes and blocks, block checksums, per-chunkserver latency tracking, the
//! read planner, the manifest format, placement across failure domains,
//! chunkserver health, repair decisions, retention, usage quotas, the node
//! cache's policy, leaf volumes' journals and unit maps, and the units of
//! command lines. It never touches a disk, a socket or a clock: callers pass
//! time and observations in, and the functions here decide. That keeps every
//! rule unit- and property-testable without a network.

pub mod cache;
pub mod checksum;
pub mod codec;
pub mod health;
pub mod ids;
pub mod jobs;
pub mod latency;
pub mod layout;
pub mod leaf;
pub mod manifest;
pub mod placement;
pub mod quota;
pub mod read_plan;
pub mod repair;
pub mod retention;
pub mod units;
