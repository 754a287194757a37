//! Mounting and unmounting: a FUSE filesystem on a fresh `/dev/fuse`
//! connection, bind mounts for publishing, and what `/proc/self/mountinfo`
//! says is mounted where.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening /dev/fuse: {0}")]
    Device(Errno),
    #[error("mounting {what} on {path}: {errno}")]
    Mount { what: &'static str, path: PathBuf, errno: Errno },
    #[error("unmounting {path}: {errno}")]
    Unmount { path: PathBuf, errno: Errno },
}

/// Mounts a new FUSE filesystem of type `fuse.tessera` at `target` and
/// returns the connection's `/dev/fuse` file. The kernel's INIT is waiting
/// on it; nothing can use the mount until it is answered.
pub fn mount_fuse(target: &Path, source: &str, read_only: bool) -> Result<OwnedFd, MountError> {
    let dev =
        rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(MountError::Device)?;
    // default_permissions: the kernel checks modes, as on any filesystem.
    let data = format!("fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions", dev.as_raw_fd());
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    let data = std::ffi::CString::new(data).expect("no NUL in mount options");
    rustix::mount::mount(source, target, "fuse.tessera", flags, Some(data.as_c_str()))
        .map_err(|errno| MountError::Mount { what: "fuse", path: target.to_path_buf(), errno })?;
    Ok(dev)
}

/// Kernel readahead for FUSE mounts, in KiB. The kernel starts FUSE mounts
/// at 128 KiB, which makes sequential reads a round trip per 128 KiB.
pub const READAHEAD_KB: u32 = 4096;

/// Sets the readahead window of the filesystem mounted at `target` (its
/// backing device info, named by the mount's device number). Call it once
/// INIT is answered: the kernel caps readahead at what INIT negotiated
/// (128 KiB) when it takes the answer. Best effort: reads work either way,
/// only slower.
pub fn set_readahead(target: &Path, kb: u32) {
    // From mountinfo, not stat(2): nothing may touch the filesystem from
    // the thread that serves it.
    let Some(m) = mounts_at(target).pop() else { return };
    let _ = std::fs::write(format!("/sys/class/bdi/{}/read_ahead_kb", m.device), kb.to_string());
}

/// Bind-mounts `source` on `target`, read-only if asked (a second step: the
/// kernel ignores MS_RDONLY on the first bind).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    let err = |errno| MountError::Mount { what: "bind", path: target.to_path_buf(), errno };
    rustix::mount::mount_bind(source, target).map_err(err)?;
    // Private, so later mounts under the source do not leak into pods.
    let _ = rustix::mount::mount_change(target, MountPropagationFlags::PRIVATE);
    if read_only {
        let flags = MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
        if let Err(errno) = rustix::mount::mount_remount(target, flags, c"") {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            return Err(err(errno));
        }
    }
    Ok(())
}

/// Unmounts `target`; a busy mount is detached (it goes once unused). Not
/// mounted is not an error: unmounting twice is fine.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::BUSY) => rustix::mount::unmount(target, UnmountFlags::DETACH)
            .map_err(|errno| MountError::Unmount { path: target.to_path_buf(), errno }),
        Err(errno) => Err(MountError::Unmount { path: target.to_path_buf(), errno }),
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// `major:minor` of the filesystem.
    pub device: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub read_only: bool,
}

/// Mounts at `path` (the last one is on top).
pub fn mounts_at(path: &Path) -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text).into_iter().filter(|m| m.mount_point == path).collect()
}

/// Parses mountinfo (see proc(5)): fields, an optional list, `-`, type, source, options.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let options = fields.get(5)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountInfo {
                device: fields.get(2)?.to_string(),
                mount_point: PathBuf::from(mount_point),
                fs_type: fields.get(dash + 1)?.to_string(),
                source: unescape(fields.get(dash + 2)?),
                read_only: options.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 0:50 / /var/lib/x ro,nosuid - fuse.tessera tessera:models@3 rw,user_id=0\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!((m[0].fs_type.as_str(), m[0].read_only, m[0].device.as_str()), ("ext3", false, "98:0"));
        assert_eq!(
            (m[1].fs_type.as_str(), m[1].source.as_str(), m[1].read_only),
            ("fuse.tessera", "tessera:models@3", true)
        );
    }
}
