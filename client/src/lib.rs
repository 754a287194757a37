//! The stripe client: writes items to chunkservers and reads any byte range of
//! an item back, bit-exact, in one of three read modes.
//!
//! Used by the CLI, the CSI node plugin, the operator (repair) and jobs. It
//! keeps one HTTP/2 connection per chunkserver, what it has seen of each
//! server's latency and bandwidth, and counters of what hedging did. Which
//! stripes to fetch and when is decided by [`tessera_core::read_plan`]; this
//! crate performs the fetches, verifies every block's CRC32C, cancels losers
//! and decodes.

mod connect;
mod fetch;
pub mod fileset;
mod read;
mod stats;
mod write;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tessera_core::codec::{CodecError, ReedSolomon};
use tessera_core::ids::{ItemId, StripeId};
use tessera_core::latency::HedgePolicy;
use tessera_core::layout::{Layout, LayoutError};
use tessera_core::read_plan::ReadMode;
use tessera_proto::cs;

pub use connect::ServerHandle;
pub use read::ItemData;
pub use stats::{ClientStats, ReadReport, ServerStats};

/// Request class of this client's reads and writes, as the chunkserver sees it.
pub type RequestClass = cs::RequestClass;

/// Tunables of a stripe client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Give up on one stripe fetch after this long and treat it as failed
    /// (normal reads fall back to a degraded read after it).
    pub fetch_timeout: Duration,
    pub connect_timeout: Duration,
    pub hedge: HedgePolicy,
    /// Stripes beyond k an accelerated read asks for at once (at least one
    /// is always asked); `None` means all m, so every stripe of the item.
    /// Fewer costs the servers less where they share CPUs or disks.
    pub accelerated_extra: Option<usize>,
    pub class: RequestClass,
    /// Bytes per write message.
    pub write_chunk: usize,
    /// Give up on one stripe write after this long (a frozen server): the
    /// stripe goes elsewhere or, if enough others are stored, is left for
    /// repair.
    pub write_timeout: Duration,
}

impl ClientConfig {
    /// Stripes an accelerated read of a RS(k, m) item asks for at once.
    pub fn accelerated_stripes(&self, k: usize, m: usize) -> usize {
        k + self.accelerated_extra.map_or(m, |e| e.clamp(1, m))
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            hedge: HedgePolicy::default(),
            accelerated_extra: None,
            class: RequestClass::Serving,
            write_chunk: 1 << 20,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Where an item's stripes live: the server address of each stripe index
/// (`None` when a stripe has no reachable copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLocation {
    pub item: ItemId,
    pub layout: Layout,
    pub item_len: u64,
    pub servers: Vec<Option<String>>,
}

impl ItemLocation {
    pub fn stripe(&self, index: usize) -> StripeId {
        StripeId::new(self.item, index as u16)
    }
}

/// Why one stripe could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no location")]
    NoLocation,
    #[error("{server}: {code:?}: {message}")]
    Status { server: String, code: tonic::Code, message: String },
    #[error("{server}: block {block} failed its checksum in transit")]
    Checksum { server: String, block: usize },
    #[error("{server}: protocol violation: {detail}")]
    Protocol { server: String, detail: String },
    #[error("{server}: no answer within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("item {item} is unreadable: {reachable} of the {needed} stripes needed are reachable; missing: {}", format_missing(.missing))]
    Unreadable { item: ItemId, needed: usize, reachable: usize, missing: Vec<(StripeId, FetchError)> },
    #[error("writing stripe {stripe} to {server}: {code:?}: {message}")]
    Write { stripe: StripeId, server: String, code: tonic::Code, message: String },
    #[error("item {item}: {stored} stripes stored, {needed} needed; {}", format_failures(.failures))]
    TooFewStored { item: ItemId, stored: usize, needed: usize, failures: Vec<ClientError> },
    #[error("item {item} needs {expected} stripe locations, got {got}")]
    Locations { item: ItemId, expected: usize, got: usize },
    #[error("invalid chunkserver address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("range {start}..{end} is outside item {item} of {len} bytes")]
    Range { item: ItemId, start: u64, end: u64, len: u64 },
}

fn format_failures(f: &[ClientError]) -> String {
    f.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

impl ClientError {
    /// The chunkservers whose writes failed, for a writer to avoid.
    pub fn failed_servers(&self) -> Vec<&str> {
        match self {
            ClientError::Write { server, .. } => vec![server],
            ClientError::TooFewStored { failures, .. } => failures.iter().flat_map(|f| f.failed_servers()).collect(),
            _ => vec![],
        }
    }
}

fn format_missing(m: &[(StripeId, FetchError)]) -> String {
    m.iter().map(|(s, e)| format!("stripe {s} ({e})")).collect::<Vec<_>>().join(", ")
}

/// A client of a set of chunkservers.
#[derive(Debug)]
pub struct StripeClient {
    config: ClientConfig,
    servers: RwLock<HashMap<String, Arc<ServerHandle>>>,
    codecs: RwLock<HashMap<(usize, usize), Arc<ReedSolomon>>>,
    counters: stats::Counters,
}

impl StripeClient {
    pub fn new(config: ClientConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            servers: RwLock::new(HashMap::new()),
            codecs: RwLock::new(HashMap::new()),
            counters: stats::Counters::default(),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The handle of the chunkserver at `addr` (`host:port` or
    /// `unix:///path`), connecting lazily on first use.
    pub fn server(&self, addr: &str) -> Result<Arc<ServerHandle>, ClientError> {
        if let Some(s) = self.servers.read().unwrap().get(addr) {
            return Ok(s.clone());
        }
        let handle = Arc::new(ServerHandle::connect(addr, &self.config)?);
        Ok(self.servers.write().unwrap().entry(addr.to_string()).or_insert(handle).clone())
    }

    /// The codec for RS(k, m), built once per shape.
    pub(crate) fn codec(&self, k: usize, m: usize) -> Arc<ReedSolomon> {
        if let Some(c) = self.codecs.read().unwrap().get(&(k, m)) {
            return c.clone();
        }
        // Layouts were validated, so the shape is within the codec's limits.
        let c = Arc::new(ReedSolomon::new(k, m).expect("a valid layout has a valid code"));
        self.codecs.write().unwrap().entry((k, m)).or_insert(c).clone()
    }

    /// Encodes `data` (at most one item's capacity) and writes its n stripes
    /// to `servers` (one per stripe, in stripe order) in parallel. Returns
    /// when every stripe is durable.
    pub async fn write_item(
        &self,
        item: ItemId,
        layout: Layout,
        data: Bytes,
        servers: &[String],
    ) -> Result<ItemLocation, ClientError> {
        write::write_item(self, item, layout, data, servers, layout.n()).await
    }

    /// As [`Self::write_item`], but `servers` may have "" for stripes no
    /// server was placed for, and the write succeeds once at least `min`
    /// stripes are durable (a degraded write). The location names the
    /// stripes stored; the others are the master's to rebuild.
    pub async fn write_item_degraded(
        &self,
        item: ItemId,
        layout: Layout,
        data: Bytes,
        servers: &[String],
        min: usize,
    ) -> Result<ItemLocation, ClientError> {
        write::write_item(self, item, layout, data, servers, min).await
    }

    /// Rebuilds the stripes `targets` names ((index, server address)) of an
    /// item from its other stripes and writes them there.
    pub async fn rebuild_stripes(&self, loc: &ItemLocation, targets: &[(usize, String)]) -> Result<(), ClientError> {
        write::rebuild_stripes(self, loc, targets).await
    }

    /// Reads `range` of an item in `mode`, returning the bytes and what the
    /// read did.
    pub async fn read(
        &self,
        loc: &ItemLocation,
        range: Range<u64>,
        mode: ReadMode,
    ) -> Result<(ItemData, ReadReport), ClientError> {
        read::read(self, loc, range, mode, &self.config.hedge).await
    }

    /// As [`StripeClient::read`], hedging by `hedge` instead of the client's
    /// own policy (a fileset's readers follow its Priority's read policy).
    pub async fn read_with(
        &self,
        loc: &ItemLocation,
        range: Range<u64>,
        mode: ReadMode,
        hedge: &HedgePolicy,
    ) -> Result<(ItemData, ReadReport), ClientError> {
        read::read(self, loc, range, mode, hedge).await
    }

    /// Counters and per-server latency seen so far.
    pub fn stats(&self) -> ClientStats {
        let servers = self.servers.read().unwrap();
        let mut per: Vec<ServerStats> = servers.values().map(|s| s.stats()).collect();
        per.sort_by(|a, b| a.addr.cmp(&b.addr));
        self.counters.snapshot(per)
    }
}

/// The client's futures must be `Send` to run on multi-threaded runtimes and
/// in spawned tasks; this fails to compile if one stops being so.
#[allow(dead_code)]
fn futures_are_send(c: &StripeClient, loc: &ItemLocation) {
    fn assert_send<T: Send>(_: T) {}
    assert_send(c.read(loc, 0..1, ReadMode::Normal));
    assert_send(c.rebuild_stripes(loc, &[]));
    assert_send(c.write_item(loc.item, loc.layout, Bytes::new(), &[]));
}

#[cfg(test)]
mod tests {
    use super::ClientConfig;

    #[test]
    fn accelerated_reads_ask_for_k_plus_between_one_and_m_stripes() {
        let all = ClientConfig::default();
        assert_eq!(all.accelerated_stripes(6, 3), 9);
        let extra = |e| ClientConfig { accelerated_extra: Some(e), ..Default::default() };
        assert_eq!(extra(1).accelerated_stripes(6, 3), 7);
        assert_eq!(extra(0).accelerated_stripes(6, 3), 7, "always more than k");
        assert_eq!(extra(5).accelerated_stripes(10, 4), 14, "never more than n");
    }
}
