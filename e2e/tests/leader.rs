//! Two operator replicas: only one leads, and the other takes over when the
//! leader stops renewing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tessera_e2e::ControlPlane;
use tessera_operator::leader::Elector;
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
