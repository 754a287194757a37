//! Tessera's own programs as processes against a test control plane: the
//! operator (with its master) and chunkservers, and the `tessera` command.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, PostParams};
use tessera_api::crd::Fileset;
use tessera_operator::topology::{NodeState, node_state};

use crate::{ControlPlane, Kwok, Proc, fake_node, free_port, tessera_bin, until};

/// The namespace the operator keeps its lease in.
pub const NS: &str = "tessera-system";

pub fn condition(f: &Fileset, kind: &str) -> Option<(String, String)> {
    f.status.as_ref()?.conditions.iter().find(|c| c.type_ == kind).map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn is(f: &Fileset, kind: &str, status: &str) -> bool {
    condition(f, kind).is_some_and(|c| c.0 == status)
}

/// `tessera` against the operator's master; panics with its output on failure.
pub fn tessera(master: &str, args: &[&str]) -> String {
    let out = Command::new(tessera_bin("tessera")).arg("--master").arg(master).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tessera {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

pub fn start_operator(cp: &ControlPlane, master: SocketAddr, identity: &str, dir: &Path) -> Proc {
    let args: Vec<String> = [
        "run",
        &format!("--listen={master}"),
        "--metrics-listen=127.0.0.1:0",
        &format!("--lease-namespace={NS}"),
        &format!("--identity={identity}"),
        "--lease-duration=3s",
        "--heartbeat-timeout=3s",
        // Long enough that low-availability filesets visibly wait.
        "--repair-grace=1h",
        "--resync=500ms",
        "--ingest-image=tessera:test",
        &format!("--master-service={master}"),
        "--log=info",
    ]
    .map(String::from)
    .to_vec();
    let env = [("KUBECONFIG", cp.kubeconfig())];
    Proc::spawn_with_env(identity, &tessera_bin("tessera-operator"), &args, &env, dir).unwrap()
}

pub fn start_chunkserver(node: &str, master: SocketAddr, dir: &Path) -> Proc {
    // No topology flags: the operator takes zone and rack from the Node.
    let args: Vec<String> = [
        "chunkserver",
        &format!("--node-id={node}"),
        "--listen=127.0.0.1:0",
        "--metrics-listen=127.0.0.1:0",
        &format!("--data-dir={}", dir.join(node).display()),
        &format!("--master={master}"),
    ]
    .map(String::from)
    .to_vec();
    Proc::spawn_with_env(node, &tessera_bin("tessera"), &args, &[], dir).unwrap()
}

/// Tessera's processes on kwok nodes, ready for filesets.
pub struct Cluster {
    pub kwok: Kwok,
    pub operator: Proc,
    /// One chunkserver per node, in node order.
    pub servers: Vec<Proc>,
    pub master: SocketAddr,
}

/// Applies the CRDs, makes [`NS`] and `nodes` kwok nodes (`node-<i>`, in
/// three zones, one rack each), and starts the operator and a chunkserver
/// per node; returns once every chunkserver is registered in its node's
/// zone (taken from the Node's labels: chunkservers get no topology flags).
pub async fn start_cluster(cp: &ControlPlane, nodes: usize, dir: &Path) -> Cluster {
    let kwok = cp.start_kwok().unwrap();
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    let (ok, out, err) = cp.kubectl(&["apply", "--server-side", "-f", crds]).unwrap();
    assert!(ok, "{out}{err}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(cp.client()).create(&PostParams::default(), &ns).await.unwrap();
    let api: Api<Node> = Api::all(cp.client());
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let node = fake_node(name, &format!("zone-{}", i % 3), &format!("rack-{i}"));
        api.create(&PostParams::default(), &node).await.unwrap();
    }
    for name in &names {
        until("kwok to make the nodes ready", async || {
            (node_state(&api.get(name).await.ok()?) == NodeState::Ready).then_some(())
        })
        .await;
    }
    let master: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap()).parse().unwrap();
    let mut operator = start_operator(cp, master, "operator-0", dir);
    let servers: Vec<Proc> = names.iter().map(|n| start_chunkserver(n, master, dir)).collect();
    let m = master.to_string();
    until("every chunkserver to register in its node's zone", async || {
        operator.check().unwrap();
        let out = Command::new(tessera_bin("tessera")).args(["--master", &m, "status", "--json"]).output().ok()?;
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let placed = st["servers"]
            .as_array()?
            .iter()
            .filter(|s| s["live"] == true && s["zone"].as_str().is_some_and(|z| z.starts_with("zone-")))
            .count();
        (placed == nodes).then_some(())
    })
    .await;
    Cluster { kwok, operator, servers, master }
}
