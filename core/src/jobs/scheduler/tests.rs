use super::*;
use crate::jobs::straggler::PolicyKind;
use proptest::prelude::*;

const S: Duration = Duration::from_secs(1);

fn node(i: usize) -> String {
    format!("n{i}")
}

/// Group i holds `bytes` on node `at`.
fn group(i: usize, bytes: u64, at: usize) -> GroupSpec {
    GroupSpec {
        name: format!("g{i:02}"),
        bytes,
        by_node: [(node(at), bytes)].into(),
        servers: [format!("s{at}")].into(),
        priority: Priority::Normal,
    }
}

fn slots(nodes: usize, each: usize) -> BTreeMap<String, usize> {
    (0..nodes).map(|i| (node(i), each)).collect()
}

fn launches(cmds: &[Command]) -> Vec<(String, Attempt, String, bool, bool)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Launch { task, node, accelerated, backup } => {
                Some((task.group.clone(), task.attempt, node.clone(), *accelerated, *backup))
            }
            _ => None,
        })
        .collect()
}

fn task(group: &str, attempt: Attempt) -> TaskId {
    TaskId { group: group.into(), attempt }
}

fn quick(kind: PolicyKind) -> Policy {
    Policy { kind, warmup: Duration::ZERO, min_reports: 1, ..Policy::default() }
}

#[test]
fn tasks_start_next_to_their_data_largest_first_and_then_anywhere() {
    // Three groups on n0 (one slot), one on n1; n2 holds nothing.
    let groups = vec![group(0, 10, 0), group(1, 30, 0), group(2, 20, 0), group(3, 5, 1)];
    let mut s = Scheduler::new(quick(PolicyKind::None), groups, slots(3, 1), 0);
    let l = launches(&s.tick(Duration::ZERO, &BTreeSet::new()));
    // n0 takes its largest group, n1 its own; the idle n2 takes the next
    // largest of n0's rather than wait.
    assert_eq!(
        l,
        [
            ("g01".into(), 1, node(0), false, false),
            ("g03".into(), 1, node(1), false, false),
            ("g02".into(), 1, node(2), false, false),
        ]
    );
    assert_eq!(s.counts().running, 3);
    let c = s.finished(&task("g01", 1)).unwrap();
    assert_eq!(c, [Command::Committed { task: task("g01", 1) }]);
    assert_eq!(launches(&s.tick(S, &BTreeSet::new())), [("g00".into(), 1, node(0), false, false)]);
}

#[test]
fn the_first_attempt_to_finish_wins_and_the_other_is_cancelled() {
    let groups: Vec<GroupSpec> = (0..4).map(|i| group(i, 100, i)).collect();
    let mut p = quick(PolicyKind::Backup);
    p.backup_after = 0.5;
    p.backup_cap = 1.0;
    let mut s = Scheduler::new(p, groups, slots(5, 1), 1);
    assert_eq!(launches(&s.tick(Duration::ZERO, &BTreeSet::new())).len(), 4);
    for g in ["g00", "g01"] {
        s.finished(&task(g, 1)).unwrap();
    }
    // g03 is slow: half the groups are done, so it gets a backup, on the
    // free node, never its own.
    s.report(&task("g02", 1), 100.0, 0.0);
    s.report(&task("g03", 1), 1.0, 0.0);
    let l = launches(&s.tick(10 * S, &BTreeSet::new()));
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!((l[0].0.as_str(), l[0].1, l[0].4), ("g03", 2, true));
    assert_ne!(l[0].2, node(3));
    // The backup finishes first and wins; the primary is stopped.
    let c = s.finished(&task("g03", 2)).unwrap();
    assert!(c.contains(&Command::Cancel { task: task("g03", 1), winner: Some(2) }), "{c:?}");
    assert_eq!(s.counts().discarded, 1);
    // The primary's finish crossing the cancel is not running any more.
    assert!(matches!(s.finished(&task("g03", 1)), Err(SchedulerError::NotRunning { .. })));
    let c = s.finished(&task("g02", 1)).unwrap();
    let published = [("g00", 1), ("g01", 1), ("g02", 1), ("g03", 2)].map(|(g, a)| (g.to_string(), a)).into();
    assert_eq!(c.last(), Some(&Command::Publish { results: published }));
    assert_eq!(s.outcome(), Some(&Outcome::Succeeded));
    assert!(s.tick(11 * S, &BTreeSet::new()).is_empty());
}

#[test]
fn failures_are_retried_up_to_the_backoff_limit_then_the_job_fails() {
    let groups = vec![group(0, 10, 0), group(1, 10, 1)];
    let mut s = Scheduler::new(quick(PolicyKind::None), groups, slots(2, 1), 1);
    s.tick(Duration::ZERO, &BTreeSet::new());
    assert!(s.failed(&task("g00", 1), "exit code 1").unwrap().is_empty());
    assert_eq!(launches(&s.tick(S, &BTreeSet::new())), [("g00".into(), 2, node(0), false, false)]);
    let c = s.failed(&task("g00", 2), "exit code 2").unwrap();
    assert_eq!(
        c,
        [
            Command::Cancel { task: task("g01", 1), winner: None },
            Command::Fail { group: "g00".into(), attempt: 2, reason: "exit code 2".into() },
        ]
    );
    assert_eq!(s.outcome(), Some(&Outcome::Failed { group: "g00".into(), attempt: 2, reason: "exit code 2".into() }));
    assert!(s.tick(2 * S, &BTreeSet::new()).is_empty());
}

#[test]
fn a_node_that_goes_away_costs_no_retry_and_its_work_moves() {
    let groups = vec![group(0, 10, 0)];
    let mut s = Scheduler::new(quick(PolicyKind::None), groups, slots(2, 1), 0);
    s.tick(Duration::ZERO, &BTreeSet::new());
    assert_eq!(s.node_lost(&node(0)), [Command::Cancel { task: task("g00", 1), winner: None }]);
    // backoffLimit 0, and the group runs again, on the other node.
    assert_eq!(launches(&s.tick(S, &BTreeSet::new())), [("g00".into(), 2, node(1), false, false)]);
    assert!(matches!(s.finished(&task("g00", 1)), Err(SchedulerError::NotRunning { .. })));
    assert!(s.finished(&task("g00", 2)).unwrap().iter().any(|c| matches!(c, Command::Publish { .. })));
}

#[test]
fn a_resumed_job_runs_nothing_committed_again() {
    let groups: Vec<GroupSpec> = (0..3).map(|i| group(i, 10, i)).collect();
    let mut s = Scheduler::new(quick(PolicyKind::None), groups.clone(), slots(3, 1), 1);
    s.tick(Duration::ZERO, &BTreeSet::new());
    s.finished(&task("g00", 1)).unwrap();
    let recorded = s.ledger().clone();
    // Restarted: it sees g00's attempt still there (its pod not yet
    // deleted) and g01's running; g02's pod is gone.
    let seen = vec![(task("g00", 1), node(0), false, false), (task("g01", 1), node(1), false, true)];
    let other = vec![group(7, 10, 0)];
    let e = Scheduler::resume(quick(PolicyKind::None), other, slots(3, 1), recorded.clone(), vec![], 5 * S);
    assert!(matches!(e, Err(SchedulerError::Mismatch { .. })));
    let (mut s, c) = Scheduler::resume(quick(PolicyKind::None), groups, slots(3, 1), recorded, seen, 5 * S).unwrap();
    assert_eq!(c, [Command::Cancel { task: task("g00", 1), winner: Some(1) }]);
    assert_eq!(s.counts().running, 1);
    assert_eq!(launches(&s.tick(5 * S, &BTreeSet::new())), [("g02".into(), 2, node(2), false, false)]);
    assert_eq!(s.running()[&task("g01", 1)].accelerated_since, Some(5 * S));
}

#[test]
fn a_group_out_of_retries_whose_last_attempt_is_given_up_fails_the_job() {
    // backoffLimit 0: attempt 1 failed while its backup (2) ran on n1.
    let mut ledger = Ledger::new(["g00".to_string()], 0);
    ledger.start("g00").unwrap();
    ledger.start("g00").unwrap();
    assert!(!ledger.fail("g00", 1).unwrap());
    let seen = vec![(task("g00", 2), node(1), true, false)];
    let (mut s, c) =
        Scheduler::resume(quick(PolicyKind::None), vec![group(0, 10, 0)], slots(2, 1), ledger, seen, S).unwrap();
    assert!(c.is_empty(), "{c:?}");
    // Its node goes away: nothing may start again, and the job ends rather
    // than wait for ever.
    s.node_lost(&node(1));
    let c = s.tick(2 * S, &BTreeSet::new());
    assert!(matches!(c.as_slice(), [Command::Fail { group, attempt: 2, .. }] if group == "g00"), "{c:?}");
    assert!(matches!(s.outcome(), Some(Outcome::Failed { .. })));
}

#[test]
fn a_job_resumed_with_every_group_committed_is_published() {
    let mut ledger = Ledger::new(["g00".to_string()], 0);
    ledger.start("g00").unwrap();
    ledger.commit("g00", 1).unwrap();
    let (s, c) =
        Scheduler::resume(quick(PolicyKind::None), vec![group(0, 10, 0)], slots(1, 1), ledger, vec![], S).unwrap();
    assert_eq!(c, [Command::Publish { results: [("g00".to_string(), 1)].into() }]);
    assert_eq!(s.outcome(), Some(&Outcome::Succeeded));
}

#[test]
fn past_the_end_game_every_attempt_reads_accelerated() {
    let groups: Vec<GroupSpec> = (0..2).map(|i| group(i, 10, i)).collect();
    let mut s = Scheduler::new(quick(PolicyKind::Progressive), groups, slots(2, 1), 1);
    s.tick(Duration::ZERO, &BTreeSet::new());
    s.finished(&task("g00", 1)).unwrap();
    s.report(&task("g01", 1), 10.0, 0.0);
    let c = s.tick(S, &BTreeSet::new());
    assert_eq!(c[0], Command::EndGame);
    assert!(c.contains(&Command::Accelerate { task: task("g01", 1), reason: Reason::EndGame }), "{c:?}");
    // A retry started now reads accelerated from the start.
    s.failed(&task("g01", 1), "killed").unwrap();
    assert_eq!(launches(&s.tick(2 * S, &BTreeSet::new())), [("g01".into(), 2, node(1), true, false)]);
    assert!(s.in_end_game());
}

#[test]
fn a_task_behind_a_slow_server_is_accelerated() {
    let groups: Vec<GroupSpec> = (0..4).map(|i| group(i, 10, i)).collect();
    let mut s = Scheduler::new(quick(PolicyKind::Progressive), groups, slots(4, 1), 1);
    s.tick(Duration::ZERO, &BTreeSet::new());
    for i in 0..4 {
        s.report(&task(&format!("g{i:02}"), 1), if i == 2 { 5.0 } else { 100.0 }, 0.1);
    }
    let c = s.tick(6 * S, &["s2".to_string()].into());
    assert_eq!(c, [Command::Accelerate { task: task("g02", 1), reason: Reason::SlowServer }]);
    assert_eq!(s.counts().accelerated, 1);
    // Once only.
    assert!(s.tick(7 * S, &["s2".to_string()].into()).is_empty());
}

/// Something that happens to the job.
#[derive(Debug, Clone)]
enum Op {
    /// An evaluation, `dt` seconds on, with these servers slow.
    Tick(u32, Vec<bool>),
    /// The i-th running attempt (mod running) reports this rate.
    Report(usize, f64),
    Finish(usize),
    Fail(usize),
    Lose(usize),
    Back(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (0u32..4, proptest::collection::vec(any::<bool>(), 4)).prop_map(|(d, v)| Op::Tick(d, v)),
            3 => (any::<usize>(), 0.0f64..200.0).prop_map(|(i, r)| Op::Report(i, r)),
            3 => any::<usize>().prop_map(Op::Finish),
            1 => any::<usize>().prop_map(Op::Fail),
            1 => (0usize..4).prop_map(Op::Lose),
            1 => (0usize..4).prop_map(Op::Back),
        ],
        0..120,
    )
}

fn kind() -> impl Strategy<Value = PolicyKind> {
    prop_oneof![
        Just(PolicyKind::None),
        Just(PolicyKind::Accelerate),
        Just(PolicyKind::Backup),
        Just(PolicyKind::Progressive),
        Just(PolicyKind::Priority),
    ]
}

/// What the commands said so far, checked against the scheduler's state.
#[derive(Default)]
struct Seen {
    committed: BTreeMap<String, Attempt>,
    published: Option<BTreeMap<String, Attempt>>,
    failed: bool,
}

impl Seen {
    fn absorb(
        &mut self,
        s: &Scheduler,
        cmds: &[Command],
        slots: &BTreeMap<String, usize>,
    ) -> Result<(), TestCaseError> {
        for c in cmds {
            match c {
                Command::Launch { task, .. } => {
                    prop_assert!(!self.committed.contains_key(&task.group), "{:?} launched after its commit", task);
                    prop_assert!(self.published.is_none() && !self.failed);
                }
                Command::Committed { task } => {
                    prop_assert!(self.committed.insert(task.group.clone(), task.attempt).is_none(), "{:?} twice", task);
                }
                Command::Cancel { task, winner } => {
                    prop_assert!(!s.running().contains_key(task));
                    if let Some(w) = winner {
                        prop_assert_eq!(self.committed.get(&task.group), Some(w));
                    }
                }
                Command::Publish { results } => {
                    prop_assert!(self.published.is_none(), "published twice");
                    prop_assert_eq!(results, &self.committed);
                    prop_assert_eq!(results.len(), s.counts().groups);
                    self.published = Some(results.clone());
                }
                Command::Fail { .. } => {
                    prop_assert!(!self.failed && self.published.is_none());
                    self.failed = true;
                }
                Command::Accelerate { task, .. } => prop_assert!(s.running().contains_key(task)),
                Command::EndGame => {}
            }
        }
        // Slots hold; no group runs twice on one node; a committed group
        // runs nowhere.
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        let mut pairs = BTreeSet::new();
        for (t, r) in s.running() {
            *per_node.entry(&r.node).or_default() += 1;
            prop_assert!(pairs.insert((&t.group, &r.node)), "{} twice on {}", t.group, r.node);
            prop_assert!(!self.committed.contains_key(&t.group));
        }
        for (n, used) in per_node {
            prop_assert!(used <= slots.get(n).copied().unwrap_or(0), "{} runs {} tasks", n, used);
        }
        for (g, a) in &self.committed {
            prop_assert_eq!(s.ledger().groups[g].committed, Some(*a));
        }
        Ok(())
    }
}

proptest! {
    /// Under any interleaving of evaluations, reports, finishes, failures
    /// and nodes going and coming: slots hold, each group is committed
    /// once, the published results are exactly the committed attempts, and
    /// once the nodes are back and attempts finish the job ends.
    #[test]
    fn every_group_is_committed_once_and_the_job_ends(
        sizes in proptest::collection::vec((1u64..1000, 0usize..4), 1..12),
        each in 1usize..3,
        kind in kind(),
        backoff in 0u32..3,
        ops in ops(),
    ) {
        let groups: Vec<GroupSpec> = sizes.iter().enumerate().map(|(i, (b, at))| group(i, *b, *at)).collect();
        let mut p = quick(kind);
        p.backup_after = 0.3;
        p.period = 2 * S;
        let mut slots_now = slots(4, each);
        let mut s = Scheduler::new(p, groups, slots_now.clone(), backoff);
        let mut seen = Seen::default();
        let mut now = Duration::ZERO;
        let pick = |s: &Scheduler, i: usize| s.running().keys().nth(i % s.running().len().max(1)).cloned();
        for op in ops {
            let cmds = match op {
                Op::Tick(dt, slow) => {
                    now += dt * S;
                    let slow = slow.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| format!("s{i}")).collect();
                    s.tick(now, &slow)
                }
                Op::Report(i, rate) => {
                    if let Some(t) = pick(&s, i) {
                        s.report(&t, rate, 0.1);
                    }
                    Vec::new()
                }
                Op::Finish(i) => match pick(&s, i) {
                    Some(t) => s.finished(&t).unwrap(),
                    None => Vec::new(),
                },
                Op::Fail(i) => match pick(&s, i) {
                    Some(t) => s.failed(&t, "failed").unwrap(),
                    None => Vec::new(),
                },
                Op::Lose(n) => {
                    slots_now.insert(node(n), 0);
                    s.node_lost(&node(n))
                }
                Op::Back(n) => {
                    slots_now.insert(node(n), each);
                    s.set_slots(&node(n), each);
                    Vec::new()
                }
            };
            seen.absorb(&s, &cmds, &slots_now)?;
        }
        for n in 0..4 {
            slots_now.insert(node(n), each);
            s.set_slots(&node(n), each);
        }
        for _ in 0..200 {
            if s.outcome().is_some() {
                break;
            }
            now += S;
            let cmds = s.tick(now, &BTreeSet::new());
            seen.absorb(&s, &cmds, &slots_now)?;
            let running: Vec<TaskId> = s.running().keys().cloned().collect();
            for t in running {
                // Cancelled by an earlier finish of its group this round.
                if s.running().contains_key(&t) {
                    let cmds = s.finished(&t).unwrap();
                    seen.absorb(&s, &cmds, &slots_now)?;
                }
            }
        }
        match s.outcome() {
            Some(Outcome::Succeeded) => prop_assert!(seen.published.is_some()),
            Some(Outcome::Failed { .. }) => prop_assert!(seen.failed),
            None => prop_assert!(false, "the job never ended: {:?}", s.counts()),
        }
    }
}

#[test]
fn an_attempt_reading_a_server_known_slow_starts_accelerated_where_the_policy_cures_it_so() {
    // g00's data is on s0, g01's on s1; s0 is known slow. One slot each.
    let slow: BTreeSet<String> = ["s0".to_string()].into();
    for (kind, expected) in [
        (PolicyKind::Progressive, true),
        (PolicyKind::Accelerate, true),
        (PolicyKind::Backup, false),
        (PolicyKind::None, false),
    ] {
        let groups = vec![group(0, 10, 0), group(1, 10, 1), group(2, 10, 0)];
        let mut s = Scheduler::new(quick(kind), groups, slots(2, 1), 0);
        let first = launches(&s.tick(Duration::ZERO, &slow));
        assert_eq!(
            first,
            [("g00".into(), 1, node(0), expected, false), ("g01".into(), 1, node(1), false, false)],
            "{kind:?}"
        );
        s.finished(&task("g00", 1)).unwrap();
        let next = launches(&s.tick(S, &slow));
        assert_eq!(next, [("g02".into(), 1, node(0), expected, false)], "{kind:?}");
        assert_eq!(s.counts().accelerated, if expected { 2 } else { 0 }, "{kind:?}");
    }
    // Once the server is healthy again, a new attempt reads normally.
    // (Three groups, so that the retry is not the end game's last group.)
    let groups = vec![group(0, 30, 0), group(1, 20, 0), group(2, 10, 0)];
    let mut s = Scheduler::new(quick(PolicyKind::Progressive), groups, slots(1, 1), 1);
    assert_eq!(launches(&s.tick(Duration::ZERO, &slow)), [("g00".into(), 1, node(0), true, false)]);
    s.failed(&task("g00", 1), "crashed").unwrap();
    assert_eq!(launches(&s.tick(S, &BTreeSet::new())), [("g00".into(), 2, node(0), false, false)]);
}
