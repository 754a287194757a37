//! Tessera's own programs as processes against a test control plane: the
//! operator (with its master) and chunkservers, and the `tessera` command.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use tessera_operator::crd::Fileset;

use crate::{ControlPlane, Proc, tessera_bin};

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
