use super::*;
use proptest::prelude::*;

fn sources(n: usize) -> Vec<StripeSource> {
    (0..n).map(|i| StripeSource { rank: i as u32, ..Default::default() }).collect()
}

fn stripes(step: &Step) -> Vec<usize> {
    match step {
        Step::Fetch(f) => f.iter().map(|f| f.stripe).collect(),
        other => panic!("expected fetches, got {other:?}"),
    }
}

#[test]
fn normal_read_fetches_only_the_wants() {
    let mut s = ReadSession::new(6, 0..4096, vec![0, 1, 2, 3, 4, 5], SessionPolicy::new(ReadMode::Normal), sources(9));
    let first = s.start();
    assert_eq!(stripes(&first), vec![0, 1, 2, 3, 4, 5]);
    assert!(matches!(&first, Step::Fetch(f) if f.iter().all(|f| f.range == (0..4096))));
    for i in 0..5 {
        assert_eq!(s.on_arrival(i), Step::Fetch(vec![]));
    }
    assert_eq!(s.on_arrival(5), Step::Complete(Completion::Direct));
    assert!(!s.wants_hedge_timer(), "normal reads never hedge");
}

#[test]
fn normal_read_degrades_to_a_rebuild_on_failure() {
    let mut s = ReadSession::new(6, 0..64, vec![2], SessionPolicy::new(ReadMode::Normal), sources(9));
    assert_eq!(stripes(&s.start()), vec![2]);
    // Rebuilding stripe 2 needs k = 6 other stripes of the same range.
    let more = stripes(&s.on_failure(2));
    assert_eq!(more, vec![0, 1, 3, 4, 5, 6]);
    for &i in &more[..5] {
        assert_eq!(s.on_arrival(i), Step::Fetch(vec![]));
    }
    assert_eq!(
        s.on_arrival(more[5]),
        Step::Complete(Completion::Rebuild { inputs: vec![0, 1, 3, 4, 5, 6], outputs: vec![2] })
    );
}

#[test]
fn losing_more_than_m_stripes_fails_and_names_them() {
    let mut s = ReadSession::new(6, 0..64, vec![0, 1, 2, 3, 4, 5], SessionPolicy::new(ReadMode::Normal), sources(9));
    s.start();
    assert_eq!(stripes(&s.on_failure(0)), vec![6]);
    assert_eq!(stripes(&s.on_failure(1)), vec![7]);
    assert_eq!(stripes(&s.on_failure(2)), vec![8]);
    match s.on_failure(6) {
        Step::Fail(u) => {
            assert_eq!(u.missing, vec![0, 1, 2, 6]);
            assert_eq!(u.reachable, 5);
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert_eq!(s.on_arrival(3), Step::Ignored);
}

#[test]
fn unavailable_wants_start_as_a_degraded_read() {
    let mut src = sources(9);
    src[1].available = false;
    let mut s = ReadSession::new(6, 0..64, vec![0, 1], SessionPolicy::new(ReadMode::Normal), src);
    let first = stripes(&s.start());
    assert_eq!(first, vec![0, 2, 3, 4, 5, 6], "1 is unreachable, so k on-time stripes are asked for at once");
}

#[test]
fn hedge_timer_adds_reconstruction_fetches_and_late_data_is_ignored() {
    let mut s = ReadSession::new(6, 0..64, vec![0, 1, 2, 3, 4, 5], SessionPolicy::new(ReadMode::Hedged), sources(9));
    assert_eq!(stripes(&s.start()), vec![0, 1, 2, 3, 4, 5]);
    assert!(s.wants_hedge_timer());
    for i in [0, 1, 2, 4, 5] {
        s.on_arrival(i);
    }
    // Stripe 3 is late: one parity stripe makes k on-time stripes.
    assert_eq!(stripes(&s.on_hedge_timer()), vec![6]);
    assert!(!s.wants_hedge_timer());
    assert_eq!(
        s.on_arrival(6),
        Step::Complete(Completion::Rebuild { inputs: vec![0, 1, 2, 4, 5, 6], outputs: vec![3] })
    );
    assert_eq!(s.in_flight(), vec![3], "the loser to cancel");
    assert_eq!(s.on_arrival(3), Step::Ignored, "late data is never merged");
}

#[test]
fn the_late_want_may_still_win() {
    let mut s = ReadSession::new(2, 0..64, vec![0, 1], SessionPolicy::new(ReadMode::Hedged), sources(4));
    s.start();
    s.on_arrival(0);
    assert_eq!(stripes(&s.on_hedge_timer()), vec![2]);
    assert_eq!(s.on_arrival(1), Step::Complete(Completion::Direct));
    assert_eq!(s.in_flight(), vec![2]);
}

#[test]
fn hedged_read_routes_around_a_known_slow_server_at_once() {
    let mut src = sources(9);
    src[4].slow = true;
    let mut s = ReadSession::new(6, 0..64, vec![0, 1, 2, 3, 4, 5], SessionPolicy::new(ReadMode::Hedged), src);
    assert_eq!(stripes(&s.start()), vec![0, 1, 2, 3, 4, 5, 6]);
}

#[test]
fn hedged_extra_stripes_go_out_with_the_wants() {
    let mut src = sources(9);
    src[6].rank = 10; // the slowest parity source is asked last
    let policy = SessionPolicy { extra_stripes: 2, ..SessionPolicy::new(ReadMode::Hedged) };
    let mut s = ReadSession::new(6, 0..64, vec![0, 1, 2, 3, 4, 5], policy, src);
    assert_eq!(stripes(&s.start()), vec![0, 1, 2, 3, 4, 5, 7, 8]);
}

#[test]
fn accelerated_read_asks_all_and_takes_the_first_k_distinct() {
    let mut s =
        ReadSession::new(6, 0..64, vec![0, 1, 2, 3, 4, 5], SessionPolicy::new(ReadMode::Accelerated), sources(9));
    assert_eq!(stripes(&s.start()), (0..9).collect::<Vec<_>>());
    for i in [8, 7, 0, 1, 2] {
        assert_eq!(s.on_arrival(i), Step::Fetch(vec![]));
    }
    // A second copy of stripe 8 does not make six.
    assert_eq!(s.on_arrival(8), Step::Fetch(vec![]));
    assert_eq!(
        s.on_arrival(3),
        Step::Complete(Completion::Rebuild { inputs: vec![0, 1, 2, 3, 7, 8], outputs: vec![4, 5] })
    );
    assert_eq!(s.in_flight(), vec![4, 5, 6]);
}

#[test]
fn accelerated_stripe_count_is_clamped_to_k_and_n() {
    let policy = SessionPolicy { accelerated_stripes: 7, ..SessionPolicy::new(ReadMode::Accelerated) };
    let mut s = ReadSession::new(6, 0..64, vec![0], policy, sources(9));
    assert_eq!(stripes(&s.start()).len(), 7);
    let policy = SessionPolicy { accelerated_stripes: 1, ..SessionPolicy::new(ReadMode::Accelerated) };
    let mut s = ReadSession::new(6, 0..64, vec![0], policy, sources(9));
    assert_eq!(stripes(&s.start()).len(), 6);
}

#[test]
fn read_modes_parse_and_print() {
    for m in ReadMode::ALL {
        assert_eq!(m.to_string().parse::<ReadMode>().unwrap(), m);
    }
    assert_eq!("fast".parse::<ReadMode>().unwrap_err(), UnknownReadMode("fast".into()));
}

/// What a simulated cluster does with each stripe.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Arrives,
    Fails,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the mode, the failures and the order of events: the session
    /// finishes exactly when it should, never asks for a stripe twice or for an
    /// unreachable one, and a completion names k distinct arrived inputs and
    /// exactly the wants that did not arrive.
    #[test]
    fn sessions_finish_correctly_in_any_event_order(
        k in 1usize..8,
        m in 1usize..5,
        mode_i in 0usize..3,
        want_mask in 1u32..256,
        fail_mask in any::<u32>(),
        unavailable_mask in any::<u32>(),
        order_seed in any::<u64>(),
        hedge_at in 0usize..12,
    ) {
        let n = k + m;
        let mode = ReadMode::ALL[mode_i];
        let wants: Vec<usize> = (0..k).filter(|i| want_mask & (1 << (i % 8)) != 0).collect();
        prop_assume!(!wants.is_empty());
        let fates: Vec<Fate> = (0..n).map(|i| if fail_mask & (1 << i) != 0 { Fate::Fails } else { Fate::Arrives }).collect();
        let mut src = sources(n);
        for (i, s) in src.iter_mut().enumerate() {
            s.available = unavailable_mask & (1 << i) == 0 || i % 3 != 0;
        }
        let good = (0..n).filter(|&i| src[i].available && fates[i] == Fate::Arrives).count();
        let wants_ok = wants.iter().all(|&w| src[w].available && fates[w] == Fate::Arrives);

        let mut s = ReadSession::new(k, 0..64, wants.clone(), SessionPolicy::new(mode), src.clone());
        let mut requested = vec![false; n];
        let mut pending: Vec<usize> = Vec::new();
        let mut arrived: Vec<usize> = Vec::new();
        let mut rng = order_seed | 1;
        let mut step = s.start();
        let mut events = 0;
        let outcome = loop {
            match step {
                Step::Fetch(f) => {
                    for x in f {
                        prop_assert!(!requested[x.stripe], "stripe {} requested twice", x.stripe);
                        prop_assert!(src[x.stripe].available, "unreachable stripe {} requested", x.stripe);
                        requested[x.stripe] = true;
                        pending.push(x.stripe);
                    }
                }
                Step::Ignored => prop_assert!(false, "ignored before finishing"),
                done => break done,
            }
            if events == hedge_at && s.wants_hedge_timer() {
                step = s.on_hedge_timer();
                events += 1;
                continue;
            }
            if pending.is_empty() {
                prop_assert!(false, "session waits with nothing in flight");
            }
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            let stripe = pending.swap_remove((rng as usize) % pending.len());
            events += 1;
            step = match fates[stripe] {
                Fate::Arrives => { arrived.push(stripe); s.on_arrival(stripe) }
                Fate::Fails => s.on_failure(stripe),
            };
        };
        match outcome {
            Step::Complete(Completion::Direct) => {
                prop_assert!(wants.iter().all(|w| arrived.contains(w)));
            }
            Step::Complete(Completion::Rebuild { inputs, outputs }) => {
                prop_assert_eq!(inputs.len(), k);
                prop_assert!(inputs.iter().all(|i| arrived.contains(i)));
                let expect: Vec<usize> = wants.iter().copied().filter(|w| !arrived.contains(w)).collect();
                prop_assert_eq!(outputs, expect);
            }
            Step::Fail(u) => {
                prop_assert!(good < k && !wants_ok, "failed with {} good stripes of k = {}", good, k);
                prop_assert!(u.reachable < k);
            }
            _ => unreachable!(),
        }
        if mode == ReadMode::Normal && wants_ok {
            // A healthy normal read asks for nothing but the wants.
            prop_assert!((0..n).all(|i| !requested[i] || wants.contains(&i)));
        }
        prop_assert_eq!(s.on_arrival(0), Step::Ignored);
    }
}
