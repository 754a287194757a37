//! Real pods: a kubelet and containerd on a node of their own, joined to the
//! test control plane ([`tessera_e2e::node`]). Needs root, containerd, runc
//! and the CNI plugins (`.ci/run` installs them).

use k8s_openapi::api::core::v1::{Event, Pod, Service};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use kube::api::{Api, LogParams, PostParams};
use sha2::{Digest, Sha256};
use tessera_e2e::node::NodeCluster;
use tessera_e2e::{Proc, free_port, image, tessera_bin, tool, until};
use tessera_testkit::{Cluster, Servers};

const BUSYBOX: &str = "localhost/tessera-busybox:e2e";

/// A pod that runs `script` once in busybox (a container of the same name).
fn one_shot(name: &str, script: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": name, "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", script]}],
        },
    })
}

/// Waits for pod `name` to end (Succeeded or Failed); on a timeout fails
/// with its status, its events, the kubelet's log and `more` (another
/// component's log).
async fn finished(cluster: &NodeCluster, name: &str, more: impl Fn() -> String) -> Pod {
    let pods: Api<Pod> = Api::namespaced(cluster.cp().client(), "default");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Ok(pod) = pods.get(name).await
            && pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed")
        {
            return pod;
        }
        if tokio::time::Instant::now() > deadline {
            let status = pods.get(name).await.ok().and_then(|p| p.status);
            let events: Api<Event> = Api::namespaced(cluster.cp().client(), "default");
            let events = events.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
            let events: Vec<String> = events
                .iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(name))
                .map(|e| format!("{:?}: {:?}", e.reason, e.message))
                .collect();
            panic!(
                "pod {name} did not finish: {status:?}\nevents:\n{}\nkubelet:\n{}\n{}",
                events.join("\n"),
                cluster.node.kubelet_log(),
                more()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

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

    // The service account's token is mounted, the hostname is the pod's,
    // the pod has its own address, and it finds the web Service by name
    // (cluster DNS) and reaches the pod behind it (kube-proxy's rules,
    // across the pods' bridge). (nc, not busybox's wget, which needs
    // glibc's NSS modules.)
    let hello: Pod = serde_json::from_value(one_shot(
        "hello",
        concat!(
            "echo \"hello from $(hostname)\"; ",
            "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; ",
            "ip -4 -o addr show dev eth0 2>&1; ",
            "ip=$(nslookup web.default.svc.cluster.local | awk '/^Address/ { a = $2 } END { print a }'); ",
            "echo \"$ip\"; ",
            "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 10 \"$ip\" 80 | tail -1",
        ),
    ))
    .unwrap();
    pods.create(&pp, &hello).await.unwrap();

    let done = finished(&cluster, "hello", String::new).await;
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

/// The CSI driver as the kubelet meets it: the node plugin (here a process
/// on the node, as its DaemonSet pod would be) registers itself through the
/// kubelet's plugin registry, the kubelet lists it in the CSINode and calls
/// it to publish a pod's inline root volume, the container reads every
/// file exact and cannot write, and deleting the pod unmounts it.
#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_registers_the_plugin_and_a_pod_reads_its_root_volume_exact() {
    let cluster = NodeCluster::start().await.unwrap();
    cluster.node.import(&image::busybox(BUSYBOX).unwrap()).unwrap();
    let client = cluster.cp().client();
    let pp = PostParams::default();

    // A fileset with files of several sizes (one spanning many units) in
    // nested directories, and their digests as the container must see them.
    let store = Cluster::start(Servers::new(9, 3)).await;
    let tree = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (i, (path, len)) in
        [("a.txt", 11), ("empty", 0), ("dir/b.bin", 200_000), ("dir/deeper/c.bin", 3_500_000)].into_iter().enumerate()
    {
        let bytes: Vec<u8> = (0..len).map(|j: usize| (j.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8).collect();
        let file = tree.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &bytes).unwrap();
        expected.push(format!("{}  ./{path}", hex::encode(Sha256::digest(&bytes))));
    }
    expected.sort_by(|a, b| a[66..].cmp(&b[66..]));
    let version = store.put("data", tree.path()).await;

    // The node plugin and its keeper, registering with the kubelet.
    let dir = tempfile::tempdir().unwrap();
    let kubelet_root = cluster.node.kubelet_root();
    let socket = kubelet_root.join("plugins/csi.tessera.dev/csi.sock");
    let keeper_socket = dir.path().join("keeper.sock");
    let keeper = Proc::spawn(
        "keeper",
        &tessera_bin("tessera-csi"),
        &["keeper".into(), format!("--socket={}", keeper_socket.display())],
        dir.path(),
    )
    .unwrap();
    let plugin_args = vec![
        format!("--endpoint=unix://{}", socket.display()),
        format!("--node-id={}", cluster.node.name),
        format!("--master={}", store.master_addr()),
        format!("--state-dir={}", dir.path().join("state").display()),
        format!("--keeper-socket={}", keeper_socket.display()),
        format!("--metrics-listen=127.0.0.1:{}", free_port().unwrap()),
        format!("--kubelet-registration-dir={}", kubelet_root.join("plugins_registry").display()),
    ];
    let mut plugin = Proc::spawn("csi-node", &tessera_bin("tessera-csi"), &plugin_args, dir.path()).unwrap();
    let driver: CSIDriver = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": "csi.tessera.dev"},
        "spec": {"attachRequired": false, "podInfoOnMount": true, "fsGroupPolicy": "None", "volumeLifecycleModes": ["Persistent", "Ephemeral"]},
    }))
    .unwrap();
    Api::<CSIDriver>::all(client.clone()).create(&pp, &driver).await.unwrap();
    let csinodes: Api<CSINode> = Api::all(client.clone());
    let registered = until("the kubelet to list the driver in the CSINode", async || {
        plugin.check().unwrap();
        let node = csinodes.get_opt(&cluster.node.name).await.ok()??;
        node.spec.drivers.into_iter().find(|d| d.name == "csi.tessera.dev")
    })
    .await;
    assert_eq!(registered.node_id, cluster.node.name);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut reader = one_shot(
        "reader",
        "cd /data && find . -type f | sort | xargs sha256sum && if touch /data/new 2>/tmp/err; then echo wrote; else cat /tmp/err; fi",
    );
    reader["spec"]["containers"][0]["volumeMounts"] = serde_json::json!([{"name": "data", "mountPath": "/data"}]);
    reader["spec"]["volumes"] = serde_json::json!([{"name": "data", "csi": {
        "driver": "csi.tessera.dev",
        "readOnly": true,
        "volumeAttributes": {"kind": "root", "fileset": "data", "version": version.id.to_string()},
    }}]);
    let reader: Pod = serde_json::from_value(reader).unwrap();
    pods.create(&pp, &reader).await.unwrap();
    let done = finished(&cluster, "reader", || format!("plugin:\n{}", plugin.log_tail())).await;
    let logs = pods.logs("reader", &LogParams::default()).await.unwrap();
    assert_eq!(
        done.status.unwrap().phase.as_deref(),
        Some("Succeeded"),
        "logs:\n{logs}\nplugin:\n{}",
        plugin.log_tail()
    );
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[..expected.len()], expected[..], "every file exact");
    assert_eq!(lines.len(), expected.len() + 1, "{logs}");
    assert!(lines[expected.len()].contains("Read-only file system"), "a write fails with EROFS: {logs}");

    // Deleting the pod has the kubelet unpublish the volume.
    pods.delete("reader", &Default::default()).await.unwrap();
    until("the reader to be gone", async || pods.get_opt("reader").await.ok()?.is_none().then_some(())).await;
    // A finished pod may leave the API before the kubelet's volume manager
    // has torn its volumes down; the unmount follows.
    until("the kubelet to unpublish the reader's volumes", async || {
        cluster.node.volume_mounts().is_empty().then_some(())
    })
    .await;

    drop(plugin);
    drop(keeper);
    cluster.shutdown().unwrap();
}

/// `helm install` of the chart as a user would, with the Tessera image
/// imported into the node (no registry): the operator, the chunkserver,
/// the keeper and the CSI node plugin run as real pods and become Ready,
/// the plugin's pod registers the driver with the kubelet, and the
/// chunkserver pod registers with the operator's master through its
/// Service name; `helm uninstall` takes every pod away again.
#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_tessera_on_the_real_node_and_uninstall_removes_it() {
    let cluster = NodeCluster::start().await.unwrap();
    let bin_dir = tessera_bin("tessera").parent().unwrap().to_path_buf();
    cluster.node.import(&image::tessera("localhost/tessera:e2e", &bin_dir).unwrap()).unwrap();
    let client = cluster.cp().client();
    // The chart's host directories, on the node's shared host mount.
    let host = cluster.node.host_dir();
    let h = host.display();
    let settings = [
        "image.repository=localhost/tessera".to_string(),
        "image.tag=e2e".into(),
        "image.pullPolicy=Never".into(),
        "operator.replicas=1".into(),
        format!("chunkserver.dataDirs={{{h}/data0}}"),
        format!("csi.kubeletDir={}", cluster.node.kubelet_root().display()),
        format!("csi.stateDir={h}/csi-state"),
        format!("csi.keeperDir={h}/csi-keeper"),
        // The provisioner sidecar's image is not to be had here.
        "csi.provisionerSidecar=false".into(),
    ];
    let mut args = vec!["install", "tessera", concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tessera")];
    args.extend(["--namespace", NS, "--create-namespace", "--wait", "--timeout", "4m"]);
    for s in &settings {
        args.extend(["--set", s]);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let (ok, out) = helm(&cluster, &args);
    assert!(ok, "helm install: {out}\n{}", describe(&pods).await);

    let listed = pods.list(&Default::default()).await.unwrap().items;
    let mut components: Vec<String> =
        listed.iter().filter_map(|p| p.metadata.labels.as_ref()?.get("app.kubernetes.io/component").cloned()).collect();
    components.sort();
    assert_eq!(components, ["chunkserver", "csi-keeper", "csi-node", "operator"], "{}", describe(&pods).await);
    for pod in &listed {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "{} not Ready\n{}", pod.metadata.name.as_deref().unwrap_or(""), describe(&pods).await);
    }

    // The plugin's pod registered the driver with the kubelet.
    let csinodes: Api<CSINode> = Api::all(client.clone());
    until("the kubelet to list the driver in the CSINode", async || {
        let node = csinodes.get_opt(&cluster.node.name).await.ok()??;
        node.spec.drivers.iter().any(|d| d.name == "csi.tessera.dev").then_some(())
    })
    .await;
    // The chunkserver pod found the master by its Service name and
    // registered; the master answers at the operator pod's address.
    let operator = listed.iter().find(|p| component(p) == "operator").unwrap();
    let master = format!("{}:7300", operator.status.as_ref().unwrap().pod_ip.as_deref().unwrap());
    let node = cluster.node.name.clone();
    until("the chunkserver to be up in the master", async || {
        let out =
            std::process::Command::new(tessera_bin("tessera")).args(["--master", &master, "status"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Its row: SERVER (the node's name), ADDRESS, ZONE, STATE, ...
        text.lines().any(|l| l.starts_with(node.as_str()) && l.split_whitespace().any(|w| w == "up")).then_some(())
    })
    .await;

    let (ok, out) = helm(&cluster, &["uninstall", "tessera", "--namespace", NS, "--wait", "--timeout", "2m"]);
    assert!(ok, "helm uninstall: {out}");
    until("every Tessera pod to be gone", async || {
        pods.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    until("the kubelet to unmount the pods' volumes", async || cluster.node.volume_mounts().is_empty().then_some(()))
        .await;
    // The plugin removed its registration socket as it stopped, so the
    // kubelet deregistered the driver.
    until("the kubelet to drop the driver from the CSINode", async || {
        let node = csinodes.get_opt(&cluster.node.name).await.ok()??;
        (!node.spec.drivers.iter().any(|d| d.name == "csi.tessera.dev")).then_some(())
    })
    .await;
    cluster.shutdown().unwrap();
}

const NS: &str = "tessera-system";

fn component(pod: &Pod) -> &str {
    pod.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/component")).map(String::as_str).unwrap_or("")
}

/// helm against the cluster: whether it succeeded, and what it said.
fn helm(cluster: &NodeCluster, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(tool("helm").unwrap())
        .arg("--kubeconfig")
        .arg(cluster.cp().kubeconfig())
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The pods' phases, waiting reasons and events, for failure messages.
async fn describe(pods: &Api<Pod>) -> String {
    let mut out = String::new();
    for p in pods.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
        let status = p.status.unwrap_or_default();
        let waiting: Vec<String> = status
            .container_statuses
            .unwrap_or_default()
            .iter()
            .map(|c| format!("{}: {:?} restarts {}", c.name, c.state, c.restart_count))
            .collect();
        out += &format!("{} {:?} {}\n", p.metadata.name.unwrap_or_default(), status.phase, waiting.join("; "));
    }
    out
}
