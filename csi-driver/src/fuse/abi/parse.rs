//! Requests: the kernel's messages parsed into [`Op`]s.

use super::*;

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
