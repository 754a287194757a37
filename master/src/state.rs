//! The master's model: records loaded from the store, registered chunkservers,
//! the stripe index, write sessions, and the decisions made on them. Every
//! method here runs under one lock and returns quickly; the only I/O is the
//! metadata store, and the work decisions call for (deleting, rebuilding
//! stripes) is handed back to the caller rather than done here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tessera_core::health::{FailureCounter, is_live};
use tessera_core::ids::{ItemId, StripeId};
use tessera_core::layout::Layout;
use tessera_core::placement::{self, Candidate, Level, Topology};
use tessera_core::read_plan::ReadMode;
use tessera_core::repair::{self, Availability, RepairDecision, RepairPolicy};
use tessera_core::retention::{self, Retained};
use tessera_proto::ms;
use tracing::{info, warn};

use crate::records::{FilesetRecord, ItemRecord, VersionRecord};
use crate::store::MetaStore;
use crate::{MasterConfig, MasterError};

/// A registered chunkserver.
#[derive(Debug, Clone)]
pub struct Server {
    pub id: String,
    pub address: String,
    pub topology: Topology,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub read_bytes_per_sec: f64,
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
    pub fileset: String,
    pub len: u64,
}

#[derive(Debug)]
struct Session {
    fileset: String,
    expires: Instant,
    /// Allocated items and the server id of each stripe ("" where none
    /// could be placed: a degraded write).
    items: HashMap<ItemId, Vec<String>>,
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

/// An item to rebuild: which stripes, from where, to where.
#[derive(Debug, Clone)]
pub struct RepairJob {
    pub item: ItemId,
    pub layout: Layout,
    pub len: u64,
    /// Address of a reachable copy of each stripe ("" for lost ones).
    pub sources: Vec<String>,
    /// Lost stripe index and the server id chosen to hold it.
    pub targets: Vec<(usize, String, String)>,
}

#[derive(Debug, Default)]
struct State {
    epoch: String,
    filesets: BTreeMap<String, FilesetRecord>,
    versions: BTreeMap<(String, u64), VersionRecord>,
    items: HashMap<ItemId, ItemInfo>,
    servers: BTreeMap<String, Server>,
    /// Stripe index -> ids of servers holding a copy.
    locations: HashMap<ItemId, Vec<(u16, String)>>,
    sessions: HashMap<String, Session>,
    missing_since: HashMap<ItemId, Instant>,
    /// Node facts from Kubernetes, by node name.
    nodes: HashMap<String, NodeInfo>,
    /// Items whose lost stripes cannot be placed now; logged once, not every pass.
    unplaceable: HashSet<ItemId>,
    repairing: HashSet<ItemId>,
    /// Stripes known gone for good, by item and index.
    gone: HashMap<ItemId, BTreeMap<u16, Loss>>,
    /// By fileset name.
    losses: HashMap<String, LossCounts>,
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
    started: Instant,
    /// It started with published items whose stripes it must relearn (a
    /// master started on an empty store has nothing to relearn).
    relearns: bool,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn item_id(bytes: &[u8], field: &'static str) -> Result<ItemId, MasterError> {
    ItemId::from_bytes(bytes).map_err(|e| MasterError::InvalidSpec { field, reason: e.to_string() })
}

pub(crate) fn stripe_from_wire(r: &tessera_proto::cs::StripeRef) -> Option<StripeId> {
    Some(StripeId::new(ItemId::from_bytes(&r.item).ok()?, u16::try_from(r.index).ok()?))
}

impl Master {
    /// Loads the records and starts with no chunkservers known: they register.
    pub fn new(store: Arc<dyn MetaStore>, config: MasterConfig) -> Result<Arc<Self>, MasterError> {
        let mut st = State { epoch: format!("{:016x}", rand::random::<u64>()), ..Default::default() };
        for f in store.list_filesets()? {
            st.filesets.insert(f.name.clone(), f);
        }
        for v in store.list_versions()? {
            for i in v.all_items() {
                st.items.insert(i.id, ItemInfo { fileset: v.fileset.clone(), len: i.len });
            }
            st.versions.insert((v.fileset.clone(), v.id), v);
        }
        info!(
            filesets = st.filesets.len(),
            versions = st.versions.len(),
            items = st.items.len(),
            "master loaded its records"
        );
        let relearns = !st.items.is_empty();
        Ok(Arc::new(Self { config, store, state: Mutex::new(st), started: Instant::now(), relearns }))
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

    // ---- Chunkservers ----

    pub fn register(&self, req: &ms::RegisterRequest, now: Instant) -> String {
        let mut st = self.state.lock().unwrap();
        let t = req.topology.clone().unwrap_or_default();
        let topology = Topology { region: t.region, zone: t.zone, rack: t.rack, node: t.node };
        let node = if topology.node.is_empty() { req.server_id.clone() } else { topology.node.clone() };
        let policy = self.config.failure;
        let epoch = st.epoch.clone();
        let State { servers, locations, .. } = &mut *st;
        match servers.get_mut(&req.server_id) {
            Some(s) => {
                // A restart is one failure: counted here if the server came
                // back before it was missed, or already when it was given
                // up on. One restart never takes it out of placement; a
                // server that keeps dropping out stops receiving stripes.
                if !s.outage_counted {
                    s.failures.record_distinct(now, self.config.heartbeat_timeout, &policy);
                    s.outage_counted = true;
                }
                for stripe in s.stripes.drain() {
                    forget_location(locations, &stripe, &req.server_id);
                }
                s.address = req.address.clone();
                s.topology = topology.clone();
                s.free_bytes = req.free_bytes;
                s.total_bytes = req.total_bytes;
                s.last_seen = now;
                s.live = true;
            }
            None => {
                servers.insert(
                    req.server_id.clone(),
                    Server {
                        id: req.server_id.clone(),
                        address: req.address.clone(),
                        topology,
                        free_bytes: req.free_bytes,
                        total_bytes: req.total_bytes,
                        read_bytes_per_sec: 0.0,
                        last_seen: now,
                        live: true,
                        failures: FailureCounter::default(),
                        stripes: HashSet::new(),
                        maintenance: false,
                        outage_counted: false,
                    },
                );
            }
        }
        if let Some(info) = st.nodes.get(&node).cloned()
            && let Some(s) = st.servers.get_mut(&req.server_id)
        {
            s.topology = info.topology;
            s.maintenance = info.maintenance;
        }
        info!(server = %req.server_id, address = %req.address, "chunkserver registered");
        epoch
    }

    /// Records what Kubernetes says of a node: its failure domains (from its
    /// labels) and whether it is in maintenance (cordoned or not ready). The
    /// server on that node takes them over what it reported itself.
    pub fn set_node(&self, node: &str, info: NodeInfo) {
        let mut st = self.state.lock().unwrap();
        for s in st.servers.values_mut() {
            if s.topology.node == node || s.id == node {
                if s.maintenance != info.maintenance {
                    info!(server = %s.id, node, maintenance = info.maintenance, "node maintenance changed");
                }
                s.topology = info.topology.clone();
                s.maintenance = info.maintenance;
            }
        }
        st.nodes.insert(node.to_string(), info);
    }

    /// Adds reported stripes to the index. `false` if the server must
    /// register again first.
    pub fn report_inventory(&self, server_id: &str, epoch: &str, stripes: &[StripeId], now: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.epoch != epoch {
            return false;
        }
        let State { servers, locations, .. } = &mut *st;
        let Some(s) = servers.get_mut(server_id) else { return false };
        s.last_seen = now;
        for stripe in stripes {
            if s.stripes.insert(*stripe) {
                add_location(locations, stripe, server_id);
            }
        }
        true
    }

    /// A heartbeat; `false` asks the server to register again.
    pub fn heartbeat(&self, req: &ms::HeartbeatRequest, now: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.epoch != req.master_epoch {
            return false;
        }
        let State { servers, locations, .. } = &mut *st;
        let Some(s) = servers.get_mut(&req.server_id) else { return false };
        // Back after being given up on (frozen, or cut off): the outage was
        // counted when it was noticed, and it is over.
        s.live = true;
        s.outage_counted = false;
        s.last_seen = now;
        s.free_bytes = req.free_bytes;
        s.total_bytes = req.total_bytes;
        s.read_bytes_per_sec = req.read_bytes_per_sec;
        for stripe in req.added.iter().filter_map(stripe_from_wire) {
            if s.stripes.insert(stripe) {
                add_location(locations, &stripe, &req.server_id);
            }
        }
        for stripe in req.removed.iter().filter_map(stripe_from_wire) {
            if s.stripes.remove(&stripe) {
                forget_location(locations, &stripe, &req.server_id);
            }
        }
        for stripe in req.quarantined.iter().filter_map(stripe_from_wire) {
            st.stripe_lost(stripe, Loss::Corrupt, &req.server_id);
        }
        true
    }

    /// A reader received a block of `stripe` from the server at `address`
    /// that failed its checksum. Returns the address to ask for a verify if
    /// that server is known to hold the stripe (the check that decides: a
    /// block damaged in transit leaves the stripe in service).
    pub fn corrupt_reported(&self, stripe: StripeId, address: &str) -> Option<String> {
        let mut st = self.state.lock().unwrap();
        st.corrupt_reports += 1;
        let s = st.servers.values().find(|s| s.address == address)?;
        warn!(%stripe, server = %s.id, "a reader received a block failing its checksum; asking the server to verify");
        s.stripes.contains(&stripe).then(|| s.address.clone())
    }

    /// Marks servers not heard from in time as not live; returns their ids.
    pub fn expire_servers(&self, now: Instant) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        let policy = self.config.failure;
        let mut gone = Vec::new();
        for s in st.servers.values_mut() {
            if s.live && !is_live(s.last_seen, now, self.config.heartbeat_timeout) {
                s.live = false;
                if !std::mem::replace(&mut s.outage_counted, true) {
                    s.failures.record_distinct(now, self.config.heartbeat_timeout, &policy);
                }
                warn!(server = %s.id, "chunkserver stopped reporting");
                gone.push(s.id.clone());
            }
        }
        gone
    }

    // ---- Filesets ----

    pub fn create_fileset(&self, spec: &ms::FilesetSpec, if_absent: bool) -> Result<ms::Fileset, MasterError> {
        let record = FilesetRecord::from_spec(spec, now_unix())?;
        let mut st = self.state.lock().unwrap();
        if let Some(existing) = st.filesets.get(&record.name) {
            if if_absent && existing.same_as(&record) {
                return Ok(fileset_to_wire(&st, existing));
            }
            return Err(MasterError::FilesetExists(record.name));
        }
        self.store.put_fileset(&record)?;
        info!(fileset = %record.name, k = record.k, m = record.m, "fileset created");
        st.filesets.insert(record.name.clone(), record.clone());
        Ok(fileset_to_wire(&st, &record))
    }

    /// Changes how urgently a fileset's lost stripes are rebuilt (its
    /// Priority's repair class changed). The only mutable part of a fileset.
    pub fn set_availability(&self, name: &str, availability: Availability) -> Result<(), MasterError> {
        let mut st = self.state.lock().unwrap();
        let f = st.filesets.get_mut(name).ok_or_else(|| MasterError::FilesetNotFound(name.into()))?;
        if f.availability() == availability {
            return Ok(());
        }
        let mut record = f.clone();
        record.availability = availability.as_str().to_string();
        self.store.put_fileset(&record)?;
        info!(fileset = %name, availability = availability.as_str(), "fileset availability changed");
        *f = record;
        Ok(())
    }

    /// Changes how many stripes of an item a write must store while servers
    /// are down (its Priority's write policy changed); 0 is k + 1.
    pub fn set_min_write_stripes(&self, name: &str, stripes: usize) -> Result<(), MasterError> {
        let mut st = self.state.lock().unwrap();
        let f = st.filesets.get_mut(name).ok_or_else(|| MasterError::FilesetNotFound(name.into()))?;
        if f.min_write_stripes == stripes {
            return Ok(());
        }
        let mut record = f.clone();
        record.min_write_stripes = stripes;
        record.validate_min_write_stripes()?;
        self.store.put_fileset(&record)?;
        info!(fileset = %name, min_write_stripes = record.min_write_stripes(), "fileset write minimum changed");
        *f = record;
        Ok(())
    }

    /// Changes how readers fetch a fileset's stripes by default (its
    /// Priority's read policy changed); `None` leaves it to the readers.
    pub fn set_read_mode(&self, name: &str, mode: Option<ReadMode>) -> Result<(), MasterError> {
        let mut st = self.state.lock().unwrap();
        let f = st.filesets.get_mut(name).ok_or_else(|| MasterError::FilesetNotFound(name.into()))?;
        let wanted = mode.map(|m| m.to_string()).unwrap_or_default();
        if f.read_mode == wanted {
            return Ok(());
        }
        let mut record = f.clone();
        record.read_mode = wanted;
        self.store.put_fileset(&record)?;
        info!(fileset = %name, read_mode = %record.read_mode, "fileset read mode changed");
        *f = record;
        Ok(())
    }

    pub fn get_fileset(&self, name: &str) -> Result<ms::Fileset, MasterError> {
        let st = self.state.lock().unwrap();
        let f = st.filesets.get(name).ok_or_else(|| MasterError::FilesetNotFound(name.into()))?;
        Ok(fileset_to_wire(&st, f))
    }

    pub fn list_filesets(&self) -> Vec<ms::Fileset> {
        let st = self.state.lock().unwrap();
        st.filesets.values().map(|f| fileset_to_wire(&st, f)).collect()
    }

    /// Deletes a fileset and its versions; returns the stripes to delete.
    pub fn delete_fileset(&self, name: &str) -> Result<(u32, Vec<Deletion>), MasterError> {
        let mut st = self.state.lock().unwrap();
        if !st.filesets.contains_key(name) {
            return Err(MasterError::FilesetNotFound(name.into()));
        }
        let ids: Vec<u64> =
            st.versions.range((name.to_string(), 0)..=(name.to_string(), u64::MAX)).map(|(k, _)| k.1).collect();
        for id in &ids {
            let v = &st.versions[&(name.to_string(), *id)];
            if !v.pins.is_empty() {
                return Err(MasterError::Pinned { fileset: name.into(), version: *id, holders: v.pins.clone() });
            }
        }
        self.store.delete_fileset(name)?;
        st.filesets.remove(name);
        let mut deletions = Vec::new();
        for id in &ids {
            let v = st.versions.remove(&(name.to_string(), *id)).expect("listed above");
            deletions.extend(forget_version(&mut st, &v));
        }
        info!(fileset = %name, versions = ids.len(), "fileset deleted");
        Ok((ids.len() as u32, deletions))
    }

    // ---- Writing versions ----

    /// Starts a write session; returns it with the layout and the stripes
    /// per item that must be durable.
    pub fn begin_version(&self, fileset: &str, now: Instant) -> Result<(String, Layout, usize), MasterError> {
        let mut st = self.state.lock().unwrap();
        let f = st.filesets.get(fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.into()))?;
        let layout = f.layout();
        let min = f.min_write_stripes();
        let id = format!("{:032x}", rand::random::<u128>());
        st.sessions.insert(
            id.clone(),
            Session { fileset: fileset.into(), expires: now + self.config.session_lease, items: HashMap::new() },
        );
        Ok((id, layout, min))
    }

    /// Chooses servers for `count` new items of a write session.
    pub fn allocate_items(
        &self,
        session: &str,
        count: usize,
        stripe_len: u64,
        failed: &[String],
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<Vec<ms::ItemLocation>, MasterError> {
        let mut st = self.state.lock().unwrap();
        let policy = self.config.failure;
        // Every writer reports a dead server on every item: one outage is
        // counted once.
        for addr in failed {
            if let Some(s) = st.servers.values_mut().find(|s| &s.address == addr || &s.id == addr)
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
        let f = st.filesets.get(&fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.clone()))?.clone();
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
                || failed.iter().any(|a| a == &s.address || a == &s.id)
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
            let servers: Vec<String> =
                (0..n).map(|i| chosen.get(i).map(|&c| ids[c].clone()).unwrap_or_default()).collect();
            // Account the space so a burst of allocations spreads out.
            for &i in &chosen {
                candidates[i].free_bytes = candidates[i].free_bytes.saturating_sub(stripe_len);
            }
            out.push(ms::ItemLocation {
                item: item.as_bytes().to_vec().into(),
                servers: servers
                    .iter()
                    .map(|id| st.servers.get(id).map(|s| s.address.clone()).unwrap_or_default())
                    .collect(),
            });
            placed.push((item, servers));
        }
        let s = st.sessions.get_mut(session).expect("checked above");
        s.items.extend(placed);
        Ok(out)
    }

    /// Publishes a version: every item must have been allocated in the
    /// session (whose writer saw every stripe durable). Returns the version
    /// and the stripes of versions retention now collects.
    pub fn commit_version(
        &self,
        req: &ms::CommitVersionRequest,
        now: Instant,
    ) -> Result<(VersionRecord, Vec<Deletion>), MasterError> {
        let mut st = self.state.lock().unwrap();
        let session = st.sessions.get(&req.session).ok_or_else(|| MasterError::SessionNotFound(req.session.clone()))?;
        let fileset = session.fileset.clone();
        let f = st.filesets.get(&fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.clone()))?;
        let (n, min) = (f.k + f.m, f.min_write_stripes());
        // Stripes not stored, by item: those the writer reports, and those
        // no server was placed for.
        let mut missing: HashMap<ItemId, BTreeSet<u16>> = HashMap::new();
        let mut parse = |refs: &[ms::ItemRef], field| -> Result<Vec<ItemRecord>, MasterError> {
            refs.iter()
                .map(|r| {
                    let id = item_id(&r.item, field)?;
                    let Some(servers) = session.items.get(&id) else {
                        return Err(MasterError::ItemNotAllocated {
                            session: req.session.clone(),
                            item: id.to_string(),
                        });
                    };
                    let mut gone: BTreeSet<u16> = (0..n).filter(|&i| servers[i].is_empty()).map(|i| i as u16).collect();
                    for &i in &r.missing_stripes {
                        if i as usize >= n {
                            return Err(MasterError::InvalidSpec {
                                field: "items.missing_stripes",
                                reason: format!("item {id} has no stripe {i} (n = {n})"),
                            });
                        }
                        gone.insert(i as u16);
                    }
                    if n - gone.len() < min {
                        return Err(MasterError::InvalidSpec {
                            field: "items.missing_stripes",
                            reason: format!(
                                "item {id} has {} of its {n} stripes stored; the fileset needs at least {min}",
                                n - gone.len()
                            ),
                        });
                    }
                    if !gone.is_empty() {
                        missing.insert(id, gone);
                    }
                    Ok(ItemRecord { id, len: r.length })
                })
                .collect()
        };
        let items = parse(&req.items, "items")?;
        let manifest = req
            .manifest
            .clone()
            .ok_or(MasterError::InvalidSpec { field: "manifest", reason: "a version needs its manifest".into() })?;
        let manifest_items = parse(&manifest.items, "manifest.items")?;
        if manifest.sha256.len() != 32 {
            return Err(MasterError::InvalidSpec { field: "manifest.sha256", reason: "must be 32 bytes".into() });
        }
        let id = st
            .versions
            .range((fileset.clone(), 0)..=(fileset.clone(), u64::MAX))
            .next_back()
            .map_or(1, |(k, _)| k.1 + 1);
        let record = VersionRecord {
            fileset: fileset.clone(),
            id,
            created_unix: now_unix(),
            files: req.files,
            bytes: req.bytes,
            items,
            manifest_items,
            manifest_len: manifest.length,
            manifest_sha256: hex::encode(&manifest.sha256),
            pins: vec![],
        };
        // The one durable write: after it the version exists, before it not.
        self.store.put_version(&record)?;
        let session = st.sessions.remove(&req.session).expect("checked above");
        for (item, servers) in session.items {
            if record.all_items().any(|i| i.id == item) {
                let gone = missing.get(&item);
                for (index, sid) in servers.iter().enumerate() {
                    if gone.is_some_and(|g| g.contains(&(index as u16))) {
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
        }
        if !missing.is_empty() {
            let stripes: usize = missing.values().map(|g| g.len()).sum();
            warn!(fileset = %fileset, items = missing.len(), stripes, "version written degraded; the missing stripes are rebuilt as placement allows");
            st.losses.entry(fileset.clone()).or_default().degraded_writes += missing.len() as u64;
            for (item, gone) in missing {
                let entry = st.gone.entry(item).or_default();
                for i in gone {
                    entry.insert(i, Loss::NotWritten);
                }
            }
        }
        for i in record.all_items() {
            st.items.insert(i.id, ItemInfo { fileset: fileset.clone(), len: i.len });
        }
        st.versions.insert((fileset.clone(), id), record.clone());
        info!(fileset = %fileset, version = id, files = record.files, bytes = record.bytes, "version published");
        let _ = now;
        let deletions = self.apply_retention(&mut st, &fileset)?;
        Ok((record, deletions))
    }

    fn apply_retention(&self, st: &mut State, fileset: &str) -> Result<Vec<Deletion>, MasterError> {
        let keep = st.filesets.get(fileset).map_or(1, |f| f.keep_versions);
        let versions: Vec<Retained> = st
            .versions
            .range((fileset.to_string(), 0)..=(fileset.to_string(), u64::MAX))
            .map(|(k, v)| Retained { id: k.1, pinned: !v.pins.is_empty() })
            .collect();
        let mut deletions = Vec::new();
        for id in retention::collectable(&versions, keep) {
            self.store.delete_version(fileset, id)?;
            let v = st.versions.remove(&(fileset.to_string(), id)).expect("listed above");
            info!(fileset = %fileset, version = id, "version collected by retention");
            deletions.extend(forget_version(st, &v));
        }
        Ok(deletions)
    }

    pub fn abort_version(&self, session: &str) {
        self.state.lock().unwrap().sessions.remove(session);
    }

    /// Ends write sessions whose lease ran out; their items become orphans.
    pub fn expire_sessions(&self, now: Instant) -> usize {
        let mut st = self.state.lock().unwrap();
        let before = st.sessions.len();
        st.sessions.retain(|_, s| s.expires > now);
        before - st.sessions.len()
    }

    // ---- Reading versions ----

    pub fn list_versions(&self, fileset: &str) -> Result<Vec<VersionRecord>, MasterError> {
        let st = self.state.lock().unwrap();
        if !st.filesets.contains_key(fileset) {
            return Err(MasterError::FilesetNotFound(fileset.into()));
        }
        Ok(st
            .versions
            .range((fileset.to_string(), 0)..=(fileset.to_string(), u64::MAX))
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// A version (0: the latest) with its layout and the location of every
    /// stripe of its manifest and data items.
    pub fn get_version(&self, fileset: &str, version: u64) -> Result<ms::GetVersionResponse, MasterError> {
        let st = self.state.lock().unwrap();
        let f = st.filesets.get(fileset).ok_or_else(|| MasterError::FilesetNotFound(fileset.into()))?;
        let v = find_version(&st, fileset, version)?;
        let n = f.k + f.m;
        let locations = v
            .all_items()
            .map(|i| ms::ItemLocation {
                item: i.id.as_bytes().to_vec().into(),
                servers: (0..n).map(|idx| reachable_address(&st, &i.id, idx).unwrap_or_default()).collect(),
            })
            .collect();
        Ok(ms::GetVersionResponse {
            version: Some(v.to_wire()),
            layout: Some(crate::records::layout_to_wire(&f.layout())),
            locations,
        })
    }

    pub fn delete_version(&self, fileset: &str, version: u64) -> Result<Vec<Deletion>, MasterError> {
        let mut st = self.state.lock().unwrap();
        let v = find_version(&st, fileset, version)?.clone();
        if !v.pins.is_empty() {
            return Err(MasterError::Pinned { fileset: fileset.into(), version: v.id, holders: v.pins });
        }
        self.store.delete_version(fileset, v.id)?;
        st.versions.remove(&(fileset.to_string(), v.id));
        info!(fileset = %fileset, version = v.id, "version deleted");
        Ok(forget_version(&mut st, &v))
    }

    pub fn pin(&self, fileset: &str, version: u64, holder: &str, pin: bool) -> Result<(), MasterError> {
        if holder.is_empty() {
            return Err(MasterError::InvalidSpec { field: "holder", reason: "a pin needs a holder".into() });
        }
        let mut st = self.state.lock().unwrap();
        let mut v = find_version(&st, fileset, version)?.clone();
        let had = v.pins.iter().any(|h| h == holder);
        match (pin, had) {
            (true, false) => v.pins.push(holder.to_string()),
            (false, true) => v.pins.retain(|h| h != holder),
            _ => return Ok(()),
        }
        self.store.put_version(&v)?;
        st.versions.insert((fileset.to_string(), v.id), v);
        Ok(())
    }

    // ---- Health, repair and collection ----

    /// Decides, for every item of every published version, whether to
    /// rebuild it now, and plans the repairs of those that are due (at most
    /// `max` new jobs). Items being repaired already are skipped.
    pub fn plan_repairs(&self, now: Instant, max: usize, rng: &mut impl Rng) -> Vec<RepairJob> {
        // Right after a start the index is still being relearned: items
        // whose servers have not reported yet are not lost.
        if self.warming_up(now) {
            return Vec::new();
        }
        let mut st = self.state.lock().unwrap();
        let policy = self.config.failure;
        let mut down = HashSet::new();
        for s in st.servers.values_mut() {
            if !s.live || s.maintenance || s.failures.is_down(now, &policy) {
                down.insert(s.id.clone());
            }
        }
        // First every item due for repair, then the most urgent placed first:
        // fewest stripes left beyond k, high availability before low.
        let mut due = Vec::new();
        let items: Vec<(ItemId, ItemInfo)> = st.items.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (item, info) in items {
            let Some(f) = st.filesets.get(&info.fileset).cloned() else { continue };
            let n = f.k + f.m;
            let reachable = reachable_indices(&st, &item, &down, n);
            let count = reachable.iter().filter(|r| r.is_some()).count();
            if count == n {
                st.missing_since.remove(&item);
                st.unplaceable.remove(&item);
                st.gone.remove(&item);
                continue;
            }
            let since = *st.missing_since.entry(item).or_insert(now);
            let rp = RepairPolicy { threshold: f.m, grace: self.config.repair_grace };
            let gone_for_good = st
                .gone
                .get(&item)
                .map_or(0, |g| g.keys().filter(|&&i| reachable.get(i as usize).is_some_and(|r| r.is_none())).count());
            let missing = repair::Missing { reachable: count, gone_for_good };
            let decision = repair::decide(missing, f.k, f.m, f.availability(), since, now, &rp);
            if decision == RepairDecision::Unrecoverable {
                warn!(%item, fileset = %info.fileset, reachable = count, k = f.k, "item has fewer than k stripes reachable");
            }
            if decision == RepairDecision::Now && !st.repairing.contains(&item) {
                due.push((count.saturating_sub(f.k), f.availability() != Availability::High, item, info, f, reachable));
            }
        }
        due.sort_by_key(|d| (d.0, d.1));
        let mut jobs = Vec::new();
        for (_, _, item, info, f, reachable) in due {
            if jobs.len() >= max {
                break;
            }
            let n = f.k + f.m;
            // Place the lost stripes, counting the ones still in place.
            let mut ids = Vec::new();
            let mut candidates = Vec::new();
            let mut exclude = Vec::new();
            let holders: HashSet<&String> =
                st.locations.get(&item).map(|v| v.iter().map(|(_, s)| s).collect()).unwrap_or_default();
            for s in st.servers.values() {
                if down.contains(&s.id) || s.free_bytes < info.len / f.k as u64 + (64 << 10) {
                    continue;
                }
                if holders.contains(&s.id) {
                    exclude.push(ids.len());
                }
                ids.push(s.id.clone());
                candidates.push(Candidate { topology: s.topology.clone(), free_bytes: s.free_bytes });
            }
            let level: Level = f.policy().level;
            let existing = placement::domain_counts(
                reachable.iter().flatten().filter_map(|sid| st.servers.get(sid).map(|s| &s.topology)),
                level,
            );
            let lost: Vec<usize> = (0..n).filter(|i| reachable[*i].is_none()).collect();
            match placement::choose(&candidates, lost.len(), f.policy(), &existing, &exclude, rng) {
                Ok(chosen) => {
                    let sources = reachable
                        .iter()
                        .map(|r| r.as_ref().map(|sid| st.servers[sid].address.clone()).unwrap_or_default())
                        .collect();
                    let targets = lost
                        .iter()
                        .zip(chosen)
                        .map(|(&idx, c)| (idx, ids[c].clone(), st.servers[&ids[c]].address.clone()))
                        .collect();
                    st.repairing.insert(item);
                    jobs.push(RepairJob { item, layout: f.layout(), len: info.len, sources, targets });
                }
                Err(e) => {
                    if st.unplaceable.insert(item) {
                        warn!(%item, error = %e, "cannot place replacement stripes; retrying as the topology changes");
                    }
                }
            }
        }
        jobs
    }

    /// Records a finished repair: the new stripes are where the job put them.
    pub fn repair_done(&self, job: &RepairJob, ok: bool) {
        let mut st = self.state.lock().unwrap();
        st.repairing.remove(&job.item);
        if !ok {
            return;
        }
        let stripe_len = job.layout.stripe_len(job.len).unwrap_or(0) as u64;
        let fileset = st.items.get(&job.item).map(|i| i.fileset.clone());
        for (idx, sid, _) in &job.targets {
            let stripe = StripeId::new(job.item, *idx as u16);
            if let Some(s) = st.servers.get_mut(sid)
                && s.stripes.insert(stripe)
            {
                add_location(&mut st.locations, &stripe, sid);
            }
            st.repaired_stripes += 1;
            st.repaired_bytes += stripe_len;
            let loss = st.gone.get_mut(&job.item).and_then(|g| g.remove(&(*idx as u16)));
            if loss == Some(Loss::Corrupt)
                && let Some(f) = &fileset
            {
                st.losses.entry(f.clone()).or_default().corrupt_rebuilt += 1;
            }
        }
        if st.gone.get(&job.item).is_some_and(|g| g.is_empty()) {
            st.gone.remove(&job.item);
        }
        st.missing_since.remove(&job.item);
        st.unplaceable.remove(&job.item);
        info!(item = %job.item, stripes = job.targets.len(), "item repaired");
    }

    /// Stripes nobody owns (no published version, no open session) for
    /// longer than the grace: left by crashed writers or deleted versions
    /// whose servers were away.
    pub fn collect_orphans(&self, now: Instant) -> Vec<Deletion> {
        let mut st = self.state.lock().unwrap();
        let open: HashSet<ItemId> = st.sessions.values().flat_map(|s| s.items.keys().copied()).collect();
        let orphans: Vec<ItemId> =
            st.locations.keys().filter(|i| !st.items.contains_key(i) && !open.contains(i)).copied().collect();
        let grace = self.config.orphan_grace;
        st.orphan_since.retain(|i, _| orphans.contains(i));
        let mut out = Vec::new();
        for item in orphans {
            let since = *st.orphan_since.entry(item).or_insert(now);
            if now.saturating_duration_since(since) < grace {
                continue;
            }
            for (idx, sid) in st.locations.get(&item).cloned().unwrap_or_default() {
                if let Some(s) = st.servers.get(&sid)
                    && s.live
                {
                    out.push(Deletion { address: s.address.clone(), stripe: StripeId::new(item, idx) });
                }
            }
            st.orphan_since.remove(&item);
        }
        if !out.is_empty() {
            info!(stripes = out.len(), "collecting orphan stripes");
        }
        let surplus = surplus_copies(&st);
        if !surplus.is_empty() {
            info!(stripes = surplus.len(), "deleting surplus copies of stripes (a lost server came back after repair)");
        }
        out.extend(surplus);
        out
    }

    /// A deleted stripe is gone from the index (its server also reports it).
    pub fn deleted(&self, d: &Deletion) {
        let mut st = self.state.lock().unwrap();
        let State { servers, locations, collected_stripes, .. } = &mut *st;
        if let Some(s) = servers.values_mut().find(|s| s.address == d.address)
            && s.stripes.remove(&d.stripe)
        {
            let id = s.id.clone();
            forget_location(locations, &d.stripe, &id);
            *collected_stripes += 1;
        }
    }

    // ---- Status ----

    pub fn status(&self, fileset: &str, now: Instant) -> Result<ms::StatusResponse, MasterError> {
        let mut st = self.state.lock().unwrap();
        if !fileset.is_empty() && !st.filesets.contains_key(fileset) {
            return Err(MasterError::FilesetNotFound(fileset.into()));
        }
        let policy = self.config.failure;
        let mut servers = Vec::new();
        for s in st.servers.values_mut() {
            let down = s.maintenance || s.failures.is_down(now, &policy);
            servers.push(ms::ServerStatus {
                server_id: s.id.clone(),
                address: s.address.clone(),
                topology: Some(ms::Topology {
                    region: s.topology.region.clone(),
                    zone: s.topology.zone.clone(),
                    rack: s.topology.rack.clone(),
                    node: s.topology.node.clone(),
                }),
                live: s.live,
                down,
                free_bytes: s.free_bytes,
                total_bytes: s.total_bytes,
                read_bytes_per_sec: s.read_bytes_per_sec,
                stripes: s.stripes.len() as u64,
                failure_count: s.failures.count(),
            });
        }
        // Servers in maintenance count as unreachable, as they do for repair.
        let unreachable: HashSet<String> =
            st.servers.values().filter(|s| !s.live || s.maintenance).map(|s| s.id.clone()).collect();
        let mut filesets = Vec::new();
        for f in st.filesets.values().filter(|f| fileset.is_empty() || f.name == fileset) {
            let n = f.k + f.m;
            let level = f.policy().level;
            let mut by_redundancy = vec![0u64; f.m + 1];
            let (mut items, mut degraded, mut unrecoverable, mut repairing, mut violations) = (0, 0, 0, 0, 0);
            let mut per_domain: BTreeMap<String, u64> = BTreeMap::new();
            let mut corrupt_pending = 0;
            for (item, _) in st.items.iter().filter(|(_, i)| i.fileset == f.name) {
                items += 1;
                corrupt_pending += st.gone.get(item).map_or(0, |g| g.values().filter(|l| **l == Loss::Corrupt).count());
                let reachable = reachable_indices(&st, item, &unreachable, n);
                let count = reachable.iter().filter(|r| r.is_some()).count();
                if count < n {
                    degraded += 1;
                }
                if count < f.k {
                    unrecoverable += 1;
                } else {
                    by_redundancy[(count - f.k).min(f.m)] += 1;
                }
                if st.repairing.contains(item) {
                    repairing += 1;
                }
                let mut item_domains: HashMap<String, usize> = HashMap::new();
                for sid in reachable.iter().flatten() {
                    if let Some(s) = st.servers.get(sid) {
                        let d = s.topology.domain(level);
                        *item_domains.entry(d.clone()).or_default() += 1;
                        *per_domain.entry(d).or_default() += 1;
                    }
                }
                if item_domains.values().any(|&c| c > f.max_per_domain) {
                    violations += 1;
                }
            }
            let losses = st.losses.get(&f.name).copied().unwrap_or_default();
            filesets.push(ms::FilesetStatus {
                corrupt_stripes_found: losses.corrupt_found,
                corrupt_stripes_rebuilt: losses.corrupt_rebuilt,
                degraded_writes: losses.degraded_writes,
                corrupt_stripes_pending: corrupt_pending as u64,
                name: f.name.clone(),
                items,
                items_by_redundancy: by_redundancy,
                degraded,
                unrecoverable,
                repairing,
                stripes_per_domain: per_domain
                    .into_iter()
                    .map(|(domain, stripes)| ms::DomainCount { domain, stripes })
                    .collect(),
                level: level.to_string(),
                placement_violations: violations,
            });
        }
        let all = st.losses.values().fold(LossCounts::default(), |a, l| LossCounts {
            corrupt_found: a.corrupt_found + l.corrupt_found,
            corrupt_rebuilt: a.corrupt_rebuilt + l.corrupt_rebuilt,
            degraded_writes: a.degraded_writes + l.degraded_writes,
        });
        Ok(ms::StatusResponse {
            relearning: self.warming_up(now),
            corrupt_stripes_found: all.corrupt_found,
            corrupt_stripes_rebuilt: all.corrupt_rebuilt,
            corrupt_reports: st.corrupt_reports,
            servers,
            filesets,
            repaired_stripes: st.repaired_stripes,
            repaired_bytes: st.repaired_bytes,
            collected_stripes: st.collected_stripes,
        })
    }
}

impl State {
    /// A stripe its server has taken out of service for good.
    fn stripe_lost(&mut self, stripe: StripeId, loss: Loss, server: &str) {
        let Some(info) = self.items.get(&stripe.item) else {
            warn!(%stripe, %server, "a stripe of no published version was quarantined");
            return;
        };
        // A server repeats a quarantine until a heartbeat carrying it is
        // accepted: count each once.
        if self.gone.entry(stripe.item).or_default().insert(stripe.index, loss) == Some(loss) {
            return;
        }
        warn!(%stripe, fileset = %info.fileset, %server, ?loss, "stripe lost for good; rebuilding it");
        if loss == Loss::Corrupt {
            self.losses.entry(info.fileset.clone()).or_default().corrupt_found += 1;
        }
    }
}

fn fileset_to_wire(st: &State, f: &FilesetRecord) -> ms::Fileset {
    let versions: Vec<u64> =
        st.versions.range((f.name.clone(), 0)..=(f.name.clone(), u64::MAX)).map(|(k, _)| k.1).collect();
    ms::Fileset {
        spec: Some(f.spec()),
        created_unix: f.created_unix,
        latest_version: versions.last().copied().unwrap_or(0),
        versions: versions.len() as u32,
    }
}

fn find_version<'a>(st: &'a State, fileset: &str, version: u64) -> Result<&'a VersionRecord, MasterError> {
    if !st.filesets.contains_key(fileset) {
        return Err(MasterError::FilesetNotFound(fileset.into()));
    }
    let range = st.versions.range((fileset.to_string(), 0)..=(fileset.to_string(), u64::MAX));
    if version == 0 {
        range.map(|(_, v)| v).next_back().ok_or_else(|| MasterError::NoVersions(fileset.into()))
    } else {
        st.versions
            .get(&(fileset.to_string(), version))
            .ok_or_else(|| MasterError::VersionNotFound { fileset: fileset.into(), version })
    }
}

/// Second copies of a stripe, as when a server returns after its stripes were
/// rebuilt elsewhere. Of an index held twice, the copy in the most crowded
/// domain goes, so the survivors respect the placement bound where they can.
/// Items being repaired are left alone until their repair lands.
fn surplus_copies(st: &State) -> Vec<Deletion> {
    let mut out = Vec::new();
    for (item, locs) in &st.locations {
        let Some(info) = st.items.get(item) else { continue };
        if st.repairing.contains(item) {
            continue;
        }
        let Some(f) = st.filesets.get(&info.fileset) else { continue };
        let level = f.policy().level;
        let live: Vec<(u16, &Server)> =
            locs.iter().filter_map(|(idx, sid)| st.servers.get(sid).filter(|s| s.live).map(|s| (*idx, s))).collect();
        let mut per_index: BTreeMap<u16, Vec<&Server>> = BTreeMap::new();
        for (idx, s) in &live {
            per_index.entry(*idx).or_default().push(s);
        }
        if per_index.values().all(|v| v.len() < 2) {
            continue;
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, s) in &live {
            *counts.entry(s.topology.domain(level)).or_insert(0) += 1;
        }
        for (idx, mut holders) in per_index {
            while holders.len() > 1 {
                // Most crowded domain first; the server id breaks ties so
                // every pass picks the same copy.
                let (at, _) = holders
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, s)| (counts[&s.topology.domain(level)], std::cmp::Reverse(s.id.clone())))
                    .expect("at least two holders");
                let gone = holders.swap_remove(at);
                *counts.get_mut(&gone.topology.domain(level)).expect("counted above") -= 1;
                out.push(Deletion { address: gone.address.clone(), stripe: StripeId::new(*item, idx) });
            }
        }
    }
    out
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

fn add_location(locations: &mut HashMap<ItemId, Vec<(u16, String)>>, stripe: &StripeId, server: &str) {
    let v = locations.entry(stripe.item).or_default();
    if !v.iter().any(|(i, s)| *i == stripe.index && s == server) {
        v.push((stripe.index, server.to_string()));
    }
}

fn forget_location(locations: &mut HashMap<ItemId, Vec<(u16, String)>>, stripe: &StripeId, server: &str) {
    if let Some(v) = locations.get_mut(&stripe.item) {
        v.retain(|(i, s)| !(*i == stripe.index && s == server));
        if v.is_empty() {
            locations.remove(&stripe.item);
        }
    }
}

/// For each stripe index, a server holding it that is not in `unavailable`.
fn reachable_indices(st: &State, item: &ItemId, unavailable: &HashSet<String>, n: usize) -> Vec<Option<String>> {
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
