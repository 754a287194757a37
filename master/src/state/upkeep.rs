//! Upkeep: which items to rebuild and where, what a finished repair changed,
//! and which stripes nobody owns any more.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use rand::Rng;
use tessera_core::ids::{ItemId, ServerId, StripeId};
use tessera_core::placement::{self, Candidate};
use tessera_core::repair::{self, Availability, RepairDecision, RepairPolicy};
use tracing::{info, warn};

use super::{
    Deletion, ItemInfo, Loss, Master, RepairJob, Server, Source, State, Target, add_location, forget_location,
    reachable_indices,
};

impl Master {
    /// Decides, for every item of every published version, whether to
    /// rebuild it now, and plans the repairs of those that are due (at most
    /// `max` new jobs). Items being repaired already are skipped.
    pub fn plan_repairs(&self, now: Instant, max: usize, rng: &mut impl Rng) -> Vec<RepairJob> {
        // Right after a start the index is still being relearned: items
        // whose servers have not reported yet are not lost.
        if self.warming_up(now) {
            return Vec::new();
        }
        let mut st = self.state.lock().unwrap();
        let policy = self.config.failure;
        let mut down = HashSet::new();
        for s in st.servers.values_mut() {
            if !s.live || s.maintenance || s.failures.is_down(now, &policy) {
                down.insert(s.id.clone());
            }
        }
        // First every item due for repair, then the most urgent placed first:
        // fewest stripes left beyond k, high availability before low.
        let mut due = Vec::new();
        let items: Vec<(ItemId, ItemInfo)> = st.items.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (item, info) in items {
            let Some(f) = st.filesets.get(&info.fileset).cloned() else { continue };
            let n = f.k + f.m;
            let reachable = reachable_indices(&st, &item, &down, n);
            let count = reachable.iter().filter(|r| r.is_some()).count();
            if count == n {
                st.missing_since.remove(&item);
                st.unplaceable.remove(&item);
                st.gone.remove(&item);
                continue;
            }
            let since = *st.missing_since.entry(item).or_insert(now);
            let rp = RepairPolicy { threshold: f.m, grace: self.config.repair_grace };
            let gone_for_good = st
                .gone
                .get(&item)
                .map_or(0, |g| g.keys().filter(|&&i| reachable.get(i as usize).is_some_and(|r| r.is_none())).count());
            let missing = repair::Missing { reachable: count, gone_for_good };
            let decision = repair::decide(missing, f.k, f.m, f.availability, since, now, &rp);
            if decision == RepairDecision::Unrecoverable {
                warn!(%item, fileset = %info.fileset, reachable = count, k = f.k, "item has fewer than k stripes reachable");
            }
            if decision == RepairDecision::Now && !st.repairing.contains(&item) {
                due.push((count.saturating_sub(f.k), f.availability != Availability::High, item, info, f, reachable));
            }
        }
        due.sort_by_key(|d| (d.0, d.1));
        let mut jobs = Vec::new();
        for (_, _, item, info, f, reachable) in due {
            if jobs.len() >= max {
                break;
            }
            let n = f.k + f.m;
            // Place the lost stripes, counting the ones still in place.
            let mut ids = Vec::new();
            let mut candidates = Vec::new();
            let mut exclude = Vec::new();
            let holders: HashSet<&ServerId> =
                st.locations.get(&item).map(|v| v.iter().map(|(_, s)| s).collect()).unwrap_or_default();
            for s in st.servers.values() {
                if down.contains(&s.id) || s.free_bytes < info.len / f.k as u64 + (64 << 10) {
                    continue;
                }
                if holders.contains(&s.id) {
                    exclude.push(ids.len());
                }
                ids.push(s.id.clone());
                candidates.push(Candidate { topology: s.topology.clone(), free_bytes: s.free_bytes });
            }
            let existing = placement::domain_counts(
                reachable.iter().flatten().filter_map(|sid| st.servers.get(sid).map(|s| &s.topology)),
                f.level,
            );
            let lost: Vec<usize> = (0..n).filter(|i| reachable[*i].is_none()).collect();
            match placement::choose(&candidates, lost.len(), f.policy(), &existing, &exclude, rng) {
                Ok(chosen) => {
                    let sources = reachable
                        .iter()
                        .map(|r| {
                            r.as_ref()
                                .map(|sid| Source { server: sid.clone(), address: st.servers[sid].address.clone() })
                        })
                        .collect();
                    let targets = lost
                        .iter()
                        .zip(chosen)
                        .map(|(&idx, c)| Target {
                            index: idx as u16,
                            server: ids[c].clone(),
                            address: st.servers[&ids[c]].address.clone(),
                        })
                        .collect();
                    st.repairing.insert(item);
                    jobs.push(RepairJob { item, layout: f.layout(), len: info.len, sources, targets });
                }
                Err(e) => {
                    if st.unplaceable.insert(item) {
                        warn!(%item, error = %e, "cannot place replacement stripes; retrying as the topology changes");
                    }
                }
            }
        }
        jobs
    }

    /// Records a finished repair: the new stripes are where the job put them.
    pub fn repair_done(&self, job: &RepairJob, ok: bool) {
        let mut st = self.state.lock().unwrap();
        st.repairing.remove(&job.item);
        if !ok {
            return;
        }
        let stripe_len = job.layout.stripe_len(job.len).unwrap_or(0) as u64;
        let fileset = st.items.get(&job.item).map(|i| i.fileset.clone());
        for t in &job.targets {
            let stripe = StripeId::new(job.item, t.index);
            if let Some(s) = st.servers.get_mut(&t.server)
                && s.stripes.insert(stripe)
            {
                add_location(&mut st.locations, &stripe, &t.server);
            }
            st.repaired_stripes += 1;
            st.repaired_bytes += stripe_len;
            let loss = st.gone.get_mut(&job.item).and_then(|g| g.remove(&t.index));
            if loss == Some(Loss::Corrupt)
                && let Some(f) = &fileset
            {
                st.losses.entry(f.clone()).or_default().corrupt_rebuilt += 1;
            }
        }
        if st.gone.get(&job.item).is_some_and(|g| g.is_empty()) {
            st.gone.remove(&job.item);
        }
        st.missing_since.remove(&job.item);
        st.unplaceable.remove(&job.item);
        info!(item = %job.item, stripes = job.targets.len(), "item repaired");
    }

    /// Stripes nobody owns (no published version, no open session) for
    /// longer than the grace: left by crashed writers or deleted versions
    /// whose servers were away.
    pub fn collect_orphans(&self, now: Instant) -> Vec<Deletion> {
        let mut st = self.state.lock().unwrap();
        let open: HashSet<ItemId> =
            st.sessions.values().flat_map(|s| s.items.keys().copied()).chain(st.committing.keys().copied()).collect();
        let orphans: Vec<ItemId> =
            st.locations.keys().filter(|i| !st.items.contains_key(i) && !open.contains(i)).copied().collect();
        let grace = self.config.orphan_grace;
        st.orphan_since.retain(|i, _| orphans.contains(i));
        let mut out = Vec::new();
        for item in orphans {
            let since = *st.orphan_since.entry(item).or_insert(now);
            if now.saturating_duration_since(since) < grace {
                continue;
            }
            for (idx, sid) in st.locations.get(&item).cloned().unwrap_or_default() {
                if let Some(s) = st.servers.get(&sid)
                    && s.live
                {
                    out.push(Deletion { address: s.address.clone(), stripe: StripeId::new(item, idx) });
                }
            }
            st.orphan_since.remove(&item);
        }
        if !out.is_empty() {
            info!(stripes = out.len(), "collecting orphan stripes");
        }
        let surplus = surplus_copies(&st);
        if !surplus.is_empty() {
            info!(stripes = surplus.len(), "deleting surplus copies of stripes (a lost server came back after repair)");
        }
        out.extend(surplus);
        out
    }

    /// A deleted stripe is gone from the index (its server also reports it).
    pub fn deleted(&self, d: &Deletion) {
        let mut st = self.state.lock().unwrap();
        let State { servers, locations, collected_stripes, .. } = &mut *st;
        if let Some(s) = servers.values_mut().find(|s| s.address == d.address)
            && s.stripes.remove(&d.stripe)
        {
            let id = s.id.clone();
            forget_location(locations, &d.stripe, &id);
            *collected_stripes += 1;
        }
    }
}

/// Second copies of a stripe, as when a server returns after its stripes were
/// rebuilt elsewhere. Of an index held twice, the copy in the most crowded
/// domain goes, so the survivors respect the placement bound where they can.
/// Items being repaired are left alone until their repair lands.
fn surplus_copies(st: &State) -> Vec<Deletion> {
    let mut out = Vec::new();
    for (item, locs) in &st.locations {
        let Some(info) = st.items.get(item) else { continue };
        if st.repairing.contains(item) {
            continue;
        }
        let Some(f) = st.filesets.get(&info.fileset) else { continue };
        let level = f.level;
        let live: Vec<(u16, &Server)> =
            locs.iter().filter_map(|(idx, sid)| st.servers.get(sid).filter(|s| s.live).map(|s| (*idx, s))).collect();
        let mut per_index: BTreeMap<u16, Vec<&Server>> = BTreeMap::new();
        for (idx, s) in &live {
            per_index.entry(*idx).or_default().push(s);
        }
        if per_index.values().all(|v| v.len() < 2) {
            continue;
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, s) in &live {
            *counts.entry(s.topology.domain(level)).or_insert(0) += 1;
        }
        for (idx, mut holders) in per_index {
            while holders.len() > 1 {
                // Most crowded domain first; the server id breaks ties so
                // every pass picks the same copy.
                let (at, _) = holders
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, s)| (counts[&s.topology.domain(level)], Reverse(s.id.clone())))
                    .expect("at least two holders");
                let gone = holders.swap_remove(at);
                *counts.get_mut(&gone.topology.domain(level)).expect("counted above") -= 1;
                out.push(Deletion { address: gone.address.clone(), stripe: StripeId::new(*item, idx) });
            }
        }
    }
    out
}
