//! The data plane under faults, with nine real chunkserver processes on
//! loopback: dead, corrupt, hung and full servers, and restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tessera_cli::bench::read_tail::pattern;
use tessera_cli::local::{Launcher, LocalCluster};
use tessera_client::{ClientConfig, ClientError, ItemLocation, StripeClient};
use tessera_core::ids::ItemId;
use tessera_core::latency::HedgePolicy;
use tessera_core::layout::Layout;
use tessera_core::read_plan::ReadMode;
use tessera_proto::cs;

fn launcher() -> Launcher {
    Launcher::tessera(env!("CARGO_BIN_EXE_tessera"))
}

fn layout() -> Layout {
    // 64 KiB units, 16 KiB blocks: 384 KiB items.
    Layout::new(6, 3, 64 << 10, 16 << 10).unwrap()
}

fn config(timeout: Duration) -> ClientConfig {
    ClientConfig {
        fetch_timeout: timeout,
        hedge: HedgePolicy {
            floor: Duration::from_millis(2),
            ceiling: Duration::from_millis(100),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn write_items(
    client: &StripeClient,
    cluster: &LocalCluster,
    count: usize,
    seed: u64,
) -> Vec<(ItemLocation, Bytes)> {
    let mut out = Vec::new();
    for j in 0..count {
        let len = if j % 2 == 0 { layout().item_capacity() as usize } else { 100_000 + j * 777 };
        let data = Bytes::from(pattern(len, seed + j as u64));
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&seed.to_le_bytes());
        id[8..].copy_from_slice(&(j as u64).to_le_bytes());
        let loc = client.write_item(ItemId(id), layout(), data.clone(), &cluster.addrs()).await.unwrap();
        out.push((loc, data));
    }
    out
}

fn stripe_path(cluster: &LocalCluster, loc: &ItemLocation, index: usize) -> std::path::PathBuf {
    let name = loc.stripe(index).to_string();
    cluster.servers[index].data_dir.join("stripes").join(&name[..2]).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_exact_while_m_servers_die_and_fail_clearly_past_m() {
    let mut cluster = LocalCluster::start(launcher(), 9, None).await.unwrap();
    let client = StripeClient::new(config(Duration::from_secs(2)));
    let items = Arc::new(write_items(&client, &cluster, 6, 1).await);

    // Readers in every mode run while three servers are killed.
    let stop = Arc::new(AtomicBool::new(false));
    // Readers publish how many reads they finished, so the test can wait for progress.
    let (reads, mut progress) = tokio::sync::watch::channel(0u64);
    let reads = Arc::new(reads);
    let mut readers = Vec::new();
    for mode in ReadMode::ALL {
        let (client, items, stop, reads) = (client.clone(), items.clone(), stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (loc, data) = &items[i % items.len()];
                let (got, _) = client.read(loc, 0..loc.item_len, mode).await.expect("reads survive m lost servers");
                assert_eq!(got.to_vec(), &data[..], "{mode} read of item {}", i % items.len());
                reads.send_modify(|n| *n += 1);
                i += 1;
            }
        }));
    }
    for victim in [0, 4, 8] {
        // Let some reads complete between kills.
        let before = *progress.borrow();
        progress.wait_for(|n| *n >= before + 10).await.unwrap();
        cluster.servers[victim].kill().await.unwrap();
    }
    let before = *progress.borrow();
    progress.wait_for(|n| *n >= before + 30).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }

    // One more server down: m + 1 stripes are gone.
    cluster.servers[2].kill().await.unwrap();
    let (loc, _) = &items[0];
    for mode in ReadMode::ALL {
        match client.read(loc, 0..loc.item_len, mode).await {
            Err(e @ ClientError::Unreadable { .. }) => {
                let text = e.to_string();
                for idx in [0, 2, 4, 8] {
                    assert!(text.contains(&loc.stripe(idx).to_string()), "{mode}: {text}");
                }
                let ClientError::Unreadable { missing, reachable, needed, .. } = e else { unreachable!() };
                assert_eq!((reachable, needed), (5, 6));
                assert_eq!(missing.iter().map(|(s, _)| s.index).collect::<Vec<_>>(), vec![0, 2, 4, 8]);
            }
            other => panic!("{mode}: expected an unreadable item, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_on_disk_is_detected_rebuilt_and_reported() {
    let cluster = LocalCluster::start(launcher(), 9, None).await.unwrap();
    let client = StripeClient::new(config(Duration::from_secs(2)));
    let items = write_items(&client, &cluster, 1, 2).await;
    let (loc, data) = &items[0];
    let path = stripe_path(&cluster, loc, 3);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let (got, report) = client.read(loc, 0..loc.item_len, ReadMode::Normal).await.unwrap();
    assert_eq!(got.to_vec(), &data[..]);
    assert_eq!(report.checksum_failures, 1);
    assert_eq!(report.rebuilt, 1);

    // The chunkserver counted it and logged the stripe id.
    let metrics_addr = cluster.servers[3].metrics.unwrap();
    let metrics = reqwest_lite(metrics_addr, "/metrics").await;
    let line =
        metrics.lines().find(|l| l.starts_with("tessera_chunkserver_checksum_failures_total")).unwrap_or_default();
    assert!(line.ends_with(" 1"), "{metrics}");
    let log = std::fs::read_to_string(&cluster.servers[3].log).unwrap();
    assert!(log.contains("corrupt block on disk") && log.contains(&loc.stripe(3).to_string()), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_outrun_by_accelerated_reads_and_timed_out_by_normal_ones() {
    let cluster = LocalCluster::start(launcher(), 9, None).await.unwrap();
    let writer = StripeClient::new(config(Duration::from_secs(2)));
    let items = write_items(&writer, &cluster, 1, 3).await;
    let (loc, data) = &items[0];
    cluster.servers[1].set_faults(cs::Faults { hang: true, ..Default::default() }).await.unwrap();

    // Accelerated: the hung stripe is never waited for. All n are asked by default.
    let client = StripeClient::new(config(Duration::from_secs(3600)));
    let (got, report) = client.read(loc, 0..loc.item_len, ReadMode::Accelerated).await.unwrap();
    assert_eq!(got.to_vec(), &data[..]);
    assert_eq!(report.failed_fetches, 0, "nothing timed out: the hung fetch was cancelled");
    assert_eq!((report.fetches, report.rebuilt), (9, 1));

    // With one extra: seven stripes, and six of them are enough without the hung one.
    let client = StripeClient::new(ClientConfig { accelerated_extra: Some(1), ..config(Duration::from_secs(3600)) });
    let (got, report) = client.read(loc, 0..loc.item_len, ReadMode::Accelerated).await.unwrap();
    assert_eq!(got.to_vec(), &data[..]);
    assert_eq!((report.fetches, report.rebuilt, report.failed_fetches), (7, 1, 0));

    // Normal: waits out its timeout, then rebuilds.
    let client = StripeClient::new(config(Duration::from_millis(300)));
    let (got, report) = client.read(loc, 0..loc.item_len, ReadMode::Normal).await.unwrap();
    assert_eq!(got.to_vec(), &data[..]);
    assert_eq!((report.failed_fetches, report.rebuilt), (1, 1));

    // Hedged: rebuilds after the hedge delay, long before the timeout.
    let client = StripeClient::new(config(Duration::from_secs(3600)));
    let (got, report) = client.read(loc, 0..loc.item_len, ReadMode::Hedged).await.unwrap();
    assert_eq!(got.to_vec(), &data[..]);
    assert_eq!((report.hedges_won, report.failed_fetches), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_fails_the_write_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let mnt = root.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let _mount = TmpfsMount::new(&mnt, "1m");
    let cluster = LocalCluster::start(launcher(), 1, Some(&mnt)).await.unwrap();
    let client = StripeClient::new(config(Duration::from_secs(2)));
    let tiny = Layout::new(1, 1, 128 << 10, 16 << 10).unwrap();
    let addr = cluster.addrs()[0].clone();
    let mut stored = 0;
    let err = loop {
        let data = Bytes::from(pattern(128 << 10, stored));
        let mut id = [7u8; 16];
        id[..8].copy_from_slice(&stored.to_le_bytes());
        match client.write_item(ItemId(id), tiny, data, &[addr.clone(), addr.clone()]).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "a 1 MiB tmpfs cannot hold 100 items");
    };
    match &err {
        ClientError::Write { code, message, .. } => {
            assert_eq!(*code, tonic::Code::ResourceExhausted, "{err}");
            assert!(message.contains("no space") && message.contains(&mnt.display().to_string()), "{message}");
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    // Nothing half-written: no temporary files, and only whole stripes in the index.
    let dir = &cluster.servers[0].data_dir;
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    let mut c = cluster_client(&addr).await;
    let mut inv = c.inventory(cs::InventoryRequest {}).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(b) = inv.message().await.unwrap() {
        assert!(b.stripes.iter().all(|s| s.length == 128 << 10));
        n += b.stripes.len();
    }
    // Each stored item is two stripes on this one server; the failed item may
    // have left its first stripe, which is whole.
    assert!(n == 2 * stored as usize || n == 2 * stored as usize + 1, "{n} stripes for {stored} items");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_serves_what_it_stored_and_forgets_interrupted_writes() {
    let mut cluster = LocalCluster::start(launcher(), 9, None).await.unwrap();
    let client = StripeClient::new(config(Duration::from_secs(2)));
    let items = write_items(&client, &cluster, 3, 4).await;

    // Start a write to server 5 and kill the server while it is streaming.
    let (tx, rx) = tokio::sync::mpsc::channel::<cs::WriteStripeRequest>(4);
    let data = pattern(1 << 20, 99);
    let header = cs::StripeHeader {
        stripe: Some(cs::StripeRef { item: vec![0xee; 16].into(), index: 0 }),
        length: data.len() as u64,
        block_size: 65536,
        block_crcs: tessera_core::checksum::block_checksums(&data, 65536),
        class: 0,
    };
    tx.send(cs::WriteStripeRequest { part: Some(cs::write_stripe_request::Part::Header(header)) }).await.unwrap();
    tx.send(cs::WriteStripeRequest {
        part: Some(cs::write_stripe_request::Part::Data(data[..300_000].to_vec().into())),
    })
    .await
    .unwrap();
    let mut c = cluster_client(&cluster.addrs()[5]).await;
    let write = tokio::spawn(async move { c.write_stripe(tokio_stream_from(rx)).await });
    let tmp = cluster.servers[5].data_dir.join("tmp");
    while std::fs::read_dir(&tmp).unwrap().count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.restart(5).await.unwrap();
    assert!(write.await.unwrap().is_err(), "the interrupted write did not succeed");
    drop(tx);

    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the interrupted write left nothing");
    let mut c = cluster_client(&cluster.addrs()[5]).await;
    let mut inv = c.inventory(cs::InventoryRequest {}).await.unwrap().into_inner();
    let batch = inv.message().await.unwrap().unwrap();
    assert_eq!(batch.stripes.len(), 3, "one stripe per item, and not the interrupted one");

    // Reads that need server 5's stripes come back exact.
    for (loc, data) in &items {
        let fresh = StripeClient::new(config(Duration::from_secs(2)));
        let (got, report) = fresh.read(loc, 0..loc.item_len, ReadMode::Normal).await.unwrap();
        assert_eq!(got.to_vec(), &data[..]);
        assert_eq!(report.rebuilt, 0, "served directly by the restarted server");
    }
}

async fn cluster_client(addr: &str) -> cs::chunkserver_client::ChunkserverClient<tonic::transport::Channel> {
    cs::chunkserver_client::ChunkserverClient::connect(format!("http://{addr}")).await.unwrap()
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A minimal HTTP GET (the metrics endpoint speaks HTTP/1.1).
async fn reqwest_lite(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A tmpfs of a given size, unmounted on drop.
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    fn new(at: &std::path::Path, size: &str) -> Self {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(st.success(), "mounting a tmpfs needs root (the test suite runs as root)");
        Self(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losers_are_cancelled_and_the_server_stops_sending() {
    let cluster = LocalCluster::start(launcher(), 9, None).await.unwrap();
    let writer = StripeClient::new(config(Duration::from_secs(2)));
    // One item of 6 x 1 MiB stripes.
    let big = Layout::new(6, 3, 1 << 20, 64 << 10).unwrap();
    let data = Bytes::from(pattern(6 << 20, 77));
    let loc = writer.write_item(ItemId([0x42; 16]), big, data.clone(), &cluster.addrs()).await.unwrap();
    // Stripe 2's server trickles at 64 KiB/s: its 1 MiB would take 16 s.
    cluster.servers[2]
        .set_faults(cs::Faults { bandwidth_bytes_per_sec: 64 << 10, ..Default::default() })
        .await
        .unwrap();

    let client = StripeClient::new(config(Duration::from_secs(3600)));
    let (got, report) = client.read(&loc, 0..loc.item_len, ReadMode::Accelerated).await.unwrap();
    assert_eq!(got.to_vec(), &data[..]);
    assert_eq!(report.rebuilt, 1, "stripe 2 was rebuilt, not waited for");
    assert!(report.bytes_fetched < 9 << 20, "losers did not send everything: {} bytes", report.bytes_fetched);

    // The slow server saw the cancellation: its read ended as cancelled
    // (within moments, not the 16 s its bandwidth cap would take).
    let metrics = cluster.servers[2].metrics.unwrap();
    while !reqwest_lite(metrics, "/metrics").await.contains("op=\"read\",class=\"serving\",code=\"cancelled\"} 1") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
