//! The FUSE wire protocol (`include/uapi/linux/fuse.h`): requests as the
//! kernel writes them to `/dev/fuse` and the replies it expects.
//!
//! Only what Tessera's filesystems use is here. Everything is native-endian
//! and 8-byte aligned, as the kernel lays it out. Parsing never trusts the
//! kernel's lengths further than the buffer: a short or malformed request is
//! an error, not a panic.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

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

/// A cursor over request bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AbiError> {
        if self.buf.len() < n {
            return Err(AbiError::Short { what: self.what, need: n, have: self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, AbiError> {
        Ok(u16::from_ne_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, AbiError> {
        Ok(u32::from_ne_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, AbiError> {
        Ok(u64::from_ne_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A NUL-terminated name.
    fn name(&mut self) -> Result<&'a OsStr, AbiError> {
        let end = self.buf.iter().position(|b| *b == 0).ok_or(AbiError::Unterminated(self.what))?;
        let name = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(OsStr::from_bytes(name))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// `fuse_setattr_in`, reduced to what may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub valid: u32,
    pub fh: u64,
    pub size: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A parsed request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u64,
    },
    Destroy,
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        forgets: Vec<(u64, u64)>,
    },
    GetAttr,
    SetAttr(SetAttr),
    ReadLink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        mode: u32,
        rdev: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Mkdir {
        mode: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        newdir: u64,
        flags: u32,
        name: &'a OsStr,
        newname: &'a OsStr,
    },
    Link {
        oldnodeid: u64,
        name: &'a OsStr,
    },
    Open {
        flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
    },
    StatFs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    SetXattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: u32,
    },
    GetXattr {
        name: &'a OsStr,
        size: u32,
    },
    ListXattr {
        size: u32,
    },
    RemoveXattr {
        name: &'a OsStr,
    },
    Flush {
        fh: u64,
    },
    OpenDir {
        flags: u32,
    },
    ReadDir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    ReleaseDir {
        fh: u64,
    },
    FsyncDir {
        fh: u64,
    },
    Access {
        mask: u32,
    },
    Create {
        flags: u32,
        mode: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Interrupt {
        unique: u64,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    },
    Lseek {
        fh: u64,
        offset: u64,
        whence: u32,
    },
    /// Anything else: answered ENOSYS.
    Unknown {
        opcode: u32,
    },
}

/// Parses one request as read from `/dev/fuse`. `setxattr_ext` says whether
/// the connection negotiated the extended setxattr header.
pub fn parse(buf: &[u8], setxattr_ext: bool) -> Result<(InHeader, Op<'_>), AbiError> {
    let mut c = Cursor { buf, what: "header" };
    let h = InHeader {
        len: c.u32()?,
        opcode: c.u32()?,
        unique: c.u64()?,
        nodeid: c.u64()?,
        uid: c.u32()?,
        gid: c.u32()?,
        pid: c.u32()?,
    };
    let _ext_len = c.u16()?;
    let _pad = c.u16()?;
    if h.len as usize != buf.len() {
        return Err(AbiError::Length { len: h.len, read: buf.len() });
    }
    let what = opcode_name(h.opcode);
    let mut c = Cursor { buf: c.rest(), what };
    let op = match h.opcode {
        op::INIT => {
            let (major, minor, max_readahead, flags) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            // flags2 arrived with 7.36; older kernels send 16 bytes.
            let flags2 = if c.buf.len() >= 4 { c.u32()? } else { 0 };
            Op::Init { major, minor, max_readahead, flags: flags as u64 | (flags2 as u64) << 32 }
        }
        op::DESTROY => Op::Destroy,
        op::LOOKUP => Op::Lookup { name: c.name()? },
        op::FORGET => Op::Forget { nlookup: c.u64()? },
        op::BATCH_FORGET => {
            let count = c.u32()?;
            let _ = c.u32()?;
            let mut forgets = Vec::with_capacity(count.min(4096) as usize);
            for _ in 0..count {
                forgets.push((c.u64()?, c.u64()?));
            }
            Op::BatchForget { forgets }
        }
        op::GETATTR => Op::GetAttr,
        op::SETATTR => {
            let valid = c.u32()?;
            let _ = c.u32()?;
            let (fh, size, _lock_owner, atime, mtime, _ctime) =
                (c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?);
            let (atimensec, mtimensec, _ctimensec, mode, _unused4, uid, gid) =
                (c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            Op::SetAttr(SetAttr {
                valid,
                fh,
                size,
                atime: (atime as i64, atimensec),
                mtime: (mtime as i64, mtimensec),
                mode,
                uid,
                gid,
            })
        }
        op::READLINK => Op::ReadLink,
        op::SYMLINK => {
            let name = c.name()?;
            Op::Symlink { name, target: c.name()? }
        }
        op::MKNOD => {
            let (mode, rdev, umask, _) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            Op::Mknod { mode, rdev, umask, name: c.name()? }
        }
        op::MKDIR => {
            let (mode, umask) = (c.u32()?, c.u32()?);
            Op::Mkdir { mode, umask, name: c.name()? }
        }
        op::UNLINK => Op::Unlink { name: c.name()? },
        op::RMDIR => Op::Rmdir { name: c.name()? },
        op::RENAME => {
            let newdir = c.u64()?;
            let name = c.name()?;
            Op::Rename { newdir, flags: 0, name, newname: c.name()? }
        }
        op::RENAME2 => {
            let (newdir, flags, _) = (c.u64()?, c.u32()?, c.u32()?);
            let name = c.name()?;
            Op::Rename { newdir, flags, name, newname: c.name()? }
        }
        op::LINK => {
            let oldnodeid = c.u64()?;
            Op::Link { oldnodeid, name: c.name()? }
        }
        op::OPEN => Op::Open { flags: c.u32()? },
        op::OPENDIR => Op::OpenDir { flags: c.u32()? },
        op::READ | op::READDIR => {
            let (fh, offset, size) = (c.u64()?, c.u64()?, c.u32()?);
            if h.opcode == op::READ { Op::Read { fh, offset, size } } else { Op::ReadDir { fh, offset, size } }
        }
        op::WRITE => {
            let (fh, offset, size, _write_flags, _lock_owner, _flags, _pad) =
                (c.u64()?, c.u64()?, c.u32()?, c.u32()?, c.u64()?, c.u32()?, c.u32()?);
            Op::Write { fh, offset, data: c.take(size as usize)? }
        }
        op::STATFS => Op::StatFs,
        op::RELEASE => Op::Release { fh: c.u64()? },
        op::RELEASEDIR => Op::ReleaseDir { fh: c.u64()? },
        op::FSYNC | op::FSYNCDIR => {
            let (fh, flags) = (c.u64()?, c.u32()?);
            if h.opcode == op::FSYNC { Op::Fsync { fh, datasync: flags & 1 != 0 } } else { Op::FsyncDir { fh } }
        }
        op::SETXATTR => {
            let (size, flags) = (c.u32()?, c.u32()?);
            if setxattr_ext {
                let _ = (c.u32()?, c.u32()?);
            }
            let name = c.name()?;
            Op::SetXattr { name, value: c.take(size as usize)?, flags }
        }
        op::GETXATTR => {
            let (size, _) = (c.u32()?, c.u32()?);
            Op::GetXattr { name: c.name()?, size }
        }
        op::LISTXATTR => {
            let (size, _) = (c.u32()?, c.u32()?);
            Op::ListXattr { size }
        }
        op::REMOVEXATTR => Op::RemoveXattr { name: c.name()? },
        op::FLUSH => Op::Flush { fh: c.u64()? },
        op::ACCESS => Op::Access { mask: c.u32()? },
        op::CREATE => {
            let (flags, mode, umask, _open_flags) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
            Op::Create { flags, mode, umask, name: c.name()? }
        }
        op::INTERRUPT => Op::Interrupt { unique: c.u64()? },
        op::FALLOCATE => {
            let (fh, offset, length, mode) = (c.u64()?, c.u64()?, c.u64()?, c.u32()?);
            Op::Fallocate { fh, offset, length, mode }
        }
        op::LSEEK => {
            let (fh, offset, whence) = (c.u64()?, c.u64()?, c.u32()?);
            Op::Lseek { fh, offset, whence }
        }
        opcode => Op::Unknown { opcode },
    };
    Ok((h, op))
}

/// A name for logs and errors.
pub fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        op::LOOKUP => "LOOKUP",
        op::FORGET => "FORGET",
        op::GETATTR => "GETATTR",
        op::SETATTR => "SETATTR",
        op::READLINK => "READLINK",
        op::SYMLINK => "SYMLINK",
        op::MKNOD => "MKNOD",
        op::MKDIR => "MKDIR",
        op::UNLINK => "UNLINK",
        op::RMDIR => "RMDIR",
        op::RENAME => "RENAME",
        op::LINK => "LINK",
        op::OPEN => "OPEN",
        op::READ => "READ",
        op::WRITE => "WRITE",
        op::STATFS => "STATFS",
        op::RELEASE => "RELEASE",
        op::FSYNC => "FSYNC",
        op::SETXATTR => "SETXATTR",
        op::GETXATTR => "GETXATTR",
        op::LISTXATTR => "LISTXATTR",
        op::REMOVEXATTR => "REMOVEXATTR",
        op::FLUSH => "FLUSH",
        op::INIT => "INIT",
        op::OPENDIR => "OPENDIR",
        op::READDIR => "READDIR",
        op::RELEASEDIR => "RELEASEDIR",
        op::FSYNCDIR => "FSYNCDIR",
        op::ACCESS => "ACCESS",
        op::CREATE => "CREATE",
        op::INTERRUPT => "INTERRUPT",
        op::DESTROY => "DESTROY",
        op::BATCH_FORGET => "BATCH_FORGET",
        op::FALLOCATE => "FALLOCATE",
        op::RENAME2 => "RENAME2",
        op::LSEEK => "LSEEK",
        _ => "UNKNOWN",
    }
}

// ---- Replies ----

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
