//! FUSE: the wire protocol, the request loop, and mounting.

pub mod abi;
pub mod mount;
pub mod session;

pub use session::{Connection, Filesystem, Reply};
