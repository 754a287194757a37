//! Reads: from the node cache, from peers' caches, or fetched from the
//! chunkservers unit by unit, with prefetch of the next unit.

use std::ops::Range;

use bytes::Bytes;
use futures::FutureExt;
use rustix::io::Errno;
use tracing::{Instrument, debug, warn};

use crate::cache::{UNIT, UnitKey};
use crate::fuse::session::Result;
use crate::metrics::{SourceLabels, VolumeLabels};

use super::RootFs;

impl RootFs {
    /// `len` bytes of a file from `offset`, as slices of cached blocks.
    pub(crate) async fn read(&self, nodeid: u64, offset: u64, len: u32) -> Result<Vec<Bytes>> {
        self.read_parts(nodeid, offset, len, true).await
    }

    /// As [`RootFs::read`]; `count` says whether the bytes are a reader's
    /// (metered) or the plugin's own.
    pub(super) async fn read_parts(&self, nodeid: u64, offset: u64, len: u32, count: bool) -> Result<Vec<Bytes>> {
        let e = self.entry(nodeid)?;
        let Some(extent) = e.extent() else { return Err(Errno::ISDIR) };
        let start = extent.start + offset.min(e.size);
        let end = (start + len as u64).min(extent.end);
        let mut parts = Vec::new();
        let mut last = None;
        for (item, r) in self.version.layout.items_of(start..end) {
            for unit in r.start / UNIT..r.end.div_ceil(UNIT) {
                let base = unit * UNIT;
                let want = r.start.max(base) - base..r.end.min(base + UNIT) - base;
                parts.push(self.unit_range(item, unit, want).await?);
                last = Some((item, unit));
            }
        }
        if let Some((item, unit)) = last {
            self.prefetch(item, unit);
        }
        if count {
            self.count_read(parts.iter().map(|p| p.len() as u64).sum());
        }
        Ok(parts)
    }

    pub(super) fn key(&self, item: u64, unit: u64) -> UnitKey {
        UnitKey { item: self.version.items()[item as usize].item, unit }
    }

    /// `range` of one unit of an item: read from the cache, or the whole
    /// unit fetched once however many reads want it at once.
    pub(super) async fn unit_range(&self, item: u64, unit: u64, range: Range<u64>) -> Result<Bytes> {
        let key = self.key(item, unit);
        if let Some(data) = self.cache.get_range(&key, range.clone()) {
            self.metrics.bytes_served.get_or_create(&SourceLabels { source: "cache" }).inc_by(data.len() as u64);
            return Ok(data);
        }
        let data = self.unit(item, key).await?;
        let end = (range.end as usize).min(data.len());
        Ok(data.slice((range.start as usize).min(end)..end))
    }

    /// Sequential readers get the next units fetched ahead of them.
    pub(super) fn prefetch(&self, item: u64, unit: u64) {
        const AHEAD: u64 = 4;
        let items = self.version.items();
        let mut next = (item, unit);
        for _ in 0..AHEAD {
            let (i, b) = next;
            let len = items.get(i as usize).map_or(0, |l| l.item_len);
            next = if (b + 1) * UNIT < len { (i, b + 1) } else { (i + 1, 0) };
            if next.0 as usize >= items.len() {
                return;
            }
            let key = self.key(next.0, next.1);
            if self.cache.contains(&key) || self.inflight.lock().unwrap().contains_key(&key) {
                continue;
            }
            let f = self.fetch(next.0, key.clone()).boxed().shared();
            self.inflight.lock().unwrap().insert(key.clone(), f.clone());
            let inflight = self.inflight.clone();
            tokio::spawn(async move {
                let _ = f.await;
                inflight.lock().unwrap().remove(&key);
            });
        }
    }

    /// A whole unit, fetched once however many readers want it.
    pub(super) async fn unit(&self, index: u64, key: UnitKey) -> Result<Bytes> {
        let fetch = {
            let mut inflight = self.inflight.lock().unwrap();
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let f = self.fetch(index, key.clone()).boxed().shared();
                    inflight.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let result = fetch.await;
        self.inflight.lock().unwrap().remove(&key);
        result
    }

    pub(super) fn fetch(
        &self,
        index: u64,
        key: UnitKey,
    ) -> impl Future<Output = std::result::Result<Bytes, Errno>> + Send + 'static {
        let loc = self.version.items().get(index as usize).cloned();
        let (reports, reporting) = (self.version.corrupt_reports(), self.reporting.clone());
        let (client, cache, metrics) = (self.client.clone(), self.cache.clone(), self.metrics.clone());
        let (mode, volume, peers, hedge) = (self.read_mode(), self.volume.clone(), self.peers.clone(), self.hedge());
        let span = tracing::debug_span!(
            "fetch_unit",
            fileset = %self.fileset(),
            version = self.version_id(),
            item = %key.item,
            unit = key.unit
        );
        async move {
            let loc = loc.ok_or(Errno::IO)?;
            let range: Range<u64> = key.unit * UNIT..((key.unit + 1) * UNIT).min(loc.item_len);
            let want = range.end - range.start;
            let chunkservers = async {
                let (data, report) = client.read_with(&loc, range, mode, &hedge).await.map_err(|e| {
                    warn!(item = %key.item, unit = key.unit, error = %e, "reading a root unit failed");
                    Errno::IO
                })?;
                metrics.hedges.get_or_create(&VolumeLabels { volume }).inc_by(report.hedges as u64);
                // Blocks that arrived damaged (the read was served from
                // other stripes): the master has their server verify them.
                // Off the read's path: a slow master must not slow a pod.
                if !report.corrupt_in_transit.is_empty() {
                    match reporting.try_acquire_owned() {
                        Ok(permit) => {
                            tokio::spawn(async move {
                                reports.send(&report).await;
                                drop(permit);
                            });
                        }
                        Err(_) => debug!(item = %key.item, "a damaged-block report left out: enough are in flight"),
                    }
                }
                Ok::<_, Errno>(match data.parts() {
                    [one] => one.clone(),
                    parts => Bytes::from(parts.concat()),
                })
            };
            // Peers first, hedged: they get a head start, then the
            // chunkservers race them, so a slow or hung peer costs at most
            // the head start.
            let (bytes, source) = match peers {
                None => (chunkservers.await?, "chunkservers"),
                Some(peers) => {
                    let ask = peers.get(&key, want);
                    tokio::pin!(ask);
                    match tokio::time::timeout(peers.head_start(), &mut ask).await {
                        Ok(Some(b)) => (b, "peers"),
                        Ok(None) => (chunkservers.await?, "chunkservers"),
                        Err(_) => {
                            tokio::pin!(chunkservers);
                            // Whichever has the unit first; a failure of one
                            // waits for the other.
                            let (mut peers_done, mut failed) = (false, None);
                            loop {
                                tokio::select! {
                                    r = &mut ask, if !peers_done => match r {
                                        Some(b) => break (b, "peers"),
                                        None if failed.is_some() => return Err(failed.expect("checked")),
                                        None => peers_done = true,
                                    },
                                    r = &mut chunkservers, if failed.is_none() => match r {
                                        Ok(b) => break (b, "chunkservers"),
                                        Err(e) if peers_done => return Err(e),
                                        Err(e) => failed = Some(e),
                                    },
                                }
                            }
                        }
                    }
                }
            };
            metrics.bytes_served.get_or_create(&SourceLabels { source }).inc_by(bytes.len() as u64);
            let (cache, b, k) = (cache, bytes.clone(), key.clone());
            let _ = tokio::task::spawn_blocking(move || cache.put(&k, &b)).await;
            Ok(bytes)
        }
        .instrument(span)
    }

    /// A read answered from the node cache alone, or `None` if any unit
    /// must be fetched.
    pub(super) fn read_cached(&self, nodeid: u64, offset: u64, len: u32) -> Option<Result<Vec<Bytes>>> {
        tracing::trace!(nodeid, offset, len, "read request");
        let e = match self.entry(nodeid) {
            Ok(e) => e,
            Err(err) => return Some(Err(err)),
        };
        let Some(extent) = e.extent() else { return Some(Err(Errno::ISDIR)) };
        let start = extent.start + offset.min(e.size);
        let end = (start + len as u64).min(extent.end);
        let mut wanted = Vec::new();
        for (item, r) in self.version.layout.items_of(start..end) {
            for unit in r.start / UNIT..r.end.div_ceil(UNIT) {
                let base = unit * UNIT;
                let key = self.key(item, unit);
                if !self.cache.contains(&key) {
                    return None;
                }
                wanted.push((item, key, r.start.max(base) - base..r.end.min(base + UNIT) - base));
            }
        }
        let mut parts = Vec::with_capacity(wanted.len());
        for (_, key, range) in &wanted {
            parts.push(self.cache.get_range(key, range.clone())?);
        }
        if let Some((item, key, _)) = wanted.last() {
            self.prefetch(*item, key.unit);
        }
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.metrics.bytes_served.get_or_create(&SourceLabels { source: "cache" }).inc_by(n);
        self.count_read(n);
        Some(Ok(parts))
    }
}
