//! The operator and chunkservers as the programs users run, against a real
//! apiserver with kwok nodes carrying zone and rack labels:
//!
//! - an http source goes Progressing, then Ready with the right files and
//!   bytes, and `tessera ls` / `tessera cat` read it through the operator;
//! - a PersistentVolumeClaim source is ingested by the pod the operator
//!   starts (kwok runs no containers, so the test plays the kubelet: it runs
//!   the pod's own command line with the claim's directory and reports the
//!   pod's phase), and a missing claim is reported by name;
//! - a node is cordoned and its chunkserver killed: both filesets turn
//!   Degraded; the one whose Priority says `high` is rebuilt and Ready at full
//!   redundancy while the `low` one waits out its grace, until its Priority
//!   is changed to `high`; Events are recorded;
//! - the operator crashes (SIGKILL) and its successor serves the same reads.

use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use tessera_api::crd::{Fileset, Priority};
use tessera_e2e::processes::{Cluster, condition, is, start_cluster, start_operator, tessera};
use tessera_e2e::{ControlPlane, tessera_bin, until};

const NODES: usize = 9;

/// The files of the archive: 24 files of 40-270 KB, so that every node
/// holds stripes of both filesets.
fn files() -> Vec<(String, Vec<u8>)> {
    (0..24).map(|i| (format!("data/part-{i:02}.bin"), vec![b'a' + (i % 26) as u8; 40_000 + 10_000 * i])).collect()
}

/// Serves `/data.tar.gz` once `release` is notified, so the test can see
/// the fileset Progressing before the ingest can finish.
async fn serve_archive(release: Arc<tokio::sync::Notify>) -> String {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files() {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    let body = gz.finish().unwrap();
    let app = axum::Router::new().route(
        "/data.tar.gz",
        axum::routing::get(move || {
            let (body, release) = (body.clone(), release.clone());
            async move {
                release.notified().await;
                release.notify_one();
                body
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/data.tar.gz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_chunkserver_processes_on_kwok_nodes_ingest_lose_a_node_and_repair_by_priority() {
    let cp = ControlPlane::start().await.unwrap();
    if !cp.is_local() {
        // Chunkserver processes here cannot stand in for a real cluster's nodes.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Nine kwok nodes in three zones, one rack each; the operator and one
    // chunkserver per node, as processes.
    let Cluster { kwok, mut operator, mut servers, master } = start_cluster(&cp, NODES, dir.path()).await;
    let m = master.to_string();

    // Two priorities; one fileset under each, from the same archive.
    let priorities: Api<Priority> = Api::all(cp.client());
    for (name, class) in [("critical", "high"), ("bulk", "low")] {
        let p: Priority = serde_json::from_value(serde_json::json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Priority",
            "metadata": {"name": name}, "spec": {"value": 10, "repairClass": class},
        }))
        .unwrap();
        priorities.create(&PostParams::default(), &p).await.unwrap();
    }
    let release = Arc::new(tokio::sync::Notify::new());
    let url = serve_archive(release.clone()).await;
    let filesets: Api<Fileset> = Api::namespaced(cp.client(), "default");
    for (name, priority) in [("hot", "critical"), ("cold", "bulk")] {
        let f: Fileset = serde_json::from_value(serde_json::json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
            "metadata": {"name": name},
            "spec": {"source": {"http": {"url": url}}, "priority": priority,
                     "erasure": {"k": 4, "m": 2, "stripeUnit": 65536}},
        }))
        .unwrap();
        filesets.create(&PostParams::default(), &f).await.unwrap();
    }
    for name in ["hot", "cold"] {
        until("the ingest to be in progress", async || {
            let f = filesets.get(name).await.ok()?;
            (condition(&f, "Progressing") == Some(("True".into(), "Ingesting".into())) && !is(&f, "Ready", "True"))
                .then_some(())
        })
        .await;
    }
    release.notify_one();
    let (count, bytes) = (files().len() as u64, files().iter().map(|f| f.1.len() as u64).sum::<u64>());
    for name in ["hot", "cold"] {
        let st = until("version 1 to be ready", async || {
            let f = filesets.get(name).await.ok()?;
            (is(&f, "Ready", "True") && is(&f, "Progressing", "False")).then_some(f.status?)
        })
        .await;
        assert_eq!((st.current_version, st.files), (Some(1), Some(count)));
        assert_eq!(st.versions[0].bytes, bytes);
        assert_eq!(st.redundancy.unwrap().summary, "full");
        let domains: Vec<&str> = st.stripes_per_domain.keys().map(String::as_str).collect();
        assert_eq!(domains, ["test/zone-0", "test/zone-1", "test/zone-2"], "zones from the Node labels");
    }
    let listing = tessera(&m, &["ls", "hot@1/data"]);
    assert_eq!(listing.lines().count(), files().len(), "{listing}");
    assert!(listing.contains("part-23.bin"), "{listing}");
    let cat = Command::new(tessera_bin("tessera")).args(["--master", &m, "cat", "cold/data/part-05.bin"]).output();
    assert_eq!(cat.unwrap().stdout, files()[5].1);
    let counted = until("each priority to count its fileset", async || {
        let p = priorities.get("critical").await.ok()?;
        p.status.filter(|s| s.filesets == 1).map(|s| s.observed_generation)
    })
    .await;
    assert_eq!(counted, Some(1));

    // A PVC source: the operator starts an ingest pod that mounts the claim.
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "exports"},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(cp.client(), "default")
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    let volume = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(volume.path().join("run-7/sub")).unwrap();
    std::fs::write(volume.path().join("run-7/a.txt"), b"alpha").unwrap();
    std::fs::write(volume.path().join("run-7/sub/b.txt"), vec![7u8; 300_000]).unwrap();
    std::fs::write(volume.path().join("elsewhere.txt"), b"not in the source path").unwrap();
    for (name, claim) in [("from-claim", "exports"), ("no-claim", "missing")] {
        let f: Fileset = serde_json::from_value(serde_json::json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
            "metadata": {"name": name},
            "spec": {"source": {"pvc": {"claimName": claim, "path": "run-7"}}, "erasure": {"k": 4, "m": 2}},
        }))
        .unwrap();
        filesets.create(&PostParams::default(), &f).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(cp.client(), "default");
    let pod = until("the ingest pod", async || {
        pods.list(&ListParams::default().labels("app.kubernetes.io/component=tessera-ingest")).await.ok()?.items.pop()
    })
    .await;
    let spec = pod.spec.clone().unwrap();
    let volume_spec = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(volume_spec.persistent_volume_claim.as_ref().unwrap().claim_name, "exports");
    // Play the kubelet: the container's command line, with the claim's
    // directory where the container would mount it.
    let c = &spec.containers[0];
    let mount = &c.volume_mounts.as_ref().unwrap()[0].mount_path;
    let args: Vec<String> = c
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| match a.strip_prefix(mount.as_str()) {
            Some(rest) => format!("{}{rest}", volume.path().display()),
            None => a,
        })
        .collect();
    assert_eq!(c.command.as_deref(), Some(&["tessera".to_string()][..]));
    let env = c.env.clone().unwrap();
    let out = Command::new(tessera_bin("tessera"))
        .args(&args)
        .envs(env.iter().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())))
        .output()
        .unwrap();
    assert!(out.status.success(), "the ingest pod's command: {}", String::from_utf8_lossy(&out.stderr));
    let done = serde_json::json!({"status": {"phase": "Succeeded"}});
    pods.patch_status(&pod.metadata.name.clone().unwrap(), &PatchParams::default(), &Patch::Merge(&done))
        .await
        .unwrap();
    let st = until("the claim's directory to become version 1", async || {
        let f = filesets.get("from-claim").await.ok()?;
        is(&f, "Ready", "True").then_some(f.status?)
    })
    .await;
    assert_eq!((st.current_version, st.files, st.versions[0].bytes), (Some(1), Some(2), 300_005));
    assert_eq!(tessera(&m, &["cat", "from-claim/a.txt"]), "alpha");
    until("the finished ingest pod to be deleted", async || {
        pods.get_opt(&pod.metadata.name.clone().unwrap()).await.ok()?.is_none().then_some(())
    })
    .await;
    let f = until("the missing claim to be reported", async || {
        let f = filesets.get("no-claim").await.ok()?;
        (condition(&f, "Ready") == Some(("False".into(), "IngestFailed".into()))).then_some(f)
    })
    .await;
    let ready = f.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("spec.source.pvc.claimName") && ready.message.contains("default/missing"));

    // node-4 is cordoned and its chunkserver dies.
    let (ok, out, err) = cp.kubectl(&["cordon", "node-4"]).unwrap();
    assert!(ok, "{out}{err}");
    servers[4].kill();
    for name in ["hot", "cold"] {
        until("the fileset to be degraded", async || {
            let f = filesets.get(name).await.ok()?;
            is(&f, "Degraded", "True").then_some(())
        })
        .await;
    }
    // High availability: rebuilt at once, then whole and ready.
    until("hot to be rebuilt", async || {
        let f = filesets.get("hot").await.ok()?;
        let full = f.status.as_ref()?.redundancy.as_ref()?.summary == "full";
        (full && is(&f, "Degraded", "False") && is(&f, "Ready", "True") && is(&f, "Repairing", "False")).then_some(())
    })
    .await;
    // Low availability: still waiting for node-4 to come back.
    let cold = filesets.get("cold").await.unwrap();
    assert!(is(&cold, "Degraded", "True"), "{:?}", cold.status);
    assert_eq!(cold.status.unwrap().redundancy.unwrap().summary, "reduced");
    // Its priority now says high, and to read accelerated with its own hedge
    // bounds: it is rebuilt too, and the master hands node plugins the new
    // read mode and hedge tuning.
    let patch = serde_json::json!({"spec": {"repairClass": "high", "readPolicy": {
        "mode": "accelerated", "hedgeDelayMinMs": 7, "hedgeDelayMaxMs": 70, "extraStripes": 1,
    }}});
    priorities.patch("bulk", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    until("cold to be rebuilt", async || {
        let f = filesets.get("cold").await.ok()?;
        (f.status.as_ref()?.redundancy.as_ref()?.summary == "full" && is(&f, "Degraded", "False")).then_some(())
    })
    .await;
    let read_mode = |listing: &str, fileset: &str| {
        listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(fileset))
            .and_then(|l| l.split_whitespace().last().map(String::from))
    };
    let listing = tessera(&m, &["ls"]);
    assert_eq!(read_mode(&listing, "cold").as_deref(), Some("accelerated"), "{listing}");
    assert_eq!(read_mode(&listing, "hot").as_deref(), Some("hedged"), "critical's default read policy: {listing}");
    let mc = tessera_proto::ms::master_client::MasterClient::connect(format!("http://{m}")).await.unwrap();
    let hedge = |name: &str| {
        let req = tessera_proto::ms::GetFilesetRequest { name: name.into() };
        let mut mc = mc.clone();
        async move { mc.get_fileset(req).await.unwrap().into_inner().spec.unwrap().hedge.unwrap() }
    };
    let cold_hedge = until("cold's hedge tuning in the master", async || {
        let h = hedge("cold").await;
        (h.delay_min_ms == 7).then_some(h)
    })
    .await;
    assert_eq!((cold_hedge.delay_max_ms, cold_hedge.extra_stripes), (70, 1));
    let hot_hedge = hedge("hot").await;
    assert_eq!((hot_hedge.delay_min_ms, hot_hedge.delay_max_ms, hot_hedge.extra_stripes), (2, 200, 0), "the defaults");
    let events: Api<Event> = Api::namespaced(cp.client(), "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    let about = |object: &str, reason: &str| {
        list.items.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object) && e.reason.as_deref() == Some(reason)
        })
    };
    for (object, reason) in [
        ("hot", "Degraded"),
        ("cold", "Degraded"),
        ("cold", "RepairClassChanged"),
        ("cold", "ReadModeChanged"),
        ("cold", "ReadPolicyChanged"),
    ] {
        assert!(about(object, reason), "no {reason} event for {object}");
    }
    for (i, s) in servers.iter_mut().enumerate().filter(|(i, _)| *i != 4) {
        s.check().unwrap_or_else(|e| panic!("chunkserver {i}: {e}"));
    }

    // The operator crashes; a successor takes the lease and serves the same
    // data once the chunkservers have reported to it.
    operator.kill();
    let mut successor = start_operator(&cp, master, "operator-1", dir.path());
    let copy = until("the successor to serve reads", async || {
        successor.check().unwrap();
        let out =
            Command::new(tessera_bin("tessera")).args(["--master", &m, "cat", "hot/data/part-23.bin"]).output().ok()?;
        out.status.success().then_some(out.stdout)
    })
    .await;
    assert_eq!(copy, files()[23].1);
    until("hot to stay ready under the successor", async || {
        let f = filesets.get("hot").await.ok()?;
        (is(&f, "Ready", "True") && is(&f, "Degraded", "False")).then_some(())
    })
    .await;
    drop(kwok);
}
