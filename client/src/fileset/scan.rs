//! Reading a local tree to upload: every file, directory and symlink under a
//! root, with the metadata the manifest keeps. Paths become relative,
//! `/`-separated UTF-8 and are checked; anything that cannot be represented
//! (a non-UTF-8 name, a device, a socket) is an error naming the path, before
//! a byte is uploaded.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tessera_core::manifest::validate_path;

use super::FilesetError;

/// An entry of the source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// Relative path inside the fileset.
    pub path: String,
    /// Where it is on disk.
    pub source: PathBuf,
    pub kind: SourceKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    File,
    Dir,
    Symlink(String),
}

/// Every entry under `root` (a directory), or `root` itself when it is a file
/// (named by its file name). Symlinks are kept as links, never followed.
pub fn scan(root: &Path) -> Result<Vec<SourceEntry>, FilesetError> {
    let meta = fs::symlink_metadata(root).map_err(|e| FilesetError::Io { path: root.to_path_buf(), source: e })?;
    let mut out = Vec::new();
    if meta.is_dir() {
        walk(root, "", &mut out)?;
    } else {
        let name = root.file_name().and_then(|n| n.to_str()).ok_or_else(|| FilesetError::BadSource {
            path: root.to_path_buf(),
            reason: "the name is not UTF-8".into(),
        })?;
        out.push(entry(root, name.to_string(), &meta)?);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<SourceEntry>) -> Result<(), FilesetError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| FilesetError::Io { path, source: e }
    };
    for item in fs::read_dir(dir).map_err(io(dir))? {
        let item = item.map_err(io(dir))?;
        let source = item.path();
        let name = item.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| FilesetError::BadSource { path: source.clone(), reason: "the name is not UTF-8".into() })?;
        let path = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
        let meta = fs::symlink_metadata(&source).map_err(io(&source))?;
        let e = entry(&source, path.clone(), &meta)?;
        let is_dir = e.kind == SourceKind::Dir;
        out.push(e);
        if is_dir {
            walk(&source, &path, out)?;
        }
    }
    Ok(())
}

fn entry(source: &Path, path: String, meta: &fs::Metadata) -> Result<SourceEntry, FilesetError> {
    validate_path(&path).map_err(|e| FilesetError::BadSource { path: source.to_path_buf(), reason: e.to_string() })?;
    let ft = meta.file_type();
    let (kind, size) = if ft.is_file() {
        (SourceKind::File, meta.len())
    } else if ft.is_dir() {
        (SourceKind::Dir, 0)
    } else if ft.is_symlink() {
        let target = fs::read_link(source).map_err(|e| FilesetError::Io { path: source.to_path_buf(), source: e })?;
        let target = target
            .to_str()
            .ok_or_else(|| FilesetError::BadSource {
                path: source.to_path_buf(),
                reason: "the link target is not UTF-8".into(),
            })?
            .to_string();
        let len = target.len() as u64;
        (SourceKind::Symlink(target), len)
    } else {
        return Err(FilesetError::BadSource {
            path: source.to_path_buf(),
            reason: "not a regular file, directory or symlink".into(),
        });
    };
    Ok(SourceEntry {
        path,
        source: source.to_path_buf(),
        kind,
        mode: meta.permissions().mode() & 0o7777,
        size,
        mtime_secs: meta.mtime(),
        mtime_nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_listed_sorted_with_links_kept() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/b/f"), b"hello").unwrap();
        fs::write(d.path().join("z"), b"").unwrap();
        std::os::unix::fs::symlink("../z", d.path().join("a/l")).unwrap();
        let e = scan(d.path()).unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["a", "a/b", "a/b/f", "a/l", "z"]);
        assert_eq!(e[2].size, 5);
        assert_eq!(e[3].kind, SourceKind::Symlink("../z".into()));
        // A single file uploads as itself.
        let one = scan(&d.path().join("a/b/f")).unwrap();
        assert_eq!(one[0].path, "f");
    }

    #[test]
    fn unrepresentable_entries_are_refused_by_path() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        fs::write(&bad, b"x").unwrap();
        let err = scan(d.path()).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = scan(d.path()).unwrap_err().to_string();
        assert!(err.contains("pipe") && err.contains("not a regular file"), "{err}");
    }
}
