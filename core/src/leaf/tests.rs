//! Journal replay, compaction and copy-up, checked against naive models.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::journal::{encode, replay};
use super::*;

/// A root of a few directories with fixed listings.
struct Root(BTreeMap<u64, Vec<(Vec<u8>, u64)>>);

impl RootView for Root {
    fn listing(&self, dir: u64) -> Vec<(Vec<u8>, u64)> {
        self.0.get(&dir).cloned().unwrap_or_default()
    }
}

fn root() -> Root {
    Root(BTreeMap::from([(1, vec![(b"a".to_vec(), 2), (b"d".to_vec(), 3)]), (3, vec![(b"x".to_vec(), 4)])]))
}

fn inode(kind: Kind, size: u64, origin: Option<u64>, nlink: u32) -> Inode {
    Inode {
        kind,
        perm: 0o644,
        uid: 0,
        gid: 0,
        size,
        atime: (1, 0),
        mtime: (1, 0),
        ctime: (1, 0),
        nlink,
        origin,
        origin_limit: size,
        target: None,
        xattrs: BTreeMap::new(),
        changed: false,
    }
}

fn ino() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..6, (0u64..4).prop_map(|i| FIRST_LEAF_INO + i)]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![b"a".to_vec(), b"d".to_vec(), b"x".to_vec(), b"new".to_vec()])
}

fn record() -> impl Strategy<Value = Record> {
    let kind = prop::sample::select(vec![Kind::File, Kind::Dir, Kind::Symlink]);
    prop_oneof![
        (ino(), kind, 0u64..(4 * LEAF_UNIT), prop::option::of(1u64..6), 0u32..3)
            .prop_map(|(ino, k, size, origin, nlink)| Record::Inode { ino, inode: inode(k, size, origin, nlink) }),
        ino().prop_map(|ino| Record::Forget { ino }),
        ino().prop_map(|dir| Record::Materialize { dir }),
        (ino(), prop::collection::vec((name(), ino()), 0..3))
            .prop_map(|(dir, entries)| Record::Listing { dir, entries }),
        (ino(), name(), ino()).prop_map(|(dir, name, ino)| Record::Link { dir, name, ino }),
        (ino(), name()).prop_map(|(dir, name)| Record::Unlink { dir, name }),
        (ino(), 0u64..8, 0u64..4).prop_map(|(ino, first, n)| Record::Units { ino, first, last: first + n }),
        (0u64..4).prop_map(|i| Record::NextIno { next: FIRST_LEAF_INO + i }),
    ]
}

/// Bytes held, summed the slow way.
fn held_oracle(st: &LeafState, inos: impl Iterator<Item = u64>) -> u64 {
    inos.filter_map(|ino| st.inode(ino).map(|i| (ino, i)))
        .map(|(ino, i)| match (i.kind, i.origin) {
            (Kind::File, None) => i.size,
            (Kind::File, Some(_)) => st.units(ino).map_or(0, |u| u.len() * LEAF_UNIT),
            _ => 0,
        })
        .sum()
}

fn all_inos() -> impl Iterator<Item = u64> {
    (0..8).chain(FIRST_LEAF_INO..FIRST_LEAF_INO + 5)
}

proptest! {
    #[test]
    fn replaying_any_prefix_gives_the_state_of_its_whole_records(
        records in prop::collection::vec(record(), 0..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let root = root();
        let bytes = encode(&records);
        let cut = cut.index(bytes.len() + 1);
        let (replayed, valid) = replay(&bytes[..cut]);
        // The whole lines in the prefix, no more, no fewer.
        let whole = bytes[..cut].iter().filter(|b| **b == b'\n').count();
        prop_assert_eq!(replayed.len(), whole);
        prop_assert_eq!(&replayed[..], &records[..whole]);
        prop_assert_eq!(valid, encode(&records[..whole]).len());
        let st = LeafState::from_records(&root, &replayed);
        prop_assert_eq!(st.used(), held_oracle(&st, all_inos()));
    }

    #[test]
    fn a_compacted_journal_keeps_the_state(records in prop::collection::vec(record(), 0..40)) {
        let root = root();
        let st = LeafState::from_records(&root, &records);
        let compacted = st.compacted();
        // Replayed over a root with no listings at all: a compacted
        // journal needs nothing of the root.
        let again = LeafState::from_records(&Root(BTreeMap::new()), &replay(&encode(&compacted)).0);
        prop_assert_eq!(&again, &st);
        prop_assert_eq!(again.compacted(), compacted);
    }

    #[test]
    fn garbage_after_the_last_whole_record_is_ignored(
        records in prop::collection::vec(record(), 0..10),
        tail in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = encode(&records);
        let valid = bytes.len();
        // A torn record: a line that does not parse or never ends.
        bytes.push(b'{');
        bytes.extend(tail);
        let (replayed, at) = replay(&bytes);
        prop_assert_eq!(replayed, records);
        prop_assert_eq!(at, valid);
    }

    /// Writes and truncations of a root-backed file, planned by the state,
    /// carried out on a simulated data file, read back through the unit
    /// map: the bytes are the naive model's.
    #[test]
    fn copy_up_keeps_file_contents(
        root_len in 0usize..(3 * LEAF_UNIT as usize),
        seed in any::<u8>(),
        ops in prop::collection::vec(
            prop_oneof![
                (0u64..(4 * LEAF_UNIT), 1u64..(LEAF_UNIT + LEAF_UNIT / 2), any::<u8>()).prop_map(|(o, l, v)| (true, o, l, v)),
                (0u64..(4 * LEAF_UNIT)).prop_map(|size| (false, size, 0, 0)),
            ],
            1..8,
        ),
    ) {
        const FILE: u64 = 2;
        let base: Vec<u8> = (0..root_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let mut model = base.clone();
        let mut data: Vec<u8> = Vec::new();
        let mut st = LeafState::default();
        let mut file = inode(Kind::File, root_len as u64, Some(FILE), 1);
        let none = Root(BTreeMap::new());
        for (is_write, a, b, v) in ops {
            if is_write {
                let (offset, len) = (a, b);
                let plan = st.plan_write(FILE, &file, offset, len, u64::MAX).unwrap();
                for r in &plan.copy_up {
                    let (s, e) = (r.start as usize, r.end as usize);
                    if data.len() < e { data.resize(e, 0); }
                    data[s..e].copy_from_slice(&base[s..e]);
                }
                let (s, e) = (offset as usize, (offset + len) as usize);
                if data.len() < e { data.resize(e, 0); }
                data[s..e].fill(v);
                if model.len() < e { model.resize(e, 0); }
                model[s..e].fill(v);
                for r in LeafState::written(FILE, file.clone(), plan.end, &plan.new_units, (2, 0)) {
                    st.apply(&none, &r);
                }
            } else {
                let size = a;
                let old = file.size;
                let mut records = st.resize(FILE, &mut file, size, u64::MAX, (3, 0)).unwrap();
                if size < old && data.len() as u64 > size { data.truncate(size as usize); }
                model.resize(size as usize, 0);
                records.push(Record::Inode { ino: FILE, inode: file.clone() });
                for r in &records {
                    st.apply(&none, r);
                }
            }
            file = st.inode(FILE).cloned().unwrap();
            prop_assert_eq!(file.size, model.len() as u64);
            let held = st.units(FILE).cloned().unwrap_or_default();
            let read: Vec<u8> = (0..file.size)
                .map(|p| {
                    if held.contains(p / LEAF_UNIT) {
                        data.get(p as usize).copied().unwrap_or(0)
                    } else if p < file.origin_limit {
                        base[p as usize]
                    } else {
                        0
                    }
                })
                .collect();
            prop_assert!(read == model, "contents differ after {} ops", st.units(FILE).map_or(0, |u| u.len()));
            prop_assert_eq!(st.used(), held.bytes());
        }
    }
}

#[test]
fn a_write_past_capacity_is_refused_and_plans_nothing() {
    let st = LeafState::default();
    let f = inode(Kind::File, 0, None, 1);
    assert_eq!(st.plan_write(FIRST_LEAF_INO, &f, 0, 10, 9), Err(LeafError::NoSpace));
    assert_eq!(st.plan_write(FIRST_LEAF_INO, &f, u64::MAX, 2, u64::MAX), Err(LeafError::TooBig));
    let d = inode(Kind::Dir, 0, None, 2);
    assert_eq!(st.plan_write(1, &d, 0, 1, u64::MAX), Err(LeafError::NotAFile));
    // A root-backed file is charged the units it copies up.
    let r = inode(Kind::File, 3 * LEAF_UNIT, Some(2), 1);
    assert_eq!(st.plan_write(2, &r, 10, 1, LEAF_UNIT - 1), Err(LeafError::NoSpace));
    let plan = st.plan_write(2, &r, 10, 1, LEAF_UNIT).unwrap();
    assert_eq!(plan.new_units, vec![0]);
    assert_eq!(plan.copy_up, vec![0..LEAF_UNIT]);
}

#[test]
fn a_change_drops_the_known_digest() {
    let st = LeafState::default();
    let mut f = inode(Kind::File, 10, Some(2), 1);
    f.xattrs.insert(crate::manifest::SHA256_XATTR.to_string(), b"ab".to_vec());
    let records = LeafState::written(2, f.clone(), 12, &[0], (9, 9));
    let Record::Inode { inode, .. } = &records[0] else { panic!("{records:?}") };
    assert!(inode.changed && inode.xattrs.is_empty() && inode.mtime == (9, 9) && inode.size == 12);
    assert_eq!(records[1], Record::Units { ino: 2, first: 0, last: 0 });
    st.resize(2, &mut f, 5, u64::MAX, (8, 0)).unwrap();
    assert!(f.xattrs.is_empty() && f.origin_limit == 5 && f.size == 5);
}

#[test]
fn journals_of_earlier_versions_replay() {
    // The on-disk names, as the first leaf journals wrote them.
    let old = b"{\"NextIno\":{\"next\":1099511627777}}\n{\"Blocks\":{\"ino\":2,\"first\":0,\"last\":1}}\n";
    let (records, at) = replay(old);
    assert_eq!(at, old.len());
    assert_eq!(
        records,
        vec![Record::NextIno { next: FIRST_LEAF_INO + 1 }, Record::Units { ino: 2, first: 0, last: 1 }]
    );
}
