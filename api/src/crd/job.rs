//! `Job`: tasks run over the groups of a fileset version, next to their
//! data, each group's result counted once, published as an output version.

use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use tessera_core::jobs::grouping::{Grouping, NamedPattern};
use tessera_core::jobs::straggler::{LessCritical, Pick, Policy, PolicyKind};

/// A job over one version of a fileset.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Job",
    namespaced,
    status = "JobStatus",
    shortname = "tjob",
    printcolumn = r#"{"name":"Input","type":"string","jsonPath":".spec.input.fileset"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".status.inputVersion"}"#,
    printcolumn = r#"{"name":"Groups","type":"integer","jsonPath":".status.groups"}"#,
    printcolumn = r#"{"name":"Committed","type":"integer","jsonPath":".status.committed"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.running"}"#,
    printcolumn = r#"{"name":"Accelerated","type":"integer","jsonPath":".status.accelerated","priority":1}"#,
    printcolumn = r#"{"name":"Backups","type":"integer","jsonPath":".status.backups","priority":1}"#,
    printcolumn = r#"{"name":"Succeeded","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable; create a new job to run again"))]
pub struct JobSpec {
    pub input: JobInput,
    pub grouping: JobGrouping,
    /// What each task runs: its group's file list is at
    /// `$TESSERA_GROUP_FILES`, the input version is mounted read-only at
    /// `$TESSERA_INPUT`, and the result goes under `$TESSERA_OUTPUT`.
    pub task: TaskTemplate,
    pub output: JobOutput,
    /// Name of the `Priority` the tasks' reads and the job's share run at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority: Option<String>,
    #[serde(default)]
    pub stragglers: StragglerPolicy,
    /// Failed attempts a group may have before the job fails.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(max = 100))]
    pub backoff_limit: u32,
}

fn default_backoff_limit() -> u32 {
    3
}

/// The input: a fileset of the job's namespace and a version of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobInput {
    #[schemars(length(min = 1, max = 253))]
    pub fileset: String,
    /// The version to read; by default the current one when the job is
    /// created (recorded in `status.inputVersion`, so the job reads one
    /// version to the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<u64>,
}

/// Exactly one of `directory`, `glob`, `bytes` or `location`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.directory), has(self.glob), has(self.bytes), has(self.location)].filter(x, x).size() == 1").message("spec.grouping must set exactly one of directory, glob, bytes or location"))]
pub struct JobGrouping {
    /// A group per directory, down to `depth` components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryGrouping>,
    /// A group per pattern: each file goes to the first pattern it
    /// matches; a file no pattern matches fails the job before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub glob: Option<Vec<GlobGroup>>,
    /// Consecutive files (in path order) up to this many bytes per group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub bytes: Option<u64>,
    /// A group per chunkserver: each file goes with the server holding the
    /// most of its data, so every task reads locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationGrouping>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryGrouping {
    #[serde(default = "default_depth")]
    #[schemars(range(min = 1, max = 64))]
    pub depth: u32,
}

fn default_depth() -> u32 {
    1
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GlobGroup {
    /// The group's name, a relative directory of the output.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.split('/').exists(p, p == '' || p == '.' || p == '..')").message("spec.grouping.glob[].group must be a relative path without empty, '.' or '..' components"))]
    pub group: String,
    /// `*` and `?` within a path component, `**` across components.
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LocationGrouping {}

/// The container each task runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 65536)))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 65536)))]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<TaskEnv>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskEnv {
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.startsWith('TESSERA_')").message("spec.task.env[].name: TESSERA_ variables are set by the job"))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = 65536))]
    pub value: String,
}

/// Where the results go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobOutput {
    /// A fileset of the job's namespace (with an `upload` source) whose next
    /// version holds `<group>/...` for every group, published once every
    /// group is committed.
    #[schemars(length(min = 1, max = 253))]
    pub fileset: String,
    /// Optionally, one file made of every group's result, in group order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concatenate: Option<Concatenate>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Concatenate {
    /// The file each group's result directory holds, concatenated.
    #[schemars(length(min = 1, max = 4096))]
    pub from: String,
    /// The output version's file that holds the concatenation.
    #[schemars(length(min = 1, max = 4096))]
    pub to: String,
}

/// When tasks are slow: accelerated reads, backups, the end game.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.policy == 'priority' || !has(self.criticalGroups)").message("spec.stragglers.criticalGroups is only read by policy priority"))]
pub struct StragglerPolicy {
    #[serde(default)]
    pub policy: StragglerKind,
    /// A task is slow below this percentage of the average rate.
    #[serde(default = "default_slow_below")]
    #[schemars(range(min = 1, max = 99))]
    pub slow_below_percent: u32,
    /// A task is judged only after it ran this long.
    #[serde(default = "default_warmup")]
    #[schemars(range(max = 3600))]
    pub warmup_seconds: u32,
    /// Accelerated reads only while the task node's link is loaded below
    /// this percentage.
    #[serde(default = "default_network_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub network_limit_percent: u32,
    /// At most this percentage of the candidates for acceleration is
    /// accelerated per evaluation (at least one).
    #[serde(default = "default_accelerate_cap")]
    #[schemars(range(min = 1, max = 100))]
    pub accelerate_cap_percent: u32,
    /// Backups running or asked for at once, as a percentage of the running
    /// tasks (at least one).
    #[serde(default = "default_backup_cap")]
    #[schemars(range(min = 1, max = 100))]
    pub backup_cap_percent: u32,
    #[serde(default)]
    pub pick: PickOrder,
    /// Once at least this percentage of groups is committed (a small job:
    /// at its last group), every running task reads accelerated.
    #[serde(default = "default_end_game")]
    #[schemars(range(min = 1, max = 100))]
    pub end_game_percent: u32,
    /// Backups start once this percentage of groups is committed.
    #[serde(default = "default_backup_after")]
    #[schemars(range(max = 100))]
    pub backup_after_percent: u32,
    /// The progressive policy's escalation period.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: u32,
    /// Policy priority: what slow tasks of groups not listed as critical get.
    #[serde(default)]
    pub less_critical: LessCriticalChoice,
    /// Policy priority: patterns of the critical groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub critical_groups: Option<Vec<String>>,
}

fn default_slow_below() -> u32 {
    60
}
fn default_warmup() -> u32 {
    5
}
fn default_network_limit() -> u32 {
    50
}
fn default_accelerate_cap() -> u32 {
    50
}
fn default_backup_cap() -> u32 {
    10
}
fn default_end_game() -> u32 {
    99
}
fn default_backup_after() -> u32 {
    75
}
fn default_period() -> u32 {
    10
}

impl Default for StragglerPolicy {
    fn default() -> Self {
        Self {
            policy: StragglerKind::default(),
            slow_below_percent: default_slow_below(),
            warmup_seconds: default_warmup(),
            network_limit_percent: default_network_limit(),
            accelerate_cap_percent: default_accelerate_cap(),
            backup_cap_percent: default_backup_cap(),
            pick: PickOrder::default(),
            end_game_percent: default_end_game(),
            backup_after_percent: default_backup_after(),
            period_seconds: default_period(),
            less_critical: LessCriticalChoice::default(),
            critical_groups: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StragglerKind {
    None,
    Accelerate,
    Backup,
    #[default]
    Progressive,
    Priority,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PickOrder {
    #[default]
    Slowest,
    Random,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LessCriticalChoice {
    Normal,
    #[default]
    Accelerate,
    Backup,
}

/// What the controller observed and did. Per-group state is kept outside
/// this object (it would pass the apiserver's size limit at thousands of
/// groups); these are its counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Running, Succeeded, Failed.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The input version, pinned when the job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_version: Option<u64>,
    /// The output version, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_version: Option<u64>,
    #[serde(default)]
    pub groups: u32,
    #[serde(default)]
    pub committed: u32,
    #[serde(default)]
    pub running: u32,
    #[serde(default)]
    pub accelerated: u32,
    #[serde(default)]
    pub backups: u32,
    #[serde(default)]
    pub failed_attempts: u32,
}

/// A Job the apiserver would have refused, read from elsewhere (a file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    #[error("spec.grouping must set exactly one of directory, glob, bytes or location")]
    GroupingNotOne,
}

impl JobGrouping {
    /// The core's grouping. The apiserver's CEL rule already refuses a Job
    /// without exactly one way; a manifest read from a file is checked here.
    pub fn grouping(&self) -> Result<Grouping, JobSpecError> {
        let set = [self.directory.is_some(), self.glob.is_some(), self.bytes.is_some(), self.location.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(JobSpecError::GroupingNotOne);
        }
        Ok(if let Some(d) = &self.directory {
            Grouping::Directory { depth: d.depth as usize }
        } else if let Some(g) = &self.glob {
            Grouping::Glob(
                g.iter().map(|g| NamedPattern { group: g.group.clone(), pattern: g.pattern.clone() }).collect(),
            )
        } else if let Some(target) = self.bytes {
            Grouping::Bytes { target }
        } else {
            Grouping::Location
        })
    }
}

impl StragglerPolicy {
    /// The core's policy for these knobs (integer percentages and seconds,
    /// as Kubernetes APIs spell them), so that the two sets of defaults
    /// cannot drift apart; `seed` drives a random pick (from the Job's uid,
    /// so a restarted controller picks the same tasks).
    pub fn policy(&self, seed: u64) -> Policy {
        let percent = |p: u32| f64::from(p) / 100.0;
        Policy {
            kind: match self.policy {
                StragglerKind::None => PolicyKind::None,
                StragglerKind::Accelerate => PolicyKind::Accelerate,
                StragglerKind::Backup => PolicyKind::Backup,
                StragglerKind::Progressive => PolicyKind::Progressive,
                StragglerKind::Priority => PolicyKind::Priority,
            },
            slow_below: percent(self.slow_below_percent),
            warmup: Duration::from_secs(self.warmup_seconds.into()),
            network_limit: percent(self.network_limit_percent),
            accelerate_cap: percent(self.accelerate_cap_percent),
            backup_cap: percent(self.backup_cap_percent),
            pick: match self.pick {
                PickOrder::Slowest => Pick::Slowest,
                PickOrder::Random => Pick::Random(seed),
            },
            end_game: percent(self.end_game_percent),
            backup_after: percent(self.backup_after_percent),
            period: Duration::from_secs(self.period_seconds.into()),
            less_critical: match self.less_critical {
                LessCriticalChoice::Normal => LessCritical::Normal,
                LessCriticalChoice::Accelerate => LessCritical::Accelerate,
                LessCriticalChoice::Backup => LessCritical::Backup,
            },
            ..Policy::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_without_straggler_knobs_gets_the_cores_default_policy() {
        assert_eq!(StragglerPolicy::default().policy(7), Policy::default());
    }

    #[test]
    fn every_knob_reaches_the_policy() {
        let s = StragglerPolicy {
            policy: StragglerKind::Priority,
            slow_below_percent: 30,
            warmup_seconds: 2,
            network_limit_percent: 15,
            accelerate_cap_percent: 20,
            backup_cap_percent: 5,
            pick: PickOrder::Random,
            end_game_percent: 95,
            backup_after_percent: 50,
            period_seconds: 30,
            less_critical: LessCriticalChoice::Backup,
            critical_groups: None,
        };
        let want = Policy {
            kind: PolicyKind::Priority,
            slow_below: 0.3,
            warmup: Duration::from_secs(2),
            network_limit: 0.15,
            accelerate_cap: 0.2,
            backup_cap: 0.05,
            pick: Pick::Random(7),
            end_game: 0.95,
            backup_after: 0.5,
            period: Duration::from_secs(30),
            less_critical: LessCritical::Backup,
            ..Policy::default()
        };
        assert_eq!(s.policy(7), want);
    }

    #[test]
    fn a_grouping_is_exactly_one_way() {
        let g = JobGrouping { bytes: Some(100), ..Default::default() };
        assert_eq!(g.grouping(), Ok(Grouping::Bytes { target: 100 }));
        let two = JobGrouping { bytes: Some(100), location: Some(LocationGrouping {}), ..Default::default() };
        assert_eq!(two.grouping(), Err(JobSpecError::GroupingNotOne));
        assert!(JobGrouping::default().grouping().is_err());
        let glob = JobGrouping {
            glob: Some(vec![GlobGroup { group: "t".into(), pattern: "train/**".into() }]),
            ..Default::default()
        };
        let want = Grouping::Glob(vec![NamedPattern { group: "t".into(), pattern: "train/**".into() }]);
        assert_eq!(glob.grouping(), Ok(want));
    }
}
