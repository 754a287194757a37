//! Serving FUSE connections: mounting a version's root, adopting the
//! connections a previous plugin deposited with the keeper, and the read
//! policy each root reads with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::latency::HedgePolicy;
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;
use tracing::{info, warn};

use crate::fuse::abi::InitState;
use crate::fuse::session::{Connection, Filesystem};
use crate::fuse::{mount, session};
use crate::keeper::KeeperError;
use crate::leaffs::LeafFs;
use crate::passthrough::IoTable;
use crate::rootfs::RootFs;
use crate::state::{LeafRecord, RootRecord};

use super::{KEEPER_WAIT_SECS, NodeError, NodePlugin, Served, ServedFs, io, kept};

impl NodePlugin {
    /// Takes over the connections the keeper holds for roots in the state.
    pub(super) async fn adopt(self: &Arc<Self>) -> Result<(), NodeError> {
        // The keeper may start after the plugin (two DaemonSets): wait for it.
        let mut waited = 0;
        let held = loop {
            let k = self.keeper.clone();
            match tokio::task::spawn_blocking(move || k.list()).await.expect("keeper list") {
                Ok(held) => break held,
                Err(e @ KeeperError::Socket { .. }) if waited < KEEPER_WAIT_SECS * 5 => {
                    if waited % 25 == 0 {
                        warn!(error = %e, "waiting for the keeper");
                    }
                    waited += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut held: HashMap<String, _> = held.into_iter().map(|h| (h.id.clone(), h)).collect();
        let roots: Vec<(String, RootRecord)> =
            self.state.lock().unwrap().roots.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, record) in roots {
            match held.remove(&key) {
                Some(h) => {
                    info!(root = %key, "taking over a live fuse connection");
                    let open = self.open_version(&record.fileset, record.version).await?;
                    let read = self.fileset_read_policy(&record.fileset).await;
                    let conn = Connection { dev: h.fd, init: record.init, adopted: true };
                    self.serve(&key, open, read, conn)?;
                }
                None => {
                    // Keeper and plugin both gone: the connection died with
                    // them. Detach the dead mount; volumes staged on it are
                    // mounted again on their next stage or publish.
                    warn!(root = %key, "no live connection for a root mount; it is lost");
                    let _ = mount::unmount(&record.mountpoint);
                    let mut st = self.state.lock().unwrap();
                    st.roots.remove(&key);
                    st.volumes.retain(|_, v| v.root != key);
                }
            }
        }
        let leaves: Vec<(String, LeafRecord)> =
            self.state.lock().unwrap().leaves.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (id, record) in leaves {
            let key = format!("leaf/{id}");
            match held.remove(&key) {
                Some(h) => {
                    info!(volume = %id, "taking over a live leaf connection");
                    // Adopted, not opened: files its pod unlinked but still
                    // holds open are kept.
                    // A base that cannot be opened now (the master away) may
                    // be there on the next start: fail and be restarted,
                    // the keeper holding the connection meanwhile.
                    let base = self.base(&record.fileset, record.version).await?;
                    match LeafFs::adopt(&record.dir.join("fs"), base, record.capacity) {
                        Ok(fs) => {
                            let fs = Arc::new(fs);
                            let conn = Connection { dev: h.fd, init: record.init, adopted: true };
                            self.spawn_session(&key, fs.clone(), ServedFs::Leaf(fs), conn)?;
                        }
                        // A journal that cannot be read will not be on the
                        // next start either: that leaf's mount goes (its
                        // connection withdrawn, so its pod gets errors, not
                        // a hang), its data stays, and every other volume
                        // is served.
                        Err(e) => {
                            warn!(volume = %id, error = %e, "cannot take over a leaf; its mount is dropped, its data kept");
                            drop(h);
                            let k = self.keeper.clone();
                            let _ = tokio::task::spawn_blocking(move || k.withdraw(&key)).await;
                            let _ = mount::unmount(&record.mountpoint);
                            let mut st = self.state.lock().unwrap();
                            st.leaves.remove(&id);
                            st.volumes.remove(&id);
                        }
                    }
                }
                None => {
                    // Its data is on disk; the next stage mounts it again.
                    warn!(volume = %id, "no live connection for a leaf mount; it is lost");
                    let _ = mount::unmount(&record.mountpoint);
                    let mut st = self.state.lock().unwrap();
                    st.leaves.remove(&id);
                    st.volumes.remove(&id);
                }
            }
        }
        // Held by the keeper but unknown here (the state was lost): unmount.
        for (id, h) in held {
            let mountpoint = h.meta.get("mountpoint").and_then(|m| m.as_str()).map(PathBuf::from);
            warn!(mount = %id, "the keeper holds a connection this node does not know; unmounting it");
            if let Some(m) = mountpoint {
                let _ = mount::unmount(&m);
            }
            let k = self.keeper.clone();
            let _ = tokio::task::spawn_blocking(move || k.withdraw(&id)).await;
        }
        self.save().await
    }

    /// Deposits again whatever a restarted keeper lost.
    pub(super) async fn keep_deposited(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let k = self.keeper.clone();
            let Ok(Ok(held)) = tokio::task::spawn_blocking(move || k.list()).await else { continue };
            let ids: std::collections::HashSet<String> = held.into_iter().map(|h| h.id).collect();
            let missing: Vec<(String, serde_json::Value, std::os::fd::OwnedFd)> = {
                let served = self.served.lock().unwrap();
                let st = self.state.lock().unwrap();
                served
                    .iter()
                    .filter(|(id, _)| !ids.contains(*id))
                    .filter_map(|(id, s)| {
                        let meta = match id.strip_prefix("leaf/") {
                            Some(leaf) => serde_json::to_value(st.leaves.get(leaf)?).ok()?,
                            None => serde_json::to_value(kept(st.roots.get(id)?)).ok()?,
                        };
                        Some((id.clone(), meta, s.dev.try_clone().ok()?))
                    })
                    .collect()
            };
            for (id, meta, dev) in missing {
                warn!(root = %id, "the keeper lost a connection (restarted?); depositing it again");
                let k = self.keeper.clone();
                let _ = tokio::task::spawn_blocking(move || k.deposit(&id, &meta, &dev)).await;
            }
        }
    }

    pub(super) async fn open_version(
        &self,
        fileset: &str,
        version: u64,
    ) -> Result<tessera_client::fileset::OpenVersion, NodeError> {
        self.files.open(fileset, version).await.map_err(|source| NodeError::Fileset { fileset: fileset.into(), source })
    }

    /// How a root of `fileset` reads: the read mode it starts in and how it
    /// hedges, as its Priority gives them (kept by the master), else the
    /// plugin's defaults. A volume's `readMode` attribute and the control
    /// API change the mode afterwards.
    pub(super) async fn fileset_read_policy(&self, fileset: &str) -> (ReadMode, HedgePolicy) {
        let default_hedge = self.files.stripes().config().hedge;
        let req = ms::GetFilesetRequest { name: fileset.to_string() };
        let spec = match self.files.master().get_fileset(req).await {
            Ok(f) => f.into_inner().spec.unwrap_or_default(),
            Err(e) => {
                warn!(fileset, error = %e, "cannot ask the master for the fileset's read policy; using the defaults");
                return (self.config.read_mode, default_hedge);
            }
        };
        let mode = match spec.read_mode.as_str() {
            "" => self.config.read_mode,
            m => m.parse().unwrap_or_else(|_| {
                warn!(fileset, read_mode = %m, "the master names an unknown read mode; using the default");
                self.config.read_mode
            }),
        };
        let hedge = match spec.hedge {
            None => default_hedge,
            // The master checks these; a record written otherwise is not
            // trusted to keep the bounds in order.
            Some(h) if h.delay_min_ms > h.delay_max_ms => {
                warn!(
                    fileset,
                    min_ms = h.delay_min_ms,
                    max_ms = h.delay_max_ms,
                    "the master names hedge bounds out of order; using the defaults"
                );
                default_hedge
            }
            Some(h) => HedgePolicy {
                floor: Duration::from_millis(h.delay_min_ms.into()),
                ceiling: Duration::from_millis(h.delay_max_ms.into()),
                extra_stripes: h.extra_stripes as usize,
                ..default_hedge
            },
        };
        (mode, hedge)
    }

    pub(super) fn serve(
        self: &Arc<Self>,
        key: &str,
        open: tessera_client::fileset::OpenVersion,
        read: (ReadMode, HedgePolicy),
        conn: Connection,
    ) -> Result<(), NodeError> {
        let fs = self.root_fs(key, open, read);
        // The open modes of this connection's files, kept beside the node
        // state for whichever plugin serves the connection next.
        let path = self.io_table_path(key);
        let recorded = conn.adopted && path.exists();
        match &self.file_store {
            // A connection taken over from a plugin that kept no record may
            // have files open in a mode nobody recorded: it is not passed
            // through (the kernel would refuse opens that mix modes).
            Some(_) if conn.adopted && !recorded => {
                info!(root = %key, "taken over without a record of open files; not passing files through");
            }
            Some(store) => {
                let table = IoTable::open(&path, conn.adopted).map_err(io(&path))?;
                fs.enable_passthrough(Some(store.clone()), table);
            }
            // The store is off now, but files a previous plugin passed
            // through may still be open: later opens of them must join
            // their mode and backing, so the record is kept and honoured.
            None if recorded => {
                let table = IoTable::open(&path, true).map_err(io(&path))?;
                fs.enable_passthrough(None, table);
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.spawn_session(key, fs.clone(), ServedFs::Root(fs), conn)
    }

    pub(super) fn root_fs(
        &self,
        key: &str,
        open: tessera_client::fileset::OpenVersion,
        read: (ReadMode, HedgePolicy),
    ) -> Arc<RootFs> {
        let (mode, hedge) = read;
        let fs = RootFs::new(key, open, self.files.stripes().clone(), self.cache.clone(), self.metrics.clone(), mode);
        Arc::new(fs.with_peers(self.peers.clone()).with_hedge(hedge))
    }

    /// Serves a connection on its own thread.
    pub(super) fn spawn_session<F: Filesystem>(
        self: &Arc<Self>,
        key: &str,
        fs: Arc<F>,
        served: ServedFs,
        conn: Connection,
    ) -> Result<(), NodeError> {
        let dev = conn.dev.try_clone().map_err(io(&self.config.state_dir))?;
        let rt = tokio::runtime::Handle::current();
        let (me, id) = (self.clone(), key.to_string());
        let mountpoint = {
            let st = self.state.lock().unwrap();
            match key.strip_prefix("leaf/") {
                Some(leaf) => st.leaves.get(leaf).map(|r| r.mountpoint.clone()),
                None => st.roots.get(key).map(|r| r.mountpoint.clone()),
            }
        };
        // Not joined: the thread ends when the kernel ends the connection.
        std::thread::Builder::new()
            .name(format!("fuse {key}"))
            .spawn(move || {
                let on_init = |init: &InitState| me.record_init(&id, *init);
                let on_ready = move || {
                    if let Some(m) = mountpoint {
                        mount::set_readahead(&m, mount::READAHEAD_KB);
                    }
                };
                match session::serve(conn, fs, rt, on_init, on_ready) {
                    Ok(()) => info!(mount = %id, "fuse mount ended"),
                    Err(e) => warn!(mount = %id, error = %e, "serving a fuse mount failed"),
                }
            })
            .map_err(io(&self.config.state_dir))?;
        self.served.lock().unwrap().insert(key.to_string(), Served { fs: served, dev });
        self.metrics.mounts.set(self.served.lock().unwrap().len() as i64);
        Ok(())
    }

    /// Keeps what INIT negotiated, with the keeper and in the state.
    pub(super) fn record_init(&self, key: &str, init: InitState) {
        let meta = {
            let mut st = self.state.lock().unwrap();
            if let Some(id) = key.strip_prefix("leaf/") {
                let Some(r) = st.leaves.get_mut(id) else { return };
                if r.init == Some(init) {
                    return;
                }
                r.init = Some(init);
                serde_json::to_value(&*r).unwrap_or_default()
            } else {
                let Some(r) = st.roots.get_mut(key) else { return };
                if r.init == Some(init) {
                    return;
                }
                r.init = Some(init);
                serde_json::to_value(kept(r)).unwrap_or_default()
            }
        };
        if let Err(e) = self.save_now() {
            warn!(mount = %key, error = %e, "saving the node state");
        }
        let dev = self.served.lock().unwrap().get(key).and_then(|s| s.dev.try_clone().ok());
        if let Some(dev) = dev
            && let Err(e) = self.keeper.deposit(key, &meta, &dev)
        {
            warn!(mount = %key, error = %e, "depositing a connection's INIT state with the keeper");
        }
    }

    /// Stops tracking `key` once its filesystem is unmounted. Its thread
    /// ends by itself when the kernel ends the connection; it is not waited
    /// for, since a mount detached while busy lives on until its last file
    /// is closed, and no CSI call may wait for that.
    pub(super) async fn stop_serving(&self, key: &str) {
        let _ = self.served.lock().unwrap().remove(key);
        self.metrics.mounts.set(self.served.lock().unwrap().len() as i64);
        let (k, id) = (self.keeper.clone(), key.to_string());
        let _ = tokio::task::spawn_blocking(move || k.withdraw(&id)).await;
    }
}
