//! Reporting to the master: register with the server's address and topology,
//! send the full inventory, then heartbeat every second with free space,
//! read bandwidth and the stripes stored, removed or quarantined since the
//! last beat (a quarantine sends a beat at once).
//! When the master answers that it does not know the server (it restarted),
//! everything starts over; the master rebuilds its index from these reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_proto::cs;
use tessera_proto::ms;
use tessera_proto::ms::registry_client::RegistryClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::service::Shared;
use crate::stats::{DEFAULT_WINDOW_SECS, device_bandwidth};
use crate::store::Change;
use tessera_core::ids::StripeId;

/// Heartbeat period.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Stripes per inventory message.
const BATCH: usize = 10_000;

/// Who this server is, for the master.
#[derive(Debug, Clone)]
pub struct Identity {
    pub server_id: String,
    pub address: String,
    pub topology: ms::Topology,
}

/// Runs until `stop` turns true.
pub async fn run(shared: Arc<Shared>, master: String, id: Identity, mut stop: watch::Receiver<bool>) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{master}")) {
        Ok(e) => e.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10)),
        Err(e) => {
            warn!(%master, error = %e, "invalid master address; not registering");
            return;
        }
    };
    let client = RegistryClient::new(endpoint.connect_lazy());
    // Quarantined stripes not yet acknowledged by a master: they outlive a
    // failed heartbeat and a re-registration (an inventory only omits them).
    let mut unreported = Vec::new();
    loop {
        let session = session(&shared, client.clone(), &id, &mut unreported);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = session => {
                if let Err(e) = r {
                    warn!(%master, error = %e, "lost the master; registering again");
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

/// Keeps the quarantined stripes of `changes` in `unreported` (once each).
fn note_quarantined(changes: &[(StripeId, Change)], unreported: &mut Vec<StripeId>) {
    for (s, c) in changes {
        if *c == Change::Quarantined && !unreported.contains(s) {
            unreported.push(*s);
        }
    }
}

/// One registration: returns when the master asks to register again, or on error.
async fn session(
    shared: &Shared,
    mut client: RegistryClient<Channel>,
    id: &Identity,
    unreported: &mut Vec<StripeId>,
) -> Result<(), tonic::Status> {
    let (free, total) = space(shared);
    let epoch = client
        .register(ms::RegisterRequest {
            server_id: id.server_id.clone(),
            address: id.address.clone(),
            topology: Some(id.topology.clone()),
            free_bytes: free,
            total_bytes: total,
        })
        .await?
        .into_inner()
        .master_epoch;
    // Changes before the snapshot are in it; changes after go in heartbeats.
    note_quarantined(&shared.store.take_changes().0, unreported);
    let all: Vec<cs::StripeRef> = shared.store.inventory().into_iter().map(|(s, _, _)| wire(&s)).collect();
    let count = all.len();
    let mut batches: Vec<ms::InventoryReport> = all
        .chunks(BATCH)
        .map(|c| ms::InventoryReport {
            server_id: id.server_id.clone(),
            master_epoch: epoch.clone(),
            stripes: c.to_vec(),
            complete: false,
        })
        .collect();
    if batches.is_empty() {
        batches.push(ms::InventoryReport {
            server_id: id.server_id.clone(),
            master_epoch: epoch.clone(),
            ..Default::default()
        });
    }
    batches.last_mut().expect("at least one").complete = true;
    client.report_inventory(futures::stream::iter(batches)).await?;
    info!(server = %id.server_id, stripes = count, "registered with the master");
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A quarantined stripe is news the master must have at once: it
        // starts the rebuild.
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.quarantined.notified() => {}
        }
        let (changes, overflowed) = shared.store.take_changes();
        note_quarantined(&changes, unreported);
        if overflowed {
            return Ok(());
        }
        let (free, total) = space(shared);
        let now = Instant::now();
        let read: f64 = shared.reads.iter().map(|w| w.rate(now, DEFAULT_WINDOW_SECS)).sum();
        // The slowest data dir that read enough to tell: one slow disk among
        // fast ones must stand out, not be averaged away.
        let device = shared
            .reads
            .iter()
            .zip(&shared.read_busy)
            .filter_map(|(r, b)| device_bandwidth(r.rate(now, DEFAULT_WINDOW_SECS), b.rate(now, DEFAULT_WINDOW_SECS)))
            .reduce(f64::min)
            .unwrap_or(0.0);
        let req = ms::HeartbeatRequest {
            server_id: id.server_id.clone(),
            master_epoch: epoch.clone(),
            free_bytes: free,
            total_bytes: total,
            read_bytes_per_sec: read,
            device_bytes_per_sec: device,
            added: changes.iter().filter(|c| c.1 == Change::Stored).map(|c| wire(&c.0)).collect(),
            removed: changes
                .iter()
                .filter(|c| c.1 == Change::Removed)
                .map(|c| wire(&c.0))
                .chain(unreported.iter().map(wire))
                .collect(),
            quarantined: unreported.iter().map(wire).collect(),
        };
        if client.heartbeat(req).await?.into_inner().reregister {
            return Ok(());
        }
        // Accepted: the master has them.
        unreported.clear();
    }
}

fn wire(s: &StripeId) -> cs::StripeRef {
    cs::StripeRef { item: s.item.as_bytes().to_vec().into(), index: u32::from(s.index) }
}

fn space(shared: &Shared) -> (u64, u64) {
    shared.store.dirs().iter().filter_map(|d| d.space().ok()).fold((0, 0), |(f, t), (df, dt)| (f + df, t + dt))
}
