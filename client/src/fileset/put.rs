//! Writing a version: scan, pack, place, encode, write, then publish.
//!
//! A reader thread packs the files' bytes, in path order, into item-sized
//! buffers and hashes every file as it goes; the async side asks the master
//! where each item goes, writes it (a few items in flight), and retries an
//! item elsewhere if a chunkserver fails it. The manifest follows, then the
//! commit: until the master has the commit, nothing of the version is
//! visible, and if the writer dies its stripes are collected as orphans.

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sha2::{Digest, Sha256};
use tessera_core::ids::ItemId;
use tessera_core::layout::Layout;
use tessera_core::manifest::{Entry, EntryKind, Manifest};
use tessera_proto::ms;
use tracing::{Instrument, debug, debug_span, warn};

use super::scan::{SourceEntry, SourceKind, scan};
use super::{FilesetClient, FilesetError};
use crate::ClientError;

/// How a version is written.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Items written at once.
    pub parallel_items: usize,
    /// Attempts per item before the write fails.
    pub attempts: usize,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self { parallel_items: 4, attempts: 3 }
    }
}

/// Items allocated per request to the master.
const ALLOCATE_BATCH: u32 = 8;

pub(super) async fn put(
    fc: &FilesetClient,
    fileset: &str,
    root: &Path,
    options: &PutOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ms::Version, FilesetError> {
    let root = root.to_path_buf();
    let entries = tokio::task::spawn_blocking(move || scan(&root)).await.expect("the scan does not panic")?;
    let mut master = fc.master();
    let begun = master.begin_version(ms::BeginVersionRequest { fileset: fileset.to_string() }).await?.into_inner();
    let layout = layout_from_wire(begun.layout.as_ref())?;
    // A master that predates degraded writes sends 0: every stripe then.
    let min = match begun.min_write_stripes as usize {
        0 => layout.n(),
        v => v.min(layout.n()),
    };
    let session = Session { id: begun.session, min, failed: Mutex::new(BTreeSet::new()) };
    let span = debug_span!("put", fileset, session = %session.id);
    let result = write_version(fc, &session, layout, entries, options, progress).instrument(span.clone()).await;
    let session = session.id;
    match result {
        Ok(commit) => {
            let manifest = commit.manifest.as_ref().map(|m| &m.items[..]).unwrap_or_default();
            let degraded = commit.items.iter().chain(manifest).filter(|i| !i.missing_stripes.is_empty()).count();
            if degraded > 0 {
                warn!(
                    fileset,
                    items = degraded,
                    "written degraded (servers were down); the master rebuilds the missing stripes"
                );
            }
            let version = master.commit_version(commit).await?.into_inner();
            span.in_scope(|| {
                debug!(version = version.id, files = version.files, bytes = version.bytes, "version committed")
            });
            Ok(version)
        }
        Err(e) => {
            // Best effort: the session also expires by itself.
            let _ = master.abort_version(ms::AbortVersionRequest { session }).await;
            Err(e)
        }
    }
}

pub(super) fn layout_from_wire(l: Option<&ms::Layout>) -> Result<Layout, FilesetError> {
    let l = l.ok_or_else(|| tonic::Status::internal("the master sent no layout"))?;
    Layout::new(l.k as usize, l.m as usize, l.stripe_unit as usize, l.block_size as usize)
        .map_err(|e| FilesetError::Master(tonic::Status::internal(format!("the master sent a bad layout: {e}"))))
}

/// One write session as the writer keeps it.
struct Session {
    id: String,
    /// Stripes per item that must be durable.
    min: usize,
    /// Chunkservers that failed a write in this session: not asked again,
    /// and told to the master with every allocation so it places elsewhere.
    failed: Mutex<BTreeSet<String>>,
}

impl Session {
    fn failed(&self) -> Vec<String> {
        self.failed.lock().unwrap().iter().cloned().collect()
    }
}

/// Writes the data and the manifest; returns the commit request.
async fn write_version(
    fc: &FilesetClient,
    session: &Session,
    layout: Layout,
    entries: Vec<SourceEntry>,
    options: &PutOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ms::CommitVersionRequest, FilesetError> {
    // Files are packed in path order, each right after the previous one.
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(entries.len());
    for e in &entries {
        offsets.push(offset);
        if e.kind == SourceKind::File {
            offset += e.size;
        }
    }
    let total = offset;
    let capacity = layout.item_capacity() as usize;

    // The packer thread: files -> item buffers, and every file's digest.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(options.parallel_items.max(1));
    let files: Vec<SourceEntry> = entries.iter().filter(|e| e.kind == SourceKind::File).cloned().collect();
    let packer = tokio::task::spawn_blocking(move || pack(&files, capacity, &tx));

    let mut writer = ItemWriter::new(fc, session, layout, options);
    let mut index = 0usize;
    while let Some(buf) = rx.recv().await {
        let len = buf.len() as u64;
        writer.submit(index, buf).await?;
        progress(len);
        index += 1;
    }
    let digests = packer.await.expect("the packer does not panic")?;
    let items = writer.finish().await?;

    let mut digest_iter = digests.into_iter();
    let manifest_entries: Vec<Entry> = entries
        .iter()
        .zip(offsets)
        .map(|(e, offset)| Entry {
            path: e.path.clone(),
            kind: match &e.kind {
                SourceKind::File => EntryKind::File { offset, sha256: digest_iter.next().expect("a digest per file") },
                SourceKind::Dir => EntryKind::Dir,
                SourceKind::Symlink(t) => EntryKind::Symlink { target: t.clone() },
            },
            mode: e.mode,
            size: e.size,
            mtime_secs: e.mtime_secs,
            mtime_nanos: e.mtime_nanos,
        })
        .collect();
    let files = entries.iter().filter(|e| e.kind == SourceKind::File).count() as u64;
    let manifest = Manifest::new(manifest_entries, total)
        .map_err(|e| FilesetError::BadSource { path: "manifest".into(), reason: e.to_string() })?;
    let encoded = Bytes::from(manifest.encode());
    let sha = Sha256::digest(&encoded);
    let mut mwriter = ItemWriter::new(fc, session, layout, options);
    for (i, at) in (0..encoded.len()).step_by(capacity).enumerate() {
        mwriter.submit(i, encoded.slice(at..(at + capacity).min(encoded.len()))).await?;
    }
    let manifest_items = mwriter.finish().await?;
    debug!(files, bytes = total, items = items.len(), manifest_bytes = encoded.len(), "version written");
    Ok(ms::CommitVersionRequest {
        session: session.id.clone(),
        items,
        manifest: Some(ms::ManifestRef {
            items: manifest_items,
            length: encoded.len() as u64,
            sha256: sha.to_vec().into(),
        }),
        files,
        bytes: total,
    })
}

/// Reads the files in order into buffers of `capacity` bytes (the last may
/// be short) and returns each file's SHA-256.
fn pack(
    files: &[SourceEntry],
    capacity: usize,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<Vec<[u8; 32]>, FilesetError> {
    let mut digests = Vec::with_capacity(files.len());
    let mut buf = BytesMut::with_capacity(capacity);
    let mut chunk = vec![0u8; 1 << 20];
    for f in files {
        let io = |e| FilesetError::Io { path: f.source.clone(), source: e };
        let mut file = std::fs::File::open(&f.source).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut left = f.size;
        loop {
            let n = file.read(&mut chunk).map_err(io)?;
            if n == 0 {
                break;
            }
            if n as u64 > left {
                return Err(FilesetError::Changed { path: f.path.clone() });
            }
            left -= n as u64;
            hasher.update(&chunk[..n]);
            let mut rest = &chunk[..n];
            while !rest.is_empty() {
                let take = (capacity - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == capacity {
                    let full = std::mem::replace(&mut buf, BytesMut::with_capacity(capacity)).freeze();
                    if tx.blocking_send(full).is_err() {
                        // The writer gave up; its error is the one to report.
                        return Ok(digests);
                    }
                }
            }
        }
        if left != 0 {
            return Err(FilesetError::Changed { path: f.path.clone() });
        }
        digests.push(hasher.finalize().into());
    }
    if !buf.is_empty() {
        let _ = tx.blocking_send(buf.freeze());
    }
    Ok(digests)
}

/// One item being written: its index in the stream and its reference.
type ItemWrite<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(usize, ms::ItemRef), FilesetError>> + Send + 'a>>;

/// Places and writes items, a few at a time, retrying failed ones elsewhere.
struct ItemWriter<'a> {
    fc: &'a FilesetClient,
    session: &'a Session,
    layout: Layout,
    options: &'a PutOptions,
    allocated: VecDeque<ms::ItemLocation>,
    in_flight: FuturesUnordered<ItemWrite<'a>>,
    done: Vec<(usize, ms::ItemRef)>,
}

impl<'a> ItemWriter<'a> {
    fn new(fc: &'a FilesetClient, session: &'a Session, layout: Layout, options: &'a PutOptions) -> Self {
        Self {
            fc,
            session,
            layout,
            options,
            allocated: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            done: Vec::new(),
        }
    }

    async fn allocate(&mut self, stripe_len: u64) -> Result<ms::ItemLocation, FilesetError> {
        if self.allocated.is_empty() {
            let resp = self
                .fc
                .master()
                .allocate_items(ms::AllocateItemsRequest {
                    session: self.session.id.clone(),
                    count: ALLOCATE_BATCH,
                    stripe_length: stripe_len,
                    failed_servers: self.session.failed(),
                })
                .await?;
            self.allocated.extend(resp.into_inner().items);
        }
        Ok(self.allocated.pop_front().expect("just allocated"))
    }

    async fn submit(&mut self, index: usize, data: Bytes) -> Result<(), FilesetError> {
        while self.in_flight.len() >= self.options.parallel_items.max(1) {
            let r = self.in_flight.next().await.expect("not empty")?;
            self.done.push(r);
        }
        let stripe_len = self.layout.stripe_len(data.len() as u64).map_err(ClientError::from)? as u64;
        let first = self.allocate(stripe_len).await?;
        let (fc, session, layout, attempts) = (self.fc, self.session, self.layout, self.options.attempts.max(1));
        self.in_flight.push(Box::pin(write_one(fc, session, layout, index, data, first, attempts)));
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<ms::ItemRef>, FilesetError> {
        while let Some(r) = self.in_flight.next().await {
            self.done.push(r?);
        }
        self.done.sort_by_key(|(i, _)| *i);
        Ok(self.done.into_iter().map(|(_, r)| r).collect())
    }
}

async fn write_one(
    fc: &FilesetClient,
    session: &Session,
    layout: Layout,
    index: usize,
    data: Bytes,
    mut at: ms::ItemLocation,
    attempts: usize,
) -> Result<(usize, ms::ItemRef), FilesetError> {
    let len = data.len() as u64;
    let mut attempt = 1;
    loop {
        let item = ItemId::from_bytes(&at.item)
            .map_err(|e| tonic::Status::internal(format!("the master sent a bad item id: {e}")))?;
        // Servers that failed this session since the item was placed are
        // left out: their stripes are missing from the start.
        let failed = session.failed();
        let servers: Vec<String> =
            at.servers.iter().map(|s| if failed.contains(s) { String::new() } else { s.clone() }).collect();
        match fc.stripes().write_item_degraded(item, layout, data.clone(), &servers, session.min).await {
            Ok(loc) => {
                let missing: Vec<u32> =
                    loc.servers.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i as u32).collect();
                for (i, s) in servers.iter().enumerate() {
                    if !s.is_empty() && loc.servers[i].is_none() {
                        session.failed.lock().unwrap().insert(s.clone());
                    }
                }
                if !missing.is_empty() {
                    debug!(%item, ?missing, "item written degraded; the master rebuilds the missing stripes");
                }
                return Ok((index, ms::ItemRef { item: at.item, length: len, missing_stripes: missing }));
            }
            Err(e @ (ClientError::Write { .. } | ClientError::TooFewStored { .. } | ClientError::Locations { .. }))
                if attempt < attempts || e.failed_servers().iter().any(|s| !failed.iter().any(|f| f == s)) =>
            {
                // Too few stripes stored (or too few servers left once the
                // session's failed ones are taken out): place it again, away
                // from every server that failed. Servers failing for the
                // first time do not use up an attempt: there are only so
                // many, and the master says clearly when the rest cannot
                // hold the item.
                warn!(%item, error = %e, attempt, "item write failed; placing it elsewhere");
                let fresh = {
                    let mut set = session.failed.lock().unwrap();
                    e.failed_servers().into_iter().filter(|s| set.insert(s.to_string())).count()
                };
                if fresh == 0 {
                    attempt += 1;
                }
                let resp = fc
                    .master()
                    .allocate_items(ms::AllocateItemsRequest {
                        session: session.id.clone(),
                        count: 1,
                        stripe_length: layout.stripe_len(len).map_err(ClientError::from)? as u64,
                        failed_servers: session.failed(),
                    })
                    .await?;
                at = resp
                    .into_inner()
                    .items
                    .into_iter()
                    .next()
                    .ok_or_else(|| tonic::Status::internal("no item allocated"))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
