use super::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn server(zone: usize, rack: usize, node: usize, free: u64) -> Candidate {
    Candidate {
        topology: Topology {
            region: "r0".into(),
            zone: format!("z{zone}"),
            rack: format!("k{rack}"),
            node: format!("n{zone}-{rack}-{node}"),
        },
        free_bytes: free,
    }
}

fn grid(zones: usize, racks: usize, nodes: usize) -> Vec<Candidate> {
    let mut v = Vec::new();
    for z in 0..zones {
        for r in 0..racks {
            for n in 0..nodes {
                v.push(server(z, r, n, 1 << 40));
            }
        }
    }
    v
}

#[test]
fn nine_servers_in_three_zones_take_three_stripes_each() {
    let c = grid(3, 1, 3);
    let p = PlacementPolicy { level: Level::Zone, max_per_domain: 3 };
    let mut rng = StdRng::seed_from_u64(1);
    let chosen = choose(&c, 9, p, &HashMap::new(), &[], &mut rng).unwrap();
    let counts = domain_counts(chosen.iter().map(|&i| &c[i].topology), Level::Zone);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
}

#[test]
fn too_few_zones_is_an_error_naming_the_constraint() {
    let c = grid(2, 1, 5);
    let p = PlacementPolicy { level: Level::Zone, max_per_domain: 3 };
    let err = choose(&c, 9, p, &HashMap::new(), &[], &mut StdRng::seed_from_u64(1)).unwrap_err();
    assert_eq!(
        err,
        PlacementError::Unsatisfiable { wanted: 9, level: Level::Zone, max_per_domain: 3, domains: 2, capacity: 6 }
    );
    assert_eq!(
        err.to_string(),
        "cannot place 9 stripes with at most 3 per zone: the 2 zone(s) with eligible chunkservers can hold 6"
    );
}

#[test]
fn one_server_down_of_nine_still_places_eight() {
    // z0 has lost a server: it can take two stripes, the others three each.
    let c: Vec<Candidate> = grid(3, 1, 3).into_iter().skip(1).collect();
    let p = PlacementPolicy { level: Level::Zone, max_per_domain: 3 };
    let mut rng = StdRng::seed_from_u64(2);
    assert!(choose(&c, 9, p, &HashMap::new(), &[], &mut rng).is_err());
    let chosen = choose_at_least(&c, 9, 7, p, &HashMap::new(), &[], &mut rng).unwrap();
    assert_eq!(chosen.len(), 8);
    let err = choose_at_least(&c, 9, 9, p, &HashMap::new(), &[], &mut rng).unwrap_err();
    assert!(matches!(err, PlacementError::Unsatisfiable { wanted: 9, capacity: 8, .. }), "{err}");
}

#[test]
fn repair_counts_the_stripes_still_in_place() {
    let c = grid(3, 1, 4);
    let p = PlacementPolicy { level: Level::Zone, max_per_domain: 3 };
    // The item keeps 3 stripes in z0 and 2 in z1 (servers 0-2 and 4-5).
    let existing = domain_counts([0, 1, 2, 4, 5].iter().map(|&i| &c[i].topology), Level::Zone);
    let chosen = choose(&c, 2, p, &existing, &[0, 1, 2, 4, 5], &mut StdRng::seed_from_u64(3)).unwrap();
    for i in &chosen {
        assert_ne!(c[*i].topology.zone, "z0", "z0 is full");
    }
    let in_z1 = chosen.iter().filter(|&&i| c[i].topology.zone == "z1").count();
    assert!(in_z1 <= 1);
}

#[test]
fn fuller_servers_are_chosen_less() {
    // Two servers per zone, one with four times the free space of the other.
    let mut c = Vec::new();
    for z in 0..6 {
        c.push(server(z, 0, 0, 4_000));
        c.push(server(z, 0, 1, 1_000));
    }
    let p = PlacementPolicy { level: Level::Zone, max_per_domain: 1 };
    let mut rng = StdRng::seed_from_u64(9);
    let mut roomy = 0;
    let mut full = 0;
    for _ in 0..2000 {
        for i in choose(&c, 6, p, &HashMap::new(), &[], &mut rng).unwrap() {
            if i % 2 == 0 { roomy += 1 } else { full += 1 }
        }
    }
    // With weights 4:1 the roomy server wins 80% of the time.
    let share = roomy as f64 / (roomy + full) as f64;
    assert!((0.76..0.84).contains(&share), "roomy share {share}");
}

#[test]
fn choices_are_spread_evenly() {
    // 18 equal servers in 3 zones, RS(6,3) with at most 3 per zone: every
    // server should hold half of all items. Chi-square over 6000 placements.
    let c = grid(3, 2, 3);
    let p = PlacementPolicy { level: Level::Zone, max_per_domain: 3 };
    let mut rng = StdRng::seed_from_u64(5);
    let mut counts = vec![0u32; c.len()];
    let trials = 6000;
    for _ in 0..trials {
        for i in choose(&c, 9, p, &HashMap::new(), &[], &mut rng).unwrap() {
            counts[i] += 1;
        }
    }
    let expected = trials as f64 * 9.0 / 18.0;
    let chi2: f64 = counts.iter().map(|&o| (o as f64 - expected).powi(2) / expected).sum();
    // 17 degrees of freedom: the 99.9th percentile is about 40.8.
    assert!(chi2 < 40.8, "chi-square {chi2}, counts {counts:?}");
}

#[test]
fn levels_parse_and_domains_nest() {
    for l in Level::ALL {
        assert_eq!(l.to_string().parse::<Level>().unwrap(), l);
    }
    assert!("floor".parse::<Level>().unwrap_err().to_string().contains("region, zone, rack or node"));
    let t = server(1, 2, 3, 0).topology;
    assert_eq!(t.domain(Level::Region), "r0");
    assert_eq!(t.domain(Level::Zone), "r0/z1");
    assert_eq!(t.domain(Level::Rack), "r0/z1/k2");
    assert_eq!(t.domain(Level::Node), "r0/z1/k2/n1-2-3");
}

/// The oracle: stripes an item can have at most, one per server and
/// `max` per domain at `level`.
fn naive_capacity(c: &[Candidate], level: Level, max: usize) -> usize {
    let mut per: HashMap<String, usize> = HashMap::new();
    for x in c {
        *per.entry(x.topology.domain(level)).or_insert(0) += 1;
    }
    per.values().map(|v| (*v).min(max)).sum()
}

fn topology_strategy() -> impl Strategy<Value = Vec<Candidate>> {
    // 1-2 regions, 1-5 zones, 1-3 racks, 1-4 nodes, ragged.
    proptest::collection::vec((0usize..2, 0usize..5, 0usize..3, 0usize..4, 1u64..1000), 1..40).prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|x| seen.insert((x.0, x.1, x.2, x.3)))
            .map(|(r, z, k, n, free)| Candidate {
                topology: Topology {
                    region: format!("r{r}"),
                    zone: format!("z{z}"),
                    rack: format!("k{k}"),
                    node: format!("n{r}{z}{k}{n}"),
                },
                free_bytes: free,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever the topology and policy: a placement never puts more than the
    /// limit in a domain, uses distinct servers, and when the limit is at most
    /// m, losing any one domain at the policy's level leaves k stripes. When
    /// no placement is made, none was possible.
    #[test]
    fn placements_respect_the_domain_limit(
        c in topology_strategy(),
        k in 1usize..8,
        m in 1usize..4,
        level_i in 0usize..4,
        max_sub in 0usize..3,
        seed in any::<u64>(),
    ) {
        let n = k + m;
        let level = Level::ALL[level_i];
        let max = m.saturating_sub(max_sub).max(1);
        let p = PlacementPolicy { level, max_per_domain: max };
        let mut rng = StdRng::seed_from_u64(seed);
        let possible = naive_capacity(&c, level, max);
        match choose(&c, n, p, &HashMap::new(), &[], &mut rng) {
            Ok(chosen) => {
                prop_assert_eq!(chosen.len(), n);
                let mut uniq = chosen.clone();
                uniq.sort_unstable();
                uniq.dedup();
                prop_assert_eq!(uniq.len(), n);
                let counts = domain_counts(chosen.iter().map(|&i| &c[i].topology), level);
                prop_assert!(counts.values().all(|&v| v <= max), "{:?}", counts);
                for lost in counts.values() {
                    prop_assert!(n - lost >= k, "losing a domain leaves {} of k = {}", n - lost, k);
                }
            }
            Err(PlacementError::Unsatisfiable { capacity, .. }) => {
                prop_assert!(possible < n);
                prop_assert_eq!(capacity, possible);
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    /// Repair: after an item loses the stripes on some servers, placing the
    /// replacements with the survivors counted keeps the bound for the whole
    /// item, never picks a server already holding one of its stripes, and
    /// fails only when the domains truly cannot take them.
    #[test]
    fn repairs_respect_the_bound_with_the_survivors_counted(
        c in topology_strategy(),
        k in 1usize..8,
        m in 1usize..4,
        level_i in 0usize..4,
        lose_mask in any::<u16>(),
        seed in any::<u64>(),
    ) {
        let n = k + m;
        let level = Level::ALL[level_i];
        let p = PlacementPolicy { level, max_per_domain: m };
        let mut rng = StdRng::seed_from_u64(seed);
        let Ok(first) = choose(&c, n, p, &HashMap::new(), &[], &mut rng) else { return Ok(()) };
        // Lose up to m stripes (those whose bit is set), keep the rest.
        let lost: Vec<usize> = first.iter().enumerate().filter(|(i, _)| lose_mask >> i & 1 == 1).map(|(_, s)| *s).take(m).collect();
        let kept: Vec<usize> = first.iter().copied().filter(|s| !lost.contains(s)).collect();
        // The lost servers are gone; the survivors hold stripes already.
        let alive: Vec<Candidate> = c.iter().enumerate().filter(|(i, _)| !lost.contains(i)).map(|(_, x)| x.clone()).collect();
        let index_of = |orig: usize| orig - lost.iter().filter(|l| **l < orig).count();
        let exclude: Vec<usize> = kept.iter().map(|&s| index_of(s)).collect();
        let existing = domain_counts(kept.iter().map(|&s| &c[s].topology), level);
        match choose(&alive, lost.len(), p, &existing, &exclude, &mut rng) {
            Ok(new) => {
                prop_assert!(new.iter().all(|i| !exclude.contains(i)), "a survivor was chosen again");
                let all = kept.iter().map(|&s| &c[s].topology).chain(new.iter().map(|&i| &alive[i].topology));
                let counts = domain_counts(all, level);
                prop_assert!(counts.values().all(|&v| v <= m), "{:?}", counts);
                prop_assert_eq!(counts.values().sum::<usize>(), n);
            }
            Err(PlacementError::Unsatisfiable { .. }) => {
                // Room left in every domain, across servers not holding a stripe.
                let mut room: HashMap<String, usize> = HashMap::new();
                for (i, x) in alive.iter().enumerate() {
                    if !exclude.contains(&i) {
                        *room.entry(x.topology.domain(level)).or_insert(0) += 1;
                    }
                }
                let capacity: usize = room.iter().map(|(d, free)| (*free).min(m.saturating_sub(*existing.get(d).unwrap_or(&0)))).sum();
                prop_assert!(capacity < lost.len(), "a valid repair existed: capacity {} for {}", capacity, lost.len());
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    /// Degraded writes: with a minimum below n, a placement holds as many
    /// stripes as the naive capacity (per domain, the lesser of its servers
    /// and the limit) allows, up to n; it keeps the bound; and it fails only
    /// when that capacity is below the minimum.
    #[test]
    fn degraded_placements_take_all_the_room_there_is(
        c in topology_strategy(),
        k in 1usize..8,
        m in 1usize..4,
        level_i in 0usize..4,
        seed in any::<u64>(),
    ) {
        let n = k + m;
        let min = k + 1;
        let level = Level::ALL[level_i];
        let p = PlacementPolicy { level, max_per_domain: m };
        let capacity = naive_capacity(&c, level, m);
        let mut rng = StdRng::seed_from_u64(seed);
        match choose_at_least(&c, n, min, p, &HashMap::new(), &[], &mut rng) {
            Ok(chosen) => {
                prop_assert_eq!(chosen.len(), capacity.min(n));
                prop_assert!(chosen.len() >= min);
                let counts = domain_counts(chosen.iter().map(|&i| &c[i].topology), level);
                prop_assert!(counts.values().all(|&v| v <= m), "{:?}", counts);
            }
            Err(PlacementError::Unsatisfiable { wanted, capacity: reported, .. }) => {
                prop_assert!(capacity < min);
                prop_assert_eq!((wanted, reported), (min, capacity));
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
