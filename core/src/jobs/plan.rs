//! A job's plan over one version: its files grouped, and for each group
//! the server holding the most of the group's data-stripe bytes, where its
//! task should run (seed 003: the work goes to the data). The Job
//! controller turns a group's server into node affinity; nothing here does
//! I/O.

use super::grouping::{self, FileRef, Grouping, GroupingError};
use super::locality::{self, BytesByServer};
use crate::layout::{Layout, LayoutError};
use crate::manifest::Manifest;

/// One group of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub name: String,
    /// Its files, in path order.
    pub files: Vec<FileRef>,
    /// Its bytes (the files' sizes).
    pub bytes: u64,
    /// Data-stripe bytes of its files held by each server.
    pub by_server: BytesByServer,
    /// The server holding the most of them (none for a group of empty
    /// files, or when no holder is known).
    pub server: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Grouping(#[from] GroupingError),
    #[error("the version's layout: {0}")]
    Layout(#[from] LayoutError),
    /// Each group's result is the output's `<group>/`: one group's
    /// directory inside another's cannot be published.
    #[error(
        "groups {outer:?} and {inner:?} would nest in the output ({inner:?} inside {outer:?}/): choose a grouping whose groups do not contain each other (for directories, a depth no file sits above)"
    )]
    Nested { outer: String, inner: String },
}

/// The first pair of group names of which one is a directory of the other.
pub fn nested<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<(String, String)> {
    let all: std::collections::BTreeSet<&str> = names.into_iter().collect();
    all.iter().find_map(|inner| {
        inner
            .match_indices('/')
            .map(|(at, _)| &inner[..at])
            .find(|outer| all.contains(outer))
            .map(|outer| (outer.to_string(), inner.to_string()))
    })
}

/// Groups the files of `manifest` (stored with `layout`) as `how` says;
/// `holder(item, stripe)` names the server holding that stripe.
pub fn plan(
    manifest: &Manifest,
    layout: &Layout,
    holder: impl Fn(u64, usize) -> Option<String>,
    how: &Grouping,
) -> Result<Vec<GroupPlan>, PlanError> {
    let mut files = Vec::new();
    let mut maps = std::collections::BTreeMap::new();
    for e in manifest.entries() {
        let Some(extent) = e.extent() else { continue };
        let by_server = locality::data_bytes_by_server(layout, manifest.packed_len(), extent, &holder)?;
        let server = locality::dominant(&by_server).map(str::to_string);
        files.push(FileRef { path: e.path.clone(), size: e.size, server });
        maps.insert(e.path.clone(), by_server);
    }
    let groups = grouping::group(&files, how)?;
    if let Some((outer, inner)) = nested(groups.keys().map(|name| name.as_str())) {
        return Err(PlanError::Nested { outer, inner });
    }
    Ok(groups
        .into_iter()
        .map(|(name, files)| {
            let by_server = locality::total(files.iter().map(|f| &maps[&f.path]));
            let server = locality::dominant(&by_server).map(str::to_string);
            let bytes = files.iter().map(|f| f.size).sum();
            GroupPlan { name, files, bytes, by_server, server }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, EntryKind};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
        Entry { path: path.into(), kind, mode: 0o644, size, mtime_secs: 0, mtime_nanos: 0 }
    }

    /// Files packed end to end, in directories d0..d3 or at the root.
    fn manifest(sizes: &[(u8, u64)]) -> Manifest {
        let mut entries: Vec<Entry> = (0..4).map(|d| entry(&format!("d{d}"), EntryKind::Dir, 0)).collect();
        let mut offset = 0;
        for (i, (dir, size)) in sizes.iter().enumerate() {
            let path = if *dir < 4 { format!("d{dir}/f{i}") } else { format!("f{i}") };
            entries.push(entry(&path, EntryKind::File { offset, sha256: [0; 32] }, *size));
            offset += size;
        }
        Manifest::new(entries, offset).unwrap()
    }

    #[test]
    fn a_group_runs_where_most_of_its_data_is() {
        // RS(2,1), 64-byte stripes: item i's data stripes are on s{i % 3} and s{(i + 1) % 3}.
        let layout = Layout::new(2, 1, 64, 64).unwrap();
        let holder = |item: u64, stripe: usize| Some(format!("s{}", (item as usize + stripe) % 3));
        // d0 holds item 0 (s0, s1) and the first half of item 1 (s1): s1 holds the most.
        let m = manifest(&[(0, 128), (0, 64), (1, 64), (4, 0)]);
        let p = plan(&m, &layout, holder, &Grouping::Directory { depth: 1 }).unwrap();
        let names: Vec<(&str, Option<&str>)> = p.iter().map(|g| (g.name.as_str(), g.server.as_deref())).collect();
        assert_eq!(names, [("_root", None), ("d0", Some("s1")), ("d1", Some("s2"))]);
        assert_eq!(p[1].by_server, [("s0".to_string(), 64), ("s1".to_string(), 128)].into());
        assert_eq!(p[1].bytes, 192);
    }

    #[test]
    fn groups_that_would_nest_in_the_output_are_refused() {
        let layout = Layout::new(2, 1, 64, 64).unwrap();
        let holder = |_: u64, _: usize| Some("s0".to_string());
        let m = Manifest::new(
            vec![
                entry("a", EntryKind::Dir, 0),
                entry("a/b", EntryKind::Dir, 0),
                entry("a/b/y", EntryKind::File { offset: 0, sha256: [0; 32] }, 10),
                entry("a/x", EntryKind::File { offset: 10, sha256: [0; 32] }, 10),
            ],
            20,
        )
        .unwrap();
        let e = plan(&m, &layout, holder, &Grouping::Directory { depth: 2 }).unwrap_err();
        assert_eq!(e, PlanError::Nested { outer: "a".into(), inner: "a/b".into() });
        assert!(plan(&m, &layout, holder, &Grouping::Directory { depth: 1 }).is_ok());
        // Names that only share a prefix do not nest.
        assert_eq!(nested(["a", "a-b", "ab/c"]), None);
        assert_eq!(nested(["x/y/z", "a", "x/y"]), Some(("x/y".into(), "x/y/z".into())));
    }

    proptest! {
        /// Every file is planned once, a group's bytes by server add up to
        /// its bytes, and the chosen server holds at least as many of them
        /// as any other server (counted byte by byte, the naive oracle).
        #[test]
        fn the_chosen_server_holds_the_most_of_its_groups_data(
            sizes in proptest::collection::vec((0u8..5, 0u64..700), 1..30),
            k in 1usize..5,
            servers in 1usize..7,
            shift in 0usize..7,
            how in prop_oneof![
                (1usize..3).prop_map(|depth| Grouping::Directory { depth }),
                (1u64..2000).prop_map(|target| Grouping::Bytes { target }),
                Just(Grouping::Location),
            ],
        ) {
            let layout = Layout::new(k, 1, 64, 64).unwrap();
            let holder = |item: u64, stripe: usize| Some(format!("s{}", (item as usize * shift + stripe) % servers));
            let m = manifest(&sizes);
            let p = plan(&m, &layout, holder, &how).unwrap();
            prop_assert_eq!(p.iter().map(|g| g.files.len()).sum::<usize>(), sizes.len());
            for g in &p {
                let mut oracle: BTreeMap<String, u64> = BTreeMap::new();
                for f in &g.files {
                    let extent = m.get(&f.path).unwrap().extent().unwrap();
                    for off in extent {
                        let (item, within) = layout.locate(off);
                        let len = layout.item_len(m.packed_len(), item);
                        let stripe = (within / layout.stripe_len(len).unwrap() as u64) as usize;
                        *oracle.entry(holder(item, stripe).unwrap()).or_default() += 1;
                    }
                }
                prop_assert_eq!(&g.by_server, &oracle);
                prop_assert_eq!(g.by_server.values().sum::<u64>(), g.bytes);
                match &g.server {
                    Some(s) => prop_assert!(oracle.values().all(|b| *b <= oracle[s])),
                    None => prop_assert_eq!(g.bytes, 0),
                }
            }
        }
    }
}
