//! The node plugin's control API, on its HTTP port beside `/metrics`, for
//! the operator (leaf promotion), `tessera promote` and cluster operators;
//! its messages are `tessera_api::control`:
//!
//! - `GET /volumes`: each volume on this node (root and leaf), its root
//!   mount, read mode and throughput;
//! - `PUT /volumes/{volume}/read-mode` with `normal`, `hedged` or
//!   `accelerated` as the body: how its root mount reads stripes from now
//!   on (a root mount is shared by the node's volumes of one version, and a
//!   leaf reads what it did not change through the root of its version, so
//!   they all switch);
//! - `GET /volumes/{volume}/throughput`: bytes per second read through its
//!   root mount over the last ten seconds; for a leaf, read and written
//!   through the leaf's own mount;
//! - `GET /units/{item}/{unit}`: a unit (by item id and number) of this
//!   node's cache with its block checksums, for other nodes' plugins (404
//!   when not cached here);
//! - `POST /volumes/{volume}/promote` with a fileset name as the body: a
//!   leaf volume's files stored as a new version of that fileset (created
//!   with the leaf root's layout if it does not exist); answers the version.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use tessera_api::control::{Promoted, Throughput, VolumeInfo, VolumeKind, VolumeList};
use tessera_core::read_plan::ReadMode;

use crate::cache::{NodeCache, UnitKey};
use crate::node::NodePlugin;
use crate::rootfs::{RootFs, THROUGHPUT_WINDOW_MS};

type Answer = (StatusCode, String);

pub fn router(plugin: Arc<NodePlugin>) -> axum::Router {
    axum::Router::new()
        .route("/volumes", get(list))
        .route("/volumes/{volume}/read-mode", put(set_read_mode))
        .route("/volumes/{volume}/throughput", get(throughput))
        .route("/volumes/{volume}/promote", post(promote))
        .with_state(plugin.clone())
        .merge(units_router(plugin.cache().clone()))
}

/// Serves this node's cached units to other nodes (`GET /units/...`), with
/// their block checksums as stored: the reader checks them.
pub fn units_router(cache: Arc<NodeCache>) -> axum::Router {
    axum::Router::new().route("/units/{item}/{unit}", get(unit)).with_state(cache)
}

async fn unit(
    State(cache): State<Arc<NodeCache>>,
    Path((item, unit)): Path<(String, u64)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(item) = item.parse() else { return StatusCode::BAD_REQUEST.into_response() };
    let key = UnitKey { item, unit };
    match tokio::task::spawn_blocking(move || cache.get_stored(&key)).await {
        Ok(Some(u)) => {
            let sums = crate::peers::format_checksums(&u.checksums);
            (StatusCode::OK, [(crate::peers::CHECKSUMS_HEADER, sums)], u.data).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn mode_name(m: ReadMode) -> &'static str {
    match m {
        ReadMode::Normal => "normal",
        ReadMode::Hedged => "hedged",
        ReadMode::Accelerated => "accelerated",
    }
}

/// The root mount a volume reads stripes through: its own, or a leaf's base.
fn root_of(plugin: &NodePlugin, volume: &str) -> Result<Arc<RootFs>, Answer> {
    plugin
        .volume_root(volume)
        .or_else(|| plugin.leaf(volume).map(|l| l.root().clone()))
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no volume {volume} mounted on this node\n")))
}

async fn list(State(plugin): State<Arc<NodePlugin>>) -> Answer {
    let volumes = plugin
        .volume_ids()
        .into_iter()
        .map(|v| {
            let root = root_of(&plugin, &v).ok();
            let read_mode = root.as_ref().map(|r| mode_name(r.read_mode()).to_string());
            match plugin.leaf(&v) {
                Some(leaf) => {
                    let (read, written) = leaf.rates();
                    VolumeInfo {
                        kind: VolumeKind::Leaf,
                        root: root.as_ref().map(|r| format!("{}@{}", r.fileset(), r.version_id())),
                        volume: v,
                        read_mode,
                        read_bytes_per_sec: Some(read),
                        write_bytes_per_sec: Some(written),
                    }
                }
                None => VolumeInfo {
                    kind: VolumeKind::Root,
                    root: plugin.root_of(&v),
                    volume: v,
                    read_mode,
                    read_bytes_per_sec: root.as_ref().map(|r| r.read_rate()),
                    write_bytes_per_sec: None,
                },
            }
        })
        .collect();
    json(&VolumeList { volumes })
}

/// A control-API answer: the message as JSON.
fn json(message: &impl serde::Serialize) -> Answer {
    match serde_json::to_string(message) {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer: {e}\n")),
    }
}

async fn set_read_mode(State(plugin): State<Arc<NodePlugin>>, Path(volume): Path<String>, body: String) -> Answer {
    let mode: ReadMode = match body.trim().parse() {
        Ok(m) => m,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("read mode {:?}: use normal, hedged or accelerated\n", body.trim()),
            );
        }
    };
    match root_of(&plugin, &volume) {
        Ok(root) => {
            root.set_read_mode(mode);
            (StatusCode::OK, format!("{volume}: {}\n", mode_name(mode)))
        }
        Err(e) => e,
    }
}

async fn throughput(State(plugin): State<Arc<NodePlugin>>, Path(volume): Path<String>) -> Answer {
    if let Some(leaf) = plugin.leaf(&volume) {
        let (read, written) = leaf.rates();
        return json(&Throughput {
            volume,
            window_secs: THROUGHPUT_WINDOW_MS / 1000,
            read_bytes_per_sec: read,
            write_bytes_per_sec: Some(written),
        });
    }
    match root_of(&plugin, &volume) {
        Ok(root) => json(&Throughput {
            window_secs: THROUGHPUT_WINDOW_MS / 1000,
            read_bytes_per_sec: root.read_rate(),
            volume,
            write_bytes_per_sec: None,
        }),
        Err(e) => e,
    }
}

async fn promote(State(plugin): State<Arc<NodePlugin>>, Path(volume): Path<String>, body: String) -> Answer {
    let fileset = body.trim();
    if fileset.is_empty() {
        return (StatusCode::BAD_REQUEST, "the body names the fileset to promote into\n".into());
    }
    match plugin.promote(&volume, fileset).await {
        Ok(v) => json(&Promoted { fileset: v.fileset, version: v.id, files: v.files, bytes: v.bytes }),
        Err(e) => {
            let status = tonic::Status::from(e);
            let code = match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::FailedPrecondition | tonic::Code::Aborted => StatusCode::CONFLICT,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, format!("{}\n", status.message()))
        }
    }
}
