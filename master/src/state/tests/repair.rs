//! Losses, repair, maintenance and quarantines.

use super::*;
use crate::store::MemStore;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::Duration;
use tessera_core::read_plan::ReadMode;
use tessera_core::repair::Availability;
use tessera_proto::ms;

/// A high-availability fileset of `items` items on `servers` servers in
/// `zones` zones, after the servers in `lost` stopped reporting (and were
/// found out). Returns the master, the time of the loss and the generator.
async fn hot_fileset_after_losing(
    servers: usize,
    zones: usize,
    items: usize,
    lost: &[usize],
    seed: u64,
) -> (Arc<Master>, Instant, StdRng) {
    let m = master();
    let t0 = Instant::now();
    register_in_zones(&m, servers, zones, t0);
    create(&m, "hot", "high", 1).await;
    let mut rng = StdRng::seed_from_u64(seed);
    write_version(&m, "hot", items, t0, &mut rng).await;
    let t1 = t0 + Duration::from_secs(4);
    beat_all_but(&m, servers, lost, t1);
    assert_eq!(m.expire_servers(t1).len(), lost.len());
    (m, t1, rng)
}

#[tokio::test]
async fn a_lost_zone_is_rebuilt_into_the_others_within_the_policy() {
    // Four zones of four: RS(6,3) at most 3 per zone fits in the three left.
    let z2: Vec<usize> = (0..16).filter(|i| i % 4 == 2).collect();
    let (m, t1, mut rng) = hot_fileset_after_losing(16, 4, 8, &z2, 11).await;
    let before = m.status("hot", t1).unwrap().filesets[0].clone();
    assert!(before.degraded > 0, "{before:?}");
    assert_eq!(before.unrecoverable, 0, "one zone holds at most m stripes of an item");
    let jobs = m.plan_repairs(t1, usize::MAX, &mut rng);
    assert_eq!(jobs.len() as u64, before.degraded);
    for j in &jobs {
        for Target { server: sid, .. } in &j.targets {
            assert_ne!(m.state.lock().unwrap().servers[sid].topology.zone, "z2", "rebuilt into the lost zone");
        }
        m.repair_done(j, true);
    }
    let after = m.status("hot", t1).unwrap().filesets[0].clone();
    assert_eq!((after.degraded, after.placement_violations), (0, 0), "{after:?}");
}

#[tokio::test]
async fn with_too_few_domains_left_repair_waits_instead_of_breaking_the_policy() {
    // Three zones: with one down, 9 stripes at 3 per zone do not fit.
    let z0: Vec<usize> = (0..12).filter(|i| i % 3 == 0).collect();
    let (m, t1, mut rng) = hot_fileset_after_losing(12, 3, 4, &z0, 12).await;
    assert!(m.plan_repairs(t1, usize::MAX, &mut rng).is_empty(), "no job may break the per-zone bound");
    let st = m.status("hot", t1).unwrap().filesets[0].clone();
    assert_eq!((st.unrecoverable, st.placement_violations), (0, 0), "every item still readable: {st:?}");
}

#[tokio::test]
async fn a_server_back_after_its_stripes_were_rebuilt_loses_the_surplus_copies() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 12, t0);
    create(&m, "hot", "high", 1).await;
    let mut rng = StdRng::seed_from_u64(21);
    write_version(&m, "hot", 6, t0, &mut rng).await;
    let held: Vec<StripeId> = m.state.lock().unwrap().servers["cs4"].stripes.iter().copied().collect();
    assert!(!held.is_empty(), "the test needs stripes on cs4");
    let t1 = t0 + Duration::from_secs(4);
    beat_all_but(&m, 12, &[4], t1);
    m.expire_servers(t1);
    for j in m.plan_repairs(t1, usize::MAX, &mut rng) {
        m.repair_done(&j, true);
    }
    assert!(m.collect_orphans(t1).is_empty(), "nothing surplus while cs4 is away");
    // cs4 comes back with everything it had.
    let epoch = register_one(&m, 4, t1);
    assert!(m.report_inventory("cs4", &epoch, &held, t1));
    let surplus = m.collect_orphans(t1);
    assert_eq!(surplus.len(), held.len(), "one copy of each doubled stripe goes: {surplus:?}");
    for d in &surplus {
        m.deleted(d);
    }
    let st = m.state.lock().unwrap();
    for (item, locs) in &st.locations {
        let mut idx: Vec<u16> = locs.iter().map(|(i, _)| *i).collect();
        idx.sort_unstable();
        let before = idx.len();
        idx.dedup();
        assert_eq!(idx.len(), before, "item {item} still has a doubled stripe");
    }
    drop(st);
    let status = m.status("hot", t1).unwrap().filesets[0].clone();
    assert_eq!((status.degraded, status.placement_violations), (0, 0), "{status:?}");
    assert!(m.collect_orphans(t1).is_empty(), "nothing left to delete");
}

fn register_one(m: &Master, i: usize, now: Instant) -> String {
    register_server(m, i, 3, now)
}

#[tokio::test]
async fn nodes_in_maintenance_get_no_stripes_and_theirs_are_repaired_by_availability() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 12, t0);
    create(&m, "hot", "high", 1).await;
    let mut rng = StdRng::seed_from_u64(31);
    write_version(&m, "hot", 6, t0, &mut rng).await;
    let on_cs4 = m.state.lock().unwrap().servers["cs4"].stripes.len();
    assert!(on_cs4 > 0);
    // The node of cs4 is cordoned; Kubernetes also moves it to another rack.
    let cordoned = NodeInfo {
        topology: Topology { region: "r".into(), zone: "z1".into(), rack: "k-new".into(), node: "n4".into() },
        maintenance: true,
    };
    m.set_node("n4", cordoned.clone());
    let st = m.status("hot", t0).unwrap();
    let s4 = st.servers.iter().find(|s| s.server_id == "cs4").unwrap();
    assert!(s4.down && s4.topology.rack == "k-new", "{s4:?}");
    assert!(st.filesets[0].degraded > 0, "its stripes count as unavailable");
    // High availability: rebuilt at once, never onto cs4.
    let jobs = m.plan_repairs(t0, usize::MAX, &mut rng);
    assert_eq!(jobs.len() as u64, st.filesets[0].degraded);
    assert!(jobs.iter().all(|j| j.targets.iter().all(|t| t.server != "cs4")));
    for j in &jobs {
        m.repair_done(j, true);
    }
    let (session, _, _) = m.begin_version("hot", t0).unwrap();
    let alloc = m.allocate_items(&session, 20, 4096, &[], t0, &mut rng).unwrap();
    assert!(alloc.iter().all(|a| !addrs(a).contains(&"127.0.0.1:7004".to_string())), "no new stripes on cs4");
    // Re-registering (a restart) keeps what the cluster said of the node.
    register_one(&m, 4, t0);
    assert!(m.state.lock().unwrap().servers["cs4"].maintenance);
    // Back in service.
    m.set_node("n4", NodeInfo { maintenance: false, ..cordoned });
    assert!(!m.status("hot", t0).unwrap().servers.iter().find(|s| s.server_id == "cs4").unwrap().down);
}

#[tokio::test]
async fn a_changed_availability_changes_when_lost_stripes_are_rebuilt_and_is_kept() {
    let store: Arc<dyn MetaStore> = Arc::new(MemStore::default());
    let m = master_with(store.clone());
    let t0 = Instant::now();
    register(&m, 12, t0);
    create(&m, "cold", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(7);
    write_version(&m, "cold", 6, t0, &mut rng).await;
    m.set_node("n4", NodeInfo { topology: Topology::default(), maintenance: true });
    assert!(m.plan_repairs(t0, usize::MAX, &mut rng).is_empty(), "low availability waits for the grace");
    m.set_availability("cold", Availability::High).await.unwrap();
    assert!(!m.plan_repairs(t0, usize::MAX, &mut rng).is_empty(), "high availability is rebuilt at once");
    assert_eq!(master_with(store).get_fileset("cold").unwrap().record.availability, Availability::High);
    let missing = m.set_availability("nope", Availability::Low).await.unwrap_err();
    assert!(matches!(missing, MasterError::FilesetNotFound(_)), "{missing:?}");
}

#[tokio::test]
async fn a_write_minimum_set_from_a_priority_is_checked_kept_and_used() {
    let store: Arc<dyn MetaStore> = Arc::new(MemStore::default());
    let m = master_with(store.clone());
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    let err = m.set_min_write_stripes("data", 5).await.unwrap_err();
    assert!(err.to_string().contains("min_write_stripes") && err.to_string().contains("6..=9"), "{err}");
    m.set_min_write_stripes("data", 9).await.unwrap();
    assert_eq!(master_with(store).get_fileset("data").unwrap().record.min_write_stripes, 9, "kept");
    assert_eq!(m.begin_version("data", t0).unwrap().2, 9);
    m.set_min_write_stripes("data", 0).await.unwrap();
    assert_eq!(m.begin_version("data", t0).unwrap().2, 7, "0 is k + 1");
}

#[tokio::test]
async fn a_read_mode_set_from_a_priority_is_kept_and_can_be_cleared() {
    let store: Arc<dyn MetaStore> = Arc::new(MemStore::default());
    let m = master_with(store.clone());
    create(&m, "models", "low", 1).await;
    assert_eq!(m.get_fileset("models").unwrap().record.read_mode, None, "readers choose by default");
    m.set_read_mode("models", Some(ReadMode::Accelerated)).await.unwrap();
    assert_eq!(master_with(store.clone()).get_fileset("models").unwrap().record.read_mode, Some(ReadMode::Accelerated));
    m.set_read_mode("models", None).await.unwrap();
    assert_eq!(master_with(store.clone()).get_fileset("models").unwrap().record.read_mode, None);
    let missing = m.set_read_mode("nope", Some(ReadMode::Normal)).await.unwrap_err();
    assert!(matches!(missing, MasterError::FilesetNotFound(_)), "{missing:?}");
    // The hedge tuning likewise: checked, kept across a restart, clearable.
    let tuning = crate::records::HedgeTuning { delay_min_ms: 5, delay_max_ms: 40, extra_stripes: 1 };
    m.set_hedge("models", Some(tuning)).await.unwrap();
    assert_eq!(master_with(store.clone()).get_fileset("models").unwrap().record.hedge, Some(tuning));
    let too_many = crate::records::HedgeTuning { extra_stripes: 4, ..tuning };
    let e = m.set_hedge("models", Some(too_many)).await.unwrap_err();
    assert!(e.to_string().contains("hedge"), "{e}");
    assert_eq!(m.get_fileset("models").unwrap().record.hedge, Some(tuning), "a refused change changes nothing");
    m.set_hedge("models", None).await.unwrap();
    assert_eq!(master_with(store).get_fileset("models").unwrap().record.hedge, None);
}

fn quarantine(m: &Master, server: usize, stripe: StripeId, now: Instant) {
    let wire =
        tessera_proto::cs::StripeRef { item: stripe.item.as_bytes().to_vec().into(), index: stripe.index as u32 };
    let req = ms::HeartbeatRequest {
        server_id: format!("cs{server}"),
        master_epoch: m.epoch(),
        free_bytes: 1 << 40,
        removed: vec![wire.clone()],
        quarantined: vec![wire],
        ..Default::default()
    };
    assert!(beat(m, &req, now));
}

/// The server holding stripe `index` of `item`.
fn holder(m: &Master, item: ItemId, index: u16) -> usize {
    let st = m.state.lock().unwrap();
    let (_, sid) = st.locations[&item].iter().find(|(i, _)| *i == index).cloned().unwrap();
    sid.as_str().trim_start_matches("cs").parse().unwrap()
}

#[tokio::test]
async fn a_quarantined_stripe_is_rebuilt_at_once_even_for_low_availability() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 12, t0);
    create(&m, "cold", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(21);
    let v = write_version(&m, "cold", 2, t0, &mut rng).await;
    let item = v.items[0].id;
    let server = holder(&m, item, 2);
    quarantine(&m, server, StripeId::new(item, 2), t0);
    // Sent again (the first heartbeat's answer was lost): counted once.
    quarantine(&m, server, StripeId::new(item, 2), t0);
    let f = &m.status("cold", t0).unwrap().filesets[0];
    assert_eq!((f.degraded, f.corrupt_stripes_found, f.corrupt_stripes_rebuilt), (1, 1, 0));
    assert_eq!(f.corrupt_stripes_pending, 1);
    // No grace: a quarantined stripe never comes back.
    let jobs = m.plan_repairs(t0, 100, &mut rng);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].item, jobs[0].targets.len(), jobs[0].targets[0].index), (item, 1, 2));
    m.repair_done(&jobs[0], true);
    let st = m.status("cold", t0).unwrap();
    let f = &st.filesets[0];
    assert_eq!(
        (f.degraded, f.corrupt_stripes_found, f.corrupt_stripes_rebuilt, f.corrupt_stripes_pending),
        (0, 1, 1, 0)
    );
    assert_eq!((st.corrupt_stripes_found, st.corrupt_stripes_rebuilt), (1, 1));
    // A lost server's stripes still wait for the grace.
    let t1 = t0 + Duration::from_secs(4);
    beat_all_but(&m, 12, &[holder(&m, item, 5)], t1);
    m.expire_servers(t1);
    assert!(m.plan_repairs(t1, 100, &mut rng).is_empty());
}

#[tokio::test]
async fn a_reader_report_asks_the_holder_to_verify_and_nothing_more() {
    let m = master();
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(22);
    let v = write_version(&m, "data", 1, t0, &mut rng).await;
    let item = v.items[0].id;
    let at = holder(&m, item, 1);
    let addr = format!("127.0.0.1:{}", 7000 + at);
    assert_eq!(m.corrupt_reported(StripeId::new(item, 1), &addr), Some(addr.clone()));
    // Another server does not hold it: nothing to verify there.
    let other = format!("127.0.0.1:{}", 7000 + (at + 1) % 9);
    assert_eq!(m.corrupt_reported(StripeId::new(item, 1), &other), None);
    let st = m.status("data", t0).unwrap();
    assert_eq!((st.corrupt_reports, st.filesets[0].degraded, st.corrupt_stripes_found), (2, 0, 0));
}

#[tokio::test]
async fn a_clean_restart_is_placeable_at_once_and_one_outage_reported_by_every_writer_counts_once() {
    let m = master();
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    // cs0 dies; every writer reports it on every item before it is found out.
    let t1 = t0 + Duration::from_secs(1);
    let (session, _, _) = m.begin_version("data", t1).unwrap();
    let mut rng = StdRng::seed_from_u64(23);
    for _ in 0..50 {
        let _ = m.allocate_items(&session, 1, 4096, &["127.0.0.1:7000".to_string()], t1, &mut rng);
    }
    let t2 = t0 + Duration::from_secs(5);
    beat_all_but(&m, 9, &[0], t2);
    m.expire_servers(t2);
    // It restarts and registers again two seconds later.
    let t3 = t2 + Duration::from_secs(2);
    beat_all_but(&m, 9, &[0], t3);
    register_server(&m, 0, 3, t3);
    let st = m.status("", t3).unwrap();
    let cs0 = st.servers.iter().find(|s| s.server_id == "cs0").unwrap();
    assert!(cs0.live && !cs0.down, "{cs0:?}");
    assert!(cs0.failure_count <= 1.0, "one outage is one failure: {cs0:?}");
    // Placeable at once: RS(6,3) at three per zone needs every server of z0.
    let alloc = m.allocate_items(&session, 4, 4096, &[], t3, &mut rng).unwrap();
    assert!(alloc.iter().all(|a| addrs(a).iter().all(|s| !s.is_empty())), "{alloc:?}");
    assert!(alloc.iter().all(|a| addrs(a).contains(&"127.0.0.1:7000".to_string())));
}

#[tokio::test]
async fn with_a_server_out_items_are_written_degraded_and_rebuilt_when_it_returns() {
    let m = master();
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    let t1 = t0 + Duration::from_secs(4);
    beat_all_but(&m, 9, &[4], t1);
    m.expire_servers(t1);
    let mut rng = StdRng::seed_from_u64(24);
    let (session, _, min) = m.begin_version("data", t1).unwrap();
    assert_eq!(min, 7, "k + 1 by default");
    let alloc = m.allocate_items(&session, 3, 4096, &[], t1, &mut rng).unwrap();
    for a in &alloc {
        assert_eq!(addrs(a).iter().filter(|s| s.is_empty()).count(), 1, "eight of nine placed: {a:?}");
        assert!(addrs(a)[8].is_empty(), "the last parity stripe waits");
    }
    // The writer also lost stripe 0 of the first item on the way.
    let mut refs: Vec<ms::ItemRef> = alloc.iter().map(item_ref).collect();
    refs[1].missing_stripes = vec![0];
    let request = |refs: Vec<ms::ItemRef>| ms::CommitVersionRequest {
        session: session.clone(),
        items: refs[1..].to_vec(),
        manifest: Some(ms::ManifestRef { items: vec![refs[0].clone()], length: 100, sha256: vec![0; 32].into() }),
        files: 1,
        bytes: 1,
    };
    // Fewer than the minimum is refused, naming the field.
    let mut short = refs.clone();
    short[2].missing_stripes = vec![0, 1];
    let err = commit(&m, &request(short)).await.unwrap_err();
    assert!(matches!(err, MasterError::TooFewStripes { stored: 6, n: 9, min: 7, .. }), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::FailedPrecondition);
    commit(&m, &request(refs)).await.unwrap();
    let f = m.status("data", t1).unwrap().filesets[0].clone();
    assert_eq!((f.degraded, f.degraded_writes, f.items_by_redundancy.clone()), (3, 3, vec![0, 1, 2, 0]));
    // Not placeable yet: repair waits without breaking the policy.
    assert!(m.plan_repairs(t1, 100, &mut rng).is_empty());
    // cs4 returns: everything missing is rebuilt at once (no grace: it was never written).
    let t2 = t1 + Duration::from_secs(1);
    register_server(&m, 4, 3, t2);
    let jobs = m.plan_repairs(t2, 100, &mut rng);
    assert_eq!(jobs.iter().map(|j| j.targets.len()).sum::<usize>(), 4, "{jobs:?}");
    for j in &jobs {
        m.repair_done(j, true);
    }
    let f = m.status("data", t2).unwrap().filesets[0].clone();
    assert_eq!((f.degraded, f.placement_violations), (0, 0));
    // min_write_stripes is validated and kept.
    let bad =
        create_spec(&m, ms::FilesetSpec { name: "strict".into(), min_write_stripes: 10, ..Default::default() }).await;
    assert!(bad.unwrap_err().to_string().contains("min_write_stripes"));
    create_spec(&m, ms::FilesetSpec { name: "strict".into(), min_write_stripes: 9, ..Default::default() })
        .await
        .unwrap();
    let (s2, _, min) = m.begin_version("strict", t2).unwrap();
    assert_eq!(min, 9);
    beat_all_but(&m, 9, &[4], t2 + Duration::from_secs(4));
    m.expire_servers(t2 + Duration::from_secs(4));
    assert!(m.allocate_items(&s2, 1, 4096, &[], t2 + Duration::from_secs(4), &mut rng).is_err(), "never degraded");
}

#[tokio::test]
async fn right_after_a_start_the_master_is_relearning_and_plans_no_repair() {
    let store = Arc::new(MemStore::default());
    let config = MasterConfig { relearn_window: Duration::from_secs(3600), ..Default::default() };
    // A master on an empty store has nothing to relearn.
    let first = Master::new(store.clone(), config.clone()).unwrap();
    let t0 = Instant::now();
    assert!(!first.status("", t0).unwrap().relearning);
    register_nine(&first, t0);
    create(&first, "hot", "high", 1).await;
    let mut rng = StdRng::seed_from_u64(25);
    write_version(&first, "hot", 2, t0, &mut rng).await;
    // Its successor on the same records does, until the window ends.
    let m = Master::new(store, config).unwrap();
    register_nine(&m, t0);
    beat_all_but(&m, 9, &[3], t0 + Duration::from_secs(10));
    m.expire_servers(t0 + Duration::from_secs(10));
    let st = m.status("hot", t0 + Duration::from_secs(10)).unwrap();
    assert!(st.relearning);
    assert!(m.plan_repairs(t0 + Duration::from_secs(10), 100, &mut rng).is_empty());
}

/// A stripe its server quarantines after it was written and before the
/// version is committed: the commit does not locate it, it counts as
/// corrupt, and it is rebuilt at once.
#[tokio::test]
async fn a_stripe_quarantined_before_its_commit_is_not_located_and_is_rebuilt() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 12, t0);
    create(&m, "warm", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(31);
    let (session, _, _) = m.begin_version("warm", t0).unwrap();
    let alloc = m.allocate_items(&session, 2, 4096, &[], t0, &mut rng).unwrap();
    let item = alloc[1].item;
    let port: usize = addrs(&alloc[1])[3].rsplit(':').next().unwrap().parse().unwrap();
    quarantine(&m, port - 7000, StripeId::new(item, 3), t0);
    let refs: Vec<ms::ItemRef> = alloc.iter().map(item_ref).collect();
    commit(
        &m,
        &ms::CommitVersionRequest {
            session,
            items: refs[1..].to_vec(),
            manifest: Some(ms::ManifestRef { items: vec![refs[0].clone()], length: 100, sha256: vec![0; 32].into() }),
            files: 1,
            bytes: 6 * 4096,
        },
    )
    .await
    .unwrap();
    let got = m.get_version("warm", 0).unwrap();
    let placed = got.locations.iter().find(|l| l.item == item).unwrap();
    assert_eq!(placed.addresses[3], None, "the quarantined stripe is not located");
    assert_eq!(placed.addresses.iter().flatten().count(), 8);
    let f = &m.status("warm", t0).unwrap().filesets[0];
    assert_eq!((f.degraded, f.corrupt_stripes_found, f.corrupt_stripes_pending), (1, 1, 1));
    assert_eq!(f.degraded_writes, 0, "written whole, then found corrupt: not a degraded write");
    let jobs = m.plan_repairs(t0, 100, &mut rng);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].item, jobs[0].targets.len(), jobs[0].targets[0].index), (item, 1, 3));
    assert!(jobs[0].sources[3].is_none(), "never read from the quarantined copy");
}

/// Losses recorded for a write that never commits are forgotten with it.
#[tokio::test]
async fn a_quarantine_in_an_abandoned_write_is_forgotten_with_it() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 9, t0);
    create(&m, "cold", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(32);
    let (session, _, _) = m.begin_version("cold", t0).unwrap();
    let alloc = m.allocate_items(&session, 1, 4096, &[], t0, &mut rng).unwrap();
    let port: usize = addrs(&alloc[0])[0].rsplit(':').next().unwrap().parse().unwrap();
    quarantine(&m, port - 7000, StripeId::new(alloc[0].item, 0), t0);
    assert!(m.state.lock().unwrap().gone.contains_key(&alloc[0].item));
    m.abort_version(&session);
    assert!(m.state.lock().unwrap().gone.is_empty());
}
