//! The Tessera operator: the custom resources users apply, their
//! controllers, and the master (`tessera-master`) embedded with its records
//! kept in `MasterRecord` objects.

pub mod controller;
pub mod ingest;
pub mod ingest_pod;
pub mod kube_store;
pub mod leader;
pub mod promote;
pub mod reconcile;
pub mod topology;
