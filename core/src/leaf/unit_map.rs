//! Which leaf units of a root-backed file the leaf holds.
//!
//! Unit `u` covers bytes `u * LEAF_UNIT .. (u + 1) * LEAF_UNIT` of the file.
//! A held unit's bytes are read from the leaf's data file; any other unit's
//! bytes are the root's (up to the file's origin limit, zeros past it).

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use super::LEAF_UNIT;

/// The leaf units a file holds, journaled as runs of consecutive units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitMap {
    units: BTreeSet<u64>,
}

impl UnitMap {
    pub fn contains(&self, unit: u64) -> bool {
        self.units.contains(&unit)
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Units held.
    pub fn len(&self) -> u64 {
        self.units.len() as u64
    }

    /// Bytes of data the held units stand for.
    pub fn bytes(&self) -> u64 {
        self.len() * LEAF_UNIT
    }

    pub fn insert(&mut self, units: RangeInclusive<u64>) {
        self.units.extend(units);
    }

    /// Keeps only units below `end`; true if any went.
    pub fn keep_below(&mut self, end: u64) -> bool {
        let gone = self.units.split_off(&end);
        !gone.is_empty()
    }

    /// Whether any unit at or past `unit` is held.
    pub fn any_from(&self, unit: u64) -> bool {
        self.units.range(unit..).next().is_some()
    }

    /// Maximal runs of consecutive held units, in order, as (first, last).
    pub fn runs(&self) -> Vec<(u64, u64)> {
        runs(self.units.iter().copied())
    }

    /// Units overlapping bytes `offset..end` that are not held.
    pub fn missing(&self, offset: u64, end: u64) -> Vec<u64> {
        if end <= offset {
            return Vec::new();
        }
        (offset / LEAF_UNIT..=(end - 1) / LEAF_UNIT).filter(|u| !self.contains(*u)).collect()
    }
}

impl FromIterator<u64> for UnitMap {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        Self { units: iter.into_iter().collect() }
    }
}

/// Maximal runs of consecutive numbers in an ascending sequence.
pub fn runs(units: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for u in units {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == u => *last = u,
            _ => out.push((u, u)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn runs_cover_exactly_the_units_and_are_maximal(units in prop::collection::btree_set(0u64..200, 0..60)) {
            let map: UnitMap = units.iter().copied().collect();
            let runs = map.runs();
            let covered: BTreeSet<u64> = runs.iter().flat_map(|&(f, l)| f..=l).collect();
            prop_assert_eq!(&covered, &units);
            for w in runs.windows(2) {
                // Ordered, disjoint, and not mergeable.
                prop_assert!(w[0].1 + 1 < w[1].0);
            }
            let mut again = UnitMap::default();
            for (f, l) in runs {
                again.insert(f..=l);
            }
            prop_assert_eq!(again, map);
        }

        #[test]
        fn missing_is_every_overlapping_unit_not_held(
            units in prop::collection::btree_set(0u64..40, 0..30),
            offset in 0u64..(40 * LEAF_UNIT),
            len in 0u64..(8 * LEAF_UNIT),
        ) {
            let map: UnitMap = units.iter().copied().collect();
            let end = offset + len;
            // Oracle: walk the bytes' units one by one.
            let want: Vec<u64> = (0..50)
                .filter(|u| u * LEAF_UNIT < end && (u + 1) * LEAF_UNIT > offset && !units.contains(u))
                .collect();
            prop_assert_eq!(map.missing(offset, end), want);
        }

        #[test]
        fn keep_below_drops_exactly_the_units_past_the_end(
            units in prop::collection::btree_set(0u64..50, 0..30),
            end in 0u64..60,
        ) {
            let mut map: UnitMap = units.iter().copied().collect();
            let any_past = units.iter().any(|u| *u >= end);
            prop_assert_eq!(map.any_from(end), any_past);
            prop_assert_eq!(map.keep_below(end), any_past);
            let want: UnitMap = units.iter().copied().filter(|u| *u < end).collect();
            prop_assert_eq!(map, want);
        }
    }

    #[test]
    fn a_write_within_one_unit_misses_one_unit() {
        let map: UnitMap = [1].into_iter().collect();
        assert_eq!(map.missing(10, 20), vec![0]);
        assert_eq!(map.missing(LEAF_UNIT, LEAF_UNIT + 1), Vec::<u64>::new());
        assert_eq!(map.missing(LEAF_UNIT - 1, 2 * LEAF_UNIT + 1), vec![0, 2]);
        assert_eq!(map.missing(5, 5), Vec::<u64>::new());
    }
}
