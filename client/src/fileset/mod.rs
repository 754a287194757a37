//! Filesets through the master: create them, write versions from a local
//! tree, and read versions back, whole or by path.
//!
//! A version is written as a packed stream of the tree's file contents in
//! path order, cut into items; each item is placed by the master, encoded and
//! written by the stripe client. The manifest (every entry with its mode,
//! size, times, SHA-256 and place in the stream) is written as items too, and
//! only when all of them are durable does the master publish the version. A
//! reader fetches the manifest once and maps paths to item ranges.

mod put;
mod scan;
mod version;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::ms;
use tessera_proto::ms::master_client::MasterClient;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientError, StripeClient};

pub use put::PutOptions;
pub use scan::{SourceEntry, SourceKind, scan};
pub use version::{CorruptReports, GetStats, OpenVersion};

#[derive(Debug, thiserror::Error)]
pub enum FilesetError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot upload {}: {reason}", .path.display())]
    BadSource { path: PathBuf, reason: String },
    #[error("{}: {reason}", .path.display())]
    BadDestination { path: PathBuf, reason: String },
    #[error("master: {}", .0.message())]
    Master(tonic::Status),
    #[error("cannot reach the master at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(transparent)]
    Stripes(#[from] ClientError),
    #[error("{path:?} changed while it was being read")]
    Changed { path: String },
    #[error("{path:?}: SHA-256 mismatch (the manifest says {expected}, the bytes read give {actual})")]
    Digest { path: String, expected: String, actual: String },
    #[error("manifest of {fileset}@{version}: {reason}")]
    Manifest { fileset: String, version: u64, reason: String },
    #[error("no {path:?} in {fileset}@{version}")]
    NoSuchPath { fileset: String, version: u64, path: String },
    #[error("{path:?} in {fileset}@{version} is a {kind}, not a file")]
    NotAFile { fileset: String, version: u64, path: String, kind: &'static str },
}

impl From<tonic::Status> for FilesetError {
    fn from(s: tonic::Status) -> Self {
        FilesetError::Master(s)
    }
}

/// How long a call to the master may take by default: its calls are
/// metadata only, answered in milliseconds when it is healthy.
pub const DEFAULT_MASTER_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the master and the chunkservers.
#[derive(Debug, Clone)]
pub struct FilesetClient {
    master: MasterClient<Channel>,
    stripes: Arc<StripeClient>,
}

impl FilesetClient {
    /// Connects (lazily) to the master at `addr` (host:port); each call
    /// waits at most [`DEFAULT_MASTER_TIMEOUT`].
    pub fn new(addr: &str, stripes: Arc<StripeClient>) -> Result<Self, FilesetError> {
        Self::with_timeout(addr, stripes, DEFAULT_MASTER_TIMEOUT)
    }

    /// As [`Self::new`], with each call to the master given up after
    /// `timeout` (connecting included: a frozen master accepts connections
    /// but never answers).
    pub fn with_timeout(addr: &str, stripes: Arc<StripeClient>, timeout: Duration) -> Result<Self, FilesetError> {
        let bad = |reason: String| FilesetError::Connect { addr: addr.to_string(), reason };
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .timeout(timeout);
        let master = MasterClient::new(endpoint.connect_lazy()).max_decoding_message_size(256 << 20);
        Ok(Self { master, stripes })
    }

    pub fn master(&self) -> MasterClient<Channel> {
        self.master.clone()
    }

    pub fn stripes(&self) -> &Arc<StripeClient> {
        &self.stripes
    }

    pub async fn create_fileset(&self, spec: ms::FilesetSpec, if_absent: bool) -> Result<ms::Fileset, FilesetError> {
        Ok(self.master().create_fileset(ms::CreateFilesetRequest { spec: Some(spec), if_absent }).await?.into_inner())
    }

    /// Writes the tree at `root` as a new version of `fileset` and publishes
    /// it. `progress` hears of every packed byte written.
    pub async fn put(
        &self,
        fileset: &str,
        root: &std::path::Path,
        options: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ms::Version, FilesetError> {
        put::put(self, fileset, root, options, progress).await
    }

    /// Opens a version (0: the latest): its layout, manifest and item locations.
    pub async fn open(&self, fileset: &str, version: u64) -> Result<OpenVersion, FilesetError> {
        version::open(self, fileset, version).await
    }
}
