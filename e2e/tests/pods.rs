//! Real pods: a kubelet and containerd on a node of their own, joined to the
//! test control plane ([`tessera_e2e::node`]). Needs root, containerd, runc
//! and the CNI plugins (`.ci/run` installs them).

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, LogParams, PostParams};
use tessera_e2e::node::NodeCluster;
use tessera_e2e::{image, until};

const BUSYBOX: &str = "localhost/tessera-busybox:e2e";

#[tokio::test(flavor = "multi_thread")]
async fn pods_run_on_the_real_node_reach_a_service_by_name_and_nothing_is_left_behind() {
    let cluster = NodeCluster::start().await.unwrap();
    cluster.node.import(&image::busybox(BUSYBOX).unwrap()).unwrap();
    let client = cluster.cp().client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // A web server behind a Service, for a second pod to find by name.
    let web: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "httpd",
            "image": BUSYBOX,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
        }]},
    }))
    .unwrap();
    pods.create(&pp, &web).await.unwrap();
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let service = Api::<Service>::namespaced(client.clone(), "default").create(&pp, &service).await.unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    until("the web pod to run", async || {
        let pod = pods.get("web").await.ok()?;
        (pod.status?.phase? == "Running").then_some(())
    })
    .await;

    let hello: Pod = serde_json::from_value(serde_json::json!({
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
                // the pod's, the pod has its own address, and it finds the
                // web Service by name (cluster DNS) and reaches the pod
                // behind it (kube-proxy's rules, across the pods' bridge).
                // (nc, not busybox's wget, which needs glibc's NSS modules.)
                "command": ["sh", "-c", concat!(
                    "echo \"hello from $(hostname)\"; ",
                    "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; ",
                    "ip -4 -o addr show dev eth0 2>&1; ",
                    "ip=$(nslookup web.default.svc.cluster.local | awk '/^Address/ { a = $2 } END { print a }'); ",
                    "echo \"$ip\"; ",
                    "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 10 \"$ip\" 80 | tail -1",
                )],
            }],
        },
    }))
    .unwrap();
    pods.create(&pp, &hello).await.unwrap();

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
    assert_eq!(lines.len(), 5, "{logs}");
    assert_eq!(lines[0], "hello from hello", "{logs}");
    assert_eq!(lines[1], "default", "{logs}");
    assert!(lines[2].contains(&format!("inet {pod_ip}/")), "{logs}");
    assert_eq!(lines[3], cluster_ip, "the Service's name resolved to its address: {logs}");
    assert_eq!(lines[4], "web", "the pod behind the Service answered: {logs}");

    cluster.shutdown().unwrap();
}
