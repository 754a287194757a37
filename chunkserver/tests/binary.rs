//! The `tessera-chunkserver` binary, driven over its real gRPC and HTTP ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;

use tessera_core::checksum::block_checksums;
use tessera_proto::cs;
use tessera_proto::cs::chunkserver_client::ChunkserverClient;
use tessera_proto::cs::fault_injection_client::FaultInjectionClient;
use tessera_testkit::Proc;

struct Server {
    // Declared before `dir`: the process stops before its data goes.
    _proc: Proc,
    grpc: String,
    metrics: String,
    dir: tempfile::TempDir,
}

/// Starts the binary and waits for its ready line (JSON naming the ports it
/// bound) on its standard output.
fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let mut args: Vec<String> =
        ["--node-id", "t0", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"].map(String::from).to_vec();
    args.extend(["--data-dir".into(), p("data"), "--unix-socket".into(), p("cs.sock")]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let program = Path::new(env!("CARGO_BIN_EXE_tessera-chunkserver"));
    let (proc, stdout) = Proc::spawn_piped("chunkserver", program, &args, &[], &dir.path().join("cs.log")).unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let ready: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}\n{}", proc.log_tail()));
    Server {
        _proc: proc,
        grpc: ready["grpc"].as_str().unwrap().to_string(),
        metrics: ready["metrics"].as_str().unwrap().to_string(),
        dir,
    }
}

fn stripe_ref(n: u8, index: u32) -> Option<cs::StripeRef> {
    Some(cs::StripeRef { item: vec![n; 16].into(), index })
}

fn write_messages(n: u8, data: &[u8], block: usize) -> Vec<cs::WriteStripeRequest> {
    let header = cs::StripeHeader {
        stripe: stripe_ref(n, 0),
        length: data.len() as u64,
        block_size: block as u32,
        block_crcs: block_checksums(data, block),
        class: cs::RequestClass::Serving as i32,
    };
    std::iter::once(cs::write_stripe_request::Part::Header(header))
        .chain(data.chunks(3000).map(|c| cs::write_stripe_request::Part::Data(c.to_vec().into())))
        .map(|p| cs::WriteStripeRequest { part: Some(p) })
        .collect()
}

async fn read_all(c: &mut ChunkserverClient<tonic::transport::Channel>, n: u8) -> Result<Vec<u8>, tonic::Status> {
    let req = cs::ReadStripeRequest { stripe: stripe_ref(n, 0), offset: 0, length: 0, class: 0 };
    let mut s = c.read_stripe(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test]
async fn the_binary_stores_serves_and_reports() {
    let server = start(&[]);
    let mut c = ChunkserverClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let resp = c.write_stripe(futures::stream::iter(write_messages(1, &data, 4096))).await.unwrap().into_inner();
    assert!(!resp.already_present);
    let again = c.write_stripe(futures::stream::iter(write_messages(1, &data, 4096))).await.unwrap().into_inner();
    assert!(again.already_present, "a retried write is a no-op");
    assert_eq!(read_all(&mut c, 1).await.unwrap(), data);

    // Precise codes for bad requests.
    assert_eq!(read_all(&mut c, 9).await.unwrap_err().code(), tonic::Code::NotFound);
    let bad_range = cs::ReadStripeRequest { stripe: stripe_ref(1, 0), offset: 100, length: 0, class: 0 };
    assert_eq!(c.read_stripe(bad_range).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let mut lying = write_messages(2, &data, 4096);
    if let Some(cs::write_stripe_request::Part::Data(d)) = &mut lying[2].part {
        let mut v = d.to_vec();
        v[0] ^= 1;
        *d = v.into();
    }
    let err = c.write_stripe(futures::stream::iter(lying)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Inventory and stats.
    let mut inv = c.inventory(cs::InventoryRequest {}).await.unwrap().into_inner();
    let batch = inv.message().await.unwrap().unwrap();
    assert_eq!(batch.stripes.len(), 1);
    let stats = c.stats(cs::StatsRequest { window_secs: 5 }).await.unwrap().into_inner();
    assert_eq!(stats.node_id, "t0");
    assert_eq!(stats.devices[0].stripes, 1);
    assert!(stats.devices[0].free_bytes > 0);
    assert_eq!(stats.classes.len(), 4);
    assert_eq!(c.stats(cs::StatsRequest { window_secs: 7 }).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // The same service on the unix socket.
    let sock = server.dir.path().join("cs.sock");
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
        .unwrap();
    assert_eq!(read_all(&mut ChunkserverClient::new(channel), 1).await.unwrap(), data);

    // Metrics and health over HTTP.
    assert!(http_get(&server.metrics, "/healthz").ends_with("ok\n"));
    let metrics = http_get(&server.metrics, "/metrics");
    assert!(
        metrics.contains("tessera_chunkserver_requests_total{op=\"write\",class=\"serving\",code=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("tessera_chunkserver_stripes{data_dir="), "{metrics}");

    // No fault injection unless asked for.
    let mut f = FaultInjectionClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    assert_eq!(f.get_faults(cs::GetFaultsRequest {}).await.unwrap_err().code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn a_flipped_byte_on_disk_is_data_loss_naming_the_stripe_and_block() {
    let server = start(&["--enable-fault-injection"]);
    let mut c = ChunkserverClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let data = vec![0x11u8; 3 * 4096];
    c.write_stripe(futures::stream::iter(write_messages(3, &data, 4096))).await.unwrap();
    let name = format!("{}.0", "03".repeat(16));
    let path = server.dir.path().join("data/stripes/03").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 4096 + 7; // in the last block
    bytes[at] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let err = read_all(&mut c, 3).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss);
    assert!(err.message().contains(&name) && err.message().contains("block 2"), "{}", err.message());
    let metrics = http_get(&server.metrics, "/metrics");
    assert!(metrics.contains("tessera_chunkserver_checksum_failures_total{data_dir="), "{metrics}");
    // The stripe is out of service for good: never served again, its file
    // kept under quarantine/.
    assert!(metrics.contains("tessera_chunkserver_quarantined_stripes_total{found_by=\"read\"} 1"), "{metrics}");
    assert_eq!(read_all(&mut c, 3).await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(!path.exists());
    let kept: Vec<_> = std::fs::read_dir(server.dir.path().join("data/quarantine")).unwrap().collect();
    assert_eq!(kept.len(), 1);

    // Fault injection is validated and reported back.
    c.write_stripe(futures::stream::iter(write_messages(3, &data, 4096))).await.unwrap();
    let mut f = FaultInjectionClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let bad = f.set_faults(cs::Faults { error_rate: 2.0, ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("faults.error_rate"));
    f.set_faults(cs::Faults { error_rate: 1.0, ..Default::default() }).await.unwrap();
    let req = cs::ReadStripeRequest { stripe: stripe_ref(3, 0), offset: 0, length: 4096, class: 0 };
    let mut s = c.read_stripe(req).await.unwrap().into_inner();
    assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::Unavailable);
}

/// Reads stripe `n` whole as `class`, reporting on `first` when its first bytes arrive.
async fn read_as(
    mut c: ChunkserverClient<tonic::transport::Channel>,
    n: u8,
    class: cs::RequestClass,
    first: tokio::sync::mpsc::UnboundedSender<cs::RequestClass>,
) -> usize {
    let req = cs::ReadStripeRequest { stripe: stripe_ref(n, 0), offset: 0, length: 0, class: class as i32 };
    let mut s = c.read_stripe(req).await.unwrap().into_inner();
    let mut got = 0;
    while let Some(m) = s.message().await.unwrap() {
        if got == 0 {
            first.send(class).unwrap();
        }
        got += m.data.len();
    }
    got
}

async fn until_metric(server: &Server, line: &str) {
    // The server publishes queue depths only through its metrics; poll them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = http_get(&server.metrics, "/metrics");
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never saw {line:?} in\n{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_over_quota_class_yields_a_busy_stripe_to_another_class() {
    let server = start(&["--enable-fault-injection", "--per-stripe-limit", "1", "--quota", "repair=1KiB/s"]);
    let mut c = ChunkserverClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let data = vec![0x5au8; 64 << 10];
    c.write_stripe(futures::stream::iter(write_messages(4, &data, 4096))).await.unwrap();
    // 64 KiB of repair reads: far above 1 KiB/s over the quota window.
    let (tx, mut first) = tokio::sync::mpsc::unbounded_channel();
    assert_eq!(read_as(c.clone(), 4, cs::RequestClass::Repair, tx.clone()).await, data.len());
    assert_eq!(first.recv().await, Some(cs::RequestClass::Repair));
    until_metric(&server, "tessera_chunkserver_quota_exceeded{class=\"repair\"} 1").await;

    // A repair read takes the stripe and hangs; another repair read, then a
    // serving read, queue behind it.
    let mut f = FaultInjectionClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    f.set_faults(cs::Faults { hang: true, ..Default::default() }).await.unwrap();
    let holder = tokio::spawn(read_as(c.clone(), 4, cs::RequestClass::Repair, tx.clone()));
    until_metric(&server, "tessera_chunkserver_in_flight_requests{class=\"repair\"} 1").await;
    let repair = tokio::spawn(read_as(c.clone(), 4, cs::RequestClass::Repair, tx.clone()));
    until_metric(&server, "tessera_chunkserver_stripe_waiting_requests{class=\"repair\"} 1").await;
    let serving = tokio::spawn(read_as(c.clone(), 4, cs::RequestClass::Serving, tx.clone()));
    until_metric(&server, "tessera_chunkserver_stripe_waiting_requests{class=\"serving\"} 1").await;

    // The holder gives up (its stream is dropped), which frees its turn while
    // the hang is still on: whoever gets the turn hangs in it, the other
    // keeps waiting. The serving read must be the one.
    holder.abort();
    until_metric(&server, "tessera_chunkserver_stripe_waiting_requests{class=\"serving\"} 0").await;
    let metrics = http_get(&server.metrics, "/metrics");
    assert!(
        metrics.contains("tessera_chunkserver_stripe_waiting_requests{class=\"repair\"} 1"),
        "the repair read still waits: {metrics}"
    );
    f.set_faults(cs::Faults::default()).await.unwrap();
    for t in [repair, serving] {
        assert_eq!(t.await.unwrap(), data.len());
    }
    drop(tx);
    let mut order = Vec::new();
    while let Some(c) = first.recv().await {
        order.push(c);
    }
    // Both late readers got their data (the holder was cancelled).
    order.sort_by_key(|c| *c as i32);
    assert_eq!(order, [cs::RequestClass::Serving, cs::RequestClass::Repair]);
    let metrics = http_get(&server.metrics, "/metrics");
    assert!(metrics.contains("tessera_chunkserver_quota_overtaken_requests{class=\"repair\"} 1"), "{metrics}");
}
