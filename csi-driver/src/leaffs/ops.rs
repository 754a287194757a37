//! The FUSE operations, each answered by the leaf's own methods.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;
use tessera_core::leaf::{Kind, Record};

use crate::fuse::abi;
use crate::fuse::abi::{InHeader, Op, S_IFREG};
use crate::fuse::session::{Filesystem, Reply, Result, xattr_reply};
use crate::rootfs::SHA256_XATTR;

use super::{LeafFs, TTL, XATTR_CREATE, XATTR_REPLACE, now};

impl Filesystem for LeafFs {
    async fn handle<'a>(&'a self, h: &'a InHeader, op: Op<'a>) -> Result<Reply> {
        let ino = h.nodeid;
        match op {
            Op::Lookup { name } => {
                let st = self.state.lock().unwrap();
                let child = self.child(&st, ino, name)?;
                Ok(Reply::Data(self.entry_reply(&st, child)?))
            }
            Op::GetAttr => {
                let st = self.state.lock().unwrap();
                Ok(Reply::Data(abi::attr_out(&self.attr(&st, ino)?, TTL)))
            }
            Op::SetAttr(sa) => Ok(Reply::Data(abi::attr_out(&self.setattr(ino, sa)?, TTL))),
            Op::ReadLink => {
                let st = self.state.lock().unwrap();
                self.inode(&st, ino)?.target.map(Reply::Data).ok_or(Errno::INVAL)
            }
            Op::Mknod { mode, umask, name, .. } => {
                if mode & abi::S_IFMT != S_IFREG {
                    return Err(Errno::PERM);
                }
                let child = self.make(h, ino, name, Kind::File, mode & !umask, None)?;
                Ok(Reply::Data(self.entry_reply(&self.state.lock().unwrap(), child)?))
            }
            Op::Mkdir { mode, umask, name } => {
                let child = self.make(h, ino, name, Kind::Dir, mode & !umask, None)?;
                Ok(Reply::Data(self.entry_reply(&self.state.lock().unwrap(), child)?))
            }
            Op::Symlink { name, target } => {
                let child = self.make(h, ino, name, Kind::Symlink, 0o777, Some(target.as_bytes().to_vec()))?;
                Ok(Reply::Data(self.entry_reply(&self.state.lock().unwrap(), child)?))
            }
            Op::Create { mode, umask, name, .. } => {
                let child = self.make(h, ino, name, Kind::File, mode & !umask, None)?;
                let mut st = self.state.lock().unwrap();
                *st.open.entry(child).or_default() += 1;
                let mut body = self.entry_reply(&st, child)?;
                body.extend(abi::open_out(child, abi::fopen::NOFLUSH));
                Ok(Reply::Data(body))
            }
            Op::Unlink { name } => self.remove(ino, name, false).map(|_| Reply::Empty),
            Op::Rmdir { name } => self.remove(ino, name, true).map(|_| Reply::Empty),
            Op::Rename { newdir, flags, name, newname } => {
                self.rename(ino, name, newdir, newname, flags).map(|_| Reply::Empty)
            }
            Op::Link { .. } => Err(Errno::PERM),
            Op::Open { flags } => {
                let mut st = self.state.lock().unwrap();
                let mut inode = self.inode(&st, ino)?;
                if inode.kind == Kind::Dir {
                    return Err(Errno::ISDIR);
                }
                if flags & abi::O_TRUNC != 0 && flags & abi::O_ACCMODE != 0 && inode.size > 0 {
                    let mut records = self.resize(&st, ino, &mut inode, 0)?;
                    records.push(Record::Inode { ino, inode });
                    self.commit(&mut st, &records)?;
                }
                *st.open.entry(ino).or_default() += 1;
                Ok(Reply::Data(abi::open_out(ino, abi::fopen::NOFLUSH)))
            }
            Op::Read { offset, size, .. } => {
                let parts = self.read(ino, offset, size).await?;
                self.count(0, parts.iter().map(|p| p.len() as u64).sum());
                Ok(Reply::Parts(parts))
            }
            Op::Write { offset, data, .. } => {
                let n = self.write(ino, offset, data).await?;
                self.count(1, n as u64);
                Ok(Reply::Data(abi::write_out(n)))
            }
            Op::Release { .. } => {
                let mut st = self.state.lock().unwrap();
                let Some(n) = st.open.get_mut(&ino) else { return Ok(Reply::Empty) };
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.open.remove(&ino);
                    if st.leaf.inode(ino).is_some_and(|i| i.nlink == 0) {
                        self.commit(&mut st, &[Record::Forget { ino }])?;
                        self.forget_data(&st, ino);
                    }
                }
                Ok(Reply::Empty)
            }
            Op::Flush { .. } | Op::ReleaseDir { .. } => Ok(Reply::Empty),
            Op::Fsync { .. } => self.sync(Some(ino)).map(|_| Reply::Empty),
            Op::FsyncDir { .. } => self.sync(None).map(|_| Reply::Empty),
            Op::OpenDir { .. } => {
                let st = self.state.lock().unwrap();
                if self.inode(&st, ino)?.kind != Kind::Dir {
                    return Err(Errno::NOTDIR);
                }
                Ok(Reply::Data(abi::open_out(ino, 0)))
            }
            Op::ReadDir { offset, size, .. } => Ok(Reply::Data(self.readdir(ino, offset, size)?)),
            Op::StatFs => {
                let used = self.used_bytes();
                let blocks = self.capacity / 4096;
                let free = self.capacity.saturating_sub(used) / 4096;
                Ok(Reply::Data(abi::statfs_out(blocks, free, 1 << 20, 1 << 20)))
            }
            Op::GetXattr { name, size } => {
                if name == OsStr::new(SHA256_XATTR) {
                    let d = self.digest(ino).await?.ok_or(Errno::NODATA)?;
                    return xattr_reply(d.as_bytes(), size);
                }
                let st = self.state.lock().unwrap();
                let inode = self.inode(&st, ino)?;
                let v = inode.xattrs.get(name.to_str().ok_or(Errno::NODATA)?).ok_or(Errno::NODATA)?;
                xattr_reply(v, size)
            }
            Op::ListXattr { size } => {
                let st = self.state.lock().unwrap();
                let inode = self.inode(&st, ino)?;
                let mut names = Vec::new();
                if inode.kind == Kind::File {
                    names.extend_from_slice(SHA256_XATTR.as_bytes());
                    names.push(0);
                }
                for k in inode.xattrs.keys().filter(|k| k.as_str() != SHA256_XATTR) {
                    names.extend_from_slice(k.as_bytes());
                    names.push(0);
                }
                xattr_reply(&names, size)
            }
            Op::SetXattr { name, value, flags } => {
                if name == OsStr::new(SHA256_XATTR) {
                    return Err(Errno::PERM);
                }
                let mut st = self.state.lock().unwrap();
                let mut inode = self.inode(&st, ino)?;
                let name = name.to_str().ok_or(Errno::INVAL)?;
                let exists = inode.xattrs.contains_key(name);
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(Errno::EXIST);
                }
                if flags & XATTR_REPLACE != 0 && !exists {
                    return Err(Errno::NODATA);
                }
                inode.xattrs.insert(name.to_string(), value.to_vec());
                inode.ctime = now();
                self.commit(&mut st, &[Record::Inode { ino, inode }])?;
                Ok(Reply::Empty)
            }
            Op::RemoveXattr { name } => {
                if name == OsStr::new(SHA256_XATTR) {
                    return Err(Errno::PERM);
                }
                let mut st = self.state.lock().unwrap();
                let mut inode = self.inode(&st, ino)?;
                inode.xattrs.remove(name.to_str().ok_or(Errno::NODATA)?).ok_or(Errno::NODATA)?;
                self.commit(&mut st, &[Record::Inode { ino, inode }])?;
                Ok(Reply::Empty)
            }
            Op::Access { .. } => Ok(Reply::Empty),
            Op::Fallocate { .. } => Err(Errno::OPNOTSUPP),
            _ => Err(Errno::NOSYS),
        }
    }
}
