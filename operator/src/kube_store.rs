//! The master's metadata store on Kubernetes: records as `MasterRecord`
//! objects in the operator's namespace.
//!
//! A fileset is one object. A version is a head (its record without the data
//! items) plus parts holding the item list, at most [`ITEMS_PER_PART`] items
//! each, so a version of any size stays below the apiserver's object size
//! limit. Parts are written before the head and the head is deleted before
//! the parts: a version is listed only when all of it is stored, which keeps
//! publishing atomic as the trait requires.
//!
//! [`MetaStore`] is synchronous (the embedded store fsyncs in place; the
//! master calls it on a blocking thread, never under its state's lock), so
//! calls are carried to a thread of their own that runs the async client and
//! sends the answer back.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;

use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tessera_core::ids::ItemId;

use tessera_api::crd::{MasterRecord, MasterRecordSpec, RecordKind};
use tessera_master::records::{FilesetRecord, ItemRecord, VersionRecord};
use tessera_master::store::{MetaStore, StoreError};

/// Items per part object: 20 000 x 48 hex digits is under 1 MB.
pub const ITEMS_PER_PART: usize = 20_000;

use tessera_api::keys::{RECORD_FILESET_LABEL as LABEL_FILESET, RECORD_KIND_LABEL as LABEL_KIND};

type Job = Box<dyn FnOnce(Api<MasterRecord>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Records in `MasterRecord` objects of one namespace.
#[derive(Debug)]
pub struct KubeStore {
    jobs: mpsc::Sender<Job>,
}

impl KubeStore {
    /// A store in `namespace`, served by a thread of its own with its own
    /// client: callers block on it (from the master's blocking threads), so
    /// it must not need any task of their runtime to make progress.
    pub fn new(config: kube::Config, namespace: &str) -> Result<Self, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::backend("starting the store"))?;
        let client = {
            let _guard = runtime.enter();
            Client::try_from(config).map_err(StoreError::backend("starting the store"))?
        };
        let api: Api<MasterRecord> = Api::namespaced(client, namespace);
        std::thread::Builder::new()
            .name("kube-store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    runtime.block_on(job(api.clone()));
                }
            })
            .map_err(StoreError::backend("starting the store"))?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the store's thread and waits for its answer.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Api<MasterRecord>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |api| {
            Box::pin(async move {
                let _ = tx.send(f(api).await);
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::Stopped("the kube-store thread has stopped".into()))?;
        rx.recv().map_err(|_| StoreError::Stopped("the kube-store thread has stopped".into()))?
    }
}

fn fileset_name(name: &str) -> String {
    format!("fs-{name}")
}

fn version_name(fileset: &str, id: u64) -> String {
    format!("v-{fileset}-{id}")
}

fn record(name: String, spec: MasterRecordSpec) -> MasterRecord {
    let kind = match spec.kind {
        RecordKind::Fileset => "fileset",
        RecordKind::Version => "version",
        RecordKind::Items => "items",
    };
    let labels =
        BTreeMap::from([(LABEL_FILESET.to_string(), spec.fileset.clone()), (LABEL_KIND.to_string(), kind.into())]);
    MasterRecord { metadata: ObjectMeta { name: Some(name), labels: Some(labels), ..Default::default() }, spec }
}

/// Creates the object, or replaces it if it exists.
async fn upsert(api: &Api<MasterRecord>, mut obj: MasterRecord) -> Result<(), StoreError> {
    let name = obj.name_any();
    match api.get_opt(&name).await.map_err(StoreError::backend("writing a record"))? {
        Some(existing) => {
            obj.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &obj).await.map_err(StoreError::backend("writing a record"))?;
        }
        None => {
            api.create(&PostParams::default(), &obj).await.map_err(StoreError::backend("writing a record"))?;
        }
    }
    Ok(())
}

async fn delete(api: &Api<MasterRecord>, name: &str) -> Result<(), StoreError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if crate::error::is_status(&e, http::StatusCode::NOT_FOUND) => Ok(()),
        Err(e) => Err(StoreError::backend("deleting a record")(e)),
    }
}

fn encode_items(items: &[ItemRecord]) -> String {
    let mut out = String::with_capacity(items.len() * 48);
    for i in items {
        out.push_str(&i.id.to_string());
        out.push_str(&format!("{:016x}", i.len));
    }
    out
}

fn decode_items(key: &str, text: &str) -> Result<Vec<ItemRecord>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt { key: key.to_string(), reason: reason.to_string() };
    if !text.len().is_multiple_of(48) {
        return Err(corrupt("item list length is not a multiple of 48"));
    }
    (0..text.len() / 48)
        .map(|i| {
            let chunk = &text[i * 48..(i + 1) * 48];
            let id: ItemId = chunk[..32].parse().map_err(|_| corrupt("bad item id"))?;
            let len = u64::from_str_radix(&chunk[32..], 16).map_err(|_| corrupt("bad item length"))?;
            Ok(ItemRecord { id, len })
        })
        .collect()
}

impl MetaStore for KubeStore {
    fn put_fileset(&self, f: &FilesetRecord) -> Result<(), StoreError> {
        let data = serde_json::to_string(f).map_err(StoreError::backend("writing a fileset"))?;
        let obj = record(
            fileset_name(f.name.as_str()),
            MasterRecordSpec {
                kind: RecordKind::Fileset,
                fileset: f.name.to_string(),
                version: None,
                part: None,
                data,
            },
        );
        self.call(move |api| async move { upsert(&api, obj).await })
    }

    fn list_filesets(&self) -> Result<Vec<FilesetRecord>, StoreError> {
        self.call(|api| async move {
            let list = api
                .list(&ListParams::default().labels(&format!("{LABEL_KIND}=fileset")))
                .await
                .map_err(StoreError::backend("listing filesets"))?;
            list.items
                .iter()
                .map(|r| {
                    serde_json::from_str(&r.spec.data)
                        .map_err(|e| StoreError::Corrupt { key: r.name_any(), reason: e.to_string() })
                })
                .collect()
        })
    }

    fn delete_fileset(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |api| async move {
            // Version heads first, so no version is half-listed meanwhile.
            for kind in ["version", "items", "fileset"] {
                let lp = ListParams::default().labels(&format!("{LABEL_FILESET}={name},{LABEL_KIND}={kind}"));
                for r in api.list(&lp).await.map_err(StoreError::backend("listing filesets"))?.items {
                    delete(&api, &r.name_any()).await?;
                }
            }
            Ok(())
        })
    }

    fn put_version(&self, v: &VersionRecord) -> Result<(), StoreError> {
        let mut head = v.clone();
        let items = std::mem::take(&mut head.items);
        let parts: Vec<String> = items.chunks(ITEMS_PER_PART).map(encode_items).collect();
        let data = serde_json::to_string(&head).map_err(StoreError::backend("writing a version"))?;
        let base = version_name(v.fileset.as_str(), v.id);
        let (fileset, id) = (v.fileset.to_string(), v.id);
        self.call(move |api| async move {
            for (i, part) in parts.iter().enumerate() {
                let spec = MasterRecordSpec {
                    kind: RecordKind::Items,
                    fileset: fileset.clone(),
                    version: Some(id),
                    part: Some(i as u32),
                    data: part.clone(),
                };
                upsert(&api, record(format!("{base}.p{i}"), spec)).await?;
            }
            let spec = MasterRecordSpec {
                kind: RecordKind::Version,
                fileset,
                version: Some(id),
                part: Some(parts.len() as u32),
                data,
            };
            upsert(&api, record(base, spec)).await
        })
    }

    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.call(|api| async move {
            let heads = api
                .list(&ListParams::default().labels(&format!("{LABEL_KIND}=version")))
                .await
                .map_err(StoreError::backend("listing versions"))?;
            let parts = api
                .list(&ListParams::default().labels(&format!("{LABEL_KIND}=items")))
                .await
                .map_err(StoreError::backend("listing versions"))?;
            let by_name: BTreeMap<String, &MasterRecord> = parts.items.iter().map(|p| (p.name_any(), p)).collect();
            let mut out = Vec::new();
            for h in &heads.items {
                let key = h.name_any();
                let mut v: VersionRecord = serde_json::from_str(&h.spec.data)
                    .map_err(|e| StoreError::Corrupt { key: key.clone(), reason: e.to_string() })?;
                for i in 0..h.spec.part.unwrap_or(0) {
                    let part_name = format!("{key}.p{i}");
                    let p = by_name.get(&part_name).ok_or_else(|| StoreError::Corrupt {
                        key: key.clone(),
                        reason: format!("item part {part_name} is missing"),
                    })?;
                    v.items.extend(decode_items(&part_name, &p.spec.data)?);
                }
                out.push(v);
            }
            Ok(out)
        })
    }

    fn delete_version(&self, fileset: &str, id: u64) -> Result<(), StoreError> {
        let base = version_name(fileset, id);
        let (fileset, id) = (fileset.to_string(), id);
        self.call(move |api| async move {
            delete(&api, &base).await?;
            let lp = ListParams::default().labels(&format!("{LABEL_FILESET}={fileset},{LABEL_KIND}=items"));
            for r in api.list(&lp).await.map_err(StoreError::backend("listing versions"))?.items {
                if r.spec.version == Some(id) {
                    delete(&api, &r.name_any()).await?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_lists_round_trip_and_bad_ones_are_named() {
        let items: Vec<ItemRecord> =
            (0..100u64).map(|i| ItemRecord { id: ItemId([i as u8; 16]), len: i * 6 * 1048576 + 1 }).collect();
        let text = encode_items(&items);
        assert_eq!(text.len(), 100 * 48);
        assert_eq!(decode_items("p", &text).unwrap(), items);
        let err = decode_items("v-a-1.p0", &text[..47]).unwrap_err();
        assert!(err.to_string().contains("v-a-1.p0"), "{err}");
    }
}
