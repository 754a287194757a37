//! Placement: which chunkservers hold the stripes of an item.
//!
//! Chunkservers sit in a hierarchy of failure domains read from node labels:
//! region > zone > rack > node. A placement policy names one level and the most
//! stripes of an item any one domain at that level may hold; with at most `m`
//! per domain, an item stays readable with any one such domain down. Items are
//! placed on `n` distinct servers chosen at random, weighted by free space, such
//! that no domain exceeds the limit. The same rule places replacement stripes
//! during repair, counting the stripes the item still has.
//!
//! Pure functions: the caller passes the candidates and a random source.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// A level of the failure-domain hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Level {
    Region,
    #[default]
    Zone,
    Rack,
    Node,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Region, Level::Zone, Level::Rack, Level::Node];

    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Region => "region",
            Level::Zone => "zone",
            Level::Rack => "rack",
            Level::Node => "node",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown failure-domain level {0:?}: expected region, zone, rack or node")]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Self, UnknownLevel> {
        Level::ALL.iter().copied().find(|l| l.as_str() == s).ok_or_else(|| UnknownLevel(s.to_string()))
    }
}

/// Where a chunkserver sits, from its node's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Topology {
    pub region: String,
    pub zone: String,
    pub rack: String,
    pub node: String,
}

impl Topology {
    /// The domain containing this server at `level`: the path of labels from
    /// the region down, so two racks named alike in different zones differ.
    pub fn domain(&self, level: Level) -> String {
        let parts = [&self.region, &self.zone, &self.rack, &self.node];
        let depth = Level::ALL.iter().position(|l| *l == level).expect("every level is listed") + 1;
        parts[..depth].iter().map(|s| s.as_str()).collect::<Vec<_>>().join("/")
    }
}

/// How many stripes of an item one failure domain may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementPolicy {
    pub level: Level,
    pub max_per_domain: usize,
}

/// A chunkserver that may receive stripes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub topology: Topology,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "cannot place {wanted} stripes with at most {max_per_domain} per {level}: the {domains} {level}(s) with eligible chunkservers can hold {capacity}"
    )]
    Unsatisfiable { wanted: usize, level: Level, max_per_domain: usize, domains: usize, capacity: usize },
    #[error("max_per_domain must be at least 1")]
    ZeroPerDomain,
}

/// Chooses `n` distinct candidates (indices into `candidates`) such that no
/// domain at `policy.level` holds more than `policy.max_per_domain`, counting
/// the stripes already in place: `existing[d]` for domain `d`, and servers in
/// `exclude` (those already holding a stripe of the item) are never chosen.
///
/// The order is random, weighted by free space, so fuller servers fill
/// slower. Walking that order and taking every server whose domain still has
/// room never fails when any valid choice exists: it ends with all domains
/// either full or exhausted.
pub fn choose(
    candidates: &[Candidate],
    n: usize,
    policy: PlacementPolicy,
    existing: &HashMap<String, usize>,
    exclude: &[usize],
    rng: &mut impl Rng,
) -> Result<Vec<usize>, PlacementError> {
    choose_at_least(candidates, n, n, policy, existing, exclude, rng)
}

/// As [`choose`], but settles for fewer than `n` (never fewer than `min`)
/// when the policy and the candidates cannot hold `n`: a degraded write. The
/// result is then as large as any valid choice can be.
pub fn choose_at_least(
    candidates: &[Candidate],
    n: usize,
    min: usize,
    policy: PlacementPolicy,
    existing: &HashMap<String, usize>,
    exclude: &[usize],
    rng: &mut impl Rng,
) -> Result<Vec<usize>, PlacementError> {
    if policy.max_per_domain == 0 {
        return Err(PlacementError::ZeroPerDomain);
    }
    let eligible: Vec<usize> = (0..candidates.len()).filter(|i| !exclude.contains(i)).collect();
    // Weighted random order (Efraimidis-Spirakis): key = u^(1/w), largest first.
    let mut keyed: Vec<(f64, usize)> = eligible
        .iter()
        .map(|&i| {
            let w = (candidates[i].free_bytes as f64).max(1.0);
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            (u.ln() / w, i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut used: HashMap<String, usize> = existing.clone();
    let mut out = Vec::with_capacity(n);
    for (_, i) in keyed {
        if out.len() == n {
            break;
        }
        let d = candidates[i].topology.domain(policy.level);
        let c = used.entry(d).or_insert(0);
        if *c < policy.max_per_domain {
            *c += 1;
            out.push(i);
        }
    }
    if out.len() < min.min(n) {
        let mut per: HashMap<String, usize> = HashMap::new();
        for &i in &eligible {
            *per.entry(candidates[i].topology.domain(policy.level)).or_insert(0) += 1;
        }
        let capacity = per
            .iter()
            .map(|(d, c)| (*c).min(policy.max_per_domain.saturating_sub(existing.get(d).copied().unwrap_or(0))))
            .sum();
        return Err(PlacementError::Unsatisfiable {
            wanted: min.min(n),
            level: policy.level,
            max_per_domain: policy.max_per_domain,
            domains: per.len(),
            capacity,
        });
    }
    Ok(out)
}

/// Stripes per domain at `level` of a placement.
pub fn domain_counts<'a>(topologies: impl IntoIterator<Item = &'a Topology>, level: Level) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for t in topologies {
        *out.entry(t.domain(level)).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests;
