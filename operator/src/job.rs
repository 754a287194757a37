//! The Job resource (issue 14). Its controller is to come; what is here is
//! the translation of a Job's straggler knobs (integer percentages and
//! seconds, as Kubernetes APIs spell them) into the core's policy, so that
//! the two sets of defaults cannot drift apart.

use std::time::Duration;

use tessera_api::crd::{LessCriticalChoice, PickOrder, StragglerKind, StragglerPolicy};
use tessera_core::jobs::straggler::{LessCritical, Pick, Policy, PolicyKind};

/// The core's policy for a Job's `spec.stragglers`; `seed` drives a random
/// pick (the controller derives it from the Job's uid, so a restart picks
/// the same tasks).
pub fn straggler_policy(s: &StragglerPolicy, seed: u64) -> Policy {
    let percent = |p: u32| f64::from(p) / 100.0;
    Policy {
        kind: match s.policy {
            StragglerKind::None => PolicyKind::None,
            StragglerKind::Accelerate => PolicyKind::Accelerate,
            StragglerKind::Backup => PolicyKind::Backup,
            StragglerKind::Progressive => PolicyKind::Progressive,
            StragglerKind::Priority => PolicyKind::Priority,
        },
        slow_below: percent(s.slow_below_percent),
        warmup: Duration::from_secs(s.warmup_seconds.into()),
        network_limit: percent(s.network_limit_percent),
        accelerate_cap: percent(s.accelerate_cap_percent),
        backup_cap: percent(s.backup_cap_percent),
        pick: match s.pick {
            PickOrder::Slowest => Pick::Slowest,
            PickOrder::Random => Pick::Random(seed),
        },
        end_game: percent(s.end_game_percent),
        backup_after: percent(s.backup_after_percent),
        period: Duration::from_secs(s.period_seconds.into()),
        less_critical: match s.less_critical {
            LessCriticalChoice::Normal => LessCritical::Normal,
            LessCriticalChoice::Accelerate => LessCritical::Accelerate,
            LessCriticalChoice::Backup => LessCritical::Backup,
        },
        ..Policy::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_without_straggler_knobs_gets_the_cores_default_policy() {
        assert_eq!(straggler_policy(&StragglerPolicy::default(), 7), Policy::default());
    }

    #[test]
    fn every_knob_reaches_the_policy() {
        let s = StragglerPolicy {
            policy: StragglerKind::Priority,
            slow_below_percent: 30,
            warmup_seconds: 2,
            network_limit_percent: 15,
            accelerate_cap_percent: 20,
            backup_cap_percent: 5,
            pick: PickOrder::Random,
            end_game_percent: 95,
            backup_after_percent: 50,
            period_seconds: 30,
            less_critical: LessCriticalChoice::Backup,
            critical_groups: None,
        };
        let p = straggler_policy(&s, 7);
        let want = Policy {
            kind: PolicyKind::Priority,
            slow_below: 0.3,
            warmup: Duration::from_secs(2),
            network_limit: 0.15,
            accelerate_cap: 0.2,
            backup_cap: 0.05,
            pick: Pick::Random(7),
            end_game: 0.95,
            backup_after: 0.5,
            period: Duration::from_secs(30),
            less_critical: LessCritical::Backup,
            ..Policy::default()
        };
        assert_eq!(p, want);
    }
}
