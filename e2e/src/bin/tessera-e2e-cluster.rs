//! `tessera-e2e-cluster`: the tests' single-node cluster, for a person.
//!
//! Starts the control plane and one real node (containerd and a kubelet in
//! a network namespace of their own, as `e2e/tests/pods.rs` uses), prints
//! the KUBECONFIG to use with kubectl and helm, and takes it all down again
//! on Ctrl-C or SIGTERM. Needs root and what `.ci/run` installs.

use tessera_e2e::image;
use tessera_e2e::node::NodeCluster;

/// Runs the tests' cluster with one real node until Ctrl-C or SIGTERM.
///
/// etcd, kube-apiserver, kube-controller-manager and kube-scheduler on the
/// host; containerd, a kubelet, kube-proxy and CoreDNS in a network
/// namespace of their own; the image localhost/tessera-busybox:e2e
/// imported. Prints the KUBECONFIG, then stops and removes everything on
/// Ctrl-C or SIGTERM. Needs root; the tools come from e2e/tools.sh.
#[derive(clap::Parser)]
#[command(version)]
struct Args {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = <Args as clap::Parser>::parse();
    let cluster = NodeCluster::start().await?;
    cluster.node.import(&image::busybox("localhost/tessera-busybox:e2e")?)?;
    println!("export KUBECONFIG={}", cluster.cp().kubeconfig().display());
    println!(
        "node {} at {}, pods in {}; Ctrl-C stops it",
        cluster.node.name,
        cluster.net().node_ip,
        cluster.net().pod_cidr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    cluster.shutdown()
}
