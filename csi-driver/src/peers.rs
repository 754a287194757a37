//! Other nodes' caches as a source of units. Before a root fetches a unit
//! from the chunkservers it asks a few node plugins elsewhere
//! (`GET /units/{item}/{unit}` on their control
//! port), which answer from their node cache only, with the CRC32C of each
//! block of the unit as they stored it (header [`CHECKSUMS_HEADER`]); the
//! first answer that passes the check wins. One that fails (the peer's disk
//! or the network damaged it) is counted, logged with the unit's ids and
//! skipped. After a head start the chunkservers race the peers, so a slow or
//! hung peer costs a read at most the head start. Units a node has read are
//! then read by its neighbours without touching the chunkservers.
//!
//! Peers are a fixed list (`--peers`) or every address a DNS name resolves
//! to (`--peer-service`, a headless Service over the node plugin pods),
//! resolved again every 30 s, without this pod's own address.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

use crate::cache::{StoredUnit, UnitKey};
use crate::metrics::Metrics;

/// Response header carrying a unit's block checksums: 8 hex digits each.
pub const CHECKSUMS_HEADER: &str = "x-tessera-block-crc32c";

/// Peers asked per block at most.
const FANOUT: usize = 4;
/// How long a block may take from a peer before the chunkservers are asked.
const WAIT: Duration = Duration::from_millis(200);
/// How long peers have a block to themselves before the chunkservers are
/// asked too: a block from a peer's cache on the same network takes a few
/// milliseconds.
pub const HEAD_START: Duration = Duration::from_millis(20);
/// How often a peer service name is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Where the peers come from.
#[derive(Debug, Clone)]
pub enum Discovery {
    Static(Vec<String>),
    /// `host:port` resolving to every peer; `me` is left out.
    Dns {
        name: String,
        me: Option<IpAddr>,
    },
}

pub struct Peers {
    discovery: Discovery,
    head_start: Duration,
    known: Mutex<(Vec<String>, Option<Instant>)>,
    client: HttpClient<HttpConnector, http_body_util::Empty<Bytes>>,
    metrics: Arc<Metrics>,
}

impl Peers {
    pub fn new(discovery: Discovery, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_head_start(discovery, HEAD_START, metrics)
    }

    /// As [`Peers::new`], giving peers `head_start` before the chunkservers
    /// are asked too.
    pub fn with_head_start(discovery: Discovery, head_start: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(WAIT));
        connector.set_nodelay(true);
        Arc::new(Self {
            discovery,
            head_start,
            known: Mutex::new((Vec::new(), None)),
            client: HttpClient::builder(TokioExecutor::new()).build(connector),
            metrics,
        })
    }

    pub fn head_start(&self) -> Duration {
        self.head_start
    }

    async fn addresses(&self) -> Vec<String> {
        let (name, me) = match &self.discovery {
            Discovery::Static(list) => return list.clone(),
            Discovery::Dns { name, me } => (name.clone(), *me),
        };
        {
            let known = self.known.lock().unwrap();
            if known.1.is_some_and(|at| at.elapsed() < RESOLVE_EVERY) {
                return known.0.clone();
            }
        }
        let found: Vec<String> = match tokio::net::lookup_host(&name).await {
            Ok(addrs) => addrs.filter(|a| Some(a.ip()) != me).map(|a| a.to_string()).collect(),
            Err(e) => {
                warn!(peers = %name, error = %e, "cannot resolve the peer service; using the last answer");
                self.known.lock().unwrap().0.clone()
            }
        };
        let mut known = self.known.lock().unwrap();
        *known = (found.clone(), Some(Instant::now()));
        found
    }

    /// The unit from the first peer that has it cached and whose answer
    /// passes its checksums, if any answers in time. Peers are picked by the
    /// key, so readers of one unit on different nodes ask the same few.
    pub async fn get(&self, key: &UnitKey, len: u64) -> Option<Bytes> {
        let mut addrs = self.addresses().await;
        if addrs.is_empty() {
            return None;
        }
        // Rendezvous order: the same block maps to the same peers everywhere.
        addrs.sort_by_key(|a| std::cmp::Reverse(score(a, key)));
        addrs.truncate(FANOUT);
        let path = format!("/units/{}/{}", key.item, key.unit);
        let mut asks: FuturesUnordered<_> = addrs.iter().map(|a| self.ask(a, &path, key, len)).collect();
        let first = async {
            while let Some(answer) = asks.next().await {
                if let Some(b) = answer {
                    return Some(b);
                }
            }
            None
        };
        tokio::time::timeout(WAIT, first).await.ok().flatten()
    }

    async fn ask(&self, addr: &str, path: &str, key: &UnitKey, len: u64) -> Option<Bytes> {
        let uri: http::Uri = format!("http://{addr}{path}").parse().ok()?;
        let resp = self.client.get(uri).await.map_err(|e| debug!(peer = addr, error = %e, "peer unreachable")).ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let checksums = resp.headers().get(CHECKSUMS_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_checksums);
        let data = resp.into_body().collect().await.ok()?.to_bytes();
        let unit = StoredUnit { data, checksums: checksums.unwrap_or_default() };
        let checked = match unit.data.len() as u64 {
            n if n == len => unit.verify().map_err(|e| e.to_string()),
            n => Err(format!("{n} bytes where the unit has {len}")),
        };
        match checked {
            Ok(()) => Some(unit.data),
            Err(e) => {
                self.metrics.peer_units_rejected.inc();
                warn!(peer = addr, item = %key.item, unit = key.unit, error = %e, "a peer's unit failed its check; skipping the peer");
                None
            }
        }
    }
}

/// A unit's checksums as [`CHECKSUMS_HEADER`] carries them.
pub fn format_checksums(sums: &[u32]) -> String {
    sums.iter().map(|s| format!("{s:08x}")).collect()
}

fn parse_checksums(text: &str) -> Option<Vec<u32>> {
    if !text.len().is_multiple_of(8) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(8).map(|i| u32::from_str_radix(&text[i..i + 8], 16).ok()).collect()
}

/// A stable pseudo-random score of a peer for a block (FNV-1a).
fn score(addr: &str, key: &UnitKey) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(addr.as_bytes());
    eat(key.item.as_bytes());
    eat(&key.unit.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_travel_as_hex_and_bad_headers_are_refused() {
        let sums = vec![0, 1, 0xdead_beef, u32::MAX];
        assert_eq!(parse_checksums(&format_checksums(&sums)), Some(sums));
        assert_eq!(parse_checksums(""), Some(vec![]));
        assert_eq!(parse_checksums("1234567"), None);
        assert_eq!(parse_checksums("1234567g"), None);
    }

    #[test]
    fn every_node_asks_the_same_peers_for_a_unit() {
        let key = |unit| UnitKey { item: tessera_core::ids::ItemId([7; 16]), unit };
        let peers: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:7501")).collect();
        let pick = |k: &UnitKey, order: &[String]| {
            let mut v = order.to_vec();
            v.sort_by_key(|a| std::cmp::Reverse(score(a, k)));
            v.truncate(FANOUT);
            v
        };
        let reversed: Vec<String> = peers.iter().rev().cloned().collect();
        assert_eq!(pick(&key(1), &peers), pick(&key(1), &reversed), "independent of the list's order");
        let spread: std::collections::HashSet<String> = (0..64).map(|b| pick(&key(b), &peers)[0].clone()).collect();
        assert!(spread.len() >= 6, "blocks spread over the peers: {spread:?}");
    }
}
