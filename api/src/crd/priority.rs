//! `Priority`: how a class of filesets is read, shares bandwidth and is repaired.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A cluster-wide priority that filesets refer to by name.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Priority",
    plural = "priorities",
    status = "PriorityStatus",
    shortname = "tprio",
    printcolumn = r#"{"name":"Value","type":"integer","jsonPath":".spec.value"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".spec.weight"}"#,
    printcolumn = r#"{"name":"Read","type":"string","jsonPath":".spec.readPolicy.mode"}"#,
    printcolumn = r#"{"name":"Repair","type":"string","jsonPath":".spec.repairClass"}"#,
    printcolumn = r#"{"name":"Filesets","type":"integer","jsonPath":".status.filesets"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PrioritySpec {
    /// Higher runs first when jobs and repairs compete. Reserved: accepted,
    /// and nothing acts on it until jobs and the resource manager are built.
    pub value: i32,
    /// Share of bandwidth relative to other priorities (1 to 1000).
    /// Reserved as `value` is.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: u32,
    #[serde(default)]
    pub read_policy: ReadPolicy,
    /// `high`: lost stripes are rebuilt at once; `low`: after the repair grace period.
    #[serde(default)]
    pub repair_class: RepairClass,
    #[serde(default)]
    pub write_policy: WritePolicy,
}

/// How writes of these filesets go on while chunkservers are down.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WritePolicy {
    /// Stripes beyond k each item must have stored for a write to succeed
    /// when fewer than k + m servers can take it (the rest are rebuilt once
    /// placement allows): 1 by default, as Ceph's min_size = k + 1; m never
    /// writes degraded (values above m mean m). A Fileset's own
    /// `spec.erasure.minWriteStripes` takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 255))]
    pub min_write_redundancy: Option<u32>,
}

/// What the operator reports of a priority.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriorityStatus {
    /// The generation of the spec the filesets below were last told of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Filesets (in any namespace) that name this priority.
    #[serde(default)]
    pub filesets: u32,
}

fn default_weight() -> u32 {
    1
}

/// How readers of these filesets fetch stripes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.hedgeDelayMinMs <= self.hedgeDelayMaxMs").message("readPolicy.hedgeDelayMinMs must not exceed readPolicy.hedgeDelayMaxMs"))]
pub struct ReadPolicy {
    #[serde(default)]
    pub mode: ReadMode,
    /// Lower bound of the adaptive hedge delay, in milliseconds.
    #[serde(default = "default_hedge_min")]
    #[schemars(range(max = 60000))]
    pub hedge_delay_min_ms: u32,
    /// Upper bound of the adaptive hedge delay, in milliseconds.
    #[serde(default = "default_hedge_max")]
    #[schemars(range(max = 60000))]
    pub hedge_delay_max_ms: u32,
    /// Parity stripes requested up front in hedged mode (more than a
    /// fileset's m mean m).
    #[serde(default)]
    #[schemars(range(max = 255))]
    pub extra_stripes: u32,
}

fn default_hedge_min() -> u32 {
    2
}

fn default_hedge_max() -> u32 {
    200
}

impl Default for ReadPolicy {
    fn default() -> Self {
        Self {
            mode: ReadMode::default(),
            hedge_delay_min_ms: default_hedge_min(),
            hedge_delay_max_ms: default_hedge_max(),
            extra_stripes: 0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    Normal,
    #[default]
    Hedged,
    Accelerated,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RepairClass {
    High,
    #[default]
    Low,
}
