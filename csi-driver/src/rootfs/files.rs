//! Opening and releasing files: large files passed through to the node's
//! file store once stored there whole (FUSE passthrough), the rest served
//! by the plugin.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tessera_core::manifest::{Entry, EntryKind};
use tracing::{debug, info, warn};

use crate::fuse::abi;
use crate::fuse::session::{Reply, Result};
use crate::passthrough;
use crate::passthrough::{FileStore, IoTable};

use super::{FH_CACHED, FH_PASSTHROUGH, Passthrough, RootFs};

impl RootFs {
    /// Lets this mount answer opens of large files with a backing file from
    /// `store` (when the kernel agrees at INIT), recording open modes in
    /// `table`; files not stored yet are written there after their first
    /// open. Call before serving.
    pub fn enable_passthrough(self: &Arc<Self>, store: Option<Arc<FileStore>>, table: IoTable) {
        let p = Passthrough { me: Arc::downgrade(self), store, table, dev: OnceLock::new() };
        if self.passthrough.set(p).is_err() {
            warn!(volume = %self.volume, "passthrough enabled twice; keeping the first");
        }
    }

    /// Large files of this mount open now, in either mode.
    pub fn open_large_files(&self) -> usize {
        self.passthrough.get().map_or(0, |p| p.table.open_inodes())
    }

    /// Whether the kernel reads large files of this mount directly.
    pub fn passes_through(&self) -> bool {
        self.passthrough.get().and_then(|p| p.dev.get()).is_some_and(|(_, on)| *on)
    }

    /// Answers OPEN of a regular file: large files go through the file
    /// store when they can, without ever mixing modes on one inode.
    pub(super) fn open_file(&self, nodeid: u64, e: &Entry, unique: u64) -> Result<Reply> {
        let cached = |fh: u64| Reply::Data(abi::open_out(fh, abi::fopen::KEEP_CACHE | abi::fopen::NOFLUSH));
        let (Some(p), EntryKind::File { sha256, .. }) = (self.passthrough.get(), &e.kind) else {
            return Ok(cached(nodeid));
        };
        let Some((dev, true)) = p.dev.get() else { return Ok(cached(nodeid)) };
        if e.size < passthrough::MIN_SIZE {
            return Ok(cached(nodeid));
        }
        let sha = hex::encode(sha256);
        // A backing registered here and not recorded must be let go again.
        let mut registered = None;
        let recorded = p.table.update(nodeid, |io| {
            if io.last_open == unique {
                // Resent after a takeover: the answer this open got before.
                return (io.passthrough > 0).then_some(io.backing);
            }
            io.last_open = unique;
            if io.cached > 0 {
                io.cached += 1;
                return None;
            }
            if io.passthrough > 0 {
                io.passthrough += 1;
                return Some(io.backing);
            }
            let stored = p.store.as_ref().and_then(|s| s.get(&sha));
            match stored.map(|f| passthrough::open_backing(dev.as_fd(), f.as_fd())) {
                Some(Ok(id)) => {
                    registered = Some(id);
                    io.passthrough = 1;
                    io.backing = id;
                    Some(id)
                }
                other => {
                    if let Some(Err(err)) = other {
                        warn!(volume = %self.volume, sha, error = %err, "cannot register a backing file; reading through the plugin");
                    }
                    io.cached = 1;
                    None
                }
            }
        });
        let (io, backing) = match recorded {
            Ok(r) => r,
            Err(err) => {
                if let Some(id) = registered {
                    let _ = passthrough::close_backing(dev.as_fd(), id);
                }
                warn!(volume = %self.volume, nodeid, error = %err, "cannot record an open");
                return Err(Errno::IO);
            }
        };
        match backing {
            Some(id) => {
                debug!(volume = %self.volume, nodeid, backing = id, opens = io.passthrough, "open passed through");
                Ok(Reply::Data(abi::open_out_backing(
                    nodeid | FH_PASSTHROUGH,
                    abi::fopen::PASSTHROUGH | abi::fopen::NOFLUSH,
                    id,
                )))
            }
            None => {
                if p.store.as_ref().is_some_and(|s| !s.contains(&sha))
                    && let Some(me) = p.me.upgrade()
                {
                    tokio::spawn(me.store_whole(nodeid, sha, e.size));
                }
                Ok(cached(nodeid | FH_CACHED))
            }
        }
    }

    /// Counts a release against the mode its open used; the last
    /// passthrough release lets go of the backing file.
    pub(super) fn release_file(&self, fh: u64, unique: u64) {
        let Some(p) = self.passthrough.get() else { return };
        let nodeid = fh & !(FH_CACHED | FH_PASSTHROUGH);
        if fh & (FH_CACHED | FH_PASSTHROUGH) == 0 {
            return;
        }
        let result = p.table.update(nodeid, |io| {
            if io.last_release == unique {
                // Resent after a takeover: already counted.
                return 0;
            }
            io.last_release = unique;
            if fh & FH_PASSTHROUGH != 0 {
                io.passthrough = io.passthrough.saturating_sub(1);
                if io.passthrough == 0 {
                    return std::mem::take(&mut io.backing);
                }
            } else if fh & FH_CACHED != 0 {
                io.cached = io.cached.saturating_sub(1);
            }
            0
        });
        match result {
            Ok((_, backing)) if backing != 0 => {
                if let Some((dev, _)) = p.dev.get()
                    && let Err(e) = passthrough::close_backing(dev.as_fd(), backing)
                {
                    warn!(volume = %self.volume, backing, error = %e, "cannot close a backing file");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(volume = %self.volume, nodeid, error = %e, "cannot record a release"),
        }
    }

    /// Writes a file whole into the file store from its verified blocks and
    /// checks it against the manifest's digest; later opens pass through.
    pub(super) async fn store_whole(self: Arc<Self>, nodeid: u64, sha: String, size: u64) {
        let Some(store) = self.passthrough.get().and_then(|p| p.store.clone()) else { return };
        let Some(pending) = store.begin(&sha, size) else { return };
        let Ok(file) = pending.file.try_clone() else { return };
        let file = Arc::new(file);
        let mut hasher = Sha256::new();
        let mut off = 0u64;
        while off < size {
            let len = (size - off).min(1 << 20) as u32;
            let parts = match self.read_parts(nodeid, off, len, false).await {
                Ok(parts) => parts,
                Err(e) => {
                    warn!(volume = %self.volume, sha, error = %e, "cannot read a file to store it whole");
                    return;
                }
            };
            parts.iter().for_each(|b| hasher.update(b));
            let (f, at) = (file.clone(), off);
            let written = tokio::task::spawn_blocking(move || {
                let mut pos = at;
                for b in &parts {
                    f.write_all_at(b, pos)?;
                    pos += b.len() as u64;
                }
                std::io::Result::Ok(pos - at)
            })
            .await
            .expect("file write");
            match written {
                Ok(n) if n > 0 => off += n,
                Ok(_) => return,
                Err(e) => {
                    warn!(volume = %self.volume, sha, error = %e, "cannot write into the file store");
                    return;
                }
            }
        }
        if hex::encode(hasher.finalize()) != sha {
            warn!(volume = %self.volume, sha, "a file read back with another digest; not stored");
            return;
        }
        match tokio::task::spawn_blocking(move || store.commit(pending, size)).await.expect("commit") {
            Ok(()) => info!(volume = %self.volume, nodeid, size, "file stored whole; new opens pass through"),
            Err(e) => warn!(volume = %self.volume, sha, error = %e, "cannot store a file whole"),
        }
    }
}
