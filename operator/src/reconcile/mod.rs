//! What the Fileset controller should do, decided without a cluster.
//!
//! The controller gathers a [`Observed`] snapshot (the object, what the master
//! knows of the fileset, the state of any ingest) and [`decide`] answers with
//! the actions to take, in order, the status to write and the events to
//! record. Nothing here talks to the apiserver or the master, so every rule
//! (finalizers first, a changed source makes a new version, conditions keep
//! their transition times, deletion removes the data before the finalizer) is
//! a unit test.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sha2::{Digest, Sha256};

use tessera_api::crd::{FilesetSpec, FilesetStatus, ReadMode, RedundancyStatus, RepairClass, Source, VersionStatus};
use tessera_core::read_plan::ReadMode as Mode;
use tessera_core::repair::Availability;
use tessera_core::units::human;
pub use tessera_master::records::HedgeTuning;

/// The finalizer that keeps a Fileset until its data is deleted.
pub use tessera_api::keys::FINALIZER;

/// A version as the master reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterVersion {
    pub id: u64,
    pub created: Time,
    pub files: u64,
    pub bytes: u64,
    pub items: u64,
}

/// The master's view of one fileset.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterFileset {
    /// Kept versions, oldest first.
    pub versions: Vec<MasterVersion>,
    pub items_full: u64,
    pub items_reduced: u64,
    pub items_unrecoverable: u64,
    pub repairing: u64,
    pub stripes_per_domain: Vec<(String, u64)>,
    /// How soon lost stripes are rebuilt.
    pub availability: Availability,
    /// How readers fetch stripes by default; none: their own choice.
    pub read_mode: Option<Mode>,
    /// Stripes a write must store (0: the master's default, k + 1).
    pub min_write_stripes: u32,
    /// How readers hedge; none: their own choice.
    pub hedge: Option<HedgeTuning>,
    /// The master started moments ago and is still hearing from
    /// chunkservers: its redundancy figures are incomplete.
    pub relearning: bool,
    pub corrupt_stripes_found: u64,
    pub corrupt_stripes_rebuilt: u64,
    pub degraded_writes: u64,
}

impl Default for MasterFileset {
    fn default() -> Self {
        Self {
            versions: Vec::new(),
            items_full: 0,
            items_reduced: 0,
            items_unrecoverable: 0,
            repairing: 0,
            stripes_per_domain: Vec::new(),
            availability: Availability::Low,
            read_mode: None,
            min_write_stripes: 0,
            hedge: None,
            relearning: false,
            corrupt_stripes_found: 0,
            corrupt_stripes_rebuilt: 0,
            degraded_writes: 0,
        }
    }
}

/// What the fileset's `spec.priority` names.
#[derive(Debug, Clone, PartialEq)]
pub enum PriorityRef {
    /// No priority: low availability.
    Unset,
    /// A Priority that does not exist (yet): low availability until it does.
    Missing { name: String },
    Found {
        name: String,
        repair_class: RepairClass,
        read_mode: ReadMode,
        /// `writePolicy.minWriteRedundancy`.
        min_write_redundancy: Option<u32>,
        /// `readPolicy`'s hedge delay bounds and extra stripes.
        hedge: HedgeTuning,
    },
}

impl PriorityRef {
    /// The master's availability this priority asks for.
    pub fn availability(&self) -> Availability {
        match self {
            PriorityRef::Found { repair_class: RepairClass::High, .. } => Availability::High,
            _ => Availability::Low,
        }
    }

    /// The read mode this priority gives readers of the fileset; none
    /// without a priority (each reader's own default applies).
    pub fn read_mode(&self) -> Option<Mode> {
        match self {
            PriorityRef::Found { read_mode: ReadMode::Normal, .. } => Some(Mode::Normal),
            PriorityRef::Found { read_mode: ReadMode::Hedged, .. } => Some(Mode::Hedged),
            PriorityRef::Found { read_mode: ReadMode::Accelerated, .. } => Some(Mode::Accelerated),
            _ => None,
        }
    }
}

impl PriorityRef {
    /// How this priority has readers of the fileset hedge; none without a
    /// priority (each reader's own defaults apply).
    pub fn hedge(&self) -> Option<HedgeTuning> {
        match self {
            PriorityRef::Found { hedge, .. } => Some(*hedge),
            _ => None,
        }
    }
}

/// How readers of this fileset hedge, for the master's record: its
/// priority's read policy, with no more extra stripes than the code has
/// parity stripes (more mean all m).
pub fn hedge_for(spec: &FilesetSpec, priority: &PriorityRef) -> Option<HedgeTuning> {
    priority.hedge().map(|h| HedgeTuning { extra_stripes: h.extra_stripes.min(spec.erasure.m), ..h })
}

/// Stripes of an item a write must store for the master's record of this
/// fileset: the Fileset's own `minWriteStripes`, else k plus the priority's
/// `minWriteRedundancy` (at most m), else 0 (the master's default, k + 1).
pub fn min_write_stripes(spec: &FilesetSpec, priority: &PriorityRef) -> u32 {
    let e = &spec.erasure;
    match (e.min_write_stripes, priority) {
        (Some(v), _) => v,
        (None, PriorityRef::Found { min_write_redundancy: Some(r), .. }) => e.k + (*r).min(e.m),
        _ => 0,
    }
}

/// Where an ingest of the current source stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingest {
    /// None running.
    Idle,
    Running,
    /// The last attempt failed; it is retried after a back-off.
    Failed {
        reason: String,
    },
    /// The source with this key was stored as a new version.
    Done {
        source_key: String,
    },
}

/// Everything the decision needs.
#[derive(Debug, Clone)]
pub struct Observed {
    pub generation: i64,
    pub deleting: bool,
    pub has_finalizer: bool,
    pub spec: FilesetSpec,
    pub status: FilesetStatus,
    /// `None` when the master has no such fileset (yet, or any more), or
    /// when the master's fileset of this name mirrors another object.
    pub master: Option<MasterFileset>,
    /// The other object (`namespace/uid`) whose fileset has this name:
    /// this one is not stored, and its deletion deletes nothing.
    pub name_taken_by: Option<String>,
    pub priority: PriorityRef,
    pub ingest: Ingest,
    pub now: Time,
}

/// A step for the controller, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    AddFinalizer,
    /// Create the fileset in the master with the spec's layout and policy.
    CreateInMaster,
    /// The priority's repair class changed: tell the master.
    SetAvailability {
        availability: Availability,
    },
    /// The priority's read policy changed: tell the master, from which node
    /// plugins take a root volume's read mode when it names none.
    SetReadMode {
        read_mode: Option<Mode>,
    },
    /// The stripes a write must store changed (the priority's write policy,
    /// or a Fileset made before it had one): tell the master.
    SetMinWriteStripes {
        stripes: u32,
    },
    /// The priority's hedge delay bounds or extra stripes changed: tell the
    /// master, from which node plugins take them for new root mounts.
    SetHedge {
        hedge: Option<HedgeTuning>,
    },
    /// Fetch the source and put it as a new version.
    StartIngest {
        source_key: String,
    },
    /// Delete every version and the fileset in the master.
    DeleteData,
    RemoveFinalizer,
}

/// A Kubernetes Event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// `None` while deleting (the object is going away).
    pub status: Option<FilesetStatus>,
    pub events: Vec<EventNote>,
}

/// A stable key for a source: a new key means a new version is due.
pub fn source_key(source: &Source) -> String {
    let text = serde_json::to_string(source).expect("a source serializes");
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

pub fn decide(o: &Observed) -> Decision {
    let mut actions = Vec::new();
    let mut events = Vec::new();

    if o.deleting {
        if o.has_finalizer {
            if o.master.is_some() && o.name_taken_by.is_none() {
                actions.push(Action::DeleteData);
                events.push(EventNote {
                    warning: false,
                    reason: "DeletingData",
                    message: "deleting every version and its stripes".into(),
                });
            } else {
                actions.push(Action::RemoveFinalizer);
            }
        }
        return Decision { actions, status: None, events };
    }
    if let Some(owner) = &o.name_taken_by {
        // Names are cluster-wide in the master: another namespace's Fileset
        // has this one. Nothing is created, nor ever deleted, for this one.
        if o.status.observed_generation != Some(o.generation) {
            events.push(EventNote {
                warning: true,
                reason: "NameTaken",
                message: format!("the fileset name is taken by {owner}; names are unique across the cluster"),
            });
        }
        let mut status = o.status.clone();
        status.observed_generation = Some(o.generation);
        let was = status.conditions.iter().find(|c| c.type_ == "Ready").cloned();
        status.conditions.retain(|c| c.type_ != "Ready");
        let message = format!("the name is taken by the Fileset {owner}");
        status.conditions.push(condition(was.as_ref(), "Ready", false, "NameTaken", message, o.generation, &o.now));
        return Decision { actions, status: Some(status), events };
    }
    if !o.has_finalizer {
        actions.push(Action::AddFinalizer);
    }
    match &o.master {
        None => actions.push(Action::CreateInMaster),
        Some(m) => {
            let availability = o.priority.availability();
            if m.availability != availability {
                actions.push(Action::SetAvailability { availability });
                events.push(EventNote {
                    warning: false,
                    reason: "RepairClassChanged",
                    message: format!("lost stripes are now rebuilt with {availability} availability"),
                });
            }
            let read_mode = o.priority.read_mode();
            if m.read_mode != read_mode {
                actions.push(Action::SetReadMode { read_mode });
                let message = match read_mode {
                    None => "volumes mounted from now on use their node's default read mode".to_string(),
                    Some(mode) => format!("volumes mounted from now on read in {mode} mode"),
                };
                events.push(EventNote { warning: false, reason: "ReadModeChanged", message });
            }
            let stripes = min_write_stripes(&o.spec, &o.priority);
            if m.min_write_stripes != stripes {
                actions.push(Action::SetMinWriteStripes { stripes });
                let message = match stripes {
                    0 => "writes while servers are down need k + 1 stripes of each item stored".to_string(),
                    n => format!("writes while servers are down need {n} stripes of each item stored"),
                };
                events.push(EventNote { warning: false, reason: "WritePolicyChanged", message });
            }
            let hedge = hedge_for(&o.spec, &o.priority);
            if m.hedge != hedge {
                actions.push(Action::SetHedge { hedge });
                let message = match hedge {
                    None => "volumes mounted from now on hedge by their node's defaults".to_string(),
                    Some(h) => format!(
                        "volumes mounted from now on hedge after {} to {} ms with {} extra stripes",
                        h.delay_min_ms, h.delay_max_ms, h.extra_stripes
                    ),
                };
                events.push(EventNote { warning: false, reason: "ReadPolicyChanged", message });
            }
        }
    }
    if let PriorityRef::Missing { name } = &o.priority
        && o.status.observed_generation != Some(o.generation)
    {
        events.push(EventNote {
            warning: true,
            reason: "PriorityNotFound",
            message: format!("priority {name:?} does not exist; using low availability until it does"),
        });
    }

    let key = source_key(&o.spec.source);
    let master = o.master.clone().unwrap_or_default();
    let just_done = matches!(&o.ingest, Ingest::Done { source_key } if *source_key == key);
    let ingested = just_done || o.status.ingested_source.as_deref() == Some(key.as_str());
    let pulls = o.spec.source.upload.is_none();
    let mut status = o.status.clone();
    status.observed_generation = Some(o.generation);
    if just_done {
        status.ingested_source = Some(key.clone());
    }

    // A source the operator fetches is ingested once per change.
    // A finished ingest of an older source says nothing about this one.
    let ingest = match &o.ingest {
        Ingest::Done { source_key } if *source_key != key => &Ingest::Idle,
        other => other,
    };
    let progressing = if pulls && !ingested {
        match ingest {
            Ingest::Idle => {
                actions.push(Action::StartIngest { source_key: key.clone() });
                events.push(EventNote {
                    warning: false,
                    reason: "IngestStarted",
                    message: format!("fetching the source for version {}", next_version(&master)),
                });
                Some(("Ingesting", "fetching and storing the source".to_string()))
            }
            Ingest::Running | Ingest::Done { .. } => Some(("Ingesting", "fetching and storing the source".to_string())),
            Ingest::Failed { reason } => {
                events.push(EventNote { warning: true, reason: "IngestFailed", message: reason.clone() });
                None
            }
        }
    } else {
        None
    };
    let failed = match (ingest, pulls && !ingested) {
        (Ingest::Failed { reason }, true) => Some(reason.clone()),
        _ => None,
    };

    // What the master holds.
    let current = master.versions.last();
    if let Some(v) = current
        && status.current_version != Some(v.id)
    {
        events.push(EventNote {
            warning: false,
            reason: "VersionPublished",
            message: format!("version {} is ready: {} files, {}", v.id, v.files, human(v.bytes)),
        });
    }
    status.current_version = current.map(|v| v.id);
    status.files = current.map(|v| v.files);
    status.size = current.map(|v| human(v.bytes));
    status.versions = master
        .versions
        .iter()
        .map(|v| VersionStatus {
            id: v.id,
            created: v.created.0.to_string(),
            files: v.files,
            bytes: v.bytes,
            items: v.items,
        })
        .collect();
    let summary = if master.items_unrecoverable > 0 {
        "lost"
    } else if master.items_reduced > 0 {
        "reduced"
    } else {
        "full"
    };
    let found_before = status.redundancy.as_ref().map_or(0, |r| r.corrupt_stripes_found);
    if master.corrupt_stripes_found > found_before {
        events.push(EventNote {
            warning: true,
            reason: "CorruptStripe",
            message: format!(
                "{} stripes found corrupt and quarantined ({} rebuilt so far)",
                master.corrupt_stripes_found - found_before,
                master.corrupt_stripes_rebuilt
            ),
        });
    }
    // While the master relearns locations after a restart its figures are
    // incomplete: the last known ones stand, and no condition changes on
    // them (no alarm about items that have simply not been reported yet).
    let relearning = master.relearning && o.master.is_some();
    if !relearning {
        status.redundancy = o.master.as_ref().map(|_| RedundancyStatus {
            items_full: master.items_full,
            items_reduced: master.items_reduced,
            items_unrecoverable: master.items_unrecoverable,
            summary: summary.into(),
            corrupt_stripes_found: master.corrupt_stripes_found,
            corrupt_stripes_rebuilt: master.corrupt_stripes_rebuilt,
            degraded_writes: master.degraded_writes,
        });
        status.stripes_per_domain = master.stripes_per_domain.iter().cloned().collect();
    }

    let ready = current.is_some() && master.items_unrecoverable == 0;
    let (ready_reason, ready_message) = match (current, &failed) {
        (_, _) if master.items_unrecoverable > 0 => {
            ("DataLost", format!("{} items have fewer than k stripes", master.items_unrecoverable))
        }
        (Some(v), _) => ("VersionReady", format!("version {} can be read", v.id)),
        (None, Some(reason)) => ("IngestFailed", reason.clone()),
        (None, None) => ("NoVersion", "no version has been stored yet".to_string()),
    };
    let degraded = master.items_reduced > 0 || master.items_unrecoverable > 0;
    let conditions = [
        ("Ready", ready, ready_reason, ready_message),
        (
            "Progressing",
            progressing.is_some(),
            progressing.as_ref().map_or("Idle", |p| p.0),
            progressing.map_or_else(String::new, |p| p.1),
        ),
        (
            "Degraded",
            degraded,
            if degraded { "RedundancyReduced" } else { "FullRedundancy" },
            format!("{} items at reduced redundancy", master.items_reduced),
        ),
        (
            "Repairing",
            master.repairing > 0,
            if master.repairing > 0 { "Rebuilding" } else { "Idle" },
            format!("{} items being rebuilt", master.repairing),
        ),
    ];
    let previous = std::mem::take(&mut status.conditions);
    for (kind, on, reason, message) in conditions {
        let was = previous.iter().find(|c| c.type_ == kind);
        if relearning
            && matches!(kind, "Ready" | "Degraded" | "Repairing")
            && let Some(c) = was
        {
            status.conditions.push(c.clone());
            continue;
        }
        if kind == "Degraded" && on && was.is_none_or(|c| c.status != "True") {
            events.push(EventNote { warning: true, reason: "Degraded", message: message.clone() });
        }
        status.conditions.push(condition(was, kind, on, reason, message, o.generation, &o.now));
    }
    Decision { actions, status: Some(status), events }
}

fn next_version(m: &MasterFileset) -> u64 {
    m.versions.last().map_or(1, |v| v.id + 1)
}

/// A condition that keeps its transition time while its status is unchanged.
fn condition(
    was: Option<&Condition>,
    kind: &str,
    on: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    let status = if on { "True" } else { "False" };
    let last_transition_time = match was {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time,
    }
}

#[cfg(test)]
mod tests;
