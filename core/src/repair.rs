//! Repair decisions: how redundant each item still is, and when to rebuild.
//!
//! An item's effective redundancy is how many more of its stripes could be
//! lost before it became unreadable: reachable stripes minus k (a stripe on a
//! dead server, or in a domain taken down for maintenance, is not reachable).
//! Items of high-availability filesets below the threshold are rebuilt at
//! once; everything else waits out a grace period, so planned drains and
//! restarts do not start repair storms. Stripes known to be gone for good
//! (quarantined as corrupt, or never written by a degraded write) cannot
//! come back, so their items never wait.

use std::time::{Duration, Instant};

/// How urgently a fileset's items are repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Availability {
    /// Rebuilt at once when below the threshold.
    High,
    /// Rebuilt after the grace period.
    #[default]
    Low,
}

impl Availability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Availability::High => "high",
            Availability::Low => "low",
        }
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown availability {0:?}: expected high or low")]
pub struct UnknownAvailability(pub String);

impl std::str::FromStr for Availability {
    type Err = UnknownAvailability;
    fn from_str(s: &str) -> Result<Self, UnknownAvailability> {
        match s {
            "high" => Ok(Availability::High),
            "low" => Ok(Availability::Low),
            _ => Err(UnknownAvailability(s.to_string())),
        }
    }
}

/// What to do about an item now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairDecision {
    /// Every stripe is reachable.
    Healthy,
    /// Rebuild the missing stripes now.
    Now,
    /// Rebuild at this instant unless the stripes come back first.
    At(Instant),
    /// Fewer than k stripes are reachable: nothing to rebuild from.
    Unrecoverable,
}

/// When to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairPolicy {
    /// High-availability items with less effective redundancy than this are
    /// rebuilt at once (m: any lost stripe).
    pub threshold: usize,
    /// How long everything else waits for lost stripes to come back.
    pub grace: Duration,
}

/// Effective redundancy: reachable stripes minus k (negative when unreadable).
pub fn effective_redundancy(reachable: usize, k: usize) -> i64 {
    reachable as i64 - k as i64
}

/// What is known of an item's missing stripes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    /// Stripes reachable now, of k + m.
    pub reachable: usize,
    /// Of the missing ones, how many are gone for good: quarantined as
    /// corrupt, or never written (a degraded write). Waiting cannot bring
    /// these back, so they do not wait for the grace.
    pub gone_for_good: usize,
}

/// Decides for an item with `missing.reachable` of its `k + m` stripes
/// reachable, missing since `since`.
pub fn decide(
    missing: Missing,
    k: usize,
    m: usize,
    availability: Availability,
    since: Instant,
    now: Instant,
    policy: &RepairPolicy,
) -> RepairDecision {
    let (threshold, grace) = (policy.threshold, policy.grace);
    let reachable = missing.reachable;
    if reachable >= k + m {
        return RepairDecision::Healthy;
    }
    if reachable < k {
        return RepairDecision::Unrecoverable;
    }
    if missing.gone_for_good > 0 {
        return RepairDecision::Now;
    }
    let er = effective_redundancy(reachable, k);
    if availability == Availability::High && er < threshold as i64 {
        return RepairDecision::Now;
    }
    let at = since + grace;
    if now >= at { RepairDecision::Now } else { RepairDecision::At(at) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_availability_is_repaired_at_once_low_after_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(900);
        let p = RepairPolicy { threshold: 3, grace };
        let at = |reachable| Missing { reachable, gone_for_good: 0 };
        let d = |reachable, av, now| decide(at(reachable), 6, 3, av, t0, now, &p);
        assert_eq!(d(9, Availability::High, t0), RepairDecision::Healthy);
        assert_eq!(d(8, Availability::High, t0), RepairDecision::Now);
        assert_eq!(d(8, Availability::Low, t0), RepairDecision::At(t0 + grace));
        assert_eq!(d(8, Availability::Low, t0 + grace), RepairDecision::Now);
        assert_eq!(d(5, Availability::High, t0), RepairDecision::Unrecoverable);
        // A lower threshold defers high-availability items that still have margin.
        let lower = RepairPolicy { threshold: 2, grace };
        assert_eq!(decide(at(8), 6, 3, Availability::High, t0, t0, &lower), RepairDecision::At(t0 + grace));
        assert_eq!(decide(at(7), 6, 3, Availability::High, t0, t0, &lower), RepairDecision::Now);
        assert_eq!(effective_redundancy(5, 6), -1);
    }

    #[test]
    fn stripes_gone_for_good_are_rebuilt_at_once_whatever_the_class() {
        let t0 = Instant::now();
        let p = RepairPolicy { threshold: 3, grace: Duration::from_secs(900) };
        let corrupt = Missing { reachable: 8, gone_for_good: 1 };
        assert_eq!(decide(corrupt, 6, 3, Availability::Low, t0, t0, &p), RepairDecision::Now);
        // Nothing to rebuild from is still nothing to rebuild from.
        let lost = Missing { reachable: 5, gone_for_good: 1 };
        assert_eq!(decide(lost, 6, 3, Availability::Low, t0, t0, &p), RepairDecision::Unrecoverable);
    }
}
