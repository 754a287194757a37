//! Region kernels: `out[o] = sum_i coef[o][i] * in[i]` over byte slices, the one
//! operation that both encoding and reconstruction reduce to.
//!
//! Two implementations, chosen at run time: a portable one with a 64 KiB
//! product table, and an AVX2 one that multiplies 32 bytes at a time with the
//! split-nibble shuffle (two 16-entry table lookups per byte, see
//! [`gf::nibble_tables`]). Each output group reads every input exactly once per
//! 64-byte column, so one pass over the data produces up to four outputs.

use super::gf;

/// Which region kernel runs. `Avx2` carries a token that only CPU feature
/// detection can create, so holding one proves the instructions exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2(x86::Avx2Token),
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        Self::available().pop().unwrap_or(Kernel::Portable)
    }

    /// Every kernel this CPU supports, slowest first.
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut out = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = x86::Avx2Token::detect() {
            out.push(Kernel::Avx2(t));
        }
        out
    }

    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => "avx2",
        }
    }
}

/// Coefficients of a set of dot products, with the per-coefficient nibble
/// tables the SIMD kernels need, prepared once.
#[derive(Clone, Debug)]
pub struct Coefficients {
    outputs: usize,
    inputs: usize,
    /// Row-major `outputs x inputs`.
    coef: Vec<u8>,
    /// For each coefficient: the low-nibble table twice, then the high-nibble
    /// table twice (one 16-byte copy per 128-bit lane of a 256-bit register).
    tables: Vec<NibbleTables>,
    /// For each coefficient, how the kernel applies it: zero is skipped, one
    /// is a plain XOR, anything else a multiplication.
    kinds: Vec<Kind>,
}

/// One coefficient's nibble tables, aligned to a cache line so that neither
/// 32-byte half a kernel loads straddles two lines.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct NibbleTables([u8; 64]);

/// How a coefficient is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Zero,
    One,
    Multiply,
}

impl Coefficients {
    pub fn new(outputs: usize, inputs: usize, coef: Vec<u8>) -> Self {
        assert_eq!(coef.len(), outputs * inputs);
        let tables = coef
            .iter()
            .map(|&c| {
                let (lo, hi) = gf::nibble_tables(c);
                let mut t = [0u8; 64];
                t[0..16].copy_from_slice(&lo);
                t[16..32].copy_from_slice(&lo);
                t[32..48].copy_from_slice(&hi);
                t[48..64].copy_from_slice(&hi);
                NibbleTables(t)
            })
            .collect();
        let kinds = coef
            .iter()
            .map(|&c| match c {
                0 => Kind::Zero,
                1 => Kind::One,
                _ => Kind::Multiply,
            })
            .collect();
        Self { outputs, inputs, coef, tables, kinds }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    fn row(&self, o: usize) -> &[u8] {
        &self.coef[o * self.inputs..(o + 1) * self.inputs]
    }
}

/// Computes every output of `coefs` over `len` bytes of the inputs. The caller
/// guarantees `inputs.len() == coefs.inputs()`, `outputs.len() ==
/// coefs.outputs()` and that every slice holds at least `len` bytes; these are
/// asserted because a kernel reading past a slice would be unsound.
pub fn dot_products(kernel: Kernel, coefs: &Coefficients, inputs: &[&[u8]], outputs: &mut [&mut [u8]], len: usize) {
    assert_eq!(inputs.len(), coefs.inputs);
    assert_eq!(outputs.len(), coefs.outputs);
    assert!(inputs.iter().all(|s| s.len() >= len), "an input is shorter than {len} bytes");
    assert!(outputs.iter().all(|s| s.len() >= len), "an output is shorter than {len} bytes");
    let done = match kernel {
        Kernel::Portable => 0,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2(token) => x86::dot_products(token, coefs, inputs, outputs, len),
    };
    if done < len {
        portable(coefs, inputs, outputs, done, len);
    }
}

/// Column width of the portable kernel: small enough that the output column
/// stays in L1 while every input streams through it.
const PORTABLE_COLUMN: usize = 8 * 1024;

fn portable(coefs: &Coefficients, inputs: &[&[u8]], outputs: &mut [&mut [u8]], from: usize, to: usize) {
    let mut start = from;
    while start < to {
        let end = (start + PORTABLE_COLUMN).min(to);
        for (o, out) in outputs.iter_mut().enumerate() {
            let out = &mut out[start..end];
            out.fill(0);
            for (&c, input) in coefs.row(o).iter().zip(inputs) {
                let input = &input[start..end];
                match c {
                    0 => {}
                    1 => out.iter_mut().zip(input).for_each(|(d, s)| *d ^= s),
                    _ => {
                        let table = &gf::MUL_TABLE[c as usize];
                        out.iter_mut().zip(input).for_each(|(d, &s)| *d ^= table[s as usize]);
                    }
                }
            }
        }
        start = end;
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::{Coefficients, Kind, NibbleTables};
    use std::arch::x86_64::*;

    /// Proof that this CPU executes AVX2 instructions: the only constructor is
    /// run-time feature detection.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Avx2Token(());

    impl Avx2Token {
        pub fn detect() -> Option<Self> {
            std::is_x86_feature_detected!("avx2").then_some(Avx2Token(()))
        }
    }

    /// Bytes per column step: two 256-bit registers per input.
    const STEP: usize = 64;
    /// How far ahead of the column each input is prefetched (measured best
    /// of 512, 1024 and 2048 on RS(6,3) and RS(10,4)).
    const PREFETCH: usize = 1024;
    /// Outputs per pass. Four keeps 8 accumulators, 6 working registers and the
    /// nibble mask within the 16 YMM registers.
    const GROUP: usize = 4;

    /// Runs the AVX2 kernel on the largest multiple of 64 bytes of `len` and
    /// returns how many bytes it did.
    pub fn dot_products(
        token: Avx2Token,
        coefs: &Coefficients,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        len: usize,
    ) -> usize {
        let _ = token;
        let cols = len - len % STEP;
        let in_ptrs: Vec<*const u8> = inputs.iter().map(|s| s.as_ptr()).collect();
        let n_in = coefs.inputs;
        let outputs: Vec<*mut u8> = outputs.iter_mut().map(|s| s.as_mut_ptr()).collect();
        // An output whose coefficients are all one is the XOR of the inputs
        // (the code's first parity, or a data stripe rebuilt from it): it
        // rides along with the multiplied outputs of a pass, costing two
        // XORs per input and no table lookups.
        let (ones, multiplied): (Vec<usize>, Vec<usize>) =
            (0..coefs.outputs).partition(|&o| coefs.kinds[o * n_in..(o + 1) * n_in].iter().all(|k| *k == Kind::One));
        let mut ones = ones.into_iter();
        let mut rest = multiplied.as_slice();
        loop {
            let one = ones.next();
            let g = rest.len().min(GROUP - usize::from(one.is_some()));
            if one.is_none() && g == 0 {
                break;
            }
            let pass = &rest[..g];
            rest = &rest[g..];
            // When every multiplied output of the pass takes the first input
            // with coefficient one (the generator's first column is ones),
            // the accumulators start as that input instead of zero.
            let first_ones = pass.iter().all(|&o| coefs.kinds[o * n_in] == Kind::One);
            let tables: Vec<NibbleTables> =
                pass.iter().flat_map(|&o| coefs.tables[o * n_in..(o + 1) * n_in].iter().copied()).collect();
            let out_ptrs: Vec<*mut u8> = one.iter().chain(pass).map(|&o| outputs[o]).collect();
            let pass_fn = match (one.is_some(), first_ones) {
                (false, false) => pick::<false, false>(g),
                (false, true) => pick::<false, true>(g),
                (true, false) => pick::<true, false>(g),
                (true, true) => pick::<true, true>(g),
            };
            // SAFETY: `token` proves AVX2 is available. Every input pointer
            // addresses at least `len >= cols` readable bytes and every output
            // pointer at least `cols` writable bytes (asserted by the caller,
            // `kernel::dot_products`); the outputs are distinct `&mut` slices so
            // they do not alias each other or the inputs. `pick` returned the
            // instance for `g` multiplied outputs and `tables` holds theirs.
            unsafe { pass_fn(&tables, &in_ptrs, &out_ptrs, cols) };
        }
        cols
    }

    type PassFn = unsafe fn(&[NibbleTables], &[*const u8], &[*mut u8], usize);

    /// The pass kernel for `g` multiplied outputs (at most `GROUP`, less one
    /// when an all-ones output rides along).
    fn pick<const ONE: bool, const FIRST: bool>(g: usize) -> PassFn {
        match g {
            0 => group::<ONE, FIRST, 0>,
            1 => group::<ONE, FIRST, 1>,
            2 => group::<ONE, FIRST, 2>,
            3 => group::<ONE, FIRST, 3>,
            _ => group::<ONE, FIRST, 4>,
        }
    }

    /// The 64 bytes of an input at `off`, prefetching further ahead. The
    /// prefetch keeps the k input streams ahead of the hardware prefetcher,
    /// which loses track of them when they share cache sets (equal offsets);
    /// a hint, so past the end is harmless.
    ///
    /// # Safety
    /// AVX2 must be available and `p + off + 64` within the input.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const u8, off: usize) -> (__m256i, __m256i) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off + PREFETCH) as *const i8);
        // SAFETY: the caller guarantees 64 readable bytes at p + off.
        unsafe {
            (_mm256_loadu_si256(p.add(off) as *const __m256i), _mm256_loadu_si256(p.add(off + 32) as *const __m256i))
        }
    }

    /// Stores G outputs' accumulators at `off`.
    ///
    /// # Safety
    /// AVX2 must be available and each `outputs[g] + off + 64` within its output.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store<const G: usize>(outputs: &[*mut u8], off: usize, acc0: &[__m256i; G], acc1: &[__m256i; G]) {
        for g in 0..G {
            // SAFETY: the caller guarantees 64 writable bytes at outputs[g] + off.
            unsafe {
                _mm256_storeu_si256(outputs[g].add(off) as *mut __m256i, acc0[g]);
                _mm256_storeu_si256(outputs[g].add(off + 32) as *mut __m256i, acc1[g]);
            }
        }
    }

    /// G multiplied outputs over `cols` bytes (a multiple of 64), after one
    /// all-ones output first in `outputs` when `ONE`. `tables[g * n_in + i]`
    /// holds the nibble tables of multiplied output g's coefficient for input
    /// i. With `FIRST` every multiplied output's first coefficient is one (the
    /// generator's first column), so the accumulators start as the first input.
    ///
    /// # Safety
    /// AVX2 must be available; each input pointer must be valid for `cols`
    /// reads and each output pointer for `cols` writes, without overlap
    /// between outputs and inputs.
    #[target_feature(enable = "avx2")]
    unsafe fn group<const ONE: bool, const FIRST: bool, const G: usize>(
        tables: &[NibbleTables],
        inputs: &[*const u8],
        outputs: &[*mut u8],
        cols: usize,
    ) {
        let n_in = inputs.len();
        debug_assert_eq!(tables.len(), G * n_in);
        debug_assert_eq!(outputs.len(), G + usize::from(ONE));
        let (xor_out, mul_out) = outputs.split_at(usize::from(ONE));
        let mask = _mm256_set1_epi8(0x0f);
        let mut off = 0;
        while off < cols {
            let (mut xor0, mut xor1, mut acc0, mut acc1) = if FIRST {
                // SAFETY: off + 64 <= cols and the input is valid for cols bytes.
                let (x0, x1) = unsafe { load(inputs[0], off) };
                (x0, x1, [x0; G], [x1; G])
            } else {
                let z = _mm256_setzero_si256();
                (z, z, [z; G], [z; G])
            };
            for (i, &p) in inputs.iter().enumerate().skip(usize::from(FIRST)) {
                // SAFETY: off + 64 <= cols and p is valid for cols bytes.
                let (x0, x1) = unsafe { load(p, off) };
                if ONE {
                    xor0 = _mm256_xor_si256(xor0, x0);
                    xor1 = _mm256_xor_si256(xor1, x1);
                }
                if G == 0 {
                    continue;
                }
                let lo0 = _mm256_and_si256(x0, mask);
                let hi0 = _mm256_and_si256(_mm256_srli_epi64::<4>(x0), mask);
                let lo1 = _mm256_and_si256(x1, mask);
                let hi1 = _mm256_and_si256(_mm256_srli_epi64::<4>(x1), mask);
                for g in 0..G {
                    let t = tables[g * n_in + i].0.as_ptr();
                    // SAFETY: each table is 64 bytes: two 32-byte loads.
                    let (tlo, thi) = unsafe {
                        (_mm256_loadu_si256(t as *const __m256i), _mm256_loadu_si256(t.add(32) as *const __m256i))
                    };
                    let p0 = _mm256_xor_si256(_mm256_shuffle_epi8(tlo, lo0), _mm256_shuffle_epi8(thi, hi0));
                    let p1 = _mm256_xor_si256(_mm256_shuffle_epi8(tlo, lo1), _mm256_shuffle_epi8(thi, hi1));
                    acc0[g] = _mm256_xor_si256(acc0[g], p0);
                    acc1[g] = _mm256_xor_si256(acc1[g], p1);
                }
            }
            // SAFETY: off + 64 <= cols and every output is valid for cols bytes.
            unsafe {
                if ONE {
                    store::<1>(xor_out, off, &[xor0], &[xor1]);
                }
                store(mul_out, off, &acc0, &acc1);
            }
            off += STEP;
        }
    }
}
