//! The Tessera operator. Today: the master, which `tessera local` runs in its
//! own process; the Kubernetes controllers that embed it come next.

pub mod master;
