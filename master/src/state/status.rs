//! What `tessera status` and a Fileset's status say: servers, and each
//! fileset's redundancy, placement and losses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use tessera_core::ids::ServerId;
use tessera_core::placement::{Level, Topology};

use super::{Loss, LossCounts, Master, reachable_indices};
use crate::MasterError;

/// How long a device figure stays current without a new one: a server that
/// stopped reading (or got its disk replaced) is not shown slow for ever.
pub const DEVICE_FIGURE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct ServerHealth {
    pub server_id: ServerId,
    pub address: String,
    pub topology: Topology,
    pub live: bool,
    /// Out of placement: in maintenance, or failing too often.
    pub down: bool,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub read_bytes_per_sec: f64,
    /// Its devices' bandwidth while reading, when known.
    pub device_bytes_per_sec: Option<f64>,
    pub stripes: u64,
    pub failure_count: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCount {
    pub domain: String,
    pub stripes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesetHealth {
    pub name: String,
    pub items: u64,
    /// Items by stripes reachable beyond k (index 0..=m).
    pub items_by_redundancy: Vec<u64>,
    pub degraded: u64,
    pub unrecoverable: u64,
    pub repairing: u64,
    pub stripes_per_domain: Vec<DomainCount>,
    pub level: Level,
    pub placement_violations: u64,
    pub corrupt_stripes_found: u64,
    pub corrupt_stripes_rebuilt: u64,
    pub corrupt_stripes_pending: u64,
    pub degraded_writes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Just started and still learning where stripes are: redundancy
    /// figures are not meaningful yet.
    pub relearning: bool,
    pub servers: Vec<ServerHealth>,
    pub filesets: Vec<FilesetHealth>,
    pub repaired_stripes: u64,
    pub repaired_bytes: u64,
    pub collected_stripes: u64,
    pub corrupt_stripes_found: u64,
    pub corrupt_stripes_rebuilt: u64,
    pub corrupt_reports: u64,
}

impl Master {
    /// The cluster's status, or one fileset's (`fileset` not empty).
    pub fn status(&self, fileset: &str, now: Instant) -> Result<Status, MasterError> {
        let mut st = self.state.lock().unwrap();
        if !fileset.is_empty() && !st.filesets.contains_key(fileset) {
            return Err(MasterError::FilesetNotFound(fileset.into()));
        }
        let policy = self.config.failure;
        let mut servers = Vec::new();
        for s in st.servers.values_mut() {
            let down = s.maintenance || s.failures.is_down(now, &policy);
            servers.push(ServerHealth {
                server_id: s.id.clone(),
                address: s.address.clone(),
                topology: s.topology.clone(),
                live: s.live,
                down,
                free_bytes: s.free_bytes,
                total_bytes: s.total_bytes,
                read_bytes_per_sec: s.read_bytes_per_sec,
                device_bytes_per_sec: s
                    .device_bytes_per_sec
                    .filter(|(_, at)| now.saturating_duration_since(*at) < DEVICE_FIGURE_TTL)
                    .map(|(b, _)| b),
                stripes: s.stripes.len() as u64,
                failure_count: s.failures.count(),
            });
        }
        // Servers in maintenance count as unreachable, as they do for repair.
        let unreachable: HashSet<ServerId> =
            st.servers.values().filter(|s| !s.live || s.maintenance).map(|s| s.id.clone()).collect();
        let mut filesets = Vec::new();
        for f in st.filesets.values().filter(|f| fileset.is_empty() || f.name == fileset) {
            let n = f.k + f.m;
            let level = f.level;
            let mut by_redundancy = vec![0u64; f.m + 1];
            let (mut items, mut degraded, mut unrecoverable, mut repairing, mut violations) = (0, 0, 0, 0, 0);
            let mut per_domain: BTreeMap<String, u64> = BTreeMap::new();
            let mut corrupt_pending = 0;
            for (item, _) in st.items.iter().filter(|(_, i)| i.fileset == f.name) {
                items += 1;
                corrupt_pending += st.gone.get(item).map_or(0, |g| g.values().filter(|l| **l == Loss::Corrupt).count());
                let reachable = reachable_indices(&st, item, &unreachable, n);
                let count = reachable.iter().filter(|r| r.is_some()).count();
                if count < n {
                    degraded += 1;
                }
                if count < f.k {
                    unrecoverable += 1;
                } else {
                    by_redundancy[(count - f.k).min(f.m)] += 1;
                }
                if st.repairing.contains(item) {
                    repairing += 1;
                }
                let mut item_domains: HashMap<String, usize> = HashMap::new();
                for sid in reachable.iter().flatten() {
                    if let Some(s) = st.servers.get(sid) {
                        let d = s.topology.domain(level);
                        *item_domains.entry(d.clone()).or_default() += 1;
                        *per_domain.entry(d).or_default() += 1;
                    }
                }
                if item_domains.values().any(|&c| c > f.max_per_domain) {
                    violations += 1;
                }
            }
            let losses = st.losses.get(&f.name).copied().unwrap_or_default();
            filesets.push(FilesetHealth {
                corrupt_stripes_found: losses.corrupt_found,
                corrupt_stripes_rebuilt: losses.corrupt_rebuilt,
                degraded_writes: losses.degraded_writes,
                corrupt_stripes_pending: corrupt_pending as u64,
                name: f.name.to_string(),
                items,
                items_by_redundancy: by_redundancy,
                degraded,
                unrecoverable,
                repairing,
                stripes_per_domain: per_domain
                    .into_iter()
                    .map(|(domain, stripes)| DomainCount { domain, stripes })
                    .collect(),
                level,
                placement_violations: violations,
            });
        }
        let all = st.losses.values().fold(LossCounts::default(), |a, l| LossCounts {
            corrupt_found: a.corrupt_found + l.corrupt_found,
            corrupt_rebuilt: a.corrupt_rebuilt + l.corrupt_rebuilt,
            degraded_writes: a.degraded_writes + l.degraded_writes,
        });
        Ok(Status {
            relearning: self.warming_up(now),
            corrupt_stripes_found: all.corrupt_found,
            corrupt_stripes_rebuilt: all.corrupt_rebuilt,
            corrupt_reports: st.corrupt_reports,
            servers,
            filesets,
            repaired_stripes: st.repaired_stripes,
            repaired_bytes: st.repaired_bytes,
            collected_stripes: st.collected_stripes,
        })
    }
}
