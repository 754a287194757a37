//! The node plugin is killed (SIGKILL) while a root volume has a file open
//! for reading and a leaf volume one open for writing: the mounts stay, both
//! files keep working once a new plugin takes the connections over from the
//! keeper, and a read in flight at the kill completes.

mod common;

use std::time::Duration;

use common::csi_channel;
use common::plugin::{Node, http, read_at, reader, writer};
use tessera_csi::csi;
use tessera_csi::csi::controller_client::ControllerClient;
use tessera_csi::fuse::mount::mounts_at;
use tessera_csi::keeper::KeeperClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_plugin_leaves_mounts_and_open_files_working() {
    let cluster = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    cluster.put("models", src.path()).await;
    cluster.put_with_read_mode("tools", src.path(), "accelerated").await;
    let whole = std::fs::read(src.path().join("models/llama/weights.bin")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let node = Node { dir: dir.path().to_path_buf(), master: cluster.master_addr() };
    let _keeper = node.start_keeper();
    // No file store at first: the reads below must reach the chunkservers,
    // not a copy stored whole after the first open. The successor has one
    // and must not pass through files of a connection it has no record of.
    let mut plugin = node.start_plugin_with(0, &["--file-store-size=0"]);
    let mut csi = node.client().await;

    let staging = dir.path().join("staging");
    let target = dir.path().join("pod/volume");
    std::fs::create_dir_all(&staging).unwrap();
    csi.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: "models@latest".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(reader()),
        ..Default::default()
    })
    .await
    .unwrap();
    let publish = csi::NodePublishVolumeRequest {
        volume_id: "models@latest".into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(reader()),
        readonly: true,
        ..Default::default()
    };
    csi.node_publish_volume(publish.clone()).await.unwrap();
    assert!(mounts_at(&target).last().unwrap().read_only);

    // A pod has a file open and has read some of it.
    let file = target.join("models/llama/weights.bin");
    let mut open = std::fs::File::open(&file).unwrap();
    assert_eq!(read_at(&mut open, 0, 4096), whole[..4096]);

    // A read is in flight in the plugin (the chunkservers hold it) when
    // the plugin dies; another read starts while no plugin runs. Both
    // complete with the right bytes once a new plugin takes over: the
    // kernel resends the first, the second was still queued.
    // A leaf over the same version, with a file open for writing.
    let leaf = common::plugin::create_leaf(&node, "pvc-scratch", "models").await;
    let (leaf_staging, leaf_target) = (dir.path().join("leaf-staging"), dir.path().join("pod/leaf"));
    std::fs::create_dir_all(&leaf_staging).unwrap();
    csi.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: leaf.volume_id.clone(),
        staging_target_path: leaf_staging.display().to_string(),
        volume_capability: Some(writer()),
        ..Default::default()
    })
    .await
    .unwrap();
    csi.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: leaf.volume_id.clone(),
        staging_target_path: leaf_staging.display().to_string(),
        target_path: leaf_target.display().to_string(),
        volume_capability: Some(writer()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut log = std::fs::File::create(leaf_target.join("train.log")).unwrap();
    std::io::Write::write_all(&mut log, b"epoch 1\n").unwrap();
    // A scratch file the pod unlinked but still holds open.
    let scratch_path = leaf_target.join("scratch.tmp");
    let mut scratch = std::fs::OpenOptions::new().create_new(true).read(true).write(true).open(&scratch_path).unwrap();
    std::io::Write::write_all(&mut scratch, b"unlinked but open").unwrap();
    scratch.sync_all().unwrap();
    std::fs::remove_file(&scratch_path).unwrap();

    cluster.hang(true).await;
    let (mut f1, w1) = (open.try_clone().unwrap(), whole.clone());
    let in_flight = std::thread::spawn(move || read_at(&mut f1, 3_000_000, 500_000) == w1[3_000_000..3_500_000]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cluster.in_flight().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the read never reached the chunkservers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    plugin.kill();
    cluster.hang(false).await;
    let (mut f2, w2) = (open.try_clone().unwrap(), whole.clone());
    let queued = std::thread::spawn(move || read_at(&mut f2, 4_200_000, 300_000) == w2[4_200_000..4_500_000]);
    let _plugin = node.start_plugin(1);
    let mut csi = node.client().await;
    let both = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || (in_flight.join().unwrap(), queued.join().unwrap())),
    )
    .await
    .expect("a read was left hanging")
    .unwrap();
    assert_eq!(both, (true, true), "reads across the restart return the right bytes");
    assert!(!node.log().contains("cannot resend"), "this kernel resends");

    // The same open file, and the mount, work as before.
    let (t, w, s) = (target.clone(), whole.clone(), src.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        assert_eq!(read_at(&mut open, 1_500_000, 700_000), w[1_500_000..2_200_000]);
        assert_eq!(std::fs::read_dir(t.join("models")).unwrap().count(), 41);
        let name = "models/config-07.json";
        assert_eq!(std::fs::read(t.join(name)).unwrap(), std::fs::read(s.join(name)).unwrap());
    })
    .await
    .unwrap();
    // The file open for writing on the leaf too.
    let lt = leaf_target.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        log.write_all(b"epoch 2\n").unwrap();
        log.sync_all().unwrap();
        assert_eq!(std::fs::read_to_string(lt.join("train.log")).unwrap(), "epoch 1\nepoch 2\n");
        assert_eq!(std::fs::read(lt.join("models/config-01.json")).unwrap().len(), 60, "the root under the leaf");
        // Read from the leaf, not a page kept from before the restart.
        std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        assert_eq!(read_at(&mut scratch, 0, 17), b"unlinked but open", "the successor kept the unlinked file");
        assert!(!lt.join("scratch.tmp").exists());
    })
    .await
    .unwrap();
    csi.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: leaf.volume_id.clone(),
        target_path: leaf_target.display().to_string(),
    })
    .await
    .unwrap();
    csi.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: leaf.volume_id.clone(),
        staging_target_path: leaf_staging.display().to_string(),
    })
    .await
    .unwrap();
    ControllerClient::new(csi_channel(&node.socket()).await.unwrap())
        .delete_volume(csi::DeleteVolumeRequest { volume_id: leaf.volume_id, ..Default::default() })
        .await
        .unwrap();

    // The control API: the volume's read mode switches, its throughput shows.
    let control = node.metrics_addr(1);
    let listing = http(&control, "GET", "/volumes", "").await;
    assert!(
        listing.contains("\"volume\":\"models@latest\"") && listing.contains("\"read_mode\":\"hedged\""),
        "{listing}"
    );
    // A root whose fileset has a read mode (from its Priority) starts in it.
    let tools_staging = dir.path().join("tools-staging");
    std::fs::create_dir_all(&tools_staging).unwrap();
    let tools = csi::NodeStageVolumeRequest {
        volume_id: "tools@latest".into(),
        staging_target_path: tools_staging.display().to_string(),
        volume_capability: Some(reader()),
        ..Default::default()
    };
    csi.node_stage_volume(tools.clone()).await.unwrap();
    let listing = http(&control, "GET", "/volumes", "").await;
    let volumes: serde_json::Value = serde_json::from_str(listing.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let mode_of = |v: &str| {
        let list = volumes.as_array().or_else(|| volumes["volumes"].as_array()).expect("a list of volumes");
        list.iter().find(|x| x["volume"] == v).map(|x| x["read_mode"].clone())
    };
    assert_eq!(mode_of("tools@latest"), Some("accelerated".into()), "{listing}");
    assert_eq!(mode_of("models@latest"), Some("hedged".into()), "the plugin's default: {listing}");
    csi.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: "tools@latest".into(),
        staging_target_path: tools_staging.display().to_string(),
    })
    .await
    .unwrap();
    assert!(http(&control, "PUT", "/volumes/models@latest/read-mode", "accelerated").await.starts_with("HTTP/1.1 200"));
    assert!(http(&control, "PUT", "/volumes/models@latest/read-mode", "fast").await.starts_with("HTTP/1.1 400"));
    assert!(http(&control, "GET", "/volumes/none/throughput", "").await.starts_with("HTTP/1.1 404"));
    let tp = http(&control, "GET", "/volumes/models@latest/throughput", "").await;
    let body: serde_json::Value = serde_json::from_str(tp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["read_bytes_per_sec"].as_f64().unwrap() > 0.0, "{tp}");
    assert!(http(&control, "GET", "/volumes", "").await.contains("\"read_mode\":\"accelerated\""));

    // Node calls repeated after a restart are answered from the saved state.
    csi.node_publish_volume(publish).await.unwrap();
    assert_eq!(mounts_at(&target).len(), 1, "publishing again does not stack mounts");

    // Unpublish and unstage: every mount goes, and the keeper lets go.
    csi.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: "models@latest".into(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    csi.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: "models@latest".into(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
    assert!(mounts_at(&target).is_empty() && mounts_at(&staging).is_empty());
    assert!(!target.exists(), "the target path is removed");
    let roots = dir.path().join("state/roots");
    assert_eq!(std::fs::read_dir(&roots).unwrap().count(), 0, "no root mount left");
    let keeper = KeeperClient::new(&dir.path().join("keeper.sock"));
    assert!(tokio::task::spawn_blocking(move || keeper.list().unwrap()).await.unwrap().is_empty());
}

/// A large file passed through to the node's file store is read by the
/// kernel directly: it keeps reading while no plugin runs at all, and the
/// successor, finding the open recorded, opens it again the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_through_files_read_while_no_plugin_runs() {
    use sha2::Digest;
    let cluster = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    cluster.put("models", src.path()).await;
    let whole = std::fs::read(src.path().join("models/llama/weights.bin")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&whole));

    let dir = tempfile::tempdir().unwrap();
    let node = Node { dir: dir.path().to_path_buf(), master: cluster.master_addr() };
    let _keeper = node.start_keeper();
    let mut plugin = node.start_plugin(0);
    let mut csi = node.client().await;
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let stage = csi::NodeStageVolumeRequest {
        volume_id: "models@latest".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(reader()),
        ..Default::default()
    };
    csi.node_stage_volume(stage.clone()).await.unwrap();
    let file = staging.join("models/llama/weights.bin");

    // The first open reads through the plugin and has the file stored whole.
    assert_eq!(std::fs::read(&file).unwrap(), whole);
    let stored = dir.path().join("state/files").join(&sha);
    let io = std::fs::read_dir(dir.path().join("state/io")).unwrap().next().unwrap().unwrap().path();
    // The io table's records are 32 bytes, starting with an inode's open
    // counts: (served by the plugin, passed through).
    let open_counts = |io: &std::path::Path| -> Vec<(u32, u32)> {
        let word = |r: &[u8], i: usize| u32::from_ne_bytes(r[i * 4..i * 4 + 4].try_into().unwrap());
        std::fs::read(io).unwrap().chunks(32).map(|r| (word(r, 0), word(r, 1))).collect()
    };
    let settled = |want_stored: bool| {
        let (stored, io) = (stored.clone(), io.clone());
        async move {
            // The store's rename and the RELEASE of the closed open happen in
            // the plugin after read and close return here.
            for _ in 0..2000 {
                let closed = open_counts(&io).iter().all(|c| *c == (0, 0));
                if closed && stored.exists() == want_stored {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the plugin never recorded the release or stored the file");
        }
    };
    settled(true).await;

    // Opened now, it is passed through: with the page cache dropped and the
    // plugin killed, every byte still reads, from the stored file. The
    // store's index learns of the file after its rename and the directory's
    // fsync, so an open in between is still served by the plugin: reopen
    // until the open's record says passthrough.
    let passed_through = |io: &std::path::Path| open_counts(io).iter().any(|c| c.1 > 0);
    let mut open = std::fs::File::open(&file).unwrap();
    for _ in 0..100 {
        if passed_through(&io) {
            break;
        }
        drop(open);
        settled(true).await;
        open = std::fs::File::open(&file).unwrap();
    }
    assert!(passed_through(&io), "the stored file is never passed through");
    assert_eq!(read_at(&mut open, 0, 4096), whole[..4096]);
    plugin.kill();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let (mut f, w) = (open.try_clone().unwrap(), whole.clone());
    let read = std::thread::spawn(move || read_at(&mut f, 0, w.len()) == w);
    let finished =
        tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(move || read.join().unwrap()));
    assert!(finished.await.expect("a passed-through read needs no plugin").unwrap(), "bit-exact");

    // The successor takes the connection over with the record of the open:
    // a second open of the same file shares its backing file.
    let _plugin = node.start_plugin(1);
    let mut csi = node.client().await;
    let mut second = std::fs::File::open(&file).expect("the successor opens it the same way");
    assert_eq!(read_at(&mut second, 1_000_000, 100_000), whole[1_000_000..1_100_000]);
    drop((open, second));
    csi.node_stage_volume(stage).await.unwrap();
    csi.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: "models@latest".into(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
    assert!(mounts_at(&staging).is_empty());
}
