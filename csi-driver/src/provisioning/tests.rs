use super::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PersistentVolumeStatus, VolumeResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

fn class(provisioner: &str) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta { name: Some("tessera-leaf".into()), ..Default::default() },
        provisioner: provisioner.into(),
        parameters: Some(
            [
                ("kind".to_string(), "leaf".to_string()),
                ("fileset".to_string(), "models".to_string()),
                ("csi.storage.k8s.io/fstype".to_string(), "ext4".to_string()),
            ]
            .into(),
        ),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    }
}

fn claim(node: Option<&str>, modes: &[&str], storage: Option<&str>) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("scratch".into()),
            namespace: Some("team".into()),
            uid: Some("0f6d".into()),
            annotations: node.map(|n| [(SELECTED_NODE.to_string(), n.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
            storage_class_name: Some("tessera-leaf".into()),
            resources: Some(VolumeResourceRequirements {
                requests: storage.map(|s| [("storage".to_string(), Quantity(s.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn a_claim_placed_on_this_node_is_provisioned_with_the_class_parameters() {
    let c = claim(Some("n1"), &["ReadWriteOnce"], Some("2Gi"));
    let ClaimPlan::Provision { volume, request } = plan_claim(&c, Some(&class(CSI_DRIVER)), "n1") else {
        panic!("not provisioned")
    };
    assert_eq!(volume, "pvc-0f6d");
    assert_eq!(request.name, "pvc-0f6d", "the volume's name: retries create the same leaf");
    assert_eq!(request.capacity_range, Some(csi::CapacityRange { required_bytes: 2 << 30, limit_bytes: 0 }));
    let mut keys: Vec<&str> = request.parameters.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["fileset", "kind"], "the provisioner's own parameters are not the driver's");
    let mode = request.volume_capabilities[0].access_mode.unwrap().mode;
    assert_eq!(mode, csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32);
}

#[test]
fn claims_of_other_nodes_drivers_or_already_bound_are_left_alone() {
    let ours = class(CSI_DRIVER);
    let c = claim(Some("n2"), &["ReadWriteOnce"], None);
    assert_eq!(plan_claim(&c, Some(&ours), "n1"), ClaimPlan::Ignore, "another node's");
    assert_eq!(plan_claim(&claim(None, &["ReadWriteOnce"], None), Some(&ours), "n1"), ClaimPlan::Ignore, "not placed");
    let c = claim(Some("n1"), &["ReadWriteOnce"], None);
    assert_eq!(plan_claim(&c, Some(&class("other.csi.dev")), "n1"), ClaimPlan::Ignore, "another driver's");
    assert_eq!(plan_claim(&c, None, "n1"), ClaimPlan::Ignore, "no such class");
    let mut bound = c.clone();
    bound.spec.as_mut().unwrap().volume_name = Some("pvc-0f6d".into());
    assert_eq!(plan_claim(&bound, Some(&ours), "n1"), ClaimPlan::Ignore, "bound");
    let mut deleting = c;
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    assert_eq!(plan_claim(&deleting, Some(&ours), "n1"), ClaimPlan::Ignore, "being deleted");
}

#[test]
fn claims_that_cannot_be_leaves_are_refused_naming_the_field() {
    let ours = class(CSI_DRIVER);
    let refused = |c: &PersistentVolumeClaim| match plan_claim(c, Some(&ours), "n1") {
        ClaimPlan::Refuse(why) => why,
        other => panic!("{other:?}"),
    };
    assert!(refused(&claim(Some("n1"), &["ReadWriteMany"], None)).starts_with("spec.accessModes ReadWriteMany"));
    assert!(refused(&claim(Some("n1"), &[], None)).starts_with("spec.accessModes"));
    assert!(
        refused(&claim(Some("n1"), &["ReadWriteOnce"], Some("10m"))).starts_with("spec.resources.requests.storage")
    );
    let mut block = claim(Some("n1"), &["ReadWriteOnce"], None);
    block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    assert!(refused(&block).starts_with("spec.volumeMode"));
}

fn made() -> csi::Volume {
    csi::Volume {
        volume_id: "leaf-0123456789abcdef".into(),
        capacity_bytes: 2 << 30,
        volume_context: [("kind".to_string(), "leaf".to_string())].into(),
        ..Default::default()
    }
}

#[test]
fn the_volume_is_bound_to_its_claim_and_lives_on_its_node() {
    let c = claim(Some("n1"), &["ReadWriteOnce"], Some("2Gi"));
    let pv = volume_for(&c, &class(CSI_DRIVER), "n1", "pvc-0f6d", &made());
    let spec = pv.spec.as_ref().unwrap();
    let claim_ref = spec.claim_ref.as_ref().unwrap();
    assert_eq!(
        (claim_ref.namespace.as_deref(), claim_ref.name.as_deref(), claim_ref.uid.as_deref()),
        (Some("team"), Some("scratch"), Some("0f6d"))
    );
    assert_eq!(node_of(&pv), Some("n1"));
    assert_eq!(spec.csi.as_ref().unwrap().volume_handle, "leaf-0123456789abcdef");
    assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, (2u64 << 30).to_string());
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(pv.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    let mut retain = class(CSI_DRIVER);
    retain.reclaim_policy = Some("Retain".into());
    let kept = volume_for(&c, &retain, "n1", "pvc-0f6d", &made());
    assert_eq!(kept.metadata.finalizers, None, "a retained leaf outlives its volume object");
}

#[test]
fn released_volumes_of_this_node_are_deleted_and_others_are_not() {
    let c = claim(Some("n1"), &["ReadWriteOnce"], None);
    let with_phase = |phase: &str, reclaim: &str| {
        let mut class = class(CSI_DRIVER);
        class.reclaim_policy = Some(reclaim.into());
        let mut pv = volume_for(&c, &class, "n1", "pvc-0f6d", &made());
        pv.status = Some(PersistentVolumeStatus { phase: Some(phase.into()), ..Default::default() });
        pv
    };
    let delete = VolumePlan::Delete { leaf: "leaf-0123456789abcdef".into() };
    assert_eq!(plan_volume(&with_phase("Released", "Delete"), "n1"), delete);
    assert_eq!(plan_volume(&with_phase("Released", "Delete"), "n2"), VolumePlan::Ignore, "another node's");
    assert_eq!(plan_volume(&with_phase("Released", "Retain"), "n1"), VolumePlan::Ignore, "retained");
    assert_eq!(plan_volume(&with_phase("Bound", "Delete"), "n1"), VolumePlan::Ignore, "in use");
    let mut deleted = with_phase("Available", "Delete");
    deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    assert_eq!(plan_volume(&deleted, "n1"), delete, "the object deleted by hand");
    let mut foreign = with_phase("Released", "Delete");
    foreign.metadata.annotations = Some([(PROVISIONED_BY.to_string(), "other.csi.dev".to_string())].into());
    assert_eq!(plan_volume(&foreign, "n1"), VolumePlan::Ignore, "another provisioner's");
}

#[test]
fn quantities_parse_as_kubernetes_reads_them() {
    assert_eq!(parse_quantity("4096"), Some(4096));
    assert_eq!(parse_quantity("10Gi"), Some(10 << 30));
    assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
    assert_eq!(parse_quantity("500M"), Some(500_000_000));
    assert_eq!(parse_quantity("1e9"), Some(1_000_000_000));
    assert_eq!(parse_quantity("1E3"), Some(1000));
    assert_eq!(parse_quantity("0.1"), Some(1), "rounded up to a whole byte");
    for bad in ["", "Gi", "10m", "-1Gi", "1.2.3", "10GB", "99999999999Ei"] {
        assert_eq!(parse_quantity(bad), None, "{bad:?}");
    }
}

proptest! {
    #[test]
    fn whole_quantities_with_a_suffix_are_that_many_units(n in 0u64..1 << 20, s in 0usize..13) {
        let (suffix, unit): (&str, u128) = [
            ("", 1), ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("Pi", 1 << 50),
            ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000),
            ("P", 1_000_000_000_000_000), ("e3", 1_000), ("e6", 1_000_000),
        ][s];
        let want = u64::try_from(n as u128 * unit).ok();
        prop_assert_eq!(parse_quantity(&format!("{n}{suffix}")), want);
    }

    #[test]
    fn fractions_round_up_to_whole_bytes(whole in 0u64..1000, frac in 0u64..1000) {
        // whole.frac Ki: exactly (whole * 1000 + frac) * 1024 / 1000 bytes, rounded up.
        let want = ((whole * 1000 + frac) * 1024).div_ceil(1000);
        prop_assert_eq!(parse_quantity(&format!("{whole}.{frac:03}Ki")), Some(want));
    }
}
