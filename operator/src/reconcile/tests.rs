use super::*;
use tessera_api::crd::{HttpSource, UploadSource};

/// A Priority's read policy by default.
const DEFAULT_HEDGE: HedgeTuning = HedgeTuning { delay_min_ms: 2, delay_max_ms: 200, extra_stripes: 0 };

fn at(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

fn spec(url: &str) -> FilesetSpec {
    FilesetSpec {
        source: Source { http: Some(HttpSource { url: url.into(), sha256: None }), ..Default::default() },
        erasure: Default::default(),
        placement: Default::default(),
        priority: None,
        retention: Default::default(),
        distribution: None,
    }
}

fn observed(spec: FilesetSpec) -> Observed {
    Observed {
        generation: 1,
        deleting: false,
        has_finalizer: true,
        spec,
        status: FilesetStatus::default(),
        master: Some(MasterFileset::default()),
        name_taken_by: None,
        priority: PriorityRef::Unset,
        ingest: Ingest::Idle,
        now: at(0),
    }
}

fn version(id: u64) -> MasterVersion {
    MasterVersion { id, created: at(id as i64), files: 10 * id, bytes: 1 << 30, items: 171 }
}

fn cond<'a>(d: &'a Decision, kind: &str) -> &'a Condition {
    d.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == kind).unwrap()
}

#[test]
fn a_new_fileset_gets_its_finalizer_its_master_record_and_an_ingest() {
    let mut o = observed(spec("https://x/a.tar"));
    o.has_finalizer = false;
    o.master = None;
    let d = decide(&o);
    let key = source_key(&o.spec.source);
    assert_eq!(d.actions, vec![Action::AddFinalizer, Action::CreateInMaster, Action::StartIngest { source_key: key }]);
    assert_eq!(cond(&d, "Ready").status, "False");
    assert_eq!(cond(&d, "Progressing").status, "True");
    assert_eq!(d.status.as_ref().unwrap().observed_generation, Some(1));
}

#[test]
fn an_ingested_source_is_not_fetched_again_and_a_changed_one_is() {
    let mut o = observed(spec("https://x/a.tar"));
    o.status.ingested_source = Some(source_key(&o.spec.source));
    o.master = Some(MasterFileset { versions: vec![version(1)], items_full: 171, ..Default::default() });
    let d = decide(&o);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(cond(&d, "Ready").status, "True");
    assert_eq!(cond(&d, "Progressing").status, "False");
    let st = d.status.unwrap();
    assert_eq!((st.current_version, st.files, st.size.as_deref()), (Some(1), Some(10), Some("1.0 GiB")));
    assert_eq!(st.redundancy.unwrap().summary, "full");

    o.spec = spec("https://x/b.tar");
    o.generation = 2;
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::StartIngest { source_key: source_key(&o.spec.source) }]);
    // Version 1 stays readable while version 2 is made.
    assert_eq!(cond(&d, "Ready").status, "True");
    assert_eq!(cond(&d, "Progressing").status, "True");
}

#[test]
fn uploads_are_never_fetched() {
    let mut s = spec("https://unused");
    s.source = Source { upload: Some(UploadSource {}), ..Default::default() };
    let d = decide(&observed(s));
    assert!(d.actions.is_empty());
    assert_eq!(cond(&d, "Ready").reason, "NoVersion");
}

#[test]
fn a_failed_ingest_is_reported_and_not_progressing() {
    let mut o = observed(spec("https://x/a.tar"));
    o.ingest = Ingest::Failed { reason: "GET https://x/a.tar: 404 Not Found".into() };
    let d = decide(&o);
    assert!(d.actions.is_empty());
    let ready = cond(&d, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "IngestFailed"));
    assert!(ready.message.contains("404"));
    assert!(d.events.iter().any(|e| e.warning && e.reason == "IngestFailed"));
}

/// Version 1 of 171 items stored at full redundancy, its status decided.
fn ready_at_full_redundancy() -> Observed {
    let mut o = observed(spec("https://x/a.tar"));
    o.status.ingested_source = Some(source_key(&o.spec.source));
    o.master = Some(MasterFileset { versions: vec![version(1)], items_full: 171, ..Default::default() });
    o.status = decide(&o).status.unwrap();
    o
}

#[test]
fn a_relearning_master_changes_no_condition_and_corruption_is_an_event() {
    let mut o = ready_at_full_redundancy();
    // Right after a master restart nothing has been reported yet: every
    // item looks unrecoverable. Neither Degraded nor Ready may move.
    o.now = at(100);
    o.master = Some(MasterFileset {
        versions: vec![version(1)],
        items_unrecoverable: 171,
        relearning: true,
        ..Default::default()
    });
    let d = decide(&o);
    assert_eq!(cond(&d, "Degraded").status, "False");
    assert_eq!((cond(&d, "Ready").status.as_str(), &cond(&d, "Ready").last_transition_time), ("True", &at(0)));
    assert_eq!(d.status.as_ref().unwrap().redundancy.as_ref().unwrap().summary, "full", "last known figures");
    assert!(d.events.iter().all(|e| e.reason != "Degraded"), "{:?}", d.events);
    // Once relearned, the truth: here, a quarantined stripe.
    o.status = d.status.unwrap();
    o.master = Some(MasterFileset {
        versions: vec![version(1)],
        items_full: 170,
        items_reduced: 1,
        corrupt_stripes_found: 1,
        ..Default::default()
    });
    let d = decide(&o);
    assert_eq!(cond(&d, "Degraded").status, "True");
    let r = d.status.as_ref().unwrap().redundancy.clone().unwrap();
    assert_eq!((r.corrupt_stripes_found, r.corrupt_stripes_rebuilt), (1, 0));
    assert!(d.events.iter().any(|e| e.warning && e.reason == "CorruptStripe"), "{:?}", d.events);
    // Rebuilt: no second CorruptStripe event for the same stripe.
    o.status = d.status.unwrap();
    o.master = Some(MasterFileset {
        versions: vec![version(1)],
        items_full: 171,
        corrupt_stripes_found: 1,
        corrupt_stripes_rebuilt: 1,
        ..Default::default()
    });
    let d = decide(&o);
    assert_eq!(cond(&d, "Degraded").status, "False");
    assert!(d.events.iter().all(|e| e.reason != "CorruptStripe"), "{:?}", d.events);
}

#[test]
fn degraded_and_repairing_follow_the_master_and_keep_their_transition_times() {
    let mut o = ready_at_full_redundancy();
    o.now = at(100);
    o.master = Some(MasterFileset {
        versions: vec![version(1)],
        items_full: 160,
        items_reduced: 11,
        repairing: 4,
        ..Default::default()
    });
    let d = decide(&o);
    let degraded = cond(&d, "Degraded");
    assert_eq!((degraded.status.as_str(), &degraded.last_transition_time), ("True", &at(100)));
    assert_eq!(cond(&d, "Repairing").status, "True");
    // Ready did not change, so its transition time did not either.
    assert_eq!(cond(&d, "Ready").last_transition_time, at(0));
    assert!(d.events.iter().any(|e| e.reason == "Degraded"));
    assert_eq!(d.status.as_ref().unwrap().redundancy.as_ref().unwrap().summary, "reduced");
    // The same observation again: no second Degraded event.
    o.status = d.status.unwrap();
    o.now = at(200);
    let again = decide(&o);
    assert!(!again.events.iter().any(|e| e.reason == "Degraded"));
    assert_eq!(cond(&again, "Degraded").last_transition_time, at(100));
}

#[test]
fn lost_items_make_the_fileset_not_ready() {
    let mut o = observed(spec("https://x/a.tar"));
    o.status.ingested_source = Some(source_key(&o.spec.source));
    o.master = Some(MasterFileset { versions: vec![version(1)], items_unrecoverable: 2, ..Default::default() });
    let d = decide(&o);
    assert_eq!(cond(&d, "Ready").reason, "DataLost");
    assert_eq!(d.status.unwrap().redundancy.unwrap().summary, "lost");
}

#[test]
fn deletion_removes_the_data_before_the_finalizer() {
    let mut o = observed(spec("https://x/a.tar"));
    o.deleting = true;
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::DeleteData]);
    assert_eq!(d.status, None);
    o.master = None;
    assert_eq!(decide(&o).actions, vec![Action::RemoveFinalizer]);
    o.has_finalizer = false;
    assert!(decide(&o).actions.is_empty());
}

#[test]
fn a_finished_ingest_records_its_source_so_it_is_not_fetched_again() {
    let mut o = observed(spec("https://x/a.tar"));
    let key = source_key(&o.spec.source);
    o.ingest = Ingest::Done { source_key: key.clone() };
    o.master = Some(MasterFileset { versions: vec![version(1)], items_full: 171, ..Default::default() });
    let d = decide(&o);
    assert!(d.actions.is_empty());
    assert_eq!(d.status.as_ref().unwrap().ingested_source.as_deref(), Some(key.as_str()));
    assert_eq!(cond(&d, "Ready").status, "True");
    // A Done for an older source does not count for a new one.
    o.spec = spec("https://x/b.tar");
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::StartIngest { source_key: source_key(&o.spec.source) }]);
}

#[test]
fn source_keys_change_with_the_source_only() {
    let a = spec("https://x/a.tar");
    let mut a2 = a.clone();
    a2.retention.keep_versions = 5;
    assert_eq!(source_key(&a.source), source_key(&a2.source));
    assert_ne!(source_key(&a.source), source_key(&spec("https://x/b.tar").source));
}

#[test]
fn the_priority_repair_class_sets_the_master_availability() {
    let mut o = observed(spec("https://x/a.tar"));
    o.status.ingested_source = Some(source_key(&o.spec.source));
    o.status.observed_generation = Some(1);
    o.priority = PriorityRef::Found {
        name: "critical".into(),
        repair_class: RepairClass::High,
        read_mode: ReadMode::Hedged,
        min_write_redundancy: None,
        hedge: DEFAULT_HEDGE,
    };
    o.master.as_mut().unwrap().read_mode = Some(Mode::Hedged);
    o.master.as_mut().unwrap().hedge = Some(DEFAULT_HEDGE);
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::SetAvailability { availability: Availability::High }]);
    assert!(d.events.iter().any(|e| e.reason == "RepairClassChanged" && e.message.contains("high")));
    o.master.as_mut().unwrap().availability = Availability::High;
    assert!(decide(&o).actions.is_empty(), "nothing to do once the master agrees");
    // The priority goes away: back to low, with a warning on the next
    // change of the spec (not on every resync).
    o.priority = PriorityRef::Missing { name: "critical".into() };
    o.master.as_mut().unwrap().hedge = None;
    o.master.as_mut().unwrap().read_mode = None;
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::SetAvailability { availability: Availability::Low }]);
    assert!(!d.events.iter().any(|e| e.reason == "PriorityNotFound"));
    o.generation = 2;
    assert!(decide(&o).events.iter().any(|e| e.warning && e.reason == "PriorityNotFound"));
}

#[test]
fn the_priority_read_policy_sets_the_master_read_mode() {
    let mut o = observed(spec("https://x/a.tar"));
    o.status.ingested_source = Some(source_key(&o.spec.source));
    o.status.observed_generation = Some(1);
    o.priority = PriorityRef::Found {
        name: "fast".into(),
        repair_class: RepairClass::Low,
        read_mode: ReadMode::Accelerated,
        min_write_redundancy: None,
        hedge: DEFAULT_HEDGE,
    };
    o.master.as_mut().unwrap().hedge = Some(DEFAULT_HEDGE);
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::SetReadMode { read_mode: Some(Mode::Accelerated) }]);
    assert!(d.events.iter().any(|e| e.reason == "ReadModeChanged" && e.message.contains("accelerated")));
    o.master.as_mut().unwrap().read_mode = Some(Mode::Accelerated);
    assert!(decide(&o).actions.is_empty(), "nothing to do once the master agrees");
    // Without a priority the master's mode is cleared: readers choose.
    o.priority = PriorityRef::Unset;
    o.master.as_mut().unwrap().hedge = None;
    assert_eq!(decide(&o).actions, vec![Action::SetReadMode { read_mode: None }]);
}

#[test]
fn the_write_minimum_comes_from_the_fileset_or_its_priority() {
    let mut o = observed(spec("https://x/a.tar"));
    o.status.ingested_source = Some(source_key(&o.spec.source));
    o.status.observed_generation = Some(1);
    let strict = |r| PriorityRef::Found {
        name: "strict".into(),
        repair_class: RepairClass::Low,
        read_mode: ReadMode::Hedged,
        min_write_redundancy: Some(r),
        hedge: DEFAULT_HEDGE,
    };
    o.priority = strict(3);
    o.master.as_mut().unwrap().read_mode = Some(Mode::Hedged);
    o.master.as_mut().unwrap().hedge = Some(DEFAULT_HEDGE);
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::SetMinWriteStripes { stripes: 9 }], "k + m: never degraded");
    assert!(d.events.iter().any(|e| e.reason == "WritePolicyChanged" && e.message.contains('9')));
    // More than m means m.
    assert_eq!(min_write_stripes(&o.spec, &strict(7)), 9);
    o.master.as_mut().unwrap().min_write_stripes = 9;
    assert!(decide(&o).actions.is_empty(), "nothing to do once the master agrees");
    // The Fileset's own setting wins over its priority's.
    o.spec.erasure.min_write_stripes = Some(7);
    assert_eq!(decide(&o).actions, vec![Action::SetMinWriteStripes { stripes: 7 }]);
    // Neither: the master's default (k + 1).
    o.spec.erasure.min_write_stripes = None;
    o.priority = PriorityRef::Unset;
    o.master.as_mut().unwrap().hedge = None;
    o.master.as_mut().unwrap().read_mode = None;
    assert_eq!(decide(&o).actions, vec![Action::SetMinWriteStripes { stripes: 0 }]);
}

#[test]
fn the_priority_hedge_policy_reaches_the_master_and_is_cleared_without_one() {
    let mut o = observed(spec("https://x/a.tar"));
    o.status.ingested_source = Some(source_key(&o.spec.source));
    o.status.observed_generation = Some(1);
    let tight = HedgeTuning { delay_min_ms: 1, delay_max_ms: 20, extra_stripes: 2 };
    o.priority = PriorityRef::Found {
        name: "tight".into(),
        repair_class: RepairClass::Low,
        read_mode: ReadMode::Hedged,
        min_write_redundancy: None,
        hedge: tight,
    };
    o.master.as_mut().unwrap().read_mode = Some(Mode::Hedged);
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::SetHedge { hedge: Some(tight) }]);
    assert!(d.events.iter().any(|e| e.reason == "ReadPolicyChanged" && e.message.contains("1 to 20 ms with 2")));
    o.master.as_mut().unwrap().hedge = Some(tight);
    assert!(decide(&o).actions.is_empty(), "nothing to do once the master agrees");
    // More extra stripes than the code's m mean m.
    let greedy = HedgeTuning { extra_stripes: 9, ..tight };
    assert_eq!(
        hedge_for(
            &o.spec,
            &PriorityRef::Found {
                name: "g".into(),
                repair_class: RepairClass::Low,
                read_mode: ReadMode::Hedged,
                min_write_redundancy: None,
                hedge: greedy
            }
        ),
        Some(HedgeTuning { extra_stripes: 3, ..tight })
    );
    o.priority = PriorityRef::Unset;
    o.master.as_mut().unwrap().read_mode = None;
    assert_eq!(decide(&o).actions, vec![Action::SetHedge { hedge: None }]);
}

#[test]
fn a_name_taken_by_another_namespace_is_reported_and_its_data_never_deleted() {
    let mut o = observed(spec("https://x/a.tar"));
    o.master = None;
    o.name_taken_by = Some("team-a/0f1e".into());
    o.has_finalizer = false;
    let d = decide(&o);
    assert!(d.actions.is_empty(), "nothing created for it: {:?}", d.actions);
    assert!(d.events.iter().any(|e| e.warning && e.reason == "NameTaken" && e.message.contains("team-a/0f1e")));
    let ready = d.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NameTaken"));
    // Deleting it (with a finalizer an older operator added) deletes no data.
    o.deleting = true;
    o.has_finalizer = true;
    assert_eq!(decide(&o).actions, vec![Action::RemoveFinalizer]);
}
