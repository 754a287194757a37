//! Usage quotas, and the order in which requests waiting on one atom run.
//!
//! A chunkserver meters the bytes each usage type (its request classes:
//! serving, job, repair, distribution) moves over a sliding window, and
//! compares that rate with the type's quota. When requests queue on one atom
//! (a stripe), the usual order is first come, first served; but while a type
//! is over its quota, a waiting request of another type on the same atom goes
//! first. So a repair storm that has used up its share yields a hot stripe to
//! the pods reading it, and not the other way round.
//!
//! A request can be passed over only [`AtomQueue::pick`]'s `max_bypass` times;
//! after that it runs when its turn comes, over quota or not. That bounds
//! how long any request waits: no type starves.
//!
//! Usage types are small indices (`0..N`), so this module does not depend on
//! the chunkserver's class enum. Time is passed in as milliseconds.

use std::collections::VecDeque;

/// Bytes moved per usage type over a sliding window of whole buckets.
#[derive(Debug, Clone)]
pub struct UsageMeter<const N: usize> {
    bucket_ms: u64,
    /// Ring of buckets: (bucket number, bytes per type).
    buckets: Vec<(u64, [u64; N])>,
}

impl<const N: usize> UsageMeter<N> {
    /// A meter over `window_ms`, kept in `buckets` slices (at least one).
    pub fn new(window_ms: u64, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        let bucket_ms = (window_ms / buckets as u64).max(1);
        Self { bucket_ms, buckets: vec![(u64::MAX, [0; N]); buckets] }
    }

    pub fn window_ms(&self) -> u64 {
        self.bucket_ms * self.buckets.len() as u64
    }

    /// Counts `bytes` of usage type `kind` at `now_ms`.
    pub fn record(&mut self, kind: usize, bytes: u64, now_ms: u64) {
        let n = now_ms / self.bucket_ms;
        let len = self.buckets.len() as u64;
        let slot = &mut self.buckets[(n % len) as usize];
        if slot.0 != n {
            *slot = (n, [0; N]);
        }
        slot.1[kind] += bytes;
    }

    /// Bytes per second of `kind` over the window ending at `now_ms`.
    pub fn rate(&self, kind: usize, now_ms: u64) -> f64 {
        let n = now_ms / self.bucket_ms;
        let len = self.buckets.len() as u64;
        let total: u64 = self
            .buckets
            .iter()
            .filter(|(b, _)| *b != u64::MAX && *b <= n && n - *b < len)
            .map(|(_, bytes)| bytes[kind])
            .sum();
        total as f64 * 1000.0 / self.window_ms() as f64
    }
}

/// The upper limit of each usage type, in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas<const N: usize>(pub [Option<u64>; N]);

impl<const N: usize> Default for Quotas<N> {
    fn default() -> Self {
        Self([None; N])
    }
}

impl<const N: usize> Quotas<N> {
    /// Which types are over their quota at `now_ms`.
    pub fn exceeded(&self, meter: &UsageMeter<N>, now_ms: u64) -> [bool; N] {
        let mut out = [false; N];
        for (kind, quota) in self.0.iter().enumerate() {
            if let Some(q) = quota {
                out[kind] = meter.rate(kind, now_ms) > *q as f64;
            }
        }
        out
    }
}

/// One waiting request.
#[derive(Debug)]
pub struct Waiting<W> {
    pub kind: usize,
    /// How many later requests have run before this one.
    pub bypassed: u32,
    pub waiter: W,
}

/// The requests waiting on one atom, oldest first.
#[derive(Debug)]
pub struct AtomQueue<W> {
    waiting: VecDeque<Waiting<W>>,
}

impl<W> Default for AtomQueue<W> {
    fn default() -> Self {
        Self { waiting: VecDeque::new() }
    }
}

impl<W> AtomQueue<W> {
    pub fn push(&mut self, kind: usize, waiter: W) {
        self.waiting.push_back(Waiting { kind, bypassed: 0, waiter });
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The usage type of each waiting request, oldest first.
    pub fn kinds(&self) -> impl Iterator<Item = usize> + '_ {
        self.waiting.iter().map(|w| w.kind)
    }

    /// Takes the request to run next.
    ///
    /// The oldest request whose type is within quota, or that has already been
    /// passed over `max_bypass` times, runs; everything older than it was
    /// passed over once more, and `overtaken` hears each one's type. When
    /// every waiting type is over quota nothing is gained by reordering, and
    /// the oldest runs.
    pub fn pick(&mut self, exceeded: &[bool], max_bypass: u32, mut overtaken: impl FnMut(usize)) -> Option<Waiting<W>> {
        let chosen = self
            .waiting
            .iter()
            .position(|w| !exceeded.get(w.kind).copied().unwrap_or(false) || w.bypassed >= max_bypass)
            .unwrap_or(0);
        for w in self.waiting.iter_mut().take(chosen) {
            w.bypassed += 1;
            overtaken(w.kind);
        }
        self.waiting.remove(chosen)
    }

    /// Drops waiters for which `keep` is false (requests that gave up).
    pub fn retain(&mut self, mut keep: impl FnMut(&W) -> bool) {
        self.waiting.retain(|w| keep(&w.waiter));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_meter_forgets_what_left_the_window() {
        let mut m = UsageMeter::<2>::new(1000, 10);
        m.record(0, 500, 0);
        m.record(1, 100, 950);
        assert_eq!(m.rate(0, 999), 500.0);
        assert_eq!(m.rate(1, 999), 100.0);
        // 1000 ms later the first bucket has slid out, the second not yet.
        assert_eq!(m.rate(0, 1000), 0.0);
        assert_eq!(m.rate(1, 1000), 100.0);
        assert_eq!(m.rate(1, 2000), 0.0);
        // A bucket reused by a later slice starts from zero.
        m.record(0, 7, 3000);
        assert_eq!(m.rate(0, 3000), 7.0);
    }

    #[test]
    fn quotas_flag_only_the_types_above_their_limit() {
        let mut m = UsageMeter::<3>::new(1000, 4);
        m.record(0, 2000, 10);
        m.record(1, 2000, 10);
        m.record(2, 10, 10);
        let q = Quotas([Some(1000), None, Some(1000)]);
        assert_eq!(q.exceeded(&m, 20), [true, false, false]);
    }

    #[test]
    fn another_type_waiting_on_the_atom_goes_before_an_over_quota_request() {
        const REPAIR: usize = 2;
        const SERVING: usize = 0;
        let mut q = AtomQueue::default();
        q.push(REPAIR, "r1");
        q.push(SERVING, "s1");
        let mut exceeded = [false; 4];
        exceeded[REPAIR] = true;
        assert_eq!(q.pick(&exceeded, 8, |_| {}).unwrap().waiter, "s1");
        assert_eq!(q.pick(&exceeded, 8, |_| {}).unwrap().waiter, "r1");
        assert!(q.pick(&exceeded, 8, |_| {}).is_none());
    }

    /// A model run: requests arrive and leave; returns (order served, max bypasses seen).
    fn run(arrivals: &[(usize, bool)], exceeded: &[bool], max_bypass: u32) -> (Vec<usize>, u32) {
        let mut q = AtomQueue::default();
        let mut served = Vec::new();
        let mut worst = 0;
        for (i, &(kind, serve_now)) in arrivals.iter().enumerate() {
            q.push(kind, i);
            if serve_now {
                let w = q.pick(exceeded, max_bypass, |_| {}).unwrap();
                worst = worst.max(w.bypassed);
                served.push(w.waiter);
            }
        }
        while let Some(w) = q.pick(exceeded, max_bypass, |_| {}) {
            worst = worst.max(w.bypassed);
            served.push(w.waiter);
        }
        (served, worst)
    }

    proptest! {
        #[test]
        fn without_exceeded_quotas_the_order_is_fifo(
            arrivals in proptest::collection::vec((0usize..4, any::<bool>()), 0..64),
        ) {
            let (served, worst) = run(&arrivals, &[false; 4], 3);
            prop_assert_eq!(served, (0..arrivals.len()).collect::<Vec<_>>());
            prop_assert_eq!(worst, 0);
        }

        #[test]
        fn nobody_is_passed_over_more_than_the_bound_and_everyone_runs(
            arrivals in proptest::collection::vec((0usize..4, any::<bool>()), 0..64),
            exceeded in proptest::array::uniform4(any::<bool>()),
            max_bypass in 0u32..6,
        ) {
            let (mut served, worst) = run(&arrivals, &exceeded, max_bypass);
            prop_assert!(worst <= max_bypass, "bypassed {} > {}", worst, max_bypass);
            served.sort();
            prop_assert_eq!(served, (0..arrivals.len()).collect::<Vec<_>>());
        }

        #[test]
        fn an_over_quota_head_yields_to_a_within_quota_waiter(
            kinds in proptest::collection::vec(0usize..4, 1..32),
            exceeded in proptest::array::uniform4(any::<bool>()),
        ) {
            let mut q = AtomQueue::default();
            for (i, k) in kinds.iter().enumerate() {
                q.push(*k, i);
            }
            let first_within = kinds.iter().position(|k| !exceeded[*k]);
            let picked = q.pick(&exceeded, 8, |_| {}).unwrap().waiter;
            prop_assert_eq!(picked, first_within.unwrap_or(0));
        }
    }
}
