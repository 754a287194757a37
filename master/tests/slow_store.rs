//! A slow metadata store never stalls the master's readers: with a record
//! write held inside the store, other clients' Locate (GetVersion), Status
//! and ListFilesets calls are answered, and they see only what is durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tessera_master::MasterConfig;
use tessera_master::records::{FilesetRecord, VersionRecord};
use tessera_master::server::{self, Config};
use tessera_master::store::{MemStore, MetaStore, StoreError};
use tessera_proto::ms;
use tessera_proto::ms::master_client::MasterClient;
use tessera_proto::ms::registry_client::RegistryClient;
use tonic::transport::Channel;

/// A store whose writes, once the gate is shut, announce themselves and wait
/// until the test opens it again.
#[derive(Debug)]
struct GatedStore {
    inner: MemStore,
    shut: Mutex<bool>,
    opened: Condvar,
    entered: Mutex<mpsc::Sender<&'static str>>,
    /// Writes fail while set.
    fail: AtomicBool,
}

impl GatedStore {
    fn new() -> (Arc<Self>, mpsc::Receiver<&'static str>) {
        let (tx, rx) = mpsc::channel();
        let store = Self {
            inner: MemStore::default(),
            shut: Mutex::new(false),
            opened: Condvar::new(),
            entered: Mutex::new(tx),
            fail: AtomicBool::new(false),
        };
        (Arc::new(store), rx)
    }

    fn set_shut(&self, shut: bool) {
        *self.shut.lock().unwrap() = shut;
        self.opened.notify_all();
    }

    fn gate(&self, what: &'static str) -> Result<(), StoreError> {
        let mut shut = self.shut.lock().unwrap();
        if *shut {
            let _ = self.entered.lock().unwrap().send(what);
        }
        while *shut {
            shut = self.opened.wait(shut).unwrap();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Stopped("the test fails this write".into()));
        }
        Ok(())
    }
}

impl MetaStore for GatedStore {
    fn put_fileset(&self, f: &FilesetRecord) -> Result<(), StoreError> {
        self.gate("put_fileset")?;
        self.inner.put_fileset(f)
    }
    fn list_filesets(&self) -> Result<Vec<FilesetRecord>, StoreError> {
        self.inner.list_filesets()
    }
    fn delete_fileset(&self, name: &str) -> Result<(), StoreError> {
        self.gate("delete_fileset")?;
        self.inner.delete_fileset(name)
    }
    fn put_version(&self, v: &VersionRecord) -> Result<(), StoreError> {
        self.gate("put_version")?;
        self.inner.put_version(v)
    }
    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.inner.list_versions()
    }
    fn delete_version(&self, fileset: &str, id: u64) -> Result<(), StoreError> {
        self.gate("delete_version")?;
        self.inner.delete_version(fileset, id)
    }
}

struct OpenOnDrop(Arc<GatedStore>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set_shut(false);
    }
}

async fn client(addr: std::net::SocketAddr) -> MasterClient<Channel> {
    MasterClient::connect(format!("http://{addr}")).await.unwrap()
}

fn spec(name: &str) -> ms::FilesetSpec {
    ms::FilesetSpec {
        name: name.into(),
        layout: Some(ms::Layout { k: 2, m: 1, stripe_unit: 4096, block_size: 4096 }),
        placement: Some(ms::PlacementPolicy { level: "node".into(), max_per_domain: 1 }),
        ..Default::default()
    }
}

/// Publishes a one-item version of `fileset` on the registered servers.
async fn publish(c: &mut MasterClient<Channel>, fileset: &str) -> ms::Version {
    let session =
        c.begin_version(ms::BeginVersionRequest { fileset: fileset.into() }).await.unwrap().into_inner().session;
    let items = c
        .allocate_items(ms::AllocateItemsRequest {
            session: session.clone(),
            count: 2,
            stripe_length: 4096,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    let r = |i: &ms::ItemLocation| ms::ItemRef { item: i.item.clone(), length: 8192, ..Default::default() };
    c.commit_version(ms::CommitVersionRequest {
        session,
        items: vec![r(&items[1])],
        manifest: Some(ms::ManifestRef { items: vec![r(&items[0])], length: 8192, sha256: vec![0; 32].into() }),
        files: 1,
        bytes: 8192,
    })
    .await
    .unwrap()
    .into_inner()
}

/// A master on `store` with three servers registered (`cs<i>` at port
/// 1 + i, a node each); returns it, its registry client and its epoch.
async fn start(store: &Arc<GatedStore>, dir: &std::path::Path) -> (server::Running, RegistryClient<Channel>, String) {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        metrics_listen: None,
        // The servers never heartbeat unless a test sends one: keep them live.
        master: MasterConfig { heartbeat_timeout: Duration::from_secs(600), ..Default::default() },
    };
    let running = server::start_with_store(config, store.clone()).await.unwrap();
    let mut registry = RegistryClient::connect(format!("http://{}", running.addr)).await.unwrap();
    let mut epoch = String::new();
    for i in 0..3 {
        let r = ms::RegisterRequest {
            server_id: format!("cs{i}"),
            address: format!("127.0.0.1:{}", 1 + i),
            topology: Some(ms::Topology { node: format!("n{i}"), ..Default::default() }),
            free_bytes: 1 << 30,
            total_bytes: 1 << 30,
        };
        epoch = registry.register(r).await.unwrap().into_inner().master_epoch;
    }
    (running, registry, epoch)
}

// Several threads: a reader stuck on the master's lock must not also stop
// the timer that turns the stuck test into a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_answered_while_a_record_write_is_held_in_the_store() {
    let (store, entered) = GatedStore::new();
    // Which write the store is holding, once it holds one.
    let entered = Arc::new(Mutex::new(entered));
    let held = || {
        let entered = entered.clone();
        async move { tokio::task::spawn_blocking(move || entered.lock().unwrap().recv().unwrap()).await.unwrap() }
    };
    let dir = tempfile::tempdir().unwrap();
    let (running, _registry, _epoch) = start(&store, dir.path()).await;
    let addr = running.addr;
    let mut reader = client(addr).await;
    reader.create_fileset(ms::CreateFilesetRequest { spec: Some(spec("data")), if_absent: false }).await.unwrap();
    let published = publish(&mut reader, "data").await;

    // Shut the gate: the next record write stops inside the store. (It opens
    // again if the test fails: the runtime waits for the held thread.)
    store.set_shut(true);
    let _open_on_failure = OpenOnDrop(store.clone());
    let mut writer = client(addr).await;
    let create = tokio::spawn(async move {
        writer.create_fileset(ms::CreateFilesetRequest { spec: Some(spec("more")), if_absent: false }).await
    });
    let what = held().await;
    assert_eq!(what, "put_fileset");

    // The write is held (it cannot finish before the gate opens), and
    // other clients are answered meanwhile. (The bound only turns a reader
    // stuck behind the write into a failure instead of a hang.)
    let reads = async {
        let located = reader
            .get_version(ms::GetVersionRequest { fileset: "data".into(), version: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(located.version.as_ref().unwrap().id, published.id);
        assert_eq!(located.locations.len(), 2);
        assert!(located.locations.iter().all(|l| l.servers.iter().all(|s| !s.is_empty())), "{located:?}");
        let status = reader.status(ms::StatusRequest { fileset: String::new() }).await.unwrap().into_inner();
        assert_eq!(status.servers.len(), 3);
        let listed = reader.list_filesets(ms::ListFilesetsRequest {}).await.unwrap().into_inner();
        let names: Vec<String> = listed.filesets.iter().map(|f| f.spec.as_ref().unwrap().name.clone()).collect();
        assert_eq!(names, vec!["data"], "a fileset not yet durable is not listed");
    };
    tokio::time::timeout(Duration::from_secs(60), reads).await.expect("readers waited for the held write");
    assert!(!create.is_finished(), "the held write was answered before it was durable");

    // Open the gate: the write completes, and only now is it visible.
    store.set_shut(false);
    let created = create.await.unwrap().unwrap().into_inner();
    assert_eq!(created.spec.unwrap().name, "more");
    let listed = reader.list_filesets(ms::ListFilesetsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.filesets.len(), 2);

    // A writer that gives up while its write is held (its deadline passed):
    // the change is not left half done. Once the store takes it, the
    // fileset is there, and the next change is made after it.
    store.set_shut(true);
    // (The caller is the master's API itself, so that dropping it drops its
    // future: a gRPC server may or may not drop a handler whose client left.)
    let master = running.master.clone();
    let late = FilesetRecord::from_spec(&spec("late"), 1).unwrap();
    let gave_up = tokio::spawn(async move { master.create_fileset(late, false).await });
    assert_eq!(held().await, "put_fileset");
    gave_up.abort();
    let _ = gave_up.await;
    store.set_shut(false);
    let next = reader.create_fileset(ms::CreateFilesetRequest { spec: Some(spec("after")), if_absent: false }).await;
    next.unwrap();
    let listed = reader.list_filesets(ms::ListFilesetsRequest {}).await.unwrap().into_inner();
    let mut names: Vec<String> = listed.filesets.iter().map(|f| f.spec.as_ref().unwrap().name.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["after", "data", "late", "more"], "the abandoned create was applied");

    // A store that fails a write: the caller hears so and nothing changes.
    store.fail.store(true, Ordering::SeqCst);
    let err = reader.create_fileset(ms::CreateFilesetRequest { spec: Some(spec("broken")), if_absent: false }).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::Unavailable);
    store.fail.store(false, Ordering::SeqCst);
    let listed = reader.list_filesets(ms::ListFilesetsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.filesets.len(), 4, "a failed write changed nothing");
    running.shutdown().await.unwrap();
}

/// A stripe its server quarantines while the version's record is being
/// written (the store holds the write): the commit, once durable, does not
/// locate it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_quarantined_while_its_commit_is_written_is_not_located() {
    quarantined_during_commit(false).await;
}

/// The same with the write session ended meanwhile (its lease ran out, or
/// its writer aborted it): the quarantine is still charged to the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_during_a_commit_whose_session_ended_is_kept() {
    quarantined_during_commit(true).await;
}

async fn quarantined_during_commit(abort_meanwhile: bool) {
    let (store, entered) = GatedStore::new();
    let dir = tempfile::tempdir().unwrap();
    let (running, mut registry, epoch) = start(&store, dir.path()).await;
    let addr = running.addr;
    let mut c = client(addr).await;
    c.create_fileset(ms::CreateFilesetRequest { spec: Some(spec("data")), if_absent: false }).await.unwrap();
    let session =
        c.begin_version(ms::BeginVersionRequest { fileset: "data".into() }).await.unwrap().into_inner().session;
    let alloc =
        ms::AllocateItemsRequest { session: session.clone(), count: 2, stripe_length: 4096, ..Default::default() };
    let items = c.allocate_items(alloc).await.unwrap().into_inner().items;
    let r = |i: &ms::ItemLocation| ms::ItemRef { item: i.item.clone(), length: 8192, ..Default::default() };
    let session_id = session.clone();
    let commit = ms::CommitVersionRequest {
        session,
        items: vec![r(&items[1])],
        manifest: Some(ms::ManifestRef { items: vec![r(&items[0])], length: 8192, sha256: vec![0; 32].into() }),
        files: 1,
        bytes: 8192,
    };
    store.set_shut(true);
    let _open_on_failure = OpenOnDrop(store.clone());
    let committing = tokio::spawn(async move { c.commit_version(commit).await });
    let what = tokio::task::spawn_blocking(move || entered.recv().unwrap()).await.unwrap();
    assert_eq!(what, "put_version");

    // Stripe 0 of the data item, on the server it was placed on, fails its
    // scrub now: the server reports it in its next heartbeat.
    let holder = items[1].servers[0].clone();
    let port: usize = holder.rsplit(':').next().unwrap().parse().unwrap();
    let stripe = tessera_proto::cs::StripeRef { item: items[1].item.clone(), index: 0 };
    let beat = ms::HeartbeatRequest {
        server_id: format!("cs{}", port - 1),
        master_epoch: epoch,
        free_bytes: 1 << 30,
        total_bytes: 1 << 30,
        removed: vec![stripe.clone()],
        quarantined: vec![stripe],
        ..Default::default()
    };
    if abort_meanwhile {
        // Only the commit being written owns the items now.
        running.master.abort_version(&session_id);
    }
    assert!(!registry.heartbeat(beat).await.unwrap().into_inner().reregister);

    store.set_shut(false);
    committing.await.unwrap().unwrap();
    let mut reader = client(addr).await;
    let located =
        reader.get_version(ms::GetVersionRequest { fileset: "data".into(), version: 0 }).await.unwrap().into_inner();
    let data = located.locations.iter().find(|l| l.item == items[1].item).unwrap();
    assert_eq!(data.servers[0], "", "the quarantined stripe is not located: {data:?}");
    assert!(data.servers[1..].iter().all(|s| !s.is_empty()));
    let status = reader.status(ms::StatusRequest { fileset: "data".into() }).await.unwrap().into_inner();
    assert_eq!(status.filesets[0].corrupt_stripes_found, 1);
    running.shutdown().await.unwrap();
}
