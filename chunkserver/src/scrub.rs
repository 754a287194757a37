//! The scrubber: reads every stored block back in the background and checks
//! it against its CRC32C, so corruption on stripes nobody reads is found and
//! rebuilt before more losses make it fatal.
//!
//! It runs in the repair request class (its own concurrency limit, and the
//! per-stripe queues let serving reads go first) at a bounded rate, a whole
//! pass at a time: a pass visits the stripes stored when it began, and the
//! next pass starts one period after the last one began (at once if a pass
//! took longer). A corrupt stripe is quarantined and the master told at
//! once, exactly as when a serving read finds it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::service::{FoundBy, Shared, Verified};

/// How fast and how often to scrub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Bytes read per second at most; 0 turns the scrubber off.
    pub bytes_per_sec: u64,
    /// Time from the start of one full pass to the start of the next.
    pub period: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        // Low enough to go unnoticed beside serving reads on one disk; a
        // pass over 1 TB then takes about a day and a half.
        Self { bytes_per_sec: 8 << 20, period: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// Runs passes until `stop` turns true, at the rate `shared.scrub_rate`
/// says (0: paused until it changes).
pub async fn run(shared: Arc<Shared>, config: ScrubConfig, mut stop: watch::Receiver<bool>) {
    if config.bytes_per_sec == 0 {
        info!("scrubber off (--scrub-bandwidth 0)");
    }
    loop {
        let mut rate = shared.scrub_rate.subscribe();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = rate.wait_for(|r| *r > 0) => if r.is_err() { return },
        }
        let began = Instant::now();
        let pass = scrub_pass(&shared, rate);
        let stats = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            s = pass => s,
        };
        let took = began.elapsed();
        shared.metrics.scrub_passes.inc();
        shared.metrics.scrub_pass_seconds.set(took.as_secs_f64());
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        shared.metrics.scrub_last_pass.set(unix);
        info!(
            stripes = stats.stripes,
            bytes = stats.bytes,
            corrupt = stats.corrupt,
            seconds = took.as_secs_f64(),
            "scrub pass done"
        );
        if took > config.period {
            warn!(
                seconds = took.as_secs(),
                period = config.period.as_secs(),
                "a scrub pass took longer than --scrub-period; raise --scrub-bandwidth to keep up"
            );
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(began + config.period) => {}
        }
    }
}

/// A thread of its own at the lowest CPU priority (nice 19) for the
/// scrubber's reads and checksums: on a busy machine the scheduler gives
/// serving work the cores first. Jobs run one at a time, in order. The
/// thread starts with the first job, so a server whose scrub is off (and
/// stays off) has none.
#[derive(Debug)]
pub(crate) struct LowPriority {
    name: String,
    jobs: std::sync::OnceLock<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl LowPriority {
    pub(crate) fn new(name: &str) -> Self {
        Self { name: name.to_string(), jobs: std::sync::OnceLock::new() }
    }

    fn spawn(&self) -> std::sync::mpsc::Sender<Job> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name(self.name.clone()).spawn(move || {
            // Linux: PRIO_PROCESS with no pid sets the calling thread's nice.
            if let Err(e) = rustix::process::setpriority_process(None, 19) {
                warn!(error = %e, "the scrub thread keeps normal priority");
            }
            // Ends when the server (the sender) is dropped. A job that
            // panics fails alone (its caller hears nothing back), as on
            // the blocking pool; the thread goes on with the next.
            while let Ok(job) = rx.recv() {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    warn!("a scrub read panicked");
                }
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "no scrub thread: every scrub read fails until the server restarts");
        }
        jobs
    }

    /// Whether the thread has been started.
    #[cfg(test)]
    pub(crate) fn started(&self) -> bool {
        self.jobs.get().is_some()
    }

    /// Runs `f` on the thread (starting it first if need be) and waits for
    /// its result.
    pub(crate) async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .get_or_init(|| self.spawn())
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}

#[derive(Debug, Default)]
struct PassStats {
    stripes: u64,
    bytes: u64,
    corrupt: u64,
}

/// One pass over the stripes stored now, paced to `rate` bytes per second.
async fn scrub_pass(shared: &Arc<Shared>, rate: watch::Receiver<u64>) -> PassStats {
    let mut stats = PassStats::default();
    let mut pacer = Pacer::new(rate);
    for (stripe, _, _) in shared.store.inventory() {
        stats.stripes += 1;
        match shared.verify_stripe(stripe, FoundBy::Scrub, Some(&mut pacer)).await {
            Ok(Verified::Intact(n)) => stats.bytes += n,
            Ok(Verified::Quarantined) => {
                stats.corrupt += 1;
                shared.metrics.scrub_errors.inc();
            }
            // Deleted or quarantined since the pass began.
            Ok(Verified::Gone) => {}
            Err(e) => warn!(%stripe, error = %e, "scrub could not read a stripe"),
        }
        debug!(%stripe, "scrubbed");
    }
    stats
}

/// Spaces reads to a rate that may change (0 pauses). Never faster: time
/// spent paused or reading slower is not made up afterwards.
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_sec: watch::Receiver<u64>,
    next: Instant,
}

impl Pacer {
    fn new(bytes_per_sec: watch::Receiver<u64>) -> Self {
        Self { bytes_per_sec, next: Instant::now() }
    }

    /// Waits until `bytes` more may be read.
    pub(crate) async fn take(&mut self, bytes: u64) {
        tokio::time::sleep_until(self.next).await;
        // Paused: wait for a rate (a closed channel means shutting down).
        let rate = match self.bytes_per_sec.wait_for(|r| *r > 0).await {
            Ok(r) => *r,
            Err(_) => return,
        };
        self.next = self.next.max(Instant::now()) + Duration::from_secs_f64(bytes as f64 / rate as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scrub_work_runs_in_order_on_a_thread_at_the_lowest_priority() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let thread = LowPriority::new("scrub-test");
        assert!(!thread.started(), "no thread before the first job");
        let nice = thread.run(|| rustix::process::getpriority_process(None).unwrap()).await.unwrap();
        assert_eq!(nice, 19);
        let here = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(here, before, "only the scrub thread is lowered");
        assert_eq!(thread.run(|| panic!("a bad stripe")).await, None::<()>, "a panic fails its job alone");
        assert_eq!(thread.run(|| 7).await, Some(7), "and the thread goes on");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let runs = (0..5).map(|i| {
            let order = order.clone();
            thread.run(move || order.lock().unwrap().push(i))
        });
        futures::future::join_all(runs).await;
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_keeps_to_its_rate_and_waits_while_paused() {
        let (tx, rx) = watch::channel(8 << 20);
        let mut p = Pacer::new(rx);
        let t0 = Instant::now();
        // The first chunk is free; each later one waits for the one before.
        for _ in 0..5 {
            p.take(4 << 20).await;
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(2), "4 x 4 MiB at 8 MiB/s");
        // Paused: nothing moves until a rate is set again, and the pause is
        // not made up for with a burst.
        tx.send_replace(0);
        let waiting = tokio::spawn(async move {
            p.take(4 << 20).await;
            p.take(4 << 20).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished());
        let resumed = Instant::now();
        tx.send_replace(4 << 20);
        let done = waiting.await.unwrap();
        assert_eq!(done - resumed, Duration::from_secs(1), "the second chunk waits its turn at the new rate");
    }
}
