//! Names Tessera writes into Kubernetes objects and reads back: each is
//! defined here once, for every component that writes or reads it.

/// The API group of every Tessera resource.
pub const GROUP: &str = "tessera.dev";

/// The API version of the resources, as in `apiVersion: tessera.dev/v1alpha1`.
pub const API_VERSION: &str = "tessera.dev/v1alpha1";

/// The CSI driver's name (in CSIDriver, StorageClasses and PersistentVolumes).
pub const CSI_DRIVER: &str = "csi.tessera.dev";

/// The topology key under which the CSI driver reports a node, and which a
/// leaf volume's PersistentVolume is pinned to.
pub const TOPOLOGY_NODE: &str = "topology.tessera.dev/node";

/// Node label for the rack level of placement (region and zone use the
/// well-known `topology.kubernetes.io` labels).
pub const RACK_LABEL: &str = "tessera.dev/rack";

/// Label selector of the CSI node plugin's pods (the chart's DaemonSet).
pub const NODE_PLUGIN_SELECTOR: &str = "app.kubernetes.io/component=csi-node";

/// The finalizer that keeps a Fileset until its data is deleted.
pub const FINALIZER: &str = "tessera.dev/data";

/// Annotation of an ingest pod: the Fileset it fills.
pub const FILESET_ANNOTATION: &str = "tessera.dev/fileset";

/// Annotation of an ingest pod: which source (spec.source) it stores.
pub const SOURCE_KEY_ANNOTATION: &str = "tessera.dev/source-key";

/// Label of a `MasterRecord`: the fileset it belongs to.
pub const RECORD_FILESET_LABEL: &str = "tessera.dev/fileset";

/// Label of a `MasterRecord`: what it holds (fileset, version, items).
pub const RECORD_KIND_LABEL: &str = "tessera.dev/record";

#[cfg(test)]
mod tests {
    /// These names are in objects and volumes already created: a change
    /// would strand them, so it must be deliberate (and migrated).
    #[test]
    fn the_names_written_into_objects_stay_the_same() {
        use super::*;
        assert_eq!(GROUP, "tessera.dev");
        assert_eq!(API_VERSION, "tessera.dev/v1alpha1");
        assert_eq!(CSI_DRIVER, "csi.tessera.dev");
        assert_eq!(TOPOLOGY_NODE, "topology.tessera.dev/node");
        assert_eq!(RACK_LABEL, "tessera.dev/rack");
        assert_eq!(FINALIZER, "tessera.dev/data");
        assert_eq!(FILESET_ANNOTATION, "tessera.dev/fileset");
        assert_eq!(SOURCE_KEY_ANNOTATION, "tessera.dev/source-key");
        assert_eq!(RECORD_FILESET_LABEL, "tessera.dev/fileset");
        assert_eq!(RECORD_KIND_LABEL, "tessera.dev/record");
        assert_eq!(NODE_PLUGIN_SELECTOR, "app.kubernetes.io/component=csi-node");
    }
}
