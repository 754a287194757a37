//! Replies: the structures the kernel expects back, written native-endian.

use super::*;

/// Appends native-endian fields to a reply.
#[derive(Debug, Default, Clone)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// `fuse_out_header`.
pub fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// What the server answered at INIT; a successor taking over the
/// connection must keep to it, since the kernel sends INIT only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitState {
    pub minor: u32,
    pub flags: u64,
    pub max_write: u32,
    pub max_readahead: u32,
}

impl InitState {
    /// Decides the answer to the kernel's INIT. `None` if its protocol is
    /// too old.
    pub fn negotiate(major: u32, minor: u32, max_readahead: u32, kernel_flags: u64, max_write: u32) -> Option<Self> {
        if major != MAJOR || minor < MIN_MINOR {
            return None;
        }
        let wanted = init::ASYNC_READ
            | init::ATOMIC_O_TRUNC
            | init::BIG_WRITES
            | init::DONT_MASK
            | init::ASYNC_DIO
            | init::PARALLEL_DIROPS
            | init::MAX_PAGES
            | init::CACHE_SYMLINKS
            | init::INIT_EXT
            | init::PASSTHROUGH;
        Some(Self { minor: minor.min(MAX_MINOR), flags: wanted & kernel_flags, max_write, max_readahead })
    }

    /// Whether opens may be answered with a backing file.
    pub fn passthrough(&self) -> bool {
        self.flags & init::PASSTHROUGH != 0
    }

    /// Whether the kernel can resend requests a dead server had read.
    pub fn kernel_resends(kernel_flags: u64) -> bool {
        kernel_flags & init::HAS_RESEND != 0
    }

    /// `fuse_init_out`.
    pub fn reply(&self) -> Vec<u8> {
        let mut o = Out::default();
        let max_pages = self.max_write.div_ceil(4096).min(u16::MAX as u32) as u16;
        o.u32(MAJOR)
            .u32(self.minor)
            .u32(self.max_readahead)
            .u32(self.flags as u32)
            .u16(64) // max_background
            .u16(48) // congestion_threshold
            .u32(self.max_write)
            .u32(1) // time_gran: nanoseconds
            .u16(max_pages)
            .u16(0) // map_alignment
            .u32((self.flags >> 32) as u32)
            // Passthrough needs a stacking depth: backing files must sit on
            // a filesystem that stacks on nothing (the node's disk).
            .u32(if self.passthrough() { 1 } else { 0 })
            .u16(0) // request_timeout: none; a hang is handled by takeover
            .zeros(22);
        o.0
    }

    /// The smallest read buffer the kernel accepts for this connection.
    pub fn read_buffer_len(&self) -> usize {
        (IN_HEADER_LEN + 40 + self.max_write as usize).max(8192) + 4096
    }
}

/// File attributes (`fuse_attr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// Type and permission bits (`S_IFREG | 0644`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFMT: u32 = 0o170000;

impl Attr {
    fn put(&self, o: &mut Out) {
        o.u64(self.ino)
            .u64(self.size)
            .u64(self.blocks)
            .u64(self.atime.0 as u64)
            .u64(self.mtime.0 as u64)
            .u64(self.ctime.0 as u64)
            .u32(self.atime.1)
            .u32(self.mtime.1)
            .u32(self.ctime.1)
            .u32(self.mode)
            .u32(self.nlink)
            .u32(self.uid)
            .u32(self.gid)
            .u32(0) // rdev
            .u32(4096) // blksize
            .u32(0); // flags
    }

    /// The `d_type` of a directory entry.
    pub fn dirent_type(&self) -> u32 {
        (self.mode & S_IFMT) >> 12
    }
}

/// How long the kernel may cache an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    pub secs: u64,
    pub nanos: u32,
}

impl Ttl {
    pub const fn secs(secs: u64) -> Self {
        Self { secs, nanos: 0 }
    }
}

/// `fuse_entry_out`.
pub fn entry_out(o: &mut Out, attr: &Attr, ttl: Ttl) {
    o.u64(attr.ino).u64(0).u64(ttl.secs).u64(ttl.secs).u32(ttl.nanos).u32(ttl.nanos);
    attr.put(o);
}

/// `fuse_attr_out`.
pub fn attr_out(attr: &Attr, ttl: Ttl) -> Vec<u8> {
    let mut o = Out::default();
    o.u64(ttl.secs).u32(ttl.nanos).u32(0);
    attr.put(&mut o);
    o.0
}

/// `fuse_open_out`.
pub fn open_out(fh: u64, open_flags: u32) -> Vec<u8> {
    open_out_backing(fh, open_flags, 0)
}

/// `fuse_open_out` naming a backing file registered on the connection
/// (with [`fopen::PASSTHROUGH`]).
pub fn open_out_backing(fh: u64, open_flags: u32, backing_id: u32) -> Vec<u8> {
    let mut o = Out::default();
    o.u64(fh).u32(open_flags).u32(backing_id);
    o.0
}

/// `fuse_statfs_out`.
pub fn statfs_out(blocks: u64, bfree: u64, files: u64, ffree: u64) -> Vec<u8> {
    let mut o = Out::default();
    o.u64(blocks).u64(bfree).u64(bfree).u64(files).u64(ffree).u32(4096).u32(255).u32(4096).u32(0).zeros(24);
    o.0
}

/// `fuse_write_out`.
pub fn write_out(size: u32) -> Vec<u8> {
    let mut o = Out::default();
    o.u32(size).u32(0);
    o.0
}

/// `fuse_getxattr_out`: the size of a value, when asked with size 0.
pub fn xattr_size_out(size: u32) -> Vec<u8> {
    let mut o = Out::default();
    o.u32(size).u32(0);
    o.0
}

/// `fuse_lseek_out`.
pub fn lseek_out(offset: u64) -> Vec<u8> {
    let mut o = Out::default();
    o.u64(offset);
    o.0
}

/// Appends one `fuse_dirent` if it fits in `limit` bytes; `false` if not.
pub fn push_dirent(o: &mut Out, limit: usize, ino: u64, next_offset: u64, kind: u32, name: &[u8]) -> bool {
    let len = 24 + name.len();
    let padded = len.next_multiple_of(8);
    if o.0.len() + padded > limit {
        return false;
    }
    o.u64(ino).u64(next_offset).u32(name.len() as u32).u32(kind).bytes(name).zeros(padded - len);
    true
}

/// The notification that makes the kernel resend requests a dead server
/// had read but not answered (Linux 6.9+; older kernels refuse it).
pub fn notify_resend() -> [u8; OUT_HEADER_LEN] {
    out_header(OUT_HEADER_LEN, NOTIFY_RESEND, 0)
}
