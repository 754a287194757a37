//! Where a group's data is: the data-stripe bytes each chunkserver holds of
//! a file or a group, and the server (so the node) holding the most, where
//! the group's task should run so that its reads are local (seed 003: one
//! copy executes, at the node holding the data stripe).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::layout::{Layout, LayoutError};

/// Data-stripe bytes held per server.
pub type BytesByServer = BTreeMap<String, u64>;

/// The data-stripe bytes of `extent` (a file's range of a packed stream of
/// `packed_len` bytes) held by each server; `holder(item, stripe)` names
/// the server holding that stripe of that item, if any does. Parity is
/// not counted: a healthy read fetches data stripes only.
pub fn data_bytes_by_server(
    layout: &Layout,
    packed_len: u64,
    extent: Range<u64>,
    holder: impl Fn(u64, usize) -> Option<String>,
) -> Result<BytesByServer, LayoutError> {
    let mut out = BytesByServer::new();
    for (item, range) in layout.items_of(extent) {
        let item_len = layout.item_len(packed_len, item);
        for e in layout.data_extents(item_len, range)? {
            if let Some(server) = holder(item, e.stripe) {
                *out.entry(server).or_default() += e.stripe_range.len() as u64;
            }
        }
    }
    Ok(out)
}

/// The sum of several files' maps (a group's).
pub fn total<'a>(maps: impl IntoIterator<Item = &'a BytesByServer>) -> BytesByServer {
    let mut out = BytesByServer::new();
    for m in maps {
        for (server, bytes) in m {
            *out.entry(server.clone()).or_default() += bytes;
        }
    }
    out
}

/// The server holding the most bytes (ties to the first by name, so the
/// choice is stable); none when no server holds any.
pub fn dominant(bytes: &BytesByServer) -> Option<&str> {
    bytes
        .iter()
        .filter(|(_, b)| **b > 0)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(s, _)| s.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_file_in_one_data_stripe_is_wholly_on_its_server() {
        // RS(2,1), 64-byte units: an item holds 128 bytes, stripe 0 has 0..64.
        let layout = Layout::new(2, 1, 64, 64).unwrap();
        let holder = |item: u64, stripe: usize| Some(format!("s{}", item * 3 + stripe as u64));
        let m = data_bytes_by_server(&layout, 256, 1..3, holder).unwrap();
        assert_eq!(m, [("s0".to_string(), 2)].into());
        // 32..224 spans item 0 (stripes 0, 1) and item 1 (stripes 0, 1).
        let m = data_bytes_by_server(&layout, 256, 32..224, holder).unwrap();
        assert_eq!(m, [("s0".into(), 32), ("s1".into(), 64), ("s3".into(), 64), ("s4".into(), 32)].into());
        assert_eq!(dominant(&m), Some("s1"), "ties go to the first by name");
        // A server holding nothing of the range is not in the map.
        let none = |_: u64, _: usize| None;
        assert_eq!(data_bytes_by_server(&layout, 256, 0..256, none).unwrap(), BytesByServer::new());
        assert_eq!(dominant(&BytesByServer::new()), None);
    }

    proptest! {
        /// Every data byte of the extent is counted once, at its holder, and
        /// the dominant server holds at least as many as any other.
        #[test]
        fn bytes_add_up_and_the_dominant_server_holds_the_most(
            k in 1usize..5, units in 1usize..4, packed in 1u64..2000, a in 0u64..2000, b in 0u64..2000,
            servers in 1u64..6,
        ) {
            let layout = Layout::new(k, 2, units * 64, 64).unwrap();
            let (start, end) = (a.min(b).min(packed), a.max(b).min(packed));
            let holder = |item: u64, stripe: usize| Some(format!("s{}", (item + stripe as u64) % servers));
            let m = data_bytes_by_server(&layout, packed, start..end, holder).unwrap();
            prop_assert_eq!(m.values().sum::<u64>(), end - start);
            // The naive oracle: byte by byte, which server holds it.
            let mut oracle = BytesByServer::new();
            for off in start..end {
                let (item, within) = layout.locate(off);
                let len = layout.item_len(packed, item);
                let stripe = (within / layout.stripe_len(len).unwrap() as u64) as usize;
                *oracle.entry(holder(item, stripe).unwrap()).or_default() += 1;
            }
            prop_assert_eq!(&m, &oracle);
            if let Some(best) = dominant(&m) {
                prop_assert!(m.values().all(|b| *b <= m[best]));
            } else {
                prop_assert_eq!(end, start);
            }
        }
    }
}
