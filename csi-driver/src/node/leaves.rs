//! Leaf volumes: their directories, creation and deletion, and their mounts.

use std::path::PathBuf;
use std::sync::Arc;

use tessera_proto::ms;
use tracing::info;

use crate::fuse::mount;
use crate::fuse::session::Connection;
use crate::leaffs::LeafFs;
use crate::rootfs::RootFs;
use crate::state::LeafRecord;
use crate::volume::{RootRef, is_leaf, leaf_id};

use super::{LeafMeta, NodeError, NodePlugin, ServedFs, io};

impl NodePlugin {
    pub(super) fn leaf_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("leaves").join(id)
    }

    /// The leaf CreateVolume made under `id`, if any.
    pub fn leaf_meta(&self, id: &str) -> Result<Option<LeafMeta>, NodeError> {
        let path = self.leaf_dir(id).join("meta.json");
        match std::fs::read(&path) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Io { path, source: e }),
        }
    }

    /// CreateVolume of a leaf: pins its root version and records it. Takes
    /// the same time whatever the root's size (nothing is copied).
    pub async fn create_leaf(&self, name: &str, r: &RootRef, capacity: u64) -> Result<(String, LeafMeta), NodeError> {
        let id = leaf_id(name);
        let _turn = self.turns.take(&id)?;
        if let Some(meta) = self.leaf_meta(&id)? {
            let same = meta.name == name
                && meta.fileset == r.fileset
                && meta.capacity == capacity
                && (r.version_id() == 0 || r.version_id() == meta.version);
            return if same { Ok((id, meta)) } else { Err(NodeError::Exists(name.to_string())) };
        }
        let open = self.open_version(&r.fileset, r.version_id()).await?;
        self.files
            .master()
            .pin_version(ms::PinRequest {
                fileset: r.fileset.clone(),
                version: open.id(),
                holder: format!("leaf/{id}"),
            })
            .await
            .map_err(|s| NodeError::Fileset { fileset: r.fileset.clone(), source: s.into() })?;
        let meta = LeafMeta { name: name.to_string(), fileset: r.fileset.clone(), version: open.id(), capacity };
        let dir = self.leaf_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join("meta.json.tmp");
        let body = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, dir.join("meta.json")))
            .and_then(|_| std::fs::File::open(&dir)?.sync_all())
            .map_err(io(&dir))?;
        info!(volume = %id, fileset = %meta.fileset, version = meta.version, "created a leaf");
        Ok((id, meta))
    }

    /// DeleteVolume of a leaf: its data goes, its root version is unpinned.
    pub async fn delete_leaf(&self, id: &str) -> Result<(), NodeError> {
        let _turn = self.turns.take(id)?;
        if self.state.lock().unwrap().leaves.contains_key(id) {
            return Err(NodeError::InUse(id.to_string()));
        }
        let Some(meta) = self.leaf_meta(id)? else { return Ok(()) };
        self.unpin_as(&meta.fileset, meta.version, format!("leaf/{id}")).await;
        let dir = self.leaf_dir(id);
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        info!(volume = %id, "deleted a leaf");
        Ok(())
    }

    /// Whether a volume exists: a leaf made here, or a stored fileset version.
    pub async fn volume_exists(&self, volume: &str) -> Result<bool, NodeError> {
        if is_leaf(volume) {
            return Ok(self.leaf_meta(volume)?.is_some());
        }
        let Ok(r) = RootRef::parse_id(volume) else { return Ok(false) };
        let req = ms::GetVersionRequest { fileset: r.fileset.clone(), version: r.version_id() };
        match self.files.master().get_version(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(NodeError::Fileset { fileset: r.fileset, source: s.into() }),
        }
    }

    /// The version a leaf is based on, shared with its root mount if there is one.
    pub(super) async fn base(&self, fileset: &str, version: u64) -> Result<Arc<RootFs>, NodeError> {
        let key = format!("{fileset}@{version}");
        let _root = self.root_locks.lock(&key).await;
        if let Some(fs) = self.root(&key) {
            return Ok(fs);
        }
        if let Some(fs) = self.bases.lock().unwrap().get(&key) {
            return Ok(fs.clone());
        }
        let open = self.open_version(fileset, version).await?;
        let read = self.fileset_read_policy(fileset).await;
        let fs = self.root_fs(&key, open, read);
        self.bases.lock().unwrap().insert(key, fs.clone());
        Ok(fs)
    }

    /// Mounts a leaf's filesystem at `record.mountpoint` and serves it.
    pub(super) async fn mount_leaf(self: &Arc<Self>, id: &str, record: LeafRecord) -> Result<(), NodeError> {
        if self.served.lock().unwrap().contains_key(&format!("leaf/{id}")) {
            // Still served (a busy mount detached earlier): one journal writer only.
            return Err(NodeError::InUse(id.to_string()));
        }
        let base = self.base(&record.fileset, record.version).await?;
        let fs = Arc::new(LeafFs::open(&record.dir.join("fs"), base, record.capacity).map_err(io(&record.dir))?);
        std::fs::create_dir_all(&record.mountpoint).map_err(io(&record.mountpoint))?;
        self.state.lock().unwrap().leaves.insert(id.to_string(), record.clone());
        self.save().await?;
        let dev = match mount::mount_fuse(&record.mountpoint, &format!("tessera:{id}"), false) {
            Ok(dev) => dev,
            Err(e) => {
                self.state.lock().unwrap().leaves.remove(id);
                self.save().await?;
                return Err(e.into());
            }
        };
        let key = format!("leaf/{id}");
        let deposited = {
            let (k, key, meta) = (self.keeper.clone(), key.clone(), serde_json::to_value(&record).unwrap_or_default());
            let dev = dev.try_clone().map_err(io(&record.mountpoint))?;
            tokio::task::spawn_blocking(move || k.deposit(&key, &meta, &dev)).await.expect("deposit")
        };
        if let Err(e) = deposited {
            let _ = mount::unmount(&record.mountpoint);
            self.state.lock().unwrap().leaves.remove(id);
            self.save().await?;
            return Err(e.into());
        }
        info!(volume = %id, mountpoint = %record.mountpoint.display(), "mounted a leaf");
        self.spawn_session(&key, fs.clone(), ServedFs::Leaf(fs), Connection { dev, init: None, adopted: false })
    }

    /// Unmounts a leaf; an inline one's data goes with it.
    pub(super) async fn unmount_leaf(&self, id: &str) -> Result<(), NodeError> {
        let Some(record) = self.state.lock().unwrap().leaves.get(id).cloned() else { return Ok(()) };
        mount::unmount(&record.mountpoint)?;
        self.stop_serving(&format!("leaf/{id}")).await;
        self.state.lock().unwrap().leaves.remove(id);
        self.save().await?;
        if record.ephemeral {
            let _ = std::fs::remove_dir_all(&record.dir);
        }
        info!(volume = %id, "unmounted a leaf");
        Ok(())
    }
}
