//! Reading a version: its manifest, any range of its packed stream, one
//! file, or the whole tree into a directory, every file checked against the
//! SHA-256 the manifest recorded at ingest.

use std::fs;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tessera_core::ids::ItemId;
use tessera_core::layout::Layout;
use tessera_core::manifest::{Entry, EntryKind, Manifest};
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;

use tessera_proto::ms::master_client::MasterClient;
use tonic::transport::Channel;
use tracing::{Instrument, debug_span};

use super::put::layout_from_wire;
use super::{FilesetClient, FilesetError};
use crate::{ItemLocation, ReadReport, StripeClient};

/// Items read ahead when copying a whole version.
const READ_AHEAD: usize = 4;
/// Bytes gathered before a write to a file being copied out.
const WRITE_BUFFER: usize = 1 << 20;

/// A version ready to read.
#[derive(Debug, Clone)]
pub struct OpenVersion {
    pub version: ms::Version,
    pub layout: Layout,
    pub manifest: Manifest,
    /// The data items, in packed-stream order.
    items: Vec<ItemLocation>,
    /// Where blocks that arrive failing their checksum are reported.
    master: MasterClient<Channel>,
}

/// How long a report of a corrupt block may hold up the read that found it.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Tells the master of stripes whose blocks arrived failing their checksum,
/// so it has their servers verify them. Best effort: the read itself was
/// already served from other stripes.
async fn report_corrupt(master: &MasterClient<Channel>, report: &ReadReport) {
    for (stripe, server) in &report.corrupt_in_transit {
        let req = ms::ReportCorruptStripeRequest {
            stripe: Some(tessera_proto::cs::StripeRef {
                item: stripe.item.as_bytes().to_vec().into(),
                index: u32::from(stripe.index),
            }),
            server: server.clone(),
            detail: "a block failed its checksum at the reader".into(),
        };
        let mut m = master.clone();
        match tokio::time::timeout(REPORT_TIMEOUT, m.report_corrupt_stripe(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(%stripe, error = %e, "the master refused a corrupt-stripe report"),
            Err(_) => tracing::debug!(%stripe, "the master did not take a corrupt-stripe report in time"),
        }
    }
}

/// Where a reader of a version tells the master of blocks that arrived
/// failing their checksum (readers that fetch items themselves, such as the
/// CSI node plugin's roots, hand it their read reports).
#[derive(Debug, Clone)]
pub struct CorruptReports {
    master: MasterClient<Channel>,
}

impl CorruptReports {
    /// Sends the report's corrupt stripes, if any (best effort, bounded).
    pub async fn send(&self, report: &ReadReport) {
        report_corrupt(&self.master, report).await;
    }
}

/// What a copy of a version did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

fn locations(
    layout: Layout,
    refs: &[ms::ItemRef],
    found: &[ms::ItemLocation],
) -> Result<Vec<ItemLocation>, FilesetError> {
    refs.iter()
        .map(|r| {
            let item = ItemId::from_bytes(&r.item).map_err(|e| tonic::Status::internal(format!("bad item id: {e}")))?;
            let servers = found
                .iter()
                .find(|l| l.item == r.item)
                .map(|l| l.servers.iter().map(|s| (!s.is_empty()).then(|| s.clone())).collect())
                .unwrap_or_else(|| vec![None; layout.n()]);
            Ok(ItemLocation { item, layout, item_len: r.length, servers })
        })
        .collect()
}

pub(super) async fn open(fc: &FilesetClient, fileset: &str, version: u64) -> Result<OpenVersion, FilesetError> {
    let resp =
        fc.master().get_version(ms::GetVersionRequest { fileset: fileset.to_string(), version }).await?.into_inner();
    let layout = layout_from_wire(resp.layout.as_ref())?;
    let v = resp.version.ok_or_else(|| tonic::Status::internal("the master sent no version"))?;
    let mref = v.manifest.clone().unwrap_or_default();
    let bad = |reason: String| FilesetError::Manifest { fileset: fileset.to_string(), version: v.id, reason };
    let manifest_items = locations(layout, &mref.items, &resp.locations)?;
    let mut encoded = Vec::with_capacity(mref.length as usize);
    for loc in &manifest_items {
        let (data, report) = fc.stripes().read(loc, 0..loc.item_len, ReadMode::Hedged).await?;
        report_corrupt(&fc.master(), &report).await;
        for p in data.parts() {
            encoded.extend_from_slice(p);
        }
    }
    if encoded.len() as u64 != mref.length {
        return Err(bad(format!("{} bytes read, {} expected", encoded.len(), mref.length)));
    }
    let sha = Sha256::digest(&encoded);
    if sha[..] != mref.sha256[..] {
        return Err(bad("SHA-256 mismatch".into()));
    }
    let manifest = Manifest::decode(&encoded).map_err(|e| bad(e.to_string()))?;
    let items = locations(layout, &v.items, &resp.locations)?;
    Ok(OpenVersion { version: v, layout, manifest, items, master: fc.master() })
}

impl OpenVersion {
    pub fn id(&self) -> u64 {
        self.version.id
    }

    /// The data items with their locations.
    pub fn items(&self) -> &[ItemLocation] {
        &self.items
    }

    /// The master the version was opened from.
    pub fn master(&self) -> MasterClient<Channel> {
        self.master.clone()
    }

    /// Where to report blocks that fail their checksum on reads of these
    /// items made outside [`OpenVersion`]'s own methods.
    pub fn corrupt_reports(&self) -> CorruptReports {
        CorruptReports { master: self.master.clone() }
    }

    fn no_path(&self, path: &str) -> FilesetError {
        FilesetError::NoSuchPath { fileset: self.version.fileset.clone(), version: self.id(), path: path.to_string() }
    }

    /// `range` of the packed stream, as slices in order.
    pub async fn read(
        &self,
        client: &StripeClient,
        range: Range<u64>,
        mode: ReadMode,
    ) -> Result<Vec<Bytes>, FilesetError> {
        let span = debug_span!("read_version", fileset = %self.version.fileset, version = self.id());
        self.read_items(client, range, mode).instrument(span).await
    }

    async fn read_items(
        &self,
        client: &StripeClient,
        range: Range<u64>,
        mode: ReadMode,
    ) -> Result<Vec<Bytes>, FilesetError> {
        let mut out = Vec::new();
        for (i, r) in self.layout.items_of(range) {
            let loc = self.items.get(i as usize).ok_or_else(|| FilesetError::Manifest {
                fileset: self.version.fileset.clone(),
                version: self.id(),
                reason: format!("no item {i}"),
            })?;
            let (data, report) = client.read(loc, r, mode).await?;
            report_corrupt(&self.master, &report).await;
            out.extend(data.parts().iter().cloned());
        }
        Ok(out)
    }

    /// The entry at `path`.
    pub fn entry(&self, path: &str) -> Result<&Entry, FilesetError> {
        self.manifest.get(path).ok_or_else(|| self.no_path(path))
    }

    /// A whole file, checked against its digest.
    pub async fn read_file(
        &self,
        client: &StripeClient,
        path: &str,
        mode: ReadMode,
    ) -> Result<Vec<Bytes>, FilesetError> {
        let e = self.entry(path)?;
        let (range, sha) = match &e.kind {
            EntryKind::File { sha256, .. } => (e.extent().expect("files have extents"), *sha256),
            other => {
                return Err(FilesetError::NotAFile {
                    fileset: self.version.fileset.clone(),
                    version: self.id(),
                    path: path.to_string(),
                    kind: kind_name(other),
                });
            }
        };
        let span = debug_span!("read_file", fileset = %self.version.fileset, version = self.id(), path);
        let parts = self.read_items(client, range, mode).instrument(span).await?;
        let mut h = Sha256::new();
        parts.iter().for_each(|p| h.update(p));
        check(path, &sha, &h.finalize().into())?;
        Ok(parts)
    }

    /// Copies the version into `dest`, which must not exist or be an empty
    /// directory: directories, symlinks, and files with their modes and
    /// modification times, each file checked against its digest. Items are
    /// read in order, a few ahead, and cut into files as they arrive.
    pub async fn get(
        &self,
        client: &StripeClient,
        dest: &Path,
        mode: ReadMode,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<GetStats, FilesetError> {
        prepare_destination(dest)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(READ_AHEAD * 4);
        let entries = self.manifest.entries().to_vec();
        let root = dest.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || unpack(&root, &entries, rx));
        let span = debug_span!("get_version", fileset = %self.version.fileset, version = self.id());
        let mut reads = futures::stream::iter(self.items.iter())
            .map(|loc| client.read(loc, 0..loc.item_len, mode).instrument(span.clone()))
            .buffered(READ_AHEAD);
        let mut failure = None;
        while let Some(r) = reads.next().await {
            match r {
                Ok((data, report)) => {
                    report_corrupt(&self.master, &report).await;
                    progress(data.len() as u64);
                    if data.parts().iter().any(|p| tx.send(p.clone()).is_err()) {
                        break; // the writer stopped: its error says why
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer.await.expect("the writer does not panic");
        if let Some(e) = failure {
            return Err(e.into());
        }
        written
    }
}

fn kind_name(k: &EntryKind) -> &'static str {
    match k {
        EntryKind::File { .. } => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink { .. } => "symlink",
    }
}

fn check(path: &str, expected: &[u8; 32], actual: &[u8; 32]) -> Result<(), FilesetError> {
    if expected == actual {
        Ok(())
    } else {
        Err(FilesetError::Digest {
            path: path.to_string(),
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        })
    }
}

fn prepare_destination(dest: &Path) -> Result<(), FilesetError> {
    let bad = |reason: &str| FilesetError::BadDestination { path: dest.to_path_buf(), reason: reason.to_string() };
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(|e| FilesetError::Io { path: dest.to_path_buf(), source: e })
        }
        Err(e) => Err(FilesetError::Io { path: dest.to_path_buf(), source: e }),
        Ok(m) if !m.is_dir() => Err(bad("exists and is not a directory")),
        Ok(_) => {
            let mut it = fs::read_dir(dest).map_err(|e| FilesetError::Io { path: dest.to_path_buf(), source: e })?;
            if it.next().is_some() { Err(bad("is not empty; copy into a new or empty directory")) } else { Ok(()) }
        }
    }
}

/// Creates the tree from the packed stream arriving on `rx` (in order).
fn unpack(root: &Path, entries: &[Entry], rx: std::sync::mpsc::Receiver<Bytes>) -> Result<GetStats, FilesetError> {
    let mut stats = GetStats::default();
    let next = || rx.recv().ok();
    let mut dirs: Vec<(PathBuf, &Entry)> = Vec::new();
    let mut carry: Option<Bytes> = None;
    for e in entries {
        let path = root.join(&e.path);
        let io = |err| FilesetError::Io { path: path.clone(), source: err };
        match &e.kind {
            EntryKind::Dir => {
                fs::create_dir(&path).map_err(io)?;
                dirs.push((path.clone(), e));
                stats.dirs += 1;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path).map_err(io)?;
                stats.symlinks += 1;
            }
            EntryKind::File { sha256, .. } => {
                // create_new: never follow or overwrite anything already there.
                let f = fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io)?;
                // Parts arrive in checksum blocks; small writes cost several
                // times more per byte than 1 MiB ones (on tmpfs 64 KiB writes
                // run at a quarter of the speed), so they are gathered first.
                let mut f = std::io::BufWriter::with_capacity(WRITE_BUFFER, f);
                let mut h = Sha256::new();
                let mut left = e.size;
                while left > 0 {
                    let chunk = match carry.take().or_else(next) {
                        Some(c) => c,
                        None => {
                            return Err(FilesetError::Manifest {
                                fileset: String::new(),
                                version: 0,
                                reason: format!("the data ended inside {:?}", e.path),
                            });
                        }
                    };
                    let take = (chunk.len() as u64).min(left) as usize;
                    f.write_all(&chunk[..take]).map_err(io)?;
                    h.update(&chunk[..take]);
                    if take < chunk.len() {
                        carry = Some(chunk.slice(take..));
                    }
                    left -= take as u64;
                }
                check(&e.path, sha256, &h.finalize().into())?;
                let f = f.into_inner().map_err(|e| io(e.into_error()))?;
                f.set_permissions(fs::Permissions::from_mode(e.mode)).map_err(io)?;
                f.set_modified(mtime(e)).map_err(io)?;
                stats.files += 1;
                stats.bytes += e.size;
            }
        }
    }
    // Directories last, deepest first: writing into them changed their times.
    for (path, e) in dirs.iter().rev() {
        let io = |err| FilesetError::Io { path: path.clone(), source: err };
        fs::set_permissions(path, fs::Permissions::from_mode(e.mode)).map_err(io)?;
        fs::File::open(path).and_then(|d| d.set_modified(mtime(e))).map_err(io)?;
    }
    Ok(stats)
}

fn mtime(e: &Entry) -> std::time::SystemTime {
    if e.mtime_secs >= 0 {
        UNIX_EPOCH + Duration::new(e.mtime_secs as u64, e.mtime_nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(e.mtime_secs.unsigned_abs()) + Duration::from_nanos(u64::from(e.mtime_nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, offset: u64, data: &[u8], sha256: [u8; 32]) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { offset, sha256 },
            mode: 0o644,
            size: data.len() as u64,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 0,
        }
    }

    fn unpack_parts(root: &Path, entries: &[Entry], parts: &[&[u8]]) -> Result<GetStats, FilesetError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(parts.len().max(1));
        for p in parts {
            tx.send(Bytes::copy_from_slice(p)).unwrap();
        }
        drop(tx);
        unpack(root, entries, rx)
    }

    #[test]
    fn files_are_cut_from_the_stream_across_parts_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (b"hello ".as_slice(), b"world, and more".as_slice());
        let entries = vec![file("a", 0, a, Sha256::digest(a).into()), file("b", 6, b, Sha256::digest(b).into())];
        // Parts that do not line up with the files.
        let stats = unpack_parts(dir.path(), &entries, &[b"hel", b"lo wor", b"ld, and more"]).unwrap();
        assert_eq!((stats.files, stats.bytes), (2, 21));
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), a);
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b);
    }

    #[test]
    fn bytes_that_do_not_match_the_manifest_digest_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"the weights";
        let entries = vec![file("model/w.bin", 0, good, Sha256::digest(good).into())];
        fs::create_dir(dir.path().join("model")).unwrap();
        // Same length, one byte different: only the digest can tell.
        let err = unpack_parts(dir.path(), &entries, &[b"the weighTs"]).unwrap_err();
        match err {
            FilesetError::Digest { path, expected, actual } => {
                assert_eq!(path, "model/w.bin");
                assert_eq!(expected, hex::encode(Sha256::digest(good)));
                assert_ne!(expected, actual);
            }
            other => panic!("expected a digest error, got {other:?}"),
        }
    }

    #[test]
    fn a_stream_that_ends_inside_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"0123456789";
        let entries = vec![file("f", 0, data, Sha256::digest(data).into())];
        let err = unpack_parts(dir.path(), &entries, &[b"01234"]).unwrap_err();
        assert!(err.to_string().contains("ended inside \"f\""), "{err}");
    }
}
