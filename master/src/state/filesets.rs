//! Filesets: created, changed by their Priority, listed, deleted.

use std::sync::Arc;
use tessera_core::read_plan::ReadMode;
use tessera_core::repair::Availability;

use tracing::info;

use super::{Deletion, Master, State, forget_version};
use crate::MasterError;
use crate::records::{FilesetRecord, HedgeTuning};
use crate::store::Write;

/// A fileset as clients see it: its record and its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesetView {
    pub record: FilesetRecord,
    /// 0 when it has none.
    pub latest_version: u64,
    pub versions: u32,
}

impl State {
    fn view(&self, f: &FilesetRecord) -> FilesetView {
        let ids: Vec<u64> = self.versions_of(f.name.as_str()).map(|v| v.id).collect();
        FilesetView { record: f.clone(), latest_version: ids.last().copied().unwrap_or(0), versions: ids.len() as u32 }
    }

    fn fileset(&self, name: &str) -> Result<&FilesetRecord, MasterError> {
        self.filesets.get(name).ok_or_else(|| MasterError::FilesetNotFound(name.into()))
    }
}

impl Master {
    /// Creates a fileset from a validated record. With `if_absent`, a
    /// fileset of that name and the same spec is not an error.
    pub async fn create_fileset(
        self: &Arc<Self>,
        record: FilesetRecord,
        if_absent: bool,
    ) -> Result<FilesetView, MasterError> {
        self.change(move |m| async move { m.create_fileset_in_turn(record, if_absent).await }).await
    }

    async fn create_fileset_in_turn(&self, record: FilesetRecord, if_absent: bool) -> Result<FilesetView, MasterError> {
        {
            let st = self.state.lock().unwrap();
            if let Some(existing) = st.filesets.get(&record.name) {
                if if_absent && existing.same_as(&record) {
                    return Ok(st.view(existing));
                }
                return Err(MasterError::FilesetExists(record.name.to_string()));
            }
        }
        self.persist(vec![Write::PutFileset(record.clone())]).await?;
        let mut st = self.state.lock().unwrap();
        info!(fileset = %record.name, k = record.k, m = record.m, "fileset created");
        st.filesets.insert(record.name.clone(), record.clone());
        Ok(st.view(&record))
    }

    /// Rewrites a fileset's record with `change` applied, if it changes it.
    /// Returns the new record if it changed.
    async fn change_fileset(
        self: &Arc<Self>,
        name: &str,
        change: impl FnOnce(&mut FilesetRecord) -> Result<(), MasterError> + Send + 'static,
    ) -> Result<Option<FilesetRecord>, MasterError> {
        let name = name.to_string();
        self.change(move |m| async move {
            let record = {
                let st = m.state.lock().unwrap();
                let before = st.fileset(&name)?;
                let mut after = before.clone();
                change(&mut after)?;
                if &after == before {
                    return Ok(None);
                }
                after
            };
            m.persist(vec![Write::PutFileset(record.clone())]).await?;
            m.state.lock().unwrap().filesets.insert(record.name.clone(), record.clone());
            Ok(Some(record))
        })
        .await
    }

    /// Changes how urgently a fileset's lost stripes are rebuilt (its
    /// Priority's repair class changed).
    pub async fn set_availability(self: &Arc<Self>, name: &str, availability: Availability) -> Result<(), MasterError> {
        if self
            .change_fileset(name, move |f| {
                f.availability = availability;
                Ok(())
            })
            .await?
            .is_some()
        {
            info!(fileset = %name, %availability, "fileset availability changed");
        }
        Ok(())
    }

    /// Changes how many stripes of an item a write must store while servers
    /// are down (its Priority's write policy changed); 0 is k + 1.
    pub async fn set_min_write_stripes(self: &Arc<Self>, name: &str, stripes: usize) -> Result<(), MasterError> {
        let changed = self
            .change_fileset(name, move |f| {
                f.min_write_stripes = stripes;
                f.validate_min_write_stripes()
            })
            .await?;
        if let Some(f) = changed {
            info!(fileset = %name, min_write_stripes = f.min_write_stripes(), "fileset write minimum changed");
        }
        Ok(())
    }

    /// Changes how readers fetch a fileset's stripes by default (its
    /// Priority's read policy changed); `None` leaves it to the readers.
    pub async fn set_read_mode(self: &Arc<Self>, name: &str, mode: Option<ReadMode>) -> Result<(), MasterError> {
        if self
            .change_fileset(name, move |f| {
                f.read_mode = mode;
                Ok(())
            })
            .await?
            .is_some()
        {
            info!(fileset = %name, read_mode = ?mode, "fileset read mode changed");
        }
        Ok(())
    }

    /// Changes how a fileset's hedged readers hedge (its Priority's read
    /// policy changed); `None` leaves it to the readers.
    pub async fn set_hedge(self: &Arc<Self>, name: &str, hedge: Option<HedgeTuning>) -> Result<(), MasterError> {
        let changed = self
            .change_fileset(name, move |f| {
                f.hedge = hedge;
                f.validate_hedge()
            })
            .await?;
        if changed.is_some() {
            info!(fileset = %name, ?hedge, "fileset hedge tuning changed");
        }
        Ok(())
    }

    pub fn get_fileset(&self, name: &str) -> Result<FilesetView, MasterError> {
        let st = self.state.lock().unwrap();
        Ok(st.view(st.fileset(name)?))
    }

    pub fn list_filesets(&self) -> Vec<FilesetView> {
        let st = self.state.lock().unwrap();
        st.filesets.values().map(|f| st.view(f)).collect()
    }

    /// Deletes a fileset and its versions; returns how many versions went
    /// and the stripes to delete.
    pub async fn delete_fileset(self: &Arc<Self>, name: &str) -> Result<(u32, Vec<Deletion>), MasterError> {
        let name = name.to_string();
        self.change(move |m| async move { m.delete_fileset_in_turn(&name).await }).await
    }

    async fn delete_fileset_in_turn(&self, name: &str) -> Result<(u32, Vec<Deletion>), MasterError> {
        let name = {
            let st = self.state.lock().unwrap();
            let name = st.fileset(name)?.name.clone();
            if let Some(v) = st.versions_of(name.as_str()).find(|v| !v.pins.is_empty()) {
                return Err(MasterError::Pinned { fileset: name.to_string(), version: v.id, holders: v.pins.clone() });
            }
            name
        };
        self.persist(vec![Write::DeleteFileset(name.clone())]).await?;
        let mut st = self.state.lock().unwrap();
        st.filesets.remove(&name);
        // Its open writes end with it: their items become orphans.
        st.sessions.retain(|_, s| s.fileset != name);
        st.prune_gone();
        let versions = st.versions.remove(&name).unwrap_or_default();
        let mut deletions = Vec::new();
        for v in versions.values() {
            deletions.extend(forget_version(&mut st, v));
        }
        info!(fileset = %name, versions = versions.len(), "fileset deleted");
        Ok((versions.len() as u32, deletions))
    }
}
