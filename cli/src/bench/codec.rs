//! `tessera bench codec`: encode and decode throughput of the codec beside
//! single-core memcpy of the same bytes, measured in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tessera_core::codec::{ErasureCoder, ReedSolomon};

use crate::units::ByteSize;

/// Measure the erasure codec against memcpy on this CPU.
#[derive(Debug, Clone, Args)]
pub struct CodecArgs {
    #[command(flatten)]
    pub code: super::CodeArgs,
    /// Seconds to spend on each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct CodecReport {
    pub backend: &'static str,
    pub k: usize,
    pub m: usize,
    pub unit: u64,
    /// GB/s (10^9 bytes) of item data (k x unit) encoded.
    pub encode_gbps: f64,
    /// GB/s of item data for rebuilding m lost data stripes.
    pub decode_gbps: f64,
    /// GB/s of single-core memcpy of the same k x unit bytes.
    pub memcpy_gbps: f64,
    pub encode_vs_memcpy: f64,
    pub decode_vs_memcpy: f64,
}

/// Best throughput of `f` (bytes per call) over repeated timed batches.
fn measure(bytes: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up caches, page tables and the CPU's clock.
    let warm = Instant::now();
    while warm.elapsed() < budget / 4 {
        f();
    }
    let mut best = 0f64;
    let end = Instant::now() + budget;
    while Instant::now() < end {
        let t = Instant::now();
        let mut calls = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            f();
            calls += 1;
        }
        best = best.max((calls as f64 * bytes as f64) / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// `len` bytes starting on a page boundary: stripes are cut from one such
/// buffer as the write path cuts them from an item, and the baseline copies
/// between two. (glibc's memcpy on some CPUs slows down tenfold when the
/// destination sits just past the source modulo 4 KiB, which unaligned
/// separate allocations can hit by chance.)
struct PageAligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    fn new(len: usize, seed: u64) -> Self {
        let mut buf = super::read_tail::pattern(len + 4096, seed);
        buf.iter_mut().for_each(|b| *b |= 1);
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

pub fn run(args: &CodecArgs) -> anyhow::Result<CodecReport> {
    let (k, m, unit) = (args.code.k, args.code.m, args.code.unit.0 as usize);
    anyhow::ensure!(unit > 0 && unit.is_multiple_of(64), "--unit must be a positive multiple of 64 bytes");
    let rs = ReedSolomon::new(k, m)?;
    let budget = Duration::from_secs_f64(args.seconds);
    let data = PageAligned::new(k * unit, 1);
    let refs: Vec<&[u8]> = data.get().chunks(unit).collect();
    let mut parity = PageAligned::new(m * unit, 2);

    let mut dst = PageAligned::new(k * unit, 3);
    let memcpy_gbps = measure(k * unit, budget, || {
        dst.get_mut().copy_from_slice(black_box(data.get()));
        black_box(&mut dst);
    });
    let encode_gbps = measure(k * unit, budget, || {
        let mut outs: Vec<&mut [u8]> = parity.get_mut().chunks_mut(unit).collect();
        rs.encode(black_box(&refs), &mut outs).expect("shapes match");
    });
    // The worst case: m data stripes lost, rebuilt from the rest.
    let lost = m.min(k);
    let present: Vec<(usize, &[u8])> =
        (lost..k).map(|i| (i, refs[i])).chain(parity.get().chunks(unit).enumerate().map(|(i, p)| (k + i, p))).collect();
    let mut rebuilt = PageAligned::new(lost * unit, 4);
    let decode_gbps = measure(k * unit, budget, || {
        let mut wanted: Vec<(usize, &mut [u8])> = (0..lost).zip(rebuilt.get_mut().chunks_mut(unit)).collect();
        rs.reconstruct(black_box(&present), &mut wanted).expect("k stripes are present");
    });
    for (i, r) in rebuilt.get().chunks(unit).enumerate() {
        anyhow::ensure!(r == refs[i], "decode produced wrong bytes for stripe {i}");
    }
    Ok(CodecReport {
        backend: rs.backend(),
        k,
        m,
        unit: unit as u64,
        encode_gbps,
        decode_gbps,
        memcpy_gbps,
        encode_vs_memcpy: encode_gbps / memcpy_gbps,
        decode_vs_memcpy: decode_gbps / memcpy_gbps,
    })
}

pub fn print(r: &CodecReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    crate::outln!("codec {} RS({},{}) unit {}", r.backend, r.k, r.m, ByteSize(r.unit));
    crate::outln!(
        "  memcpy  {:6.2} GB/s  (baseline, same {} bytes, one core)",
        r.memcpy_gbps,
        ByteSize(r.k as u64 * r.unit)
    );
    crate::outln!("  encode  {:6.2} GB/s  {:.2}x memcpy", r.encode_gbps, r.encode_vs_memcpy);
    crate::outln!(
        "  decode  {:6.2} GB/s  {:.2}x memcpy  ({} data stripes lost)",
        r.decode_gbps,
        r.decode_vs_memcpy,
        r.m.min(r.k)
    );
    Ok(())
}
