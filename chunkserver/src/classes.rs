//! Request classes and their admission.
//!
//! Every data request names a class: serving (pods reading volumes), job,
//! repair or distribution. Each class has its own concurrency limit, so a
//! repair storm or a distribution wave queues behind its own limit and never
//! takes the slots that serving reads need. Waiting and running counts per
//! class are the queue depths the stats and metrics report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tessera_proto::cs;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestClass {
    Serving,
    Job,
    Repair,
    Distribution,
}

impl RequestClass {
    pub const ALL: [RequestClass; 4] =
        [RequestClass::Serving, RequestClass::Job, RequestClass::Repair, RequestClass::Distribution];

    pub fn as_str(&self) -> &'static str {
        match self {
            RequestClass::Serving => "serving",
            RequestClass::Job => "job",
            RequestClass::Repair => "repair",
            RequestClass::Distribution => "distribution",
        }
    }

    /// From the wire; unspecified (and unknown future values) count as serving.
    pub fn from_wire(v: i32) -> Self {
        match cs::RequestClass::try_from(v).unwrap_or(cs::RequestClass::Unspecified) {
            cs::RequestClass::Unspecified | cs::RequestClass::Serving => RequestClass::Serving,
            cs::RequestClass::Job => RequestClass::Job,
            cs::RequestClass::Repair => RequestClass::Repair,
            cs::RequestClass::Distribution => RequestClass::Distribution,
        }
    }

    pub fn to_wire(self) -> cs::RequestClass {
        match self {
            RequestClass::Serving => cs::RequestClass::Serving,
            RequestClass::Job => cs::RequestClass::Job,
            RequestClass::Repair => cs::RequestClass::Repair,
            RequestClass::Distribution => cs::RequestClass::Distribution,
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Concurrency limit per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLimits {
    pub serving: u32,
    pub job: u32,
    pub repair: u32,
    pub distribution: u32,
}

impl Default for ClassLimits {
    fn default() -> Self {
        Self { serving: 64, job: 32, repair: 4, distribution: 8 }
    }
}

impl ClassLimits {
    pub fn get(&self, c: RequestClass) -> u32 {
        match c {
            RequestClass::Serving => self.serving,
            RequestClass::Job => self.job,
            RequestClass::Repair => self.repair,
            RequestClass::Distribution => self.distribution,
        }
    }
}

#[derive(Debug)]
struct Gate {
    limit: u32,
    semaphore: Arc<Semaphore>,
    queued: AtomicU32,
    in_flight: Arc<AtomicU32>,
    served: AtomicU64,
    /// Told when the last request in flight ends.
    idle: Arc<Notify>,
}

/// A snapshot of one class's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassQueue {
    pub class: RequestClass,
    pub limit: u32,
    pub queued: u32,
    pub in_flight: u32,
    pub served: u64,
}

/// Admission of requests, per class.
#[derive(Debug)]
pub struct Admission {
    gates: Vec<Gate>,
}

/// Held while a request runs.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<AtomicU32>,
    idle: Arc<Notify>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Admission {
    pub fn new(limits: ClassLimits) -> Self {
        let gates = RequestClass::ALL
            .iter()
            .map(|&c| {
                let limit = limits.get(c).max(1);
                Gate {
                    limit,
                    semaphore: Arc::new(Semaphore::new(limit as usize)),
                    queued: AtomicU32::new(0),
                    in_flight: Arc::new(AtomicU32::new(0)),
                    served: AtomicU64::new(0),
                    idle: Arc::new(Notify::new()),
                }
            })
            .collect();
        Self { gates }
    }

    /// Waits for a slot in `class`. Cancel-safe: a dropped wait leaves the
    /// counters as they were.
    pub async fn admit(&self, class: RequestClass) -> Permit {
        let gate = &self.gates[class.slot()];
        gate.queued.fetch_add(1, Ordering::AcqRel);
        // Unqueued when admitted or when the wait is given up; the last
        // one out of a quiet class tells those waiting for quiet.
        struct Unqueue<'a>(&'a Gate);
        impl Drop for Unqueue<'_> {
            fn drop(&mut self) {
                if self.0.queued.fetch_sub(1, Ordering::AcqRel) == 1 && self.0.in_flight.load(Ordering::Acquire) == 0 {
                    self.0.idle.notify_waiters();
                }
            }
        }
        let unqueue = Unqueue(gate);
        let permit = gate.semaphore.clone().acquire_owned().await.expect("admission semaphores are never closed");
        // In flight before unqueued, so the request is never counted as neither.
        gate.in_flight.fetch_add(1, Ordering::AcqRel);
        drop(unqueue);
        gate.served.fetch_add(1, Ordering::Relaxed);
        Permit { _permit: permit, in_flight: gate.in_flight.clone(), idle: gate.idle.clone() }
    }

    /// Waits until `class` has no request running or waiting, `at_most`
    /// long; whether it went quiet. Background work (the scrubber) waits
    /// for a gap in serving reads this way, and goes on after `at_most`
    /// regardless, so it always makes progress.
    pub async fn quiet(&self, class: RequestClass, at_most: std::time::Duration) -> bool {
        let gate = &self.gates[class.slot()];
        let deadline = tokio::time::Instant::now() + at_most;
        loop {
            // Registered before the check, so an end in between is not missed.
            let ended = gate.idle.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            // Queued first: an admission counts itself in flight before it
            // leaves the queue, so it is seen in one or the other.
            if gate.queued.load(Ordering::Acquire) == 0 && gate.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return false;
            }
        }
    }

    pub fn queues(&self) -> Vec<ClassQueue> {
        RequestClass::ALL
            .iter()
            .map(|&class| {
                let g = &self.gates[class.slot()];
                ClassQueue {
                    class,
                    limit: g.limit,
                    queued: g.queued.load(Ordering::Relaxed),
                    in_flight: g.in_flight.load(Ordering::Relaxed),
                    served: g.served.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_class_does_not_block_another() {
        let a = Arc::new(Admission::new(ClassLimits { serving: 2, job: 1, repair: 1, distribution: 1 }));
        let r1 = a.admit(RequestClass::Repair).await;
        // A second repair request waits...
        let waiting = tokio::spawn({
            let a = a.clone();
            async move {
                let _p = a.admit(RequestClass::Repair).await;
            }
        });
        tokio::task::yield_now().await;
        while a.queues()[2].queued == 0 {
            tokio::task::yield_now().await;
        }
        // ...while serving requests go straight through.
        let s1 = a.admit(RequestClass::Serving).await;
        let s2 = a.admit(RequestClass::Serving).await;
        let q = a.queues();
        assert_eq!((q[0].in_flight, q[0].queued), (2, 0));
        assert_eq!((q[2].in_flight, q[2].queued), (1, 1));
        drop((s1, s2, r1));
        waiting.await.unwrap();
        let q = a.queues();
        assert_eq!((q[2].in_flight, q[2].queued, q[2].served), (0, 0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_waits_for_the_last_request_to_end_or_gives_up() {
        let a = Arc::new(Admission::new(ClassLimits::default()));
        let at_most = std::time::Duration::from_millis(50);
        assert!(a.quiet(RequestClass::Serving, at_most).await, "nothing running: at once");
        let (one, two) = (a.admit(RequestClass::Serving).await, a.admit(RequestClass::Serving).await);
        let _repair = a.admit(RequestClass::Repair).await;
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.quiet(RequestClass::Serving, std::time::Duration::from_secs(3600)).await }
        });
        // The waiter runs until it waits (one thread, paused clock).
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "two serving requests run");
        drop(one);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one serving request still runs");
        drop(two);
        assert!(waiter.await.unwrap(), "quiet once the last one ended (another class does not count)");
        let _held = a.admit(RequestClass::Serving).await;
        let t0 = tokio::time::Instant::now();
        assert!(!a.quiet(RequestClass::Serving, at_most).await);
        assert_eq!(t0.elapsed(), at_most, "gives up after at_most");
    }

    #[tokio::test]
    async fn an_abandoned_wait_is_not_counted() {
        let a = Admission::new(ClassLimits { serving: 1, ..Default::default() });
        let _held = a.admit(RequestClass::Serving).await;
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(1), a.admit(RequestClass::Serving)).await;
        assert!(timed_out.is_err());
        assert_eq!(a.queues()[0].queued, 0);
    }

    #[test]
    fn unknown_wire_classes_are_serving() {
        assert_eq!(RequestClass::from_wire(0), RequestClass::Serving);
        assert_eq!(RequestClass::from_wire(99), RequestClass::Serving);
        for c in RequestClass::ALL {
            assert_eq!(RequestClass::from_wire(c.to_wire() as i32), c);
        }
    }
}
