//! `tessera-e2e-cluster`: the tests' single-node cluster, for a person.
//!
//! Starts the control plane and one real node (containerd and a kubelet in
//! a network namespace of their own, as `e2e/tests/pods.rs` uses), installs
//! Tessera from its chart (unless `--bare`), prints the KUBECONFIG to use
//! with kubectl and helm, and takes it all down again on Ctrl-C or SIGTERM.
//! Needs root and what `.ci/run` installs.

use std::path::PathBuf;

use anyhow::Context;
use tessera_e2e::node::NodeCluster;
use tessera_e2e::{image, install};

/// Runs the tests' cluster with one real node until Ctrl-C or SIGTERM.
///
/// etcd, kube-apiserver, kube-controller-manager and kube-scheduler on the
/// host; containerd, a kubelet, kube-proxy and CoreDNS in a network
/// namespace of their own; the image localhost/tessera-busybox:e2e
/// imported. Then Tessera: its image (of the programs beside this one)
/// imported, charts/tessera installed in tessera-system with the leaf
/// StorageClass over the fileset `demo`, and eight chunkservers behind kwok
/// nodes so that filesets have nine servers in three zones. Prints the
/// KUBECONFIG, then stops and removes everything on Ctrl-C or SIGTERM.
/// Needs root; the tools come from e2e/tools.sh.
#[derive(clap::Parser)]
#[command(version)]
struct Args {
    /// Only the cluster: no Tessera.
    #[arg(long)]
    bare: bool,
    /// More chart values for helm install (`key=value`, repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let cluster = NodeCluster::start().await?;
    cluster.node.import(&image::busybox("localhost/tessera-busybox:e2e")?)?;
    let installed = if args.bare {
        None
    } else {
        let bin_dir: PathBuf = tessera_e2e::tessera_bin("tessera").parent().context("a program directory")?.into();
        let mut settings = vec!["csi.leafStorageClass.fileset=demo".to_string()];
        settings.extend(args.set);
        Some(install::install(&cluster, &bin_dir, &settings).await?)
    };
    println!("export KUBECONFIG={}", cluster.cp().kubeconfig().display());
    println!(
        "node {} at {}, pods in {}; Ctrl-C stops it",
        cluster.node.name,
        cluster.net().node_ip,
        cluster.net().pod_cidr
    );
    if let Some(i) = &installed {
        println!(
            "Tessera in {}: master at {} (tessera --master {} status); leaf StorageClass tessera-leaf over fileset demo",
            install::NAMESPACE,
            i.master,
            i.master
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(installed);
    cluster.shutdown()
}
