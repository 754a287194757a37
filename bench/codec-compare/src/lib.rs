//! The erasure-coding libraries Tessera was compared with, each behind
//! Tessera's [`ErasureCoder`] trait so one benchmark drives them all.
//!
//! Every adapter encodes k data stripes into m parity stripes and rebuilds
//! lost data stripes from k survivors, with the library's own code (the
//! codes differ, so stripes are not interchangeable across backends).

use tessera_core::codec::{CodecError, ErasureCoder};

pub mod bitmatrix;

/// reed-solomon-erasure (GF(2^8), the Backblaze/klauspost port) with its
/// C SIMD kernels.
#[derive(Debug)]
pub struct Rse(reed_solomon_erasure::galois_8::ReedSolomon, usize, usize);

impl Rse {
    pub fn new(k: usize, m: usize) -> Self {
        Self(reed_solomon_erasure::galois_8::ReedSolomon::new(k, m).expect("valid shape"), k, m)
    }
}

impl ErasureCoder for Rse {
    fn backend(&self) -> &'static str {
        "reed-solomon-erasure"
    }
    fn data_stripes(&self) -> usize {
        self.1
    }
    fn parity_stripes(&self) -> usize {
        self.2
    }
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        self.0.encode_sep(data, parity).expect("shapes match");
        Ok(())
    }
    fn reconstruct(&self, present: &[(usize, &[u8])], wanted: &mut [(usize, &mut [u8])]) -> Result<(), CodecError> {
        // The library rebuilds in place into owned buffers: copy survivors in,
        // results out. The copies are part of what using it costs.
        let n = self.1 + self.2;
        let len = present[0].1.len();
        let mut shards: Vec<(Vec<u8>, bool)> = (0..n).map(|_| (vec![0u8; len], false)).collect();
        for (i, s) in present {
            shards[*i].0.copy_from_slice(s);
            shards[*i].1 = true;
        }
        let mut refs: Vec<(&mut [u8], bool)> = shards.iter_mut().map(|(v, ok)| (v.as_mut_slice(), *ok)).collect();
        self.0.reconstruct_data(&mut refs).expect("enough shards");
        for (i, out) in wanted.iter_mut() {
            out.copy_from_slice(&shards[*i].0);
        }
        Ok(())
    }
}

/// reed-solomon-simd (Leopard, GF(2^16), runtime SIMD).
#[derive(Debug)]
pub struct RsSimd(usize, usize);

impl RsSimd {
    pub fn new(k: usize, m: usize) -> Self {
        Self(k, m)
    }
}

impl ErasureCoder for RsSimd {
    fn backend(&self) -> &'static str {
        "reed-solomon-simd"
    }
    fn data_stripes(&self) -> usize {
        self.0
    }
    fn parity_stripes(&self) -> usize {
        self.1
    }
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        let out = reed_solomon_simd::encode(self.0, self.1, data).expect("valid shape");
        for (p, o) in parity.iter_mut().zip(out) {
            p.copy_from_slice(&o);
        }
        Ok(())
    }
    fn reconstruct(&self, present: &[(usize, &[u8])], wanted: &mut [(usize, &mut [u8])]) -> Result<(), CodecError> {
        let k = self.0;
        let originals = present.iter().filter(|(i, _)| *i < k).map(|(i, s)| (*i, *s));
        let recovery = present.iter().filter(|(i, _)| *i >= k).map(|(i, s)| (*i - k, *s));
        let restored = reed_solomon_simd::decode(k, self.1, originals, recovery).expect("enough shards");
        for (i, out) in wanted.iter_mut() {
            out.copy_from_slice(&restored[i]);
        }
        Ok(())
    }
}

#[cfg(has_isal)]
pub use isal::Isal;

#[cfg(has_isal)]
mod isal {
    use super::*;
    use std::os::raw::{c_int, c_uchar};

    // ISA-L's erasure_code.h: the four calls encoding and decoding need.
    unsafe extern "C" {
        fn gf_gen_cauchy1_matrix(a: *mut c_uchar, m: c_int, k: c_int);
        fn gf_invert_matrix(input: *mut c_uchar, out: *mut c_uchar, n: c_int) -> c_int;
        fn ec_init_tables(k: c_int, rows: c_int, a: *mut c_uchar, gftbls: *mut c_uchar);
        fn ec_encode_data(
            len: c_int,
            k: c_int,
            rows: c_int,
            gftbls: *mut c_uchar,
            data: *mut *mut c_uchar,
            coding: *mut *mut c_uchar,
        );
    }

    /// ISA-L (Intel's hand-written SIMD kernels; the Debian build).
    #[derive(Debug)]
    pub struct Isal {
        k: usize,
        m: usize,
        matrix: Vec<u8>,
        encode_tables: Vec<u8>,
    }

    impl Isal {
        pub fn new(k: usize, m: usize) -> Self {
            let n = k + m;
            let mut matrix = vec![0u8; n * k];
            let mut encode_tables = vec![0u8; 32 * k * m];
            // SAFETY: `matrix` holds n x k bytes as gf_gen_cauchy1_matrix
            // writes; ec_init_tables reads m x k coefficients from row k on
            // and writes 32 * k * m table bytes, the sizes allocated.
            unsafe {
                gf_gen_cauchy1_matrix(matrix.as_mut_ptr(), n as c_int, k as c_int);
                ec_init_tables(k as c_int, m as c_int, matrix[k * k..].as_mut_ptr(), encode_tables.as_mut_ptr());
            }
            Self { k, m, matrix, encode_tables }
        }

        fn run(tables: &mut [u8], k: usize, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) {
            let len = inputs[0].len();
            let mut ins: Vec<*mut c_uchar> = inputs.iter().map(|s| s.as_ptr() as *mut c_uchar).collect();
            let mut outs: Vec<*mut c_uchar> = outputs.iter_mut().map(|s| s.as_mut_ptr()).collect();
            // SAFETY: k input pointers and outputs.len() output pointers of
            // `len` bytes each, and tables sized 32 * k * outputs.len() by
            // the callers; ISA-L only reads the inputs (the signature lacks
            // const) and writes the outputs.
            unsafe {
                ec_encode_data(
                    len as c_int,
                    k as c_int,
                    outs.len() as c_int,
                    tables.as_mut_ptr(),
                    ins.as_mut_ptr(),
                    outs.as_mut_ptr(),
                );
            }
        }
    }

    impl ErasureCoder for Isal {
        fn backend(&self) -> &'static str {
            "isa-l"
        }
        fn data_stripes(&self) -> usize {
            self.k
        }
        fn parity_stripes(&self) -> usize {
            self.m
        }
        fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
            let mut tables = self.encode_tables.clone();
            Self::run(&mut tables, self.k, data, parity);
            Ok(())
        }
        fn reconstruct(&self, present: &[(usize, &[u8])], wanted: &mut [(usize, &mut [u8])]) -> Result<(), CodecError> {
            let k = self.k;
            let survivors: Vec<&(usize, &[u8])> = present.iter().take(k).collect();
            let mut sub = vec![0u8; k * k];
            for (r, (i, _)) in survivors.iter().enumerate() {
                sub[r * k..(r + 1) * k].copy_from_slice(&self.matrix[i * k..(i + 1) * k]);
            }
            let mut inv = vec![0u8; k * k];
            // SAFETY: both buffers hold k x k bytes.
            let rc = unsafe { gf_invert_matrix(sub.as_mut_ptr(), inv.as_mut_ptr(), k as c_int) };
            assert_eq!(rc, 0, "Cauchy submatrices are invertible");
            let mut rows = Vec::with_capacity(wanted.len() * k);
            for (w, _) in wanted.iter() {
                assert!(*w < k, "the comparison rebuilds data stripes only");
                rows.extend_from_slice(&inv[w * k..(w + 1) * k]);
            }
            let mut tables = vec![0u8; 32 * k * wanted.len()];
            // SAFETY: `rows` holds wanted x k coefficients, `tables` 32 x k x wanted bytes.
            unsafe { ec_init_tables(k as c_int, wanted.len() as c_int, rows.as_mut_ptr(), tables.as_mut_ptr()) };
            let inputs: Vec<&[u8]> = survivors.iter().map(|(_, s)| *s).collect();
            let mut outputs: Vec<&mut [u8]> = wanted.iter_mut().map(|(_, s)| &mut **s).collect();
            Self::run(&mut tables, k, &inputs, &mut outputs);
            Ok(())
        }
    }
}

/// Every backend available in this build, Tessera's first.
pub fn backends(k: usize, m: usize) -> Vec<Box<dyn ErasureCoder>> {
    #[allow(unused_mut)]
    let mut v: Vec<Box<dyn ErasureCoder>> = vec![
        Box::new(tessera_core::codec::ReedSolomon::new(k, m).expect("valid shape")),
        Box::new(Rse::new(k, m)),
        Box::new(RsSimd::new(k, m)),
    ];
    #[cfg(has_isal)]
    v.push(Box::new(Isal::new(k, m)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each adapter round-trips with its own library (so the benchmark
    /// measures working code).
    #[test]
    fn every_backend_rebuilds_lost_data() {
        let (k, m, len) = (6, 3, 4096);
        for b in backends(k, m) {
            let data: Vec<Vec<u8>> = (0..k).map(|i| (0..len).map(|j| (i * 31 + j * 7) as u8).collect()).collect();
            let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
            let mut parity = vec![vec![0u8; len]; m];
            let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
            b.encode(&refs, &mut outs).unwrap();
            let present: Vec<(usize, &[u8])> = (m..k)
                .map(|i| (i, refs[i]))
                .chain(parity.iter().enumerate().map(|(i, p)| (k + i, p.as_slice())))
                .collect();
            let mut rebuilt = vec![vec![0u8; len]; m];
            let mut wanted: Vec<(usize, &mut [u8])> =
                (0..m).zip(rebuilt.iter_mut().map(|v| v.as_mut_slice())).collect();
            b.reconstruct(&present, &mut wanted).unwrap();
            for i in 0..m {
                assert_eq!(rebuilt[i], data[i], "{} stripe {i}", b.backend());
            }
        }
    }
}
