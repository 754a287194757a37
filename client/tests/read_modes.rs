//! The stripe client against in-process chunkservers over real loopback gRPC.
//! (The multi-process fault tests live in chunkserver/tests.)

use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tessera_chunkserver::faults::Faults;
use tessera_client::{ClientConfig, ClientError, FetchError, StripeClient};
use tessera_core::ids::ItemId;
use tessera_core::latency::HedgePolicy;
use tessera_core::layout::Layout;
use tessera_core::read_plan::ReadMode;
use tessera_testkit::Cluster;

fn random_bytes(rng: &mut impl Rng, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    Bytes::from(v)
}

fn fast_config() -> ClientConfig {
    ClientConfig {
        fetch_timeout: Duration::from_secs(2),
        hedge: HedgePolicy {
            floor: Duration::from_millis(5),
            ceiling: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_reads_every_range_bit_exact() {
    let cluster = Cluster::servers_only(9).await;
    let client = StripeClient::new(fast_config());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // 4 KiB units, 1 KiB blocks: items of 24 KiB.
    let layout = Layout::new(6, 3, 4096, 1024).unwrap();
    for trial in 0..12 {
        let len = if trial % 3 == 0 { 24 * 1024 } else { rng.random_range(1..24 * 1024) };
        let data = random_bytes(&mut rng, len);
        let item = ItemId(rng.random());
        let loc = client.write_item(item, layout, data.clone(), &cluster.addrs()).await.unwrap();
        for mode in ReadMode::ALL {
            for _ in 0..4 {
                let a = rng.random_range(0..len as u64);
                let b = rng.random_range(a..=len as u64);
                let (got, report) = client.read(&loc, a..b, mode).await.unwrap();
                assert_eq!(got.to_vec(), &data[a as usize..b as usize], "{mode} {a}..{b} of {len}");
                assert_eq!(report.bytes_returned, b - a);
            }
            let (all, _) = client.read(&loc, 0..len as u64, mode).await.unwrap();
            assert_eq!(all.to_vec(), &data[..]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_an_item_is_idempotent() {
    let cluster = Cluster::servers_only(3).await;
    let client = StripeClient::new(fast_config());
    let layout = Layout::new(2, 1, 1024, 1024).unwrap();
    let data = Bytes::from(vec![9u8; 2048]);
    let item = ItemId([1; 16]);
    client.write_item(item, layout, data.clone(), &cluster.addrs()).await.unwrap();
    client.write_item(item, layout, data.clone(), &cluster.addrs()).await.unwrap();
    // Different bytes under the same id are refused.
    let err = client.write_item(item, layout, Bytes::from(vec![8u8; 2048]), &cluster.addrs()).await.unwrap_err();
    assert!(matches!(err, ClientError::Write { code: tonic::Code::AlreadyExists, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_transit_is_caught_and_rebuilt() {
    let cluster = Cluster::servers_only(9).await;
    let client = StripeClient::new(fast_config());
    let layout = Layout::new(6, 3, 8192, 1024).unwrap();
    let data = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(1), 6 * 8192);
    let loc = client.write_item(ItemId([2; 16]), layout, data.clone(), &cluster.addrs()).await.unwrap();
    cluster.servers[2].shared.faults.set(Faults { corrupt_rate: 1.0, ..Default::default() });
    for mode in ReadMode::ALL {
        let (got, _) = client.read(&loc, 0..data.len() as u64, mode).await.unwrap();
        assert_eq!(got.to_vec(), &data[..], "{mode}");
    }
    assert!(client.stats().checksum_failures >= 1, "{:?}", client.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_reads_route_around_a_slow_server() {
    let cluster = Cluster::servers_only(9).await;
    let client = StripeClient::new(fast_config());
    let layout = Layout::new(6, 3, 8192, 1024).unwrap();
    let data = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(2), 6 * 8192);
    let loc = client.write_item(ItemId([3; 16]), layout, data.clone(), &cluster.addrs()).await.unwrap();
    // Warm up the latency picture, then slow one data server down.
    for _ in 0..20 {
        client.read(&loc, 0..data.len() as u64, ReadMode::Normal).await.unwrap();
    }
    cluster.servers[1].shared.faults.set(Faults { latency: Duration::from_millis(300), ..Default::default() });
    let mut won = 0;
    for _ in 0..10 {
        let (got, report) = client.read(&loc, 0..data.len() as u64, ReadMode::Hedged).await.unwrap();
        assert_eq!(got.to_vec(), &data[..]);
        won += report.hedges_won;
    }
    assert_eq!(won, 10, "every hedged read finished without the slow server");
    let slow = client.stats().servers.into_iter().find(|s| s.addr == loc.servers[1].clone().unwrap()).unwrap();
    assert!(slow.slow, "the client learned which server is slow: {slow:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_m_lost_servers_and_name_the_stripes_past_that() {
    let mut cluster = Cluster::servers_only(9).await;
    let client = StripeClient::new(fast_config());
    let layout = Layout::new(6, 3, 4096, 1024).unwrap();
    let data = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(3), 6 * 4096);
    let loc = client.write_item(ItemId([4; 16]), layout, data.clone(), &cluster.addrs()).await.unwrap();
    for _ in 0..3 {
        cluster.servers.remove(0).shutdown().await.unwrap();
    }
    for mode in ReadMode::ALL {
        let (got, _) = client.read(&loc, 0..data.len() as u64, mode).await.unwrap();
        assert_eq!(got.to_vec(), &data[..], "{mode} with 3 of 9 down");
    }
    cluster.servers.remove(0).shutdown().await.unwrap();
    for mode in ReadMode::ALL {
        match client.read(&loc, 0..data.len() as u64, mode).await {
            Err(ClientError::Unreadable { missing, reachable, needed, .. }) => {
                assert_eq!(needed, 6);
                assert_eq!(reachable, 5);
                let lost: Vec<u16> = missing.iter().map(|(s, _)| s.index).collect();
                assert_eq!(lost, vec![0, 1, 2, 3], "{mode}");
                assert!(missing.iter().all(|(_, e)| matches!(e, FetchError::Status { .. })));
            }
            other => panic!("{mode}: expected an unreadable item, got {other:?}"),
        }
    }
}

/// A read given up on (its future dropped: a caller that timed out, or one
/// reading the rest another way) stops its fetches: the slow server is not
/// left serving bytes nobody waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_read_stops_its_fetches() {
    let cluster = Cluster::servers_only(9).await;
    let client = StripeClient::new(ClientConfig { fetch_timeout: Duration::from_secs(60), ..fast_config() });
    // 64 KiB units of 4 KiB blocks: capped at 8 KiB/s, a stripe takes 8 s.
    let layout = Layout::new(6, 3, 64 * 1024, 4096).unwrap();
    let data = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(5), 6 * 64 * 1024);
    let loc = client.write_item(ItemId([5; 16]), layout, data.clone(), &cluster.addrs()).await.unwrap();
    let slow = cluster.addrs().iter().position(|a| Some(a) == loc.servers[0].as_ref()).unwrap();
    cluster.set_faults(slow, tessera_proto::cs::Faults { bandwidth_bytes_per_sec: 8192, ..Default::default() }).await;
    let read = client.read(&loc, 0..data.len() as u64, ReadMode::Normal);
    assert!(tokio::time::timeout(Duration::from_millis(300), read).await.is_err(), "the capped stripe held the read");
    // Served in full, the stripe would keep the server busy for 8 s more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while cluster.in_flight().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the dropped read's fetch still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the client reads on, exact.
    cluster.set_faults(slow, tessera_proto::cs::Faults::default()).await;
    let (got, _) = client.read(&loc, 0..data.len() as u64, ReadMode::Normal).await.unwrap();
    assert_eq!(got.to_vec(), &data[..]);
}
