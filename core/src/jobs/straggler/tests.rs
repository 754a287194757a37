use super::*;
use proptest::prelude::*;

const S: Duration = Duration::from_secs(1);

fn report(group: usize, rate: f64) -> TaskReport {
    TaskReport {
        task: TaskId { group: format!("g{group:03}"), attempt: 1 },
        node: format!("n{group:03}"),
        rate,
        slow_server: false,
        net_load: 0.1,
        priority: Priority::Normal,
        started: Duration::ZERO,
        accelerated_since: None,
        backup: false,
    }
}

fn policy(kind: PolicyKind) -> Policy {
    Policy { kind, ..Policy::default() }
}

fn progress(now: Duration, groups: usize, committed: usize) -> Progress {
    Progress { now, groups, committed, ..Progress::default() }
}

fn accelerated(d: &Decision) -> Vec<(&str, Reason)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Accelerate { task, reason } => Some((task.group.as_str(), *reason)),
            _ => None,
        })
        .collect()
}

fn backed_up(d: &Decision) -> Vec<(&str, &str, Reason)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Backup { group, avoid, reason, .. } => Some((group.as_str(), avoid.as_str(), *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_slowed_by_a_server_is_accelerated_and_one_slowed_by_its_node_backed_up() {
    let mut reports: Vec<TaskReport> = (0..10).map(|g| report(g, 100.0)).collect();
    reports[3].rate = 20.0;
    reports[3].slow_server = true;
    reports[7].rate = 20.0;
    let p = Policy { backup_cap: 1.0, ..policy(PolicyKind::Progressive) };
    // Before the backup threshold only the server's victim is helped.
    let d = decide(&p, &progress(10 * S, 40, 10), &reports);
    assert_eq!(accelerated(&d), [("g003", Reason::SlowServer)]);
    assert!(backed_up(&d).is_empty());
    // Past it, the node's victim gets a backup elsewhere, never acceleration.
    let d = decide(&p, &progress(10 * S, 40, 30), &reports);
    assert_eq!(accelerated(&d), [("g003", Reason::SlowServer)]);
    assert_eq!(backed_up(&d), [("g007", "n007", Reason::SlowNode)]);
    // Accelerated a period ago and still slow: a backup.
    reports[3].accelerated_since = Some(5 * S);
    let d = decide(&p, &progress(14 * S, 40, 30), &reports);
    assert!(!backed_up(&d).iter().any(|b| b.0 == "g003"), "within the period: {d:?}");
    let d = decide(&p, &progress(15 * S, 40, 30), &reports);
    assert!(backed_up(&d).contains(&("g003", "n003", Reason::StillSlow)), "{d:?}");
    // That backup reads the same slow server: it starts accelerated; the
    // node's victim's backup does not need to.
    let starts_accelerated = |d: &Decision, g: &str| {
        d.actions.iter().any(|a| matches!(a, Action::Backup { group, accelerated: true, .. } if group == g))
    };
    assert!(starts_accelerated(&d, "g003") && !starts_accelerated(&d, "g007"), "{d:?}");
    // Asked for and waiting for a slot, a backup is not asked for again.
    let mut waiting = progress(15 * S, 40, 30);
    waiting.pending_backups.insert("g003".into());
    assert_eq!(backed_up(&decide(&p, &waiting, &reports)), [("g007", "n007", Reason::SlowNode)]);
    // A group with a backup running gets no second one.
    let mut b = report(7, 100.0);
    b.task.attempt = 2;
    b.node = "n100".into();
    b.backup = true;
    b.started = 10 * S;
    reports.push(b);
    let d = decide(&p, &progress(16 * S, 40, 30), &reports);
    assert!(!backed_up(&d).iter().any(|b| b.0 == "g007"), "{d:?}");
}

#[test]
fn a_slow_server_behind_most_tasks_does_not_hide_them_in_the_average() {
    // Seven of ten tasks wait on a slow server: against the plain average
    // (58) none would be below 60%, against the three healthy ones' (100)
    // all seven are.
    let mut reports: Vec<TaskReport> = (0..10).map(|g| report(g, 100.0)).collect();
    for r in &mut reports[..7] {
        r.rate = 40.0;
        r.slow_server = true;
    }
    let p = Policy { accelerate_cap: 1.0, ..policy(PolicyKind::Progressive) };
    let d = decide(&p, &progress(10 * S, 40, 10), &reports);
    assert_eq!(accelerated(&d).len(), 7, "{d:?}");
    // Every task behind it: no healthy reference, the server's figure is
    // the evidence, and only tasks not yet accelerated are candidates.
    for r in &mut reports {
        r.rate = 40.0;
        r.slow_server = true;
    }
    reports[0].accelerated_since = Some(6 * S);
    let d = decide(&p, &progress(10 * S, 40, 10), &reports);
    assert_eq!(accelerated(&d).len(), 9, "{d:?}");
    assert!(!accelerated(&d).iter().any(|a| a.0 == "g000"), "{d:?}");
    // Accelerated and as fast as the rest, nobody is still slow: no backups.
    for r in &mut reports {
        r.accelerated_since = Some(S);
    }
    let d = decide(&p, &progress(30 * S, 40, 35), &reports);
    assert!(d.actions.is_empty(), "{d:?}");
}

#[test]
fn the_network_limit_holds_acceleration_back() {
    let mut reports: Vec<TaskReport> = (0..10).map(|g| report(g, 100.0)).collect();
    reports[3].rate = 20.0;
    reports[3].slow_server = true;
    reports[3].net_load = 0.9;
    let d = decide(&policy(PolicyKind::Accelerate), &progress(10 * S, 10, 0), &reports);
    assert_eq!(d, Decision::default());
    // The default policy sends it a backup, reading accelerated from a node
    // whose link has room, once backups are open.
    let d = decide(&policy(PolicyKind::Progressive), &progress(10 * S, 100, 80), &reports);
    assert_eq!(
        d.actions,
        [Action::Backup { group: "g003".into(), avoid: "n003".into(), reason: Reason::LinkBusy, accelerated: true }]
    );
}

#[test]
fn the_end_game_accelerates_every_remaining_task() {
    let mut reports: Vec<TaskReport> = (0..3).map(|g| report(g, 100.0)).collect();
    reports[1].accelerated_since = Some(S);
    let d = decide(&policy(PolicyKind::Accelerate), &progress(10 * S, 1000, 995), &reports);
    assert!(d.end_game);
    assert_eq!(accelerated(&d), [("g000", Reason::EndGame), ("g002", Reason::EndGame)]);
    let d = decide(&policy(PolicyKind::None), &progress(10 * S, 1000, 995), &reports);
    assert_eq!(d, Decision::default());
    let d = decide(&policy(PolicyKind::Backup), &progress(10 * S, 1000, 995), &reports);
    assert!(accelerated(&d).is_empty(), "backups only: {d:?}");
}

#[test]
fn small_jobs_reach_the_end_game_at_their_last_group() {
    let reports = [report(0, 100.0)];
    let p = policy(PolicyKind::Accelerate);
    for (groups, committed, want) in [
        (1, 0, true),
        (10, 8, false),
        (10, 9, true),
        (100, 98, false),
        (100, 99, true),
        (1000, 990, true),
        (1000, 989, false),
    ] {
        let d = decide(&p, &progress(10 * S, groups, committed), &reports);
        assert_eq!(d.end_game, want, "{committed} of {groups}");
    }
    assert!(!decide(&p, &progress(10 * S, 10, 10), &[]).end_game, "nothing left");
}

#[test]
fn backups_in_flight_count_against_the_cap() {
    // 20 running, 4 of them slow on their nodes; a cap of 10% allows two
    // backups at once, and one group already has its backup running.
    let mut reports: Vec<TaskReport> = (0..19).map(|g| report(g, 100.0)).collect();
    for r in &mut reports[..4] {
        r.rate = 10.0;
    }
    let mut running_backup = report(0, 100.0);
    running_backup.task.attempt = 2;
    running_backup.backup = true;
    reports.push(running_backup);
    let p = policy(PolicyKind::Progressive);
    let d = decide(&p, &progress(10 * S, 100, 80), &reports);
    assert_eq!(backed_up(&d).len(), 1, "{d:?}");
    let mut waiting = progress(10 * S, 100, 80);
    waiting.pending_backups.insert("g001".into());
    assert!(backed_up(&decide(&p, &waiting, &reports)).is_empty(), "the cap is taken");
}

#[test]
fn critical_tasks_get_both_and_the_others_what_is_configured() {
    let mut reports: Vec<TaskReport> = (0..10).map(|g| report(g, 100.0)).collect();
    for r in &mut reports[..2] {
        r.rate = 10.0;
        r.slow_server = true;
    }
    reports[0].priority = Priority::Critical;
    let mut p = Policy { backup_cap: 1.0, ..policy(PolicyKind::Priority) };
    let at = progress(10 * S, 10, 8);
    let d = decide(&p, &at, &reports);
    assert_eq!(accelerated(&d), [("g000", Reason::Critical), ("g001", Reason::SlowServer)]);
    assert_eq!(backed_up(&d), [("g000", "n000", Reason::Critical)]);
    assert!(d.actions.iter().any(|a| matches!(a, Action::Backup { accelerated: true, .. })), "both accelerated");
    p.less_critical = LessCritical::Backup;
    let d = decide(&p, &at, &reports);
    assert_eq!(accelerated(&d), [("g000", Reason::Critical)]);
    assert_eq!(backed_up(&d), [("g000", "n000", Reason::Critical), ("g001", "n001", Reason::SlowServer)]);
    p.less_critical = LessCritical::Normal;
    assert_eq!(backed_up(&decide(&p, &at, &reports)), [("g000", "n000", Reason::Critical)]);
    // Critical tasks are few: the cap does not hold them back.
    for r in &mut reports[..4] {
        r.rate = 10.0;
        r.priority = Priority::Critical;
    }
    let p = Policy { accelerate_cap: 0.01, ..p };
    assert_eq!(accelerated(&decide(&p, &at, &reports)).len(), 4);
}

#[test]
fn young_tasks_and_too_few_reports_are_not_judged() {
    let mut reports: Vec<TaskReport> = (0..10).map(|g| report(g, 100.0)).collect();
    reports[3].rate = 1.0;
    reports[3].slow_server = true;
    reports[3].started = 8 * S;
    let p = policy(PolicyKind::Accelerate);
    assert!(decide(&p, &progress(10 * S, 10, 0), &reports).actions.is_empty(), "in its warmup");
    assert_eq!(accelerated(&decide(&p, &progress(13 * S, 10, 0), &reports)).len(), 1);
    let d = decide(&p, &progress(13 * S, 10, 0), &reports[2..4]);
    assert!(d.actions.is_empty(), "two reports are too few for an average");
}

#[test]
fn attempts_start_accelerated_on_a_known_slow_server_only_where_decide_would_accelerate_them() {
    let p = |kind| policy(kind);
    let (n, c) = (Priority::Normal, Priority::Critical);
    for kind in [PolicyKind::Accelerate, PolicyKind::Progressive] {
        assert!(accelerate_at_launch(&p(kind), true, n, 0.0), "{kind:?}");
        assert!(!accelerate_at_launch(&p(kind), false, n, 0.0), "{kind:?}: no slow server, no cause");
        assert!(!accelerate_at_launch(&p(kind), true, n, 0.9), "{kind:?}: the link is too busy");
    }
    for kind in [PolicyKind::None, PolicyKind::Backup] {
        assert!(!accelerate_at_launch(&p(kind), true, c, 0.0), "{kind:?}");
    }
    let mut prio = p(PolicyKind::Priority);
    assert!(accelerate_at_launch(&prio, true, c, 0.0));
    assert!(accelerate_at_launch(&prio, true, n, 0.0), "less critical: accelerate");
    for less in [LessCritical::Normal, LessCritical::Backup] {
        prio.less_critical = less;
        assert!(accelerate_at_launch(&prio, true, c, 0.0), "{less:?}");
        assert!(!accelerate_at_launch(&prio, true, n, 0.0), "{less:?}");
    }
}

#[test]
fn a_server_is_slow_after_consecutive_observations_and_healthy_after_one() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    let mut s = SlowStreaks::new(2);
    assert_eq!(s.observe(&set(&["a"])), set(&[]), "one reading is a blip");
    assert_eq!(s.observe(&set(&["a", "b"])), set(&["a"]));
    assert_eq!(s.observe(&set(&["b"])), set(&["b"]), "a is out at its first healthy reading");
    assert_eq!(s.observe(&set(&["a"])), set(&[]), "and starts over");
    assert_eq!(SlowStreaks::new(1).observe(&set(&["c"])), set(&["c"]));
}

#[test]
fn slow_servers_are_slow_beside_the_median() {
    let bw: BTreeMap<String, f64> =
        [("a", 100.0), ("b", 90.0), ("c", 30.0), ("d", 110.0)].into_iter().map(|(s, b)| (s.to_string(), b)).collect();
    assert_eq!(slow_servers(&bw, 0.5), ["c".to_string()].into());
    assert!(slow_servers(&BTreeMap::new(), 0.5).is_empty());
}

#[test]
fn random_picks_are_reproducible_and_capped() {
    let mut reports: Vec<TaskReport> = (0..20).map(|g| report(g, 100.0)).collect();
    for r in &mut reports[..10] {
        r.rate = 10.0;
        r.slow_server = true;
    }
    let p = Policy { pick: Pick::Random(7), ..policy(PolicyKind::Accelerate) };
    let at = progress(10 * S, 20, 0);
    let a = decide(&p, &at, &reports);
    assert_eq!(a.actions.len(), 5, "half of 10 candidates");
    assert_eq!(decide(&p, &at, &reports), a);
    let p = Policy { accelerate_cap: 0.2, ..policy(PolicyKind::Accelerate) };
    let slowest = decide(&p, &at, &reports);
    assert_eq!(slowest.actions.len(), 2, "20% of 10 candidates");
}

const KINDS: [PolicyKind; 5] =
    [PolicyKind::None, PolicyKind::Accelerate, PolicyKind::Backup, PolicyKind::Progressive, PolicyKind::Priority];

fn arb_kind() -> impl Strategy<Value = PolicyKind> {
    proptest::sample::select(KINDS.to_vec())
}

proptest! {
    /// Tasks all within the slowness threshold of one another are never
    /// acted on, whatever their causes, loads, priorities and ages, until
    /// the end game.
    #[test]
    fn a_homogeneous_run_accelerates_nothing_and_starts_no_backups(
        kind in arb_kind(),
        tasks in proptest::collection::vec(
            (0.0f64..0.999, any::<bool>(), 0.0f64..1.0, any::<bool>(), 0u64..60, proptest::option::of(0u64..60)),
            0..50,
        ),
        now in 0u64..120,
        groups in 1usize..200,
        committed_frac in 0.0f64..=1.0,
    ) {
        let p = policy(kind);
        // Rates in [base, base / slow_below): the average is below base /
        // slow_below, so no rate is under slow_below times the average.
        let base = 100.0;
        let span = base / p.slow_below - base;
        let reports: Vec<TaskReport> = tasks
            .iter()
            .enumerate()
            .map(|(i, &(f, slow_server, net_load, critical, started, acc))| TaskReport {
                rate: base + f * span,
                slow_server,
                net_load,
                priority: if critical { Priority::Critical } else { Priority::Normal },
                started: Duration::from_secs(started),
                accelerated_since: acc.map(Duration::from_secs),
                ..report(i, 0.0)
            })
            .collect();
        let committed = ((groups as f64 * committed_frac) as usize).min(groups);
        let at = progress(Duration::from_secs(now), groups, committed);
        let d = decide(&p, &at, &reports);
        // Unless too few tasks have no slow server to tell what healthy is:
        // then the slow server's figure is the evidence, and only tasks
        // reading from it may be acted on.
        let judged: Vec<&TaskReport> =
            reports.iter().filter(|r| at.now.saturating_sub(r.started) >= p.warmup).collect();
        let healthy = judged.iter().filter(|r| !r.slow_server).count();
        let by_evidence = kind != PolicyKind::Backup
            && judged.len() >= p.min_reports
            && healthy < p.min_reports
            && judged.iter().any(|r| r.slow_server && r.accelerated_since.is_none());
        if by_evidence {
            let on = |t: &TaskId| reports.iter().any(|r| &r.task == t && r.slow_server);
            let group_on = |g: &str| reports.iter().any(|r| r.task.group == g && r.slow_server);
            let ok = d.actions.iter().all(|a| match a {
                Action::Accelerate { task, reason } => *reason == Reason::EndGame || on(task),
                Action::Backup { group, .. } => group_on(group),
            });
            prop_assert!(ok, "{:?}", d);
        } else if !d.end_game {
            prop_assert!(d.actions.is_empty(), "{:?}", d);
        } else {
            let end_game_only = d.actions.iter().all(|a| matches!(a, Action::Accelerate { reason: Reason::EndGame, .. }));
            prop_assert!(end_game_only, "{:?}", d);
        }
    }

    /// A task slowed by a slow server, with room on its link, is accelerated
    /// within a bounded number of evaluations however many others compete
    /// (each evaluation takes at least the cap's share of the candidates),
    /// and no task with room on its link gets a backup instead, though
    /// backups are open.
    #[test]
    fn a_task_slowed_by_a_server_is_accelerated_within_a_bound(
        kind in proptest::sample::select(vec![PolicyKind::Accelerate, PolicyKind::Progressive]),
        extra in 3usize..20,
        rates in proptest::collection::vec(1.0f64..50.0, 1..60),
        target in any::<proptest::sample::Index>(),
        cap in 0.05f64..1.0,
        random in proptest::option::of(any::<u64>()),
    ) {
        let pick = random.map_or(Pick::Slowest, Pick::Random);
        // A period longer than the test: no acceleration has had time to fail.
        let p = Policy { accelerate_cap: cap, pick, period: Duration::from_secs(1 << 20), ..policy(kind) };
        // At least as many healthy tasks as slow ones keeps the average
        // above twice every slow rate's threshold.
        let healthy = rates.len() + extra;
        let mut reports: Vec<TaskReport> = (0..healthy).map(|g| report(g, 1000.0)).collect();
        for (i, rate) in rates.iter().enumerate() {
            reports.push(TaskReport { rate: *rate, slow_server: true, ..report(healthy + i, 0.0) });
        }
        let target = reports[healthy + target.index(rates.len())].task.clone();
        let candidates = rates.len() as f64;
        let bound = (candidates.ln() / (1.0 / (1.0 - cap.min(0.999))).ln()).floor() as usize + 1;
        let mut picked_at = None;
        for eval in 0..=bound {
            let now = Duration::from_secs(10 + eval as u64);
            let d = decide(&p, &progress(now, 10_000, 8_000), &reports);
            for a in &d.actions {
                match a {
                    Action::Accelerate { task, .. } => {
                        let r = reports.iter_mut().find(|r| &r.task == task).unwrap();
                        prop_assert!(r.accelerated_since.is_none(), "accelerated twice");
                        r.accelerated_since = Some(now);
                    }
                    Action::Backup { .. } => prop_assert!(false, "a backup instead of acceleration: {:?}", a),
                }
            }
            if picked_at.is_none() && reports.iter().any(|r| r.task == target && r.accelerated_since.is_some()) {
                picked_at = Some(eval);
            }
        }
        prop_assert!(picked_at.is_some(), "not picked within {} evaluations", bound + 1);
    }

    /// A task slow while every server it reads is healthy is slow because of
    /// its node: it is never accelerated (before the end game), and gets a
    /// backup on another node once backups are open.
    #[test]
    fn a_task_slowed_by_its_node_gets_a_backup_not_acceleration(
        healthy in 3usize..40,
        slow_rate in 1.0f64..50.0,
        committed_frac in 0.0f64..0.99,
        evals in 1usize..10,
    ) {
        let p = Policy { backup_cap: 1.0, ..policy(PolicyKind::Progressive) };
        let mut reports: Vec<TaskReport> = (0..healthy).map(|g| report(g, 1000.0)).collect();
        reports.push(report(healthy, slow_rate));
        let victim = reports[healthy].task.clone();
        let groups = 100;
        let committed = (groups as f64 * committed_frac) as usize;
        for eval in 0..evals {
            let d = decide(&p, &progress(Duration::from_secs(10 + eval as u64), groups, committed), &reports);
            prop_assert!(!accelerated(&d).iter().any(|(g, _)| *g == victim.group), "{:?}", d);
            let b = backed_up(&d);
            if committed as f64 / groups as f64 >= p.backup_after {
                prop_assert_eq!(b, vec![(victim.group.as_str(), reports[healthy].node.as_str(), Reason::SlowNode)]);
            } else {
                prop_assert!(b.is_empty());
            }
        }
    }

    /// Per evaluation, exactly the cap's share of the acceleration
    /// candidates is accelerated (at least one), the candidates being the
    /// slow tasks slowed by a server with room on their link (a naive
    /// oracle); backups stay within the backup cap's share of the running
    /// attempts.
    #[test]
    fn actions_are_capped(
        kind in arb_kind(),
        tasks in proptest::collection::vec((1.0f64..1000.0, any::<bool>(), 0.0f64..1.0), 3..80),
        cap in 0.05f64..1.0,
        backup_cap in 0.01f64..1.0,
        committed in 0usize..99,
    ) {
        let p = Policy { accelerate_cap: cap, backup_cap, ..policy(kind) };
        let reports: Vec<TaskReport> = tasks
            .iter()
            .enumerate()
            .map(|(i, &(rate, slow_server, net_load))| TaskReport { rate, slow_server, net_load, ..report(i, 0.0) })
            .collect();
        let d = decide(&p, &progress(Duration::from_secs(30), 100, committed), &reports);
        prop_assert!(!d.end_game);
        // The reference: the tasks no slow server holds back, if there are
        // enough of them; else all, and then every task behind a slow
        // server is a candidate.
        let healthy: Vec<f64> = reports.iter().filter(|r| !r.slow_server).map(|r| r.rate).collect();
        let no_reference = healthy.len() < p.min_reports;
        let basis: Vec<f64> = if no_reference { reports.iter().map(|r| r.rate).collect() } else { healthy };
        let average = basis.iter().sum::<f64>() / basis.len() as f64;
        let candidates = reports
            .iter()
            .filter(|r| r.rate < p.slow_below * average || no_reference)
            .filter(|r| r.slow_server && r.net_load < p.network_limit)
            .count();
        let acc = accelerated(&d).len();
        if kind == PolicyKind::Accelerate {
            let want = if candidates == 0 { 0 } else { ((cap * candidates as f64).ceil() as usize).clamp(1, candidates) };
            prop_assert_eq!(acc, want, "{:?}", d);
        }
        let backup_limit = ((backup_cap * reports.len() as f64).ceil() as usize).max(1);
        prop_assert!(backed_up(&d).len() <= backup_limit, "{:?}", d);
    }
}
