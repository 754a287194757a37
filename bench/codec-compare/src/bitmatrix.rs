//! A probe, not a backend: Reed-Solomon encoding as pure XORs of packets
//! (the "Cauchy Reed-Solomon" bit-matrix form), measured to decide whether it
//! could beat the split-nibble kernel on a CPU without GFNI or AVX-512.
//!
//! Each stripe is cut into groups of 8 packets of 32 bytes; bit t of packet b
//! is bit b of the group's symbol t. Multiplying a symbol by a constant c is
//! then a linear map on the 8 packets (the 8x8 bit matrix of c), so a parity
//! packet is the XOR of the input packets its row selects: no table lookups,
//! but roughly as many 32-byte XORs as the generator's bit matrices hold
//! ones. The code computed is the same generator's, on bit-sliced symbols
//! (the test checks this against byte-wise GF(2^8) arithmetic); its stripes
//! are not interchangeable with Tessera's byte-wise layout, which is why it
//! stays here. docs/decisions/0002-erasure-codec.md records the outcome.

use tessera_core::codec::gf;
use tessera_core::codec::matrix::Matrix;

/// Bytes per packet (one AVX2 register) and packets per group (bits per symbol).
pub const PACKET: usize = 32;
pub const GROUP: usize = 8 * PACKET;
/// Groups processed together: every selected packet is XORed into this many
/// accumulators per loaded index, which amortises the schedule walk.
const BATCH: usize = 8;

/// Encoder for RS(k, m) in bit-matrix form.
#[derive(Debug, Clone)]
pub struct BitmatrixEncoder {
    k: usize,
    m: usize,
    /// For each parity packet row (m x 8): the (input, packet) pairs XORed.
    rows: Vec<Vec<(usize, usize)>>,
}

/// Bit r of column b is bit r of c * 2^b: the matrix of "multiply by c".
fn bit_matrix(c: u8) -> [[bool; 8]; 8] {
    let mut m = [[false; 8]; 8];
    for (b, col) in (0..8).map(|b| gf::mul(c, 1 << b)).enumerate() {
        for (r, row) in m.iter_mut().enumerate() {
            row[b] = col >> r & 1 == 1;
        }
    }
    m
}

impl BitmatrixEncoder {
    pub fn new(k: usize, m: usize) -> Self {
        let g = Matrix::generator(k, m);
        let rows = (0..m)
            .flat_map(|p| {
                let coefs = g.row(k + p).to_vec();
                (0..8).map(move |r| {
                    coefs
                        .iter()
                        .enumerate()
                        .flat_map(|(i, &c)| {
                            let bm = bit_matrix(c);
                            (0..8).filter(move |&b| bm[r][b]).map(move |b| (i, b))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        Self { k, m, rows }
    }

    /// 32-byte XORs per group of every stripe: the work the schedule costs.
    pub fn xors_per_group(&self) -> usize {
        self.rows.iter().map(|r| r.len().saturating_sub(1)).sum()
    }

    /// Computes the parity stripes. Stripe length must be a multiple of
    /// `GROUP * 8` bytes (the benchmark's 64 KiB and 1 MiB units are).
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) {
        assert_eq!(data.len(), self.k);
        assert_eq!(parity.len(), self.m);
        let len = data[0].len();
        assert!(len.is_multiple_of(GROUP * BATCH), "stripe length {len} is not a multiple of {}", GROUP * BATCH);
        assert!(data.iter().all(|d| d.len() == len) && parity.iter().all(|p| p.len() == len));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected; every stripe holds `len` bytes
            // (asserted above), a multiple of GROUP * BATCH, which is all the
            // kernel touches; the parity slices are distinct `&mut` borrows.
            unsafe { self.encode_avx2(data, parity, len) };
            return;
        }
        self.encode_portable(data, parity, len);
    }

    fn encode_portable(&self, data: &[&[u8]], parity: &mut [&mut [u8]], len: usize) {
        for base in (0..len).step_by(GROUP) {
            for (r, row) in self.rows.iter().enumerate() {
                let (p, bit) = (r / 8, r % 8);
                let out = &mut parity[p][base + bit * PACKET..base + (bit + 1) * PACKET];
                out.fill(0);
                for &(i, b) in row {
                    let src = &data[i][base + b * PACKET..base + (b + 1) * PACKET];
                    out.iter_mut().zip(src).for_each(|(o, s)| *o ^= s);
                }
            }
        }
    }

    /// # Safety
    /// AVX2 must be available, every stripe must hold `len` bytes and `len`
    /// must be a multiple of `GROUP * BATCH`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_avx2(&self, data: &[&[u8]], parity: &mut [&mut [u8]], len: usize) {
        use std::arch::x86_64::*;
        // Per row, the start of each selected packet in the first group.
        let sources: Vec<Vec<*const u8>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(|&(i, b)| data[i].as_ptr().wrapping_add(b * PACKET)).collect())
            .collect();
        let outs: Vec<*mut u8> = parity.iter_mut().map(|p| p.as_mut_ptr()).collect();
        for base in (0..len).step_by(GROUP * BATCH) {
            for (r, src) in sources.iter().enumerate() {
                let mut acc = [_mm256_setzero_si256(); BATCH];
                for &s in src {
                    for (g, a) in acc.iter_mut().enumerate() {
                        // SAFETY: s is a stripe's start plus b * PACKET, and
                        // b * PACKET + base + g * GROUP + PACKET <= len for
                        // every b < 8 and g < BATCH, as base steps by
                        // GROUP * BATCH below len.
                        let v = unsafe { _mm256_loadu_si256(s.add(base + g * GROUP) as *const __m256i) };
                        *a = _mm256_xor_si256(*a, v);
                    }
                }
                let d = outs[r / 8].wrapping_add((r % 8) * PACKET + base);
                for (g, a) in acc.iter().enumerate() {
                    // SAFETY: d is a parity stripe's start plus (r % 8) *
                    // PACKET + base; the same bound as above holds.
                    unsafe { _mm256_storeu_si256(d.add(g * GROUP) as *mut __m256i, *a) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Symbol t of a group: bit t of each of its 8 packets.
    fn symbol(group: &[u8], t: usize) -> u8 {
        (0..8).map(|b| (group[b * PACKET + t / 8] >> (t % 8) & 1) << b).fold(0, |a, x| a | x)
    }

    #[test]
    fn bit_sliced_parity_is_the_generators_parity_of_each_symbol() {
        let (k, m) = (6, 3);
        let len = GROUP * BATCH * 2;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<Vec<u8>> = (0..k)
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
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let enc = BitmatrixEncoder::new(k, m);
        let mut parity = vec![vec![0u8; len]; m];
        let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
        enc.encode(&refs, &mut outs);
        let mut portable = vec![vec![0u8; len]; m];
        let mut outs: Vec<&mut [u8]> = portable.iter_mut().map(|p| p.as_mut_slice()).collect();
        enc.encode_portable(&refs, &mut outs, len);
        assert_eq!(parity, portable);

        let g = Matrix::generator(k, m);
        for base in (0..len).step_by(GROUP) {
            for t in 0..GROUP {
                for (p, out) in parity.iter().enumerate() {
                    let want = (0..k)
                        .map(|i| gf::mul(g.get(k + p, i), symbol(&data[i][base..base + GROUP], t)))
                        .fold(0, |a, v| a ^ v);
                    assert_eq!(symbol(&out[base..base + GROUP], t), want, "group at {base}, symbol {t}");
                }
            }
        }
    }
}
