//! `MasterRecord`: the master's durable records on Kubernetes (internal).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One durable record of the master, kept in the operator's namespace:
/// a fileset, the head of a version, or a part of a version's item list.
/// Users do not write these; `Fileset` is the user-facing resource.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "MasterRecord",
    namespaced,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"Fileset","type":"string","jsonPath":".spec.fileset"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".spec.version"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MasterRecordSpec {
    pub kind: RecordKind,
    #[schemars(length(min = 1, max = 63))]
    pub fileset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// For a version head: how many item parts it has. For a part: its index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    /// The record (JSON), or for a part the items as hex (id, then length as
    /// 16 hex digits), one after another.
    pub data: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Fileset,
    Version,
    Items,
}
