//! What the client counts: per read, per server and in total.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tessera_core::ids::StripeId;
use tessera_core::read_plan::ReadMode;

/// What one read did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    pub mode: ReadMode,
    pub bytes_returned: u64,
    /// Bytes received from chunkservers, losers' partial answers included.
    pub bytes_fetched: u64,
    /// Stripe fetches started.
    pub fetches: u32,
    /// Sessions (runs of equal stripe ranges) that hedged.
    pub hedges: u32,
    /// Hedged sessions finished by reconstruction.
    pub hedges_won: u32,
    /// Sessions finished by reconstruction (any mode).
    pub rebuilt: u32,
    /// Fetches that failed (error, timeout or checksum).
    pub failed_fetches: u32,
    /// Blocks that failed a checksum, on the server's disk or in transit.
    pub checksum_failures: u32,
    /// Stripes whose blocks arrived failing their checksum (the server's
    /// own check passed, so it does not know), with the server that sent
    /// them: to be reported to the master.
    pub corrupt_in_transit: Vec<(StripeId, String)>,
}

impl ReadReport {
    /// Adds one session's counts to a read's.
    pub(crate) fn absorb(&mut self, s: &ReadReport) {
        self.fetches += s.fetches;
        self.hedges += s.hedges;
        self.hedges_won += s.hedges_won;
        self.rebuilt += s.rebuilt;
        self.failed_fetches += s.failed_fetches;
        self.checksum_failures += s.checksum_failures;
        self.corrupt_in_transit.extend(s.corrupt_in_transit.iter().cloned());
    }
}

/// One chunkserver as seen from this client.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStats {
    pub addr: String,
    pub fetches: u64,
    pub failures: u64,
    pub bytes_fetched: u64,
    pub first_byte_p50: Option<Duration>,
    pub first_byte_p95: Option<Duration>,
    pub bandwidth_bytes_per_sec: Option<f64>,
    /// Recently late more often than not: hedged reads route around it.
    pub slow: bool,
}

/// Totals since the client was created.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientStats {
    pub reads: u64,
    pub failed_reads: u64,
    pub bytes_returned: u64,
    pub bytes_fetched: u64,
    pub hedges_issued: u64,
    pub hedges_won: u64,
    pub rebuilt: u64,
    pub checksum_failures: u64,
    pub servers: Vec<ServerStats>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    reads: AtomicU64,
    failed_reads: AtomicU64,
    bytes_returned: AtomicU64,
    bytes_fetched: AtomicU64,
    hedges_issued: AtomicU64,
    hedges_won: AtomicU64,
    rebuilt: AtomicU64,
    checksum_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn add(&self, r: &ReadReport) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_returned.fetch_add(r.bytes_returned, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(r.bytes_fetched, Ordering::Relaxed);
        self.hedges_issued.fetch_add(r.hedges as u64, Ordering::Relaxed);
        self.hedges_won.fetch_add(r.hedges_won as u64, Ordering::Relaxed);
        self.rebuilt.fetch_add(r.rebuilt as u64, Ordering::Relaxed);
        self.checksum_failures.fetch_add(r.checksum_failures as u64, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, fetched: u64, checksum_failures: u32) {
        self.failed_reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(fetched, Ordering::Relaxed);
        self.checksum_failures.fetch_add(checksum_failures as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, servers: Vec<ServerStats>) -> ClientStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            reads: l(&self.reads),
            failed_reads: l(&self.failed_reads),
            bytes_returned: l(&self.bytes_returned),
            bytes_fetched: l(&self.bytes_fetched),
            hedges_issued: l(&self.hedges_issued),
            hedges_won: l(&self.hedges_won),
            rebuilt: l(&self.rebuilt),
            checksum_failures: l(&self.checksum_failures),
            servers,
        }
    }
}
