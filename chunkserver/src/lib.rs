//! The Tessera chunkserver: stores stripes on local data directories and serves
//! checksum-verified byte ranges of them over gRPC.
//!
//! Rooms: [`store`] (the on-disk format and the index), [`classes`]
//! (admission per request class), [`quotas`] (usage quotas and per-stripe
//! queues), [`faults`] (run-time fault injection),
//! [`stats`] (per-device bandwidth windows), [`metrics`] (Prometheus),
//! [`registrar`] (reports to the master), [`scrub`] (background
//! verification of every stored block),
//! [`service`] (gRPC handlers and status codes), [`fast_read`] (ReadStripe
//! without copies) and [`server`] (wiring).

pub mod classes;
pub mod fast_read;
pub mod faults;
pub mod metrics;
pub mod quotas;
pub mod registrar;
pub mod scrub;
pub mod server;
pub mod service;
pub mod stats;
pub mod store;

pub mod cli;
