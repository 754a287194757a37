//! The master's background loop: notices chunkservers that stopped reporting
//! and write sessions that expired, runs the repairs the model decides on
//! (rate-limited, in the repair request class), deletes stripes that
//! deleted versions or crashed writers left behind, and asks chunkservers to
//! verify stripes readers found corrupt.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_client::{ItemLocation, StripeClient};
use tessera_core::ids::StripeId;
use tessera_proto::cs;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::Master;
use crate::state::{Deletion, RepairJob};

/// Deletions running at once.
const DELETE_PARALLELISM: usize = 16;

/// Work the gRPC handlers hand to the loop.
#[derive(Debug)]
pub enum Chore {
    Delete(Vec<Deletion>),
    /// Ask the server at `address` to verify a stripe a reader found corrupt.
    Verify {
        stripe: StripeId,
        address: String,
    },
}

/// Queues chores for the loop to carry out.
#[derive(Debug, Clone)]
pub struct Chores {
    tx: mpsc::UnboundedSender<Chore>,
}

impl Chores {
    pub fn delete(&self, d: Vec<Deletion>) {
        if !d.is_empty() {
            let _ = self.tx.send(Chore::Delete(d));
        }
    }

    pub fn verify(&self, stripe: StripeId, address: String) {
        let _ = self.tx.send(Chore::Verify { stripe, address });
    }
}

pub fn chores() -> (Chores, mpsc::UnboundedReceiver<Chore>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Chores { tx }, rx)
}

/// Runs until `stop` turns true.
pub async fn run(
    master: Arc<Master>,
    client: Arc<StripeClient>,
    mut chores: mpsc::UnboundedReceiver<Chore>,
    mut stop: watch::Receiver<bool>,
) {
    let repairs = Arc::new(Semaphore::new(master.config.repair_parallelism.max(1)));
    let deletes = Arc::new(Semaphore::new(DELETE_PARALLELISM));
    // Many readers may hit one bad stripe: one verify of it at a time, and
    // few verifies at all (each reads a whole stripe).
    let verifying: Arc<std::sync::Mutex<HashSet<(StripeId, String)>>> = Arc::default();
    let verifies = Arc::new(Semaphore::new(VERIFY_PARALLELISM));
    let limiter = Arc::new(RateLimiter::new(master.config.repair_bytes_per_sec));
    // A finished repair frees a slot: plan the next one at once rather than
    // at the next tick, so repair throughput is not bounded by the tick.
    let repaired = Arc::new(Notify::new());
    let mut tick = tokio::time::interval(master.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        enum Wake {
            Tick,
            Repaired,
            Delete(Vec<Deletion>),
        }
        let wake = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => Wake::Tick,
            _ = repaired.notified() => Wake::Repaired,
            c = chores.recv() => match c {
                Some(Chore::Delete(d)) => Wake::Delete(d),
                Some(Chore::Verify { stripe, address }) => {
                    let key = (stripe, address);
                    if verifying.lock().unwrap().insert(key.clone()) {
                        let (client, verifying, verifies) = (client.clone(), verifying.clone(), verifies.clone());
                        tokio::spawn(async move {
                            let _permit = verifies.acquire_owned().await.expect("never closed");
                            verify(&client, key.0, &key.1).await;
                            verifying.lock().unwrap().remove(&key);
                        });
                    }
                    continue;
                }
                None => Wake::Tick,
            },
        };
        let now = Instant::now();
        let plan = !matches!(wake, Wake::Delete(_));
        let work = match wake {
            Wake::Delete(d) => d,
            Wake::Repaired => Vec::new(),
            Wake::Tick => {
                master.expire_servers(now);
                let expired = master.expire_sessions(now);
                if expired > 0 {
                    info!(sessions = expired, "write sessions expired; their stripes will be collected");
                }
                master.collect_orphans(now)
            }
        };
        if plan {
            let free = repairs.available_permits();
            if free > 0 {
                for job in master.plan_repairs(now, free, &mut rand::rng()) {
                    let permit = repairs.clone().try_acquire_owned().expect("planned within the free slots");
                    let (master, client, limiter, repaired) =
                        (master.clone(), client.clone(), limiter.clone(), repaired.clone());
                    tokio::spawn(async move {
                        let ok = repair(&client, &job, &limiter).await;
                        master.repair_done(&job, ok);
                        drop(permit);
                        if ok {
                            repaired.notify_one();
                        }
                    });
                }
            }
        }
        for d in work {
            let permit = deletes.clone().acquire_owned().await.expect("never closed");
            let (master, client) = (master.clone(), client.clone());
            tokio::spawn(async move {
                if delete(&client, &d).await {
                    master.deleted(&d);
                }
                drop(permit);
            });
        }
    }
}

async fn repair(client: &StripeClient, job: &RepairJob, limiter: &RateLimiter) -> bool {
    limiter.take(job.len).await;
    let loc = ItemLocation {
        item: job.item,
        layout: job.layout,
        item_len: job.len,
        servers: job.sources.iter().map(|s| s.as_ref().map(|s| s.address.clone())).collect(),
    };
    let targets: Vec<(usize, String)> = job.targets.iter().map(|t| (t.index as usize, t.address.clone())).collect();
    match client.rebuild_stripes(&loc, &targets).await {
        Ok(()) => true,
        Err(e) => {
            warn!(item = %job.item, error = %e, "repair failed; it will be retried");
            false
        }
    }
}

/// Asks a chunkserver to check a stripe a reader found corrupt. If it fails
/// there the server quarantines it and its next heartbeat (sent at once)
/// starts the rebuild; nothing else is needed here.
async fn verify(client: &StripeClient, stripe: StripeId, address: &str) {
    let Ok(server) = client.server(address) else { return };
    let req = cs::VerifyStripeRequest {
        stripe: Some(cs::StripeRef { item: stripe.item.as_bytes().to_vec().into(), index: stripe.index as u32 }),
    };
    match tokio::time::timeout(VERIFY_TIMEOUT, server.client().verify_stripe(req)).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.intact {
                info!(%stripe, server = %address, "a stripe reported corrupt verified intact (damaged in transit)");
            } else {
                warn!(%stripe, server = %address, quarantined = r.quarantined, "a stripe reported corrupt failed its verify");
            }
        }
        Ok(Err(e)) => debug!(%stripe, server = %address, error = %e, "verify failed"),
        Err(_) => warn!(%stripe, server = %address, "verify got no answer within {VERIFY_TIMEOUT:?}"),
    }
}

/// A verify reads one stripe (a few MiB at most) in the repair class.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Verifies running at once.
const VERIFY_PARALLELISM: usize = 4;

async fn delete(client: &StripeClient, d: &Deletion) -> bool {
    let Ok(server) = client.server(&d.address) else { return false };
    let req = cs::DeleteStripeRequest {
        stripe: Some(cs::StripeRef { item: d.stripe.item.as_bytes().to_vec().into(), index: d.stripe.index as u32 }),
    };
    match tokio::time::timeout(Duration::from_secs(10), server.client().delete_stripe(req)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            debug!(stripe = %d.stripe, server = %d.address, error = %e, "delete failed");
            false
        }
        Err(_) => false,
    }
}

/// A token bucket over bytes, shared by all repairs.
#[derive(Debug)]
struct RateLimiter {
    bytes_per_sec: u64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    fn new(bytes_per_sec: u64) -> Self {
        Self { bytes_per_sec, next: tokio::sync::Mutex::new(tokio::time::Instant::now()) }
    }

    async fn take(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let at = {
            let mut next = self.next.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_repair_limiter_spaces_reads_to_its_rate() {
        let limiter = RateLimiter::new(10 << 20);
        let start = tokio::time::Instant::now();
        // The first take is free; each later one waits for the bytes before it.
        for _ in 0..5 {
            limiter.take(5 << 20).await;
        }
        let waited = start.elapsed();
        assert_eq!(waited, Duration::from_secs(2), "4 x 5 MiB at 10 MiB/s");
        let unlimited = RateLimiter::new(0);
        let t = tokio::time::Instant::now();
        unlimited.take(1 << 40).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
