//! A fileset's read policy, as its Priority sets it in the master, reaches
//! the node plugin's reads: a root of a fileset whose readers ask for every
//! parity stripe up front (`extraStripes: m`) fetches k + m stripes per unit
//! where a root of the same files without it fetches k.

mod common;

use common::plugin::{Node, reader};
use tessera_csi::csi;
use tessera_proto::ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fileset_hedge_tuning_sets_how_many_stripes_a_root_asks_for() {
    let cluster = common::Cluster::start().await;
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let hedged = |extra_stripes| ms::FilesetSpec {
        read_mode: "hedged".into(),
        // A hedge delay no read here reaches, so no read hedges by time and
        // the stripes asked for are the ones asked for up front.
        hedge: Some(ms::HedgeTuning { delay_min_ms: 30_000, delay_max_ms: 30_000, extra_stripes }),
        ..Default::default()
    };
    cluster.put_with("plain", src.path(), hedged(0)).await;
    // RS(4,2): two extra stripes is every parity stripe.
    cluster.put_with("eager", src.path(), hedged(2)).await;
    let whole = std::fs::read(src.path().join("models/llama/weights.bin")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let node = Node { dir: dir.path().to_path_buf(), master: cluster.master_addr() };
    let _keeper = node.start_keeper();
    // No file store: every read goes through the root's own fetches.
    let _plugin = node.start_plugin_with(0, &["--file-store-size=0"]);
    let mut csi = node.client().await;
    let mut requests = Vec::new();
    for fileset in ["plain", "eager"] {
        let staging = dir.path().join(format!("staging-{fileset}"));
        csi.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: format!("{fileset}@latest"),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(reader()),
            ..Default::default()
        })
        .await
        .unwrap();
        let before = cluster.served().await;
        let path = staging.join("models/llama/weights.bin");
        let got = tokio::task::spawn_blocking(move || std::fs::read(path).unwrap()).await.unwrap();
        assert!(got == whole, "{fileset}: the file reads back exact");
        requests.push(cluster.served().await - before);
    }
    let (plain, eager) = (requests[0] as f64, requests[1] as f64);
    // k + m = 6 stripes per unit against k = 4: 1.5x, less what both share.
    assert!(eager >= 1.3 * plain, "stripe requests: plain {plain}, eager {eager}");
}
