//! The CSI node calls: staging, publishing and their undoing, over roots
//! pinned in the master while any volume uses them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_client::fileset::{FilesetError, PutOptions};
use tessera_proto::ms;
use tracing::{info, warn};

use crate::fuse::mount;
use crate::fuse::session::Connection;
use crate::state::{LeafRecord, RootRecord};
use crate::volume::{RootRef, VolumeError, is_leaf};

use super::{DEFAULT_LEAF_CAPACITY, NodeError, NodePlugin, io, is_mounted, kept};

impl NodePlugin {
    /// The root mount of `r` with `user` added: mounted, deposited and
    /// served if it was not already. Returns its key and mountpoint.
    pub(super) async fn acquire_root(
        self: &Arc<Self>,
        r: &RootRef,
        user: &Path,
    ) -> Result<(String, PathBuf), NodeError> {
        let open = self.open_version(&r.fileset, r.version_id()).await?;
        let key = format!("{}@{}", r.fileset, open.id());
        let _root = self.root_locks.lock(&key).await;
        let existing = {
            let mut st = self.state.lock().unwrap();
            st.roots.get_mut(&key).map(|rec| {
                rec.users.insert(user.to_path_buf());
                rec.mountpoint.clone()
            })
        };
        if let Some(mp) = existing {
            self.save().await?;
            return Ok((key, mp));
        }
        self.files
            .master()
            .pin_version(ms::PinRequest { fileset: r.fileset.clone(), version: open.id(), holder: self.pin_holder() })
            .await
            .map_err(|s| NodeError::Fileset { fileset: r.fileset.clone(), source: s.into() })?;
        let mountpoint = self.config.state_dir.join("roots").join(&key);
        std::fs::create_dir_all(&mountpoint).map_err(io(&mountpoint))?;
        if is_mounted(&mountpoint) {
            // A dead mount from before (see adopt): out of the way.
            mount::unmount(&mountpoint)?;
        }
        let record = RootRecord {
            fileset: r.fileset.clone(),
            version: open.id(),
            mountpoint: mountpoint.clone(),
            users: [user.to_path_buf()].into(),
            init: None,
        };
        self.state.lock().unwrap().roots.insert(key.clone(), record.clone());
        self.save().await?;
        let dev = match mount::mount_fuse(&mountpoint, &format!("tessera:{key}"), true) {
            Ok(dev) => dev,
            Err(e) => {
                self.state.lock().unwrap().roots.remove(&key);
                self.save().await?;
                self.unpin(&r.fileset, open.id()).await;
                return Err(e.into());
            }
        };
        let deposited = {
            let (k, id, meta, dev) =
                (self.keeper.clone(), key.clone(), kept(&record), dev.try_clone().map_err(io(&mountpoint))?);
            tokio::task::spawn_blocking(move || k.deposit(&id, &meta, &dev)).await.expect("deposit")
        };
        if let Err(e) = deposited {
            let _ = mount::unmount(&mountpoint);
            self.state.lock().unwrap().roots.remove(&key);
            self.save().await?;
            self.unpin(&r.fileset, open.id()).await;
            return Err(e.into());
        }
        let read = self.fileset_read_policy(&r.fileset).await;
        info!(root = %key, mountpoint = %mountpoint.display(), read_mode = %read.0, hedge = ?read.1, "mounted a root");
        self.serve(&key, open, read, Connection { dev, init: None, adopted: false })?;
        Ok((key, mountpoint))
    }

    /// Lets go of a pin (this node's by default); a failure is only logged:
    /// the master drops pins of holders that are gone.
    pub(super) async fn unpin_as(&self, fileset: &str, version: u64, holder: String) {
        let req = ms::PinRequest { fileset: fileset.to_string(), version, holder };
        if let Err(e) = self.files.master().unpin_version(req).await {
            warn!(fileset, version, error = %e.message(), "unpinning a version");
        }
    }

    pub(super) async fn unpin(&self, fileset: &str, version: u64) {
        self.unpin_as(fileset, version, self.pin_holder()).await
    }

    pub(super) fn pin_holder(&self) -> String {
        format!("node/{}", self.config.node_id)
    }

    /// The root of `r` bound read-only on `path`, which becomes one of its
    /// users; returns the root's key.
    pub(super) async fn bind_root(self: &Arc<Self>, r: &RootRef, path: &Path) -> Result<String, NodeError> {
        let (key, mountpoint) = self.acquire_root(r, path).await?;
        if let Err(e) = mount::bind(&mountpoint, path, true) {
            self.release_root(&key, path).await?;
            return Err(e.into());
        }
        Ok(key)
    }

    /// Drops `user` from a root; the last one unmounts and unpins it.
    pub(super) async fn release_root(&self, key: &str, user: &Path) -> Result<(), NodeError> {
        let _root = self.root_locks.lock(key).await;
        let gone = {
            let mut st = self.state.lock().unwrap();
            let Some(rec) = st.roots.get_mut(key) else { return Ok(()) };
            rec.users.remove(user);
            if rec.users.is_empty() { st.roots.remove(key) } else { None }
        };
        self.save().await?;
        let Some(rec) = gone else { return Ok(()) };
        mount::unmount(&rec.mountpoint)?;
        self.stop_serving(key).await;
        let _ = std::fs::remove_dir(&rec.mountpoint);
        self.unpin(&rec.fileset, rec.version).await;
        // The connection is gone, and with it every open the record counted.
        let _ = std::fs::remove_file(self.io_table_path(key));
        info!(root = %key, "unmounted a root");
        Ok(())
    }

    /// Where the open modes of a root connection's files are recorded.
    pub(super) fn io_table_path(&self, key: &str) -> PathBuf {
        self.config.state_dir.join("io").join(key)
    }

    /// NodeStageVolume: the volume's version, read-only on `staging`.
    pub async fn stage(self: &Arc<Self>, volume: &str, staging: &Path) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        if is_leaf(volume) {
            return self.stage_leaf(volume, staging).await;
        }
        let r = RootRef::parse_id(volume)?;
        let done = self.state.lock().unwrap().volumes.get(volume).and_then(|v| v.staging.clone());
        if done.as_deref() == Some(staging) && is_mounted(staging) {
            return Ok(());
        }
        std::fs::create_dir_all(staging).map_err(io(staging))?;
        let key = self.bind_root(&r, staging).await?;
        {
            let mut st = self.state.lock().unwrap();
            let v = st.volumes.entry(volume.to_string()).or_default();
            v.root = key;
            v.staging = Some(staging.to_path_buf());
        }
        self.save().await
    }

    /// Stores what a leaf volume holds now as a new version of `fileset`,
    /// read through its mount as its pod sees it (files written while this
    /// runs may or may not be in it: promote when the writer is done). A
    /// fileset that does not exist is created with the layout and policies
    /// of the leaf's root.
    pub async fn promote(&self, volume: &str, fileset: &str) -> Result<ms::Version, NodeError> {
        // Held while the leaf is read: it cannot be unstaged under the read.
        let _turn = self.turns.take(volume)?;
        let record = self.state.lock().unwrap().leaves.get(volume).cloned();
        let Some(record) = record.filter(|r| is_mounted(&r.mountpoint)) else {
            return Err(NodeError::NotStaged(volume.to_string()));
        };
        let failed = |source: FilesetError| NodeError::Fileset { fileset: fileset.to_string(), source };
        let mut master = self.files.master();
        match master.get_fileset(ms::GetFilesetRequest { name: fileset.to_string() }).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {
                let base = master
                    .get_fileset(ms::GetFilesetRequest { name: record.fileset.clone() })
                    .await
                    .map_err(|s| NodeError::Fileset {
                        fileset: record.fileset.clone(),
                        source: FilesetError::Master(s),
                    })?
                    .into_inner()
                    .spec
                    .unwrap_or_default();
                let spec = ms::FilesetSpec { name: fileset.to_string(), ..base };
                self.files.create_fileset(spec, true).await.map_err(failed)?;
            }
            Err(s) => return Err(failed(FilesetError::Master(s))),
        }
        info!(volume, fileset, root = %format!("{}@{}", record.fileset, record.version), "promoting a leaf");
        let v = self.files.put(fileset, &record.mountpoint, &PutOptions::default(), &|_| {}).await.map_err(failed)?;
        info!(volume, fileset, version = v.id, files = v.files, bytes = v.bytes, "leaf promoted");
        Ok(v)
    }

    /// A leaf made by CreateVolume, mounted read-write on `staging`.
    pub(super) async fn stage_leaf(self: &Arc<Self>, volume: &str, staging: &Path) -> Result<(), NodeError> {
        let meta = self.leaf_meta(volume)?.ok_or_else(|| NodeError::NoVolume(volume.to_string()))?;
        let mounted = self.state.lock().unwrap().leaves.get(volume).map(|l| l.mountpoint.clone());
        match mounted {
            Some(m) if m == staging && is_mounted(staging) => return Ok(()),
            Some(m) if m != staging => return Err(NodeError::InUse(volume.to_string())),
            _ => {}
        }
        let record = LeafRecord {
            fileset: meta.fileset,
            version: meta.version,
            dir: self.leaf_dir(volume),
            mountpoint: staging.to_path_buf(),
            capacity: meta.capacity,
            init: None,
            ephemeral: false,
        };
        self.mount_leaf(volume, record).await?;
        self.state.lock().unwrap().volumes.entry(volume.to_string()).or_default().staging = Some(staging.to_path_buf());
        self.save().await
    }

    /// NodeUnstageVolume.
    pub async fn unstage(&self, volume: &str, staging: &Path) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        if is_leaf(volume) {
            self.unmount_leaf(volume).await?;
            {
                let mut st = self.state.lock().unwrap();
                if let Some(v) = st.volumes.get_mut(volume) {
                    v.staging = None;
                    if v.targets.is_empty() {
                        st.volumes.remove(volume);
                    }
                }
            }
            return self.save().await;
        }
        mount::unmount(staging)?;
        let key = {
            let mut st = self.state.lock().unwrap();
            let Some(v) = st.volumes.get_mut(volume) else { return Ok(()) };
            v.staging = None;
            let key = v.root.clone();
            if v.targets.is_empty() {
                st.volumes.remove(volume);
            }
            key
        };
        self.release_root(&key, staging).await
    }

    /// NodePublishVolume: a staged volume's staging path (or an inline
    /// volume's root) bound read-only on `target`.
    pub async fn publish(
        self: &Arc<Self>,
        volume: &str,
        target: &Path,
        staging: Option<&Path>,
        inline: Option<&HashMap<String, String>>,
        read_only: bool,
    ) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        let known = self.state.lock().unwrap().volumes.get(volume).cloned();
        if known.as_ref().is_some_and(|v| v.targets.contains(target)) && is_mounted(target) {
            return Ok(());
        }
        std::fs::create_dir_all(target).map_err(io(target))?;
        match inline {
            Some(attrs) if attrs.get("kind").is_some_and(|k| k == "leaf") => {
                let r = RootRef::from_attributes(attrs)?;
                let capacity = match attrs.get("capacity") {
                    Some(c) => c.parse().map_err(|_| VolumeError::BadAttribute {
                        key: "capacity",
                        reason: format!("{c:?} is not a number of bytes"),
                    })?,
                    None => DEFAULT_LEAF_CAPACITY,
                };
                let open = self.open_version(&r.fileset, r.version_id()).await?;
                use sha2::Digest;
                let dir = self
                    .config
                    .state_dir
                    .join("leaves")
                    .join(format!("inline-{}", hex::encode(&sha2::Sha256::digest(volume.as_bytes())[..8])));
                let record = LeafRecord {
                    fileset: r.fileset.clone(),
                    version: open.id(),
                    dir,
                    mountpoint: target.to_path_buf(),
                    capacity,
                    init: None,
                    ephemeral: true,
                };
                self.mount_leaf(volume, record).await?;
                let mut st = self.state.lock().unwrap();
                let v = st.volumes.entry(volume.to_string()).or_default();
                v.ephemeral = true;
                v.targets.insert(target.to_path_buf());
            }
            Some(attrs) => {
                if attrs.get("kind").is_some_and(|k| k != "root") {
                    return Err(VolumeError::BadAttribute { key: "kind", reason: "root or leaf".into() }.into());
                }
                let r = RootRef::from_attributes(attrs)?;
                let key = self.bind_root(&r, target).await?;
                let mut st = self.state.lock().unwrap();
                let v = st.volumes.entry(volume.to_string()).or_default();
                v.root = key;
                v.ephemeral = true;
                v.targets.insert(target.to_path_buf());
            }
            None => {
                let staging = staging.ok_or(NodeError::Missing("staging_target_path", "required".into()))?;
                let staged = known.and_then(|v| v.staging).is_some_and(|s| s == staging) && is_mounted(staging);
                if !staged {
                    return Err(NodeError::NotStaged(volume.to_string()));
                }
                mount::bind(staging, target, read_only || !is_leaf(volume))?;
                let mut st = self.state.lock().unwrap();
                st.volumes.entry(volume.to_string()).or_default().targets.insert(target.to_path_buf());
            }
        }
        self.save().await
    }

    /// NodeUnpublishVolume.
    pub async fn unpublish(&self, volume: &str, target: &Path) -> Result<(), NodeError> {
        let _turn = self.turns.take(volume)?;
        let inline_leaf =
            self.state.lock().unwrap().leaves.get(volume).is_some_and(|l| l.ephemeral && l.mountpoint == target);
        if inline_leaf {
            self.unmount_leaf(volume).await?;
        }
        mount::unmount(target)?;
        let _ = std::fs::remove_dir(target);
        let release = {
            let mut st = self.state.lock().unwrap();
            let Some(v) = st.volumes.get_mut(volume) else { return Ok(()) };
            v.targets.remove(target);
            let (key, ephemeral) = (v.root.clone(), v.ephemeral);
            if v.targets.is_empty() && v.staging.is_none() {
                st.volumes.remove(volume);
            }
            ephemeral.then_some(key)
        };
        self.save().await?;
        match release {
            Some(key) if !inline_leaf => self.release_root(&key, target).await,
            _ => Ok(()),
        }
    }
}
