//! Where the master keeps its durable records.
//!
//! [`MetaStore`] is the trait; [`RedbStore`] is the embedded implementation
//! used by `tessera local` (one file, transactions fsynced at commit); the
//! operator implements it with `MasterRecord` objects. The master calls it
//! on a blocking thread and never under its state's lock. Publishing a version is one write of one record: a version is
//! either stored whole or not at all.

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use tessera_core::ids::FilesetName;

use crate::records::{FilesetRecord, VersionRecord};

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (disk, database or apiserver).
    #[error("metadata store: {op}: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: Cause,
    },
    #[error("metadata store holds a malformed record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The thread or task carrying the write went away (shutting down).
    #[error("metadata store stopped: {0}")]
    Stopped(String),
}

impl StoreError {
    /// Wraps a backend's error, naming the operation that failed.
    pub fn backend<E: Into<Cause>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
        move |e| StoreError::Backend { op, source: e.into() }
    }
}

/// One change to the durable records, decided by the master's state and
/// made by the store outside its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    PutFileset(FilesetRecord),
    /// The fileset and all its version records.
    DeleteFileset(FilesetName),
    PutVersion(VersionRecord),
    DeleteVersion {
        fileset: FilesetName,
        id: u64,
    },
}

/// Durable fileset and version records.
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    fn put_fileset(&self, f: &FilesetRecord) -> Result<(), StoreError>;
    fn list_filesets(&self) -> Result<Vec<FilesetRecord>, StoreError>;
    /// Deletes a fileset and all its version records.
    fn delete_fileset(&self, name: &str) -> Result<(), StoreError>;
    fn put_version(&self, v: &VersionRecord) -> Result<(), StoreError>;
    /// Every version of every fileset.
    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError>;
    fn delete_version(&self, fileset: &str, id: u64) -> Result<(), StoreError>;

    /// Makes one change durable.
    fn write(&self, w: &Write) -> Result<(), StoreError> {
        match w {
            Write::PutFileset(f) => self.put_fileset(f),
            Write::DeleteFileset(name) => self.delete_fileset(name.as_str()),
            Write::PutVersion(v) => self.put_version(v),
            Write::DeleteVersion { fileset, id } => self.delete_version(fileset.as_str(), *id),
        }
    }
}

const FILESETS: TableDefinition<'static, &str, &str> = TableDefinition::new("filesets");
const VERSIONS: TableDefinition<'static, (&str, u64), &str> = TableDefinition::new("versions");

/// Records in one redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open = || -> Result<Database, redb::Error> {
            let db = Database::create(path)?;
            // Create the tables so readers never meet a missing one.
            let tx = db.begin_write()?;
            tx.open_table(FILESETS)?;
            tx.open_table(VERSIONS)?;
            tx.commit()?;
            Ok(db)
        };
        Ok(Self { db: open().map_err(StoreError::backend("opening"))? })
    }

    /// Runs `f` in one write transaction and commits it (fsynced).
    fn write_tx(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let run = || -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            f(&tx)?;
            Ok(tx.commit()?)
        };
        run().map_err(StoreError::backend(op))
    }

    /// Every row of `table`, decoded; `key` names a row in errors.
    fn list<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        table: TableDefinition<'static, K, &'static str>,
        key: impl Fn(K::SelfType<'_>) -> String,
    ) -> Result<Vec<T>, StoreError> {
        let rows = || -> Result<Vec<(String, String)>, redb::Error> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(table)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((key(k.value()), v.value().to_string()));
            }
            Ok(out)
        };
        rows().map_err(StoreError::backend(op))?.into_iter().map(|(k, v)| decode(k, &v)).collect()
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: String, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { key, reason: e.to_string() })
}

fn encode<T: serde::Serialize>(op: &'static str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(StoreError::backend(op))
}

impl MetaStore for RedbStore {
    fn put_fileset(&self, f: &FilesetRecord) -> Result<(), StoreError> {
        let op = "writing a fileset";
        let text = encode(op, f)?;
        self.write_tx(op, |tx| {
            tx.open_table(FILESETS)?.insert(f.name.as_str(), text.as_str())?;
            Ok(())
        })
    }

    fn list_filesets(&self) -> Result<Vec<FilesetRecord>, StoreError> {
        self.list("listing filesets", FILESETS, |name| format!("filesets/{name}"))
    }

    fn delete_fileset(&self, name: &str) -> Result<(), StoreError> {
        self.write_tx("deleting a fileset", |tx| {
            let mut versions = tx.open_table(VERSIONS)?;
            let ids: Vec<u64> = versions
                .range((name, 0)..=(name, u64::MAX))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for id in ids {
                versions.remove((name, id))?;
            }
            tx.open_table(FILESETS)?.remove(name)?;
            Ok(())
        })
    }

    fn put_version(&self, v: &VersionRecord) -> Result<(), StoreError> {
        let op = "writing a version";
        let text = encode(op, v)?;
        self.write_tx(op, |tx| {
            tx.open_table(VERSIONS)?.insert((v.fileset.as_str(), v.id), text.as_str())?;
            Ok(())
        })
    }

    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.list("listing versions", VERSIONS, |(f, id)| format!("versions/{f}/{id}"))
    }

    fn delete_version(&self, fileset: &str, id: u64) -> Result<(), StoreError> {
        self.write_tx("deleting a version", |tx| {
            tx.open_table(VERSIONS)?.remove((fileset, id))?;
            Ok(())
        })
    }
}

/// Records in memory, for tests of the master's logic.
#[derive(Debug, Default)]
pub struct MemStore {
    filesets: Mutex<Vec<FilesetRecord>>,
    versions: Mutex<Vec<VersionRecord>>,
}

impl MetaStore for MemStore {
    fn put_fileset(&self, f: &FilesetRecord) -> Result<(), StoreError> {
        let mut v = self.filesets.lock().unwrap();
        v.retain(|x| x.name != f.name);
        v.push(f.clone());
        Ok(())
    }
    fn list_filesets(&self) -> Result<Vec<FilesetRecord>, StoreError> {
        Ok(self.filesets.lock().unwrap().clone())
    }
    fn delete_fileset(&self, name: &str) -> Result<(), StoreError> {
        self.filesets.lock().unwrap().retain(|x| x.name != name);
        self.versions.lock().unwrap().retain(|x| x.fileset != name);
        Ok(())
    }
    fn put_version(&self, r: &VersionRecord) -> Result<(), StoreError> {
        let mut v = self.versions.lock().unwrap();
        v.retain(|x| !(x.fileset == r.fileset && x.id == r.id));
        v.push(r.clone());
        Ok(())
    }
    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        Ok(self.versions.lock().unwrap().clone())
    }
    fn delete_version(&self, fileset: &str, id: u64) -> Result<(), StoreError> {
        self.versions.lock().unwrap().retain(|x| !(x.fileset == fileset && x.id == id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ItemRecord;
    use tessera_core::ids::ItemId;

    fn fileset(name: &str) -> FilesetRecord {
        FilesetRecord::from_spec(&tessera_proto::ms::FilesetSpec { name: name.into(), ..Default::default() }, 7)
            .unwrap()
    }

    fn version(f: &str, id: u64) -> VersionRecord {
        VersionRecord {
            fileset: f.parse().unwrap(),
            id,
            created_unix: 1,
            files: 1,
            bytes: 1,
            items: vec![ItemRecord { id: ItemId([id as u8; 16]), len: 1 }],
            manifest_items: vec![],
            manifest_len: 0,
            manifest_sha256: String::new(),
            pins: vec![],
        }
    }

    #[test]
    fn records_survive_reopening_and_deletes_cascade() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("meta.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.put_fileset(&fileset("a")).unwrap();
            s.put_fileset(&fileset("b")).unwrap();
            for id in 1..=3 {
                s.put_version(&version("a", id)).unwrap();
            }
            s.put_version(&version("b", 1)).unwrap();
            s.delete_version("a", 2).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.list_filesets().unwrap().len(), 2);
        let mut ids: Vec<(String, u64)> =
            s.list_versions().unwrap().into_iter().map(|v| (v.fileset.to_string(), v.id)).collect();
        ids.sort();
        assert_eq!(ids, vec![("a".into(), 1), ("a".into(), 3), ("b".into(), 1)]);
        s.delete_fileset("a").unwrap();
        assert_eq!(s.list_filesets().unwrap().iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(s.list_versions().unwrap().len(), 1);
    }
}
