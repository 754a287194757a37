//! Chunkservers: registration, inventory, heartbeats, liveness, and what
//! Kubernetes says of their nodes.

use std::collections::HashSet;
use std::time::Instant;

use tessera_core::health::{FailureCounter, is_live};
use tessera_core::ids::{ServerId, StripeId};
use tessera_core::placement::Topology;
use tracing::{info, warn};

use super::{Loss, Master, NodeInfo, Server, State, add_location, forget_location};

/// A chunkserver introducing itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub server_id: ServerId,
    pub address: String,
    pub topology: Topology,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// What a chunkserver reports every second.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub server_id: ServerId,
    pub epoch: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub read_bytes_per_sec: f64,
    /// Its devices' bandwidth while reading, when it read enough to tell.
    pub device_bytes_per_sec: Option<f64>,
    /// Stripes stored since the last accepted heartbeat.
    pub added: Vec<StripeId>,
    /// Stripes deleted since then.
    pub removed: Vec<StripeId>,
    /// Stripes it took out of service because a block failed its checksum.
    pub quarantined: Vec<StripeId>,
}

impl Master {
    /// Returns the master's epoch, which the server's reports carry.
    pub fn register(&self, r: &Registration, now: Instant) -> String {
        let mut st = self.state.lock().unwrap();
        let node = if r.topology.node.is_empty() { r.server_id.to_string() } else { r.topology.node.clone() };
        let policy = self.config.failure;
        let epoch = st.epoch.clone();
        let State { servers, locations, .. } = &mut *st;
        match servers.get_mut(&r.server_id) {
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
                    forget_location(locations, &stripe, &r.server_id);
                }
                s.address = r.address.clone();
                s.topology = r.topology.clone();
                s.free_bytes = r.free_bytes;
                s.total_bytes = r.total_bytes;
                // A restarted server may have another disk: measure anew.
                s.device_bytes_per_sec = None;
                s.last_seen = now;
                s.live = true;
            }
            None => {
                servers.insert(
                    r.server_id.clone(),
                    Server {
                        id: r.server_id.clone(),
                        address: r.address.clone(),
                        topology: r.topology.clone(),
                        free_bytes: r.free_bytes,
                        total_bytes: r.total_bytes,
                        read_bytes_per_sec: 0.0,
                        device_bytes_per_sec: None,
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
            && let Some(s) = st.servers.get_mut(&r.server_id)
        {
            s.topology = info.topology;
            s.maintenance = info.maintenance;
        }
        info!(server = %r.server_id, address = %r.address, "chunkserver registered");
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
                add_location(locations, stripe, &s.id);
            }
        }
        true
    }

    /// A heartbeat; `false` asks the server to register again.
    pub fn heartbeat(&self, h: &Heartbeat, now: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.epoch != h.epoch {
            return false;
        }
        let State { servers, locations, .. } = &mut *st;
        let Some(s) = servers.get_mut(&h.server_id) else { return false };
        // Back after being given up on (frozen, or cut off): the outage was
        // counted when it was noticed, and it is over.
        s.live = true;
        s.outage_counted = false;
        s.last_seen = now;
        s.free_bytes = h.free_bytes;
        s.total_bytes = h.total_bytes;
        s.read_bytes_per_sec = h.read_bytes_per_sec;
        // A quiet window tells nothing of the device: keep the last figure
        // (the status lets it go once it is old).
        if let Some(b) = h.device_bytes_per_sec {
            s.device_bytes_per_sec = Some((b, now));
        }
        for stripe in &h.added {
            if s.stripes.insert(*stripe) {
                add_location(locations, stripe, &h.server_id);
            }
        }
        for stripe in &h.removed {
            if s.stripes.remove(stripe) {
                forget_location(locations, stripe, &h.server_id);
            }
        }
        for stripe in &h.quarantined {
            st.stripe_lost(*stripe, Loss::Corrupt, &h.server_id);
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
    pub fn expire_servers(&self, now: Instant) -> Vec<ServerId> {
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
}

impl State {
    /// A stripe its server has taken out of service for good.
    fn stripe_lost(&mut self, stripe: StripeId, loss: Loss, server: &ServerId) {
        let fileset = match self.items.get(&stripe.item) {
            Some(info) => info.fileset.clone(),
            // Written but not yet committed: recorded all the same, so the
            // commit does not locate it (and the item is rebuilt).
            None => match self.sessions.values().find(|s| s.items.contains_key(&stripe.item)) {
                Some(session) => session.fileset.clone(),
                None if self.committing.contains_key(&stripe.item) => self.committing[&stripe.item].clone(),
                None => {
                    warn!(%stripe, %server, "a stripe of no version or write was quarantined");
                    return;
                }
            },
        };
        // A server repeats a quarantine until a heartbeat carrying it is
        // accepted: count each once.
        if self.gone.entry(stripe.item).or_default().insert(stripe.index, loss) == Some(loss) {
            return;
        }
        warn!(%stripe, %fileset, %server, ?loss, "stripe lost for good; rebuilding it");
        if loss == Loss::Corrupt {
            self.losses.entry(fileset).or_default().corrupt_found += 1;
        }
    }
}
