//! The master's metadata store on a real apiserver.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use tessera_core::ids::ItemId;
use tessera_e2e::ControlPlane;
use tessera_master::records::{FilesetRecord, ItemRecord, VersionRecord};
use tessera_master::store::MetaStore;
use tessera_master::{Master, MasterConfig};
use tessera_operator::kube_store::{ITEMS_PER_PART, KubeStore};
use tessera_proto::ms;

fn version(fileset: &str, id: u64, items: usize) -> VersionRecord {
    let item = |i: usize| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        b[8..].copy_from_slice(&id.to_le_bytes());
        ItemRecord { id: ItemId(b), len: 6 << 20 }
    };
    VersionRecord {
        fileset: fileset.parse().unwrap(),
        id,
        created_unix: 1_800_000_000 + id,
        files: 1000,
        bytes: items as u64 * (6 << 20),
        items: (0..items).map(item).collect(),
        manifest_items: vec![item(usize::MAX >> 1)],
        manifest_len: 4096,
        manifest_sha256: "ab".repeat(32),
        pins: vec![],
    }
}

#[tokio::test]
async fn records_round_trip_through_custom_resources_of_any_size() {
    let cp = ControlPlane::start().await.unwrap();
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    let (ok, out, err) = cp.kubectl(&["apply", "--server-side", "-f", crds]).unwrap();
    assert!(ok, "{out}{err}");
    let ns = format!("tessera-store-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(cp.client());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    // CRDs need a moment to serve; the first call retries until they do.
    let store = Arc::new(KubeStore::new(cp.config(), &ns).unwrap());
    let fileset =
        FilesetRecord::from_spec(&ms::FilesetSpec { name: "models".into(), ..Default::default() }, 7).unwrap();
    let s = store.clone();
    let f = fileset.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while let Err(e) = s.put_fileset(&f) {
            assert!(std::time::Instant::now() < deadline, "{e}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    })
    .await
    .unwrap();

    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(s.list_filesets().unwrap(), vec![fileset.clone()]);
        // A version larger than one object can hold goes out in parts.
        let big = version("models", 1, 2 * ITEMS_PER_PART + 17);
        let small = version("models", 2, 3);
        s.put_version(&big).unwrap();
        s.put_version(&small).unwrap();
        let mut listed = s.list_versions().unwrap();
        listed.sort_by_key(|v| v.id);
        assert_eq!(listed, vec![big.clone(), small.clone()]);
        // Rewriting a record (a pin) keeps it whole.
        let mut pinned = big.clone();
        pinned.pins.push("pod/a".into());
        s.put_version(&pinned).unwrap();
        s.delete_version("models", 2).unwrap();
        assert_eq!(s.list_versions().unwrap(), vec![pinned.clone()]);

        // A master started on this store knows the fileset and version.
        let m = Master::new(s.clone() as Arc<dyn MetaStore>, MasterConfig::default()).unwrap();
        let versions = m.list_versions("models").unwrap();
        assert_eq!(versions.iter().map(|v| v.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(versions[0].items.len(), 2 * ITEMS_PER_PART + 17);

        s.delete_fileset("models").unwrap();
        assert!(s.list_filesets().unwrap().is_empty());
        assert!(s.list_versions().unwrap().is_empty());
    })
    .await
    .unwrap();
    let (_, left, _) = cp.kubectl(&["get", "masterrecords", "-n", &ns, "-o", "name"]).unwrap();
    assert_eq!(left.trim(), "", "every record was deleted");
}
