use super::*;
use crate::records::FilesetRecord;
use crate::store::MemStore;
use crate::wire;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::Duration;
use tessera_proto::ms;

fn master() -> Arc<Master> {
    master_with(Arc::new(MemStore::default()))
}

fn master_with(store: Arc<dyn MetaStore>) -> Arc<Master> {
    let config = MasterConfig {
        heartbeat_timeout: Duration::from_secs(3),
        // Most tests start with every server reported.
        relearn_window: Duration::ZERO,
        orphan_grace: Duration::from_secs(60),
        repair_grace: Duration::from_secs(900),
        ..Default::default()
    };
    Master::new(store, config).unwrap()
}

/// Creates a fileset from the spec a client would send.
async fn create_spec(m: &Arc<Master>, spec: ms::FilesetSpec) -> Result<FilesetView, MasterError> {
    m.create_fileset(FilesetRecord::from_spec(&spec, 1)?, false).await
}

/// Commits what a client would send.
async fn commit(
    m: &Arc<Master>,
    req: &ms::CommitVersionRequest,
) -> Result<(VersionRecord, Vec<Deletion>), MasterError> {
    m.commit_version(wire::commit(req)?).await
}

/// A heartbeat as a chunkserver sends it.
fn beat(m: &Master, req: &ms::HeartbeatRequest, now: Instant) -> bool {
    m.heartbeat(&wire::heartbeat(req).unwrap(), now)
}

/// The addresses of a placement as clients see them ("" for none).
fn addrs(p: &ItemPlacement) -> Vec<String> {
    wire::placement_to_wire(p).servers
}

fn item_ref(p: &ItemPlacement) -> ms::ItemRef {
    ms::ItemRef { item: p.item.as_bytes().to_vec().into(), length: 6 * 4096, ..Default::default() }
}

/// Nine servers, three per zone.
fn register_nine(m: &Master, now: Instant) -> String {
    register(m, 9, now)
}

/// `count` servers, cs{i} in zone z{i % 3}.
fn register(m: &Master, count: usize, now: Instant) -> String {
    register_in_zones(m, count, 3, now)
}

/// Registers cs{i} in zone z{i % zones}, rack k{i}; returns the master's epoch.
fn register_server(m: &Master, i: usize, zones: usize, now: Instant) -> String {
    m.register(
        &wire::registration(&ms::RegisterRequest {
            server_id: format!("cs{i}"),
            address: format!("127.0.0.1:{}", 7000 + i),
            topology: Some(ms::Topology {
                region: "r".into(),
                zone: format!("z{}", i % zones),
                rack: format!("k{i}"),
                node: format!("n{i}"),
            }),
            free_bytes: 1 << 40,
            total_bytes: 1 << 41,
        })
        .unwrap(),
        now,
    )
}

/// `count` servers spread over `zones` zones; returns the master's epoch.
fn register_in_zones(m: &Master, count: usize, zones: usize, now: Instant) -> String {
    (0..count).map(|i| register_server(m, i, zones, now)).last().unwrap_or_default()
}

async fn create(m: &Arc<Master>, name: &str, availability: &str, keep: u32) {
    create_spec(
        m,
        ms::FilesetSpec {
            name: name.into(),
            layout: Some(ms::Layout { k: 6, m: 3, stripe_unit: 4096, block_size: 4096 }),
            availability: availability.into(),
            keep_versions: keep,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// Writes a version of `items` data items and one manifest item.
async fn write_version(m: &Arc<Master>, fileset: &str, items: usize, now: Instant, rng: &mut StdRng) -> VersionRecord {
    let (session, _, _) = m.begin_version(fileset, now).unwrap();
    let alloc = m.allocate_items(&session, items + 1, 4096, &[], now, rng).unwrap();
    let refs: Vec<ms::ItemRef> = alloc.iter().map(item_ref).collect();
    let (v, _) = commit(
        m,
        &ms::CommitVersionRequest {
            session,
            items: refs[1..].to_vec(),
            manifest: Some(ms::ManifestRef { items: vec![refs[0].clone()], length: 100, sha256: vec![0; 32].into() }),
            files: 3,
            bytes: (items * 6 * 4096) as u64,
        },
    )
    .await
    .unwrap();
    v
}

#[tokio::test]
async fn a_written_version_is_listed_with_every_stripe_located() {
    let m = master();
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(1);
    let v = write_version(&m, "data", 4, t0, &mut rng).await;
    assert_eq!(v.id, 1);
    let got = m.get_version("data", 0).unwrap();
    assert_eq!(got.version.id, 1);
    assert_eq!(got.locations.len(), 5);
    assert!(got.locations.iter().all(|l| addrs(l).len() == 9 && addrs(l).iter().all(|s| !s.is_empty())));
    // Placement held: three stripes per zone.
    let st = m.status("data", t0).unwrap();
    let per: Vec<u64> = st.filesets[0].stripes_per_domain.iter().map(|d| d.stripes).collect();
    assert_eq!(per, vec![15, 15, 15]);
    assert_eq!(st.filesets[0].items_by_redundancy, vec![0, 0, 0, 5]);
}

#[tokio::test]
async fn uncommitted_sessions_publish_nothing_and_their_stripes_become_orphans() {
    let m = master();
    let t0 = Instant::now();
    let epoch = register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(2);
    let (session, _, _) = m.begin_version("data", t0).unwrap();
    let alloc = m.allocate_items(&session, 1, 4096, &[], t0, &mut rng).unwrap();
    // The writer stored its stripes, and the servers reported them, then it died.
    let item = alloc[0].item;
    for i in 0..9u16 {
        assert!(m.report_inventory(&format!("cs{i}"), &epoch, &[StripeId::new(item, i)], t0));
    }
    assert!(matches!(m.get_version("data", 0), Err(MasterError::NoVersions(_))));
    // While the session lives, its stripes are not orphans.
    assert!(m.collect_orphans(t0 + Duration::from_secs(100)).is_empty());
    assert_eq!(m.expire_sessions(t0 + m.config.session_lease + Duration::from_secs(1)), 1);
    let later = t0 + m.config.session_lease + Duration::from_secs(2);
    assert!(m.collect_orphans(later).is_empty(), "first seen: the grace starts");
    let gone = m.collect_orphans(later + Duration::from_secs(61));
    assert_eq!(gone.len(), 9);
    // A commit after expiry is refused with a clear message.
    let err = commit(
        &m,
        &ms::CommitVersionRequest {
            session: session.clone(),
            manifest: Some(ms::ManifestRef { sha256: vec![0; 32].into(), ..Default::default() }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("unknown or expired"), "{err}");
}

#[tokio::test]
async fn commits_may_only_name_items_of_their_session() {
    let m = master();
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    let (session, _, _) = m.begin_version("data", t0).unwrap();
    let err = commit(
        &m,
        &ms::CommitVersionRequest {
            session,
            items: vec![ms::ItemRef { item: vec![9; 16].into(), length: 1, ..Default::default() }],
            manifest: Some(ms::ManifestRef { sha256: vec![0; 32].into(), ..Default::default() }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MasterError::ItemNotAllocated { .. }));
}

#[tokio::test]
async fn retention_collects_old_versions_but_never_pinned_ones() {
    let m = master();
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 2).await;
    let mut rng = StdRng::seed_from_u64(3);
    write_version(&m, "data", 1, t0, &mut rng).await;
    m.pin("data", 1, "volume-a", true).await.unwrap();
    write_version(&m, "data", 1, t0, &mut rng).await;
    write_version(&m, "data", 1, t0, &mut rng).await;
    let ids: Vec<u64> = m.list_versions("data").unwrap().iter().map(|v| v.id).collect();
    assert_eq!(ids, vec![1, 2, 3], "1 is pinned, 2 and 3 are the newest two");
    assert!(matches!(m.delete_version("data", 1).await, Err(MasterError::Pinned { .. })));
    m.pin("data", 1, "volume-a", false).await.unwrap();
    let v4 = write_version(&m, "data", 1, t0, &mut rng).await;
    let ids: Vec<u64> = m.list_versions("data").unwrap().iter().map(|v| v.id).collect();
    assert_eq!(ids, vec![3, v4.id]);
}

#[tokio::test]
async fn lost_servers_are_repaired_at_once_or_after_the_grace() {
    let m = master();
    let t0 = Instant::now();
    // Twelve servers, so each zone has a spare for a lost stripe.
    register(&m, 12, t0);
    create(&m, "hot", "high", 1).await;
    create(&m, "cold", "low", 1).await;
    let mut rng = StdRng::seed_from_u64(4);
    write_version(&m, "hot", 2, t0, &mut rng).await;
    write_version(&m, "cold", 2, t0, &mut rng).await;
    // Everyone but cs4 keeps reporting.
    let t1 = t0 + Duration::from_secs(4);
    beat_all_but(&m, 12, &[4], t1);
    assert_eq!(m.expire_servers(t1), vec![ServerId::new("cs4").unwrap()]);
    let jobs = m.plan_repairs(t1, 100, &mut rng);
    let hot_items = 3;
    let on_cs4 = |j: &RepairJob| j.targets.len();
    assert!(jobs.len() <= hot_items && jobs.iter().all(|j| on_cs4(j) == 1), "{jobs:?}");
    let hot_degraded = m.status("hot", t1).unwrap().filesets[0].degraded;
    assert!(hot_degraded > 0, "the test needs an item with a stripe on cs4");
    assert_eq!(jobs.len() as u64, hot_degraded, "every degraded high-availability item, at once");
    for j in &jobs {
        let Target { index: idx, server: sid, .. } = &j.targets[0];
        assert_ne!(sid, "cs4");
        assert!(j.sources[*idx as usize].is_none());
        // cs4 was in z1; with three stripes per zone at most, the item's
        // other zones are full, so the replacement goes to z1 too.
        assert_eq!(m.state.lock().unwrap().servers[sid].topology.zone, "z1");
    }
    for j in &jobs {
        m.repair_done(j, true);
    }
    let st = m.status("hot", t1).unwrap();
    assert_eq!(st.filesets[0].degraded, 0, "back at full redundancy: {:?}", st.filesets[0]);
    let cold_degraded = m.status("cold", t1).unwrap().filesets[0].degraded;
    assert!(m.plan_repairs(t1, 100, &mut rng).is_empty(), "cold waits for the grace");
    let late = t1 + m.config.repair_grace;
    // Servers keep reporting meanwhile.
    beat_all_but(&m, 12, &[4], late);
    assert!(cold_degraded > 0);
    assert_eq!(m.plan_repairs(late, 100, &mut rng).len() as u64, cold_degraded, "cold after the grace");
}

#[tokio::test]
async fn the_items_closest_to_loss_are_repaired_first() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 12, t0);
    create(&m, "hot", "high", 1).await;
    let mut rng = StdRng::seed_from_u64(9);
    write_version(&m, "hot", 12, t0, &mut rng).await;
    // cs4 (z1) and cs5 (z2) stop reporting.
    let t1 = t0 + Duration::from_secs(4);
    beat_all_but(&m, 12, &[4, 5], t1);
    m.expire_servers(t1);
    let all = m.plan_repairs(t1, usize::MAX, &mut rng);
    let twice = all.iter().filter(|j| j.targets.len() == 2).count();
    assert!(twice > 0 && twice < all.len(), "the test needs items that lost one and two stripes: {all:?}");
    for j in &all {
        m.repair_done(j, false);
    }
    // With room for only `twice` repairs, those are the items that lost two.
    let first = m.plan_repairs(t1, twice, &mut rng);
    assert_eq!(first.len(), twice);
    assert!(first.iter().all(|j| j.targets.len() == 2), "{first:?}");
}

#[tokio::test]
async fn a_restarted_master_knows_the_versions_and_relearns_the_locations() {
    let store: Arc<dyn MetaStore> = Arc::new(MemStore::default());
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(5);
    let (item, epoch_before) = {
        let m = master_with(store.clone());
        register_nine(&m, t0);
        create(&m, "data", "low", 1).await;
        let v = write_version(&m, "data", 1, t0, &mut rng).await;
        (v.items[0].id, m.epoch())
    };
    let m = master_with(store);
    assert_ne!(m.epoch(), epoch_before);
    assert_eq!(m.list_versions("data").unwrap().len(), 1);
    let loc = m.get_version("data", 0).unwrap();
    assert!(loc.locations.iter().all(|l| addrs(l).iter().all(|s| s.is_empty())), "nothing known yet");
    // Old heartbeats are told to register again.
    assert!(!beat(
        &m,
        &ms::HeartbeatRequest { server_id: "cs0".into(), master_epoch: epoch_before, ..Default::default() },
        t0
    ));
    let epoch = register_nine(&m, t0);
    for i in 0..9u16 {
        m.report_inventory(&format!("cs{i}"), &epoch, &[StripeId::new(item, i)], t0);
    }
    let loc = m.get_version("data", 0).unwrap();
    let data = loc.locations.iter().find(|l| l.item == item).unwrap();
    assert!(addrs(data).iter().all(|s| !s.is_empty()));
}

#[tokio::test]
async fn placement_errors_and_full_disks_are_clear() {
    let m = master();
    let t0 = Instant::now();
    // Two zones only: RS(6,3) with at most 3 per zone cannot be placed.
    for i in 0..9 {
        m.register(
            &wire::registration(&ms::RegisterRequest {
                server_id: format!("cs{i}"),
                address: format!("a{i}"),
                topology: Some(ms::Topology { zone: format!("z{}", i % 2), ..Default::default() }),
                free_bytes: 1 << 30,
                total_bytes: 1 << 30,
            })
            .unwrap(),
            t0,
        );
    }
    create(&m, "data", "low", 1).await;
    let (session, _, _) = m.begin_version("data", t0).unwrap();
    let err = m.allocate_items(&session, 1, 4096, &[], t0, &mut StdRng::seed_from_u64(6)).unwrap_err();
    assert!(err.to_string().contains("at most 3 per zone"), "{err}");
    let err = m.allocate_items(&session, 1, 2 << 30, &[], t0, &mut StdRng::seed_from_u64(6)).unwrap_err();
    assert!(matches!(err, MasterError::NoSpace { .. }), "{err}");
}

#[tokio::test]
async fn a_flapping_server_is_kept_out_of_placement() {
    let m = master();
    let t0 = Instant::now();
    register_nine(&m, t0);
    create(&m, "data", "low", 1).await;
    let mut t = t0;
    // cs0 drops out and comes back five times in a row.
    for _ in 0..5 {
        t += Duration::from_secs(4);
        for i in 1..9 {
            beat(
                &m,
                &ms::HeartbeatRequest {
                    server_id: format!("cs{i}"),
                    master_epoch: m.epoch(),
                    free_bytes: 1 << 40,
                    ..Default::default()
                },
                t,
            );
        }
        m.expire_servers(t);
        beat(
            &m,
            &ms::HeartbeatRequest {
                server_id: "cs0".into(),
                master_epoch: m.epoch(),
                free_bytes: 1 << 40,
                ..Default::default()
            },
            t,
        );
    }
    let st = m.status("", t).unwrap();
    let cs0 = st.servers.iter().find(|s| s.server_id == "cs0").unwrap();
    assert!(cs0.live && cs0.down, "{cs0:?}");
    // With cs0 out, z0 has two servers: RS(6,3) at three per zone is placed
    // degraded, eight stripes, none on cs0.
    let (session, _, _) = m.begin_version("data", t).unwrap();
    let alloc = m.allocate_items(&session, 1, 4096, &[], t, &mut StdRng::seed_from_u64(7)).unwrap();
    assert_eq!(addrs(&alloc[0]).iter().filter(|s| s.is_empty()).count(), 1);
    assert!(!addrs(&alloc[0]).contains(&"127.0.0.1:7000".to_string()));
}

#[tokio::test]
async fn heartbeats_carry_capacity_and_bandwidth_into_the_status() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 3, t0);
    assert!(beat(
        &m,
        &ms::HeartbeatRequest {
            server_id: "cs1".into(),
            master_epoch: m.epoch(),
            free_bytes: 5 << 30,
            total_bytes: 8 << 30,
            read_bytes_per_sec: 123.5e6,
            device_bytes_per_sec: 400e6,
            ..Default::default()
        },
        t0 + Duration::from_secs(1),
    ));
    let st = m.status("", t0 + Duration::from_secs(1)).unwrap();
    let s = st.servers.iter().find(|s| s.server_id == "cs1").unwrap();
    assert_eq!((s.free_bytes, s.total_bytes, s.read_bytes_per_sec), (5 << 30, 8 << 30, 123.5e6));
    assert_eq!(s.device_bytes_per_sec, Some(400e6));
    assert_eq!(s.topology.zone, "z1");
    // A heartbeat after a quiet window (0: too little read to tell) keeps
    // the last figure; a server that never read has none.
    let quiet = ms::HeartbeatRequest { server_id: "cs1".into(), master_epoch: m.epoch(), ..Default::default() };
    assert!(beat(&m, &quiet, t0 + Duration::from_secs(2)));
    let st = m.status("", t0 + Duration::from_secs(2)).unwrap();
    let by_id = |id: &str| st.servers.iter().find(|s| s.server_id == id).unwrap().device_bytes_per_sec;
    assert_eq!((by_id("cs1"), by_id("cs2")), (Some(400e6), None));
    // A figure a minute old is not current any more.
    let st = m.status("", t0 + Duration::from_secs(1) + super::status::DEVICE_FIGURE_TTL).unwrap();
    assert_eq!(st.servers.iter().find(|s| s.server_id == "cs1").unwrap().device_bytes_per_sec, None);
}

#[tokio::test]
async fn a_registration_forgets_the_device_figure() {
    let m = master();
    let t0 = Instant::now();
    register(&m, 3, t0);
    let fast = ms::HeartbeatRequest {
        server_id: "cs1".into(),
        master_epoch: m.epoch(),
        device_bytes_per_sec: 400e6,
        ..Default::default()
    };
    assert!(beat(&m, &fast, t0 + Duration::from_secs(1)));
    // Restarted (perhaps on another disk): measured anew.
    register(&m, 3, t0 + Duration::from_secs(2));
    let st = m.status("", t0 + Duration::from_secs(2)).unwrap();
    assert_eq!(st.servers.iter().find(|s| s.server_id == "cs1").unwrap().device_bytes_per_sec, None);
}

/// Heartbeats from cs0..cs{count} except `lost`; each must be accepted.
fn beat_all_but(m: &Master, count: usize, lost: &[usize], now: Instant) {
    for i in (0..count).filter(|i| !lost.contains(i)) {
        let req = ms::HeartbeatRequest {
            server_id: format!("cs{i}"),
            master_epoch: m.epoch(),
            free_bytes: 1 << 40,
            ..Default::default()
        };
        assert!(beat(m, &req, now), "cs{i} was asked to register again");
    }
}

mod repair;
