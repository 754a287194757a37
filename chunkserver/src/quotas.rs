//! Usage quotas and the per-stripe queues they reorder.
//!
//! Class admission ([`crate::classes`]) caps how many requests of each class
//! run at once on the whole server. This module adds the finer rule of seed
//! 001's quota scheduling: each stripe (the atom) runs at most a few requests
//! at once, and the rest wait in that stripe's queue. The bytes every class
//! moves are metered over a sliding window; while a class is above its quota,
//! a waiting request of another class on the same stripe goes first. The
//! ordering itself, with its bound on how often a request may be passed over,
//! is [`tessera_core::quota`]; this is the async shell around it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tessera_core::ids::StripeId;
use tessera_core::quota::{AtomQueue, Quotas, UsageMeter};
use tokio::sync::oneshot;

use crate::classes::RequestClass;

const CLASSES: usize = RequestClass::ALL.len();

/// How the per-stripe queues behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Requests that may run on one stripe at once; more wait in its queue.
    pub per_stripe: u32,
    /// Bytes per second each class may move before it yields (index: class).
    pub quotas: Quotas<CLASSES>,
    /// How many times a waiting request may be passed over.
    pub max_bypass: u32,
    /// The window usage is metered over.
    pub window_ms: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self { per_stripe: 8, quotas: Quotas::default(), max_bypass: 8, window_ms: 5_000 }
    }
}

impl QuotaConfig {
    pub fn set_quota(&mut self, class: RequestClass, bytes_per_sec: Option<u64>) {
        self.quotas.0[class as usize] = bytes_per_sec;
    }
}

#[derive(Debug, Default)]
struct Stripe {
    running: u32,
    queue: AtomQueue<oneshot::Sender<()>>,
}

#[derive(Debug)]
struct Inner {
    meter: UsageMeter<CLASSES>,
    stripes: HashMap<StripeId, Stripe>,
    /// Requests of each class that a later request of another class overtook.
    bypassed: [u64; CLASSES],
}

/// A snapshot of one class's usage against its quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassUsage {
    pub class: RequestClass,
    pub bytes_per_sec: f64,
    pub quota: Option<u64>,
    pub exceeded: bool,
    pub bypassed: u64,
}

/// The per-stripe queues of one chunkserver.
#[derive(Debug)]
pub struct StripeQueues {
    config: QuotaConfig,
    origin: Instant,
    inner: Mutex<Inner>,
}

/// Held while a request works on a stripe; charges its bytes to its class.
#[derive(Debug)]
pub struct StripeTurn {
    queues: Arc<StripeQueues>,
    stripe: StripeId,
    class: RequestClass,
}

impl StripeTurn {
    /// Counts bytes this request moved against its class's quota.
    pub fn charge(&self, bytes: u64) {
        let now = self.queues.now_ms();
        self.queues.lock().meter.record(self.class as usize, bytes, now);
    }
}

impl Drop for StripeTurn {
    fn drop(&mut self) {
        self.queues.release(self.stripe);
    }
}

/// Removes a waiter that gave up, giving back a turn it was handed but never took.
struct Pending<'a> {
    queues: &'a Arc<StripeQueues>,
    stripe: StripeId,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            // After close() no turn can be handed over; one handed before is
            // still readable and must be passed on.
            rx.close();
            if rx.try_recv().is_ok() {
                self.queues.release(self.stripe);
            } else {
                let mut inner = self.queues.lock();
                if let Some(s) = inner.stripes.get_mut(&self.stripe) {
                    s.queue.retain(|tx| !tx.is_closed());
                }
                Self::forget_if_idle(&mut inner, self.stripe);
            }
        }
    }
}

impl Pending<'_> {
    fn forget_if_idle(inner: &mut Inner, stripe: StripeId) {
        if inner.stripes.get(&stripe).is_some_and(|s| s.running == 0 && s.queue.is_empty()) {
            inner.stripes.remove(&stripe);
        }
    }
}

impl StripeQueues {
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config,
            origin: Instant::now(),
            inner: Mutex::new(Inner {
                meter: UsageMeter::new(config.window_ms, 10),
                stripes: HashMap::new(),
                bypassed: [0; CLASSES],
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent across a panic in another holder (every
        // update is a few assignments), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Waits for a turn on `stripe`. Cancel-safe: a dropped wait leaves the
    /// queue as if it never came.
    pub async fn enter(self: &Arc<Self>, stripe: StripeId, class: RequestClass) -> StripeTurn {
        let rx = {
            let mut inner = self.lock();
            let s = inner.stripes.entry(stripe).or_default();
            if s.running < self.config.per_stripe.max(1) && s.queue.is_empty() {
                s.running += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.queue.push(class as usize, tx);
                Some(rx)
            }
        };
        if let Some(rx) = rx {
            let mut pending = Pending { queues: self, stripe, rx: Some(rx) };
            let granted = pending.rx.as_mut().expect("set above").await;
            pending.rx = None;
            // The sender is only dropped after a send or by a retain of closed
            // receivers, and this one is open.
            granted.expect("a waiting turn is either granted or its waiter gone");
        }
        StripeTurn { queues: self.clone(), stripe, class }
    }

    /// Ends a turn on `stripe` and hands it to the waiter the quota rule picks.
    fn release(&self, stripe: StripeId) {
        let now = self.now_ms();
        let mut inner = self.lock();
        let exceeded = self.config.quotas.exceeded(&inner.meter, now);
        let Inner { stripes, bypassed, .. } = &mut *inner;
        let Some(s) = stripes.get_mut(&stripe) else { return };
        s.running = s.running.saturating_sub(1);
        // A waiter that gave up has a closed channel; pick again.
        while let Some(next) = s.queue.pick(&exceeded, self.config.max_bypass, |kind| bypassed[kind] += 1) {
            if next.waiter.send(()).is_ok() {
                s.running += 1;
                break;
            }
        }
        Pending::forget_if_idle(&mut inner, stripe);
    }

    /// Usage of every class against its quota.
    pub fn usage(&self) -> Vec<ClassUsage> {
        let now = self.now_ms();
        let inner = self.lock();
        let exceeded = self.config.quotas.exceeded(&inner.meter, now);
        RequestClass::ALL
            .iter()
            .map(|&class| {
                let i = class as usize;
                ClassUsage {
                    class,
                    bytes_per_sec: inner.meter.rate(i, now),
                    quota: self.config.quotas.0[i],
                    exceeded: exceeded[i],
                    bypassed: inner.bypassed[i],
                }
            })
            .collect()
    }

    /// Requests waiting on any stripe.
    pub fn waiting(&self) -> usize {
        self.lock().stripes.values().map(|s| s.queue.len()).sum()
    }

    /// Requests waiting on any stripe, per class.
    pub fn waiting_by_class(&self) -> [usize; CLASSES] {
        let mut out = [0; CLASSES];
        for s in self.lock().stripes.values() {
            for k in s.queue.kinds() {
                out[k] += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tessera_core::ids::ItemId;

    fn stripe(i: u16) -> StripeId {
        StripeId::new(ItemId([7; 16]), i)
    }

    fn one_at_a_time(repair_quota: Option<u64>) -> Arc<StripeQueues> {
        let mut config = QuotaConfig { per_stripe: 1, ..Default::default() };
        config.set_quota(RequestClass::Repair, repair_quota);
        Arc::new(StripeQueues::new(config))
    }

    /// Queues a request and reports its class on `order` once it has its turn.
    fn waiter(
        q: &Arc<StripeQueues>,
        s: StripeId,
        class: RequestClass,
        order: &tokio::sync::mpsc::UnboundedSender<RequestClass>,
    ) -> tokio::task::JoinHandle<()> {
        let (q, order) = (q.clone(), order.clone());
        tokio::spawn(async move {
            let _turn = q.enter(s, class).await;
            order.send(class).unwrap();
        })
    }

    async fn until_waiting(q: &StripeQueues, n: usize) {
        while q.waiting() != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn over_quota_repair_yields_the_stripe_to_a_waiting_read() {
        let q = one_at_a_time(Some(1 << 20));
        let s = stripe(0);
        let running = q.enter(s, RequestClass::Repair).await;
        running.charge(64 << 20); // far above 1 MiB/s over the window
        assert!(q.usage()[RequestClass::Repair as usize].exceeded);
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let r = waiter(&q, s, RequestClass::Repair, &tx);
        until_waiting(&q, 1).await;
        let v = waiter(&q, s, RequestClass::Serving, &tx);
        until_waiting(&q, 2).await;
        drop(running);
        r.await.unwrap();
        v.await.unwrap();
        assert_eq!(order.recv().await, Some(RequestClass::Serving));
        assert_eq!(order.recv().await, Some(RequestClass::Repair));
        assert_eq!(q.usage()[RequestClass::Repair as usize].bypassed, 1);
        // Nothing is left behind for the stripe.
        assert!(q.lock().stripes.is_empty());
    }

    #[tokio::test]
    async fn within_quota_the_order_is_first_come_first_served() {
        let q = one_at_a_time(Some(u64::MAX));
        let s = stripe(1);
        let running = q.enter(s, RequestClass::Repair).await;
        running.charge(64 << 20);
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let r = waiter(&q, s, RequestClass::Repair, &tx);
        until_waiting(&q, 1).await;
        let v = waiter(&q, s, RequestClass::Serving, &tx);
        until_waiting(&q, 2).await;
        drop(running);
        r.await.unwrap();
        v.await.unwrap();
        assert_eq!(order.recv().await, Some(RequestClass::Repair));
        assert_eq!(order.recv().await, Some(RequestClass::Serving));
    }

    #[tokio::test]
    async fn an_over_quota_request_is_passed_over_at_most_max_bypass_times() {
        let mut config = QuotaConfig { per_stripe: 1, max_bypass: 3, ..Default::default() };
        config.set_quota(RequestClass::Repair, Some(1));
        let q = Arc::new(StripeQueues::new(config));
        let s = stripe(2);
        let running = q.enter(s, RequestClass::Repair).await;
        running.charge(1 << 30); // repair is now far over its quota
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = vec![waiter(&q, s, RequestClass::Repair, &tx)];
        until_waiting(&q, 1).await;
        for n in 0..8 {
            tasks.push(waiter(&q, s, RequestClass::Serving, &tx));
            until_waiting(&q, n + 2).await;
        }
        // Each request hands the stripe on as it finishes.
        drop(running);
        for t in tasks {
            t.await.unwrap();
        }
        drop(tx);
        let mut served = Vec::new();
        while let Some(c) = order.recv().await {
            served.push(c);
        }
        let at = served.iter().position(|c| *c == RequestClass::Repair).expect("repair ran");
        assert_eq!(at, 3, "three reads overtake the repair, then it runs: {served:?}");
        assert_eq!(served.len(), 9);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_trace() {
        let q = one_at_a_time(None);
        let s = stripe(3);
        let running = q.enter(s, RequestClass::Serving).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(5), q.enter(s, RequestClass::Job)).await;
        assert!(gave_up.is_err());
        assert_eq!(q.waiting(), 0);
        drop(running);
        // The stripe is free again at once.
        let again = tokio::time::timeout(Duration::from_secs(5), q.enter(s, RequestClass::Job)).await;
        assert!(again.is_ok());
        drop(again);
        assert!(q.lock().stripes.is_empty());
    }
}
