//! Criterion benches of the codec kernels, with single-core memcpy of the same
//! bytes as the baseline in the same run.
//!
//! `cargo bench -p tessera-core --bench codec`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tessera_core::codec::kernel::Kernel;
use tessera_core::codec::{ErasureCoder, ReedSolomon};

fn data(k: usize, unit: usize) -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..k)
        .map(|_| {
            (0..unit)
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

fn codec(c: &mut Criterion) {
    for (k, m) in [(6usize, 3usize), (10, 4)] {
        for unit in [64 << 10, 1 << 20] {
            let mut g = c.benchmark_group(format!("rs{k}{m}/{}KiB", unit >> 10));
            g.throughput(Throughput::Bytes((k * unit) as u64));
            g.sample_size(20);
            let d = data(k, unit);
            let refs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();

            let src: Vec<u8> = d.concat();
            let mut dst = vec![0u8; k * unit];
            g.bench_function("memcpy", |b| b.iter(|| dst.copy_from_slice(black_box(&src))));

            for kernel in Kernel::available() {
                let rs = ReedSolomon::with_kernel(k, m, kernel).unwrap();
                let mut parity = vec![vec![0u8; unit]; m];
                g.bench_function(BenchmarkId::new("encode", kernel.name()), |b| {
                    b.iter(|| {
                        let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
                        rs.encode(black_box(&refs), &mut outs).unwrap();
                    })
                });
                let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|v| v.as_mut_slice()).collect();
                rs.encode(&refs, &mut outs).unwrap();
                // Decode with m data stripes lost: the worst case.
                let present: Vec<(usize, &[u8])> = (m..k)
                    .map(|i| (i, d[i].as_slice()))
                    .chain(parity.iter().enumerate().map(|(i, p)| (k + i, p.as_slice())))
                    .collect();
                let mut rebuilt = vec![vec![0u8; unit]; m];
                g.bench_function(BenchmarkId::new("decode", kernel.name()), |b| {
                    b.iter(|| {
                        let mut wanted: Vec<(usize, &mut [u8])> =
                            (0..m).zip(rebuilt.iter_mut().map(|v| v.as_mut_slice())).collect();
                        rs.reconstruct(black_box(&present), &mut wanted).unwrap();
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
