//! One stripe fetch: a streamed range read, verified block by block.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tessera_core::checksum;
use tessera_core::ids::StripeId;
use tessera_core::latency::Sample;
use tessera_proto::cs;
use tokio::time::Instant;

use crate::connect::ServerHandle;
use crate::{FetchError, RequestClass};

/// The bytes of one stripe range, as the messages that carried them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pieces {
    pub range: Range<usize>,
    /// (stripe offset, bytes), contiguous and in order.
    pub parts: Vec<(usize, Bytes)>,
}

impl Pieces {
    /// The bytes of `[from, to)`, which must lie inside one part.
    pub(crate) fn slice_within(&self, from: usize, to: usize) -> Option<&[u8]> {
        let (off, b) = self.parts.iter().find(|(off, b)| *off <= from && to <= off + b.len())?;
        Some(&b[from - off..to - off])
    }

    /// `[from, to)` as zero-copy slices of the parts.
    pub(crate) fn slices(&self, from: usize, to: usize) -> impl Iterator<Item = Bytes> + '_ {
        self.parts.iter().filter_map(move |(off, b)| {
            let s = from.max(*off);
            let e = to.min(off + b.len());
            (s < e).then(|| b.slice(s - off..e - off))
        })
    }

    pub(crate) fn boundaries(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().map(|(off, _)| *off)
    }
}

/// How one fetch is to be run.
#[derive(Debug, Clone)]
pub(crate) struct FetchSpec {
    pub stripe: StripeId,
    pub range: Range<usize>,
    pub block_size: usize,
    pub class: RequestClass,
    pub timeout: Duration,
    /// Hedge deadline: whether the fetch beat it is recorded for the server.
    pub deadline: Option<Instant>,
    /// Give up at the deadline (a probe of a server believed slow).
    pub stop_at_deadline: bool,
}

/// Runs a fetch with its deadline and timeout. Bytes are added to `fetched`
/// as they arrive, so a cancelled loser's bytes are still counted.
pub(crate) async fn fetch(
    server: Arc<ServerHandle>,
    spec: FetchSpec,
    fetched: Arc<AtomicU64>,
) -> Result<Pieces, FetchError> {
    let started = Instant::now();
    let timeout = match (spec.stop_at_deadline, spec.deadline) {
        (true, Some(d)) => d.saturating_duration_since(started).min(spec.timeout),
        _ => spec.timeout,
    };
    let run = tokio::time::timeout(timeout, stream(&server, &spec, &fetched, started));
    tokio::pin!(run);
    let result = match spec.deadline {
        None => run.await,
        Some(deadline) => {
            tokio::select! {
                r = &mut run => {
                    server.record_outcome(false);
                    r
                }
                _ = tokio::time::sleep_until(deadline) => {
                    server.record_outcome(true);
                    run.await
                }
            }
        }
    };
    let result = result.unwrap_or_else(|_| Err(FetchError::Timeout { server: server.addr.clone(), timeout }));
    match &result {
        Ok((pieces, first_byte)) => server.record_sample(Sample {
            at: std::time::Instant::now(),
            first_byte: *first_byte,
            total: started.elapsed(),
            bytes: pieces.range.len() as u64,
        }),
        Err(_) => server.record_failure(),
    }
    result.map(|(p, _)| p)
}

async fn stream(
    server: &ServerHandle,
    spec: &FetchSpec,
    fetched: &AtomicU64,
    started: Instant,
) -> Result<(Pieces, Duration), FetchError> {
    let status = |s: tonic::Status| FetchError::Status {
        server: server.addr.clone(),
        code: s.code(),
        message: s.message().to_string(),
    };
    let protocol = |detail: String| FetchError::Protocol { server: server.addr.clone(), detail };
    let req = cs::ReadStripeRequest {
        stripe: Some(cs::StripeRef {
            item: spec.stripe.item.as_bytes().to_vec().into(),
            index: spec.stripe.index as u32,
        }),
        offset: spec.range.start as u64,
        length: spec.range.len() as u64,
        class: spec.class as i32,
    };
    let mut responses = server.client().read_stripe(req).await.map_err(status)?.into_inner();
    let mut pieces = Pieces { range: spec.range.clone(), parts: Vec::new() };
    let mut next = spec.range.start;
    let mut first_byte = None;
    while let Some(msg) = responses.message().await.map_err(status)? {
        first_byte.get_or_insert_with(|| started.elapsed());
        let n = msg.data.len();
        fetched.fetch_add(n as u64, Ordering::Relaxed);
        server.record_bytes(n as u64);
        if msg.offset as usize != next || n == 0 || next + n > spec.range.end {
            return Err(protocol(format!(
                "got {n} bytes at {}, expected bytes from {next} to {}",
                msg.offset, spec.range.end
            )));
        }
        if msg.block_size as usize != spec.block_size {
            return Err(protocol(format!("block size {} differs from the item's {}", msg.block_size, spec.block_size)));
        }
        let first = next / spec.block_size;
        checksum::verify_blocks(&msg.data, first, spec.block_size, &msg.block_crcs)
            .map_err(|m| FetchError::Checksum { server: server.addr.clone(), block: m.block })?;
        pieces.parts.push((next, msg.data));
        next += n;
    }
    if next != spec.range.end {
        return Err(protocol(format!("stream ended at {next}, expected {}", spec.range.end)));
    }
    Ok((pieces, first_byte.unwrap_or_default()))
}
