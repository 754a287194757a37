//! Real pods: a kubelet and containerd on a node of their own, joined to the
//! test control plane ([`tessera_e2e::node`]). Needs root, containerd, runc
//! and the CNI plugins (`.ci/run` installs them).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use tessera_e2e::node::NodeCluster;
use tessera_e2e::{image, until};

const BUSYBOX: &str = "localhost/tessera-busybox:e2e";

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_runs_on_the_real_node_and_nothing_is_left_behind() {
    let cluster = NodeCluster::start().await.unwrap();
    cluster.node.import(&image::busybox(BUSYBOX).unwrap()).unwrap();

    let pods: Api<Pod> = Api::namespaced(cluster.cp().client(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "hello",
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                // The service account's token is mounted, the hostname is
                // the pod's, and the pod has its own address.
                "command": ["sh", "-c", "echo \"hello from $(hostname)\"; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; ip -4 -o addr show eth0"],
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let done = until("the pod to finish", async || {
        let pod = pods.get("hello").await.ok()?;
        let phase = pod.status.as_ref()?.phase.clone()?;
        (phase == "Succeeded" || phase == "Failed").then_some(pod)
    })
    .await;
    let status = done.status.clone().unwrap();
    let logs = pods.logs("hello", &LogParams::default()).await.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{status:?}\nlogs:\n{logs}");

    let net = cluster.net();
    assert_eq!(
        done.spec.as_ref().unwrap().node_name.as_deref(),
        Some(cluster.node.name.as_str()),
        "scheduled onto the real node"
    );
    assert_eq!(status.host_ip, Some(net.node_ip.to_string()));
    let pod_ip = status.pod_ip.clone().expect("a pod address");
    let subnet = net.pod_cidr.trim_end_matches("0/24");
    assert!(pod_ip.starts_with(subnet), "pod address {pod_ip} outside {}", net.pod_cidr);
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[0], "hello from hello", "{logs}");
    assert_eq!(lines[1], "default", "{logs}");
    assert!(lines[2].contains(&format!("inet {pod_ip}/")), "{logs}");

    cluster.shutdown().unwrap();
}
