//! Retention: which versions of a fileset to collect.

/// A version as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    pub id: u64,
    /// A volume (or anyone else) holds it: never collected.
    pub pinned: bool,
}

/// The versions to collect when keeping the newest `keep` (at least one):
/// every older version that is not pinned.
pub fn collectable(versions: &[Retained], keep: usize) -> Vec<u64> {
    let mut ids: Vec<&Retained> = versions.iter().collect();
    ids.sort_by_key(|v| std::cmp::Reverse(v.id));
    ids.into_iter().skip(keep.max(1)).filter(|v| !v.pinned).map(|v| v.id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_every_pinned_version() {
        let v = |id, pinned| Retained { id, pinned };
        let all = [v(1, false), v(2, true), v(3, false), v(4, false), v(5, false)];
        assert_eq!(collectable(&all, 2), vec![3, 1]);
        assert_eq!(collectable(&all, 0), vec![4, 3, 1], "the newest is always kept");
        assert!(collectable(&all, 10).is_empty());
    }
}
