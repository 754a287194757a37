//! The official CSI sanity suite (kubernetes-csi/csi-test, built by
//! e2e/tools.sh) against the plugin and its keeper, over a cluster in this
//! process. Skipped groups are only those of capabilities the driver does
//! not advertise (listed in docs/csi.md); the suite skips them itself.

mod common;

use std::time::Duration;

use tessera_csi::csi;
use tessera_csi::csi::identity_client::IdentityClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_sanity_suite_passes() {
    let sanity = tessera_e2e_tools_bin().join("csi-sanity");
    assert!(sanity.exists(), "{} missing: run e2e/tools.sh (make tools)", sanity.display());
    let cluster = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("hello.txt"), b"hello").unwrap();
    cluster.put("sanity", src.path()).await;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let _keeper = common::tessera_csi(
        &["keeper".into(), format!("--socket={}", dir.path().join("keeper.sock").display())],
        &dir.path().join("keeper.log"),
    );
    let _plugin = common::tessera_csi(
        &[
            format!("--endpoint=unix://{}", socket.display()),
            "--node-id=sanity-node".into(),
            format!("--master={}", cluster.master_addr()),
            format!("--state-dir={}", dir.path().join("state").display()),
            format!("--keeper-socket={}", dir.path().join("keeper.sock").display()),
            "--cache-size=64MiB".into(),
            "--metrics-listen=127.0.0.1:0".into(),
        ],
        &dir.path().join("plugin.log"),
    );
    let mut ready = false;
    // Generous: two test suites may share these two cores.
    for _ in 0..1200 {
        if let Ok(c) = common::csi_channel(&socket).await
            && IdentityClient::new(c).probe(csi::ProbeRequest {}).await.is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "the plugin never answered:\n{}",
        std::fs::read_to_string(dir.path().join("plugin.log")).unwrap_or_default()
    );
    let params = dir.path().join("params.yaml");
    std::fs::write(&params, "fileset: sanity\n").unwrap();
    let out = tokio::process::Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", socket.display()))
        .arg(format!("--csi.mountdir={}", dir.path().join("mnt").display()))
        .arg(format!("--csi.stagingdir={}", dir.path().join("staging").display()))
        .arg(format!("--csi.testvolumeparameters={}", params.display()))
        .arg("--csi.testvolumesize=104857600")
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.v")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = text.lines().filter(|l| l.contains("Passed") && l.contains("Failed")).collect();
    assert!(
        out.status.success(),
        "csi-sanity failed:\n{text}\nplugin log:\n{}",
        std::fs::read_to_string(dir.path().join("plugin.log")).unwrap_or_default()
    );
    assert!(summary.iter().any(|l| l.contains("0 Failed")), "{summary:?}");
    // What was skipped, and why (capabilities the driver does not advertise).
    let mut reasons: Vec<&str> =
        text.lines().map(str::trim).filter(|l| l.contains("not supported") || l.contains("not provided")).collect();
    reasons.sort();
    reasons.dedup();
    println!("{}\nskipped because:\n  {}", summary.join("\n"), reasons.join("\n  "));
}

fn tessera_e2e_tools_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("TESSERA_TOOLS_BIN") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    std::path::Path::new(&home).join(".cache/tessera/tools/bin")
}
