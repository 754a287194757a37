//! The master: fileset and version records, placement of new items, the
//! soft-state index of where every stripe lives, chunkserver health, repair
//! and garbage collection.
//!
//! Rooms: [`records`] (the durable records), [`store`] (where they are kept),
//! [`state`] (the in-memory model and every decision on it, in domain
//! types), [`wire`] (gRPC messages to and from those types),
//! [`maintenance`] (the background loop that acts on the decisions:
//! liveness, repair, deletion, orphan collection), [`service`] (gRPC),
//! [`metrics`] (Prometheus) and [`server`] (wiring). `tessera master` and
//! `tessera local` run it in its own process on the redb store; the operator
//! embeds it with a store of Kubernetes objects. Nothing here depends on
//! Kubernetes.

pub mod cli;
pub mod maintenance;
pub mod metrics;
pub mod records;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod wire;

use std::time::Duration;

use tessera_core::health::FailurePolicy;
use tessera_core::placement::PlacementError;

pub use state::Master;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("fileset {0:?} not found")]
    FilesetNotFound(String),
    #[error("fileset {0:?} already exists with a different spec")]
    FilesetExists(String),
    #[error("fileset {fileset:?} has no version {version}")]
    VersionNotFound { fileset: String, version: u64 },
    #[error("fileset {0:?} has no versions yet")]
    NoVersions(String),
    #[error("write session {0:?} is unknown or expired (the master may have restarted); start the write again")]
    SessionNotFound(String),
    #[error("item {item} was not allocated in write session {session}")]
    ItemNotAllocated { session: String, item: String },
    #[error("invalid {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    /// Stripes the writer could not store, and any their servers have
    /// quarantined since, leave fewer than the fileset's minimum.
    #[error("item {item} has {stored} of its {n} stripes stored and sound; the fileset needs at least {min}")]
    TooFewStripes { item: String, stored: usize, n: usize, min: usize },
    #[error("version {version} of {fileset:?} is pinned by {holders:?}")]
    Pinned { fileset: String, version: u64, holders: Vec<String> },
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("no chunkserver can take stripes of {needed} bytes: {reason}")]
    NoSpace { needed: u64, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl From<MasterError> for tonic::Status {
    fn from(e: MasterError) -> Self {
        use tonic::Code;
        let code = match &e {
            MasterError::FilesetNotFound(_) | MasterError::VersionNotFound { .. } | MasterError::NoVersions(_) => {
                Code::NotFound
            }
            MasterError::FilesetExists(_) => Code::AlreadyExists,
            MasterError::SessionNotFound(_) | MasterError::ItemNotAllocated { .. } => Code::FailedPrecondition,
            // The request was well formed; the cluster could not store enough.
            MasterError::TooFewStripes { .. } => Code::FailedPrecondition,
            MasterError::InvalidSpec { .. } => Code::InvalidArgument,
            MasterError::Pinned { .. } => Code::FailedPrecondition,
            MasterError::Placement(_) => Code::FailedPrecondition,
            MasterError::NoSpace { .. } => Code::ResourceExhausted,
            // The store may answer again (the apiserver, a full disk freed):
            // the caller may retry.
            MasterError::Store(_) => Code::Unavailable,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Tunables of the master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// A chunkserver not heard from for this long is not live.
    pub heartbeat_timeout: Duration,
    /// After a start, how long the master waits for chunkservers to report
    /// before it trusts its location index: status says it is relearning,
    /// and no repair is planned.
    pub relearn_window: Duration,
    /// A write session not used for this long ends; its items become orphans.
    pub session_lease: Duration,
    /// Stripes no version and no session owns are deleted after this long.
    pub orphan_grace: Duration,
    /// Items of low-availability filesets (and high-availability ones with
    /// margin left) wait this long for lost stripes to return.
    pub repair_grace: Duration,
    /// Bytes per second repair may read, across all repairs.
    pub repair_bytes_per_sec: u64,
    /// Items rebuilt at once.
    pub repair_parallelism: usize,
    pub failure: FailurePolicy,
    /// How often the maintenance loop runs.
    pub tick: Duration,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(5),
            relearn_window: Duration::from_secs(5),
            session_lease: Duration::from_secs(120),
            orphan_grace: Duration::from_secs(600),
            repair_grace: Duration::from_secs(15 * 60),
            repair_bytes_per_sec: 256 << 20,
            repair_parallelism: 4,
            failure: FailurePolicy::default(),
            tick: Duration::from_millis(500),
        }
    }
}
