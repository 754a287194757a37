//! The node plugin: root mounts shared by every volume of a version on this
//! node, and the staging and publishing of volumes onto them.
//!
//! A fileset version is mounted once per node (FUSE, under the state
//! directory) and pinned in the master so it is not collected while in use.
//! Staging bind-mounts it read-only on the staging path; publishing
//! bind-mounts the staging path (or, for inline volumes, the root mount)
//! on the target path. When its last user goes the root is unmounted and
//! unpinned.
//!
//! Every call is idempotent and its effects are recorded in the node state
//! before it returns, and every FUSE connection is deposited with the
//! keeper before it serves, so a plugin that is killed and started again
//! (or upgraded) takes over the live connections: open files keep working.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_client::fileset::{FilesetClient, FilesetError, PutOptions};
use tessera_core::latency::HedgePolicy;
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;
use tracing::{info, warn};

use crate::cache::NodeCache;
use crate::fuse::abi::InitState;
use crate::fuse::mount::{self, MountError};
use crate::fuse::session::Filesystem;
use crate::fuse::session::{self, Connection};
use crate::keeper::{KeeperClient, KeeperError};
use crate::leaffs::LeafFs;
use crate::metrics::Metrics;
use crate::passthrough::{FileStore, IoTable};
use crate::peers::{Discovery, Peers};
use crate::rootfs::RootFs;
use crate::state::{LeafRecord, NodeState, RootRecord, StateError};
use crate::turns::Turns;
use crate::volume::{RootRef, VolumeError, is_leaf, leaf_id};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub master: String,
    /// Root mounts and the node state live here (a hostPath).
    pub state_dir: PathBuf,
    pub keeper_socket: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_bytes: u64,
    /// Whole large root files for passthrough, by digest; `None` turns
    /// passthrough off.
    pub file_store: Option<(PathBuf, u64)>,
    /// Other nodes' plugins to ask for blocks before the chunkservers.
    pub peers: Option<Discovery>,
    /// How root volumes read unless told otherwise.
    pub read_mode: ReadMode,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("{0}: {1}")]
    Missing(&'static str, String),
    #[error("fileset {fileset}: {source}")]
    Fileset { fileset: String, source: FilesetError },
    #[error("volume {0} is not staged on this node")]
    NotStaged(String),
    #[error("{0} is not a mount of this volume: refusing to change it")]
    Foreign(PathBuf),
    #[error("volume {0} does not exist")]
    NoVolume(String),
    #[error("a volume named {0} exists with other parameters")]
    Exists(String),
    #[error("volume {0} is in use on this node")]
    InUse(String),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("keeper: {0} (without it mounts would not survive a restart of this plugin)")]
    Keeper(#[from] KeeperError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Busy(#[from] crate::turns::Busy),
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        use tonic::Code;
        let code = match &e {
            NodeError::Volume(_) | NodeError::Missing(..) => Code::InvalidArgument,
            NodeError::Fileset { source: FilesetError::Master(s), .. } => match s.code() {
                Code::NotFound => Code::NotFound,
                Code::InvalidArgument => Code::InvalidArgument,
                _ => Code::Unavailable,
            },
            NodeError::Fileset { source: FilesetError::Connect { .. }, .. } => Code::Unavailable,
            NodeError::Fileset { .. } => Code::Internal,
            NodeError::NotStaged(_) => Code::FailedPrecondition,
            NodeError::Foreign(_) | NodeError::Exists(_) => Code::AlreadyExists,
            NodeError::NoVolume(_) => Code::NotFound,
            NodeError::InUse(_) => Code::FailedPrecondition,
            NodeError::Keeper(_) => Code::Unavailable,
            NodeError::Mount(_) | NodeError::State(_) | NodeError::Io { .. } => Code::Internal,
            NodeError::Busy(_) => Code::Aborted,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// What the keeper holds with each connection, for a successor.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    fileset: String,
    version: u64,
    mountpoint: PathBuf,
    init: Option<InitState>,
}

/// A leaf volume made by CreateVolume (`<state>/leaves/<id>/meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafMeta {
    pub name: String,
    pub fileset: String,
    /// The root version, fixed at creation (pinned while the leaf exists).
    pub version: u64,
    pub capacity: u64,
}

/// How long a starting plugin waits for the keeper's socket.
const KEEPER_WAIT_SECS: u32 = 120;

/// Capacity of an inline leaf without a `capacity` attribute.
pub const DEFAULT_LEAF_CAPACITY: u64 = 10 << 30;

/// A FUSE connection served by this process (a root or a leaf).
/// What a served connection's filesystem is.
enum ServedFs {
    Root(Arc<RootFs>),
    Leaf(Arc<LeafFs>),
}

struct Served {
    fs: ServedFs,
    /// Our own copy of the connection's file, to deposit again if the
    /// keeper restarts.
    dev: std::os::fd::OwnedFd,
}

pub struct NodePlugin {
    config: NodeConfig,
    files: FilesetClient,
    cache: Arc<NodeCache>,
    file_store: Option<Arc<FileStore>>,
    peers: Option<Arc<Peers>>,
    pub metrics: Arc<Metrics>,
    keeper: KeeperClient,
    state: Arc<Mutex<NodeState>>,
    /// Saves of the state take turns (held on blocking threads only): each
    /// writes the state as it is when its turn comes, so a later save never
    /// writes older state.
    saving: Arc<Mutex<()>>,
    served: Mutex<HashMap<String, Served>>,
    /// Versions leaves are based on, when not mounted as roots.
    bases: Mutex<HashMap<String, Arc<RootFs>>>,
    /// One operation at a time per volume; a second is refused (ABORTED).
    turns: Turns,
    /// Then one at a time on the node: volumes share root mounts, which
    /// each call may mount or release.
    ops: tokio::sync::Mutex<()>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io { path: path.to_path_buf(), source }
}

/// Writes a snapshot of `state` to `dir` in `saving`'s turn; the state's
/// lock is held only for the copy.
fn save_state(state: &Mutex<NodeState>, saving: &Mutex<()>, dir: &Path) -> Result<(), NodeError> {
    let _turn = saving.lock().unwrap();
    let snapshot = state.lock().unwrap().clone();
    Ok(snapshot.save(dir)?)
}

fn is_mounted(path: &Path) -> bool {
    !mount::mounts_at(path).is_empty()
}

impl NodePlugin {
    /// Starts the plugin: opens the cache and takes over every root mount a
    /// previous plugin left with the keeper.
    pub async fn start(config: NodeConfig, files: FilesetClient) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(config.state_dir.join("roots")).map_err(io(&config.state_dir))?;
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(
            NodeCache::open(&config.cache_dir, config.cache_bytes, metrics.clone()).map_err(io(&config.cache_dir))?,
        );
        let file_store = match &config.file_store {
            Some((dir, bytes)) => Some(Arc::new(FileStore::open(dir, *bytes).map_err(io(dir))?)),
            None => None,
        };
        let state = NodeState::load(&config.state_dir)?;
        let peers = config.peers.clone().map(|d| Peers::new(d, metrics.clone()));
        let plugin = Arc::new(Self {
            keeper: KeeperClient::new(&config.keeper_socket),
            config,
            files,
            cache,
            file_store,
            peers,
            metrics,
            state: Arc::new(Mutex::new(state)),
            saving: Arc::default(),
            served: Mutex::default(),
            bases: Mutex::default(),
            turns: Turns::default(),
            ops: tokio::sync::Mutex::new(()),
        });
        plugin.adopt().await?;
        tokio::spawn(plugin.clone().keep_deposited());
        Ok(plugin)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Writes the node's state durably (it fsyncs) on a blocking thread,
    /// not on the async runtime's.
    async fn save(&self) -> Result<(), NodeError> {
        let (state, saving, dir) = (self.state.clone(), self.saving.clone(), self.config.state_dir.clone());
        tokio::task::spawn_blocking(move || save_state(&state, &saving, &dir))
            .await
            .expect("saving the node state does not panic")
    }

    /// As [`NodePlugin::save`], on the calling thread (a FUSE session's).
    fn save_now(&self) -> Result<(), NodeError> {
        save_state(&self.state, &self.saving, &self.config.state_dir)
    }

    /// Takes over the connections the keeper holds for roots in the state.
    async fn adopt(self: &Arc<Self>) -> Result<(), NodeError> {
        // The keeper may start after the plugin (two DaemonSets): wait for it.
        let mut waited = 0;
        let held = loop {
            let k = self.keeper.clone();
            match tokio::task::spawn_blocking(move || k.list()).await.expect("keeper list") {
                Ok(held) => break held,
                Err(e @ KeeperError::Socket { .. }) if waited < KEEPER_WAIT_SECS * 5 => {
                    if waited % 25 == 0 {
                        warn!(error = %e, "waiting for the keeper");
                    }
                    waited += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut held: HashMap<String, _> = held.into_iter().map(|h| (h.id.clone(), h)).collect();
        let roots: Vec<(String, RootRecord)> =
            self.state.lock().unwrap().roots.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, record) in roots {
            match held.remove(&key) {
                Some(h) => {
                    info!(root = %key, "taking over a live fuse connection");
                    let open = self.open_version(&record.fileset, record.version).await?;
                    let read = self.fileset_read_policy(&record.fileset).await;
                    let conn = Connection { dev: h.fd, init: record.init, adopted: true };
                    self.serve(&key, open, read, conn)?;
                }
                None => {
                    // Keeper and plugin both gone: the connection died with
                    // them. Detach the dead mount; volumes staged on it are
                    // mounted again on their next stage or publish.
                    warn!(root = %key, "no live connection for a root mount; it is lost");
                    let _ = mount::unmount(&record.mountpoint);
                    let mut st = self.state.lock().unwrap();
                    st.roots.remove(&key);
                    st.volumes.retain(|_, v| v.root != key);
                }
            }
        }
        let leaves: Vec<(String, LeafRecord)> =
            self.state.lock().unwrap().leaves.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (id, record) in leaves {
            let key = format!("leaf/{id}");
            match held.remove(&key) {
                Some(h) => {
                    info!(volume = %id, "taking over a live leaf connection");
                    let base = self.base(&record.fileset, record.version).await?;
                    // Adopted, not opened: files its pod unlinked but still
                    // holds open are kept.
                    let fs = Arc::new(
                        LeafFs::adopt(&record.dir.join("fs"), base, record.capacity).map_err(io(&record.dir))?,
                    );
                    let conn = Connection { dev: h.fd, init: record.init, adopted: true };
                    self.spawn_session(&key, fs.clone(), ServedFs::Leaf(fs), conn)?;
                }
                None => {
                    // Its data is on disk; the next stage mounts it again.
                    warn!(volume = %id, "no live connection for a leaf mount; it is lost");
                    let _ = mount::unmount(&record.mountpoint);
                    let mut st = self.state.lock().unwrap();
                    st.leaves.remove(&id);
                    st.volumes.remove(&id);
                }
            }
        }
        // Held by the keeper but unknown here (the state was lost): unmount.
        for (id, h) in held {
            let mountpoint = h.meta.get("mountpoint").and_then(|m| m.as_str()).map(PathBuf::from);
            warn!(mount = %id, "the keeper holds a connection this node does not know; unmounting it");
            if let Some(m) = mountpoint {
                let _ = mount::unmount(&m);
            }
            let k = self.keeper.clone();
            let _ = tokio::task::spawn_blocking(move || k.withdraw(&id)).await;
        }
        self.save().await
    }

    /// Deposits again whatever a restarted keeper lost.
    async fn keep_deposited(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let k = self.keeper.clone();
            let Ok(Ok(held)) = tokio::task::spawn_blocking(move || k.list()).await else { continue };
            let ids: std::collections::HashSet<String> = held.into_iter().map(|h| h.id).collect();
            let missing: Vec<(String, serde_json::Value, std::os::fd::OwnedFd)> = {
                let served = self.served.lock().unwrap();
                let st = self.state.lock().unwrap();
                served
                    .iter()
                    .filter(|(id, _)| !ids.contains(*id))
                    .filter_map(|(id, s)| {
                        let meta = match id.strip_prefix("leaf/") {
                            Some(leaf) => serde_json::to_value(st.leaves.get(leaf)?).ok()?,
                            None => serde_json::to_value(kept(st.roots.get(id)?)).ok()?,
                        };
                        Some((id.clone(), meta, s.dev.try_clone().ok()?))
                    })
                    .collect()
            };
            for (id, meta, dev) in missing {
                warn!(root = %id, "the keeper lost a connection (restarted?); depositing it again");
                let k = self.keeper.clone();
                let _ = tokio::task::spawn_blocking(move || k.deposit(&id, &meta, &dev)).await;
            }
        }
    }

    async fn open_version(
        &self,
        fileset: &str,
        version: u64,
    ) -> Result<tessera_client::fileset::OpenVersion, NodeError> {
        self.files.open(fileset, version).await.map_err(|source| NodeError::Fileset { fileset: fileset.into(), source })
    }

    /// How a root of `fileset` reads: the read mode it starts in and how it
    /// hedges, as its Priority gives them (kept by the master), else the
    /// plugin's defaults. A volume's `readMode` attribute and the control
    /// API change the mode afterwards.
    async fn fileset_read_policy(&self, fileset: &str) -> (ReadMode, HedgePolicy) {
        let default_hedge = self.files.stripes().config().hedge;
        let req = ms::GetFilesetRequest { name: fileset.to_string() };
        let spec = match self.files.master().get_fileset(req).await {
            Ok(f) => f.into_inner().spec.unwrap_or_default(),
            Err(e) => {
                warn!(fileset, error = %e, "cannot ask the master for the fileset's read policy; using the defaults");
                return (self.config.read_mode, default_hedge);
            }
        };
        let mode = match spec.read_mode.as_str() {
            "" => self.config.read_mode,
            m => m.parse().unwrap_or_else(|_| {
                warn!(fileset, read_mode = %m, "the master names an unknown read mode; using the default");
                self.config.read_mode
            }),
        };
        let hedge = match spec.hedge {
            None => default_hedge,
            // The master checks these; a record written otherwise is not
            // trusted to keep the bounds in order.
            Some(h) if h.delay_min_ms > h.delay_max_ms => {
                warn!(
                    fileset,
                    min_ms = h.delay_min_ms,
                    max_ms = h.delay_max_ms,
                    "the master names hedge bounds out of order; using the defaults"
                );
                default_hedge
            }
            Some(h) => HedgePolicy {
                floor: Duration::from_millis(h.delay_min_ms.into()),
                ceiling: Duration::from_millis(h.delay_max_ms.into()),
                extra_stripes: h.extra_stripes as usize,
                ..default_hedge
            },
        };
        (mode, hedge)
    }

    fn serve(
        self: &Arc<Self>,
        key: &str,
        open: tessera_client::fileset::OpenVersion,
        read: (ReadMode, HedgePolicy),
        conn: Connection,
    ) -> Result<(), NodeError> {
        let fs = self.root_fs(key, open, read);
        // The open modes of this connection's files, kept beside the node
        // state for whichever plugin serves the connection next.
        let path = self.io_table_path(key);
        let recorded = conn.adopted && path.exists();
        match &self.file_store {
            // A connection taken over from a plugin that kept no record may
            // have files open in a mode nobody recorded: it is not passed
            // through (the kernel would refuse opens that mix modes).
            Some(_) if conn.adopted && !recorded => {
                info!(root = %key, "taken over without a record of open files; not passing files through");
            }
            Some(store) => {
                let table = IoTable::open(&path, conn.adopted).map_err(io(&path))?;
                fs.enable_passthrough(Some(store.clone()), table);
            }
            // The store is off now, but files a previous plugin passed
            // through may still be open: later opens of them must join
            // their mode and backing, so the record is kept and honoured.
            None if recorded => {
                let table = IoTable::open(&path, true).map_err(io(&path))?;
                fs.enable_passthrough(None, table);
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.spawn_session(key, fs.clone(), ServedFs::Root(fs), conn)
    }

    fn root_fs(
        &self,
        key: &str,
        open: tessera_client::fileset::OpenVersion,
        read: (ReadMode, HedgePolicy),
    ) -> Arc<RootFs> {
        let (mode, hedge) = read;
        let fs = RootFs::new(key, open, self.files.stripes().clone(), self.cache.clone(), self.metrics.clone(), mode);
        Arc::new(fs.with_peers(self.peers.clone()).with_hedge(hedge))
    }

    /// Serves a connection on its own thread.
    fn spawn_session<F: Filesystem>(
        self: &Arc<Self>,
        key: &str,
        fs: Arc<F>,
        served: ServedFs,
        conn: Connection,
    ) -> Result<(), NodeError> {
        let dev = conn.dev.try_clone().map_err(io(&self.config.state_dir))?;
        let rt = tokio::runtime::Handle::current();
        let (me, id) = (self.clone(), key.to_string());
        let mountpoint = {
            let st = self.state.lock().unwrap();
            match key.strip_prefix("leaf/") {
                Some(leaf) => st.leaves.get(leaf).map(|r| r.mountpoint.clone()),
                None => st.roots.get(key).map(|r| r.mountpoint.clone()),
            }
        };
        // Not joined: the thread ends when the kernel ends the connection.
        std::thread::Builder::new()
            .name(format!("fuse {key}"))
            .spawn(move || {
                let on_init = |init: &InitState| me.record_init(&id, *init);
                let on_ready = move || {
                    if let Some(m) = mountpoint {
                        mount::set_readahead(&m, mount::READAHEAD_KB);
                    }
                };
                match session::serve(conn, fs, rt, on_init, on_ready) {
                    Ok(()) => info!(mount = %id, "fuse mount ended"),
                    Err(e) => warn!(mount = %id, error = %e, "serving a fuse mount failed"),
                }
            })
            .map_err(io(&self.config.state_dir))?;
        self.served.lock().unwrap().insert(key.to_string(), Served { fs: served, dev });
        self.metrics.mounts.set(self.served.lock().unwrap().len() as i64);
        Ok(())
    }

    /// Keeps what INIT negotiated, with the keeper and in the state.
    fn record_init(&self, key: &str, init: InitState) {
        let meta = {
            let mut st = self.state.lock().unwrap();
            if let Some(id) = key.strip_prefix("leaf/") {
                let Some(r) = st.leaves.get_mut(id) else { return };
                if r.init == Some(init) {
                    return;
                }
                r.init = Some(init);
                serde_json::to_value(&*r).unwrap_or_default()
            } else {
                let Some(r) = st.roots.get_mut(key) else { return };
                if r.init == Some(init) {
                    return;
                }
                r.init = Some(init);
                serde_json::to_value(kept(r)).unwrap_or_default()
            }
        };
        if let Err(e) = self.save_now() {
            warn!(mount = %key, error = %e, "saving the node state");
        }
        let dev = self.served.lock().unwrap().get(key).and_then(|s| s.dev.try_clone().ok());
        if let Some(dev) = dev
            && let Err(e) = self.keeper.deposit(key, &meta, &dev)
        {
            warn!(mount = %key, error = %e, "depositing a connection's INIT state with the keeper");
        }
    }

    /// Stops tracking `key` once its filesystem is unmounted. Its thread
    /// ends by itself when the kernel ends the connection; it is not waited
    /// for, since a mount detached while busy lives on until its last file
    /// is closed, and no CSI call may wait for that.
    async fn stop_serving(&self, key: &str) {
        let _ = self.served.lock().unwrap().remove(key);
        self.metrics.mounts.set(self.served.lock().unwrap().len() as i64);
        let (k, id) = (self.keeper.clone(), key.to_string());
        let _ = tokio::task::spawn_blocking(move || k.withdraw(&id)).await;
    }

    // ---- Leaves ----

    fn leaf_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("leaves").join(id)
    }

    /// The leaf CreateVolume made under `id`, if any.
    pub fn leaf_meta(&self, id: &str) -> Result<Option<LeafMeta>, NodeError> {
        let path = self.leaf_dir(id).join("meta.json");
        match std::fs::read(&path) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Io { path, source: e }),
        }
    }

    /// CreateVolume of a leaf: pins its root version and records it. Takes
    /// the same time whatever the root's size (nothing is copied).
    pub async fn create_leaf(&self, name: &str, r: &RootRef, capacity: u64) -> Result<(String, LeafMeta), NodeError> {
        let id = leaf_id(name);
        let _turn = self.turns.take(&id)?;
        let _one = self.ops.lock().await;
        if let Some(meta) = self.leaf_meta(&id)? {
            let same = meta.name == name
                && meta.fileset == r.fileset
                && meta.capacity == capacity
                && (r.version_id() == 0 || r.version_id() == meta.version);
            return if same { Ok((id, meta)) } else { Err(NodeError::Exists(name.to_string())) };
        }
        let open = self.open_version(&r.fileset, r.version_id()).await?;
        self.files
            .master()
            .pin_version(ms::PinRequest {
                fileset: r.fileset.clone(),
                version: open.id(),
                holder: format!("leaf/{id}"),
            })
            .await
            .map_err(|s| NodeError::Fileset { fileset: r.fileset.clone(), source: s.into() })?;
        let meta = LeafMeta { name: name.to_string(), fileset: r.fileset.clone(), version: open.id(), capacity };
        let dir = self.leaf_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join("meta.json.tmp");
        let body = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, dir.join("meta.json")))
            .and_then(|_| std::fs::File::open(&dir)?.sync_all())
            .map_err(io(&dir))?;
        info!(volume = %id, fileset = %meta.fileset, version = meta.version, "created a leaf");
        Ok((id, meta))
    }

    /// DeleteVolume of a leaf: its data goes, its root version is unpinned.
    pub async fn delete_leaf(&self, id: &str) -> Result<(), NodeError> {
        let _turn = self.turns.take(id)?;
        let _one = self.ops.lock().await;
        if self.state.lock().unwrap().leaves.contains_key(id) {
            return Err(NodeError::InUse(id.to_string()));
        }
        let Some(meta) = self.leaf_meta(id)? else { return Ok(()) };
        self.unpin_as(&meta.fileset, meta.version, format!("leaf/{id}")).await;
        let dir = self.leaf_dir(id);
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        info!(volume = %id, "deleted a leaf");
        Ok(())
    }

    /// Whether a volume exists: a leaf made here, or a stored fileset version.
    pub async fn volume_exists(&self, volume: &str) -> Result<bool, NodeError> {
        if is_leaf(volume) {
            return Ok(self.leaf_meta(volume)?.is_some());
        }
        let Ok(r) = RootRef::parse_id(volume) else { return Ok(false) };
        let req = ms::GetVersionRequest { fileset: r.fileset.clone(), version: r.version_id() };
        match self.files.master().get_version(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(NodeError::Fileset { fileset: r.fileset, source: s.into() }),
        }
    }

    /// The version a leaf is based on, shared with its root mount if there is one.
    async fn base(&self, fileset: &str, version: u64) -> Result<Arc<RootFs>, NodeError> {
        let key = format!("{fileset}@{version}");
        if let Some(fs) = self.root(&key) {
            return Ok(fs);
        }
        if let Some(fs) = self.bases.lock().unwrap().get(&key) {
            return Ok(fs.clone());
        }
        let open = self.open_version(fileset, version).await?;
        let read = self.fileset_read_policy(fileset).await;
        let fs = self.root_fs(&key, open, read);
        self.bases.lock().unwrap().insert(key, fs.clone());
        Ok(fs)
    }

    /// Mounts a leaf's filesystem at `record.mountpoint` and serves it.
    async fn mount_leaf(self: &Arc<Self>, id: &str, record: LeafRecord) -> Result<(), NodeError> {
        if self.served.lock().unwrap().contains_key(&format!("leaf/{id}")) {
            // Still served (a busy mount detached earlier): one journal writer only.
            return Err(NodeError::InUse(id.to_string()));
        }
        let base = self.base(&record.fileset, record.version).await?;
        let fs = Arc::new(LeafFs::open(&record.dir.join("fs"), base, record.capacity).map_err(io(&record.dir))?);
        std::fs::create_dir_all(&record.mountpoint).map_err(io(&record.mountpoint))?;
        self.state.lock().unwrap().leaves.insert(id.to_string(), record.clone());
        self.save().await?;
        let dev = match mount::mount_fuse(&record.mountpoint, &format!("tessera:{id}"), false) {
            Ok(dev) => dev,
            Err(e) => {
                self.state.lock().unwrap().leaves.remove(id);
                self.save().await?;
                return Err(e.into());
            }
        };
        let key = format!("leaf/{id}");
        let deposited = {
            let (k, key, meta) = (self.keeper.clone(), key.clone(), serde_json::to_value(&record).unwrap_or_default());
            let dev = dev.try_clone().map_err(io(&record.mountpoint))?;
            tokio::task::spawn_blocking(move || k.deposit(&key, &meta, &dev)).await.expect("deposit")
        };
        if let Err(e) = deposited {
            let _ = mount::unmount(&record.mountpoint);
            self.state.lock().unwrap().leaves.remove(id);
            self.save().await?;
            return Err(e.into());
        }
        info!(volume = %id, mountpoint = %record.mountpoint.display(), "mounted a leaf");
        self.spawn_session(&key, fs.clone(), ServedFs::Leaf(fs), Connection { dev, init: None, adopted: false })
    }

    /// Unmounts a leaf; an inline one's data goes with it.
    async fn unmount_leaf(&self, id: &str) -> Result<(), NodeError> {
        let Some(record) = self.state.lock().unwrap().leaves.get(id).cloned() else { return Ok(()) };
        mount::unmount(&record.mountpoint)?;
        self.stop_serving(&format!("leaf/{id}")).await;
        self.state.lock().unwrap().leaves.remove(id);
        self.save().await?;
        if record.ephemeral {
            let _ = std::fs::remove_dir_all(&record.dir);
        }
        info!(volume = %id, "unmounted a leaf");
        Ok(())
    }

    /// The root mount of `r` with `user` added: mounted, deposited and
    /// served if it was not already. Returns its key and mountpoint.
    async fn acquire_root(self: &Arc<Self>, r: &RootRef, user: &Path) -> Result<(String, PathBuf), NodeError> {
        let open = self.open_version(&r.fileset, r.version_id()).await?;
        let key = format!("{}@{}", r.fileset, open.id());
        let existing = {
            let mut st = self.state.lock().unwrap();
            st.roots.get_mut(&key).map(|rec| {
                rec.users.insert(user.to_path_buf());
                rec.mountpoint.clone()
            })
        };
        if let Some(mp) = existing {
            self.save().await?;
            return Ok((key, mp));
        }
        self.files
            .master()
            .pin_version(ms::PinRequest { fileset: r.fileset.clone(), version: open.id(), holder: self.pin_holder() })
            .await
            .map_err(|s| NodeError::Fileset { fileset: r.fileset.clone(), source: s.into() })?;
        let mountpoint = self.config.state_dir.join("roots").join(&key);
        std::fs::create_dir_all(&mountpoint).map_err(io(&mountpoint))?;
        if is_mounted(&mountpoint) {
            // A dead mount from before (see adopt): out of the way.
            mount::unmount(&mountpoint)?;
        }
        let record = RootRecord {
            fileset: r.fileset.clone(),
            version: open.id(),
            mountpoint: mountpoint.clone(),
            users: [user.to_path_buf()].into(),
            init: None,
        };
        self.state.lock().unwrap().roots.insert(key.clone(), record.clone());
        self.save().await?;
        let dev = match mount::mount_fuse(&mountpoint, &format!("tessera:{key}"), true) {
            Ok(dev) => dev,
            Err(e) => {
                self.state.lock().unwrap().roots.remove(&key);
                self.save().await?;
                self.unpin(&r.fileset, open.id()).await;
                return Err(e.into());
            }
        };
        let deposited = {
            let (k, id, meta, dev) =
                (self.keeper.clone(), key.clone(), kept(&record), dev.try_clone().map_err(io(&mountpoint))?);
            tokio::task::spawn_blocking(move || k.deposit(&id, &meta, &dev)).await.expect("deposit")
        };
        if let Err(e) = deposited {
            let _ = mount::unmount(&mountpoint);
            self.state.lock().unwrap().roots.remove(&key);
            self.save().await?;
            self.unpin(&r.fileset, open.id()).await;
            return Err(e.into());
        }
        let read = self.fileset_read_policy(&r.fileset).await;
        info!(root = %key, mountpoint = %mountpoint.display(), read_mode = %read.0, hedge = ?read.1, "mounted a root");
        self.serve(&key, open, read, Connection { dev, init: None, adopted: false })?;
        Ok((key, mountpoint))
    }

    /// Lets go of a pin (this node's by default); a failure is only logged:
    /// the master drops pins of holders that are gone.
    async fn unpin_as(&self, fileset: &str, version: u64, holder: String) {
        let req = ms::PinRequest { fileset: fileset.to_string(), version, holder };
        if let Err(e) = self.files.master().unpin_version(req).await {
            warn!(fileset, version, error = %e.message(), "unpinning a version");
        }
    }

    async fn unpin(&self, fileset: &str, version: u64) {
        self.unpin_as(fileset, version, self.pin_holder()).await
    }

    fn pin_holder(&self) -> String {
        format!("node/{}", self.config.node_id)
    }

    /// The root of `r` bound read-only on `path`, which becomes one of its
    /// users; returns the root's key.
    async fn bind_root(self: &Arc<Self>, r: &RootRef, path: &Path) -> Result<String, NodeError> {
        let (key, mountpoint) = self.acquire_root(r, path).await?;
        if let Err(e) = mount::bind(&mountpoint, path, true) {
            self.release_root(&key, path).await?;
            return Err(e.into());
        }
        Ok(key)
    }

    /// Drops `user` from a root; the last one unmounts and unpins it.
    async fn release_root(&self, key: &str, user: &Path) -> Result<(), NodeError> {
        let gone = {
            let mut st = self.state.lock().unwrap();
            let Some(rec) = st.roots.get_mut(key) else { return Ok(()) };
            rec.users.remove(user);
            if rec.users.is_empty() { st.roots.remove(key) } else { None }
        };
        self.save().await?;
        let Some(rec) = gone else { return Ok(()) };
        mount::unmount(&rec.mountpoint)?;
        self.stop_serving(key).await;
        let _ = std::fs::remove_dir(&rec.mountpoint);
        self.unpin(&rec.fileset, rec.version).await;
        // The connection is gone, and with it every open the record counted.
        let _ = std::fs::remove_file(self.io_table_path(key));
        info!(root = %key, "unmounted a root");
        Ok(())
    }

    /// Where the open modes of a root connection's files are recorded.
    fn io_table_path(&self, key: &str) -> PathBuf {
        self.config.state_dir.join("io").join(key)
    }

    /// NodeStageVolume: the volume's version, read-only on `staging`.
    pub async fn stage(self: &Arc<Self>, volume: &str, staging: &Path) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        let _one = self.ops.lock().await;
        if is_leaf(volume) {
            return self.stage_leaf(volume, staging).await;
        }
        let r = RootRef::parse_id(volume)?;
        let done = self.state.lock().unwrap().volumes.get(volume).and_then(|v| v.staging.clone());
        if done.as_deref() == Some(staging) && is_mounted(staging) {
            return Ok(());
        }
        std::fs::create_dir_all(staging).map_err(io(staging))?;
        let key = self.bind_root(&r, staging).await?;
        {
            let mut st = self.state.lock().unwrap();
            let v = st.volumes.entry(volume.to_string()).or_default();
            v.root = key;
            v.staging = Some(staging.to_path_buf());
        }
        self.save().await
    }

    /// Stores what a leaf volume holds now as a new version of `fileset`,
    /// read through its mount as its pod sees it (files written while this
    /// runs may or may not be in it: promote when the writer is done). A
    /// fileset that does not exist is created with the layout and policies
    /// of the leaf's root.
    pub async fn promote(&self, volume: &str, fileset: &str) -> Result<ms::Version, NodeError> {
        // Held while the leaf is read: it cannot be unstaged under the read.
        let _turn = self.turns.take(volume)?;
        let record = self.state.lock().unwrap().leaves.get(volume).cloned();
        let Some(record) = record.filter(|r| is_mounted(&r.mountpoint)) else {
            return Err(NodeError::NotStaged(volume.to_string()));
        };
        let failed = |source: FilesetError| NodeError::Fileset { fileset: fileset.to_string(), source };
        let mut master = self.files.master();
        match master.get_fileset(ms::GetFilesetRequest { name: fileset.to_string() }).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {
                let base = master
                    .get_fileset(ms::GetFilesetRequest { name: record.fileset.clone() })
                    .await
                    .map_err(|s| NodeError::Fileset {
                        fileset: record.fileset.clone(),
                        source: FilesetError::Master(s),
                    })?
                    .into_inner()
                    .spec
                    .unwrap_or_default();
                let spec = ms::FilesetSpec { name: fileset.to_string(), ..base };
                self.files.create_fileset(spec, true).await.map_err(failed)?;
            }
            Err(s) => return Err(failed(FilesetError::Master(s))),
        }
        info!(volume, fileset, root = %format!("{}@{}", record.fileset, record.version), "promoting a leaf");
        let v = self.files.put(fileset, &record.mountpoint, &PutOptions::default(), &|_| {}).await.map_err(failed)?;
        info!(volume, fileset, version = v.id, files = v.files, bytes = v.bytes, "leaf promoted");
        Ok(v)
    }

    /// A leaf made by CreateVolume, mounted read-write on `staging`.
    async fn stage_leaf(self: &Arc<Self>, volume: &str, staging: &Path) -> Result<(), NodeError> {
        let meta = self.leaf_meta(volume)?.ok_or_else(|| NodeError::NoVolume(volume.to_string()))?;
        let mounted = self.state.lock().unwrap().leaves.get(volume).map(|l| l.mountpoint.clone());
        match mounted {
            Some(m) if m == staging && is_mounted(staging) => return Ok(()),
            Some(m) if m != staging => return Err(NodeError::InUse(volume.to_string())),
            _ => {}
        }
        let record = LeafRecord {
            fileset: meta.fileset,
            version: meta.version,
            dir: self.leaf_dir(volume),
            mountpoint: staging.to_path_buf(),
            capacity: meta.capacity,
            init: None,
            ephemeral: false,
        };
        self.mount_leaf(volume, record).await?;
        self.state.lock().unwrap().volumes.entry(volume.to_string()).or_default().staging = Some(staging.to_path_buf());
        self.save().await
    }

    /// NodeUnstageVolume.
    pub async fn unstage(&self, volume: &str, staging: &Path) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        let _one = self.ops.lock().await;
        if is_leaf(volume) {
            self.unmount_leaf(volume).await?;
            {
                let mut st = self.state.lock().unwrap();
                if let Some(v) = st.volumes.get_mut(volume) {
                    v.staging = None;
                    if v.targets.is_empty() {
                        st.volumes.remove(volume);
                    }
                }
            }
            return self.save().await;
        }
        mount::unmount(staging)?;
        let key = {
            let mut st = self.state.lock().unwrap();
            let Some(v) = st.volumes.get_mut(volume) else { return Ok(()) };
            v.staging = None;
            let key = v.root.clone();
            if v.targets.is_empty() {
                st.volumes.remove(volume);
            }
            key
        };
        self.release_root(&key, staging).await
    }

    /// NodePublishVolume: a staged volume's staging path (or an inline
    /// volume's root) bound read-only on `target`.
    pub async fn publish(
        self: &Arc<Self>,
        volume: &str,
        target: &Path,
        staging: Option<&Path>,
        inline: Option<&HashMap<String, String>>,
        read_only: bool,
    ) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        let _one = self.ops.lock().await;
        let known = self.state.lock().unwrap().volumes.get(volume).cloned();
        if known.as_ref().is_some_and(|v| v.targets.contains(target)) && is_mounted(target) {
            return Ok(());
        }
        std::fs::create_dir_all(target).map_err(io(target))?;
        match inline {
            Some(attrs) if attrs.get("kind").is_some_and(|k| k == "leaf") => {
                let r = RootRef::from_attributes(attrs)?;
                let capacity = match attrs.get("capacity") {
                    Some(c) => c.parse().map_err(|_| VolumeError::BadAttribute {
                        key: "capacity",
                        reason: format!("{c:?} is not a number of bytes"),
                    })?,
                    None => DEFAULT_LEAF_CAPACITY,
                };
                let open = self.open_version(&r.fileset, r.version_id()).await?;
                use sha2::Digest;
                let dir = self
                    .config
                    .state_dir
                    .join("leaves")
                    .join(format!("inline-{}", hex::encode(&sha2::Sha256::digest(volume.as_bytes())[..8])));
                let record = LeafRecord {
                    fileset: r.fileset.clone(),
                    version: open.id(),
                    dir,
                    mountpoint: target.to_path_buf(),
                    capacity,
                    init: None,
                    ephemeral: true,
                };
                self.mount_leaf(volume, record).await?;
                let mut st = self.state.lock().unwrap();
                let v = st.volumes.entry(volume.to_string()).or_default();
                v.ephemeral = true;
                v.targets.insert(target.to_path_buf());
            }
            Some(attrs) => {
                if attrs.get("kind").is_some_and(|k| k != "root") {
                    return Err(VolumeError::BadAttribute { key: "kind", reason: "root or leaf".into() }.into());
                }
                let r = RootRef::from_attributes(attrs)?;
                let key = self.bind_root(&r, target).await?;
                let mut st = self.state.lock().unwrap();
                let v = st.volumes.entry(volume.to_string()).or_default();
                v.root = key;
                v.ephemeral = true;
                v.targets.insert(target.to_path_buf());
            }
            None => {
                let staging = staging.ok_or(NodeError::Missing("staging_target_path", "required".into()))?;
                let staged = known.and_then(|v| v.staging).is_some_and(|s| s == staging) && is_mounted(staging);
                if !staged {
                    return Err(NodeError::NotStaged(volume.to_string()));
                }
                mount::bind(staging, target, read_only || !is_leaf(volume))?;
                let mut st = self.state.lock().unwrap();
                st.volumes.entry(volume.to_string()).or_default().targets.insert(target.to_path_buf());
            }
        }
        self.save().await
    }

    /// NodeUnpublishVolume.
    pub async fn unpublish(&self, volume: &str, target: &Path) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        let _one = self.ops.lock().await;
        let inline_leaf =
            self.state.lock().unwrap().leaves.get(volume).is_some_and(|l| l.ephemeral && l.mountpoint == target);
        if inline_leaf {
            self.unmount_leaf(volume).await?;
        }
        mount::unmount(target)?;
        let _ = std::fs::remove_dir(target);
        let release = {
            let mut st = self.state.lock().unwrap();
            let Some(v) = st.volumes.get_mut(volume) else { return Ok(()) };
            v.targets.remove(target);
            let (key, ephemeral) = (v.root.clone(), v.ephemeral);
            if v.targets.is_empty() && v.staging.is_none() {
                st.volumes.remove(volume);
            }
            ephemeral.then_some(key)
        };
        self.save().await?;
        match release {
            Some(key) if !inline_leaf => self.release_root(&key, target).await,
            _ => Ok(()),
        }
    }

    /// The filesystem serving a root mount (`fileset@version`).
    pub fn root(&self, key: &str) -> Option<Arc<RootFs>> {
        match self.served.lock().unwrap().get(key).map(|s| &s.fs) {
            Some(ServedFs::Root(fs)) => Some(fs.clone()),
            _ => None,
        }
    }

    /// The filesystem serving leaf volume `volume` on this node.
    pub fn leaf(&self, volume: &str) -> Option<Arc<LeafFs>> {
        match self.served.lock().unwrap().get(&format!("leaf/{volume}")).map(|s| &s.fs) {
            Some(ServedFs::Leaf(fs)) => Some(fs.clone()),
            _ => None,
        }
    }

    /// Every volume this node has staged or published.
    /// Every volume mounted on this node, roots and leaves, by id.
    pub fn volume_ids(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let ids: std::collections::BTreeSet<&String> = st.volumes.keys().chain(st.leaves.keys()).collect();
        ids.into_iter().cloned().collect()
    }

    /// The filesystem of a root volume's mount.
    pub fn volume_root(&self, volume: &str) -> Option<Arc<RootFs>> {
        self.root_of(volume).and_then(|key| self.root(&key))
    }

    /// The volume's root mount key.
    pub fn root_of(&self, volume: &str) -> Option<String> {
        self.state.lock().unwrap().volumes.get(volume).map(|v| v.root.clone())
    }

    /// Whether an operation on `volume` is in progress.
    pub fn volume_busy(&self, volume: &str) -> bool {
        self.turns.is_busy(volume)
    }

    pub fn cache(&self) -> &Arc<NodeCache> {
        &self.cache
    }
}

fn kept(r: &RootRecord) -> Kept {
    Kept { fileset: r.fileset.clone(), version: r.version, mountpoint: r.mountpoint.clone(), init: r.init }
}
