//! The Tessera operator: the custom resources users apply, their
//! controllers, and the master (`tessera-master`) embedded with its records
//! kept in `MasterRecord` objects.

pub mod error;
pub mod fileset;
pub mod ingest;
pub mod ingest_pod;
pub mod ingests;
pub mod kube_store;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod priority;
pub mod promote;
pub mod reconcile;
pub mod runtime;
pub mod topology;
