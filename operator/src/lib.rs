//! The Tessera operator: the master (run in its own process by `tessera
//! local`, embedded by the operator), and the custom resources users apply.

pub mod controller;
pub mod crd;
pub mod ingest;
pub mod ingest_pod;
pub mod kube_store;
pub mod leader;
pub mod master;
pub mod promote;
pub mod reconcile;
pub mod topology;
