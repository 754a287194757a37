//! The harness every Tessera test that starts a cluster shares.
//!
//! - [`Cluster`]: a master and chunkservers in this process, on loopback
//!   gRPC with real disks (temporary directories), in zones; or
//!   chunkservers alone, or joining a master started elsewhere (the
//!   operator's).
//! - [`Proc`]: a program started as a process, its output in a log file
//!   (or its stdout piped to the test), stopped when dropped.
//!
//! Tests of one module use mocks; these are for the tests that need the
//! real components.

mod cluster;
mod process;

pub use cluster::{Cluster, Servers};
pub use process::{Proc, Signal, free_port, until};
