//! The scheduler: one job's attempts on the nodes' task slots, driven by
//! what the controller observes. It starts each group next to its data,
//! takes the straggler decisions at every evaluation, records every result
//! in the commit ledger, retries failures up to the backoff limit, moves
//! the work of a node that went away, and says when the job is done.
//!
//! It is the controller logic that `tessera job run`, `tessera bench jobs`
//! and the Job controller share: they turn what they see (an attempt
//! finished, failed, reported its rate; a node went away) into calls here,
//! and carry out the [`Command`]s that come back (start a process or a pod,
//! switch its reads, stop it, publish). Nothing here does I/O or reads a
//! clock: time since the job started is passed in.
//!
//! Placement: each queued group in turn takes the free node holding the
//! most of its bytes, so tasks run next to their data; groups with no data
//! on any free node then take any free node (work waits for no node: an
//! idle slot costs more than a remote read). Groups are queued largest
//! first, which shortens the tail (the longest-processing-time rule);
//! retries and backups go to the front.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::commit::{Attempt, Commit, Ledger, LedgerError};
use super::straggler::{self, Action, Policy, Priority, Progress, Reason, TaskId, TaskReport};

/// A group as the scheduler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub bytes: u64,
    /// Its data-stripe bytes held on each node (the plan's, by node).
    pub by_node: BTreeMap<String, u64>,
    /// The chunkservers its reads go to: a slow one among them is the
    /// cause that accelerated reads cure.
    pub servers: BTreeSet<String>,
    pub priority: Priority,
}

/// What the caller is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start this attempt on this node, reading accelerated from the start
    /// if `accelerated`.
    Launch { task: TaskId, node: String, accelerated: bool, backup: bool },
    /// Switch the attempt to accelerated reads for all its remaining data.
    Accelerate { task: TaskId, reason: Reason },
    /// The attempt's result is its group's.
    Committed { task: TaskId },
    /// Stop the attempt if it runs and discard its result: `winner` holds
    /// the group (or, with none, the attempt was given up or the job failed).
    Cancel { task: TaskId, winner: Option<Attempt> },
    /// The end game began: every remaining attempt reads accelerated.
    EndGame,
    /// Every group is committed: publish these attempts' results, one per
    /// group.
    Publish { results: BTreeMap<String, Attempt> },
    /// The job failed: this group's attempts failed more often than the
    /// backoff limit allows.
    Fail { group: String, attempt: Attempt, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("no running attempt {attempt} of group {group:?}")]
    NotRunning { group: String, attempt: Attempt },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A recorded ledger that does not hold exactly the job's groups (it
    /// belongs to another plan of the job).
    #[error("the recorded ledger does not match the job's groups: {group:?} is in one and not the other")]
    Mismatch { group: String },
}

/// How the job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed { group: String, attempt: Attempt, reason: String },
}

/// Counts for status and summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub groups: usize,
    pub committed: usize,
    pub running: usize,
    /// Attempts started, first ones, retries and backups.
    pub attempts: usize,
    /// Attempts that read accelerated (switched or started so).
    pub accelerated: usize,
    pub backups: usize,
    pub failed: usize,
    /// Attempts stopped or discarded because another won their group.
    pub discarded: usize,
}

/// A running attempt as the scheduler knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub node: String,
    pub started: Duration,
    pub accelerated_since: Option<Duration>,
    pub backup: bool,
    /// The last reported rate (bytes per second) and link load.
    pub rate: f64,
    pub net_load: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct Queued {
    group: String,
    /// A backup never runs on the node of the attempt it backs up.
    avoid: Option<String>,
    accelerated: bool,
    backup: bool,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    policy: Policy,
    groups: BTreeMap<String, GroupSpec>,
    ledger: Ledger,
    /// Task slots per node; a node that went away has none.
    slots: BTreeMap<String, usize>,
    running: BTreeMap<TaskId, Running>,
    queue: VecDeque<Queued>,
    end_game: bool,
    /// The servers judged slow at the last evaluation: an attempt of a
    /// group with data on one starts accelerated.
    slow: BTreeSet<String>,
    outcome: Option<Outcome>,
    counts: Counts,
}

impl Scheduler {
    /// A job not started yet: every group queued, largest first.
    pub fn new(policy: Policy, groups: Vec<GroupSpec>, slots: BTreeMap<String, usize>, backoff_limit: u32) -> Self {
        let ledger = Ledger::new(groups.iter().map(|g| g.name.clone()), backoff_limit);
        Self::resume(policy, groups, slots, ledger, Vec::new(), Duration::ZERO)
            .expect("a new ledger holds exactly the groups")
            .0
    }

    /// A job picked up again (by a restarted controller) from its recorded
    /// ledger and the attempts seen running, each with its node and whether
    /// it is a backup and reads accelerated: groups neither committed nor
    /// running are queued again, and nothing committed runs again; the
    /// commands cancel what runs but cannot count (attempts of committed
    /// groups, failed or given-up attempts, attempts the ledger never
    /// started).
    pub fn resume(
        policy: Policy,
        groups: Vec<GroupSpec>,
        slots: BTreeMap<String, usize>,
        ledger: Ledger,
        running: Vec<(TaskId, String, bool, bool)>,
        now: Duration,
    ) -> Result<(Self, Vec<Command>), SchedulerError> {
        let names: BTreeSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let recorded: BTreeSet<&str> = ledger.groups.keys().map(String::as_str).collect();
        if let Some(g) = names.symmetric_difference(&recorded).next() {
            return Err(SchedulerError::Mismatch { group: g.to_string() });
        }
        let mut order: Vec<&GroupSpec> = groups.iter().collect();
        order.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        let counts = Counts {
            groups: groups.len(),
            attempts: ledger.groups.values().map(|r| r.started as usize).sum(),
            failed: ledger.groups.values().map(|r| r.failed.len()).sum(),
            ..Counts::default()
        };
        let mut s = Self {
            policy,
            groups: BTreeMap::new(),
            ledger,
            slots,
            running: BTreeMap::new(),
            queue: VecDeque::new(),
            end_game: false,
            slow: BTreeSet::new(),
            outcome: None,
            counts,
        };
        let mut out = Vec::new();
        for (task, node, backup, accelerated) in running {
            let Some(r) = s.ledger.groups.get(&task.group) else {
                out.push(Command::Cancel { task, winner: None });
                continue;
            };
            let dead = task.attempt == 0
                || task.attempt > r.started
                || r.failed.contains(&task.attempt)
                || r.abandoned.contains(&task.attempt);
            if dead || r.committed.is_some() {
                out.push(Command::Cancel { winner: r.committed.filter(|_| !dead), task });
                continue;
            }
            s.counts.accelerated += usize::from(accelerated);
            s.counts.backups += usize::from(backup);
            let since = accelerated.then_some(now);
            s.running.insert(
                task,
                Running { node, started: now, accelerated_since: since, backup, rate: 0.0, net_load: 0.0 },
            );
        }
        for g in order {
            let done = s.ledger.groups.get(&g.name).is_some_and(|r| r.committed.is_some());
            if !done && !s.running.keys().any(|t| t.group == g.name) {
                s.queue.push_back(Queued { group: g.name.clone(), avoid: None, accelerated: false, backup: false });
            }
        }
        s.groups = groups.into_iter().map(|g| (g.name.clone(), g)).collect();
        if let Some(results) = s.ledger.results() {
            // Committed whole before the restart: publishing may not have
            // happened, so it is asked for again.
            let results = results.into_iter().map(|(g, a)| (g.to_string(), a)).collect();
            out.push(Command::Publish { results });
            s.outcome = Some(Outcome::Succeeded);
        }
        Ok((s, out))
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn running(&self) -> &BTreeMap<TaskId, Running> {
        &self.running
    }

    pub fn in_end_game(&self) -> bool {
        self.end_game
    }

    pub fn counts(&self) -> Counts {
        Counts { running: self.running.len(), committed: self.ledger.committed(), ..self.counts }
    }

    /// An attempt's rate over the last window and its node link's load (a
    /// fraction of capacity). Reports of attempts no longer running are
    /// ignored (they may cross a cancel).
    pub fn report(&mut self, task: &TaskId, rate: f64, net_load: f64) {
        if let Some(r) = self.running.get_mut(task) {
            r.rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
            r.net_load = net_load;
        }
    }

    /// An attempt finished and asks to be its group's result.
    pub fn finished(&mut self, task: &TaskId) -> Result<Vec<Command>, SchedulerError> {
        self.take(task)?;
        let mut out = Vec::new();
        match self.ledger.commit(&task.group, task.attempt)? {
            Commit::Won => {
                out.push(Command::Committed { task: task.clone() });
                self.queue.retain(|q| q.group != task.group);
                let losers: Vec<TaskId> = self.running.keys().filter(|t| t.group == task.group).cloned().collect();
                for t in losers {
                    self.running.remove(&t);
                    self.counts.discarded += 1;
                    out.push(Command::Cancel { task: t, winner: Some(task.attempt) });
                }
                if let Some(results) = self.ledger.results() {
                    let results = results.into_iter().map(|(g, a)| (g.to_string(), a)).collect();
                    self.outcome = Some(Outcome::Succeeded);
                    out.push(Command::Publish { results });
                }
            }
            Commit::Repeat => {}
            Commit::Lost { winner } => {
                self.counts.discarded += 1;
                out.push(Command::Cancel { task: task.clone(), winner: Some(winner) });
            }
        }
        Ok(out)
    }

    /// An attempt failed (`reason` is what the job's Failed condition says
    /// if it was the last one allowed).
    pub fn failed(&mut self, task: &TaskId, reason: &str) -> Result<Vec<Command>, SchedulerError> {
        self.take(task)?;
        self.counts.failed += 1;
        let again = self.ledger.fail(&task.group, task.attempt)?;
        let committed = self.ledger.groups[&task.group].committed.is_some();
        if again {
            self.requeue(&task.group);
            return Ok(Vec::new());
        }
        // Out of retries, but a backup may still make it.
        let other = self.running.keys().any(|t| t.group == task.group);
        if committed || other || self.outcome.is_some() {
            return Ok(Vec::new());
        }
        let outcome = Outcome::Failed { group: task.group.clone(), attempt: task.attempt, reason: reason.to_string() };
        self.outcome = Some(outcome);
        self.queue.clear();
        let mut out: Vec<Command> =
            std::mem::take(&mut self.running).into_keys().map(|t| Command::Cancel { task: t, winner: None }).collect();
        out.push(Command::Fail { group: task.group.clone(), attempt: task.attempt, reason: reason.to_string() });
        Ok(out)
    }

    /// A node went away: its attempts are given up (not counted against
    /// the backoff limit) and their groups queued again elsewhere.
    pub fn node_lost(&mut self, node: &str) -> Vec<Command> {
        self.slots.insert(node.to_string(), 0);
        let lost: Vec<TaskId> = self.running.iter().filter(|(_, r)| r.node == node).map(|(t, _)| t.clone()).collect();
        let mut out = Vec::new();
        for t in lost {
            self.running.remove(&t);
            // Only known attempts run, so the ledger knows them.
            if self.ledger.abandon(&t.group, t.attempt).unwrap_or(false) {
                self.requeue(&t.group);
            }
            out.push(Command::Cancel { task: t, winner: None });
        }
        out
    }

    /// A node's task slots (a node that came, or came back).
    pub fn set_slots(&mut self, node: &str, slots: usize) {
        self.slots.insert(node.to_string(), slots);
    }

    /// One evaluation at `now` (since the job started), with the servers
    /// now judged slow: the straggler decisions, then free slots filled.
    pub fn tick(&mut self, now: Duration, slow_servers: &BTreeSet<String>) -> Vec<Command> {
        let mut out = Vec::new();
        if self.outcome.is_some() {
            return out;
        }
        let reports: Vec<TaskReport> = self
            .running
            .iter()
            .map(|(t, r)| {
                let g = &self.groups[&t.group];
                TaskReport {
                    task: t.clone(),
                    node: r.node.clone(),
                    rate: r.rate,
                    slow_server: g.servers.iter().any(|s| slow_servers.contains(s)),
                    net_load: r.net_load,
                    priority: g.priority,
                    started: r.started,
                    accelerated_since: r.accelerated_since,
                    backup: r.backup,
                }
            })
            .collect();
        let progress = Progress {
            now,
            groups: self.groups.len(),
            committed: self.ledger.committed(),
            pending_backups: self.queue.iter().filter(|q| q.backup).map(|q| q.group.clone()).collect(),
        };
        let decision = straggler::decide(&self.policy, &progress, &reports);
        self.slow.clone_from(slow_servers);
        if decision.end_game && !self.end_game {
            self.end_game = true;
            out.push(Command::EndGame);
        }
        for action in decision.actions {
            match action {
                Action::Accelerate { task, reason } => {
                    if let Some(r) = self.running.get_mut(&task).filter(|r| r.accelerated_since.is_none()) {
                        r.accelerated_since = Some(now);
                        self.counts.accelerated += 1;
                        out.push(Command::Accelerate { task, reason });
                    }
                }
                Action::Backup { group, avoid, accelerated, .. } => {
                    self.queue.push_front(Queued { group, avoid: Some(avoid), accelerated, backup: true });
                }
            }
        }
        self.fill(now, &mut out);
        out
    }

    fn take(&mut self, task: &TaskId) -> Result<Running, SchedulerError> {
        self.running
            .remove(task)
            .ok_or_else(|| SchedulerError::NotRunning { group: task.group.clone(), attempt: task.attempt })
    }

    /// Queues another attempt of `group` unless one runs or waits.
    fn requeue(&mut self, group: &str) {
        let busy = self.running.keys().any(|t| t.group == group) || self.queue.iter().any(|q| q.group == group);
        if !busy {
            self.queue.push_front(Queued { group: group.to_string(), avoid: None, accelerated: false, backup: false });
        }
    }

    fn free(&self, node: &str) -> usize {
        let used = self.running.values().filter(|r| r.node == node).count();
        self.slots.get(node).copied().unwrap_or(0).saturating_sub(used)
    }

    /// Whether `q` may run on `node`: a slot free, not the node it avoids,
    /// and no attempt of its group there already.
    fn fits(&self, q: &Queued, node: &str) -> bool {
        self.free(node) > 0
            && q.avoid.as_deref() != Some(node)
            && !self.running.iter().any(|(t, r)| t.group == q.group && r.node == node)
    }

    fn fill(&mut self, now: Duration, out: &mut Vec<Command>) {
        let nodes: Vec<String> = self.slots.keys().cloned().collect();
        // First every queued group whose best free node holds its data, in
        // queue order; then the rest on any free node.
        for local_only in [true, false] {
            let mut i = 0;
            while i < self.queue.len() {
                let q = &self.queue[i];
                let held = |n: &String| self.groups[&q.group].by_node.get(n).copied().unwrap_or(0);
                let best = nodes
                    .iter()
                    .filter(|n| self.fits(q, n))
                    .filter(|n| !local_only || held(n) > 0)
                    .max_by(|a, b| held(a).cmp(&held(b)).then_with(|| self.free(a).cmp(&self.free(b))).then(b.cmp(a)))
                    .cloned();
                match best {
                    Some(node) => {
                        let q = self.queue.remove(i).expect("index in range");
                        self.launch(q, node, now, out);
                    }
                    None => i += 1,
                }
            }
        }
    }

    fn launch(&mut self, q: Queued, node: String, now: Duration, out: &mut Vec<Command>) {
        let attempt = match self.ledger.start(&q.group) {
            Ok(Some(a)) => a,
            // Committed meanwhile: nothing to start.
            Ok(None) => return,
            // Out of retries with nothing of the group left running (its
            // last attempt was given up): the job ends here.
            Err(e) => {
                if !self.running.keys().any(|t| t.group == q.group) && self.outcome.is_none() {
                    let attempt = self.ledger.groups.get(&q.group).map_or(0, |r| r.started);
                    let reason = e.to_string();
                    self.outcome = Some(Outcome::Failed { group: q.group.clone(), attempt, reason: reason.clone() });
                    self.queue.clear();
                    out.extend(
                        std::mem::take(&mut self.running)
                            .into_keys()
                            .map(|t| Command::Cancel { task: t, winner: None }),
                    );
                    out.push(Command::Fail { group: q.group, attempt, reason });
                }
                return;
            }
        };
        let g = &self.groups[&q.group];
        // The node's link load as its attempts last reported it.
        let load = self.running.values().filter(|r| r.node == node).map(|r| r.net_load).fold(0.0, f64::max);
        let known_slow = g.servers.iter().any(|s| self.slow.contains(s));
        let accelerated = q.accelerated
            || self.end_game
            || straggler::accelerate_at_launch(&self.policy, known_slow, g.priority, load);
        self.counts.attempts += 1;
        self.counts.accelerated += usize::from(accelerated);
        self.counts.backups += usize::from(q.backup);
        let task = TaskId { group: q.group, attempt };
        self.running.insert(
            task.clone(),
            Running {
                node: node.clone(),
                started: now,
                accelerated_since: accelerated.then_some(now),
                backup: q.backup,
                rate: 0.0,
                net_load: 0.0,
            },
        );
        out.push(Command::Launch { task, node, accelerated, backup: q.backup });
    }
}

#[cfg(test)]
mod tests;
