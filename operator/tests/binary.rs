//! The `tessera-operator` program itself.

use std::process::Command;

const OPERATOR: &str = env!("CARGO_BIN_EXE_tessera-operator");

#[test]
fn crds_prints_the_committed_definitions() {
    let out = Command::new(OPERATOR).arg("crds").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/tessera.dev.yaml")).unwrap();
    assert!(out.stdout == committed, "crds/ is stale: run `make crds`");
}

#[test]
fn run_without_a_cluster_fails_saying_where_it_looked() {
    let out = Command::new(OPERATOR)
        .args(["run", "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kubeconfig") && err.contains("in-cluster"), "{err}");
}
