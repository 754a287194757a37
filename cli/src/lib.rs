//! The `tessera` command, as a library so integration tests can drive the same
//! local clusters and benchmarks the command runs.

pub mod bench;
pub mod demo;
pub mod fault;
pub mod files;
pub mod job;
pub mod local;
pub mod local_up;
pub mod output;
pub mod promote;
pub mod sim;
pub mod target;
pub mod units;
