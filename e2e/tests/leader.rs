//! Two operator replicas: only one leads, and the other takes over when the
//! leader stops renewing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tessera_e2e::{ControlPlane, Options, until};
use tessera_master::MasterConfig;
use tessera_operator::ingest_pod::IngestPodConfig;
use tessera_operator::leader::Elector;
use tessera_operator::runtime::{self, OperatorConfig};
use tokio::sync::watch;

async fn until_leading(rx: &mut watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|l| *l == want))
        .await
        .expect("leadership changes within 30 s")
        .unwrap();
}

#[tokio::test]
async fn only_one_replica_leads_and_the_other_takes_over() {
    let cp = ControlPlane::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(cp.client(), "default");
    let name = format!("tessera-leader-test-{}", std::process::id());
    // Long enough that a busy machine still renews in time (every third of it).
    let lease = Duration::from_secs(4);
    let a = Elector::new(leases.clone(), &name, "replica-a", lease);
    let b = Elector::new(leases.clone(), &name, "replica-b", lease);

    let (stop_a, stop_a_rx) = watch::channel(false);
    let mut a_leads = a.campaign(stop_a_rx);
    until_leading(&mut a_leads, true).await;
    let (stop_b, stop_b_rx) = watch::channel(false);
    let b_leads = b.clone().campaign(stop_b_rx);
    // b campaigns for several renew periods and never leads while a renews.
    for _ in 0..4 {
        assert!(!b.round().await.unwrap(), "b took a lease a is renewing");
        tokio::time::sleep(lease / 3).await;
        assert!(*a_leads.borrow() && !*b_leads.borrow());
    }
    // a stops renewing (a crash): b takes over once the lease expires.
    stop_a.send_replace(true);
    let mut b_leads = b_leads;
    until_leading(&mut b_leads, true).await;
    let l = leases.get(&name).await.unwrap().spec.unwrap();
    assert_eq!(l.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(l.lease_transitions, Some(2));
    stop_b.send_replace(true);
    leases.delete(&name, &Default::default()).await.unwrap();
}

/// A leader that cannot start serving (here: the master's records have no
/// CRD yet, so loading them fails) tries again while it leads, instead of
/// holding the lease and serving nothing.
#[tokio::test]
async fn a_leader_that_could_not_start_serving_tries_again() {
    // The harness's own apiserver: one named by KUBECONFIG may have the
    // CRDs installed already.
    let cp = ControlPlane::start_with(Options::default()).await.unwrap();
    let config = OperatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        namespace: "default".into(),
        identity: "operator-0".into(),
        lease_duration: Duration::from_secs(3),
        master: MasterConfig::default(),
        resync: Duration::from_millis(500),
        ingest_pods: IngestPodConfig { image: "tessera:test".into(), master_address: "127.0.0.1:0".into() },
    };
    let op = runtime::start(cp.config(), config).await.unwrap();
    // It takes the lease, and cannot load the master's records.
    let leases: Api<Lease> = Api::namespaced(cp.client(), "default");
    until("the operator to take the lease", async || {
        let l = leases.list(&Default::default()).await.ok()?;
        l.items.into_iter().find(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some("operator-0"))
    })
    .await;
    // Past a few failed attempts to serve, it still does not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(op.master_addr().is_none(), "a master without its records' CRD serves");
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    let (ok, out, err) = cp.kubectl(&["apply", "--server-side", "-f", crds]).unwrap();
    assert!(ok, "{out}{err}");
    until("the leader to serve once the CRDs are in", async || op.master_addr()).await;
    op.shutdown().await.unwrap();
}
