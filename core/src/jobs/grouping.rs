//! Splitting a version's files into groups, one task each. Every file of
//! the version lands in exactly one group, groups are named so that their
//! names are directories of the output (`<group>/...`), and the same input
//! always gives the same groups (a restarted controller finds them again).

use std::collections::BTreeMap;

/// How a job's files are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    /// By directory: the first `depth` components of each file's directory
    /// (files higher up are grouped by their whole directory; files at the
    /// root form the group [`ROOT_GROUP`]).
    Directory { depth: usize },
    /// By pattern: each file goes to the first pattern it matches (`*` and
    /// `?` within a path component, `**` across components); a file no
    /// pattern matches is an error, so nothing is silently left out.
    Glob(Vec<NamedPattern>),
    /// Consecutive files (in path order) up to `target` bytes per group; a
    /// file larger than `target` is a group of its own.
    Bytes { target: u64 },
    /// By the chunkserver holding the most of each file's data-stripe bytes,
    /// so each task reads locally; files with no bytes go to [`EMPTY_GROUP`].
    Location,
}

/// A pattern and the group it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPattern {
    pub group: String,
    pub pattern: String,
}

/// The group of files directly at the version's root.
pub const ROOT_GROUP: &str = "_root";
/// The group of files whose data no chunkserver holds (empty files).
pub const EMPTY_GROUP: &str = "_empty";

/// A file as grouping sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub path: String,
    pub size: u64,
    /// The chunkserver holding most of its data-stripe bytes (for
    /// [`Grouping::Location`]; see [`super::locality::dominant`]).
    pub server: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupingError {
    #[error("grouping.directory.depth must be at least 1")]
    ZeroDepth,
    #[error("grouping.bytes must be at least 1")]
    ZeroTarget,
    #[error("grouping.glob is empty")]
    NoPatterns,
    #[error("grouping.glob[{index}].group {name:?}: {reason}")]
    BadGroupName { index: usize, name: String, reason: &'static str },
    #[error("{count} files match no pattern of grouping.glob, e.g. {example:?}")]
    Unmatched { example: String, count: usize },
    #[error("grouping.glob: group {outer:?} would hold group {inner:?}'s output directory")]
    Nested { outer: String, inner: String },
    #[error("grouping.directory: the top-level directory {0:?} clashes with the group of the files at the root")]
    Reserved(String),
}

/// The groups of `files` (paths unique), by group name, each group's files
/// in path order.
pub fn group(files: &[FileRef], how: &Grouping) -> Result<BTreeMap<String, Vec<FileRef>>, GroupingError> {
    let mut sorted: Vec<&FileRef> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut groups: BTreeMap<String, Vec<FileRef>> = BTreeMap::new();
    match how {
        Grouping::Directory { depth } => {
            if *depth == 0 {
                return Err(GroupingError::ZeroDepth);
            }
            for f in sorted {
                let dir: Vec<&str> = f.path.split('/').collect();
                let dir = &dir[..dir.len() - 1];
                let key = if dir.is_empty() { ROOT_GROUP.to_string() } else { dir[..dir.len().min(*depth)].join("/") };
                groups.entry(key).or_default().push(f.clone());
            }
            // Files at the root and a top-level directory named like their
            // group would share one group (and one output directory).
            let root_files = groups.get(ROOT_GROUP).is_some_and(|g| g.iter().any(|f| !f.path.contains('/')));
            let root_dir = files.iter().any(|f| f.path.starts_with(&format!("{ROOT_GROUP}/")));
            if root_files && root_dir {
                return Err(GroupingError::Reserved(ROOT_GROUP.into()));
            }
        }
        Grouping::Glob(patterns) => {
            if patterns.is_empty() {
                return Err(GroupingError::NoPatterns);
            }
            for (index, p) in patterns.iter().enumerate() {
                check_group_name(&p.group).map_err(|reason| GroupingError::BadGroupName {
                    index,
                    name: p.group.clone(),
                    reason,
                })?;
            }
            for outer in patterns.iter().map(|p| &p.group) {
                if let Some(inner) = patterns.iter().map(|p| &p.group).find(|g| g.starts_with(&format!("{outer}/"))) {
                    return Err(GroupingError::Nested { outer: outer.clone(), inner: inner.clone() });
                }
            }
            let mut unmatched = Vec::new();
            for f in sorted {
                match patterns.iter().find(|p| glob_match(&p.pattern, &f.path)) {
                    Some(p) => groups.entry(p.group.clone()).or_default().push(f.clone()),
                    None => unmatched.push(f.path.clone()),
                }
            }
            if let Some(example) = unmatched.first() {
                return Err(GroupingError::Unmatched { example: example.clone(), count: unmatched.len() });
            }
        }
        Grouping::Bytes { target } => {
            if *target == 0 {
                return Err(GroupingError::ZeroTarget);
            }
            let mut current: Vec<FileRef> = Vec::new();
            let mut bytes = 0u64;
            let mut parts = Vec::new();
            for f in sorted {
                if !current.is_empty() && bytes.saturating_add(f.size) > *target {
                    parts.push(std::mem::take(&mut current));
                    bytes = 0;
                }
                bytes = bytes.saturating_add(f.size);
                current.push(f.clone());
            }
            if !current.is_empty() {
                parts.push(current);
            }
            let width = parts.len().to_string().len().max(5);
            for (i, part) in parts.into_iter().enumerate() {
                groups.insert(format!("part-{i:0width$}"), part);
            }
        }
        Grouping::Location => {
            for f in sorted {
                let key = match &f.server {
                    Some(s) => format!("at-{s}"),
                    None => EMPTY_GROUP.to_string(),
                };
                groups.entry(key).or_default().push(f.clone());
            }
        }
    }
    Ok(groups)
}

/// A group name is one or more path components of a directory name.
fn check_group_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("must be a relative path without empty, '.' or '..' components");
    }
    Ok(())
}

/// Whether `path` matches `pattern`: `*` is any run of characters but `/`,
/// `?` one character but `/`, `**` any run of characters `/` included (so
/// `**/` also matches nothing), anything else itself. Memoised: at most
/// one evaluation per pair of positions, so a pattern of many stars cannot
/// take exponential time.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    // memo[i * (s.len() + 1) + j]: whether p[i..] matches s[j..].
    let mut memo: Vec<Option<bool>> = vec![None; (p.len() + 1) * (s.len() + 1)];
    fn go(p: &[u8], s: &[u8], i: usize, j: usize, memo: &mut Vec<Option<bool>>) -> bool {
        let at = i * (s.len() + 1) + j;
        if let Some(m) = memo[at] {
            return m;
        }
        let m = match &p[i..] {
            [] => j == s.len(),
            [b'*', b'*', b'/', ..] => (j..=s.len()).any(|k| (k == j || s[k - 1] == b'/') && go(p, s, i + 3, k, memo)),
            [b'*', b'*', ..] => (j..=s.len()).any(|k| go(p, s, i + 2, k, memo)),
            [b'*', ..] => (j..=s.len()).take_while(|&k| k == j || s[k - 1] != b'/').any(|k| go(p, s, i + 1, k, memo)),
            [b'?', ..] => s.get(j).is_some_and(|&c| c != b'/') && go(p, s, i + 1, j + 1, memo),
            [c, ..] => s.get(j) == Some(c) && go(p, s, i + 1, j + 1, memo),
        };
        memo[at] = Some(m);
        m
    }
    go(p, s, 0, 0, &mut memo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(path: &str, size: u64) -> FileRef {
        FileRef { path: path.into(), size, server: None }
    }

    fn names(g: &BTreeMap<String, Vec<FileRef>>) -> Vec<(&str, Vec<&str>)> {
        g.iter().map(|(k, v)| (k.as_str(), v.iter().map(|f| f.path.as_str()).collect())).collect()
    }

    #[test]
    fn directories_group_by_their_first_components() {
        let files = [file("a/x/1", 1), file("a/y/2", 1), file("b/3", 1), file("top", 1)];
        let g = group(&files, &Grouping::Directory { depth: 1 }).unwrap();
        assert_eq!(names(&g), [("_root", vec!["top"]), ("a", vec!["a/x/1", "a/y/2"]), ("b", vec!["b/3"])]);
        let g = group(&files, &Grouping::Directory { depth: 2 }).unwrap();
        assert_eq!(names(&g)[1..], [("a/x", vec!["a/x/1"]), ("a/y", vec!["a/y/2"]), ("b", vec!["b/3"])]);
        assert_eq!(group(&files, &Grouping::Directory { depth: 0 }), Err(GroupingError::ZeroDepth));
        let clash = [file("_root/a", 1), file("top", 1)];
        assert_eq!(group(&clash, &Grouping::Directory { depth: 1 }), Err(GroupingError::Reserved("_root".into())));
        // Without files at the root, a directory of that name is just a group.
        let g = group(&clash[..1], &Grouping::Directory { depth: 1 }).unwrap();
        assert_eq!(names(&g), [("_root", vec!["_root/a"])]);
    }

    #[test]
    fn globs_take_the_first_match_and_refuse_what_none_matches() {
        let p = |g: &str, p: &str| NamedPattern { group: g.into(), pattern: p.into() };
        let files = [file("train/a.parquet", 1), file("train/sub/b.parquet", 1), file("eval/c.json", 1)];
        let how = Grouping::Glob(vec![p("shallow", "train/*.parquet"), p("train", "train/**"), p("eval", "**/*.json")]);
        let g = group(&files, &how).unwrap();
        let want = [
            ("eval", vec!["eval/c.json"]),
            ("shallow", vec!["train/a.parquet"]),
            ("train", vec!["train/sub/b.parquet"]),
        ];
        assert_eq!(names(&g), want);
        let err = group(&files, &Grouping::Glob(vec![p("t", "train/**")])).unwrap_err();
        assert_eq!(err, GroupingError::Unmatched { example: "eval/c.json".into(), count: 1 });
        let err = group(&files, &Grouping::Glob(vec![p("../up", "**")])).unwrap_err();
        assert!(matches!(err, GroupingError::BadGroupName { index: 0, .. }), "{err}");
        let err = group(&files, &Grouping::Glob(vec![p("t", "train/**"), p("t/sub", "**")])).unwrap_err();
        assert_eq!(err, GroupingError::Nested { outer: "t".into(), inner: "t/sub".into() });
    }

    #[test]
    fn glob_syntax() {
        assert!(glob_match("*.txt", "a.txt") && !glob_match("*.txt", "d/a.txt"));
        assert!(glob_match("**/*.txt", "a.txt") && glob_match("**/*.txt", "d/e/a.txt"));
        assert!(glob_match("d/**", "d/e/f") && !glob_match("d/**/x", "dd/x"));
        assert!(glob_match("p?rt-*", "part-1") && !glob_match("p?rt", "p/rt"));
        assert!(!glob_match("a", "ab") && glob_match("", ""));
        // Many stars against a long miss: memoised, this returns at once.
        let stars = "**a".repeat(40) + "b";
        assert!(!glob_match(&stars, &"a".repeat(200)));
    }

    /// The naive oracle: the definition, backtracking without a memo
    /// (exponential, fine for short inputs).
    fn oracle(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', b'/', rest @ ..] => {
                oracle(rest, s) || (0..s.len()).any(|k| s[k] == b'/' && oracle(rest, &s[k + 1..]))
            }
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|k| oracle(rest, &s[k..])),
            [b'*', rest @ ..] => (0..=s.len()).take_while(|&k| !s[..k].contains(&b'/')).any(|k| oracle(rest, &s[k..])),
            [b'?', rest @ ..] => !s.is_empty() && s[0] != b'/' && oracle(rest, &s[1..]),
            [c, rest @ ..] => s.first() == Some(c) && oracle(rest, &s[1..]),
        }
    }

    proptest! {
        #[test]
        fn glob_matching_agrees_with_the_naive_matcher(p in "[ab/*?]{0,8}", s in "[ab/]{0,10}") {
            prop_assert_eq!(glob_match(&p, &s), oracle(p.as_bytes(), s.as_bytes()), "{} against {}", p, s);
        }
    }

    #[test]
    fn bytes_fill_groups_in_path_order() {
        let files = [file("a", 40), file("b", 40), file("c", 30), file("d", 200), file("e", 0)];
        let g = group(&files, &Grouping::Bytes { target: 100 }).unwrap();
        let want = [
            ("part-00000", vec!["a", "b"]),
            ("part-00001", vec!["c"]),
            ("part-00002", vec!["d"]),
            ("part-00003", vec!["e"]),
        ];
        assert_eq!(names(&g), want);
    }

    fn arb_files() -> impl Strategy<Value = Vec<FileRef>> {
        proptest::collection::btree_map(
            "[a-c]{1,2}(/[a-c]{1,2}){0,3}",
            (0u64..5000, proptest::option::of(0u8..4)),
            0..60,
        )
        .prop_map(|m| {
            // No path may also be a directory of another (a file tree).
            let paths: Vec<String> = m.keys().cloned().collect();
            m.into_iter()
                .filter(|(p, _)| !paths.iter().any(|q| q.starts_with(&format!("{p}/"))))
                .map(|(path, (size, s))| FileRef { path, size, server: s.map(|s| format!("cs-{s}")) })
                .collect()
        })
    }

    fn arb_grouping() -> impl Strategy<Value = Grouping> {
        prop_oneof![
            (1usize..4).prop_map(|depth| Grouping::Directory { depth }),
            (1u64..20_000).prop_map(|target| Grouping::Bytes { target }),
            Just(Grouping::Location),
            Just(Grouping::Glob(vec![
                NamedPattern { group: "a".into(), pattern: "a*/**".into() },
                NamedPattern { group: "rest".into(), pattern: "**".into() },
            ])),
        ]
    }

    proptest! {
        /// Every file lands in exactly one group, unchanged, whatever the
        /// grouping; groups are never empty and never exceed their target
        /// unless they hold one file (bytes); a location group is one server's.
        #[test]
        fn every_file_is_in_exactly_one_group(files in arb_files(), how in arb_grouping()) {
            let groups = group(&files, &how).unwrap();
            let mut seen: Vec<&FileRef> = groups.values().flatten().collect();
            seen.sort_by(|a, b| a.path.cmp(&b.path));
            let mut want: Vec<&FileRef> = files.iter().collect();
            want.sort_by(|a, b| a.path.cmp(&b.path));
            prop_assert_eq!(seen, want);
            for (name, members) in &groups {
                prop_assert!(!members.is_empty());
                prop_assert!(check_group_name(name).is_ok(), "{}", name);
                match &how {
                    Grouping::Bytes { target } => {
                        let bytes: u64 = members.iter().map(|f| f.size).sum();
                        prop_assert!(bytes <= *target || members.len() == 1);
                    }
                    Grouping::Location => {
                        prop_assert!(members.iter().all(|f| f.server == members[0].server));
                    }
                    _ => {}
                }
            }
            // The same input gives the same groups.
            prop_assert_eq!(group(&files, &how).unwrap(), groups);
        }
    }
}
