//! Real pods: a kubelet and containerd on a node of their own, joined to the
//! test control plane ([`tessera_e2e::node`]). Needs root, containerd, runc
//! and the CNI plugins (`.ci/run` installs them).

use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use kube::api::{Api, LogParams, PostParams};
use sha2::{Digest, Sha256};
use tessera_api::crd::Fileset;
use tessera_e2e::install::{helm, install};
use tessera_e2e::node::NodeCluster;
use tessera_e2e::processes::{is, tessera};
use tessera_e2e::{Proc, free_port, image, tessera_bin, until};
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

    // A fileset of files of several sizes in nested directories, and their
    // digests as the container must see them.
    let store = Cluster::start(Servers::new(9, 3)).await;
    let tree = tempfile::tempdir().unwrap();
    let files = archive_files();
    for (path, bytes) in &files {
        let file = tree.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, bytes).unwrap();
    }
    let expected = digests(&files);
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
/// and the plugin's pod registers the driver with the kubelet. Eight more
/// chunkservers behind kwok nodes give RS(6,3) its nine failure domains in
/// three zones. A Fileset whose source is an archive served by a pod in the
/// namespace goes Ready, a pod reads every file of it exact through an
/// inline root volume the installed plugin serves, and `helm uninstall`
/// takes every pod and mount away again.
#[tokio::test(flavor = "multi_thread")]
async fn helm_installed_tessera_serves_a_fileset_to_pods_and_uninstall_removes_it() {
    let cluster = NodeCluster::start().await.unwrap();
    cluster.node.import(&image::busybox(BUSYBOX).unwrap()).unwrap();
    let client = cluster.cp().client();
    let host = cluster.node.host_dir();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let bin_dir = tessera_bin("tessera").parent().unwrap().to_path_buf();
    let installed = match install(&cluster, &bin_dir, &["csi.leafStorageClass.fileset=data".into()]).await {
        Ok(i) => i,
        Err(e) => panic!("{e:#}\n{}", describe(&pods).await),
    };
    let master = installed.master.clone();
    let h = host.display();

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

    // The chunkserver pod found the master by the Service's name; with the
    // eight behind kwok nodes (which register through the Service's address)
    // that is nine servers in three zones (install waited for them).
    let status = tessera(&master, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let pod_server = status["servers"].as_array().unwrap().iter().find(|s| s["id"] == cluster.node.name.as_str());
    assert!(pod_server.is_some_and(|s| s["live"] == true && s["zone"] == "zone-0"), "{status}");

    // A Fileset whose source is an archive a pod in the namespace serves.
    let (url, expected) = serve_archive(&client, "default").await;
    let filesets: Api<Fileset> = Api::namespaced(client.clone(), "default");
    let fileset: Fileset = serde_json::from_value(serde_json::json!({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
        "metadata": {"name": "data"},
        "spec": {"source": {"http": {"url": url}}},
    }))
    .unwrap();
    filesets.create(&PostParams::default(), &fileset).await.unwrap();
    let ready = fileset_ready(&filesets, "data", &pods).await;
    let status = ready.status.unwrap();
    let version = status.current_version.expect("a current version");
    let version_of_data = version;
    assert_eq!(status.files, Some(expected.len() as u64), "{status:?}");
    let zones: Vec<&String> = status.stripes_per_domain.keys().collect();
    assert_eq!(zones, ["test/zone-0", "test/zone-1", "test/zone-2"], "stripes in every zone: {status:?}");

    // A pod reads every file through an inline root volume the installed
    // plugin serves, and cannot write.
    let default_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let logs = read_root(&cluster, &default_pods, "reader", "data", version, &pods).await;
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[..expected.len()], expected[..], "every file exact:\n{logs}");
    assert_eq!(lines.len(), expected.len() + 1, "{logs}");
    assert!(lines[expected.len()].contains("Read-only file system"), "a write fails with EROFS: {logs}");
    delete_pod(&default_pods, "reader").await;
    let pp = PostParams::default();

    // Leaves: two claims of the chart's leaf StorageClass over the same
    // root, provisioned by the node plugin itself; each pod writes its own
    // file and reads it back, and a pod started again with the same claim
    // sees its files and not the other's.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    for claim in ["leaf-a", "leaf-b"] {
        claims.create(&pp, &leaf_claim(claim)).await.unwrap();
    }
    let a_txt = expected.iter().find(|l| l.ends_with("./a.txt")).unwrap()[..64].to_string();
    for claim in ["leaf-a", "leaf-b"] {
        let script =
            format!("echo {claim} > /data/own-{claim} && sync && cat /data/own-{claim} && sha256sum /data/a.txt");
        default_pods.create(&pp, &with_claim(&format!("write-{claim}"), claim, &script)).await.unwrap();
    }
    for claim in ["leaf-a", "leaf-b"] {
        let logs = succeeded(&cluster, &default_pods, &format!("write-{claim}"), &pods).await;
        assert_eq!(logs, format!("{claim}\n{a_txt}  /data/a.txt\n"), "the leaf's own file and its root's");
        let bound = claims.get(claim).await.unwrap();
        let volume = bound.spec.unwrap().volume_name.expect("the claim is bound");
        assert_eq!(volume, format!("pvc-{}", bound.metadata.uid.unwrap()));
        let pv = Api::<PersistentVolume>::all(client.clone()).get(&volume).await.unwrap();
        let affinity = serde_json::to_value(pv.spec.unwrap().node_affinity).unwrap();
        assert_eq!(
            affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            cluster.node.name.as_str(),
            "the leaf lives on the node of its first pod"
        );
    }
    for claim in ["leaf-a", "leaf-b"] {
        delete_pod(&default_pods, &format!("write-{claim}")).await;
        let script = format!("ls /data; cat /data/own-{claim}");
        default_pods.create(&pp, &with_claim(&format!("again-{claim}"), claim, &script)).await.unwrap();
    }
    for claim in ["leaf-a", "leaf-b"] {
        let logs = succeeded(&cluster, &default_pods, &format!("again-{claim}"), &pods).await;
        assert_eq!(logs, format!("a.txt\ndir\nempty\nown-{claim}\n{claim}\n"), "its own files and the root's only");
        delete_pod(&default_pods, &format!("again-{claim}")).await;
    }

    // A Fileset whose source is a claim (leaf-a's) ingests through its
    // ingest pod, run by the kubelet; a pod reads the new fileset exact.
    let from_leaf: Fileset = serde_json::from_value(serde_json::json!({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
        "metadata": {"name": "from-leaf"},
        "spec": {"source": {"pvc": {"claimName": "leaf-a"}}},
    }))
    .unwrap();
    filesets.create(&pp, &from_leaf).await.unwrap();
    let ingested = fileset_ready(&filesets, "from-leaf", &pods).await;
    let mut with_own = archive_files();
    with_own.push(("own-leaf-a", b"leaf-a\n".to_vec()));
    let with_own = digests(&with_own);
    let version = ingested.status.unwrap().current_version.unwrap();
    let logs = read_root(&cluster, &default_pods, "read-from-leaf", "from-leaf", version, &pods).await;
    assert_eq!(logs.lines().take(with_own.len()).collect::<Vec<_>>(), with_own, "the claim's files exact:\n{logs}");
    delete_pod(&default_pods, "read-from-leaf").await;

    restart_plugin_under_load(&cluster, &pods, &default_pods, version_of_data, &expected).await;

    // Deleting the claims deletes their leaves and volumes.
    for claim in ["leaf-a", "leaf-b"] {
        claims.delete(claim, &Default::default()).await.unwrap();
    }
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    until_long("the provisioner to delete the leaves' volumes", async || {
        volumes.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    let leaves = host.join("csi-state/leaves");
    let left: Vec<_> = std::fs::read_dir(&leaves).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "leaf data left after its claim went: {left:?}");
    // Deleting the Filesets deletes their data (the operator's finalizer).
    for name in ["data", "from-leaf"] {
        filesets.delete(name, &Default::default()).await.unwrap();
    }
    until_long("the Filesets to be deleted", async || {
        filesets.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    drop(installed);

    let (ok, out) = helm(&cluster, &["uninstall", "tessera", "--namespace", NS, "--wait", "--timeout", "2m"]).unwrap();
    assert!(ok, "helm uninstall: {out}");
    until("every Tessera pod to be gone", async || {
        pods.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    default_pods.delete("archive", &Default::default()).await.unwrap();
    until("every pod to be gone", async || {
        default_pods.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    until("the kubelet to unmount the pods' volumes", async || cluster.node.volume_mounts().is_empty().then_some(()))
        .await;
    // On the node only the directories the chart was given stay, with
    // nothing mounted in them (the root mounts went with their last pod).
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let under: Vec<&str> = mounted.lines().filter(|l| l.contains(&format!("{h}/"))).collect();
    assert!(under.is_empty(), "mounts left in the chart's host directories: {under:#?}");
    let mut left: Vec<String> =
        std::fs::read_dir(&host).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["csi-keeper", "csi-state", "ctl", "data0"], "only the data directories stay");
    // The plugin removed its registration socket as it stopped, so the
    // kubelet deregistered the driver.
    until("the kubelet to drop the driver from the CSINode", async || {
        let node = csinodes.get_opt(&cluster.node.name).await.ok()??;
        (!node.spec.drivers.iter().any(|d| d.name == "csi.tessera.dev")).then_some(())
    })
    .await;
    cluster.shutdown().unwrap();
}

/// A claim of the chart's leaf StorageClass.
fn leaf_claim(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "storageClassName": "tessera-leaf",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }))
    .unwrap()
}

/// A pod that runs `script` once with `claim` mounted at /data.
fn with_claim(name: &str, claim: &str, script: &str) -> Pod {
    let mut pod = one_shot(name, script);
    pod["spec"]["containers"][0]["volumeMounts"] = serde_json::json!([{"name": "data", "mountPath": "/data"}]);
    pod["spec"]["volumes"] = serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    serde_json::from_value(pod).unwrap()
}

/// Waits for pod `name` to end and returns its log; fails unless it
/// Succeeded, with its log and the Tessera pods' state (`tessera_pods`).
async fn succeeded(cluster: &NodeCluster, pods: &Api<Pod>, name: &str, tessera_pods: &Api<Pod>) -> String {
    let done = finished(cluster, name, String::new).await;
    let logs = pods.logs(name, &LogParams::default()).await.unwrap_or_default();
    let phase = done.status.and_then(|s| s.phase);
    if phase.as_deref() != Some("Succeeded") {
        let plugin = plugin_log(tessera_pods).await;
        panic!("{name} ended {phase:?}\nlogs:\n{logs}\n{}\nplugin:\n{plugin}", describe(tessera_pods).await);
    }
    logs
}

/// Deletes pod `name` and waits until it is gone and the kubelet has
/// unmounted its CSI volumes (a finished pod may leave the API first).
async fn delete_pod(pods: &Api<Pod>, name: &str) {
    let uid = pods.get(name).await.unwrap().metadata.uid.unwrap();
    pods.delete(name, &Default::default()).await.unwrap();
    until("the pod to be gone", async || pods.get_opt(name).await.ok()?.is_none().then_some(())).await;
    until("the kubelet to unmount its volumes", async || {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        (!mounted.lines().any(|l| l.contains(&uid) && l.contains("kubernetes.io~csi"))).then_some(())
    })
    .await;
}

/// The number in a progress file the pods below keep (0 before the first).
fn progress(file: &std::path::Path) -> u64 {
    std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// The node plugin's pod is deleted (its DaemonSet makes another), then the
/// DaemonSet is rolled, while one pod checks every file of the `data` root
/// in a loop and another appends to a file in a leaf (`leaf-b`), syncing
/// each line. The reader never sees an error or a wrong byte and both go
/// on after each restart; the leaf keeps every line it synced.
async fn restart_plugin_under_load(
    cluster: &NodeCluster,
    tessera_pods: &Api<Pod>,
    pods: &Api<Pod>,
    version: u64,
    expected: &[String],
) {
    // A host directory both pods share with the test: their checksums, their
    // progress, and the word to stop.
    let ctl = cluster.node.host_dir().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    std::fs::write(ctl.join("sums"), expected.join("\n") + "\n").unwrap();
    let ctl_volume =
        serde_json::json!({"name": "ctl", "hostPath": {"path": ctl.display().to_string(), "type": "Directory"}});
    let mut reader = one_shot(
        "looper",
        concat!(
            "cd /data; n=0; bad=0; ",
            "while [ ! -e /ctl/stop ]; do ",
            "if sha256sum -c -s /ctl/sums; then n=$((n+1)); echo $n > /ctl/read.tmp; mv /ctl/read.tmp /ctl/read; ",
            "else bad=$((bad+1)); echo \"round $n failed\" >> /ctl/bad; fi; ",
            "done; echo \"rounds $n bad $bad\"; [ $bad -eq 0 ]",
        ),
    );
    reader["spec"]["containers"][0]["volumeMounts"] =
        serde_json::json!([{"name": "data", "mountPath": "/data"}, {"name": "ctl", "mountPath": "/ctl"}]);
    reader["spec"]["volumes"] = serde_json::json!([{"name": "data", "csi": {
        "driver": "csi.tessera.dev",
        "readOnly": true,
        "volumeAttributes": {"kind": "root", "fileset": "data", "version": version.to_string()},
    }}, ctl_volume]);
    let mut writer = one_shot(
        "appender",
        concat!(
            "n=0; while [ ! -e /ctl/stop ]; do n=$((n+1)); ",
            "echo $n >> /data/log || exit 1; sync /data/log || exit 1; echo $n > /ctl/synced.tmp; mv /ctl/synced.tmp /ctl/synced; ",
            "done; echo \"appended $n\"",
        ),
    );
    writer["spec"]["containers"][0]["volumeMounts"] =
        serde_json::json!([{"name": "data", "mountPath": "/data"}, {"name": "ctl", "mountPath": "/ctl"}]);
    writer["spec"]["volumes"] =
        serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": "leaf-b"}}, ctl_volume]);
    let pp = PostParams::default();
    for pod in [reader, writer] {
        pods.create(&pp, &serde_json::from_value(pod).unwrap()).await.unwrap();
    }
    let (read, synced) = (ctl.join("read"), ctl.join("synced"));
    // Both make progress: `rounds` more of each than when called.
    let going_on = async |rounds: u64| {
        let (r0, s0) = (progress(&read), progress(&synced));
        until_long("the reader and the writer to go on", async || {
            (progress(&read) >= r0 + rounds && progress(&synced) >= s0 + rounds).then_some(())
        })
        .await;
    };
    going_on(3).await;

    let plugin_pod =
        |listed: &[Pod]| listed.iter().find(|p| component(p) == "csi-node").and_then(|p| p.metadata.uid.clone());
    let ready_plugin = async |not: &str| {
        until_long("a new node plugin pod to be Ready", async || {
            let listed = tessera_pods.list(&Default::default()).await.ok()?.items;
            let pod = listed.iter().find(|p| component(p) == "csi-node" && p.metadata.uid.as_deref() != Some(not))?;
            let ready =
                pod.status.as_ref()?.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then(|| pod.metadata.uid.clone().unwrap())
        })
        .await
    };
    let listed = tessera_pods.list(&Default::default()).await.unwrap().items;
    let first = plugin_pod(&listed).expect("a node plugin pod");
    let name = listed.iter().find(|p| component(p) == "csi-node").unwrap().metadata.name.clone().unwrap();
    tessera_pods.delete(&name, &Default::default()).await.unwrap();
    let second = ready_plugin(&first).await;
    going_on(3).await;

    let (ok, out, err) =
        cluster.cp().kubectl(&["rollout", "restart", "daemonset/tessera-csi-node", "--namespace", NS]).unwrap();
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cluster
        .cp()
        .kubectl(&["rollout", "status", "daemonset/tessera-csi-node", "--namespace", NS, "--timeout=4m"])
        .unwrap();
    assert!(ok, "rollout: {out}{err}\n{}", describe(tessera_pods).await);
    ready_plugin(&second).await;
    going_on(3).await;

    std::fs::write(ctl.join("stop"), "").unwrap();
    let logs = succeeded(cluster, pods, "looper", tessera_pods).await;
    let bad = std::fs::read_to_string(ctl.join("bad")).unwrap_or_default();
    assert!(logs.trim_end().ends_with("bad 0") && bad.is_empty(), "the reader saw errors: {logs}{bad}");
    succeeded(cluster, pods, "appender", tessera_pods).await;
    let last_synced = progress(&synced);
    delete_pod(pods, "looper").await;
    delete_pod(pods, "appender").await;

    // Every line the writer synced is in the leaf, in order.
    let check = "n=0; while read l; do n=$((n+1)); [ \"$l\" = \"$n\" ] || { echo \"line $n is $l\"; exit 1; }; done < /data/log; echo $n";
    pods.create(&pp, &with_claim("check-log", "leaf-b", check)).await.unwrap();
    let logs = succeeded(cluster, pods, "check-log", tessera_pods).await;
    let lines: u64 = logs.trim().parse().unwrap_or_else(|_| panic!("{logs}"));
    assert!(lines >= last_synced, "the leaf lost synced lines: {lines} there, {last_synced} synced");
    delete_pod(pods, "check-log").await;
}

/// The files of the test archive and their contents: several sizes (one
/// spanning many stripe units), nested directories, an empty file.
fn archive_files() -> Vec<(&'static str, Vec<u8>)> {
    [("a.txt", 11), ("empty", 0), ("dir/b.bin", 200_000), ("dir/deeper/c.bin", 3_500_000)]
        .into_iter()
        .enumerate()
        .map(|(i, (path, len))| {
            (path, (0..len).map(|j: usize| (j.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8).collect())
        })
        .collect()
}

/// `sha256sum`'s lines for `files` as seen from their root (`./path`), in
/// path order.
fn digests(files: &[(&str, Vec<u8>)]) -> Vec<String> {
    let mut lines: Vec<String> =
        files.iter().map(|(path, bytes)| format!("{}  ./{path}", hex::encode(Sha256::digest(bytes)))).collect();
    lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
    lines
}

/// Serves a tar.gz of [`archive_files`] from a busybox httpd pod in
/// `namespace` (the archive in a ConfigMap) behind the Service `archive`;
/// returns the URL a pod of the cluster fetches it by, and the digests.
async fn serve_archive(client: &kube::Client, namespace: &str) -> (String, Vec<String>) {
    let files = archive_files();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, &bytes[..]).unwrap();
    }
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let archive = gz.finish().unwrap();
    let pp = PostParams::default();
    let map = ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some("archive".into()), ..Default::default() },
        binary_data: Some([("data.tar.gz".to_string(), k8s_openapi::ByteString(archive))].into()),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), namespace).create(&pp, &map).await.unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "archive", "labels": {"app": "archive"}},
        "spec": {
            "containers": [{
                "name": "httpd",
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                "volumeMounts": [{"name": "www", "mountPath": "/www"}],
            }],
            "volumes": [{"name": "www", "configMap": {"name": "archive"}}],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.create(&pp, &pod).await.unwrap();
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "archive"},
        "spec": {"selector": {"app": "archive"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), namespace).create(&pp, &service).await.unwrap();
    until("the archive server to be Ready", async || {
        let pod = pods.get("archive").await.ok()?;
        pod.status?.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    (format!("http://archive.{namespace}.svc.cluster.local/data.tar.gz"), digests(&files))
}

/// Runs pod `name` reading every file of `fileset`'s `version` through an
/// inline root volume (`sha256sum` of each, then a write that must fail)
/// to its end; returns its log. On failure says why, with the Tessera pods'
/// state (`tessera_pods`).
async fn read_root(
    cluster: &NodeCluster,
    pods: &Api<Pod>,
    name: &str,
    fileset: &str,
    version: u64,
    tessera_pods: &Api<Pod>,
) -> String {
    let mut reader = one_shot(
        name,
        "cd /data && find . -type f | sort | xargs sha256sum && if touch /data/new 2>/tmp/err; then echo wrote; else cat /tmp/err; fi",
    );
    reader["spec"]["containers"][0]["volumeMounts"] = serde_json::json!([{"name": "data", "mountPath": "/data"}]);
    reader["spec"]["volumes"] = serde_json::json!([{"name": "data", "csi": {
        "driver": "csi.tessera.dev",
        "readOnly": true,
        "volumeAttributes": {"kind": "root", "fileset": fileset, "version": version.to_string()},
    }}]);
    pods.create(&PostParams::default(), &serde_json::from_value(reader).unwrap()).await.unwrap();
    succeeded(cluster, pods, name, tessera_pods).await
}

/// Waits for Fileset `name` to be Ready; on a timeout fails with its
/// status, the namespace's events and the operator's log.
async fn fileset_ready(filesets: &Api<Fileset>, name: &str, tessera_pods: &Api<Pod>) -> Fileset {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let f = filesets.get(name).await.ok();
        if let Some(f) = f.as_ref().filter(|f| is(f, "Ready", "True")) {
            return f.clone();
        }
        if tokio::time::Instant::now() > deadline {
            let events: Api<Event> = Api::namespaced(filesets.clone().into_client(), "default");
            let events = events.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
            let events: Vec<String> = events
                .iter()
                .map(|e| format!("{:?} {:?}: {:?}", e.involved_object.name, e.reason, e.message))
                .collect();
            let log = component_log(tessera_pods, "operator", "operator").await;
            panic!(
                "Fileset {name} not Ready: {:?}\nevents:\n{}\noperator:\n{log}",
                f.and_then(|f| f.status),
                events.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The end of the CSI node plugin container's log.
async fn plugin_log(pods: &Api<Pod>) -> String {
    component_log(pods, "csi-node", "plugin").await
}

/// The end of the log of `container` in the pod of a Tessera component.
async fn component_log(pods: &Api<Pod>, of: &str, container: &str) -> String {
    let listed = pods.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
    let Some(pod) = listed.iter().find(|p| component(p) == of) else { return format!("no {of} pod") };
    let params = LogParams { container: Some(container.into()), tail_lines: Some(60), ..Default::default() };
    pods.logs(pod.metadata.name.as_deref().unwrap_or(""), &params).await.unwrap_or_else(|e| e.to_string())
}

/// As [`until`], for what takes a real cluster longer (an ingest: DNS, a
/// download, placement, writes to nine servers on a 2-core machine).
async fn until_long<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

const NS: &str = tessera_e2e::install::NAMESPACE;

fn component(pod: &Pod) -> &str {
    pod.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/component")).map(String::as_str).unwrap_or("")
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
