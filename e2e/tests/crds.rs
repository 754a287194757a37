//! The CRDs against a real apiserver: accepted as generated, and bad objects
//! refused with messages that name the field.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use tessera_api::crd::{Fileset, Priority};
use tessera_e2e::ControlPlane;

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");

async fn established(cp: &ControlPlane, name: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    tokio::time::timeout(Duration::from_secs(60), await_condition(crds, name, conditions::is_crd_established()))
        .await
        .expect("the CRD is established within a minute")
        .unwrap();
}

/// The apiserver's message for a refused create or update (422 Unprocessable).
fn refused<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_crds_are_accepted_and_bad_objects_refused_naming_the_field() {
    let cp = ControlPlane::start().await.unwrap();
    let (ok, out, err) = cp.kubectl(&["apply", "--server-side", "-f", CRDS]).unwrap();
    assert!(ok, "kubectl apply -f crds/ failed: {out}{err}");
    established(&cp, "filesets.tessera.dev").await;
    established(&cp, "priorities.tessera.dev").await;

    let filesets: Api<Fileset> = Api::namespaced(cp.client(), "default");
    let pp = PostParams::default();
    let fileset = |name: &str, spec: serde_json::Value| -> Fileset {
        serde_json::from_value(json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    };
    // Bad objects go out untyped: the Rust types could not even hold some of them.
    let raw: Api<DynamicObject> = Api::namespaced_with(cp.client(), "default", &ApiResource::erase::<Fileset>(&()));
    let raw_fileset = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Fileset",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    };

    // A minimal fileset gets every default from the schema.
    let made = filesets.create(&pp, &fileset("models", json!({"source": {"upload": {}}}))).await.unwrap();
    let e = &made.spec.erasure;
    assert_eq!((e.k, e.m, e.stripe_unit, e.block_size), (6, 3, 1 << 20, 64 << 10));
    assert_eq!(made.spec.retention.keep_versions, 1);

    // Bad objects, each refused with the field named.
    let cases = [
        (json!({"source": {"upload": {}}, "erasure": {"k": 0}}), "spec.erasure.k"),
        (
            json!({"source": {"upload": {}}, "erasure": {"stripeUnit": 100}}),
            "spec.erasure.stripeUnit must be a multiple of 64",
        ),
        (json!({"source": {"upload": {}}, "erasure": {"k": 200, "m": 100}}), "k + m must be at most 256"),
        (
            json!({"source": {"upload": {}, "http": {"url": "https://x/a.tar"}}}),
            "exactly one of upload, http, pvc or leaf",
        ),
        (json!({"source": {"leaf": {"claimName": "tune"}, "pvc": {"claimName": "data"}}}), "exactly one of"),
        (json!({"source": {"leaf": {"claimName": ""}}}), "spec.source.leaf.claimName"),
        (json!({"source": {"http": {"url": "ftp://x/a.tar"}}}), "spec.source.http.url"),
        (json!({"source": {"pvc": {"claimName": "data", "path": "a/../../etc"}}}), "spec.source.pvc.path"),
        (json!({"source": {"upload": {}}, "placement": {"level": "planet"}}), "spec.placement.level"),
    ];
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let msg = refused(raw.create(&pp, &raw_fileset(&format!("bad-{i}"), spec.clone())).await);
        assert!(msg.contains(field), "case {spec}: {msg:?} does not name {field:?}");
    }

    // Immutable fields: a changed erasure code is refused, other changes pass.
    let mut changed = made.clone();
    changed.spec.erasure.k = 8;
    let msg = refused(filesets.replace("models", &pp, &changed).await);
    assert!(msg.contains("spec.erasure is immutable"), "{msg}");
    let mut kept = made.clone();
    kept.spec.retention.keep_versions = 3;
    filesets.replace("models", &pp, &kept).await.unwrap();

    // Priorities are cluster-scoped and check their hedge bounds.
    let priorities: Api<Priority> = Api::all(cp.client());
    let priority = |name: &str, spec: serde_json::Value| -> Priority {
        serde_json::from_value(json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Priority", "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    };
    let p =
        priorities.create(&pp, &priority("interactive", json!({"value": 100, "repairClass": "high"}))).await.unwrap();
    assert_eq!(p.spec.weight, 1);
    assert_eq!(p.spec.read_policy.hedge_delay_max_ms, 200);
    let bad = priorities
        .create(
            &pp,
            &priority("bad", json!({"value": 1, "readPolicy": {"hedgeDelayMinMs": 500, "hedgeDelayMaxMs": 10}})),
        )
        .await;
    let msg = refused(bad);
    assert!(msg.contains("hedgeDelayMinMs"), "{msg}");
}

/// The Job kind's schema on a real apiserver. It is not in crds/ yet (no
/// controller runs Jobs until the rest of issue 14 lands), so the test
/// installs it from the Rust type, as `tessera-operator crds` will render it.
#[tokio::test]
async fn the_job_schema_defaults_and_refuses_bad_jobs_naming_the_field() {
    use kube::CustomResourceExt;
    use tessera_api::crd::Job;

    let cp = ControlPlane::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    crds.create(&PostParams::default(), &Job::crd()).await.unwrap();
    established(&cp, "jobs.tessera.dev").await;

    let pp = PostParams::default();
    let job = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "tessera.dev/v1alpha1", "kind": "Job", "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    };
    let raw: Api<DynamicObject> = Api::namespaced_with(cp.client(), "default", &ApiResource::erase::<Job>(&()));
    let good = json!({
        "input": {"fileset": "corpus"},
        "grouping": {"directory": {}},
        "task": {"image": "busybox", "command": ["sh", "-c", "sha256sum $(cat $TESSERA_GROUP_FILES)"]},
        "output": {"fileset": "sums"},
    });
    // The schema's defaults, as the apiserver stored them (read untyped:
    // the Rust type's own defaults would hide a schema without them).
    let stored = raw.create(&pp, &job("hash", good.clone())).await.unwrap().data["spec"].clone();
    assert_eq!(stored["backoffLimit"], 3);
    assert_eq!(stored["grouping"]["directory"]["depth"], 1);
    let s = &stored["stragglers"];
    let knobs = [
        "policy",
        "slowBelowPercent",
        "accelerateCapPercent",
        "backupCapPercent",
        "endGamePercent",
        "backupAfterPercent",
    ];
    let got: Vec<&serde_json::Value> = knobs.iter().map(|k| &s[k]).collect();
    assert_eq!(got, [&json!("progressive"), &json!(60), &json!(50), &json!(10), &json!(99), &json!(75)], "{s}");
    let jobs: Api<Job> = Api::namespaced(cp.client(), "default");
    let made = jobs.get("hash").await.unwrap();

    let with = |patch: serde_json::Value| {
        let mut spec = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    let cases = [
        (
            with(json!({"grouping": {"directory": {}, "bytes": 100}})),
            "exactly one of directory, glob, bytes or location",
        ),
        (with(json!({"grouping": {}})), "exactly one of directory, glob, bytes or location"),
        (with(json!({"grouping": {"bytes": 0}})), "spec.grouping.bytes"),
        (with(json!({"grouping": {"directory": {"depth": 0}}})), "spec.grouping.directory.depth"),
        (with(json!({"grouping": {"glob": [{"group": "../up", "pattern": "**"}]}})), "spec.grouping.glob[].group"),
        (with(json!({"input": {"fileset": ""}})), "spec.input.fileset"),
        (with(json!({"input": {"fileset": "corpus", "version": 0}})), "spec.input.version"),
        (with(json!({"task": {"image": ""}})), "spec.task.image"),
        (with(json!({"task": {"image": "busybox", "env": [{"name": "TESSERA_INPUT"}]}})), "TESSERA_ variables"),
        (with(json!({"stragglers": {"policy": "hurry"}})), "spec.stragglers.policy"),
        (with(json!({"stragglers": {"accelerateCapPercent": 0}})), "spec.stragglers.accelerateCapPercent"),
        (with(json!({"stragglers": {"criticalGroups": ["a"]}})), "criticalGroups is only read by policy priority"),
        (with(json!({"backoffLimit": 1000})), "spec.backoffLimit"),
    ];
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let msg = refused(raw.create(&pp, &job(&format!("bad-{i}"), spec.clone())).await);
        assert!(msg.contains(field), "case {spec}: {msg:?} does not name {field:?}");
    }
    // A critical-groups list is fine with the priority policy.
    let ok = with(json!({"stragglers": {"policy": "priority", "criticalGroups": ["train/**"]}}));
    raw.create(&pp, &job("prio", ok)).await.unwrap();

    // A job's spec is fixed once created.
    let mut changed = made.clone();
    changed.spec.backoff_limit = 5;
    let msg = refused(jobs.replace("hash", &pp, &changed).await);
    assert!(msg.contains("spec is immutable"), "{msg}");
}
