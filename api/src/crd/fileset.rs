//! `Fileset`: a named, versioned, immutable tree of files stored erasure-coded.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A fileset: where its versions come from, how they are stored and kept.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Fileset",
    namespaced,
    status = "FilesetStatus",
    shortname = "fset",
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".status.currentVersion"}"#,
    printcolumn = r#"{"name":"Files","type":"integer","jsonPath":".status.files"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Redundancy","type":"string","jsonPath":".status.redundancy.summary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FilesetSpec {
    /// Where new versions come from. A change of source makes a new version.
    pub source: Source,
    /// The erasure code; fixed for the life of the fileset.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.erasure is immutable; create a new fileset for another code"))]
    pub erasure: Erasure,
    /// How the stripes of each item spread over failure domains; fixed for the life of the fileset.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.placement is immutable; create a new fileset for another placement"))]
    pub placement: Placement,
    /// Name of the `Priority` that governs reads, bandwidth and repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default)]
    pub retention: Retention,
    /// Which nodes receive copies ahead of use. Reserved: accepted, and
    /// nothing acts on it until distribution is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
}

/// Exactly one of `upload`, `http`, `pvc` or `leaf`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.upload), has(self.http), has(self.pvc), has(self.leaf)].filter(x, x).size() == 1").message("spec.source must set exactly one of upload, http, pvc or leaf"))]
pub struct Source {
    /// Versions are uploaded through the operator's API (`tessera put`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
    /// A tar archive (optionally gzip-compressed) fetched over http(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// A directory of a PersistentVolumeClaim, read by an ingest pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// A Tessera leaf volume, promoted by the CSI node plugin that serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf: Option<LeafSource>,
}

/// A leaf volume's files, as its pod sees them, stored as the next version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeafSource {
    /// A claim in the Fileset's namespace bound to a Tessera leaf volume.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Any text; changing it promotes the leaf again (a new version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub trigger: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("spec.source.http.url must be an http:// or https:// URL"))]
    pub url: String,
    /// Expected SHA-256 of the archive (hex); the ingest fails on a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the volume (relative, no `..`).
    #[serde(default)]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.split('/').exists(p, p == '..')").message("spec.source.pvc.path must be relative and must not contain '..'"))]
    pub path: String,
}

/// A systematic Reed-Solomon code: k data and m parity stripes per item.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.k + self.m <= 256").message("spec.erasure: k + m must be at most 256"))]
#[x_kube(validation = Rule::new("self.stripeUnit % 64 == 0").message("spec.erasure.stripeUnit must be a multiple of 64 bytes"))]
#[x_kube(validation = Rule::new("self.blockSize % 64 == 0").message("spec.erasure.blockSize must be a multiple of 64 bytes"))]
#[x_kube(validation = Rule::new("!has(self.minWriteStripes) || (self.minWriteStripes >= self.k && self.minWriteStripes <= self.k + self.m)").message("spec.erasure.minWriteStripes must be between k and k + m"))]
pub struct Erasure {
    /// Data stripes per item.
    #[serde(default = "default_k")]
    #[schemars(range(min = 1, max = 255))]
    pub k: u32,
    /// Parity stripes per item: how many may be lost at once.
    #[serde(default = "default_m")]
    #[schemars(range(min = 1, max = 255))]
    pub m: u32,
    /// Bytes per stripe per item (a multiple of 64).
    #[serde(default = "default_stripe_unit")]
    #[schemars(range(min = 64, max = 268435456))]
    pub stripe_unit: u64,
    /// Bytes per checksummed block (a multiple of 64).
    #[serde(default = "default_block_size")]
    #[schemars(range(min = 64, max = 16777216))]
    pub block_size: u64,
    /// Stripes of an item that must be stored for a write to succeed when
    /// fewer than k + m chunkservers can take them (servers down); the rest
    /// are rebuilt once placement allows. Default k + 1; k + m never writes
    /// degraded. Fewer means writes go on through more failures, and items
    /// written then survive fewer losses until they are rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_write_stripes: Option<u32>,
}

fn default_k() -> u32 {
    6
}
fn default_m() -> u32 {
    3
}
fn default_stripe_unit() -> u64 {
    1 << 20
}
fn default_block_size() -> u64 {
    64 << 10
}

impl Default for Erasure {
    fn default() -> Self {
        Self {
            k: default_k(),
            m: default_m(),
            stripe_unit: default_stripe_unit(),
            block_size: default_block_size(),
            min_write_stripes: None,
        }
    }
}

/// Failure domains and how many stripes of one item each may hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The level the bound applies to.
    #[serde(default)]
    pub level: DomainLevel,
    /// Most stripes of one item in one domain (default: m, which keeps every
    /// item readable with any one domain down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub max_per_domain: Option<u32>,
    /// Node labels that name each level's domain (defaults:
    /// topology.kubernetes.io/region, topology.kubernetes.io/zone,
    /// tessera.dev/rack, kubernetes.io/hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<DomainLabels>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DomainLevel {
    Region,
    #[default]
    Zone,
    Rack,
    Node,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DomainLabels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Versions kept; older ones are deleted unless a volume pins them.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_versions: u32,
}

fn default_keep() -> u32 {
    1
}

impl Default for Retention {
    fn default() -> Self {
        Self { keep_versions: default_keep() }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Distribution {
    /// Nodes that receive a copy of each new version ahead of use.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
}

/// What the operator observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FilesetStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, Repairing.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The newest published version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// Files and bytes of the current version (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The kept versions, oldest first.
    #[serde(default)]
    pub versions: Vec<VersionStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<RedundancyStatus>,
    /// Stripes held per failure domain at the placement level.
    #[serde(default)]
    pub stripes_per_domain: BTreeMap<String, u64>,
    /// Key of the source the current version was made from; a spec whose
    /// source has another key gets a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested_source: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    pub id: u64,
    /// RFC 3339.
    pub created: String,
    pub files: u64,
    pub bytes: u64,
    pub items: u64,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedundancyStatus {
    pub items_full: u64,
    pub items_reduced: u64,
    pub items_unrecoverable: u64,
    /// `full`, `reduced`, or `lost` for kubectl.
    pub summary: String,
    /// Stripes their chunkservers found corrupt (a block failing its
    /// checksum on a read or a scrub) and quarantined, and how many of
    /// those have been rebuilt, since the master started.
    #[serde(default)]
    pub corrupt_stripes_found: u64,
    #[serde(default)]
    pub corrupt_stripes_rebuilt: u64,
    /// Items written with fewer than k + m stripes (servers were down),
    /// since the master started; they are rebuilt as placement allows.
    #[serde(default)]
    pub degraded_writes: u64,
}
