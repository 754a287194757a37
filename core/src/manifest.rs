//! The manifest: the index of a version, computed once at ingest and read by
//! every reader instead of rebuilt.
//!
//! A version is a tree of files, directories and symlinks. Its file contents
//! are packed into one byte stream in path order (small files side by side,
//! large files end to end), which is cut into items. The manifest lists every
//! entry with its mode, size, modification time and, for files, the offset of
//! its bytes in the packed stream and their SHA-256. Paths are relative,
//! `/`-separated UTF-8 and sorted, so lookups and directory listings are binary
//! searches.
//!
//! The encoding is a small versioned binary format with a CRC32C trailer; it is
//! stored in the chunk store like any other data, and referenced from the
//! version record by its items and its SHA-256.

use std::ops::Range;

use crate::checksum::crc32c;

const MAGIC: &[u8; 4] = b"TSMF";
const FORMAT_VERSION: u8 = 1;
/// Longest path accepted, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest name (path component) accepted, in bytes.
pub const MAX_NAME: usize = 255;
/// The extended attribute under which a mounted version shows a file's
/// SHA-256 (hex); a leaf drops it when the content changes.
pub const SHA256_XATTR: &str = "user.tessera.sha256";

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file whose `size` bytes start at `offset` in the packed stream.
    File {
        offset: u64,
        sha256: [u8; 32],
    },
    Dir,
    Symlink {
        target: String,
    },
}

/// One file, directory or symlink of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (the low 12 bits of st_mode).
    pub mode: u32,
    /// Bytes of a file; 0 for directories; the target's length for symlinks.
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl Entry {
    /// The packed-stream range of a file's bytes.
    pub fn extent(&self) -> Option<Range<u64>> {
        match self.kind {
            EntryKind::File { offset, .. } => Some(offset..offset + self.size),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// A version's index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Sorted by path, no duplicates.
    entries: Vec<Entry>,
    /// Length of the packed stream.
    packed_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is absolute; paths in a fileset are relative")]
    Absolute(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains {1:?}, which could escape the fileset")]
    Traversal(String, &'static str),
    #[error("path {0:?} has an empty component")]
    EmptyComponent(String),
    #[error("path {path:?} has a name of {len} bytes; the limit is {MAX_NAME}")]
    NameTooLong { path: String, len: usize },
    #[error("path of {0} bytes exceeds the limit of {MAX_PATH}")]
    TooLong(usize),
}

/// Checks that `path` is a relative path that stays inside the fileset.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong(path.len()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul(path.to_string()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_string()));
    }
    for c in path.split('/') {
        match c {
            "" => return Err(PathError::EmptyComponent(path.to_string())),
            ".." => return Err(PathError::Traversal(path.to_string(), "..")),
            "." => return Err(PathError::Traversal(path.to_string(), ".")),
            _ if c.len() > MAX_NAME => return Err(PathError::NameTooLong { path: path.to_string(), len: c.len() }),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid entry: {0}")]
    Path(#[from] PathError),
    #[error("{0:?} appears twice")]
    Duplicate(String),
    #[error("{path:?} is inside {parent:?}, which is not a directory")]
    ParentNotDir { path: String, parent: String },
    #[error("file {path:?} ({size} bytes at {offset}) lies outside the packed stream of {packed_len} bytes")]
    Extent { path: String, offset: u64, size: u64, packed_len: u64 },
    #[error("not a manifest (bad magic)")]
    Magic,
    #[error("unknown manifest format version {0}")]
    Version(u8),
    #[error("manifest is truncated")]
    Truncated,
    #[error("manifest checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed manifest: {0}")]
    Malformed(&'static str),
}

impl Manifest {
    /// Builds a manifest from entries in any order, checking every path, that
    /// no path repeats, that every parent is a directory listed in the
    /// manifest or the root, and that files lie inside the packed stream.
    pub fn new(mut entries: Vec<Entry>, packed_len: u64) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        for w in entries.windows(2) {
            if w[0].path == w[1].path {
                return Err(ManifestError::Duplicate(w[0].path.clone()));
            }
        }
        let m = Self { entries, packed_len };
        for e in &m.entries {
            validate_path(&e.path)?;
            if let Some((parent, _)) = e.path.rsplit_once('/')
                && !m.get(parent).is_some_and(Entry::is_dir)
            {
                return Err(ManifestError::ParentNotDir { path: e.path.clone(), parent: parent.to_string() });
            }
            if let Some(r) = e.extent()
                && r.end > packed_len
            {
                return Err(ManifestError::Extent { path: e.path.clone(), offset: r.start, size: e.size, packed_len });
            }
        }
        Ok(m)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn packed_len(&self) -> u64 {
        self.packed_len
    }

    /// Number of regular files.
    pub fn file_count(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e.kind, EntryKind::File { .. })).count()
    }

    /// The entry at `path` ("" is the root, which has no entry).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.as_str().cmp(path)).ok().map(|i| &self.entries[i])
    }

    /// The entries directly inside directory `dir` ("" for the root).
    pub fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = &'a Entry> + 'a {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let start = self.entries.partition_point(|e| e.path.as_str() < prefix.as_str());
        let len = prefix.len();
        self.entries[start..]
            .iter()
            .take_while(move |e| e.path.starts_with(&prefix))
            .filter(move |e| !e.path[len..].contains('/'))
    }

    /// The entries at or below `dir` ("" for everything), in path order.
    pub fn subtree<'a>(&'a self, dir: &str) -> impl Iterator<Item = &'a Entry> + 'a {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let exact = dir.to_string();
        let start = self.entries.partition_point(|e| e.path.as_str() < dir);
        self.entries[start..].iter().take_while(move |e| e.path == exact || e.path.starts_with(&prefix))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 96);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        put_varint(&mut out, self.packed_len);
        put_varint(&mut out, self.entries.len() as u64);
        for e in &self.entries {
            put_bytes(&mut out, e.path.as_bytes());
            match &e.kind {
                EntryKind::File { offset, sha256 } => {
                    out.push(0);
                    put_varint(&mut out, *offset);
                    out.extend_from_slice(sha256);
                }
                EntryKind::Dir => out.push(1),
                EntryKind::Symlink { target } => {
                    out.push(2);
                    put_bytes(&mut out, target.as_bytes());
                }
            }
            put_varint(&mut out, u64::from(e.mode));
            put_varint(&mut out, e.size);
            put_varint(&mut out, zigzag(e.mtime_secs));
            put_varint(&mut out, u64::from(e.mtime_nanos));
        }
        let sum = crc32c(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < 4 + 1 + 4 {
            return Err(ManifestError::Truncated);
        }
        if &bytes[..4] != MAGIC {
            return Err(ManifestError::Magic);
        }
        if bytes[4] != FORMAT_VERSION {
            return Err(ManifestError::Version(bytes[4]));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        let computed = crc32c(body);
        if stored != computed {
            return Err(ManifestError::Checksum { stored, computed });
        }
        let mut r = Reader { buf: &body[5..] };
        let packed_len = r.varint()?;
        let count = r.varint()?;
        // Each entry takes at least 6 bytes: a bound that stops absurd counts.
        if count > (r.buf.len() / 6) as u64 + 1 {
            return Err(ManifestError::Malformed("entry count exceeds the manifest's size"));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let path = r.string()?;
            let kind = match r.byte()? {
                0 => {
                    let offset = r.varint()?;
                    let sha = r.take(32)?;
                    EntryKind::File { offset, sha256: sha.try_into().expect("32 bytes") }
                }
                1 => EntryKind::Dir,
                2 => EntryKind::Symlink { target: r.string()? },
                _ => return Err(ManifestError::Malformed("unknown entry kind")),
            };
            let mode = u32::try_from(r.varint()?).map_err(|_| ManifestError::Malformed("mode out of range"))?;
            let size = r.varint()?;
            let mtime_secs = unzigzag(r.varint()?);
            let mtime_nanos =
                u32::try_from(r.varint()?).map_err(|_| ManifestError::Malformed("mtime nanoseconds out of range"))?;
            entries.push(Entry { path, kind, mode, size, mtime_secs, mtime_nanos });
        }
        if !r.buf.is_empty() {
            return Err(ManifestError::Malformed("trailing bytes"));
        }
        Self::new(entries, packed_len)
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ManifestError> {
        let (&b, rest) = self.buf.split_first().ok_or(ManifestError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        if self.buf.len() < n {
            return Err(ManifestError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn varint(&mut self) -> Result<u64, ManifestError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ManifestError::Malformed("varint longer than 64 bits"))
    }

    fn string(&mut self) -> Result<String, ManifestError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| ManifestError::Malformed("length out of range"))?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ManifestError::Malformed("a path is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(path: &str, offset: u64, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { offset, sha256: [7; 32] },
            mode: 0o644,
            size,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry { path: path.into(), kind: EntryKind::Dir, mode: 0o755, size: 0, mtime_secs: -3, mtime_nanos: 0 }
    }

    #[test]
    fn bad_paths_are_refused_by_name() {
        assert_eq!(validate_path(""), Err(PathError::Empty));
        assert_eq!(validate_path("/etc/passwd"), Err(PathError::Absolute("/etc/passwd".into())));
        assert_eq!(validate_path("a/../b"), Err(PathError::Traversal("a/../b".into(), "..")));
        assert_eq!(validate_path("./a"), Err(PathError::Traversal("./a".into(), ".")));
        assert_eq!(validate_path("a//b"), Err(PathError::EmptyComponent("a//b".into())));
        assert_eq!(validate_path("a\0b"), Err(PathError::Nul("a\0b".into())));
        let long = "x".repeat(256);
        assert!(matches!(validate_path(&long), Err(PathError::NameTooLong { len: 256, .. })));
        assert!(validate_path("a/b.c/..d/e..").is_ok());
    }

    #[test]
    fn lookups_and_listings() {
        let m = Manifest::new(
            vec![file("b/x", 0, 3), dir("b"), file("a", 3, 1), dir("b/c"), file("b/c/y", 4, 0), file("bz", 4, 2)],
            6,
        )
        .unwrap();
        assert_eq!(m.get("b/c/y").unwrap().size, 0);
        assert!(m.get("b/c/z").is_none());
        let root: Vec<_> = m.children("").map(|e| e.path.as_str()).collect();
        assert_eq!(root, vec!["a", "b", "bz"]);
        let b: Vec<_> = m.children("b").map(|e| e.path.as_str()).collect();
        assert_eq!(b, vec!["b/c", "b/x"]);
        let sub: Vec<_> = m.subtree("b").map(|e| e.path.as_str()).collect();
        assert_eq!(sub, vec!["b", "b/c", "b/c/y", "b/x"]);
        assert_eq!(m.file_count(), 4);
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        assert_eq!(Manifest::new(vec![file("a", 0, 1), file("a", 1, 1)], 2), Err(ManifestError::Duplicate("a".into())));
        assert!(matches!(Manifest::new(vec![file("d/a", 0, 1)], 1), Err(ManifestError::ParentNotDir { .. })));
        assert!(matches!(
            Manifest::new(vec![file("a", 0, 1), file("a/b", 0, 0)], 1),
            Err(ManifestError::ParentNotDir { .. })
        ));
        assert!(matches!(Manifest::new(vec![file("a", 5, 10)], 12), Err(ManifestError::Extent { .. })));
        assert!(matches!(
            Manifest::new(vec![file("../a", 0, 1)], 1),
            Err(ManifestError::Path(PathError::Traversal(..)))
        ));
    }

    #[test]
    fn damaged_encodings_are_detected() {
        let m = Manifest::new(vec![file("a", 0, 1)], 1).unwrap();
        let mut b = m.encode();
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        b[8] ^= 1;
        assert!(matches!(Manifest::decode(&b), Err(ManifestError::Checksum { .. })));
        assert_eq!(Manifest::decode(b"TSM"), Err(ManifestError::Truncated));
        assert_eq!(Manifest::decode(b"XXXXX\0\0\0\0"), Err(ManifestError::Magic));
    }

    fn entry_strategy() -> impl Strategy<Value = (String, u8, u64, i64, u32, String)> {
        ("[a-z]{1,6}(/[a-z0-9._-]{1,6}){0,2}", 0u8..3, 0u64..10_000, any::<i64>(), 0u32..1_000_000_000, "[ -~]{0,20}")
    }

    proptest! {
        /// Any valid manifest survives encoding bit for bit, and every
        /// truncation of its encoding is refused rather than misread.
        #[test]
        fn manifests_round_trip(raw in proptest::collection::vec(entry_strategy(), 0..40)) {
            let mut entries = Vec::new();
            let mut offset = 0;
            let mut dirs = std::collections::BTreeSet::new();
            let mut seen = std::collections::HashSet::new();
            for (path, kind, size, mtime, nanos, target) in raw {
                // Every parent becomes a directory entry; skip clashes and
                // the "." and ".." the generator can produce.
                if validate_path(&path).is_err() {
                    continue;
                }
                let parents: Vec<String> = path.match_indices('/').map(|(i, _)| path[..i].to_string()).collect();
                if seen.contains(&path) || dirs.contains(&path) || parents.iter().any(|p| seen.contains(p)) {
                    continue;
                }
                dirs.extend(parents);
                seen.insert(path.clone());
                let kind = match kind {
                    0 => { let k = EntryKind::File { offset, sha256: [size as u8; 32] }; offset += size; k }
                    1 => EntryKind::Dir,
                    _ => EntryKind::Symlink { target },
                };
                let size = if kind == EntryKind::Dir { 0 } else { size };
                if kind == EntryKind::Dir { dirs.insert(path.clone()); seen.remove(&path); continue; }
                entries.push(Entry { path, kind, mode: 0o600, size, mtime_secs: mtime, mtime_nanos: nanos });
            }
            for d in &dirs {
                entries.push(dir(d));
            }
            let m = Manifest::new(entries, offset).unwrap();
            let enc = m.encode();
            prop_assert_eq!(Manifest::decode(&enc).unwrap(), m);
            for cut in [0, 1, enc.len() / 2, enc.len() - 1] {
                prop_assert!(Manifest::decode(&enc[..cut]).is_err());
            }
        }
    }
}
