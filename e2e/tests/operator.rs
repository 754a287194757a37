//! The operator against a real apiserver, with chunkservers on loopback:
//! a Fileset gets its finalizer and master record, an upload becomes version
//! 1 in the status, events are recorded, and deleting the Fileset deletes its
//! data before the object goes.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use tessera_api::crd::Fileset;
use tessera_client::fileset::PutOptions;
use tessera_e2e::{ControlPlane, until};
use tessera_master::MasterConfig;
use tessera_operator::ingest_pod::IngestPodConfig;
use tessera_operator::runtime::{self, OperatorConfig};
use tessera_proto::ms;

const NS: &str = "tessera-system";

/// Serves tar archives on loopback: a.tar.gz (3 files), b.tar (5 files);
/// anything else is 404. Returns the base URL.
async fn serve_tars() -> String {
    fn archive(files: usize, gz: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..files {
            let data = vec![b'a' + i as u8; 5000 * (i + 1)];
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("dir/file{i}.txt"), &data[..]).unwrap();
        }
        let raw = b.into_inner().unwrap();
        if !gz {
            return raw;
        }
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    }
    let (a, b) = (archive(3, true), archive(5, false));
    let app = axum::Router::new()
        .route("/a.tar.gz", axum::routing::get(move || async move { a }))
        .route("/b.tar", axum::routing::get(move || async move { b }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The operator's /metrics page.
async fn metrics_page(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn condition(f: &Fileset, kind: &str) -> Option<(String, String)> {
    f.status.as_ref()?.conditions.iter().find(|c| c.type_ == kind).map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fileset_is_published_reported_and_deleted_with_its_data() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cp = ControlPlane::start().await.unwrap();
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    let (ok, out, err) = cp.kubectl(&["apply", "--server-side", "-f", crds]).unwrap();
    assert!(ok, "{out}{err}");
    let namespaces: Api<Namespace> = Api::all(cp.client());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
    let _ = namespaces.create(&PostParams::default(), &ns).await;

    let config = |identity: &str, listen: &str| OperatorConfig {
        listen: listen.parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        namespace: NS.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        master: MasterConfig { heartbeat_timeout: Duration::from_secs(3), ..Default::default() },
        resync: Duration::from_millis(500),
        ingest_pods: IngestPodConfig { image: "tessera:test".into(), master_address: listen.into() },
    };
    let op = runtime::start(cp.config(), config("operator-0", "127.0.0.1:0")).await.unwrap();
    let master_addr = until("the operator to lead", async || op.master_addr()).await;
    let master = master_addr.to_string();
    // A second replica stands by: no master, not ready.
    let standby = runtime::start(cp.config(), config("operator-1", "127.0.0.1:0")).await.unwrap();
    let ready = |addr: std::net::SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.starts_with("HTTP/1.1 200")
    };
    assert!(ready(op.http_addr).await);
    assert!(!ready(standby.http_addr).await, "the standby must not be ready");
    assert!(standby.master_addr().is_none() && !*standby.leading.borrow());
    standby.shutdown().await.unwrap();

    // Nine chunkservers in three zones report to the operator's master.
    let chunkservers = tessera_testkit::Cluster::joining(&master, tessera_testkit::Servers::new(9, 3)).await;
    let fc = chunkservers.files();

    // A Fileset: finalizer, master record, not ready until a version exists.
    let filesets: Api<Fileset> = Api::namespaced(cp.client(), "default");
    let fs: Fileset = serde_json::from_value(serde_json::json!({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
        "metadata": {"name": "models"},
        "spec": {"source": {"upload": {}}, "erasure": {"stripeUnit": 65536}},
    }))
    .unwrap();
    filesets.create(&PostParams::default(), &fs).await.unwrap();
    let f = until("the fileset to be reconciled", async || {
        let f = filesets.get("models").await.ok()?;
        (condition(&f, "Ready") == Some(("False".into(), "NoVersion".into()))).then_some(f)
    })
    .await;
    assert!(f.metadata.finalizers.unwrap_or_default().contains(&tessera_api::keys::FINALIZER.to_string()));
    let layout = fc.master().get_fileset(ms::GetFilesetRequest { name: "models".into() }).await.unwrap().into_inner();
    assert_eq!(layout.spec.unwrap().layout.unwrap().stripe_unit, 65536);

    // An upload becomes version 1, ready, at full redundancy.
    let src = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::write(src.path().join(format!("f{i}.bin")), vec![i as u8; 1000 * (i + 1)]).unwrap();
    }
    let v = fc.put("models", src.path(), &PutOptions::default(), &|_| {}).await.unwrap();
    assert_eq!(v.id, 1);
    let f = until("version 1 in the status", async || {
        let f = filesets.get("models").await.ok()?;
        (condition(&f, "Ready") == Some(("True".into(), "VersionReady".into()))).then_some(f)
    })
    .await;
    let st = f.status.unwrap();
    assert_eq!((st.current_version, st.files), (Some(1), Some(20)));
    assert_eq!(st.redundancy.unwrap().summary, "full");
    assert_eq!(st.versions.len(), 1);
    assert_eq!(st.stripes_per_domain.len(), 3, "{:?}", st.stripes_per_domain);
    let events: Api<Event> = Api::namespaced(cp.client(), "default");
    until("a VersionPublished event", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("VersionPublished")).then_some(())
    })
    .await;

    // A Fileset the apiserver accepts but the master cannot (a name with a
    // dot): a Warning event names the field, and it is not retried until it
    // changes, while other filesets go on being reconciled.
    let bad: Fileset = serde_json::from_value(serde_json::json!({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
        "metadata": {"name": "bad.name"},
        "spec": {"source": {"upload": {}}},
    }))
    .unwrap();
    filesets.create(&PostParams::default(), &bad).await.unwrap();
    let warning = until("an InvalidSpec warning", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSpec")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad.name")
        })
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.as_deref().unwrap_or("").contains("not a valid fileset name"), "{warning:?}");
    let counter = |page: &str, name: &str| -> u64 {
        page.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
    };
    let (ok, invalid) = (
        "tessera_operator_reconciles_total{result=\"ok\"}",
        "tessera_operator_reconcile_failures_total{controller=\"fileset\",kind=\"invalid\"}",
    );
    // Other reconciles go on (models every resync); the invalid one's count
    // settles (its first pass adds the finalizer, which is a change) and
    // stays while many others happen.
    let mut settled = None;
    for _ in 0..2 {
        let before = counter(&metrics_page(op.http_addr).await, ok);
        until("eight more reconciles of other filesets", async || {
            (counter(&metrics_page(op.http_addr).await, ok) >= before + 8).then_some(())
        })
        .await;
        let now = counter(&metrics_page(op.http_addr).await, invalid);
        assert!((1..=2).contains(&now), "invalid reconciles: {now}");
        if let Some(was) = settled {
            assert_eq!(now, was, "the invalid fileset was retried without a change");
        }
        settled = Some(now);
    }
    filesets.delete("bad.name", &DeleteParams::default()).await.unwrap();
    until("the invalid fileset to go", async || filesets.get_opt("bad.name").await.ok()?.is_none().then_some(())).await;

    // The node of cs4 is not ready (a Node object with no Ready condition):
    // its stripes count as unavailable, the fileset is Degraded with an
    // event; once the node is Ready again, so is the fileset.
    let nodes: Api<Node> = Api::all(cp.client());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "cs4", "labels": {"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z1"}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    until("the fileset to be degraded", async || {
        let f = filesets.get("models").await.ok()?;
        (condition(&f, "Degraded").map(|c| c.0) == Some("True".into())).then_some(())
    })
    .await;
    until("a Degraded event", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("Degraded")).then_some(())
    })
    .await;
    let ready = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test",
        "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    nodes.patch_status("cs4", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&ready)).await.unwrap();
    until("the fileset to be whole again", async || {
        let f = filesets.get("models").await.ok()?;
        (condition(&f, "Degraded").map(|c| c.0) == Some("False".into())).then_some(())
    })
    .await;

    // An http source: a tar.gz becomes version 1; a new URL version 2, and
    // retention keeps one; a URL that is not there is reported, not retried
    // in a loop.
    let base = serve_tars().await;
    let web: Fileset = serde_json::from_value(serde_json::json!({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
        "metadata": {"name": "web"},
        "spec": {"source": {"http": {"url": format!("{base}/a.tar.gz")}}, "erasure": {"stripeUnit": 65536},
                 "retention": {"keepVersions": 1}},
    }))
    .unwrap();
    filesets.create(&PostParams::default(), &web).await.unwrap();
    until("the archive to become version 1", async || {
        let f = filesets.get("web").await.ok()?;
        let st = f.status.clone()?;
        (st.current_version == Some(1)
            && st.files == Some(3)
            && condition(&f, "Ready").map(|c| c.0) == Some("True".into()))
        .then_some(())
    })
    .await;
    let patch = serde_json::json!({"spec": {"source": {"http": {"url": format!("{base}/b.tar")}}}});
    filesets.patch("web", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let st = until("the new archive to become version 2", async || {
        let st = filesets.get("web").await.ok()?.status?;
        (st.current_version == Some(2) && st.files == Some(5)).then_some(st)
    })
    .await;
    assert_eq!(st.versions.iter().map(|v| v.id).collect::<Vec<_>>(), vec![2], "retention keeps one version");
    let web_copy = tempfile::tempdir().unwrap();
    let got = fc
        .open("web", 2)
        .await
        .unwrap()
        .get(fc.stripes(), &web_copy.path().join("w"), tessera_core::read_plan::ReadMode::Hedged, &|_| {})
        .await
        .unwrap();
    assert_eq!(got.files, 5);
    assert_eq!(std::fs::read(web_copy.path().join("w/dir/file4.txt")).unwrap(), vec![b'e'; 25000]);
    let broken: Fileset = serde_json::from_value(serde_json::json!({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
        "metadata": {"name": "broken"},
        "spec": {"source": {"http": {"url": format!("{base}/missing.tar")}}},
    }))
    .unwrap();
    filesets.create(&PostParams::default(), &broken).await.unwrap();
    let f = until("the missing archive to be reported", async || {
        let f = filesets.get("broken").await.ok()?;
        (condition(&f, "Ready") == Some(("False".into(), "IngestFailed".into()))).then_some(f)
    })
    .await;
    let ready = f.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("404"), "{}", ready.message);
    // The operator's metrics, with the master's after them on one page.
    let page = metrics_page(op.http_addr).await;
    for line in [
        "tessera_operator_leader 1",
        "tessera_operator_reconciles_total{result=\"ok\"}",
        "tessera_operator_ingests_total{result=\"ok\"} 2",
        "tessera_operator_ingests_total{result=\"failed\"}",
        "tessera_master_chunkservers{state=\"up\"}",
    ] {
        assert!(page.contains(line), "{line:?} missing from\n{page}");
    }
    assert_eq!(page.matches("# EOF").count(), 1, "one page, one end marker");
    for name in ["web", "broken"] {
        filesets.delete(name, &DeleteParams::default()).await.unwrap();
        until("the fileset to go", async || filesets.get_opt(name).await.ok()?.is_none().then_some(())).await;
    }

    // The operator restarts (a new replica on the same address): the master
    // comes back from its records and the chunkservers' reports.
    op.shutdown().await.unwrap();
    let op = runtime::start(cp.config(), config("operator-2", &master)).await.unwrap();
    until("the new replica to lead", async || op.master_addr()).await;
    until("every chunkserver to report again", async || {
        let st = fc.master().status(ms::StatusRequest::default()).await.ok()?.into_inner();
        (st.servers.iter().filter(|s| s.live).count() == 9).then_some(())
    })
    .await;
    let open = until("version 1 to be readable", async || fc.open("models", 0).await.ok()).await;
    let copy = tempfile::tempdir().unwrap();
    let got = open
        .get(fc.stripes(), &copy.path().join("c"), tessera_core::read_plan::ReadMode::Hedged, &|_| {})
        .await
        .unwrap();
    assert_eq!(got.files, 20);
    for i in 0..20 {
        let name = format!("f{i}.bin");
        assert_eq!(
            std::fs::read(copy.path().join("c").join(&name)).unwrap(),
            std::fs::read(src.path().join(&name)).unwrap()
        );
    }
    until("the status to stay ready", async || {
        let f = filesets.get("models").await.ok()?;
        (condition(&f, "Ready") == Some(("True".into(), "VersionReady".into()))).then_some(())
    })
    .await;

    // Deleting the Fileset deletes the data, then the object goes.
    filesets.delete("models", &DeleteParams::default()).await.unwrap();
    until("the fileset to go", async || filesets.get_opt("models").await.ok()?.is_none().then_some(())).await;
    let gone = fc.master().get_fileset(ms::GetFilesetRequest { name: "models".into() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    until("the stripes to be deleted", async || {
        let st = fc.master().status(ms::StatusRequest::default()).await.ok()?.into_inner();
        (st.servers.iter().map(|s| s.stripes).sum::<u64>() == 0).then_some(())
    })
    .await;

    for s in chunkservers.servers {
        s.shutdown().await.unwrap();
    }
    op.shutdown().await.unwrap();
}
