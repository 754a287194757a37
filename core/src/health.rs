//! Chunkserver health as the master judges it: liveness from heartbeats, and a
//! failure count that decays over time with hysteresis, so a server that keeps
//! failing is taken out of placement and only comes back once it has been
//! quiet for a while (a flapping server is not chosen).
//!
//! Time is passed in; nothing here reads a clock.

use std::time::{Duration, Instant};

/// Thresholds of the failure count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePolicy {
    /// The count at which a server is taken out.
    pub down_at: f64,
    /// The count below which it comes back.
    pub up_below: f64,
    /// The count halves in this time.
    pub half_life: Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        // One outage (a restart, a short freeze) counts once and never
        // takes a server out; three within a few minutes do, and it stays
        // out until it has been quiet for about a minute.
        Self { down_at: 3.0, up_below: 1.5, half_life: Duration::from_secs(60) }
    }
}

/// A decaying count of failures with an up/down state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureCounter {
    count: f64,
    at: Option<Instant>,
    down: bool,
    /// When the last failure was counted.
    last: Option<Instant>,
}

impl Default for FailureCounter {
    fn default() -> Self {
        Self { count: 0.0, at: None, down: false, last: None }
    }
}

impl FailureCounter {
    fn decay(&mut self, now: Instant, policy: &FailurePolicy) {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.count *= 0.5f64.powf(dt / policy.half_life.as_secs_f64().max(1e-9));
        }
        self.at = Some(now);
        if self.down && self.count < policy.up_below {
            self.down = false;
        }
    }

    /// Counts a failure (a missed heartbeat, a failed request).
    pub fn record(&mut self, now: Instant, policy: &FailurePolicy) {
        self.decay(now, policy);
        self.count += 1.0;
        self.last = Some(now);
        if self.count >= policy.down_at {
            self.down = true;
        }
    }

    /// Counts a failure unless one was counted within `window`: one outage
    /// seen by many clients (every write to a dead server fails) is one
    /// failure, not one per request, so a single restart never takes a
    /// server out of placement; only outages that keep coming do.
    pub fn record_distinct(&mut self, now: Instant, window: Duration, policy: &FailurePolicy) {
        if self.last.is_some_and(|l| now.saturating_duration_since(l) < window) {
            return;
        }
        self.record(now, policy);
    }

    /// Whether the server is out of service at `now`.
    pub fn is_down(&mut self, now: Instant, policy: &FailurePolicy) -> bool {
        self.decay(now, policy);
        self.down
    }

    pub fn count(&self) -> f64 {
        self.count
    }
}

/// Whether a server that last reported at `last` is alive at `now`.
pub fn is_live(last: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(last) <= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_at_the_threshold_and_back_only_below_the_lower_one() {
        let p = FailurePolicy { down_at: 5.0, up_below: 2.0, half_life: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut c = FailureCounter::default();
        for _ in 0..4 {
            c.record(t0, &p);
        }
        assert!(!c.is_down(t0, &p));
        c.record(t0, &p);
        assert!(c.is_down(t0, &p), "five failures take it out");
        // After one half-life the count is 2.5: still out (hysteresis).
        assert!(c.is_down(t0 + Duration::from_secs(10), &p));
        // After another it is 1.25: back.
        assert!(!c.is_down(t0 + Duration::from_secs(20), &p));
        // A flapping server (a failure every 3 s) stays out.
        let mut f = FailureCounter::default();
        let mut down_at_end = false;
        for i in 0..40 {
            let t = t0 + Duration::from_secs(3 * i);
            f.record(t, &p);
            down_at_end = f.is_down(t, &p);
        }
        assert!(down_at_end, "count {}", f.count());
    }

    #[test]
    fn one_outage_reported_many_times_is_one_failure() {
        let p = FailurePolicy::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut c = FailureCounter::default();
        // A dead server: every client's every write fails for a few seconds.
        for i in 0..200 {
            c.record_distinct(t0 + Duration::from_millis(20 * i), window, &p);
        }
        assert!(c.count() < 2.0, "count {}", c.count());
        assert!(!c.is_down(t0 + Duration::from_secs(5), &p), "one outage does not take it out");
        // Outages every ten seconds do, and keep it out while they go on.
        let mut f = FailureCounter::default();
        for i in 0..12 {
            for j in 0..20 {
                f.record_distinct(t0 + Duration::from_secs(10 * i) + Duration::from_millis(50 * j), window, &p);
            }
        }
        assert!(f.is_down(t0 + Duration::from_secs(120), &p), "count {}", f.count());
    }

    #[test]
    fn liveness_is_a_timeout() {
        let t0 = Instant::now();
        assert!(is_live(t0, t0 + Duration::from_secs(3), Duration::from_secs(3)));
        assert!(!is_live(t0, t0 + Duration::from_millis(3001), Duration::from_secs(3)));
    }
}
