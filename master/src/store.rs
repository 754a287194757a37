//! Where the master keeps its durable records.
//!
//! [`MetaStore`] is the trait; [`RedbStore`] is the embedded implementation
//! used by `tessera local` (one file, transactions fsynced at commit). The
//! Kubernetes implementation (records in custom resources) comes with the
//! operator. Publishing a version is one write of one record: a version is
//! either stored whole or not at all.

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::records::{FilesetRecord, VersionRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Backend(String),
    #[error("metadata store holds a malformed record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
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
        let db = Database::create(path).map_err(backend)?;
        // Create the tables so readers never meet a missing one.
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(FILESETS).map_err(backend)?;
        tx.open_table(VERSIONS).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self { db })
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: String, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { key, reason: e.to_string() })
}

impl MetaStore for RedbStore {
    fn put_fileset(&self, f: &FilesetRecord) -> Result<(), StoreError> {
        let text = serde_json::to_string(f).map_err(backend)?;
        let tx = self.db.begin_write().map_err(backend)?;
        tx.open_table(FILESETS).map_err(backend)?.insert(f.name.as_str(), text.as_str()).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn list_filesets(&self) -> Result<Vec<FilesetRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(FILESETS).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            out.push(decode(format!("filesets/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    fn delete_fileset(&self, name: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut versions = tx.open_table(VERSIONS).map_err(backend)?;
            let ids: Vec<u64> = versions
                .range((name, 0)..=(name, u64::MAX))
                .map_err(backend)?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            for id in ids {
                versions.remove((name, id)).map_err(backend)?;
            }
            tx.open_table(FILESETS).map_err(backend)?.remove(name).map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn put_version(&self, v: &VersionRecord) -> Result<(), StoreError> {
        let text = serde_json::to_string(v).map_err(backend)?;
        let tx = self.db.begin_write().map_err(backend)?;
        tx.open_table(VERSIONS).map_err(backend)?.insert((v.fileset.as_str(), v.id), text.as_str()).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn list_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = tx.open_table(VERSIONS).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, v) = row.map_err(backend)?;
            let (f, id) = k.value();
            out.push(decode(format!("versions/{f}/{id}"), v.value())?);
        }
        Ok(out)
    }

    fn delete_version(&self, fileset: &str, id: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        tx.open_table(VERSIONS).map_err(backend)?.remove((fileset, id)).map_err(backend)?;
        tx.commit().map_err(backend)
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
            fileset: f.into(),
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
        let mut ids: Vec<(String, u64)> = s.list_versions().unwrap().into_iter().map(|v| (v.fileset, v.id)).collect();
        ids.sort();
        assert_eq!(ids, vec![("a".into(), 1), ("a".into(), 3), ("b".into(), 1)]);
        s.delete_fileset("a").unwrap();
        assert_eq!(s.list_filesets().unwrap().iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(s.list_versions().unwrap().len(), 1);
    }
}
