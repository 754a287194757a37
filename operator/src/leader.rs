//! Leader election with a coordination.k8s.io Lease, so two operator
//! replicas are safe: only the holder of the lease acts, the other waits to
//! take over when the holder stops renewing.
//!
//! [`decide`] is the rule, free of I/O; [`Elector`] reads and writes the
//! Lease with optimistic concurrency (a replace carrying the resourceVersion
//! it read), so two candidates racing for an expired lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// What the lease says, as far as the rule cares.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Take the lease (free, expired, or never held).
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds it until `until`.
    Wait { holder: String, until: Timestamp },
}

/// The election rule.
pub fn decide(lease: Option<&LeaseView>, me: &str, now: Timestamp) -> Step {
    let Some(l) = lease else { return Step::Acquire };
    match (&l.holder, l.renewed) {
        (Some(h), _) if h == me => Step::Renew,
        (Some(h), Some(renewed)) if !h.is_empty() => {
            let until = renewed
                .checked_add(SignedDuration::try_from(l.duration).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX);
            if now < until { Step::Wait { holder: h.clone(), until } } else { Step::Acquire }
        }
        _ => Step::Acquire,
    }
}

fn view(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed: spec.renew_time.map(|t| t.0),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
    }
}

/// One candidate for the lease `name`.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api, name: name.into(), identity: identity.into(), duration }
    }

    /// One round: take or renew the lease if the rule allows. Returns whether
    /// this candidate leads now.
    pub async fn round(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let step = decide(existing.as_ref().map(view).as_ref(), &self.identity, now);
        let (mut lease, transitions) = match (&step, existing) {
            (Step::Wait { .. }, _) => return Ok(false),
            (_, Some(l)) => {
                let t = l.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                (l, t)
            }
            (_, None) => {
                (Lease { metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() }, spec: None }, 0)
            }
        };
        let previous = lease.spec.take().unwrap_or_default();
        let acquired = step == Step::Acquire;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: if acquired { Some(MicroTime(now)) } else { previous.acquire_time },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if acquired { transitions + 1 } else { transitions }),
            ..previous
        });
        let result = if lease.metadata.resource_version.is_some() {
            // The resourceVersion read above makes this fail if anyone wrote since.
            self.api.replace(&self.name, &PostParams::default(), &lease).await
        } else {
            self.api.create(&PostParams::default(), &lease).await
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if crate::error::is_status(&e, http::StatusCode::CONFLICT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns until `stop`: renews at a third of the lease duration and
    /// publishes leadership on the returned channel. A leader that cannot
    /// renew within the duration steps down.
    pub fn campaign(self, mut stop: watch::Receiver<bool>) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let every = self.duration / 3;
            let mut last_ok = tokio::time::Instant::now();
            loop {
                let leading = match self.round().await {
                    Ok(l) => {
                        last_ok = tokio::time::Instant::now();
                        l
                    }
                    Err(e) => {
                        warn!(lease = %self.name, error = %e, "leader election round failed");
                        *tx.borrow() && last_ok.elapsed() < self.duration
                    }
                };
                if *tx.borrow() != leading {
                    info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                }
                tx.send_replace(leading);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => {
                        tx.send_replace(false);
                        return;
                    }
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn lease(holder: &str, renewed: i64) -> LeaseView {
        LeaseView { holder: Some(holder.into()), renewed: Some(at(renewed)), duration: Duration::from_secs(15) }
    }

    #[test]
    fn a_free_or_expired_lease_is_taken_and_a_live_one_is_waited_for() {
        assert_eq!(decide(None, "a", at(0)), Step::Acquire);
        assert_eq!(decide(Some(&lease("a", 0)), "a", at(100)), Step::Renew, "our own lease, even late");
        assert_eq!(decide(Some(&lease("b", 0)), "a", at(14)), Step::Wait { holder: "b".into(), until: at(15) });
        assert_eq!(decide(Some(&lease("b", 0)), "a", at(15)), Step::Acquire);
        let released =
            LeaseView { holder: Some(String::new()), renewed: Some(at(0)), duration: Duration::from_secs(15) };
        assert_eq!(decide(Some(&released), "a", at(1)), Step::Acquire);
    }
}
