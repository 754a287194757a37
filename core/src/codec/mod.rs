//! The erasure codec: systematic Reed-Solomon over GF(2^8).
//!
//! An item's bytes are cut into k equal data stripes; m parity stripes are
//! computed from them, and any k of the n = k + m stripes rebuild the rest. This
//! module owns the code itself (generator, inversion) and the kernels; it knows
//! nothing of items, files or servers.
//!
//! [`ErasureCoder`] is the small trait every backend sits behind. Tessera ships
//! one backend, [`ReedSolomon`], with its own SIMD kernels: it was the fastest
//! of the libraries compared in `bench/codec-compare` (see
//! docs/decisions/0002-erasure-codec.md).

pub mod gf;
pub mod kernel;
pub mod matrix;

use kernel::{Coefficients, Kernel};
use matrix::Matrix;

/// GF(2^8) has 256 elements, which bounds the number of stripes of an item.
pub const MAX_STRIPES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid erasure code RS({k},{m}): {reason}")]
    InvalidShape { k: usize, m: usize, reason: &'static str },
    #[error("expected {expected} {role} stripes, got {got}")]
    StripeCount { role: &'static str, expected: usize, got: usize },
    #[error("stripe {index} holds {len} bytes but the others hold {expected}")]
    StripeLength { index: usize, len: usize, expected: usize },
    #[error("stripe index {index} is out of range for {n} stripes")]
    IndexOutOfRange { index: usize, n: usize },
    #[error("stripe {index} is listed twice")]
    DuplicateStripe { index: usize },
    #[error("{have} distinct stripes are present but {k} are needed to reconstruct")]
    NotEnoughStripes { have: usize, k: usize },
}

/// An erasure code with k data and m parity stripes of equal length.
pub trait ErasureCoder: Send + Sync + std::fmt::Debug {
    /// Short name of the implementation, for benchmarks and logs.
    fn backend(&self) -> &'static str;
    /// Number of data stripes (k).
    fn data_stripes(&self) -> usize;
    /// Number of parity stripes (m).
    fn parity_stripes(&self) -> usize;

    /// Computes the m parity stripes of the k data stripes.
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError>;

    /// Rebuilds the stripes named in `wanted` (index, output buffer) from the
    /// `present` ones (index, bytes). At least k distinct stripes must be
    /// present; extras are ignored. Indices are 0..k for data and k..n for
    /// parity.
    fn reconstruct(&self, present: &[(usize, &[u8])], wanted: &mut [(usize, &mut [u8])]) -> Result<(), CodecError>;
}

/// Systematic Cauchy Reed-Solomon with Tessera's own region kernels.
#[derive(Debug, Clone)]
pub struct ReedSolomon {
    k: usize,
    m: usize,
    generator: Matrix,
    encode_coefs: Coefficients,
    kernel: Kernel,
}

impl ReedSolomon {
    /// RS(k, m) with the fastest kernel this CPU runs.
    pub fn new(k: usize, m: usize) -> Result<Self, CodecError> {
        Self::with_kernel(k, m, Kernel::detect())
    }

    /// RS(k, m) with a given kernel (tests compare kernels with this).
    pub fn with_kernel(k: usize, m: usize, kernel: Kernel) -> Result<Self, CodecError> {
        if k == 0 {
            return Err(CodecError::InvalidShape { k, m, reason: "k must be at least 1" });
        }
        if m == 0 {
            return Err(CodecError::InvalidShape { k, m, reason: "m must be at least 1" });
        }
        if k + m > MAX_STRIPES {
            return Err(CodecError::InvalidShape { k, m, reason: "k + m must be at most 256 in GF(2^8)" });
        }
        let generator = Matrix::generator(k, m);
        let parity_rows: Vec<u8> = (k..k + m).flat_map(|r| generator.row(r).to_vec()).collect();
        let encode_coefs = Coefficients::new(m, k, parity_rows);
        Ok(Self { k, m, generator, encode_coefs, kernel })
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    fn check_lengths(&self, slices: impl Iterator<Item = (usize, usize)>, len: usize) -> Result<(), CodecError> {
        for (index, l) in slices {
            if l != len {
                return Err(CodecError::StripeLength { index, len: l, expected: len });
            }
        }
        Ok(())
    }
}

impl ErasureCoder for ReedSolomon {
    fn backend(&self) -> &'static str {
        match self.kernel {
            Kernel::Portable => "tessera-portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => "tessera-avx2",
        }
    }

    fn data_stripes(&self) -> usize {
        self.k
    }

    fn parity_stripes(&self) -> usize {
        self.m
    }

    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        if data.len() != self.k {
            return Err(CodecError::StripeCount { role: "data", expected: self.k, got: data.len() });
        }
        if parity.len() != self.m {
            return Err(CodecError::StripeCount { role: "parity", expected: self.m, got: parity.len() });
        }
        let len = data[0].len();
        self.check_lengths(data.iter().map(|s| s.len()).enumerate(), len)?;
        self.check_lengths(parity.iter().map(|s| s.len()).enumerate().map(|(i, l)| (self.k + i, l)), len)?;
        kernel::dot_products(self.kernel, &self.encode_coefs, data, parity, len);
        Ok(())
    }

    fn reconstruct(&self, present: &[(usize, &[u8])], wanted: &mut [(usize, &mut [u8])]) -> Result<(), CodecError> {
        let n = self.k + self.m;
        if wanted.is_empty() {
            return Ok(());
        }
        // Choose k distinct present stripes, data stripes first: their rows of
        // the generator are unit vectors, which keeps the inverse sparse.
        let mut seen = [false; MAX_STRIPES];
        let mut chosen: Vec<(usize, &[u8])> = Vec::with_capacity(self.k);
        let mut ordered: Vec<&(usize, &[u8])> = present.iter().collect();
        ordered.sort_by_key(|(i, _)| *i);
        for &&(index, bytes) in &ordered {
            if index >= n {
                return Err(CodecError::IndexOutOfRange { index, n });
            }
            if seen[index] {
                continue;
            }
            seen[index] = true;
            if chosen.len() < self.k {
                chosen.push((index, bytes));
            }
        }
        if chosen.len() < self.k {
            return Err(CodecError::NotEnoughStripes { have: chosen.len(), k: self.k });
        }
        let len = chosen[0].1.len();
        self.check_lengths(chosen.iter().map(|(i, s)| (*i, s.len())), len)?;
        let mut wanted_seen = [false; MAX_STRIPES];
        for (index, out) in wanted.iter() {
            if *index >= n {
                return Err(CodecError::IndexOutOfRange { index: *index, n });
            }
            if wanted_seen[*index] {
                return Err(CodecError::DuplicateStripe { index: *index });
            }
            wanted_seen[*index] = true;
            if out.len() != len {
                return Err(CodecError::StripeLength { index: *index, len: out.len(), expected: len });
            }
        }

        let rows: Vec<usize> = chosen.iter().map(|(i, _)| *i).collect();
        let decode = self
            .generator
            .select_rows(&rows)
            .inverse()
            .expect("any k rows of a Cauchy systematic generator are invertible");
        // Row w of (generator x decode) maps the chosen stripes to stripe w.
        let mut coef = Vec::with_capacity(wanted.len() * self.k);
        for (w, _) in wanted.iter() {
            if *w < self.k {
                coef.extend_from_slice(decode.row(*w));
            } else {
                coef.extend(decode.left_mul_row(self.generator.row(*w)));
            }
        }
        let coefs = Coefficients::new(wanted.len(), self.k, coef);
        let inputs: Vec<&[u8]> = chosen.iter().map(|(_, s)| *s).collect();
        let mut outputs: Vec<&mut [u8]> = wanted.iter_mut().map(|(_, s)| &mut **s).collect();
        kernel::dot_products(self.kernel, &coefs, &inputs, &mut outputs, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
