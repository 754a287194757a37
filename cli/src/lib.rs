//! The `tessera` command, as a library so integration tests can drive the same
//! local clusters and benchmarks the command runs.

pub mod bench;
pub mod demo;
pub mod fault;
pub mod local;
pub mod units;
