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

mod leaves;
mod serving;
mod volumes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tessera_client::fileset::{FilesetClient, FilesetError};
use tessera_core::read_plan::ReadMode;

use crate::cache::NodeCache;
use crate::fuse::abi::InitState;
use crate::fuse::mount::{self, MountError};
use crate::keeper::{KeeperClient, KeeperError};
use crate::leaffs::LeafFs;
use crate::metrics::Metrics;
use crate::passthrough::FileStore;
use crate::peers::{Discovery, Peers};
use crate::rootfs::RootFs;
use crate::state::{NodeState, RootRecord, StateError};
use crate::turns::{RootLocks, Turns};
use crate::volume::VolumeError;

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
    /// Volumes share root mounts: who mounts, joins or releases a root (or
    /// opens a leaf's base) holds its lock; other roots go on.
    root_locks: RootLocks,
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
            root_locks: RootLocks::default(),
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

    // ---- Leaves ----

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
