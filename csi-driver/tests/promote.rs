//! `tessera promote`: a leaf volume's files, as its pod sees them, become a
//! new version of a fileset through the node plugin that serves the leaf.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::plugin::{Node, writer};
use tessera_core::read_plan::ReadMode;
use tessera_csi::csi;

/// Every path below `root` with what it is: a file's bytes, a symlink's
/// target, or a directory.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    use sha2::Digest;
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn promote(volume: &str, fileset: &str, node: &str) -> std::process::Output {
    let cli = Path::new(env!("CARGO_BIN_EXE_tessera-csi")).with_file_name("tessera");
    assert!(cli.exists(), "{} is built with the workspace (make test builds it)", cli.display());
    std::process::Command::new(cli).args(["promote", volume, "--fileset", fileset, "--node", node]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_leaf_is_a_new_version_with_exactly_its_files() {
    let cluster = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    cluster.put("models", src.path()).await;

    let dir = tempfile::tempdir().unwrap();
    let node = Node { dir: dir.path().to_path_buf(), master: cluster.master_addr() };
    let _keeper = node.start_keeper();
    let _plugin = node.start_plugin(0);
    let mut csi = node.client().await;
    let control = node.metrics_addr(0);
    let leaf = common::plugin::create_leaf(&node, "pvc-tune", "models").await;

    // Not staged yet: nothing to read, a clear refusal.
    let early = promote(&leaf.volume_id, "models-tuned", &control);
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("not staged"), "{early:?}");

    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    csi.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: leaf.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(writer()),
        ..Default::default()
    })
    .await
    .unwrap();
    // A pod's work: a block of a large file changed, a file added, one
    // removed, one renamed, a symlink made.
    let weights = staging.join("models/llama/weights.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&weights).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 4096], 1_000_000).unwrap();
    f.sync_all().unwrap();
    std::fs::create_dir_all(staging.join("runs/1")).unwrap();
    std::fs::write(staging.join("runs/1/metrics.json"), b"{\"loss\": 0.25}").unwrap();
    std::fs::remove_file(staging.join("models/config-03.json")).unwrap();
    std::fs::rename(staging.join("models/config-04.json"), staging.join("models/config-04.old")).unwrap();
    std::os::unix::fs::symlink("runs/1/metrics.json", staging.join("best.json")).unwrap();
    let want = tree(&staging);

    // The control API reports the leaf and what went through it.
    let listing = common::plugin::http(&control, "GET", "/volumes", "").await;
    assert!(
        listing.contains(&format!("\"volume\":\"{}\"", leaf.volume_id)) && listing.contains("\"kind\":\"leaf\""),
        "{listing}"
    );
    let tp = common::plugin::http(&control, "GET", &format!("/volumes/{}/throughput", leaf.volume_id), "").await;
    let body: serde_json::Value = serde_json::from_str(tp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["write_bytes_per_sec"].as_f64().unwrap() > 0.0, "{tp}");
    assert!(body["read_bytes_per_sec"].as_f64().is_some(), "{tp}");
    let mode = format!("/volumes/{}/read-mode", leaf.volume_id);
    assert!(common::plugin::http(&control, "PUT", &mode, "normal").await.starts_with("HTTP/1.1 200"));

    // Into a new fileset: created with the root's layout, version 1.
    let out = promote(&leaf.volume_id, "models-tuned", &control);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("models-tuned@1:"), "{out:?}");
    let check = |fileset: &'static str, version: u64, want: BTreeMap<PathBuf, String>| {
        let c = &cluster;
        async move {
            let v = c.files().open(fileset, version).await.unwrap();
            let dest = tempfile::tempdir().unwrap();
            let copy = dest.path().join("copy");
            v.get(&c.stripes(), &copy, ReadMode::Hedged, &|_| {}).await.unwrap();
            assert_eq!(tree(&copy), want, "{fileset}@{version} holds exactly the leaf's tree");
            v
        }
    };
    let tuned = check("models-tuned", 1, want.clone()).await;
    assert_eq!((tuned.layout.k(), tuned.layout.m()), (4, 2), "the root's layout");

    // Into the root's own fileset: its next version; the first is unchanged.
    let out = promote(&leaf.volume_id, "models", &control);
    assert!(out.status.success(), "{out:?}");
    check("models", 2, want).await;
    check("models", 1, tree(src.path())).await;

    // A volume that is not on this node, and a bad fileset name.
    let missing = promote("leaf-0000000000000000", "x", &control);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("409"), "{missing:?}");
    let bad = promote(&leaf.volume_id, "Bad_Name", &control);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("name"), "{bad:?}");

    csi.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: leaf.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
}
