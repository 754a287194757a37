//! Per-chunkserver latency tracking and the hedge delay derived from it.
//!
//! The stripe client records every completed fetch here (time to first byte,
//! bytes, total time) and, in hedged mode, whether the fetch beat its hedge
//! deadline. From these the read planner learns two things: how long a healthy
//! fetch of a given size takes (the hedge delay), and which servers are
//! currently late more often than not (their stripes are treated as late from
//! the start). Time is passed in by the caller; nothing here reads a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a sample stays relevant.
pub const SAMPLE_TTL: Duration = Duration::from_secs(30);
/// Most samples kept per server.
pub const MAX_SAMPLES: usize = 256;
/// Weight of the newest outcome in the late score.
const LATE_ALPHA: f64 = 0.25;
/// Outcomes needed before a server can be called slow.
const MIN_OUTCOMES: u32 = 3;

/// Bounds and percentile of the adaptive hedge delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgePolicy {
    pub floor: Duration,
    pub ceiling: Duration,
    /// Which quantile of a healthy server's fetch time to wait for, e.g. 0.95.
    pub quantile: f64,
    /// Extra stripes requested at once with the direct ones (default 0).
    pub extra_stripes: usize,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self { floor: Duration::from_millis(2), ceiling: Duration::from_millis(200), quantile: 0.95, extra_stripes: 0 }
    }
}

/// One completed fetch.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub first_byte: Duration,
    pub total: Duration,
    pub bytes: u64,
}

/// What one client knows of one chunkserver's recent speed.
#[derive(Debug, Clone, Default)]
pub struct ServerLatency {
    samples: VecDeque<Sample>,
    /// Sorted views of the fresh samples, rebuilt lazily (see [`SUMMARY_EVERY`]).
    summary: Option<Summary>,
    since_summary: u32,
    late_score: f64,
    outcomes: u32,
    last_outcome: Option<Instant>,
}

/// Rebuild the summary after this many new samples (or [`SUMMARY_MAX_AGE`]):
/// reads ask for estimates far more often than servers' speeds change.
pub const SUMMARY_EVERY: u32 = 16;
pub const SUMMARY_MAX_AGE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
struct Summary {
    at: Instant,
    /// Fresh samples' times to first byte, sorted.
    first_byte: Vec<Duration>,
    /// Fresh samples' transfer rates (bytes per second after the first byte), sorted.
    rates: Vec<f64>,
    bytes: u64,
    total: Duration,
}

impl ServerLatency {
    pub fn record(&mut self, s: Sample) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        self.since_summary += 1;
    }

    /// Records whether a fetch finished before its hedge deadline.
    pub fn record_outcome(&mut self, now: Instant, late: bool) {
        self.forget_stale_outcomes(now);
        // Starting from zero, it takes three late fetches in a row to call a
        // server slow; a healthy one is late about 5% of the time (the hedge
        // delay is a 95th percentile).
        let x = if late { 1.0 } else { 0.0 };
        self.late_score = self.late_score * (1.0 - LATE_ALPHA) + x * LATE_ALPHA;
        self.outcomes = self.outcomes.saturating_add(1);
        self.last_outcome = Some(now);
    }

    fn forget_stale_outcomes(&mut self, now: Instant) {
        if self.last_outcome.is_some_and(|t| now.saturating_duration_since(t) > SAMPLE_TTL) {
            self.late_score = 0.0;
            self.outcomes = 0;
        }
    }

    /// Late more often than not, recently: expect this server to miss the deadline.
    pub fn is_slow(&self, now: Instant) -> bool {
        let fresh = self.last_outcome.is_some_and(|t| now.saturating_duration_since(t) <= SAMPLE_TTL);
        fresh && self.outcomes >= MIN_OUTCOMES && self.late_score > 0.5
    }

    fn summary(&mut self, now: Instant) -> &Summary {
        let stale = match &self.summary {
            None => true,
            Some(s) => self.since_summary >= SUMMARY_EVERY || now.saturating_duration_since(s.at) > SUMMARY_MAX_AGE,
        };
        if stale {
            let fresh: Vec<&Sample> =
                self.samples.iter().filter(|s| now.saturating_duration_since(s.at) <= SAMPLE_TTL).collect();
            let mut first_byte: Vec<Duration> = fresh.iter().map(|s| s.first_byte).collect();
            first_byte.sort_unstable();
            let mut rates: Vec<f64> = fresh
                .iter()
                .filter_map(|s| {
                    let t = s.total.saturating_sub(s.first_byte).as_secs_f64();
                    (t > 0.0 && s.bytes > 0).then(|| s.bytes as f64 / t)
                })
                .collect();
            rates.sort_unstable_by(f64::total_cmp);
            let (bytes, total) = fresh.iter().fold((0, Duration::ZERO), |(b, t), s| (b + s.bytes, t + s.total));
            self.summary = Some(Summary { at: now, first_byte, rates, bytes, total });
            self.since_summary = 0;
        }
        self.summary.as_ref().expect("just built")
    }

    /// The `q` quantile of this server's fetch time for `bytes`: that
    /// quantile of its time to first byte plus `bytes` at its median transfer
    /// rate. `None` without fresh samples.
    pub fn expected(&mut self, now: Instant, bytes: u64, q: f64) -> Option<Duration> {
        let s = self.summary(now);
        let wait = pick(&s.first_byte, q)?;
        let transfer = match pick(&s.rates, 0.5) {
            Some(rate) if bytes > 0 => Duration::from_secs_f64(bytes as f64 / rate),
            _ => Duration::ZERO,
        };
        Some(wait + transfer)
    }

    /// The `q` quantile of time to first byte.
    pub fn first_byte(&mut self, now: Instant, q: f64) -> Option<Duration> {
        pick(&self.summary(now).first_byte, q)
    }

    /// Observed bytes per second over fresh samples.
    pub fn bandwidth(&mut self, now: Instant) -> Option<f64> {
        let s = self.summary(now);
        (s.total > Duration::ZERO).then(|| s.bytes as f64 / s.total.as_secs_f64())
    }

    pub fn late_score(&self) -> f64 {
        self.late_score
    }
}

/// The `q` quantile of sorted values.
fn pick<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    Some(sorted[idx])
}

fn quantile(v: &mut [Duration], q: f64) -> Option<Duration> {
    v.sort_unstable();
    pick(v, q)
}

/// How long to wait for direct fetches before hedging, from each server's
/// `policy.quantile` fetch time for the request size (see
/// [`ServerLatency::expected`]): their median, within the policy's bounds.
/// The median keeps a minority of slow servers from inflating the delay; with
/// no samples at all it is the ceiling, so a cold client does not hedge
/// everything.
pub fn hedge_delay(per_server: impl IntoIterator<Item = Duration>, policy: &HedgePolicy) -> Duration {
    let mut v: Vec<Duration> = per_server.into_iter().collect();
    match quantile(&mut v, 0.5) {
        Some(d) => d.clamp(policy.floor, policy.ceiling),
        None => policy.ceiling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn predictions_scale_the_transfer_not_the_wait() {
        let t0 = Instant::now();
        let mut s = ServerLatency::default();
        s.record(Sample { at: t0, first_byte: ms(2), total: ms(12), bytes: 1000 });
        assert_eq!(s.expected(t0, 2000, 0.5), Some(ms(22)));
        assert_eq!(s.expected(t0, 0, 0.5), Some(ms(2)));
        assert_eq!(s.bandwidth(t0).map(|b| b.round()), Some(83333.0));
    }

    #[test]
    fn estimates_follow_new_samples() {
        let t0 = Instant::now();
        let mut s = ServerLatency::default();
        s.record(Sample { at: t0, first_byte: ms(1), total: ms(1), bytes: 0 });
        assert_eq!(s.first_byte(t0, 0.5), Some(ms(1)));
        for _ in 0..SUMMARY_EVERY * 2 {
            s.record(Sample { at: t0, first_byte: ms(9), total: ms(9), bytes: 0 });
        }
        assert_eq!(s.first_byte(t0, 0.5), Some(ms(9)), "a burst of new samples is seen at once");
        s.record(Sample { at: t0, first_byte: ms(50), total: ms(50), bytes: 0 });
        assert_eq!(s.first_byte(t0, 1.0), Some(ms(9)), "one sample waits for the next rebuild");
        assert_eq!(s.first_byte(t0 + SUMMARY_MAX_AGE + ms(1), 1.0), Some(ms(50)), "or for the summary to age");
    }

    #[test]
    fn hedge_delay_ignores_a_slow_minority() {
        let t0 = Instant::now();
        let policy = HedgePolicy { floor: ms(1), ceiling: ms(500), ..Default::default() };
        let mut servers = vec![ServerLatency::default(); 9];
        for (i, s) in servers.iter_mut().enumerate() {
            let wait = if i == 0 { ms(50) } else { ms(3) };
            for _ in 0..20 {
                s.record(Sample { at: t0, first_byte: wait, total: wait + ms(1), bytes: 100 });
            }
        }
        let mut expected =
            |p: &HedgePolicy| servers.iter_mut().filter_map(|s| s.expected(t0, 100, p.quantile)).collect::<Vec<_>>();
        assert_eq!(hedge_delay(expected(&policy), &policy), ms(4));
        // No samples: the ceiling, so a cold client does not hedge everything.
        assert_eq!(hedge_delay([], &policy), ms(500));
        // Clamped to the floor.
        let fast = HedgePolicy { floor: ms(10), ..policy };
        assert_eq!(hedge_delay(expected(&fast), &fast), ms(10));
    }

    #[test]
    fn samples_age_out() {
        let t0 = Instant::now();
        let mut s = ServerLatency::default();
        s.record(Sample { at: t0, first_byte: ms(1), total: ms(1), bytes: 1 });
        assert!(s.expected(t0 + SAMPLE_TTL, 1, 0.5).is_some());
        assert!(s.expected(t0 + SAMPLE_TTL + SUMMARY_MAX_AGE + ms(1), 1, 0.5).is_none());
    }

    #[test]
    fn slow_needs_repeated_lateness_and_recovers() {
        let t0 = Instant::now();
        let mut s = ServerLatency::default();
        s.record_outcome(t0, true);
        s.record_outcome(t0, true);
        assert!(!s.is_slow(t0), "two late fetches are not enough evidence");
        s.record_outcome(t0, true);
        assert!(s.is_slow(t0), "three in a row are: score {}", s.late_score());
        // An occasional late fetch among on-time ones never is.
        let mut healthy = ServerLatency::default();
        for i in 0..200 {
            healthy.record_outcome(t0, i % 10 == 0);
            assert!(!healthy.is_slow(t0));
        }
        s.record_outcome(t0, false);
        assert!(!s.is_slow(t0), "one on-time fetch clears it: score {}", s.late_score());
        // Lateness long ago says nothing about now.
        for _ in 0..5 {
            s.record_outcome(t0, true);
        }
        assert!(s.is_slow(t0));
        assert!(!s.is_slow(t0 + SAMPLE_TTL + ms(1)));
    }
}
