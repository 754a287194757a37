//! A Fileset whose source is a leaf volume, end to end: the operator and
//! chunkservers as processes on kwok nodes, the CSI node plugin and keeper as
//! processes holding a real leaf mount, and the Kubernetes objects that tie
//! them together (the leaf's PersistentVolume with the node the driver
//! reported, its claim, the node plugin's pod). The operator finds the node
//! from the volume, the plugin from the node, and asks it to promote; the
//! Fileset becomes Ready with the leaf's files as its version, and again with
//! a new version when its trigger changes.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tessera_api::crd::Fileset;
use tessera_api::keys::{CSI_DRIVER, TOPOLOGY_NODE};
use tessera_csi::csi;
use tessera_csi::csi::controller_client::ControllerClient;
use tessera_csi::csi::node_client::NodeClient;
use tessera_e2e::processes::{Cluster, NS, condition, is, start_cluster, tessera};
use tessera_e2e::{ControlPlane, Proc, free_port, tessera_bin, until};

const NODES: usize = 9;
/// The CSI plugin's node: no Node object, so kwok leaves its pod alone.
const CSI_NODE: &str = "csi-node-a";

fn writer() -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fileset_sourced_from_a_leaf_is_promoted_through_the_node_plugin() {
    let cp = ControlPlane::start().await.unwrap();
    if !cp.is_local() {
        // The node plugin here is a process on this machine, not a pod.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Cluster { kwok: _kwok, mut operator, servers: _servers, master } = start_cluster(&cp, NODES, dir.path()).await;
    let m = master.to_string();

    // The root the leaf is made over, stored with `tessera put`.
    let base = dir.path().join("base");
    std::fs::create_dir_all(base.join("data")).unwrap();
    for i in 0..5 {
        std::fs::write(base.join(format!("data/part-{i}.bin")), vec![b'a' + i as u8; 300_000]).unwrap();
    }
    tessera(&m, &["put", base.to_str().unwrap(), "--fileset", "base"]);

    // The CSI node plugin and its keeper on CSI_NODE, with a leaf staged.
    let control = format!("127.0.0.1:{}", free_port().unwrap());
    let socket = dir.path().join("csi.sock");
    let keeper_socket = dir.path().join("keeper.sock");
    let _keeper = Proc::spawn_with_env(
        "keeper",
        &tessera_bin("tessera-csi"),
        &["keeper".into(), format!("--socket={}", keeper_socket.display())],
        &[],
        dir.path(),
    )
    .unwrap();
    let plugin_args = vec![
        format!("--endpoint=unix://{}", socket.display()),
        format!("--node-id={CSI_NODE}"),
        format!("--master={m}"),
        format!("--state-dir={}", dir.path().join("csi-state").display()),
        format!("--keeper-socket={}", keeper_socket.display()),
        format!("--metrics-listen={control}"),
    ];
    let mut plugin =
        Proc::spawn_with_env("csi-node", &tessera_bin("tessera-csi"), &plugin_args, &[], dir.path()).unwrap();
    let channel = until("the node plugin to answer", async || {
        plugin.check().unwrap();
        tessera_csi::service::channel(&socket).await.ok()
    })
    .await;
    let leaf = ControllerClient::new(channel.clone())
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-tune".into(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 64 << 20, limit_bytes: 0 }),
            volume_capabilities: vec![writer()],
            parameters: [("fileset".to_string(), "base".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let topology = &leaf.accessible_topology[0].segments;
    assert_eq!(topology.get(TOPOLOGY_NODE).map(String::as_str), Some(CSI_NODE));
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    NodeClient::new(channel.clone())
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: leaf.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(writer()),
            ..Default::default()
        })
        .await
        .unwrap();
    std::fs::write(staging.join("data/part-1.bin"), b"retrained").unwrap();
    std::fs::remove_file(staging.join("data/part-2.bin")).unwrap();
    std::fs::write(staging.join("notes.txt"), b"epoch 1").unwrap();

    // What a cluster would hold: the leaf's volume and claim (as the
    // external provisioner makes them), and the node plugin's pod.
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pv-tune"},
        "spec": {
            "capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"],
            "csi": {"driver": CSI_DRIVER, "volumeHandle": leaf.volume_id},
            "claimRef": {"namespace": "default", "name": "tune"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": TOPOLOGY_NODE, "operator": "In", "values": [CSI_NODE]}]}]}},
        },
    }))
    .unwrap();
    Api::<PersistentVolume>::all(cp.client()).create(&PostParams::default(), &pv).await.unwrap();
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tune"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}},
                 "storageClassName": "", "volumeName": "pv-tune"},
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(cp.client(), "default")
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    let port: i32 = control.rsplit(':').next().unwrap().parse().unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tessera-csi-node-a", "labels": {"app.kubernetes.io/component": "csi-node"}},
        "spec": {"nodeName": CSI_NODE, "containers": [{"name": "plugin", "image": "tessera:test",
                 "ports": [{"name": "metrics", "containerPort": port}]}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.client(), NS);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = serde_json::json!({"status": {"phase": "Running", "podIP": "127.0.0.1"}});
    pods.patch_status("tessera-csi-node-a", &PatchParams::default(), &Patch::Merge(&running)).await.unwrap();

    // A claim that does not exist: a clear reason, naming the field.
    let filesets: Api<Fileset> = Api::namespaced(cp.client(), "default");
    let fileset = |name: &str, claim: &str, trigger: &str| -> Fileset {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset", "metadata": {"name": name},
            "spec": {"source": {"leaf": {"claimName": claim, "trigger": trigger}}, "retention": {"keepVersions": 2}},
        }))
        .unwrap()
    };
    filesets.create(&PostParams::default(), &fileset("orphan", "nope", "1")).await.unwrap();
    // The leaf's claim: promoted into version 1.
    filesets.create(&PostParams::default(), &fileset("tuned", "tune", "1")).await.unwrap();
    let mut ready = async |version: u64| {
        until("the promoted version to be ready", async || {
            operator.check().unwrap();
            let f = filesets.get("tuned").await.ok()?;
            (is(&f, "Ready", "True") && f.status.as_ref()?.current_version == Some(version)).then_some(())
        })
        .await
    };
    ready(1).await;
    let listing = tessera(&m, &["ls", "-R", "tuned@1"]);
    assert!(listing.contains("notes.txt") && !listing.contains("part-2.bin"), "{listing}");
    assert_eq!(tessera(&m, &["cat", "tuned@1/data/part-1.bin"]), "retrained");
    assert_eq!(tessera(&m, &["cat", "tuned@1/data/part-3.bin"]), "d".repeat(300_000));
    let orphan = until("the missing claim to be reported", async || {
        let f = filesets.get("orphan").await.ok()?;
        let status = f.status?;
        status.conditions.iter().find(|c| c.message.contains("spec.source.leaf.claimName")).map(|c| c.message.clone())
    })
    .await;
    assert!(orphan.contains("default/nope"), "{orphan}");
    assert!(condition(&filesets.get("orphan").await.unwrap(), "Ready").is_none_or(|c| c.0 != "True"));

    // More work in the leaf, and the trigger changed: version 2.
    std::fs::write(staging.join("notes.txt"), b"epoch 2").unwrap();
    let bump = serde_json::json!({"spec": {"source": {"leaf": {"claimName": "tune", "trigger": "2"}}}});
    filesets.patch("tuned", &PatchParams::default(), &Patch::Merge(&bump)).await.unwrap();
    ready(2).await;
    assert_eq!(tessera(&m, &["cat", "tuned@2/notes.txt"]), "epoch 2");
    assert_eq!(tessera(&m, &["cat", "tuned@1/notes.txt"]), "epoch 1", "version 1 is unchanged");

    NodeClient::new(channel)
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: leaf.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
}
