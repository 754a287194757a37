//! Tessera's API, defined once: the custom resources users apply
//! ([`crd`], with the `crd` feature), the names of its labels, annotations,
//! finalizer, CSI driver and topology key ([`keys`]), and the messages of
//! the CSI node plugin's control API ([`control`]).

pub mod control;
#[cfg(feature = "crd")]
pub mod crd;
pub mod keys;
