//! Tessera's CSI driver: filesets as volumes.
//!
//! - [`fuse`]: the FUSE protocol, a request loop that can adopt a live
//!   connection, and mounting;
//! - [`rootfs`]: a fileset version as a read-only filesystem;
//! - [`cache`]: the node cache (1 MiB units with their blocks' CRC32C)
//!   shared by every root volume;
//! - [`turns`]: one operation at a time per volume, a second refused.

pub mod authority;
pub mod bench;
pub mod cache;
pub mod control;
pub mod fuse;
pub mod keeper;
pub mod leaffs;
pub mod metrics;
pub mod node;
pub mod passthrough;
pub mod peers;
pub mod provisioning;
pub mod registration;
pub mod rootfs;
pub mod service;
pub mod state;
pub mod turns;
pub mod volume;

/// The CSI protocol (spec v1.12), generated from the spec's `csi.proto`.
pub mod csi {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("csi.v1");
}

/// The kubelet's plugin-registration API (v1), generated from k8s.io/kubelet's
/// `api.proto`.
pub mod pluginregistration {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("pluginregistration");
}
