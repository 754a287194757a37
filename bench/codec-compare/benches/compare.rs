//! One criterion run comparing every erasure-coding backend, with single-core
//! memcpy of the same k x unit bytes as the baseline.
//!
//! `cargo bench -p tessera-codec-compare` (ISA-L rows need libisal-dev).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tessera_codec_compare::backends;
use tessera_codec_compare::bitmatrix::BitmatrixEncoder;

/// `len` bytes starting on a page boundary. Stripes are cut from one such
/// buffer as the write path cuts them from an item; the baseline copies
/// between two of them. (glibc's memcpy on this CPU slows down tenfold when
/// the destination sits just past the source modulo 4 KiB, which unaligned
/// separate allocations can hit by chance.)
struct PageAligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    fn new(len: usize) -> Self {
        let buf = vec![1u8; len + 4096];
        let start = (4096 - buf.as_ptr() as usize % 4096) % 4096;
        Self { buf, start, len }
    }
    fn get(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn data(k: usize, unit: usize) -> PageAligned {
    let mut d = PageAligned::new(k * unit);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in d.get_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    d
}

fn compare(c: &mut Criterion) {
    for (k, m) in [(6usize, 3usize), (10, 4)] {
        for unit in [64usize << 10, 1 << 20] {
            let mut g = c.benchmark_group(format!("RS({k},{m}) {}KiB", unit >> 10));
            g.throughput(Throughput::Bytes((k * unit) as u64));
            g.sample_size(20);
            let d = data(k, unit);
            let refs: Vec<&[u8]> = d.get().chunks(unit).collect();
            let mut dst = PageAligned::new(k * unit);
            g.bench_function("memcpy", |b| b.iter(|| dst.get_mut().copy_from_slice(black_box(d.get()))));
            // The XOR-only bit-matrix form of the same generator (a probe; see
            // tessera_codec_compare::bitmatrix).
            let probe = BitmatrixEncoder::new(k, m);
            let mut parity = vec![vec![0u8; unit]; m];
            g.bench_function(BenchmarkId::new("encode", "xor-bitmatrix-probe"), |b| {
                b.iter(|| {
                    let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
                    probe.encode(black_box(&refs), &mut outs);
                })
            });
            for backend in backends(k, m) {
                let name = backend.backend();
                let mut parity = vec![vec![0u8; unit]; m];
                g.bench_function(BenchmarkId::new("encode", name), |b| {
                    b.iter(|| {
                        let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
                        backend.encode(black_box(&refs), &mut outs).unwrap();
                    })
                });
                let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
                backend.encode(&refs, &mut outs).unwrap();
                let present: Vec<(usize, &[u8])> = (m..k)
                    .map(|i| (i, refs[i]))
                    .chain(parity.iter().enumerate().map(|(i, p)| (k + i, p.as_slice())))
                    .collect();
                let mut rebuilt = vec![vec![0u8; unit]; m];
                g.bench_function(BenchmarkId::new("decode", name), |b| {
                    b.iter(|| {
                        let mut wanted: Vec<(usize, &mut [u8])> =
                            (0..m).zip(rebuilt.iter_mut().map(|v| v.as_mut_slice())).collect();
                        backend.reconstruct(black_box(&present), &mut wanted).unwrap();
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, compare);
criterion_main!(benches);
