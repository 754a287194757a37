//! One criterion run comparing every erasure-coding backend, with single-core
//! memcpy of the same k x unit bytes as the baseline.
//!
//! `cargo bench -p tessera-codec-compare` (ISA-L rows need libisal-dev).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tessera_codec_compare::backends;

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

fn compare(c: &mut Criterion) {
    for (k, m) in [(6usize, 3usize), (10, 4)] {
        for unit in [64usize << 10, 1 << 20] {
            let mut g = c.benchmark_group(format!("RS({k},{m}) {}KiB", unit >> 10));
            g.throughput(Throughput::Bytes((k * unit) as u64));
            g.sample_size(20);
            let d = data(k, unit);
            let refs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
            let src: Vec<u8> = d.concat();
            let mut dst = vec![0u8; k * unit];
            g.bench_function("memcpy", |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
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
