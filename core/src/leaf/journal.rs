//! The leaf's journal: one JSON record per line, appended before the change
//! it describes is acknowledged.
//!
//! A record counts once its line is whole (ends in a newline): a reply is
//! sent only after the whole line was written, so a line cut short by a
//! crash was never acknowledged. Replay stops at the first line that is not
//! whole or does not parse, so the state after any prefix of a journal is
//! the state its whole records describe.

use serde::{Deserialize, Serialize};

use super::state::Inode;

/// A journal record. Applying them in order gives the leaf's state.
///
/// The names are the on-disk format: journals written by earlier versions
/// replay unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// An inode's attributes, whole.
    Inode {
        ino: u64,
        inode: Inode,
    },
    /// The inode is gone: its attributes, listing and units.
    Forget {
        ino: u64,
    },
    /// A directory's listing copied from the root.
    Materialize {
        dir: u64,
    },
    /// A whole listing (compacted journals, new directories).
    Listing {
        dir: u64,
        entries: Vec<(Vec<u8>, u64)>,
    },
    Link {
        dir: u64,
        name: Vec<u8>,
        ino: u64,
    },
    Unlink {
        dir: u64,
        name: Vec<u8>,
    },
    /// The leaf holds leaf units first..=last of a root-backed file.
    #[serde(rename = "Blocks")]
    Units {
        ino: u64,
        first: u64,
        last: u64,
    },
    /// Inode numbers below `next` are taken.
    NextIno {
        next: u64,
    },
}

/// The lines for `records`, ready to append.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        // A record is plain data (no maps with non-string keys): encoding
        // into memory cannot fail.
        serde_json::to_writer(&mut out, r).expect("a journal record encodes");
        out.push(b'\n');
    }
    out
}

/// The whole records at the start of `journal`, and how many bytes they
/// take (where the next record must be written).
pub fn replay(journal: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(nl) = journal[at..].iter().position(|b| *b == b'\n') {
        let Ok(record) = serde_json::from_slice::<Record>(&journal[at..at + nl]) else { break };
        records.push(record);
        at += nl + 1;
    }
    (records, at)
}
