//! The master's model: records loaded from the store, registered chunkservers,
//! the stripe index, write sessions, and the decisions made on them.
//!
//! Everything here speaks domain types ([`crate::wire`] converts to and from
//! gRPC). The state sits behind one `std::Mutex` held only for in-memory
//! work: nothing waits on I/O under it. A change to the durable records is
//! decided under the lock, written by the store outside it (on a blocking
//! thread, one change at a time: [`Master::write_turn`]), and applied to the
//! state once it is durable, so a reader never sees a record the store might
//! not have, and a slow store never stalls Locate, Status or heartbeats.
//! Work the decisions call for (deleting, rebuilding stripes) is handed back
//! to the caller rather than done here.
//!
//! Rooms: [`servers`] (registration, heartbeats, liveness), [`filesets`],
//! [`versions`] (write sessions, publishing, reading, pins), [`upkeep`]
//! (repair and collection) and [`status`].

mod filesets;
mod servers;
mod status;
mod upkeep;
mod versions;

pub use filesets::FilesetView;
pub use servers::{Heartbeat, Registration};
pub use status::{DomainCount, FilesetHealth, ServerHealth, Status};
pub use versions::{Commit, ItemPlacement, ManifestRef, VersionView, WrittenItem};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tessera_core::health::FailureCounter;
use tessera_core::ids::{FilesetName, ItemId, ServerId, StripeId};
use tessera_core::layout::Layout;
use tessera_core::placement::Topology;
use tracing::info;

use crate::records::{FilesetRecord, VersionRecord, now_unix};
use crate::store::{MetaStore, Write};
use crate::{MasterConfig, MasterError};

/// A registered chunkserver.
#[derive(Debug, Clone)]
pub struct Server {
    pub id: ServerId,
    pub address: String,
    pub topology: Topology,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub read_bytes_per_sec: f64,
    /// Its devices' bandwidth while reading, and when it was measured.
    pub device_bytes_per_sec: Option<(f64, Instant)>,
    pub last_seen: Instant,
    pub live: bool,
    pub failures: FailureCounter,
    pub stripes: HashSet<StripeId>,
    /// Its node is cordoned or not ready (Kubernetes): no new stripes, and
    /// its stripes count as unavailable for repair.
    pub maintenance: bool,
    /// The current outage was counted against it already (by a writer's
    /// report, the heartbeat timeout or a re-registration); cleared by the
    /// next heartbeat. One outage is one failure.
    pub outage_counted: bool,
}

/// What the cluster says about a node, overriding what its server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub topology: Topology,
    pub maintenance: bool,
}

/// An item a published version owns.
#[derive(Debug, Clone)]
pub struct ItemInfo {
    pub fileset: FilesetName,
    pub len: u64,
}

#[derive(Debug)]
struct Session {
    fileset: FilesetName,
    expires: Instant,
    /// Allocated items and the server id of each stripe (none where no
    /// server could be placed: a degraded write).
    items: HashMap<ItemId, Vec<Option<ServerId>>>,
}

/// Why a stripe is gone for good: no server will report it again, so its
/// item is rebuilt without waiting for the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Quarantined by its chunkserver: a block failed its checksum.
    Corrupt,
    /// Never written: the version was written degraded.
    NotWritten,
}

/// What happened to a fileset's stripes since the master started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCounts {
    pub corrupt_found: u64,
    pub corrupt_rebuilt: u64,
    pub degraded_writes: u64,
}

/// A stripe to delete from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub address: String,
    pub stripe: StripeId,
}

/// A reachable copy of a stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub server: ServerId,
    pub address: String,
}

/// Where a rebuilt stripe goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub index: u16,
    pub server: ServerId,
    pub address: String,
}

/// An item to rebuild: which stripes, from where, to where.
#[derive(Debug, Clone)]
pub struct RepairJob {
    pub item: ItemId,
    pub layout: Layout,
    pub len: u64,
    /// A reachable copy of each stripe, by index (none for lost ones).
    pub sources: Vec<Option<Source>>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Default)]
struct State {
    epoch: String,
    filesets: BTreeMap<FilesetName, FilesetRecord>,
    /// Each fileset's published versions, by id.
    versions: BTreeMap<FilesetName, BTreeMap<u64, VersionRecord>>,
    items: HashMap<ItemId, ItemInfo>,
    servers: BTreeMap<ServerId, Server>,
    /// Stripe index -> ids of servers holding a copy.
    locations: HashMap<ItemId, Vec<(u16, ServerId)>>,
    sessions: HashMap<String, Session>,
    /// Items of versions whose record is being written: owned already.
    committing: HashMap<ItemId, FilesetName>,
    missing_since: HashMap<ItemId, Instant>,
    /// Node facts from Kubernetes, by node name.
    nodes: HashMap<String, NodeInfo>,
    /// Items whose lost stripes cannot be placed now; logged once, not every pass.
    unplaceable: HashSet<ItemId>,
    repairing: HashSet<ItemId>,
    /// Stripes known gone for good, by item and index.
    gone: HashMap<ItemId, BTreeMap<u16, Loss>>,
    losses: HashMap<FilesetName, LossCounts>,
    orphan_since: HashMap<ItemId, Instant>,
    corrupt_reports: u64,
    repaired_stripes: u64,
    repaired_bytes: u64,
    collected_stripes: u64,
}

/// The master.
#[derive(Debug)]
pub struct Master {
    pub config: MasterConfig,
    store: Arc<dyn MetaStore>,
    state: Mutex<State>,
    /// Changes to the durable records take turns: each is decided, made
    /// durable and applied before the next is decided, so a decision never
    /// rests on a record another change is rewriting. Only writers of
    /// records wait here; the state's lock is never held across a write.
    write_turn: tokio::sync::Mutex<()>,
    started: Instant,
    /// It started with published items whose stripes it must relearn (a
    /// master started on an empty store has nothing to relearn).
    relearns: bool,
}

impl Master {
    /// Loads the records and starts with no chunkservers known: they
    /// register. Reads the store on the calling thread (once, at start).
    pub fn new(store: Arc<dyn MetaStore>, config: MasterConfig) -> Result<Arc<Self>, MasterError> {
        let mut st = State { epoch: format!("{:016x}", rand::random::<u64>()), ..Default::default() };
        for f in store.list_filesets()? {
            st.filesets.insert(f.name.clone(), f);
        }
        for v in store.list_versions()? {
            for i in v.all_items() {
                st.items.insert(i.id, ItemInfo { fileset: v.fileset.clone(), len: i.len });
            }
            st.insert_version(v);
        }
        info!(
            filesets = st.filesets.len(),
            versions = st.versions.values().map(BTreeMap::len).sum::<usize>(),
            items = st.items.len(),
            "master loaded its records"
        );
        let relearns = !st.items.is_empty();
        Ok(Arc::new(Self {
            config,
            store,
            state: Mutex::new(st),
            write_turn: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            relearns,
        }))
    }

    pub fn epoch(&self) -> String {
        self.state.lock().unwrap().epoch.clone()
    }

    /// Whether the master may still be waiting for chunkservers to report
    /// after it started (they heartbeat every second and register again at
    /// once when their master changed).
    pub fn warming_up(&self, now: Instant) -> bool {
        self.relearns && now.saturating_duration_since(self.started) < self.config.relearn_window
    }

    /// Whether every item of a version has at least k stripes located.
    pub fn readable(&self, fileset: &str, version: u64) -> bool {
        let st = self.state.lock().unwrap();
        let (Some(f), Ok(v)) = (st.filesets.get(fileset), find_version(&st, fileset, version)) else { return true };
        let none = HashSet::new();
        v.all_items().all(|i| reachable_indices(&st, &i.id, &none, f.k + f.m).iter().flatten().count() >= f.k)
    }

    /// Runs a change of the records in its write turn, as a task of its own:
    /// a caller that stops waiting (a cancelled RPC) does not stop it half
    /// way, so a write made durable is always applied, and the next change
    /// is decided only after it.
    async fn change<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, MasterError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, MasterError>> + Send,
    {
        let m = self.clone();
        tokio::spawn(async move {
            let _turn = m.write_turn.lock().await;
            f(m.clone()).await
        })
        .await
        .map_err(|e| MasterError::Store(crate::store::StoreError::Stopped(format!("a change of the records: {e}"))))?
    }

    /// Makes `writes` durable, in order, on a blocking thread: the store may
    /// fsync (redb) or call the apiserver (Kubernetes). Called without the
    /// state's lock, within a write turn.
    async fn persist(&self, writes: Vec<Write>) -> Result<(), MasterError> {
        if writes.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || writes.iter().try_for_each(|w| store.write(w)))
            .await
            .map_err(|e| MasterError::Store(crate::store::StoreError::Stopped(e.to_string())))?
            .map_err(MasterError::Store)
    }
}

impl State {
    /// A fileset's versions, oldest first.
    fn versions_of(&self, fileset: &str) -> impl DoubleEndedIterator<Item = &VersionRecord> {
        self.versions.get(fileset).into_iter().flat_map(BTreeMap::values)
    }

    fn insert_version(&mut self, v: VersionRecord) {
        self.versions.entry(v.fileset.clone()).or_default().insert(v.id, v);
    }

    /// Forgets losses of items no version, commit or write session owns
    /// (a write that ended without a commit).
    fn prune_gone(&mut self) {
        let State { gone, items, sessions, committing, .. } = self;
        gone.retain(|item, _| {
            items.contains_key(item)
                || committing.contains_key(item)
                || sessions.values().any(|s| s.items.contains_key(item))
        });
    }

    fn remove_version(&mut self, fileset: &str, id: u64) -> Option<VersionRecord> {
        let of = self.versions.get_mut(fileset)?;
        let v = of.remove(&id);
        if of.is_empty() {
            self.versions.remove(fileset);
        }
        v
    }
}

fn find_version<'a>(st: &'a State, fileset: &str, version: u64) -> Result<&'a VersionRecord, MasterError> {
    if !st.filesets.contains_key(fileset) {
        return Err(MasterError::FilesetNotFound(fileset.into()));
    }
    if version == 0 {
        st.versions_of(fileset).next_back().ok_or_else(|| MasterError::NoVersions(fileset.into()))
    } else {
        st.versions
            .get(fileset)
            .and_then(|of| of.get(&version))
            .ok_or_else(|| MasterError::VersionNotFound { fileset: fileset.into(), version })
    }
}

/// Forgets a version's items; returns their stripes to delete.
fn forget_version(st: &mut State, v: &VersionRecord) -> Vec<Deletion> {
    let mut out = Vec::new();
    for i in v.all_items() {
        st.items.remove(&i.id);
        st.missing_since.remove(&i.id);
        st.gone.remove(&i.id);
        st.unplaceable.remove(&i.id);
        for (idx, sid) in st.locations.get(&i.id).cloned().unwrap_or_default() {
            if let Some(s) = st.servers.get(&sid) {
                out.push(Deletion { address: s.address.clone(), stripe: StripeId::new(i.id, idx) });
            }
        }
    }
    out
}

fn add_location(locations: &mut HashMap<ItemId, Vec<(u16, ServerId)>>, stripe: &StripeId, server: &ServerId) {
    let v = locations.entry(stripe.item).or_default();
    if !v.iter().any(|(i, s)| *i == stripe.index && s == server) {
        v.push((stripe.index, server.clone()));
    }
}

fn forget_location(locations: &mut HashMap<ItemId, Vec<(u16, ServerId)>>, stripe: &StripeId, server: &ServerId) {
    if let Some(v) = locations.get_mut(&stripe.item) {
        v.retain(|(i, s)| !(*i == stripe.index && s == server));
        if v.is_empty() {
            locations.remove(&stripe.item);
        }
    }
}

/// For each stripe index, a server holding it that is not in `unavailable`.
fn reachable_indices(st: &State, item: &ItemId, unavailable: &HashSet<ServerId>, n: usize) -> Vec<Option<ServerId>> {
    let mut out = vec![None; n];
    for (idx, sid) in st.locations.get(item).into_iter().flatten() {
        let idx = *idx as usize;
        if idx < n && out[idx].is_none() && !unavailable.contains(sid) {
            out[idx] = Some(sid.clone());
        }
    }
    out
}

/// The address of a live copy of stripe `idx`, if any.
fn reachable_address(st: &State, item: &ItemId, idx: usize) -> Option<String> {
    st.locations
        .get(item)?
        .iter()
        .filter(|(i, _)| *i as usize == idx)
        .filter_map(|(_, sid)| st.servers.get(sid))
        .find(|s| s.live)
        .map(|s| s.address.clone())
}

#[cfg(test)]
mod tests;
