//! Items of random size cut by the layout, encoded, and rebuilt from every
//! choice of k surviving stripes: the bytes always come back exactly.

use proptest::prelude::*;
use tessera_core::codec::kernel::Kernel;
use tessera_core::codec::{ErasureCoder, ReedSolomon};
use tessera_core::layout::Layout;

/// Every k-subset of 0..n.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            if n - i < k - cur.len() {
                break;
            }
            cur.push(i);
            go(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    go(0, n, k, &mut Vec::new(), &mut out);
    out
}

/// Cuts an item into its k data stripes as the layout places its bytes
/// (zero-padded past the item's end), and appends m parity stripes.
fn stripes_of(layout: &Layout, rs: &ReedSolomon, item: &[u8]) -> Vec<Vec<u8>> {
    let s = layout.stripe_len(item.len() as u64).unwrap();
    let mut stripes = vec![vec![0u8; s]; layout.n()];
    for e in layout.data_extents(item.len() as u64, 0..item.len() as u64).unwrap() {
        let at = e.item_offset as usize;
        stripes[e.stripe][e.stripe_range.clone()].copy_from_slice(&item[at..at + e.stripe_range.len()]);
    }
    let (data, parity) = stripes.split_at_mut(layout.k());
    let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
    rs.encode(&refs, &mut outs).unwrap();
    stripes
}

/// Reassembles the item from its data stripes.
fn item_of(layout: &Layout, len: usize, data: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for e in layout.data_extents(len as u64, 0..len as u64).unwrap() {
        let at = e.item_offset as usize;
        out[at..at + e.stripe_range.len()].copy_from_slice(&data[e.stripe][e.stripe_range.clone()]);
    }
    out
}

fn check_every_erasure_pattern(k: usize, m: usize, unit: usize, len: usize, seed: u64) -> Result<(), TestCaseError> {
    let layout = Layout::new(k, m, unit, 512).unwrap();
    let mut x = seed | 1;
    let item: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for kernel in Kernel::available() {
        let rs = ReedSolomon::with_kernel(k, m, kernel).unwrap();
        let stripes = stripes_of(&layout, &rs, &item);
        let all = subsets(k + m, k);
        for keep in &all {
            let present: Vec<(usize, &[u8])> = keep.iter().map(|&i| (i, stripes[i].as_slice())).collect();
            let lost: Vec<usize> = (0..k).filter(|i| !keep.contains(i)).collect();
            let mut rebuilt: Vec<Vec<u8>> = stripes[..k].to_vec();
            for &i in &lost {
                rebuilt[i].fill(0);
            }
            {
                let mut bufs: Vec<&mut Vec<u8>> = rebuilt.iter_mut().collect();
                let mut wanted: Vec<(usize, &mut [u8])> = Vec::new();
                for (i, b) in bufs.iter_mut().enumerate() {
                    if lost.contains(&i) {
                        wanted.push((i, b.as_mut_slice()));
                    }
                }
                rs.reconstruct(&present, &mut wanted).unwrap();
            }
            prop_assert_eq!(item_of(&layout, len, &rebuilt), item.clone(), "{} kept {:?}", kernel.name(), keep);
        }
        // Parity lost as well as data: rebuilding parity gives the encoder's bytes.
        let keep = &all[all.len() / 2];
        let present: Vec<(usize, &[u8])> = keep.iter().map(|&i| (i, stripes[i].as_slice())).collect();
        let lost: Vec<usize> = (0..k + m).filter(|i| !keep.contains(i)).collect();
        let mut bufs = vec![vec![0u8; stripes[0].len()]; lost.len()];
        let mut wanted: Vec<(usize, &mut [u8])> =
            lost.iter().copied().zip(bufs.iter_mut().map(|b| b.as_mut_slice())).collect();
        rs.reconstruct(&present, &mut wanted).unwrap();
        for (i, b) in lost.iter().zip(&bufs) {
            prop_assert_eq!(b, &stripes[*i]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// RS(6,3): all 84 choices of 6 of 9 stripes, random unit and item size.
    #[test]
    fn rs_6_3_rebuilds_from_any_6_of_9(units in 1usize..48, fill in 1usize..=10_000, seed in any::<u64>()) {
        let unit = units * 64;
        let len = (fill * 6 * unit).div_ceil(10_000).max(1);
        check_every_erasure_pattern(6, 3, unit, len, seed)?;
    }

    /// RS(10,4): all 1001 choices of 10 of 14 stripes.
    #[test]
    fn rs_10_4_rebuilds_from_any_10_of_14(units in 1usize..16, fill in 1usize..=10_000, seed in any::<u64>()) {
        let unit = units * 64;
        let len = (fill * 10 * unit).div_ceil(10_000).max(1);
        check_every_erasure_pattern(10, 4, unit, len, seed)?;
    }
}

#[test]
fn subsets_are_all_there() {
    assert_eq!(subsets(9, 6).len(), 84);
    assert_eq!(subsets(14, 10).len(), 1001);
}
