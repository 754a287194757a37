//! Per-device bandwidth over a sliding window.
//!
//! Each data dir counts bytes read and written into one-second buckets; the
//! rate over the last 5, 10 or 20 seconds is what the master and the job
//! controller use to tell a slow device from a slow task.

use std::sync::Mutex;
use std::time::Instant;

/// Longest window served.
pub const MAX_WINDOW_SECS: u32 = 60;
pub const DEFAULT_WINDOW_SECS: u32 = 10;

#[derive(Debug)]
pub struct RateWindow {
    origin: Instant,
    inner: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    /// The second (since origin) each slot counts; `u64::MAX` for unused slots.
    seconds: [u64; MAX_WINDOW_SECS as usize + 1],
    counts: [u64; MAX_WINDOW_SECS as usize + 1],
}

impl RateWindow {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            inner: Mutex::new(Buckets {
                seconds: [u64::MAX; MAX_WINDOW_SECS as usize + 1],
                counts: [0; MAX_WINDOW_SECS as usize + 1],
            }),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    pub fn record(&self, now: Instant, bytes: u64) {
        let s = self.second(now);
        let slot = (s % (MAX_WINDOW_SECS as u64 + 1)) as usize;
        let mut b = self.inner.lock().unwrap();
        if b.seconds[slot] != s {
            b.seconds[slot] = s;
            b.counts[slot] = 0;
        }
        b.counts[slot] += bytes;
    }

    /// Bytes per second over the `window` whole seconds before the current one.
    pub fn rate(&self, now: Instant, window: u32) -> f64 {
        let window = window.clamp(1, MAX_WINDOW_SECS) as u64;
        let s = self.second(now);
        let from = s.saturating_sub(window);
        let b = self.inner.lock().unwrap();
        let total: u64 = b
            .seconds
            .iter()
            .zip(b.counts.iter())
            .filter(|(sec, _)| **sec != u64::MAX && **sec >= from && **sec < s)
            .map(|(_, c)| *c)
            .sum();
        total as f64 / window as f64
    }
}

/// A device must have read 1 MiB in the window before its bandwidth is
/// told: a few small reads say little.
const MIN_BYTES_PER_SEC: f64 = (1u64 << 20) as f64 / DEFAULT_WINDOW_SECS as f64;

/// The time a device is busy serving reads: the union of their intervals,
/// so reads that overlap count once (as the kernel's io_ticks do), into a
/// window of nanoseconds per second.
#[derive(Debug)]
pub struct BusyClock {
    window: RateWindow,
    /// Reads in flight, and since when the busy time was last counted.
    state: Mutex<(u32, Instant)>,
}

/// One read's share of a [`BusyClock`]; ends when dropped (also when the
/// read is cancelled); [`Busy::discard`] ends it without counting (a read
/// that failed says nothing of the device's speed).
pub struct Busy<'a> {
    clock: &'a BusyClock,
    counted: bool,
}

impl Busy<'_> {
    pub fn discard(mut self) {
        self.counted = false;
    }
}

impl BusyClock {
    pub fn new(origin: Instant) -> Self {
        Self { window: RateWindow::new(origin), state: Mutex::new((0, origin)) }
    }

    pub fn begin(&self) -> Busy<'_> {
        self.begin_at(None);
        Busy { clock: self, counted: true }
    }

    /// The clock is read under the lock, so that a begin and an end racing
    /// each other never move the mark backwards.
    fn begin_at(&self, at: Option<Instant>) {
        let mut st = self.state.lock().unwrap();
        if st.0 == 0 {
            st.1 = at.unwrap_or_else(Instant::now);
        }
        st.0 += 1;
    }

    fn end_at(&self, at: Option<Instant>, counted: bool) {
        let mut st = self.state.lock().unwrap();
        let now = at.unwrap_or_else(Instant::now);
        if counted {
            self.window.record(now, now.saturating_duration_since(st.1).as_nanos() as u64);
        }
        st.1 = now;
        st.0 = st.0.saturating_sub(1);
    }

    /// Adds busy time that is known whole (an emulated device's).
    pub fn add(&self, now: Instant, busy: std::time::Duration) {
        self.window.record(now, busy.as_nanos() as u64);
    }

    /// Busy nanoseconds per second over the last `window` seconds.
    pub fn rate(&self, now: Instant, window: u32) -> f64 {
        self.window.rate(now, window)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.clock.end_at(None, self.counted);
    }
}

/// A device's bandwidth while reading: bytes per second of the time reads
/// spent in it, from the window's rates of bytes and of busy nanoseconds;
/// none when it read too little to tell.
pub fn device_bandwidth(bytes_per_sec: f64, busy_ns_per_sec: f64) -> Option<f64> {
    (bytes_per_sec >= MIN_BYTES_PER_SEC && busy_ns_per_sec > 0.0).then(|| bytes_per_sec / (busy_ns_per_sec / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_averages_the_last_whole_seconds() {
        let t0 = Instant::now();
        let w = RateWindow::new(t0);
        for s in 0..10 {
            w.record(t0 + Duration::from_secs(s), 1000);
        }
        // The current (partial) second is not counted.
        w.record(t0 + Duration::from_secs(10), 1_000_000);
        let now = t0 + Duration::from_millis(10_500);
        assert_eq!(w.rate(now, 5), 1000.0);
        assert_eq!(w.rate(now, 10), 1000.0);
        assert_eq!(w.rate(now, 20), 500.0);
    }

    #[test]
    fn old_buckets_do_not_leak_into_new_windows() {
        let t0 = Instant::now();
        let w = RateWindow::new(t0);
        w.record(t0, 5000);
        let later = t0 + Duration::from_secs(u64::from(MAX_WINDOW_SECS) + 1);
        w.record(later, 10);
        assert_eq!(w.rate(later + Duration::from_secs(1), 5), 2.0);
    }

    #[test]
    fn overlapping_reads_count_their_busy_time_once() {
        let t0 = Instant::now();
        let c = BusyClock::new(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // [0, 400] and [100, 300] overlap: 400 ms busy; then [500, 600].
        c.begin_at(Some(at(0)));
        c.begin_at(Some(at(100)));
        c.end_at(Some(at(300)), true);
        c.end_at(Some(at(400)), true);
        c.begin_at(Some(at(500)));
        c.end_at(Some(at(600)), true);
        // A failed read's time is not counted.
        c.begin_at(Some(at(700)));
        c.end_at(Some(at(900)), false);
        assert_eq!(c.rate(at(1000), 1), 500e6, "500 ms of one second");
        // The guard: a discarded one adds nothing, and leaves nothing in
        // flight (the next read starts its own interval).
        let c = BusyClock::new(t0);
        c.begin().discard();
        assert_eq!(c.window.rate(Instant::now() + Duration::from_secs(1), 1), 0.0);
        assert_eq!(c.state.lock().unwrap().0, 0);
    }

    #[test]
    fn a_device_bandwidth_is_bytes_over_the_time_spent_reading() {
        // 50 MB/s read, the device busy 0.25 s per second: 200 MB/s.
        assert_eq!(device_bandwidth(50e6, 0.25e9), Some(200e6));
        // Under 1 MiB in ten seconds: too little to tell.
        assert_eq!(device_bandwidth(50e3, 1e6), None);
        assert_eq!(device_bandwidth(0.0, 1e9), None);
    }
}
