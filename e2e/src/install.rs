//! Tessera installed into a [`NodeCluster`] as a user would: the Tessera
//! image imported into the node's containerd (no registry), `helm install`
//! of charts/tessera, and eight chunkservers behind kwok nodes so that
//! RS(6,3) filesets have nine servers in three zones
//! ([`NodeCluster::start_chunkserver_nodes`]).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;

use crate::node::{ChunkserverNodes, NodeCluster};
use crate::{image, tessera_bin, tool};

/// The namespace and release name the chart is installed as.
pub const NAMESPACE: &str = "tessera-system";
pub const RELEASE: &str = "tessera";
/// The reference the Tessera image is imported under.
pub const IMAGE: &str = "localhost/tessera:e2e";

/// A running installation.
pub struct Installed {
    /// The master, at the operator pod's address (the host reaches pods).
    pub master: String,
    /// The chunkservers behind kwok nodes; they stop when this is dropped.
    pub chunkservers: ChunkserverNodes,
}

/// Imports the image of the programs in `bin_dir`, installs the chart with
/// the node's directories and `settings` (`key=value`, as `helm --set`),
/// waits for every pod to be Ready, starts the chunkserver nodes and waits
/// until nine chunkservers are up in three zones.
pub async fn install(cluster: &NodeCluster, bin_dir: &Path, settings: &[String]) -> anyhow::Result<Installed> {
    cluster.node.import(&image::tessera(IMAGE, bin_dir)?)?;
    let host = cluster.node.host_dir();
    let h = host.display();
    let (repository, tag) = IMAGE.split_once(':').expect("a tagged reference");
    let mut values = vec![
        format!("image.repository={repository}"),
        format!("image.tag={tag}"),
        "image.pullPolicy=Never".into(),
        "operator.replicas=1".into(),
        // The chart's host directories, on the node's shared host mount.
        format!("chunkserver.dataDirs={{{h}/data0}}"),
        format!("csi.kubeletDir={}", cluster.node.kubelet_root().display()),
        format!("csi.stateDir={h}/csi-state"),
        format!("csi.keeperDir={h}/csi-keeper"),
    ];
    values.extend(settings.iter().cloned());
    // The CSI DaemonSets tolerate every taint; keep them off the kwok nodes,
    // which run no containers.
    let node_selector = format!(r#"csi.nodeSelector={{"kubernetes.io/hostname":"{}"}}"#, cluster.node.name);
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tessera");
    let mut args = vec!["install", RELEASE, chart, "--namespace", NAMESPACE, "--create-namespace"];
    args.extend(["--wait", "--timeout", "4m", "--set-json", &node_selector]);
    for v in &values {
        args.extend(["--set", v]);
    }
    let (ok, out) = helm(cluster, &args)?;
    if !ok {
        let (_, pods, _) = cluster.cp().kubectl(&["get", "pods", "-A", "-o", "wide"])?;
        bail!("helm install: {out}\n{pods}");
    }

    let client = cluster.cp().client();
    let service = Api::<Service>::namespaced(client.clone(), NAMESPACE).get(&format!("{RELEASE}-master")).await?;
    let master_ip = service.spec.and_then(|s| s.cluster_ip).context("the master Service has no cluster IP")?;
    let chunkservers = cluster.start_chunkserver_nodes(8, &format!("{master_ip}:7300")).await?;
    let pods = Api::<Pod>::namespaced(client, NAMESPACE).list(&Default::default()).await?.items;
    let operator = pods
        .iter()
        .find(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/component"))
                .is_some_and(|c| c == "operator")
        })
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        .context("no operator pod address")?;
    let master = format!("{operator}:7300");
    let mut expected: Vec<String> = chunkservers.names.clone();
    expected.push(cluster.node.name.clone());
    expected.sort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let up = servers_up(&master);
        if up == expected {
            return Ok(Installed { master, chunkservers });
        }
        if std::time::Instant::now() > deadline {
            bail!("chunkservers up in zones: {up:?}, want {expected:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The chunkservers `tessera status` reports live and in a `zone-*` domain.
fn servers_up(master: &str) -> Vec<String> {
    let Ok(out) = Command::new(tessera_bin("tessera")).args(["--master", master, "status", "--json"]).output() else {
        return Vec::new();
    };
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return Vec::new() };
    let mut up: Vec<String> = status["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["live"] == true && s["zone"].as_str().is_some_and(|z| z.starts_with("zone-")))
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect();
    up.sort();
    up
}

/// helm against the cluster: whether it succeeded, and what it said.
pub fn helm(cluster: &NodeCluster, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(tool("helm")?).arg("--kubeconfig").arg(cluster.cp().kubeconfig()).args(args).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}
