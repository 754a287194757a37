//! Topology and node health from real Node objects kept by kwok.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tessera_e2e::{ControlPlane, fake_node};
use tessera_operator::topology::{LabelKeys, NodeState, node_state, topology_of};

async fn until(nodes: &Api<Node>, name: &str, want: NodeState, kwok: &tessera_e2e::Kwok) -> Node {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = nodes.get(name).await.unwrap();
        if node_state(&n) == want {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {want:?}: {:?}\nkwok:\n{}",
            n.status,
            kwok.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kwok_nodes_give_the_topology_and_cordons_are_seen() {
    let cp = ControlPlane::start().await.unwrap();
    if !cp.is_local() {
        // Against a real cluster the nodes are the cluster's own.
        return;
    }
    let kwok = cp.start_kwok().unwrap();
    let nodes: Api<Node> = Api::all(cp.client());
    let names: Vec<String> = (0..6).map(|i| format!("node-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let zone = format!("zone-{}", i % 3);
        let rack = format!("rack-{i}");
        nodes.create(&PostParams::default(), &fake_node(name, &zone, &rack)).await.unwrap();
    }
    let mut zones = BTreeSet::new();
    for name in &names {
        let n = until(&nodes, name, NodeState::Ready, &kwok).await;
        let t = topology_of(name, &n.metadata.labels.unwrap_or_default(), &LabelKeys::default());
        assert_eq!(t.region, "test");
        zones.insert(t.zone);
    }
    assert_eq!(zones.len(), 3);

    // Cordon one node: seen as maintenance, not as a failure.
    let cordon = serde_json::json!({"spec": {"unschedulable": true}});
    nodes.patch("node-4", &PatchParams::default(), &Patch::Merge(&cordon)).await.unwrap();
    until(&nodes, "node-4", NodeState::Cordoned, &kwok).await;
    assert_eq!(node_state(&nodes.get("node-3").await.unwrap()), NodeState::Ready);

    // A node whose kubelet reports it not ready (kwok is told to leave it so).
    let keep = serde_json::json!({"metadata": {"annotations": {"tessera.dev/keep-not-ready": "true"}}});
    nodes.patch("node-5", &PatchParams::default(), &Patch::Merge(&keep)).await.unwrap();
    let down = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "test",
        "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    nodes.patch_status("node-5", &PatchParams::default(), &Patch::Strategic(&down)).await.unwrap();
    until(&nodes, "node-5", NodeState::NotReady, &kwok).await;
}
