use super::*;
use proptest::prelude::*;

fn random_stripes(k: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    // A small xorshift keeps the test deterministic without pulling rand in here.
    let mut x = seed | 1;
    (0..k)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn encode_all(rs: &ReedSolomon, data: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let len = data[0].len();
    let mut parity = vec![vec![0u8; len]; rs.parity_stripes()];
    let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
    rs.encode(&refs, &mut outs).unwrap();
    data.iter().cloned().chain(parity).collect()
}

/// Every k-subset of 0..n, in lexicographic order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut s: Vec<usize> = (0..k).collect();
    loop {
        out.push(s.clone());
        let mut i = k;
        while i > 0 && s[i - 1] == n - k + i - 1 {
            i -= 1;
        }
        if i == 0 {
            return out;
        }
        s[i - 1] += 1;
        for j in i..k {
            s[j] = s[j - 1] + 1;
        }
    }
}

#[test]
fn subsets_enumerates_all_84_choices_of_6_of_9() {
    assert_eq!(subsets(9, 6).len(), 84);
    assert_eq!(subsets(14, 10).len(), 1001);
}

#[test]
fn every_kernel_rebuilds_every_erasure_pattern() {
    for kernel in Kernel::available() {
        for (k, m) in [(6, 3), (10, 4), (4, 2), (1, 1), (3, 5)] {
            let rs = ReedSolomon::with_kernel(k, m, kernel).unwrap();
            let stripes = encode_all(&rs, &random_stripes(k, 192 + 17, 42));
            for keep in subsets(k + m, k) {
                let present: Vec<(usize, &[u8])> = keep.iter().map(|&i| (i, stripes[i].as_slice())).collect();
                let lost: Vec<usize> = (0..k + m).filter(|i| !keep.contains(i)).collect();
                let mut bufs = vec![vec![0u8; stripes[0].len()]; lost.len()];
                let mut wanted: Vec<(usize, &mut [u8])> =
                    lost.iter().copied().zip(bufs.iter_mut().map(|b| b.as_mut_slice())).collect();
                rs.reconstruct(&present, &mut wanted).unwrap();
                for (i, b) in lost.iter().zip(&bufs) {
                    assert_eq!(b, &stripes[*i], "{} RS({k},{m}) kept {keep:?}, stripe {i}", kernel.name());
                }
            }
        }
    }
}

#[test]
fn the_largest_code_round_trips() {
    let rs = ReedSolomon::new(200, 56).unwrap();
    let stripes = encode_all(&rs, &random_stripes(200, 128, 7));
    // Lose the first 56 data stripes: only parity can bring them back.
    let present: Vec<(usize, &[u8])> = (56..256).map(|i| (i, stripes[i].as_slice())).collect();
    let mut bufs = vec![vec![0u8; 128]; 56];
    let mut wanted: Vec<(usize, &mut [u8])> = (0..56).zip(bufs.iter_mut().map(|b| b.as_mut_slice())).collect();
    rs.reconstruct(&present, &mut wanted).unwrap();
    for i in 0..56 {
        assert_eq!(bufs[i], stripes[i]);
    }
}

#[test]
fn shapes_outside_the_field_are_rejected() {
    assert!(matches!(ReedSolomon::new(0, 3), Err(CodecError::InvalidShape { .. })));
    assert!(matches!(ReedSolomon::new(6, 0), Err(CodecError::InvalidShape { .. })));
    assert!(matches!(ReedSolomon::new(200, 57), Err(CodecError::InvalidShape { .. })));
    assert!(ReedSolomon::new(16, 16).is_ok());
}

#[test]
fn too_few_stripes_is_an_error_not_garbage() {
    let rs = ReedSolomon::new(6, 3).unwrap();
    let stripes = encode_all(&rs, &random_stripes(6, 64, 3));
    // Five distinct stripes, one of them listed twice: still only five.
    let present: Vec<(usize, &[u8])> = [0, 1, 2, 3, 8, 8].iter().map(|&i| (i, stripes[i].as_slice())).collect();
    let mut out = vec![0u8; 64];
    let err = rs.reconstruct(&present, &mut [(4, out.as_mut_slice())]).unwrap_err();
    assert_eq!(err, CodecError::NotEnoughStripes { have: 5, k: 6 });
}

#[test]
fn mismatched_lengths_name_the_stripe() {
    let rs = ReedSolomon::new(2, 1).unwrap();
    let a = vec![0u8; 64];
    let b = vec![0u8; 63];
    let mut p = vec![0u8; 64];
    let err = rs.encode(&[&a, &b], &mut [&mut p]).unwrap_err();
    assert_eq!(err, CodecError::StripeLength { index: 1, len: 63, expected: 64 });
    let err = rs.encode(&[&a], &mut [&mut p]).unwrap_err();
    assert!(matches!(err, CodecError::StripeCount { role: "data", expected: 2, got: 1 }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// All kernels compute the same products, whatever the coefficients and
    /// lengths (including lengths that are not a multiple of the SIMD step).
    #[test]
    fn kernels_agree(outputs in 1usize..7, inputs in 1usize..12, len in 0usize..700, seed in any::<u64>()) {
        let mut x = seed | 1;
        let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 };
        // Zeros and ones take the kernels' shortcuts: make them common.
        let coef: Vec<u8> = (0..outputs * inputs).map(|_| match next() % 4 { 0 => 0, 1 => 1, _ => next() }).collect();
        let data: Vec<Vec<u8>> = (0..inputs).map(|_| (0..len).map(|_| next()).collect()).collect();
        let coefs = Coefficients::new(outputs, inputs, coef.clone());
        let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let mut expected = vec![vec![0u8; len]; outputs];
        for (o, e) in expected.iter_mut().enumerate() {
            for (i, d) in data.iter().enumerate() {
                for (b, &s) in e.iter_mut().zip(d) {
                    *b ^= gf::mul(coef[o * inputs + i], s);
                }
            }
        }
        for kernel in Kernel::available() {
            let mut got = vec![vec![0xAAu8; len]; outputs];
            let mut outs: Vec<&mut [u8]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
            kernel::dot_products(kernel, &coefs, &refs, &mut outs, len);
            prop_assert_eq!(&got, &expected, "kernel {}", kernel.name());
        }
    }
}
