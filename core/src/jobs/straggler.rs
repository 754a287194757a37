//! Straggler decisions: which running tasks get accelerated reads and which
//! groups get a backup attempt (seed 000 §2.5-2.6, seed 001 M1).
//!
//! A task is slow when its rate is below a fraction of the average of the
//! tasks no slow server holds back (of all, when too few are). What
//! cures it depends on the cause, which Tessera knows: a task whose reads
//! touch a slow server (a slow device, seen in the chunkservers' bandwidth
//! or the readers' latency) is cured by accelerated reads, a few extra
//! stripes, so the slow server is no longer waited for; a task slow with
//! healthy servers is slow because of its own node, and only a backup on
//! another node helps. Near the end (the end game) every remaining task is
//! accelerated, since the network is then mostly idle.
//!
//! An attempt whose group has data on a server already known slow starts
//! accelerated under the policies that cure that cause
//! ([`accelerate_at_launch`]); a server counts as slow only after several
//! readings in a row ([`SlowStreaks`], state a restarted controller starts
//! afresh, costing it one reading).
//!
//! [`decide`] is a pure function of the policy, the job's progress and the
//! running attempts' reports: everything it needs across evaluations (since
//! when a task has been accelerated, which groups have a backup) is in its
//! inputs, which a controller records, so a restarted one decides as the
//! old one would have. `tessera sim jobs` drives it, and so does
//! `core::jobs::scheduler` (behind `tessera job run` and `tessera bench
//! jobs`, and the Job controller to come).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::commit::Attempt;

/// Which mitigations a job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Nothing: every task runs as placed.
    None,
    /// Accelerated reads for tasks slowed by a slow server, and the end
    /// game (seed 000 §2.5).
    Accelerate,
    /// Backups for slow tasks once enough groups are done, whatever the
    /// cause (seed 001 M1, MapReduce's backup tasks).
    Backup,
    /// The default, progressive and cause-aware (seed 000 §2.6): a task
    /// slowed by a server is accelerated, and gets an accelerated backup if
    /// it is still slow a period later (or, if its link is too busy to
    /// accelerate, as soon as backups open); a task slowed by its node gets a backup; a backup
    /// still slow a period after it started is accelerated; the end game
    /// accelerates everything left. Backups wait for `backup_after`.
    Progressive,
    /// By priority (seed 000 §2.6): a critical slow task is accelerated
    /// whatever the cause and the cap (critical tasks are few), and gets a
    /// backup that reads accelerated from the start once backups open; a
    /// normal one gets [`Policy::less_critical`].
    Priority,
}

/// What a slow task of normal priority gets under [`PolicyKind::Priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LessCritical {
    /// Nothing.
    Normal,
    /// Accelerated reads (when a slow server is the cause), no backup.
    Accelerate,
    /// A backup, both attempts reading normally.
    Backup,
}

/// The order in which candidates are taken when there are more than the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The lowest rate first.
    Slowest,
    /// Pseudo-random, from this seed (the same inputs pick the same tasks).
    Random(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub kind: PolicyKind,
    /// A task is slow when its rate is below this fraction of the average
    /// rate of the judged tasks no slow server holds back (of all judged
    /// tasks, when fewer than `min_reports` are).
    pub slow_below: f64,
    /// Reports needed before the average means anything.
    pub min_reports: usize,
    /// A task is judged only after it has run this long (its first rates
    /// are noise).
    pub warmup: Duration,
    /// Accelerated reads are admitted only while the task's node link is
    /// loaded below this fraction of its capacity (they read more stripes).
    pub network_limit: f64,
    /// At most this fraction of the candidates for acceleration is
    /// accelerated per evaluation (at least one).
    pub accelerate_cap: f64,
    /// Backups running or asked for at once, as a fraction of the running
    /// attempts (at least one): backups take slots, so their cap is
    /// relative to what runs, as Hadoop's speculative cap is.
    pub backup_cap: f64,
    pub pick: Pick,
    /// Once at least this fraction of the groups is committed (for a job
    /// too small for that to leave any running, at its last group), every
    /// running task is accelerated.
    pub end_game: f64,
    /// Backups start only once this fraction of the groups is committed.
    pub backup_after: f64,
    /// The progressive policy's escalation period.
    pub period: Duration,
    pub less_critical: LessCritical,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            kind: PolicyKind::Progressive,
            slow_below: 0.6,
            min_reports: 3,
            warmup: Duration::from_secs(5),
            network_limit: 0.5,
            accelerate_cap: 0.5,
            backup_cap: 0.1,
            pick: Pick::Slowest,
            end_game: 0.99,
            backup_after: 0.75,
            period: Duration::from_secs(10),
            less_critical: LessCritical::Accelerate,
        }
    }
}

/// A task: one attempt of a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    pub group: String,
    pub attempt: Attempt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Normal,
    Critical,
}

/// What the controller knows of a running attempt at an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    pub task: TaskId,
    /// The node it runs on.
    pub node: String,
    /// Bytes it processed per second over the last window.
    pub rate: f64,
    /// Whether a server it reads from is slow (see [`slow_servers`]).
    pub slow_server: bool,
    /// The load on its node's link, a fraction of capacity.
    pub net_load: f64,
    pub priority: Priority,
    /// When it started, since the job started.
    pub started: Duration,
    /// Since when it reads accelerated, if it does (a backup may start so).
    pub accelerated_since: Option<Duration>,
    /// Whether it is a backup (a later attempt started while an earlier
    /// one still ran).
    pub backup: bool,
}

/// How far the job is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Since the job started.
    pub now: Duration,
    pub groups: usize,
    pub committed: usize,
    /// Groups whose backup was asked for and does not run yet (waiting for
    /// a slot): they get no second one, and count against the backup cap.
    pub pending_backups: BTreeSet<String>,
}

impl Progress {
    fn done(&self) -> f64 {
        if self.groups == 0 { 1.0 } else { self.committed as f64 / self.groups as f64 }
    }

    /// Past the end game: at least `fraction` of the groups committed, or,
    /// for a job too small for that to leave any running, its last group.
    fn in_end_game(&self, fraction: f64) -> bool {
        let remaining = self.groups.saturating_sub(self.committed);
        // The epsilon keeps (1 - 0.9) times 10 groups at one, not zero.
        let allowed = (((1.0 - fraction) * self.groups as f64) + 1e-9).floor() as usize;
        remaining > 0 && remaining <= allowed.max(1)
    }
}

/// Why an action was taken (the controller's Events say it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Slow, and a server it reads from is slow.
    SlowServer,
    /// Slow, with healthy servers: its node is the cause.
    SlowNode,
    /// Still slow a period after it was accelerated.
    StillSlow,
    /// Slowed by a server, and its link too busy for accelerated reads.
    LinkBusy,
    /// A backup still slow a period after it started.
    SlowBackup,
    /// A critical task is slow.
    Critical,
    /// Past the end game.
    EndGame,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Switch this attempt to accelerated reads for all its remaining data.
    Accelerate { task: TaskId, reason: Reason },
    /// Start another attempt of the group, not on `avoid` (the node of the
    /// attempt it backs up), reading accelerated from the start if
    /// `accelerated`.
    Backup { group: String, avoid: String, reason: Reason, accelerated: bool },
}

/// The decisions of one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Whether the job is past its end game.
    pub end_game: bool,
}

/// The servers whose device bandwidth is below `below` times the median of
/// all servers': the ones a task reading from them waits for.
pub fn slow_servers(bandwidth: &BTreeMap<String, f64>, below: f64) -> BTreeSet<String> {
    let mut all: Vec<f64> = bandwidth.values().copied().filter(|b| b.is_finite()).collect();
    if all.is_empty() {
        return BTreeSet::new();
    }
    all.sort_by(f64::total_cmp);
    let median = all[all.len() / 2];
    bandwidth.iter().filter(|(_, b)| **b < below * median).map(|(s, _)| s.clone()).collect()
}

/// The servers slow in at least `needed` consecutive observations: one
/// reading below the median (a busy moment of a healthy server on a loaded
/// machine) is not yet a slow device, and since attempts launched while a
/// server is judged slow read accelerated, a false alarm costs extra bytes.
/// A server that reads healthy once is out at once.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowStreaks {
    needed: u32,
    streaks: BTreeMap<String, u32>,
}

impl SlowStreaks {
    pub fn new(needed: u32) -> Self {
        Self { needed: needed.max(1), streaks: BTreeMap::new() }
    }

    /// Takes one observation (the servers slow in it) and returns the
    /// servers slow for long enough.
    pub fn observe(&mut self, slow: &BTreeSet<String>) -> BTreeSet<String> {
        self.streaks.retain(|s, _| slow.contains(s));
        for s in slow {
            *self.streaks.entry(s.clone()).or_default() += 1;
        }
        self.streaks.iter().filter(|(_, n)| **n >= self.needed).map(|(s, _)| s.clone()).collect()
    }
}

/// Whether an attempt starts reading accelerated because a server its
/// group's data is on is already known slow: the cause is known before the
/// symptom, so the policies that cure a slow server with accelerated reads
/// do it from the first byte instead of after a warmup spent waiting for
/// that server. The policies that accelerate a task slowed by a server do
/// (accelerate, progressive, and priority for critical tasks and for normal
/// ones whose less critical option is acceleration); none and backup (which
/// knows no causes) do not. Unlike [`decide`], it holds every attempt,
/// critical ones and backups included, to the network limit, and it does
/// not wait a period before accelerating a backup: an attempt starting on a
/// server known slow is in the case the period exists to detect.
pub fn accelerate_at_launch(policy: &Policy, slow_server: bool, priority: Priority, net_load: f64) -> bool {
    let by_policy = match policy.kind {
        PolicyKind::None | PolicyKind::Backup => false,
        PolicyKind::Accelerate | PolicyKind::Progressive => true,
        PolicyKind::Priority => priority == Priority::Critical || policy.less_critical == LessCritical::Accelerate,
    };
    by_policy && slow_server && net_load < policy.network_limit
}

/// One evaluation: what to do about the running attempts `reports`.
pub fn decide(policy: &Policy, progress: &Progress, reports: &[TaskReport]) -> Decision {
    let end_game = policy.kind != PolicyKind::None && progress.in_end_game(policy.end_game);
    let mut d = Decision { actions: Vec::new(), end_game };
    if policy.kind == PolicyKind::None {
        return d;
    }
    let mut accelerate: BTreeMap<TaskId, Reason> = BTreeMap::new();
    let mut backup: BTreeMap<String, (String, Reason, bool)> = BTreeMap::new();
    if end_game && policy.kind != PolicyKind::Backup {
        for r in reports.iter().filter(|r| r.accelerated_since.is_none()) {
            accelerate.insert(r.task.clone(), Reason::EndGame);
        }
    }
    let judged: Vec<&TaskReport> =
        reports.iter().filter(|r| progress.now.saturating_sub(r.started) >= policy.warmup).collect();
    if judged.len() >= policy.min_reports.max(1) {
        // The reference rate is that of the tasks no slow server holds back,
        // when there are enough of them: a slow server behind most tasks
        // would drag a plain average down until none of them looked slow.
        // With too few such tasks there is no healthy reference, and the
        // slow server's own figure is the evidence: every task reading from
        // it and not yet accelerated is a candidate (except for the backup
        // policy, which by design knows no causes).
        let healthy: Vec<&TaskReport> = judged.iter().copied().filter(|r| !r.slow_server).collect();
        let no_reference = healthy.len() < policy.min_reports.max(1);
        let by_evidence = no_reference && policy.kind != PolicyKind::Backup;
        let basis = if no_reference { &judged } else { &healthy };
        let average = basis.iter().map(|r| r.rate).sum::<f64>() / basis.len() as f64;
        let slow: Vec<&TaskReport> = judged
            .into_iter()
            .filter(|r| {
                r.rate < policy.slow_below * average || (by_evidence && r.slow_server && r.accelerated_since.is_none())
            })
            .collect();
        // A group with two attempts running, or one asked for, has its backup.
        let mut running: BTreeMap<&str, usize> = BTreeMap::new();
        for r in reports {
            *running.entry(r.task.group.as_str()).or_default() += 1;
        }
        let in_flight = running.values().filter(|n| **n > 1).count() + progress.pending_backups.len();
        let backups_open = progress.done() >= policy.backup_after;
        let can_back_up = |r: &TaskReport| {
            backups_open
                && !r.backup
                && running[r.task.group.as_str()] == 1
                && !progress.pending_backups.contains(&r.task.group)
        };
        let admitted = |r: &TaskReport| r.accelerated_since.is_none() && r.net_load < policy.network_limit;
        let held_for = |since: Duration| progress.now.saturating_sub(since) >= policy.period;
        let cause = |r: &TaskReport| if r.slow_server { Reason::SlowServer } else { Reason::SlowNode };

        let mut acc: Vec<(&TaskReport, Reason)> = Vec::new();
        // Critical tasks' accelerations, outside the cap.
        let mut critical: Vec<&TaskReport> = Vec::new();
        // With whether the backup starts accelerated.
        let mut bak: Vec<(&TaskReport, Reason, bool)> = Vec::new();
        for r in slow {
            match policy.kind {
                PolicyKind::None => {}
                PolicyKind::Accelerate => {
                    if r.slow_server && admitted(r) {
                        acc.push((r, Reason::SlowServer));
                    }
                }
                PolicyKind::Backup => {
                    if can_back_up(r) {
                        bak.push((r, cause(r), false));
                    }
                }
                PolicyKind::Progressive => {
                    if r.backup {
                        if r.slow_server && admitted(r) && held_for(r.started) {
                            acc.push((r, Reason::SlowBackup));
                        }
                    } else if !r.slow_server {
                        if can_back_up(r) {
                            bak.push((r, Reason::SlowNode, false));
                        }
                    } else if admitted(r) {
                        acc.push((r, Reason::SlowServer));
                    } else if can_back_up(r) {
                        // Accelerated a period ago and still slow, or its link
                        // too busy to accelerate: a backup elsewhere, reading
                        // accelerated from the start (it reads the same slow
                        // server).
                        if r.accelerated_since.is_some_and(held_for) {
                            bak.push((r, Reason::StillSlow, true));
                        } else if r.accelerated_since.is_none() {
                            bak.push((r, Reason::LinkBusy, true));
                        }
                    }
                }
                PolicyKind::Priority => match (r.priority, policy.less_critical) {
                    // The seed's rule for critical tasks: a backup, and both
                    // attempts accelerated, whatever the cause.
                    (Priority::Critical, _) => {
                        if r.accelerated_since.is_none() {
                            critical.push(r);
                        }
                        if can_back_up(r) {
                            bak.push((r, Reason::Critical, true));
                        }
                    }
                    (Priority::Normal, LessCritical::Normal) => {}
                    (Priority::Normal, LessCritical::Accelerate) => {
                        if r.slow_server && admitted(r) {
                            acc.push((r, Reason::SlowServer));
                        }
                    }
                    (Priority::Normal, LessCritical::Backup) => {
                        if can_back_up(r) {
                            bak.push((r, cause(r), false));
                        }
                    }
                },
            }
        }
        for r in critical {
            accelerate.entry(r.task.clone()).or_insert(Reason::Critical);
        }
        let acc_limit = ((policy.accelerate_cap * acc.len() as f64).ceil() as usize).max(1);
        for (r, reason) in capped(policy, progress, acc, acc_limit, |c| c.0) {
            accelerate.entry(r.task.clone()).or_insert(reason);
        }
        // Backups in flight count against their cap.
        let bak_limit = ((policy.backup_cap * reports.len() as f64).ceil() as usize).max(1).saturating_sub(in_flight);
        for (r, reason, accelerated) in capped(policy, progress, bak, bak_limit, |c| c.0) {
            backup.entry(r.task.group.clone()).or_insert((r.node.clone(), reason, accelerated));
        }
    }
    d.actions.extend(accelerate.into_iter().map(|(task, reason)| Action::Accelerate { task, reason }));
    d.actions.extend(backup.into_iter().map(|(group, (avoid, reason, accelerated))| Action::Backup {
        group,
        avoid,
        reason,
        accelerated,
    }));
    d
}

/// At most `limit` of the candidates, in the policy's order.
fn capped<'a, C>(
    policy: &Policy,
    progress: &Progress,
    mut candidates: Vec<C>,
    limit: usize,
    report: impl Fn(&C) -> &'a TaskReport,
) -> Vec<C> {
    match policy.pick {
        Pick::Slowest => candidates.sort_by(|a, b| {
            let (a, b) = (report(a), report(b));
            a.rate.total_cmp(&b.rate).then_with(|| a.task.cmp(&b.task))
        }),
        Pick::Random(seed) => {
            let at = progress.now.as_millis() as u64;
            candidates.sort_by_key(|c| {
                let r = report(c);
                (mix(seed ^ mix(at) ^ hash_task(&r.task)), r.task.clone())
            });
        }
    }
    candidates.truncate(limit);
    candidates
}

fn hash_task(t: &TaskId) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in t.group.bytes().chain(t.attempt.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
