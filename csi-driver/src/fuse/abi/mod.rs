//! The FUSE wire protocol (`include/uapi/linux/fuse.h`): requests as the
//! kernel writes them to `/dev/fuse` and the replies it expects.
//!
//! Only what Tessera's filesystems use is here. Everything is native-endian
//! and 8-byte aligned, as the kernel lays it out. Parsing never trusts the
//! kernel's lengths further than the buffer: a short or malformed request is
//! an error, not a panic.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

mod parse;
mod reply;

pub use parse::{Op, SetAttr, opcode_name, parse};
pub use reply::*;

/// The protocol major version spoken.
pub const MAJOR: u32 = 7;
/// The newest minor version understood. 7.40 brings `FUSE_NOTIFY_RESEND`,
/// which a successor uses after taking over a connection.
pub const MAX_MINOR: u32 = 40;
/// The oldest kernel protocol accepted (Linux 5.10 speaks 7.32).
pub const MIN_MINOR: u32 = 31;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;
pub const ROOT_ID: u64 = 1;

/// Open flags as the kernel passes them: the access mode bits (read-only
/// is 0) and truncation.
pub const O_ACCMODE: u32 = 0o3;
pub const O_TRUNC: u32 = 0o1000;

/// Opcodes.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// `fuse_init_in.flags` / `fuse_init_out.flags` (and `flags2 << 32`).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const INIT_EXT: u64 = 1 << 30;
    /// Opens may name a backing file the kernel reads directly (Linux 6.9+).
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const HAS_RESEND: u64 = 1 << 39;
}

/// `fuse_open_out.open_flags`.
pub mod fopen {
    /// Keep the page cache across opens: root files never change.
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    /// No FLUSH on close: closing never waits for the server (a process
    /// exiting while the plugin restarts is not held up).
    pub const NOFLUSH: u32 = 1 << 5;
    /// Reads go straight to the backing file named in the reply.
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const CTIME: u32 = 1 << 10;
}

/// `FUSE_NOTIFY_RESEND`: the kernel puts requests a dead server had read
/// back on the queue.
pub const NOTIFY_RESEND: i32 = 7;
/// Set in `unique` of a request the kernel resends.
pub const UNIQUE_RESEND: u64 = 1 << 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AbiError {
    #[error("request too short: {what} needs {need} bytes, {have} left")]
    Short { what: &'static str, need: usize, have: usize },
    #[error("request length {len} does not match the {read} bytes read")]
    Length { len: u32, read: usize },
    #[error("a name in a {0} request is not NUL-terminated")]
    Unterminated(&'static str),
}

/// `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut o = Out::default();
        o.u32((IN_HEADER_LEN + body.len()) as u32).u32(opcode).u64(unique).u64(nodeid).u32(1).u32(2).u32(3).u32(0);
        o.bytes(body);
        o.0
    }

    #[test]
    fn layouts_have_the_kernel_sizes() {
        assert_eq!(InitState::negotiate(7, 45, 1 << 17, u64::MAX, 1 << 20).unwrap().reply().len(), 64);
        let attr = Attr::default();
        assert_eq!(attr_out(&attr, Ttl::secs(1)).len(), 104);
        let mut o = Out::default();
        entry_out(&mut o, &attr, Ttl::secs(1));
        assert_eq!(o.0.len(), 128);
        assert_eq!(open_out(1, 0).len(), 16);
        assert_eq!(statfs_out(1, 1, 1, 1).len(), 80);
        assert_eq!(notify_resend(), out_header(16, 7, 0));
    }

    #[test]
    fn init_keeps_only_what_both_sides_support() {
        let kernel = init::ASYNC_READ | init::MAX_PAGES | init::HAS_RESEND | (1 << 2);
        let s = InitState::negotiate(7, 45, 131072, kernel, 1 << 20).unwrap();
        assert_eq!(s.minor, MAX_MINOR);
        assert_eq!(s.flags, init::ASYNC_READ | init::MAX_PAGES);
        assert!(InitState::kernel_resends(kernel));
        assert!(InitState::negotiate(7, 20, 0, kernel, 1 << 20).is_none(), "too old");
        assert!(InitState::negotiate(8, 45, 0, kernel, 1 << 20).is_none());
        assert!(s.read_buffer_len() >= 40 + 40 + (1 << 20));
    }

    #[test]
    fn requests_parse() {
        let mut body = Out::default();
        body.bytes(b"hello.txt\0");
        let buf = request(op::LOOKUP, 9, 1, &body.0);
        let (h, op) = parse(&buf, false).unwrap();
        assert_eq!((h.unique, h.nodeid, h.uid, h.gid, h.pid), (9, 1, 1, 2, 3));
        assert_eq!(op, Op::Lookup { name: OsStr::new("hello.txt") });

        let mut body = Out::default();
        body.u64(7).u64(4096).u32(3).u32(0).u64(0).u32(0).u32(0).bytes(b"abc");
        let buf = request(op::WRITE, 10, 5, &body.0);
        assert_eq!(parse(&buf, false).unwrap().1, Op::Write { fh: 7, offset: 4096, data: b"abc" });

        let mut body = Out::default();
        body.u64(42).bytes(b"a\0b\0");
        let buf = request(op::RENAME, 11, 5, &body.0);
        assert_eq!(
            parse(&buf, false).unwrap().1,
            Op::Rename { newdir: 42, flags: 0, name: OsStr::new("a"), newname: OsStr::new("b") }
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        let buf = request(op::LOOKUP, 1, 1, b"no-nul");
        assert_eq!(parse(&buf, false).unwrap_err(), AbiError::Unterminated("LOOKUP"));
        let mut body = Out::default();
        body.u64(7).u64(0).u32(100).u32(0).u64(0).u32(0).u32(0).bytes(b"short");
        let buf = request(op::WRITE, 1, 1, &body.0);
        assert!(matches!(parse(&buf, false).unwrap_err(), AbiError::Short { what: "WRITE", .. }));
        let mut buf = request(op::GETATTR, 1, 1, &[]);
        buf.push(0);
        assert!(matches!(parse(&buf, false).unwrap_err(), AbiError::Length { .. }));
        assert!(matches!(parse(&buf[..20], false).unwrap_err(), AbiError::Short { what: "header", .. }));
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let mut o = Out::default();
        assert!(push_dirent(&mut o, 64, 2, 1, 8, b"abc"));
        assert_eq!(o.0.len(), 32);
        assert!(!push_dirent(&mut o, 64, 3, 2, 8, b"a-longer-name"), "would exceed the limit");
        assert_eq!(o.0.len(), 32);
    }

    proptest! {
        /// Whatever the kernel (or a corrupt buffer) sends, parsing returns.
        #[test]
        fn parsing_never_panics(opcode in 0u32..60, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let buf = request(opcode, 1, 1, &body);
            let _ = parse(&buf, opcode % 2 == 0);
        }
    }
}
