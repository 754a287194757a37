//! Versions: write sessions, placement of new items, publishing, reading,
//! deleting and pinning.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use tessera_core::ids::{ItemId, ServerId, StripeId};
use tessera_core::layout::Layout;
use tessera_core::placement::{self, Candidate};
use tessera_core::retention::{self, Retained};
use tracing::{info, warn};

use super::{
    Deletion, ItemInfo, Loss, Master, Session, add_location, find_version, forget_version, now_unix, reachable_address,
};
use crate::MasterError;
use crate::records::{ItemRecord, VersionRecord};
use crate::store::Write;

/// Where a new item's stripes go, or where a published item's stripes are:
/// a server address per stripe index (none where there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemPlacement {
    pub item: ItemId,
    pub addresses: Vec<Option<String>>,
}

/// An item a writer stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenItem {
    pub id: ItemId,
    pub len: u64,
    /// Stripe indices the writer could not store (a degraded write).
    pub missing_stripes: Vec<u16>,
}

/// The manifest of a version being published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRef {
    pub items: Vec<WrittenItem>,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// A writer's request to publish what its session stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub session: String,
    pub items: Vec<WrittenItem>,
    pub manifest: ManifestRef,
    pub files: u64,
    pub bytes: u64,
}

/// A version with what a reader needs: its layout and where its stripes are.
#[derive(Debug, Clone)]
pub struct VersionView {
    pub version: VersionRecord,
    pub layout: Layout,
    /// Manifest items first, then data items, as [`VersionRecord::all_items`].
    pub locations: Vec<ItemPlacement>,
}

impl Master {
    /// Starts a write session; returns it with the layout and the stripes
    /// per item that must be durable.
    pub fn begin_version(&self, fileset: &str, now: Instant) -> Result<(String, Layout, usize), MasterError> {
        let mut st = self.state.lock().unwrap();
        let f = st.filesets.get(fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.into()))?;
        let (layout, min, fileset) = (f.layout(), f.min_write_stripes(), f.name.clone());
        let id = format!("{:032x}", rand::random::<u128>());
        st.sessions
            .insert(id.clone(), Session { fileset, expires: now + self.config.session_lease, items: HashMap::new() });
        Ok((id, layout, min))
    }

    /// Chooses servers for `count` new items of a write session. `failed`
    /// names servers (address or id) the writer could not reach.
    pub fn allocate_items(
        &self,
        session: &str,
        count: usize,
        stripe_len: u64,
        failed: &[String],
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<Vec<ItemPlacement>, MasterError> {
        let mut st = self.state.lock().unwrap();
        let policy = self.config.failure;
        // Every writer reports a dead server on every item: one outage is
        // counted once.
        for addr in failed {
            if let Some(s) = st.servers.values_mut().find(|s| &s.address == addr || s.id == addr.as_str())
                && !std::mem::replace(&mut s.outage_counted, true)
            {
                s.failures.record_distinct(now, self.config.heartbeat_timeout, &policy);
            }
        }
        let fileset = {
            let s = st.sessions.get_mut(session).ok_or_else(|| MasterError::SessionNotFound(session.into()))?;
            s.expires = now + self.config.session_lease;
            s.fileset.clone()
        };
        let f = st.filesets.get(&fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.to_string()))?.clone();
        let n = f.k + f.m;
        // Eligible: live, in service, not just reported failing, with room.
        let needed = stripe_len.saturating_add(64 << 10);
        let mut ids = Vec::new();
        let mut candidates = Vec::new();
        let mut too_full = 0;
        for s in st.servers.values_mut() {
            if !s.live
                || s.maintenance
                || s.failures.is_down(now, &policy)
                || failed.iter().any(|a| a == &s.address || s.id == a.as_str())
            {
                continue;
            }
            if s.free_bytes < needed {
                too_full += 1;
                continue;
            }
            ids.push(s.id.clone());
            candidates.push(Candidate { topology: s.topology.clone(), free_bytes: s.free_bytes });
        }
        if candidates.is_empty() && too_full > 0 {
            return Err(MasterError::NoSpace { needed, reason: format!("all {too_full} live chunkservers are full") });
        }
        let mut out = Vec::with_capacity(count);
        let mut placed = Vec::with_capacity(count);
        let min = f.min_write_stripes();
        for _ in 0..count {
            // With fewer than n placeable servers the write goes on with as
            // many as the policy allows (at least the minimum); the stripes
            // without a server are the last parity ones, rebuilt later.
            let chosen = placement::choose_at_least(&candidates, n, min, f.policy(), &HashMap::new(), &[], rng)?;
            let item = ItemId(rng.random());
            let servers: Vec<Option<ServerId>> = (0..n).map(|i| chosen.get(i).map(|&c| ids[c].clone())).collect();
            // Account the space so a burst of allocations spreads out.
            for &i in &chosen {
                candidates[i].free_bytes = candidates[i].free_bytes.saturating_sub(stripe_len);
            }
            let addresses = servers
                .iter()
                .map(|id| id.as_ref().and_then(|id| st.servers.get(id)).map(|s| s.address.clone()))
                .collect();
            out.push(ItemPlacement { item, addresses });
            placed.push((item, servers));
        }
        let s = st.sessions.get_mut(session).expect("checked above");
        s.items.extend(placed);
        Ok(out)
    }

    /// Publishes a version: every item must have been allocated in the
    /// session (whose writer saw every stripe durable). Returns the version
    /// and the stripes of versions retention now collects.
    pub async fn commit_version(self: &Arc<Self>, c: Commit) -> Result<(VersionRecord, Vec<Deletion>), MasterError> {
        self.change(move |m| async move { m.commit_in_turn(c).await }).await
    }

    async fn commit_in_turn(&self, c: Commit) -> Result<(VersionRecord, Vec<Deletion>), MasterError> {
        let (record, placed, missing, degraded, collected) = {
            let mut st = self.state.lock().unwrap();
            // A commit that waited for its turn keeps its session alive.
            let lease = self.config.session_lease;
            let session =
                st.sessions.get_mut(&c.session).ok_or_else(|| MasterError::SessionNotFound(c.session.clone()))?;
            session.expires = Instant::now() + lease;
            let session = st.sessions.get(&c.session).expect("found above");
            let fileset = session.fileset.clone();
            let f = st.filesets.get(&fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.to_string()))?;
            let (n, min) = (f.k + f.m, f.min_write_stripes());
            // Stripes not stored, by item: those the writer reports, and
            // those no server was placed for.
            let mut missing: HashMap<ItemId, BTreeSet<u16>> = HashMap::new();
            let mut degraded = 0u64;
            let mut check = |written: &[WrittenItem]| -> Result<Vec<ItemRecord>, MasterError> {
                written
                    .iter()
                    .map(|w| {
                        // Allocated in this session, for this fileset's code.
                        let Some(servers) = session.items.get(&w.id).filter(|s| s.len() == n) else {
                            return Err(MasterError::ItemNotAllocated {
                                session: c.session.clone(),
                                item: w.id.to_string(),
                            });
                        };
                        // Not stored by the writer: no server was placed, or
                        // the writer reports the stripe failed.
                        let mut unwritten: BTreeSet<u16> =
                            (0..n).filter(|&i| servers[i].is_none()).map(|i| i as u16).collect();
                        for &i in &w.missing_stripes {
                            if i as usize >= n {
                                return Err(MasterError::InvalidSpec {
                                    field: "items.missing_stripes",
                                    reason: format!("item {} has no stripe {i} (n = {n})", w.id),
                                });
                            }
                            unwritten.insert(i);
                        }
                        if !unwritten.is_empty() {
                            degraded += 1;
                        }
                        // And those quarantined by their servers since they were
                        // written (counted as corrupt, not as degraded writes).
                        let mut gone = unwritten;
                        gone.extend(st.gone.get(&w.id).into_iter().flat_map(|lost| lost.keys()));
                        if n - gone.len() < min {
                            return Err(MasterError::TooFewStripes {
                                item: w.id.to_string(),
                                stored: n - gone.len(),
                                n,
                                min,
                            });
                        }
                        if !gone.is_empty() {
                            missing.insert(w.id, gone);
                        }
                        Ok(ItemRecord { id: w.id, len: w.len })
                    })
                    .collect()
            };
            let items = check(&c.items)?;
            let manifest_items = check(&c.manifest.items)?;
            let id = st.versions_of(fileset.as_str()).next_back().map_or(1, |v| v.id + 1);
            let record = VersionRecord {
                fileset: fileset.clone(),
                id,
                created_unix: now_unix(),
                files: c.files,
                bytes: c.bytes,
                items,
                manifest_items,
                manifest_len: c.manifest.len,
                manifest_sha256: hex::encode(c.manifest.sha256),
                pins: vec![],
            };
            let placed: Vec<(ItemId, Vec<Option<ServerId>>)> =
                record.all_items().map(|i| (i.id, session.items.get(&i.id).cloned().expect("checked above"))).collect();
            let mut kept: Vec<Retained> =
                st.versions_of(fileset.as_str()).map(|v| Retained { id: v.id, pinned: !v.pins.is_empty() }).collect();
            kept.push(Retained { id, pinned: false });
            let collected = retention::collectable(&kept, f.keep_versions);
            // Owned from now on, whatever happens to the session while the
            // record is written: orphan collection leaves them alone.
            st.committing.extend(record.all_items().map(|i| (i.id, fileset.clone())));
            (record, placed, missing, degraded, collected)
        };
        // The durable write: after it the version exists, before it not.
        // Retention's deletions follow it (if they are lost to a crash, the
        // next commit collects those versions again).
        let fileset = record.fileset.clone();
        if let Err(e) = self.persist(vec![Write::PutVersion(record.clone())]).await {
            let mut st = self.state.lock().unwrap();
            for i in record.all_items() {
                st.committing.remove(&i.id);
            }
            // Its session may have ended meanwhile: its losses go with it.
            st.prune_gone();
            return Err(e);
        }

        {
            let mut st = self.state.lock().unwrap();
            st.sessions.remove(&c.session);
            for i in record.all_items() {
                st.committing.remove(&i.id);
            }
            for (item, servers) in placed {
                let gone = missing.get(&item);
                // Quarantined while the record was written, too (the
                // heartbeat that said so has removed them already).
                let lost: BTreeSet<u16> = st.gone.get(&item).map(|g| g.keys().copied().collect()).unwrap_or_default();
                for (index, sid) in servers.iter().enumerate() {
                    let Some(sid) = sid else { continue };
                    if gone.is_some_and(|g| g.contains(&(index as u16))) || lost.contains(&(index as u16)) {
                        continue;
                    }
                    let stripe = StripeId::new(item, index as u16);
                    if let Some(s) = st.servers.get_mut(sid)
                        && s.stripes.insert(stripe)
                    {
                        add_location(&mut st.locations, &stripe, sid);
                    }
                }
            }
            if !missing.is_empty() {
                let stripes: usize = missing.values().map(|g| g.len()).sum();
                warn!(fileset = %fileset, items = missing.len(), stripes, "version written degraded; the missing stripes are rebuilt as placement allows");
                st.losses.entry(fileset.clone()).or_default().degraded_writes += degraded;
                for (item, gone) in missing {
                    let entry = st.gone.entry(item).or_default();
                    for i in gone {
                        entry.entry(i).or_insert(Loss::NotWritten);
                    }
                }
            }
            for i in record.all_items() {
                st.items.insert(i.id, ItemInfo { fileset: fileset.clone(), len: i.len });
            }
            st.insert_version(record.clone());
            info!(fileset = %fileset, version = record.id, files = record.files, bytes = record.bytes, "version published");
        }
        // The version exists now. Retention follows, each old version on its
        // own: one whose record cannot be deleted now stays (and is
        // collected by a later commit).
        let mut deletions = Vec::new();
        for id in collected {
            if let Err(e) = self.persist(vec![Write::DeleteVersion { fileset: fileset.clone(), id }]).await {
                warn!(fileset = %fileset, version = id, error = %e, "retention could not delete a version; a later commit will");
                continue;
            }
            let mut st = self.state.lock().unwrap();
            if let Some(v) = st.remove_version(fileset.as_str(), id) {
                info!(fileset = %fileset, version = id, "version collected by retention");
                deletions.extend(forget_version(&mut st, &v));
            }
        }
        Ok((record, deletions))
    }

    pub fn abort_version(&self, session: &str) {
        let mut st = self.state.lock().unwrap();
        st.sessions.remove(session);
        st.prune_gone();
    }

    /// Ends write sessions whose lease ran out; their items become orphans.
    pub fn expire_sessions(&self, now: Instant) -> usize {
        let mut st = self.state.lock().unwrap();
        let before = st.sessions.len();
        st.sessions.retain(|_, s| s.expires > now);
        if st.sessions.len() != before {
            st.prune_gone();
        }
        before - st.sessions.len()
    }

    pub fn list_versions(&self, fileset: &str) -> Result<Vec<VersionRecord>, MasterError> {
        let st = self.state.lock().unwrap();
        if !st.filesets.contains_key(fileset) {
            return Err(MasterError::FilesetNotFound(fileset.into()));
        }
        Ok(st.versions_of(fileset).cloned().collect())
    }

    /// A version (0: the latest) with its layout and the location of every
    /// stripe of its manifest and data items.
    pub fn get_version(&self, fileset: &str, version: u64) -> Result<VersionView, MasterError> {
        let st = self.state.lock().unwrap();
        let f = st.filesets.get(fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.into()))?;
        let v = find_version(&st, fileset, version)?;
        let n = f.k + f.m;
        let locations = v
            .all_items()
            .map(|i| ItemPlacement {
                item: i.id,
                addresses: (0..n).map(|idx| reachable_address(&st, &i.id, idx)).collect(),
            })
            .collect();
        Ok(VersionView { version: v.clone(), layout: f.layout(), locations })
    }

    pub async fn delete_version(self: &Arc<Self>, fileset: &str, version: u64) -> Result<Vec<Deletion>, MasterError> {
        let fileset = fileset.to_string();
        self.change(move |m| async move { m.delete_version_in_turn(&fileset, version).await }).await
    }

    async fn delete_version_in_turn(&self, fileset: &str, version: u64) -> Result<Vec<Deletion>, MasterError> {
        let v = {
            let st = self.state.lock().unwrap();
            let v = find_version(&st, fileset, version)?.clone();
            if !v.pins.is_empty() {
                return Err(MasterError::Pinned { fileset: fileset.into(), version: v.id, holders: v.pins });
            }
            v
        };
        self.persist(vec![Write::DeleteVersion { fileset: v.fileset.clone(), id: v.id }]).await?;
        let mut st = self.state.lock().unwrap();
        st.remove_version(fileset, v.id);
        info!(fileset = %fileset, version = v.id, "version deleted");
        Ok(forget_version(&mut st, &v))
    }

    /// Adds or removes a holder's pin on a version (0: the latest): a pinned
    /// version is never collected or deleted.
    pub async fn pin(
        self: &Arc<Self>,
        fileset: &str,
        version: u64,
        holder: &str,
        pin: bool,
    ) -> Result<(), MasterError> {
        if holder.is_empty() {
            return Err(MasterError::InvalidSpec { field: "holder", reason: "a pin needs a holder".into() });
        }
        let (fileset, holder) = (fileset.to_string(), holder.to_string());
        self.change(move |m| async move { m.pin_in_turn(&fileset, version, &holder, pin).await }).await
    }

    async fn pin_in_turn(&self, fileset: &str, version: u64, holder: &str, pin: bool) -> Result<(), MasterError> {
        let v = {
            let st = self.state.lock().unwrap();
            let mut v = find_version(&st, fileset, version)?.clone();
            let had = v.pins.iter().any(|h| h == holder);
            match (pin, had) {
                (true, false) => v.pins.push(holder.to_string()),
                (false, true) => v.pins.retain(|h| h != holder),
                _ => return Ok(()),
            }
            v
        };
        self.persist(vec![Write::PutVersion(v.clone())]).await?;
        self.state.lock().unwrap().insert_version(v);
        Ok(())
    }
}
