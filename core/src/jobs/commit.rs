//! Exactly-once results (seed 001 M1): every group may run several
//! attempts at once (a retry, a backup), each writing to a place of its own;
//! the first attempt to commit wins the group, every later commit of
//! another attempt is told it lost (its result is discarded and its pod
//! deleted), and the winner committing again (a task or a controller that
//! crashed after the commit and retried it) is a repeat, not a second
//! result. The ledger is what the controller records (its store's atomic
//! update is the compare-and-swap); it is serializable so a restarted
//! controller resumes from it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// An attempt of a group: 1 for the first, counting up.
pub type Attempt = u32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Attempts started so far (the last one's number).
    pub started: Attempt,
    /// Attempts that failed (each counted once, however often reported).
    pub failed: BTreeSet<Attempt>,
    /// The attempt whose result counts, once one committed.
    pub committed: Option<Attempt>,
    /// Attempts given up without their fault (their node went away): they
    /// cannot commit, and do not count against the backoff limit.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub abandoned: BTreeSet<Attempt>,
}

/// The ledger of a job: a record per group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub groups: BTreeMap<String, GroupRecord>,
    /// Failed attempts a group may have before the job fails.
    pub backoff_limit: u32,
}

/// The answer to a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// This attempt's result is the group's.
    Won,
    /// This attempt had already won (a retried commit): nothing changes.
    Repeat,
    /// Another attempt won: discard this one's result.
    Lost { winner: Attempt },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("no group {0:?} in this job")]
    NoGroup(String),
    #[error("group {group:?} has no attempt {attempt} (started {started})")]
    NoAttempt { group: String, attempt: Attempt, started: Attempt },
    #[error("group {group:?} failed {failed} times, more than backoffLimit {limit}")]
    OutOfRetries { group: String, failed: usize, limit: u32 },
    #[error("attempt {attempt} of group {group:?} failed; it cannot commit")]
    Failed { group: String, attempt: Attempt },
    #[error("attempt {attempt} of group {group:?} was given up (its node went away); it cannot commit")]
    Abandoned { group: String, attempt: Attempt },
}

impl Ledger {
    pub fn new(groups: impl IntoIterator<Item = String>, backoff_limit: u32) -> Self {
        Self { groups: groups.into_iter().map(|g| (g, GroupRecord::default())).collect(), backoff_limit }
    }

    fn record(&mut self, group: &str) -> Result<&mut GroupRecord, LedgerError> {
        self.groups.get_mut(group).ok_or_else(|| LedgerError::NoGroup(group.to_string()))
    }

    /// Starts an attempt of `group` (first, retry or backup); none once the
    /// group is committed or out of retries.
    pub fn start(&mut self, group: &str) -> Result<Option<Attempt>, LedgerError> {
        let limit = self.backoff_limit;
        let r = self.record(group)?;
        if r.committed.is_some() {
            return Ok(None);
        }
        if r.failed.len() > limit as usize {
            return Err(LedgerError::OutOfRetries { group: group.into(), failed: r.failed.len(), limit });
        }
        r.started += 1;
        Ok(Some(r.started))
    }

    /// The compare-and-swap: `attempt` of `group` finished and asks to be
    /// the group's result.
    pub fn commit(&mut self, group: &str, attempt: Attempt) -> Result<Commit, LedgerError> {
        let r = self.record(group)?;
        if attempt == 0 || attempt > r.started {
            return Err(LedgerError::NoAttempt { group: group.into(), attempt, started: r.started });
        }
        if r.failed.contains(&attempt) {
            return Err(LedgerError::Failed { group: group.into(), attempt });
        }
        if r.abandoned.contains(&attempt) {
            return Err(LedgerError::Abandoned { group: group.into(), attempt });
        }
        Ok(match r.committed {
            None => {
                r.committed = Some(attempt);
                Commit::Won
            }
            Some(w) if w == attempt => Commit::Repeat,
            Some(winner) => Commit::Lost { winner },
        })
    }

    /// `attempt` of `group` failed. Returns whether another may start (the
    /// group is neither committed nor past its backoff limit). A failure
    /// reported again (a restarted controller seeing the same pod) counts
    /// once; the winning attempt cannot fail after its commit.
    pub fn fail(&mut self, group: &str, attempt: Attempt) -> Result<bool, LedgerError> {
        let limit = self.backoff_limit;
        let r = self.record(group)?;
        if attempt == 0 || attempt > r.started {
            return Err(LedgerError::NoAttempt { group: group.into(), attempt, started: r.started });
        }
        if r.committed.is_some() {
            return Ok(false);
        }
        r.failed.insert(attempt);
        Ok(r.failed.len() <= limit as usize)
    }

    /// `attempt` of `group` is given up through no fault of its own (its node
    /// went away): it may not commit, and it does not count against the
    /// backoff limit (a group already past the limit through its failures
    /// still gets no other). Returns whether the group still needs an
    /// attempt.
    pub fn abandon(&mut self, group: &str, attempt: Attempt) -> Result<bool, LedgerError> {
        let r = self.record(group)?;
        if attempt == 0 || attempt > r.started {
            return Err(LedgerError::NoAttempt { group: group.into(), attempt, started: r.started });
        }
        if r.committed.is_some() {
            return Ok(false);
        }
        r.abandoned.insert(attempt);
        Ok(true)
    }

    /// Each group's winning attempt, once every group has one: what the
    /// output version is made of, one result per group.
    pub fn results(&self) -> Option<BTreeMap<&str, Attempt>> {
        self.groups.iter().map(|(g, r)| Some((g.as_str(), r.committed?))).collect()
    }

    /// Groups committed so far.
    pub fn committed(&self) -> usize {
        self.groups.values().filter(|r| r.committed.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_commit_wins_and_a_retried_commit_is_a_repeat() {
        let mut l = Ledger::new(["g".to_string()], 1);
        let a = l.start("g").unwrap().unwrap();
        let backup = l.start("g").unwrap().unwrap();
        assert_eq!(l.commit("g", backup).unwrap(), Commit::Won);
        assert_eq!(l.commit("g", a).unwrap(), Commit::Lost { winner: backup });
        assert_eq!(l.commit("g", backup).unwrap(), Commit::Repeat);
        assert_eq!(l.start("g").unwrap(), None, "a committed group starts nothing");
        assert_eq!(l.results().unwrap(), [("g", backup)].into());
        assert!(matches!(l.commit("g", 9), Err(LedgerError::NoAttempt { .. })));
        assert!(matches!(l.commit("h", 1), Err(LedgerError::NoGroup(_))));
    }

    #[test]
    fn failures_past_the_backoff_limit_stop_the_group() {
        let mut l = Ledger::new(["g".to_string()], 1);
        let a = l.start("g").unwrap().unwrap();
        assert!(l.fail("g", a).unwrap(), "one failure is within backoffLimit 1");
        assert!(l.fail("g", a).unwrap(), "the same failure reported again counts once");
        assert_eq!(l.commit("g", a), Err(LedgerError::Failed { group: "g".into(), attempt: a }));
        let b = l.start("g").unwrap().unwrap();
        assert!(!l.fail("g", b).unwrap());
        assert!(matches!(l.start("g"), Err(LedgerError::OutOfRetries { failed: 2, limit: 1, .. })));
        assert_eq!(l.results(), None);
    }

    #[test]
    fn an_abandoned_attempt_cannot_commit_and_costs_no_retry() {
        let mut l = Ledger::new(["g".to_string()], 0);
        let a = l.start("g").unwrap().unwrap();
        assert!(l.abandon("g", a).unwrap());
        assert_eq!(l.commit("g", a), Err(LedgerError::Abandoned { group: "g".into(), attempt: a }));
        // backoffLimit 0, and still another attempt may start.
        let b = l.start("g").unwrap().unwrap();
        assert_eq!(l.commit("g", b), Ok(Commit::Won));
        assert!(!l.abandon("g", b).unwrap(), "the winner is not given up");
        assert_eq!(l.results().unwrap(), [("g", b)].into());
    }

    /// What happens to one attempt, in some order with everything else.
    #[derive(Debug, Clone)]
    enum Step {
        Start(usize),
        /// The n-th started attempt of a group finishes and commits.
        Finish(usize, u32),
        /// It fails.
        Fail(usize, u32),
        /// The controller crashes and resumes from what it recorded,
        /// re-sending the last commit it made (it may not have seen the
        /// answer).
        Crash,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            prop_oneof![
                (0usize..4).prop_map(Step::Start),
                (0usize..4, 1u32..5).prop_map(|(g, a)| Step::Finish(g, a)),
                (0usize..4, 1u32..5).prop_map(|(g, a)| Step::Fail(g, a)),
                Just(Step::Crash),
            ],
            0..80,
        )
    }

    proptest! {
        /// Under any interleaving of attempt starts, commits, failures and
        /// controller crashes, each group gets at most one result, it never
        /// changes once given, and every other commit of it is told so.
        #[test]
        fn exactly_one_commit_per_group(steps in steps()) {
            let groups: Vec<String> = (0..4).map(|g| format!("g{g}")).collect();
            let mut ledger = Ledger::new(groups.clone(), 2);
            let mut recorded = serde_json::to_string(&ledger).unwrap();
            // The model: what was started, what failed, who won.
            let mut started: BTreeMap<String, Attempt> = BTreeMap::new();
            let mut failed: BTreeSet<(String, Attempt)> = BTreeSet::new();
            let mut winners: BTreeMap<String, Attempt> = BTreeMap::new();
            let mut last_commit: Option<(String, Attempt)> = None;
            let resend = |ledger: &mut Ledger,
                          g: &str,
                          a: Attempt,
                          started: &BTreeMap<String, Attempt>,
                          failed: &BTreeSet<(String, Attempt)>,
                          winners: &mut BTreeMap<String, Attempt>| {
                match ledger.commit(g, a) {
                    Ok(Commit::Won) => {
                        assert!(a <= started.get(g).copied().unwrap_or(0) && !failed.contains(&(g.to_string(), a)));
                        // Nobody had won this group before.
                        assert!(winners.insert(g.to_string(), a).is_none(), "a second winner for {g}");
                    }
                    Ok(Commit::Repeat) => assert_eq!(winners.get(g), Some(&a)),
                    Ok(Commit::Lost { winner }) => {
                        assert_eq!(winners.get(g), Some(&winner));
                        assert_ne!(winner, a);
                    }
                    // Refused only what was never started, or failed.
                    Err(LedgerError::NoAttempt { .. }) => assert!(a > started.get(g).copied().unwrap_or(0)),
                    Err(LedgerError::Failed { .. }) => assert!(failed.contains(&(g.to_string(), a))),
                    Err(e) => panic!("{e}"),
                }
            };
            for step in steps {
                match step {
                    Step::Start(g) => {
                        let g = &groups[g];
                        match ledger.start(g) {
                            Ok(Some(n)) => {
                                let before = started.insert(g.clone(), n).unwrap_or(0);
                                prop_assert_eq!(n, before + 1);
                                prop_assert!(!winners.contains_key(g), "{} started after its commit", g);
                            }
                            Ok(None) => prop_assert!(winners.contains_key(g)),
                            Err(LedgerError::OutOfRetries { .. }) => {
                                prop_assert!(failed.iter().filter(|(f, _)| f == g).count() > 2);
                            }
                            Err(e) => prop_assert!(false, "{}", e),
                        }
                    }
                    Step::Finish(g, a) => {
                        resend(&mut ledger, &groups[g], a, &started, &failed, &mut winners);
                        last_commit = Some((groups[g].clone(), a));
                    }
                    Step::Fail(g, a) => {
                        let g = &groups[g];
                        let known = a <= started.get(g).copied().unwrap_or(0);
                        match ledger.fail(g, a) {
                            Ok(_) => {
                                prop_assert!(known);
                                if !winners.contains_key(g) {
                                    failed.insert((g.clone(), a));
                                }
                            }
                            Err(LedgerError::NoAttempt { .. }) => prop_assert!(!known),
                            Err(e) => prop_assert!(false, "{}", e),
                        }
                    }
                    Step::Crash => {
                        ledger = serde_json::from_str(&recorded).unwrap();
                        if let Some((g, a)) = &last_commit {
                            resend(&mut ledger, g, *a, &started, &failed, &mut winners);
                        }
                    }
                }
                // Every step's effect is recorded atomically before it is
                // acted on (the store's compare-and-swap).
                recorded = serde_json::to_string(&ledger).unwrap();
                for (g, a) in &winners {
                    prop_assert_eq!(ledger.groups[g].committed, Some(*a));
                }
            }
            if let Some(results) = ledger.results() {
                prop_assert_eq!(results.len(), groups.len());
                for (g, a) in results {
                    prop_assert_eq!(winners.get(g), Some(&a));
                }
            }
        }
    }
}
