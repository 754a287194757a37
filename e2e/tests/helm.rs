//! The Helm chart: lint-clean, and every object it renders valid against a
//! real apiserver (server-side dry run, then a real install).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::Api;
use tessera_e2e::{ControlPlane, tool};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tessera")
}

/// Runs helm with its caches in `home`; returns (success, stdout, stderr).
fn helm(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tool("helm").unwrap())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_chart_lints_renders_valid_objects_and_installs() {
    let home = tempfile::tempdir().unwrap();
    let chart = chart();
    let chart = chart.to_str().unwrap();

    let (ok, out, err) = helm(home.path(), &["lint", "--strict", chart]);
    assert!(ok, "helm lint --strict: {out}{err}");
    assert!(!out.contains("[WARNING]") && !out.contains("[ERROR]"), "{out}");

    let cp = ControlPlane::start().await.unwrap();
    let kubeconfig = cp.kubeconfig().to_str().unwrap().to_string();
    let (ok, out, err) = cp.kubectl(&["create", "namespace", "tessera-system"]).unwrap();
    assert!(ok, "{out}{err}");

    // Every rendered object passes the apiserver's validation (CRDs first,
    // as helm installs them).
    let (ok, rendered, err) = helm(
        home.path(),
        &[
            "template",
            "t",
            chart,
            "--namespace",
            "tessera-system",
            "--include-crds",
            "--set",
            "csi.leafStorageClass.fileset=models",
        ],
    );
    assert!(ok, "helm template: {err}");
    // Accelerated reads ask for every stripe unless the values say how many extra.
    assert!(!rendered.contains("--accelerated-extra"), "{rendered}");
    let (ok, extra, err) = helm(home.path(), &["template", "t", chart, "--set", "csi.acceleratedExtra=1"]);
    assert!(ok && extra.contains("- --accelerated-extra=1"), "{err}{extra}");
    // Leaf claims: the plugin provisions them by default; the sidecar or
    // nothing on request (and then no leaf StorageClass); a typo is refused.
    assert!(rendered.contains("- --provision-leaves") && !rendered.contains("csi-provisioner:"), "{rendered}");
    let provisioning = |value: &str| {
        let setting = format!("csi.provisioning={value}");
        helm(home.path(), &["template", "t", chart, "--set", &setting, "--set", "csi.leafStorageClass.fileset=models"])
    };
    let (ok, sidecar, err) = provisioning("sidecar");
    assert!(ok && sidecar.contains("name: csi-provisioner") && !sidecar.contains("--provision-leaves"), "{err}");
    let (ok, none, err) = provisioning("none");
    assert!(ok, "{err}");
    assert!(!none.contains("--provision-leaves") && !none.contains("name: csi-provisioner"), "{none}");
    assert!(!none.contains("kind: StorageClass") && !none.contains("t-tessera-csi-provisioner"), "{none}");
    // The node plugin's liveness probe asks the plugin itself; with sidecar
    // registration, the livenessprobe sidecar.
    let plugin_daemonset = |all: &str| -> String {
        let doc =
            all.split("\n---").find(|d| d.contains("kind: DaemonSet") && d.contains("name: t-tessera-csi-node\n"));
        doc.expect("the node plugin's DaemonSet is rendered").to_string()
    };
    let probe_port = |daemonset: &str| -> Option<String> {
        let probe = &daemonset[daemonset.find("livenessProbe:")?..];
        let port = probe.lines().find(|l| l.trim_start().starts_with("port:"))?;
        Some(port.trim_start().trim_start_matches("port:").trim().to_string())
    };
    assert_eq!(probe_port(&plugin_daemonset(&rendered)).as_deref(), Some("metrics"), "{rendered}");
    let (ok, sidecars, err) = helm(home.path(), &["template", "t", chart, "--set", "csi.registration=sidecars"]);
    assert!(ok && sidecars.contains("--health-port=9808"), "{err}{sidecars}");
    assert_eq!(probe_port(&plugin_daemonset(&sidecars)).as_deref(), Some("healthz"), "{sidecars}");
    let (ok, _, err) = provisioning("external");
    assert!(!ok && err.contains("csi.provisioning \"external\": use builtin, sidecar or none"), "{err}");
    // The key csi.provisioning replaced is refused, not silently ignored.
    let (ok, _, err) = helm(home.path(), &["template", "t", chart, "--set", "csi.provisionerSidecar=false"]);
    assert!(!ok && err.contains("csi.provisionerSidecar was replaced by csi.provisioning"), "{err}");
    let manifest = home.path().join("rendered.yaml");
    std::fs::write(&manifest, &rendered).unwrap();
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let (ok, out, err) = cp.kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()]).unwrap();
    assert!(ok, "{out}{err}");
    let (ok, out, err) =
        cp.kubectl(&["apply", "--dry-run=server", "--server-side", "-f", manifest.to_str().unwrap()]).unwrap();
    assert!(ok, "server-side dry run of the chart: {out}{err}");
    for kind in [
        "deployment.apps/t-tessera-operator",
        "daemonset.apps/t-tessera-chunkserver",
        "clusterrole",
        "csidriver.storage.k8s.io/csi.tessera.dev",
        "daemonset.apps/t-tessera-csi-node",
        "daemonset.apps/t-tessera-csi-keeper",
        "storageclass.storage.k8s.io/tessera-leaf",
    ] {
        assert!(out.contains(kind), "{kind} missing from the dry run:\n{out}");
    }

    // A real install: every object is created (without nodes nothing runs).
    let (ok, out, err) = helm(
        home.path(),
        &[
            "install",
            "t",
            chart,
            "--namespace",
            "tessera-system",
            "--kubeconfig",
            &kubeconfig,
            "--set",
            "operator.replicas=1",
        ],
    );
    assert!(ok, "helm install: {out}{err}");
    let deployments: Api<Deployment> = Api::namespaced(cp.client(), "tessera-system");
    let d = deployments.get("t-tessera-operator").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1));
    let daemonsets: Api<DaemonSet> = Api::namespaced(cp.client(), "tessera-system");
    let ds = daemonsets.get("t-tessera-chunkserver").await.unwrap();
    let args = ds.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(args.contains(&"--master=t-tessera-master.tessera-system.svc:7300".to_string()), "{args:?}");
    // The keeper is never replaced by a rollout; the plugin's mounts reach the host.
    let keeper = daemonsets.get("t-tessera-csi-keeper").await.unwrap();
    assert_eq!(keeper.spec.unwrap().update_strategy.unwrap().type_.as_deref(), Some("OnDelete"));
    let node = daemonsets.get("t-tessera-csi-node").await.unwrap().spec.unwrap().template.spec.unwrap();
    let mounts = node.containers[0].volume_mounts.clone().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/var/lib/kubelet" && m.mount_propagation.as_deref() == Some("Bidirectional"))
    );
    let roles: Api<ClusterRole> = Api::all(cp.client());
    let role = roles.get("t-tessera-operator").await.unwrap();
    // Least privilege: nothing may touch secrets, and no wildcard verbs.
    for rule in role.rules.unwrap() {
        assert!(!rule.resources.clone().unwrap_or_default().iter().any(|r| r == "secrets" || r == "*"), "{rule:?}");
        assert!(!rule.verbs.iter().any(|v| v == "*"), "{rule:?}");
    }
    let (ok, out, err) =
        helm(home.path(), &["uninstall", "t", "--namespace", "tessera-system", "--kubeconfig", &kubeconfig]);
    assert!(ok, "helm uninstall: {out}{err}");
}
