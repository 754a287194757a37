//! Two NodeStageVolume calls for one volume at once: the second is answered
//! ABORTED while the first runs (it never starts, so nothing is undone),
//! and the same call succeeds once the first is done. Calls on volumes of
//! other roots do not wait for each other: no node-wide lock is taken at
//! the top of a call (the held stage waits reading its manifest, before it
//! takes its root's lock; `RootLocks` itself is tested in turns.rs).

mod common;

use std::time::Duration;

use common::plugin::{Node, reader};
use tessera_csi::csi;
use tessera_csi::fuse::mount::mounts_at;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_call_on_a_busy_volume_is_aborted_and_a_retry_succeeds() {
    let cluster = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    cluster.put("models", src.path()).await;

    let dir = tempfile::tempdir().unwrap();
    let node = Node { dir: dir.path().to_path_buf(), master: cluster.master_addr() };
    let (_keeper, _plugin) = (node.start_keeper(), node.start_plugin(0));
    let (mut first, mut second) = (node.client().await, node.client().await);
    let staging = dir.path().join("staging");
    let stage = csi::NodeStageVolumeRequest {
        volume_id: "models@latest".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(reader()),
        ..Default::default()
    };

    // The chunkservers hold reads: the first stage waits inside, reading
    // the version's manifest, holding the volume's turn.
    cluster.hang(true).await;
    let held = {
        let stage = stage.clone();
        tokio::spawn(async move { first.node_stage_volume(stage).await })
    };
    tessera_testkit::until("the first stage to reach the held chunkservers", async || {
        (cluster.in_flight().await > 0).then_some(())
    })
    .await;

    // (The bound turns a second call queued behind the first into a
    // failure rather than a hang.)
    let refused = tokio::time::timeout(Duration::from_secs(60), second.node_stage_volume(stage.clone()))
        .await
        .expect("the second call waited for the first instead of being refused")
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    assert!(refused.message().contains("models@latest"), "the message names the volume: {}", refused.message());
    assert!(!held.is_finished(), "the first stage was still running");

    cluster.hang(false).await;
    held.await.unwrap().expect("the first stage completes");
    assert!(!mounts_at(&staging).is_empty());
    second.node_stage_volume(stage).await.expect("the retry succeeds once the first is done");
    assert_eq!(mounts_at(&staging).len(), 1, "staged once, not twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_on_one_root_does_not_hold_up_another_root() {
    let cluster = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    cluster.put("models", src.path()).await;
    cluster.put("data", src.path()).await;

    let dir = tempfile::tempdir().unwrap();
    let node = Node { dir: dir.path().to_path_buf(), master: cluster.master_addr() };
    let (_keeper, _plugin) = (node.start_keeper(), node.start_plugin(0));
    let (mut first, mut second) = (node.client().await, node.client().await);
    let stage = |volume: &str, path: &std::path::Path| csi::NodeStageVolumeRequest {
        volume_id: volume.into(),
        staging_target_path: path.display().to_string(),
        volume_capability: Some(reader()),
        ..Default::default()
    };
    let (staged_models, staged_data) = (dir.path().join("models"), dir.path().join("data"));
    second.node_stage_volume(stage("models@latest", &staged_models)).await.expect("models staged");

    // The stage of data waits inside, reading its manifest from the held
    // chunkservers.
    cluster.hang(true).await;
    let held = {
        let req = stage("data@latest", &staged_data);
        tokio::spawn(async move { first.node_stage_volume(req).await })
    };
    tessera_testkit::until("the stage of data to reach the held chunkservers", async || {
        (cluster.in_flight().await > 0).then_some(())
    })
    .await;

    // Unstaging models needs no chunkserver; with one lock for the whole
    // node it would wait for the held stage (the bound turns that into a
    // failure).
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: "models@latest".into(),
        staging_target_path: staged_models.display().to_string(),
    };
    tokio::time::timeout(Duration::from_secs(30), second.node_unstage_volume(unstage))
        .await
        .expect("the unstage of models waited for the stage of data")
        .expect("models unstaged");
    assert!(mounts_at(&staged_models).is_empty());
    assert!(!held.is_finished(), "the stage of data was still held");

    cluster.hang(false).await;
    held.await.unwrap().expect("the stage of data completes");
    assert_eq!(mounts_at(&staged_data).len(), 1);
}
